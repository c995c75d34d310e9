//! Authenticated, persistent TCP connections between nodes, on plain tokio tasks (it runs
//! inside the actix system's runtime but needs no actor). It only moves bytes: framing,
//! envelopes and the handshake are decided in [`crate::net::wire`].
//!
//! Shape:
//! - One listening port accepts both lanes; the lane is named in the handshake hello.
//! - Outbound, one connection per (peer, lane), opened on the first message, with a
//!   bounded queue in front of it. [`Transport::send`] never waits: a full queue is an
//!   error, and what cannot be delivered (peer down, back-off running) is dropped with a
//!   debug log, as a lost datagram would be. Protocols on top already retry.
//! - Control and bulk never share a connection, a queue or the inbound channel's capacity,
//!   so a file transfer cannot delay a ping.
//! - Replies travel back on the connection the request came in on, so a tool that does
//!   not listen (`dml ctl`, via [`Client`]) still gets them.
//! - A misbehaving connection (failed handshake, junk, oversized or unknown frame) is
//!   closed with a warning; nothing else is affected.
#![deny(missing_docs)]

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::de::DeserializeOwned;
use serde::Serialize;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::types::NodeAddr;
use crate::net::wire::{
    self, ClientHandshake, Envelope, Established, FrameDecoder, HandshakeError, ServerHandshake,
    WireError, HANDSHAKE_MAX_FRAME, MAX_FRAME, NONCE_LEN,
};
pub use crate::net::wire::{Lane, Role};

/// Bytes read from a socket at a time. Also the most a decoder holds beyond one frame.
const READ_CHUNK: usize = 64 * 1024;

/// Errors of the transport layer. None of them leaves the transport unusable, except
/// [`TransportError::Shutdown`].
#[derive(Debug, Error)]
pub enum TransportError {
    /// A configuration value is out of range; nothing was started.
    #[error("invalid transport configuration: {0}")]
    Config(String),
    /// `start` was called outside a tokio runtime.
    #[error("the transport must be started inside a tokio runtime")]
    NoRuntime,
    /// The per-peer, per-lane send queue is full; the message was not queued.
    #[error("send queue to {peer} ({lane}) is full")]
    QueueFull {
        /// Destination.
        peer: NodeAddr,
        /// Lane of the full queue.
        lane: Lane,
    },
    /// No reply arrived in time. The request may or may not have been processed.
    #[error("no reply from {peer} within {after:?}")]
    Timeout {
        /// Who was asked.
        peer: NodeAddr,
        /// The timeout that ran out.
        after: Duration,
    },
    /// The request was dropped before it reached the peer (unreachable, connection lost
    /// or peer forgotten); it was not processed.
    #[error("{peer} is unreachable; the request was dropped")]
    Undeliverable {
        /// Destination.
        peer: NodeAddr,
    },
    /// The connection a reply should use is gone.
    #[error("the connection is closed")]
    Closed,
    /// The peer closed the connection.
    #[error("the peer closed the connection")]
    PeerClosed,
    /// The peer closed the connection in the middle of a frame.
    #[error("connection closed inside a frame ({buffered} bytes pending)")]
    Truncated {
        /// Bytes of the incomplete frame.
        buffered: usize,
    },
    /// The transport was shut down.
    #[error("the transport is shut down")]
    Shutdown,
    /// Connecting to a peer took longer than the connect timeout.
    #[error("connecting to {addr} timed out")]
    ConnectTimeout {
        /// Address being dialled.
        addr: String,
    },
    /// The handshake took longer than the handshake timeout.
    #[error("the handshake timed out")]
    HandshakeTimeout,
    /// The peer failed the handshake (for example, it does not hold the secret).
    #[error("handshake failed: {0}")]
    Handshake(#[from] HandshakeError),
    /// A frame could not be encoded or decoded.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// A socket error.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl TransportError {
    /// The peer broke the protocol or failed authentication (worth a warning), as opposed
    /// to ordinary network weather (refused, reset, timed out).
    pub fn is_protocol_violation(&self) -> bool {
        matches!(
            self,
            TransportError::Wire(_)
                | TransportError::Handshake(_)
                | TransportError::Truncated { .. }
                | TransportError::HandshakeTimeout
        )
    }
}

/// Settings of a [`Transport`]. Build with [`TransportConfig::new`] and adjust fields.
#[derive(Clone)]
pub struct TransportConfig {
    /// The address this node announces (and listens at), `host:port`.
    pub local: NodeAddr,
    /// The cluster secret every connection must prove knowledge of. Not empty.
    pub secret: Vec<u8>,
    /// Largest frame payload sent or accepted; at most [`MAX_FRAME`].
    pub max_frame: usize,
    /// Capacity of each per-peer, per-lane send queue (and of each connection's reply
    /// queue), in messages.
    pub queue_cap: usize,
    /// Capacity of the inbound channel handed to the application. Bulk messages may use
    /// at most half of it, so control messages always find room.
    pub inbound_cap: usize,
    /// First pause after a failed connection attempt; doubles per failure.
    pub backoff_min: Duration,
    /// Longest pause between connection attempts.
    pub backoff_max: Duration,
    /// Limit on establishing the TCP connection.
    pub connect_timeout: Duration,
    /// Limit on the whole handshake, per connection and in each direction.
    pub handshake_timeout: Duration,
    /// Accepted connections that have not finished their handshake, at most; more are
    /// closed at once.
    pub max_pending_handshakes: usize,
    /// Fraction of outbound control-lane messages to drop on purpose (loss testing).
    pub drop_rate: f64,
    /// Seed of the generator that decides which messages [`Self::drop_rate`] drops.
    pub drop_seed: u64,
}

impl TransportConfig {
    /// Defaults suited to a LAN cluster.
    pub fn new(local: NodeAddr, secret: impl Into<Vec<u8>>) -> Self {
        TransportConfig {
            local,
            secret: secret.into(),
            max_frame: MAX_FRAME,
            queue_cap: 1024,
            inbound_cap: 4096,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(3),
            handshake_timeout: Duration::from_secs(5),
            max_pending_handshakes: 64,
            drop_rate: 0.0,
            drop_seed: 0,
        }
    }

    fn validate(&self) -> Result<(), TransportError> {
        let bad = |s: &str| Err(TransportError::Config(s.to_string()));
        if self.secret.is_empty() {
            return bad("secret must not be empty");
        }
        if self.local.as_str().is_empty() || self.local.as_str().len() > wire::MAX_ADDR_LEN {
            return bad("local address must be 1 to 255 bytes");
        }
        if self.max_frame < HANDSHAKE_MAX_FRAME || self.max_frame > MAX_FRAME {
            return bad("max_frame must be between 1 KiB and 16 MiB");
        }
        if self.queue_cap == 0 || self.max_pending_handshakes == 0 {
            return bad("queue_cap and max_pending_handshakes must be positive");
        }
        if self.inbound_cap < 2 {
            return bad("inbound_cap must be at least 2");
        }
        if self.backoff_min.is_zero() || self.backoff_max < self.backoff_min {
            return bad("backoff_min must be positive and at most backoff_max");
        }
        if self.connect_timeout.is_zero() || self.handshake_timeout.is_zero() {
            return bad("connect_timeout and handshake_timeout must be positive");
        }
        if !(0.0..=1.0).contains(&self.drop_rate) {
            return bad("drop_rate must be between 0 and 1");
        }
        Ok(())
    }
}

impl fmt::Debug for TransportConfig {
    // By hand, so that the secret never reaches a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransportConfig")
            .field("local", &self.local)
            .field("secret", &"<redacted>")
            .field("max_frame", &self.max_frame)
            .field("queue_cap", &self.queue_cap)
            .field("inbound_cap", &self.inbound_cap)
            .field("backoff_min", &self.backoff_min)
            .field("backoff_max", &self.backoff_max)
            .field("connect_timeout", &self.connect_timeout)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("max_pending_handshakes", &self.max_pending_handshakes)
            .field("drop_rate", &self.drop_rate)
            .finish()
    }
}

/// A message delivered to the application.
#[derive(Debug)]
pub struct Inbound<B> {
    /// The address the sender announced in its handshake (for a tool, a label).
    pub from: NodeAddr,
    /// The lane it came on.
    pub lane: Lane,
    /// The message.
    pub body: B,
    /// Present when the sender waits for a reply (it used `request`).
    pub responder: Option<Responder<B>>,
    /// Holds one of the bulk lane's inbound slots until the application drops the message.
    _slot: Option<OwnedSemaphorePermit>,
}

impl<B> Inbound<B> {
    /// A message made by hand, for tests of the layers above and in-process delivery.
    pub fn new(from: NodeAddr, lane: Lane, body: B, responder: Option<Responder<B>>) -> Self {
        Inbound {
            from,
            lane,
            body,
            responder,
            _slot: None,
        }
    }
}

/// The way back to whoever sent a request: the reply goes out on the connection the request
/// came in on.
pub struct Responder<B> {
    kind: ResponderKind<B>,
}

enum ResponderKind<B> {
    Conn {
        tx: mpsc::Sender<Outgoing>,
        reply_to: u64,
        peer: NodeAddr,
        lane: Lane,
        shared: Arc<Shared>,
    },
    Local(oneshot::Sender<B>),
}

impl<B> fmt::Debug for Responder<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ResponderKind::Conn {
                reply_to,
                peer,
                lane,
                ..
            } => write!(f, "Responder({peer}, {lane}, reply_to {reply_to})"),
            ResponderKind::Local(_) => f.write_str("Responder(local)"),
        }
    }
}

impl<B: Serialize> Responder<B> {
    /// A responder whose reply is handed to the returned receiver instead of a socket, for
    /// tests and in-process requests.
    pub fn local() -> (Self, oneshot::Receiver<B>) {
        let (tx, rx) = oneshot::channel();
        (
            Responder {
                kind: ResponderKind::Local(tx),
            },
            rx,
        )
    }

    /// Sends the reply. Never waits: if the connection's queue is full or the connection
    /// is gone, the reply is not sent and the error says why.
    pub fn respond(self, body: B) -> Result<(), TransportError> {
        match self.kind {
            ResponderKind::Local(tx) => tx.send(body).map_err(|_| TransportError::Closed),
            ResponderKind::Conn {
                tx,
                reply_to,
                peer,
                lane,
                shared,
            } => {
                let id = shared.next_id();
                let frame =
                    wire::encode_frame_max(&Envelope::reply(id, reply_to, body), shared.max_frame)?;
                if shared.drops(lane) {
                    debug!(%peer, %lane, "simulated loss: reply dropped");
                    return Ok(());
                }
                tx.try_send(Outgoing { id, frame }).map_err(|e| match e {
                    TrySendError::Full(_) => TransportError::QueueFull { peer, lane },
                    TrySendError::Closed(_) => TransportError::Closed,
                })
            }
        }
    }
}

/// An encoded frame waiting to be written, with the envelope id (so a request whose frame
/// is dropped can fail at once instead of waiting for its timeout).
struct Outgoing {
    id: u64,
    frame: Vec<u8>,
}

/// Bytes and frames moved between nodes, per lane (for the `stats` command and the
/// background-traffic benchmark).
///
/// Counted after the handshake, frame bytes only (no TCP/IP headers). Connections of
/// tools (`dml ctl`) are left out, so that asking a node for its figures does not change
/// them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LaneStats {
    /// Frame bytes written to peers.
    pub bytes_sent: u64,
    /// Bytes read from peers.
    pub bytes_received: u64,
    /// Frames written to peers.
    pub frames_sent: u64,
    /// Frames decoded from peers.
    pub frames_received: u64,
}

/// [`LaneStats`] of both lanes, as returned by [`Transport::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TransportStats {
    /// Pings, acks, membership and small commands.
    pub control: LaneStats,
    /// Large transfers.
    pub bulk: LaneStats,
}

/// Lock-free counters behind [`TransportStats`]: index 0 is the control lane, 1 bulk.
#[derive(Default)]
struct Counters {
    bytes_sent: [AtomicU64; 2],
    bytes_received: [AtomicU64; 2],
    frames_sent: [AtomicU64; 2],
    frames_received: [AtomicU64; 2],
}

impl Counters {
    fn slot(lane: Lane) -> usize {
        match lane {
            Lane::Control => 0,
            Lane::Bulk => 1,
        }
    }

    fn add(counter: &[AtomicU64; 2], lane: Lane, n: usize) {
        if let Some(c) = counter.get(Self::slot(lane)) {
            c.fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    fn lane(&self, lane: Lane) -> LaneStats {
        let get = |c: &[AtomicU64; 2]| {
            c.get(Self::slot(lane))
                .map_or(0, |v| v.load(Ordering::Relaxed))
        };
        LaneStats {
            bytes_sent: get(&self.bytes_sent),
            bytes_received: get(&self.bytes_received),
            frames_sent: get(&self.frames_sent),
            frames_received: get(&self.frames_received),
        }
    }
}

/// State that responders need too, so it is not generic over the body.
struct Shared {
    next_id: AtomicU64,
    max_frame: usize,
    /// Drop rate and its seeded generator.
    loss: Mutex<(f64, ChaCha8Rng)>,
    /// Traffic between nodes.
    counters: Counters,
}

impl Shared {
    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Whether simulated loss eats this message. Only the control lane is affected: loss
    /// tests are about the failure detector, and a lost bulk frame would only stall SDFS.
    fn drops(&self, lane: Lane) -> bool {
        if lane != Lane::Control {
            return false;
        }
        let mut loss = lock(&self.loss);
        let rate = loss.0;
        rate > 0.0 && loss.1.gen::<f64>() < rate
    }
}

/// A request waiting for its reply.
struct Pending<B> {
    peer: NodeAddr,
    tx: oneshot::Sender<B>,
}

struct PeerEntry {
    tx: mpsc::Sender<Outgoing>,
    task: AbortHandle,
    /// Set when the peer connects to us: it is evidently up, so its back-off ends now
    /// (otherwise a node that started after us would miss our answers for seconds).
    revived: Arc<AtomicBool>,
}

struct ConnEntry {
    /// Known once the handshake has named the peer.
    peer: Option<NodeAddr>,
    task: AbortHandle,
}

struct Inner<B> {
    cfg: TransportConfig,
    shared: Arc<Shared>,
    rt: Handle,
    shut: AtomicBool,
    peers: Mutex<HashMap<(NodeAddr, Lane), PeerEntry>>,
    conns: Mutex<HashMap<u64, ConnEntry>>,
    next_conn: AtomicU64,
    pending: Mutex<HashMap<u64, Pending<B>>>,
    inbound: Mutex<Option<mpsc::Sender<Inbound<B>>>>,
    bulk_slots: Arc<Semaphore>,
    handshake_slots: Arc<Semaphore>,
    accept: Mutex<Option<AbortHandle>>,
}

/// Locks a mutex, recovering it if a holder panicked: the maps stay consistent between
/// statements, and a transport that stops working after one bug would be worse.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Logs the end of a connection at the level it deserves.
fn log_end(peer: &str, lane: Lane, res: &Result<(), TransportError>) {
    match res {
        Ok(()) | Err(TransportError::PeerClosed) => debug!(%peer, %lane, "connection closed"),
        Err(e) if e.is_protocol_violation() => {
            warn!(%peer, %lane, error = %e, "closing connection after a protocol error")
        }
        Err(e) => debug!(%peer, %lane, error = %e, "connection lost"),
    }
}

impl<B: Serialize + DeserializeOwned + Send + 'static> Inner<B> {
    fn check_open(&self) -> Result<(), TransportError> {
        if self.shut.load(Ordering::Acquire) {
            return Err(TransportError::Shutdown);
        }
        Ok(())
    }

    /// Fails a request whose frame will never be written.
    fn fail_pending(&self, id: u64) {
        lock(&self.pending).remove(&id);
    }

    /// Hands a reply to the request waiting for it, if that request went to this peer.
    fn complete(&self, reply_to: u64, from: &NodeAddr, body: B) {
        let mut pending = lock(&self.pending);
        match pending.get(&reply_to) {
            Some(p) if p.peer == *from => {
                if let Some(p) = pending.remove(&reply_to) {
                    // The requester may have timed out meanwhile; nothing to do then.
                    let _ = p.tx.send(body);
                }
            }
            Some(_) => debug!(%from, reply_to, "reply from a peer that was not asked; ignored"),
            None => debug!(%from, reply_to, "late or unknown reply; ignored"),
        }
    }

    /// Queues a frame for `to` on `lane`, starting that connection's task if needed.
    fn enqueue(
        self: &Arc<Self>,
        to: &NodeAddr,
        lane: Lane,
        out: Outgoing,
    ) -> Result<(), TransportError> {
        let tx = {
            let mut peers = lock(&self.peers);
            // Checked under the lock so that `shutdown`, which drains the map under the
            // same lock, cannot miss a task started here.
            self.check_open()?;
            let key = (to.clone(), lane);
            match peers.get(&key) {
                Some(e) if !e.tx.is_closed() => e.tx.clone(),
                _ => {
                    let (tx, rx) = mpsc::channel(self.cfg.queue_cap);
                    let revived = Arc::new(AtomicBool::new(false));
                    let task = self.rt.spawn(peer_task(
                        self.clone(),
                        to.clone(),
                        lane,
                        rx,
                        tx.clone(),
                        revived.clone(),
                    ));
                    peers.insert(
                        key,
                        PeerEntry {
                            tx: tx.clone(),
                            task: task.abort_handle(),
                            revived,
                        },
                    );
                    tx
                }
            }
        };
        tx.try_send(out).map_err(|e| match e {
            TrySendError::Full(_) => TransportError::QueueFull {
                peer: to.clone(),
                lane,
            },
            TrySendError::Closed(_) => TransportError::Shutdown,
        })
    }

    fn forget(&self, peer: &NodeAddr) {
        let mut tasks: Vec<AbortHandle> = lock(&self.peers)
            .extract_if(|(p, _), _| p == peer)
            .map(|(_, e)| e.task)
            .collect();
        tasks.extend(
            lock(&self.conns)
                .extract_if(|_, e| e.peer.as_ref() == Some(peer))
                .map(|(_, e)| e.task),
        );
        // Dropping the reply senders fails the requests at once.
        lock(&self.pending).retain(|_, p| p.peer != *peer);
        // Aborted outside the locks: a task's clean-up takes them.
        for t in tasks {
            t.abort();
        }
        debug!(%peer, "connections to peer closed");
    }

    fn shutdown(&self) {
        if self.shut.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut tasks: Vec<AbortHandle> = lock(&self.accept).take().into_iter().collect();
        tasks.extend(lock(&self.peers).drain().map(|(_, e)| e.task));
        tasks.extend(lock(&self.conns).drain().map(|(_, e)| e.task));
        lock(&self.pending).clear();
        // Once the connection tasks (which hold clones) are gone, the application's
        // receiver sees the end of the stream.
        lock(&self.inbound).take();
        for t in tasks {
            t.abort();
        }
        info!(local = %self.cfg.local, "transport shut down");
    }
}

/// Shuts the transport down when the last [`Transport`] handle is dropped. Tasks hold the
/// inner state, so without this the listener would outlive every handle.
struct Guard<B: Serialize + DeserializeOwned + Send + 'static> {
    inner: Arc<Inner<B>>,
}

impl<B: Serialize + DeserializeOwned + Send + 'static> Drop for Guard<B> {
    fn drop(&mut self) {
        self.inner.shutdown();
    }
}

/// A node's transport. Cheap to clone; all clones share the connections. Dropping the
/// last clone shuts it down.
pub struct Transport<B: Serialize + DeserializeOwned + Send + 'static> {
    guard: Arc<Guard<B>>,
}

impl<B: Serialize + DeserializeOwned + Send + 'static> Clone for Transport<B> {
    fn clone(&self) -> Self {
        Transport {
            guard: self.guard.clone(),
        }
    }
}

impl<B: Serialize + DeserializeOwned + Send + 'static> fmt::Debug for Transport<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Transport({})", self.inner().cfg.local)
    }
}

impl<B: Serialize + DeserializeOwned + Send + 'static> Transport<B> {
    /// Starts accepting on `listener` (already bound, so tests can bind port 0) and returns
    /// the transport and the channel of inbound messages. Must be called inside a tokio
    /// runtime; all tasks are spawned on it.
    pub fn start(
        listener: TcpListener,
        cfg: TransportConfig,
    ) -> Result<(Self, mpsc::Receiver<Inbound<B>>), TransportError> {
        cfg.validate()?;
        let rt = Handle::try_current().map_err(|_| TransportError::NoRuntime)?;
        let (tx, rx) = mpsc::channel(cfg.inbound_cap);
        let shared = Arc::new(Shared {
            next_id: AtomicU64::new(1),
            max_frame: cfg.max_frame,
            loss: Mutex::new((cfg.drop_rate, ChaCha8Rng::seed_from_u64(cfg.drop_seed))),
            counters: Counters::default(),
        });
        let inner = Arc::new(Inner {
            bulk_slots: Arc::new(Semaphore::new(cfg.inbound_cap / 2)),
            handshake_slots: Arc::new(Semaphore::new(cfg.max_pending_handshakes)),
            cfg,
            shared,
            rt: rt.clone(),
            shut: AtomicBool::new(false),
            peers: Mutex::new(HashMap::new()),
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(0),
            pending: Mutex::new(HashMap::new()),
            inbound: Mutex::new(Some(tx)),
            accept: Mutex::new(None),
        });
        let task = rt.spawn(accept_loop(inner.clone(), listener));
        *lock(&inner.accept) = Some(task.abort_handle());
        info!(local = %inner.cfg.local, "transport listening");
        Ok((
            Transport {
                guard: Arc::new(Guard { inner }),
            },
            rx,
        ))
    }

    fn inner(&self) -> &Arc<Inner<B>> {
        &self.guard.inner
    }

    /// The address this node announces.
    pub fn local(&self) -> &NodeAddr {
        &self.inner().cfg.local
    }

    /// Queues a one-way message. Never waits. `Err(QueueFull)` when the peer's queue on
    /// that lane is full; `Ok` does not mean delivered: if the peer is unreachable the
    /// message is dropped later, with a debug log.
    pub fn send(&self, to: &NodeAddr, lane: Lane, body: B) -> Result<(), TransportError> {
        let inner = self.inner();
        inner.check_open()?;
        let id = inner.shared.next_id();
        let frame = wire::encode_frame_max(&Envelope::message(id, body), inner.cfg.max_frame)?;
        if inner.shared.drops(lane) {
            debug!(peer = %to, %lane, "simulated loss: message dropped");
            return Ok(());
        }
        inner.enqueue(to, lane, Outgoing { id, frame })
    }

    /// Sends a request and waits for the reply, at most `timeout`. The reply comes back on
    /// the same connection; a request that could not be written fails early with
    /// [`TransportError::Undeliverable`].
    pub async fn request(
        &self,
        to: &NodeAddr,
        lane: Lane,
        body: B,
        timeout: Duration,
    ) -> Result<B, TransportError> {
        let inner = self.inner();
        inner.check_open()?;
        let id = inner.shared.next_id();
        let frame = wire::encode_frame_max(&Envelope::request(id, body), inner.cfg.max_frame)?;
        let (tx, rx) = oneshot::channel();
        lock(&inner.pending).insert(
            id,
            Pending {
                peer: to.clone(),
                tx,
            },
        );
        // Removes the entry however this future ends (timeout, error, caller gave up).
        let _entry = PendingEntry { inner, id };
        if inner.shared.drops(lane) {
            debug!(peer = %to, %lane, "simulated loss: request dropped");
        } else {
            inner.enqueue(to, lane, Outgoing { id, frame })?;
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(body)) => Ok(body),
            Ok(Err(_)) if inner.shut.load(Ordering::Acquire) => Err(TransportError::Shutdown),
            Ok(Err(_)) => Err(TransportError::Undeliverable { peer: to.clone() }),
            Err(_) => Err(TransportError::Timeout {
                peer: to.clone(),
                after: timeout,
            }),
        }
    }

    /// Closes every connection to and from `peer`, drops what is queued for it and fails
    /// its pending requests (for a member that left or was removed). A later `send` opens
    /// a new connection.
    pub fn forget(&self, peer: &NodeAddr) {
        self.inner().forget(peer);
    }

    /// Sets the fraction of outbound control-lane messages (sends, requests and replies)
    /// dropped on purpose. Clamped to 0..=1; NaN counts as 0.
    pub fn set_drop_rate(&self, rate: f64) {
        let rate = if rate.is_nan() {
            0.0
        } else {
            rate.clamp(0.0, 1.0)
        };
        lock(&self.inner().shared.loss).0 = rate;
    }

    /// Bytes and frames moved to and from other nodes since the transport started.
    pub fn stats(&self) -> TransportStats {
        let c = &self.inner().shared.counters;
        TransportStats {
            control: c.lane(Lane::Control),
            bulk: c.lane(Lane::Bulk),
        }
    }

    /// Stops listening, closes every connection and fails pending requests. Idempotent.
    pub fn shutdown(&self) {
        self.inner().shutdown();
    }
}

struct PendingEntry<'a, B: Serialize + DeserializeOwned + Send + 'static> {
    inner: &'a Inner<B>,
    id: u64,
}

impl<B: Serialize + DeserializeOwned + Send + 'static> Drop for PendingEntry<'_, B> {
    fn drop(&mut self) {
        self.inner.fail_pending(self.id);
    }
}

/// Removes a connection's registry entry when its task ends, however it ends.
struct ConnRegistration<B: Serialize + DeserializeOwned + Send + 'static> {
    inner: Arc<Inner<B>>,
    id: u64,
}

impl<B: Serialize + DeserializeOwned + Send + 'static> Drop for ConnRegistration<B> {
    fn drop(&mut self) {
        lock(&self.inner.conns).remove(&self.id);
    }
}

/// What the read side of one connection needs to deliver what it reads.
struct ConnCtx<B: Serialize + DeserializeOwned + Send + 'static> {
    inner: Arc<Inner<B>>,
    peer: NodeAddr,
    lane: Lane,
    /// Replies to requests read here are queued on this connection's writer.
    reply_tx: mpsc::Sender<Outgoing>,
    inbound: mpsc::Sender<Inbound<B>>,
    /// Whether this connection's traffic counts in [`TransportStats`] (tools' does not).
    counted: bool,
}

impl<B: Serialize + DeserializeOwned + Send + 'static> ConnCtx<B> {
    fn new(
        inner: Arc<Inner<B>>,
        est: Established,
        reply_tx: mpsc::Sender<Outgoing>,
    ) -> Result<Self, TransportError> {
        let inbound = lock(&inner.inbound)
            .clone()
            .ok_or(TransportError::Shutdown)?;
        Ok(ConnCtx {
            counted: est.role == Role::Node,
            inner,
            peer: est.peer,
            lane: est.lane,
            reply_tx,
            inbound,
        })
    }

    /// Adds to the traffic counters (frames written or read, bytes) of this lane.
    fn count(&self, sent: bool, frames: usize, bytes: usize) {
        if !self.counted {
            return;
        }
        let c = &self.inner.shared.counters;
        let (f, b) = if sent {
            (&c.frames_sent, &c.bytes_sent)
        } else {
            (&c.frames_received, &c.bytes_received)
        };
        Counters::add(f, self.lane, frames);
        Counters::add(b, self.lane, bytes);
    }

    async fn dispatch(&self, env: Envelope<B>) -> Result<(), TransportError> {
        if let Some(reply_to) = env.reply_to {
            self.inner.complete(reply_to, &self.peer, env.body);
            return Ok(());
        }
        let responder = env.expects_reply.then(|| Responder {
            kind: ResponderKind::Conn {
                tx: self.reply_tx.clone(),
                reply_to: env.id,
                peer: self.peer.clone(),
                lane: self.lane,
                shared: self.inner.shared.clone(),
            },
        });
        // Bulk messages wait for one of their slots (back-pressure on that connection
        // only); control messages always have the other half of the channel.
        let slot = match self.lane {
            Lane::Bulk => Some(
                self.inner
                    .bulk_slots
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| TransportError::Shutdown)?,
            ),
            Lane::Control => None,
        };
        let msg = Inbound {
            from: self.peer.clone(),
            lane: self.lane,
            body: env.body,
            responder,
            _slot: slot,
        };
        self.inbound
            .send(msg)
            .await
            .map_err(|_| TransportError::Shutdown)
    }
}

/// Reads into `dec` until it yields a complete frame payload (used during the handshake).
async fn read_payload<S: AsyncRead + Unpin>(
    stream: &mut S,
    dec: &mut FrameDecoder,
) -> Result<Vec<u8>, TransportError> {
    let mut chunk = [0u8; 2048];
    loop {
        if let Some(p) = dec.next_payload()? {
            return Ok(p);
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(TransportError::PeerClosed);
        }
        dec.push(chunk.get(..n).unwrap_or_default());
    }
}

fn fresh_nonce() -> Result<[u8; NONCE_LEN], TransportError> {
    let mut nonce = [0u8; NONCE_LEN];
    rand::rngs::OsRng
        .try_fill_bytes(&mut nonce)
        .map_err(|e| TransportError::Io(std::io::Error::other(e.to_string())))?;
    Ok(nonce)
}

/// The dialling side of the handshake. Leaves any bytes read past it in `dec`.
async fn client_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    dec: &mut FrameDecoder,
    local: &NodeAddr,
    role: Role,
    lane: Lane,
    secret: &[u8],
) -> Result<Established, TransportError> {
    let (state, hello) = ClientHandshake::start(local, role, lane, fresh_nonce()?)?;
    stream.write_all(&hello).await?;
    let challenge = read_payload(stream, dec).await?;
    let (est, finish) = state.on_challenge(secret, &challenge)?;
    stream.write_all(&finish).await?;
    Ok(est)
}

/// The listening side of the handshake. Leaves any bytes read past it in `dec`.
async fn server_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    dec: &mut FrameDecoder,
    local: &NodeAddr,
    secret: &[u8],
) -> Result<Established, TransportError> {
    let hello = read_payload(stream, dec).await?;
    let (state, challenge) = ServerHandshake::on_hello(secret, local, fresh_nonce()?, &hello)?;
    stream.write_all(&challenge).await?;
    let finish = read_payload(stream, dec).await?;
    Ok(state.on_finish(secret, &finish)?)
}

async fn accept_loop<B: Serialize + DeserializeOwned + Send + 'static>(
    inner: Arc<Inner<B>>,
    listener: TcpListener,
) {
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Usually out of file descriptors: pause instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = inner.handshake_slots.clone().try_acquire_owned() else {
            warn!(%remote, "too many connections still in their handshake; refusing one");
            continue;
        };
        let id = inner.next_conn.fetch_add(1, Ordering::Relaxed);
        let mut conns = lock(&inner.conns);
        if inner.shut.load(Ordering::Acquire) {
            return;
        }
        // Registered under the lock, so that the task's clean-up (which takes the lock)
        // cannot run before the entry exists.
        let task = inner
            .rt
            .spawn(serve_inbound(inner.clone(), id, stream, remote, permit));
        conns.insert(
            id,
            ConnEntry {
                peer: None,
                task: task.abort_handle(),
            },
        );
    }
}

async fn serve_inbound<B: Serialize + DeserializeOwned + Send + 'static>(
    inner: Arc<Inner<B>>,
    id: u64,
    mut stream: TcpStream,
    remote: SocketAddr,
    permit: OwnedSemaphorePermit,
) {
    let _registration = ConnRegistration {
        inner: inner.clone(),
        id,
    };
    let mut dec = FrameDecoder::new(HANDSHAKE_MAX_FRAME);
    let handshake = tokio::time::timeout(
        inner.cfg.handshake_timeout,
        server_handshake(&mut stream, &mut dec, &inner.cfg.local, &inner.cfg.secret),
    )
    .await;
    drop(permit);
    let est = match handshake {
        Ok(Ok(est)) => est,
        Ok(Err(e)) => {
            warn!(%remote, error = %e, "handshake refused; closing connection");
            return;
        }
        Err(_) => {
            warn!(%remote, "handshake timed out; closing connection");
            return;
        }
    };
    dec.set_max(inner.cfg.max_frame);
    if let Some(entry) = lock(&inner.conns).get_mut(&id) {
        entry.peer = Some(est.peer.clone());
    }
    // Pings are tiny and latency-sensitive, and we always write whole frames, so Nagle
    // would only add delay, on either lane.
    if let Err(e) = stream.set_nodelay(true) {
        debug!(%remote, error = %e, "could not set TCP_NODELAY");
    }
    debug!(peer = %est.peer, lane = %est.lane, role = ?est.role, %remote, "inbound connection authenticated");
    if est.role == Role::Node {
        for (key, e) in lock(&inner.peers).iter() {
            if key.0 == est.peer {
                e.revived.store(true, Ordering::Relaxed);
            }
        }
    }
    let (reply_tx, mut reply_rx) = mpsc::channel(inner.cfg.queue_cap);
    let peer = est.peer.clone();
    let lane = est.lane;
    let res = match ConnCtx::new(inner, est, reply_tx) {
        Ok(ctx) => run_conn(stream, dec, None, &mut reply_rx, &ctx).await,
        Err(e) => Err(e),
    };
    log_end(peer.as_str(), lane, &res);
}

/// Connects to `peer` and authenticates, within the configured timeouts.
async fn dial<B: Serialize + DeserializeOwned + Send + 'static>(
    inner: &Inner<B>,
    peer: &NodeAddr,
    lane: Lane,
) -> Result<(TcpStream, FrameDecoder, Established), TransportError> {
    let cfg = &inner.cfg;
    let mut stream = tokio::time::timeout(cfg.connect_timeout, TcpStream::connect(peer.as_str()))
        .await
        .map_err(|_| TransportError::ConnectTimeout {
            addr: peer.0.clone(),
        })??;
    stream.set_nodelay(true)?;
    let mut dec = FrameDecoder::new(HANDSHAKE_MAX_FRAME);
    let est = tokio::time::timeout(
        cfg.handshake_timeout,
        client_handshake(
            &mut stream,
            &mut dec,
            &cfg.local,
            Role::Node,
            lane,
            &cfg.secret,
        ),
    )
    .await
    .map_err(|_| TransportError::HandshakeTimeout)??;
    dec.set_max(cfg.max_frame);
    Ok((stream, dec, est))
}

/// Owns the outbound connection to one (peer, lane): connects when there is something to
/// send, writes the queue, reconnects after a loss, and backs off while the peer is down.
async fn peer_task<B: Serialize + DeserializeOwned + Send + 'static>(
    inner: Arc<Inner<B>>,
    peer: NodeAddr,
    lane: Lane,
    mut rx: mpsc::Receiver<Outgoing>,
    self_tx: mpsc::Sender<Outgoing>,
    revived: Arc<AtomicBool>,
) {
    let mut backoff = inner.cfg.backoff_min;
    let mut retry_at = Instant::now();
    while let Some(first) = rx.recv().await {
        if revived.swap(false, Ordering::Relaxed) {
            retry_at = Instant::now();
        }
        if Instant::now() < retry_at {
            // Holding messages for a peer that is down would only deliver them stale.
            debug!(%peer, %lane, "peer unreachable (backing off); message dropped");
            inner.fail_pending(first.id);
            continue;
        }
        match dial(&inner, &peer, lane).await {
            Err(e) => {
                if e.is_protocol_violation() {
                    warn!(%peer, %lane, error = %e, "could not authenticate to peer");
                } else {
                    debug!(%peer, %lane, error = %e, retry_in = ?backoff, "connect failed");
                }
                inner.fail_pending(first.id);
                while let Ok(out) = rx.try_recv() {
                    inner.fail_pending(out.id);
                }
                retry_at = Instant::now() + backoff;
                backoff = backoff.saturating_mul(2).min(inner.cfg.backoff_max);
            }
            Ok((stream, dec, est)) => {
                backoff = inner.cfg.backoff_min;
                debug!(%peer, %lane, announced = %est.peer, "outbound connection authenticated");
                // Replies on this connection must be matched against the address we
                // dialled, which is what requests were registered under.
                let est = Established {
                    peer: peer.clone(),
                    ..est
                };
                let res = match ConnCtx::new(inner.clone(), est, self_tx.clone()) {
                    Ok(ctx) => run_conn(stream, dec, Some(first), &mut rx, &ctx).await,
                    Err(e) => Err(e),
                };
                log_end(peer.as_str(), lane, &res);
                // A connection that worked and broke is retried at once: the peer most
                // likely restarted.
                retry_at = Instant::now();
            }
        }
    }
}

/// Drives one authenticated connection until either direction fails. Reading and writing
/// run concurrently, so two peers writing large frames to each other cannot deadlock.
async fn run_conn<B: Serialize + DeserializeOwned + Send + 'static>(
    stream: TcpStream,
    dec: FrameDecoder,
    first: Option<Outgoing>,
    rx: &mut mpsc::Receiver<Outgoing>,
    ctx: &ConnCtx<B>,
) -> Result<(), TransportError> {
    let (mut rd, mut wr) = stream.into_split();
    let writer = async {
        if let Some(out) = first {
            if let Err(e) = wr.write_all(&out.frame).await {
                ctx.inner.fail_pending(out.id);
                return Err(TransportError::Io(e));
            }
            ctx.count(true, 1, out.frame.len());
        }
        while let Some(out) = rx.recv().await {
            if let Err(e) = wr.write_all(&out.frame).await {
                ctx.inner.fail_pending(out.id);
                return Err(TransportError::Io(e));
            }
            ctx.count(true, 1, out.frame.len());
        }
        Ok(())
    };
    let reader = read_loop(&mut rd, dec, ctx);
    tokio::select! {
        res = writer => res,
        res = reader => res,
    }
}

async fn read_loop<B: Serialize + DeserializeOwned + Send + 'static>(
    rd: &mut OwnedReadHalf,
    mut dec: FrameDecoder,
    ctx: &ConnCtx<B>,
) -> Result<(), TransportError> {
    let mut chunk = vec![0u8; READ_CHUNK];
    loop {
        loop {
            // Counted by frame, not by socket read: the first frames may have arrived
            // in the same read as the handshake.
            let before = dec.buffered();
            let Some(env) = dec.next_envelope::<B>()? else {
                break;
            };
            ctx.count(false, 1, before.saturating_sub(dec.buffered()));
            ctx.dispatch(env).await?;
        }
        let n = rd.read(&mut chunk).await?;
        if n == 0 {
            return match dec.buffered() {
                0 => Err(TransportError::PeerClosed),
                buffered => Err(TransportError::Truncated { buffered }),
            };
        }
        dec.push(chunk.get(..n).unwrap_or_default());
    }
}

/// A connection for one-shot tools (`dml ctl`): it does not listen, sends requests and
/// reads the replies from the same connection.
#[derive(Debug)]
pub struct Client<B> {
    stream: TcpStream,
    dec: FrameDecoder,
    peer: NodeAddr,
    next_id: u64,
    /// Set when a request was cut off mid-way: the stream may hold half a frame.
    broken: bool,
    _body: PhantomData<fn() -> B>,
}

impl<B: Serialize + DeserializeOwned> Client<B> {
    /// Connects to a node's control lane and authenticates, all within `timeout`.
    pub async fn connect(
        addr: &str,
        secret: &[u8],
        timeout: Duration,
    ) -> Result<Self, TransportError> {
        Self::connect_lane(addr, Lane::Control, secret, timeout).await
    }

    /// Connects on a chosen lane (bulk for large uploads or downloads).
    pub async fn connect_lane(
        addr: &str,
        lane: Lane,
        secret: &[u8],
        timeout: Duration,
    ) -> Result<Self, TransportError> {
        let work = async {
            let mut stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let label = match stream.local_addr() {
                Ok(a) => format!("tool@{a}"),
                Err(_) => "tool".to_string(),
            };
            let mut dec = FrameDecoder::new(HANDSHAKE_MAX_FRAME);
            client_handshake(
                &mut stream,
                &mut dec,
                &NodeAddr(label),
                Role::Tool,
                lane,
                secret,
            )
            .await?;
            dec.set_max(MAX_FRAME);
            Ok::<_, TransportError>((stream, dec))
        };
        let (stream, dec) = tokio::time::timeout(timeout, work).await.map_err(|_| {
            TransportError::ConnectTimeout {
                addr: addr.to_string(),
            }
        })??;
        Ok(Client {
            stream,
            dec,
            peer: NodeAddr(addr.to_string()),
            next_id: 0,
            broken: false,
            _body: PhantomData,
        })
    }

    /// The node this client talks to.
    pub fn peer(&self) -> &NodeAddr {
        &self.peer
    }

    /// Sends a request and waits for its reply, at most `timeout`. After a timeout the
    /// connection is unusable (a frame may be half written); connect again.
    pub async fn request(&mut self, body: B, timeout: Duration) -> Result<B, TransportError> {
        if self.broken {
            return Err(TransportError::Closed);
        }
        self.next_id += 1;
        let id = self.next_id;
        let frame = wire::encode_frame(&Envelope::request(id, body))?;
        self.broken = true;
        let Client { stream, dec, .. } = self;
        let work = async {
            stream.write_all(&frame).await?;
            let mut chunk = vec![0u8; READ_CHUNK];
            loop {
                while let Some(env) = dec.next_envelope::<B>()? {
                    if env.reply_to == Some(id) {
                        return Ok(env.body);
                    }
                    // Anything else (an unsolicited message) is not for a tool.
                }
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    return Err(TransportError::PeerClosed);
                }
                dec.push(chunk.get(..n).unwrap_or_default());
            }
        };
        let res =
            tokio::time::timeout(timeout, work)
                .await
                .map_err(|_| TransportError::Timeout {
                    peer: self.peer.clone(),
                    after: timeout,
                })?;
        // A protocol error also leaves the stream in an unknown state.
        self.broken = res.is_err();
        res
    }
}

#[cfg(test)]
mod stats_tests {
    //! The traffic counters: both ends agree on what crossed, per lane, and a tool's
    //! connection is not counted.

    use super::*;

    const SECRET: &[u8] = b"stats test secret";
    const DEADLINE: Duration = Duration::from_secs(10);

    async fn start() -> (Transport<String>, mpsc::Receiver<Inbound<String>>, NodeAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = NodeAddr(listener.local_addr().unwrap().to_string());
        let (t, rx) =
            Transport::start(listener, TransportConfig::new(addr.clone(), SECRET)).unwrap();
        (t, rx, addr)
    }

    #[tokio::test]
    async fn counts_node_traffic_per_lane_and_not_tools() {
        let (a, _rx_a, _) = start().await;
        let (b, mut rx_b, b_addr) = start().await;
        assert_eq!(a.stats(), TransportStats::default());

        a.send(&b_addr, Lane::Control, "ping".to_string()).unwrap();
        a.send(&b_addr, Lane::Bulk, "x".repeat(10_000)).unwrap();
        for _ in 0..2 {
            tokio::time::timeout(DEADLINE, rx_b.recv())
                .await
                .unwrap()
                .unwrap();
        }
        // The writer counts right after its write returns, which may be just after the
        // reader saw the bytes.
        let start = tokio::time::Instant::now();
        while a.stats().bulk.frames_sent + a.stats().control.frames_sent < 2 {
            assert!(start.elapsed() < DEADLINE, "{:?}", a.stats());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let sent = a.stats();
        assert_eq!(sent.control.frames_sent, 1);
        assert_eq!(sent.bulk.frames_sent, 1);
        assert!(sent.bulk.bytes_sent > 10_000, "{sent:?}");
        assert!(
            sent.control.bytes_sent > 0 && sent.control.bytes_sent < 100,
            "{sent:?}"
        );
        let got = b.stats();
        assert_eq!(got.control.frames_received, 1);
        assert_eq!(got.bulk.frames_received, 1);
        assert_eq!(got.control.bytes_received, sent.control.bytes_sent);
        assert_eq!(got.bulk.bytes_received, sent.bulk.bytes_sent);

        // A tool's request and its reply leave the counters alone.
        let mut tool = Client::<String>::connect(b_addr.as_str(), SECRET, DEADLINE)
            .await
            .unwrap();
        let ask = tokio::spawn(async move { tool.request("stats".to_string(), DEADLINE).await });
        let m = tokio::time::timeout(DEADLINE, rx_b.recv())
            .await
            .unwrap()
            .unwrap();
        m.responder.unwrap().respond("figures".to_string()).unwrap();
        assert_eq!(ask.await.unwrap().unwrap(), "figures");
        assert_eq!(b.stats(), got);
    }
}
