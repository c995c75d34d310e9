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
//!
//! This file is the public API (config, errors, [`Transport`], [`Inbound`], [`Responder`],
//! stats); the connections and lanes behind it live in `transport/conn.rs`, the tools'
//! [`Client`] in `transport/client.rs`.
#![deny(missing_docs)]

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::de::DeserializeOwned;
use serde::Serialize;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info};

use crate::net::wire::{
    self, Access, Authority, Credential, Envelope, HandshakeError, Key, KeyError, Keyring,
    OperatorKey, WireError, HANDSHAKE_MAX_FRAME, MAX_FRAME,
};
use crate::types::NodeAddr;

use self::conn::{accept_loop, lock, Counters, Inner, Outgoing, Pending, Shared};
use self::flood::{HandshakeTable, WarnLimiter};
pub use crate::net::wire::{Lane, Role};

mod client;
mod conn;
mod flood;

pub use self::client::Client;

/// The bodies a transport carries: serialisable, and able to say which of them a tool
/// (an operator's `dml ctl`) may send. Everything else is accepted only from nodes.
pub trait Message: Serialize + DeserializeOwned + Send + 'static {
    /// Whether a connection that proved an operator key (not the cluster key) may send
    /// this. A tool that sends anything else is cut off.
    fn tool_may_send(&self) -> bool;
}

impl Message for String {
    fn tool_may_send(&self) -> bool {
        true
    }
}

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
    /// A tool sent a message only nodes may send; its connection is closed.
    #[error("a {what} message is accepted only from nodes, not from a tool connection")]
    Forbidden {
        /// What was sent.
        what: &'static str,
    },
    /// A key in the configuration is unusable.
    #[error("invalid key: {0}")]
    Key(#[from] KeyError),
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
                | TransportError::Forbidden { .. }
        )
    }
}

/// Settings of a [`Transport`]. Build with [`TransportConfig::new`] and adjust fields.
#[derive(Clone)]
pub struct TransportConfig {
    /// The address this node announces (and listens at), `host:port`.
    pub local: NodeAddr,
    /// The cluster key this node dials with (and accepts). At least 16 bytes.
    pub secret: Vec<u8>,
    /// Older (or newer) cluster keys still accepted from dialling nodes, for rotation.
    pub accept_secrets: Vec<Vec<u8>>,
    /// Operators whose tools may connect, each with its own key and grant.
    pub operators: Vec<OperatorKey>,
    /// Whether a tool may prove the cluster key instead of an operator key.
    pub allow_secret_for_tools: bool,
    /// Addresses whose pending handshakes are evicted last when the handshake table is
    /// full (the configured nodes and the introducer).
    pub priority_ips: Vec<std::net::IpAddr>,
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
    /// Limit on an accepted connection's first message (the hello).
    pub hello_timeout: Duration,
    /// Accepted connections that have not finished their handshake, at most; a new one
    /// beyond it evicts the oldest that has not sent its hello yet.
    pub max_pending_handshakes: usize,
    /// The same, per source IP address.
    pub max_pending_per_ip: usize,
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
            accept_secrets: Vec::new(),
            operators: Vec::new(),
            allow_secret_for_tools: false,
            priority_ips: Vec::new(),
            max_frame: MAX_FRAME,
            queue_cap: 1024,
            inbound_cap: 4096,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(3),
            handshake_timeout: Duration::from_secs(5),
            hello_timeout: Duration::from_secs(2),
            max_pending_handshakes: 1024,
            max_pending_per_ip: 256,
            drop_rate: 0.0,
            drop_seed: 0,
        }
    }

    fn validate(&self) -> Result<(), TransportError> {
        let bad = |s: &str| Err(TransportError::Config(s.to_string()));
        if self.secret.is_empty() {
            return bad("secret must not be empty");
        }
        self.authority()?;
        if self.local.as_str().is_empty() || self.local.as_str().len() > wire::MAX_ADDR_LEN {
            return bad("local address must be 1 to 255 bytes");
        }
        if self.max_frame < HANDSHAKE_MAX_FRAME || self.max_frame > MAX_FRAME {
            return bad("max_frame must be between 1 KiB and 16 MiB");
        }
        if self.queue_cap == 0 || self.max_pending_handshakes == 0 || self.max_pending_per_ip == 0 {
            return bad("queue_cap and the pending handshake limits must be positive");
        }
        if self.inbound_cap < 2 {
            return bad("inbound_cap must be at least 2");
        }
        if self.backoff_min.is_zero() || self.backoff_max < self.backoff_min {
            return bad("backoff_min must be positive and at most backoff_max");
        }
        if self.connect_timeout.is_zero()
            || self.handshake_timeout.is_zero()
            || self.hello_timeout.is_zero()
        {
            return bad("connect, hello and handshake timeouts must be positive");
        }
        if !(0.0..=1.0).contains(&self.drop_rate) {
            return bad("drop_rate must be between 0 and 1");
        }
        Ok(())
    }

    /// The keys incoming hellos are checked against.
    pub fn authority(&self) -> Result<Authority, TransportError> {
        let accept = self
            .accept_secrets
            .iter()
            .map(|k| Key::new(k.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Authority {
            ring: Keyring::new(Key::new(self.secret.clone())?, accept),
            operators: self.operators.clone(),
            allow_secret_for_tools: self.allow_secret_for_tools,
        })
    }
}

impl fmt::Debug for TransportConfig {
    // By hand, so that the secret never reaches a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransportConfig")
            .field("local", &self.local)
            .field("secret", &"<redacted>")
            .field("accept_secrets", &self.accept_secrets.len())
            .field("operators", &self.operators)
            .field("allow_secret_for_tools", &self.allow_secret_for_tools)
            .field("priority_ips", &self.priority_ips)
            .field("max_frame", &self.max_frame)
            .field("queue_cap", &self.queue_cap)
            .field("inbound_cap", &self.inbound_cap)
            .field("backoff_min", &self.backoff_min)
            .field("backoff_max", &self.backoff_max)
            .field("connect_timeout", &self.connect_timeout)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("hello_timeout", &self.hello_timeout)
            .field("max_pending_handshakes", &self.max_pending_handshakes)
            .field("max_pending_per_ip", &self.max_pending_per_ip)
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
    /// What the sender proved: a node, or an operator with its grant.
    pub access: Access,
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
            access: Access::Node,
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
        self.respond_or(body, |_| None)
    }

    /// Sends the reply or, when it is too large for one frame, what `too_large` makes of
    /// that error instead, so that the asker learns why rather than waiting out its
    /// timeout. The error is returned in that case too.
    pub fn respond_or(
        self,
        body: B,
        too_large: impl FnOnce(&WireError) -> Option<B>,
    ) -> Result<(), TransportError> {
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
                let encode =
                    |b| wire::encode_frame_max(&Envelope::reply(id, reply_to, b), shared.max_frame);
                let (frame, refused) = match encode(body) {
                    Ok(frame) => (frame, None),
                    Err(e @ WireError::FrameTooLarge { .. }) => {
                        match too_large(&e).and_then(|b| encode(b).ok()) {
                            Some(frame) => (frame, Some(e)),
                            None => return Err(e.into()),
                        }
                    }
                    Err(e) => return Err(e.into()),
                };
                if shared.drops(lane) {
                    debug!(%peer, %lane, "simulated loss: reply dropped");
                    return Ok(());
                }
                tx.try_send(Outgoing { id, frame }).map_err(|e| match e {
                    TrySendError::Full(_) => TransportError::QueueFull { peer, lane },
                    TrySendError::Closed(_) => TransportError::Closed,
                })?;
                refused.map_or(Ok(()), |e| Err(e.into()))
            }
        }
    }
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

/// Shuts the transport down when the last [`Transport`] handle is dropped. Tasks hold the
/// inner state, so without this the listener would outlive every handle.
struct Guard<B: Message> {
    inner: Arc<Inner<B>>,
}

impl<B: Message> Drop for Guard<B> {
    fn drop(&mut self) {
        self.inner.shutdown();
    }
}

/// A node's transport. Cheap to clone; all clones share the connections. Dropping the
/// last clone shuts it down.
pub struct Transport<B: Message> {
    guard: Arc<Guard<B>>,
}

impl<B: Message> Clone for Transport<B> {
    fn clone(&self) -> Self {
        Transport {
            guard: self.guard.clone(),
        }
    }
}

impl<B: Message> fmt::Debug for Transport<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Transport({})", self.inner().cfg.local)
    }
}

impl<B: Message> Transport<B> {
    /// Starts accepting on `listener` (already bound, so tests can bind port 0) and returns
    /// the transport and the channel of inbound messages. Must be called inside a tokio
    /// runtime; all tasks are spawned on it.
    pub fn start(
        listener: TcpListener,
        cfg: TransportConfig,
    ) -> Result<(Self, mpsc::Receiver<Inbound<B>>), TransportError> {
        cfg.validate()?;
        let authority = cfg.authority()?;
        let credential = Credential::cluster(Key::new(cfg.secret.clone())?);
        let rt = Handle::try_current().map_err(|_| TransportError::NoRuntime)?;
        let (tx, rx) = mpsc::channel(cfg.inbound_cap);
        let shared = Arc::new(Shared {
            next_id: AtomicU64::new(1),
            max_frame: cfg.max_frame,
            loss: Mutex::new((cfg.drop_rate, ChaCha8Rng::seed_from_u64(cfg.drop_seed))),
            counters: Counters::default(),
            warnings: WarnLimiter::new(),
        });
        let inner = Arc::new(Inner {
            bulk_slots: Arc::new(Semaphore::new(cfg.inbound_cap / 2)),
            handshakes: Mutex::new(HandshakeTable::new(
                cfg.max_pending_handshakes,
                cfg.max_pending_per_ip,
            )),
            authority,
            credential,
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

struct PendingEntry<'a, B: Message> {
    inner: &'a Inner<B>,
    id: u64,
}

impl<B: Message> Drop for PendingEntry<'_, B> {
    fn drop(&mut self) {
        self.inner.fail_pending(self.id);
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
        let mut cfg = TransportConfig::new(addr.clone(), SECRET);
        cfg.allow_secret_for_tools = true;
        let (t, rx) = Transport::start(listener, cfg).unwrap();
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
        let cred = wire::Credential::cluster(wire::Key::new(SECRET).unwrap());
        let mut tool = Client::<String>::connect(b_addr.as_str(), &cred, DEADLINE)
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
