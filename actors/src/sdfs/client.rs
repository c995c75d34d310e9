//! `SdfsClient`: the handle through which every other actor uses this node's SDFS
//! (read, write, list). It is the only internal API of the store; console commands are
//! for operators.

use actix::Addr;
use tokio::sync::oneshot;

use crate::sdfs::sdfs_actor::{GetBytes, ListPrefix, PutBytes, SdfsActor};

/// A cheap, cloneable handle on the node's SdfsActor.
#[derive(Clone)]
pub struct SdfsClient {
    sdfs: Addr<SdfsActor>,
}

const DROPPED: &str = "sdfs dropped the request";

impl SdfsClient {
    /// A handle on `sdfs`.
    pub fn new(sdfs: Addr<SdfsActor>) -> Self {
        SdfsClient { sdfs }
    }

    /// Stores `data` as a new version of `name`; returns the version.
    pub async fn put_bytes(&self, name: String, data: Vec<u8>) -> Result<u64, String> {
        let (reply, rx) = oneshot::channel();
        self.sdfs.do_send(PutBytes { name, data, reply });
        rx.await.map_err(|_| DROPPED.to_string())?
    }

    /// The latest version of `name`.
    pub async fn get_bytes(&self, name: String) -> Result<Vec<u8>, String> {
        self.get_latest(name).await.map(|(_, bytes)| bytes)
    }

    /// The latest version of `name`: its number and its bytes.
    pub async fn get_latest(&self, name: String) -> Result<(u64, Vec<u8>), String> {
        let (reply, rx) = oneshot::channel();
        self.sdfs.do_send(GetBytes { name, reply });
        rx.await.map_err(|_| DROPPED.to_string())?
    }

    /// The names that start with `prefix`, sorted, asked page by page (each node's
    /// answer stays one bounded message however many names there are).
    pub async fn list_prefix(&self, prefix: String) -> Result<Vec<String>, String> {
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let (reply, rx) = oneshot::channel();
            let prefix = prefix.clone();
            self.sdfs.do_send(ListPrefix {
                prefix,
                after,
                reply,
            });
            let (names, next) = rx.await.map_err(|_| DROPPED.to_string())??;
            all.extend(names);
            match next {
                Some(n) => after = Some(n),
                None => return Ok(all),
            }
        }
    }
}
