//! SDFS, the replicated versioned file store: validated names ([`name`]), a node's
//! durable local store ([`store`]), and the cluster protocol as a pure state machine
//! ([`core`], one file per role under `sdfs/core/`) that the actor shell
//! ([`sdfs_actor`]) drives, with its local files in `local_io` and the decisions of a
//! directory put in [`dir_put`]. Other actors use SDFS through [`client::SdfsClient`].
//! Design and consistency rules: docs/ARCHITECTURE.md, "SDFS".

pub mod name;
pub mod store;

pub use name::{NameError, SdfsName, MAX_NAME_LEN};
pub use store::{
    Corruption, Holding, LocalStore, Page, StoreConfig, StoreError, Version, VersionReader,
    VersionWriter, MAX_CHUNK, PAGE_BYTES,
};

pub mod client;
pub mod core;
pub mod dir_put;
mod local_io;
pub mod msg;
pub mod ring;
pub mod scp;
pub mod sdfs_actor;
mod sessions;

pub use self::core::{
    Command, Delivery, Effect, Event, Input, Reply, SdfsConfig, SdfsCore, SdfsError, Timer,
    PAGE_MAX,
};
pub use msg::{Lane, Msg, OpId, RemoteError, VersionInfo};
pub use ring::Ring;
