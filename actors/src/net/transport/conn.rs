//! The transport's connections and lanes: the shared state behind a [`Transport`], the
//! per-(peer, lane) outbound task with its queue and back-off, the accept loop, the
//! handshakes over sockets, and the read/write loops that count traffic and deliver
//! envelopes. The public API in `transport.rs` only queues and registers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::{Rng, RngCore};
use rand_chacha::ChaCha8Rng;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tracing::{debug, info};

use crate::net::wire::{
    refusal_frame, Access, Authority, Channel, ClientHandshake, Credential, Envelope, Ephemeral,
    Established, FrameDecoder, HandshakeError, Sealer, SecureDecoder, ServerHandshake,
    SystemRandom, HANDSHAKE_MAX_FRAME, NONCE_LEN,
};
use crate::types::NodeAddr;

use super::flood::{Admission, HandshakeTable, TableEntry, WarnLimiter, WARN_INTERVAL};
use super::{
    Inbound, LaneStats, Message, Responder, ResponderKind, TransportConfig, TransportError,
};
use crate::net::wire::{Lane, Role};

/// Bytes read from a socket at a time. Also the most a decoder holds beyond one frame.
pub(super) const READ_CHUNK: usize = 64 * 1024;

/// An encoded frame waiting to be written, with the envelope id (so a request whose frame
/// is dropped can fail at once instead of waiting for its timeout).
pub(super) struct Outgoing {
    pub(super) id: u64,
    pub(super) frame: Vec<u8>,
}

/// Lock-free counters behind [`super::TransportStats`]: index 0 is the control lane, 1 bulk.
#[derive(Default)]
pub(super) struct Counters {
    pub(super) bytes_sent: [AtomicU64; 2],
    pub(super) bytes_received: [AtomicU64; 2],
    pub(super) frames_sent: [AtomicU64; 2],
    pub(super) frames_received: [AtomicU64; 2],
}

impl Counters {
    pub(super) fn slot(lane: Lane) -> usize {
        match lane {
            Lane::Control => 0,
            Lane::Bulk => 1,
        }
    }

    pub(super) fn add(counter: &[AtomicU64; 2], lane: Lane, n: usize) {
        if let Some(c) = counter.get(Self::slot(lane)) {
            c.fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    pub(super) fn lane(&self, lane: Lane) -> LaneStats {
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
pub(super) struct Shared {
    pub(super) next_id: AtomicU64,
    pub(super) max_frame: usize,
    /// Drop rate and its seeded generator.
    pub(super) loss: Mutex<(f64, ChaCha8Rng)>,
    /// Traffic between nodes.
    pub(super) counters: Counters,
    /// Connection warnings, rate-limited and summarised.
    pub(super) warnings: WarnLimiter,
}

impl Shared {
    pub(super) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Whether simulated loss eats this message. Only the control lane is affected: loss
    /// tests are about the failure detector, and a lost bulk frame would only stall SDFS.
    pub(super) fn drops(&self, lane: Lane) -> bool {
        if lane != Lane::Control {
            return false;
        }
        let mut loss = lock(&self.loss);
        let rate = loss.0;
        rate > 0.0 && loss.1.gen::<f64>() < rate
    }
}

/// A request waiting for its reply.
pub(super) struct Pending<B> {
    pub(super) peer: NodeAddr,
    pub(super) tx: oneshot::Sender<B>,
}

pub(super) struct PeerEntry {
    pub(super) tx: mpsc::Sender<Outgoing>,
    pub(super) task: AbortHandle,
    /// Set when the peer connects to us: it is evidently up, so its back-off ends now
    /// (otherwise a node that started after us would miss our answers for seconds).
    pub(super) revived: Arc<AtomicBool>,
}

pub(super) struct ConnEntry {
    /// Known once the handshake has named the peer.
    pub(super) peer: Option<NodeAddr>,
    pub(super) task: AbortHandle,
}

pub(super) struct Inner<B> {
    pub(super) cfg: TransportConfig,
    pub(super) shared: Arc<Shared>,
    pub(super) rt: Handle,
    pub(super) shut: AtomicBool,
    pub(super) peers: Mutex<HashMap<(NodeAddr, Lane), PeerEntry>>,
    pub(super) conns: Mutex<HashMap<u64, ConnEntry>>,
    pub(super) next_conn: AtomicU64,
    pub(super) pending: Mutex<HashMap<u64, Pending<B>>>,
    pub(super) inbound: Mutex<Option<mpsc::Sender<Inbound<B>>>>,
    pub(super) bulk_slots: Arc<Semaphore>,
    /// Accepted connections still in their handshake.
    pub(super) handshakes: Mutex<HandshakeTable>,
    /// What incoming hellos are checked against.
    pub(super) authority: Authority,
    /// What this node proves when it dials.
    pub(super) credential: Credential,
    pub(super) accept: Mutex<Option<AbortHandle>>,
}

/// Locks a mutex, recovering it if a holder panicked: the maps stay consistent between
/// statements, and a transport that stops working after one bug would be worse.
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Logs the end of a connection at the level it deserves (warnings rate-limited).
pub(super) fn log_end(shared: &Shared, peer: &str, lane: Lane, res: &Result<(), TransportError>) {
    match res {
        Ok(()) | Err(TransportError::PeerClosed) => debug!(%peer, %lane, "connection closed"),
        Err(e) if e.is_protocol_violation() => shared.warnings.warn(
            "closing connection after a protocol error",
            &format_args!("{peer} ({lane})"),
            e,
        ),
        Err(e) => debug!(%peer, %lane, error = %e, "connection lost"),
    }
}

impl<B: Message> Inner<B> {
    pub(super) fn check_open(&self) -> Result<(), TransportError> {
        if self.shut.load(Ordering::Acquire) {
            return Err(TransportError::Shutdown);
        }
        Ok(())
    }

    /// Fails a request whose frame will never be written.
    pub(super) fn fail_pending(&self, id: u64) {
        lock(&self.pending).remove(&id);
    }

    /// Hands a reply to the request waiting for it, if that request went to this peer.
    pub(super) fn complete(&self, reply_to: u64, from: &NodeAddr, body: B) {
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
    pub(super) fn enqueue(
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

    pub(super) fn forget(&self, peer: &NodeAddr) {
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

    pub(super) fn shutdown(&self) {
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

/// Removes a connection's registry entry when its task ends, however it ends.
pub(super) struct ConnRegistration<B: Message> {
    pub(super) inner: Arc<Inner<B>>,
    pub(super) id: u64,
}

impl<B: Message> Drop for ConnRegistration<B> {
    fn drop(&mut self) {
        lock(&self.inner.conns).remove(&self.id);
    }
}

/// What the read side of one connection needs to deliver what it reads.
pub(super) struct ConnCtx<B: Message> {
    pub(super) inner: Arc<Inner<B>>,
    pub(super) peer: NodeAddr,
    pub(super) lane: Lane,
    /// Replies to requests read here are queued on this connection's writer.
    pub(super) reply_tx: mpsc::Sender<Outgoing>,
    pub(super) inbound: mpsc::Sender<Inbound<B>>,
    /// Whether this connection's traffic counts in [`TransportStats`] (tools' does not).
    pub(super) counted: bool,
    /// What the peer proved.
    pub(super) access: Access,
}

impl<B: Message> ConnCtx<B> {
    pub(super) fn new(
        inner: Arc<Inner<B>>,
        est: Established,
        reply_tx: mpsc::Sender<Outgoing>,
    ) -> Result<Self, TransportError> {
        let inbound = lock(&inner.inbound)
            .clone()
            .ok_or(TransportError::Shutdown)?;
        Ok(ConnCtx {
            counted: est.role == Role::Node,
            access: est.access,
            inner,
            peer: est.peer,
            lane: est.lane,
            reply_tx,
            inbound,
        })
    }

    /// Adds to the traffic counters (frames written or read, bytes) of this lane.
    pub(super) fn count(&self, sent: bool, frames: usize, bytes: usize) {
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

    pub(super) async fn dispatch(&self, env: Envelope<B>) -> Result<(), TransportError> {
        if self.access != Access::Node {
            // A tool may only ask; it answers nothing (a reply from it could otherwise
            // complete a request this node sent to a node whose address it claims).
            if env.reply_to.is_some() {
                return Err(TransportError::Forbidden { what: "reply" });
            }
            if !env.body.tool_may_send() {
                return Err(TransportError::Forbidden { what: "node-only" });
            }
        }
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
            access: self.access.clone(),
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
pub(super) async fn read_payload<S: AsyncRead + Unpin>(
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

pub(super) fn fresh_nonce() -> Result<[u8; NONCE_LEN], TransportError> {
    let mut nonce = [0u8; NONCE_LEN];
    rand::rngs::OsRng
        .try_fill_bytes(&mut nonce)
        .map_err(|e| TransportError::Io(std::io::Error::other(e.to_string())))?;
    Ok(nonce)
}

fn fresh_ephemeral() -> Result<Ephemeral, TransportError> {
    Ok(Ephemeral::generate(&SystemRandom::new())?)
}

/// The dialling side of the handshake. Leaves any bytes read past it in `dec`.
pub(super) async fn client_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    dec: &mut FrameDecoder,
    local: &NodeAddr,
    role: Role,
    lane: Lane,
    cred: &Credential,
) -> Result<(Established, Channel), TransportError> {
    let (state, hello) =
        ClientHandshake::start(local, role, lane, cred, fresh_nonce()?, fresh_ephemeral()?)?;
    stream.write_all(&hello).await?;
    let challenge = read_payload(stream, dec).await?;
    let (est, channel, finish) = state.on_challenge(&challenge)?;
    stream.write_all(&finish).await?;
    Ok((est, channel))
}

/// The listening side of the handshake. Leaves any bytes read past it in `dec`. The hello
/// must come within `hello_timeout`; a refusal is told to the peer before closing.
pub(super) async fn server_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    dec: &mut FrameDecoder,
    local: &NodeAddr,
    auth: &Authority,
    hello_timeout: Duration,
    on_hello: impl FnOnce(),
) -> Result<(Established, Channel), TransportError> {
    let hello = tokio::time::timeout(hello_timeout, read_payload(stream, dec))
        .await
        .map_err(|_| TransportError::HandshakeTimeout)??;
    let (state, challenge) =
        match ServerHandshake::on_hello(auth, local, fresh_nonce()?, fresh_ephemeral()?, &hello) {
            Ok(answer) => answer,
            Err(e) => {
                if let Some(frame) = refusal_frame(&e) {
                    // Best effort: the peer may already be gone.
                    let _ = stream.write_all(&frame).await;
                }
                return Err(e.into());
            }
        };
    on_hello();
    stream.write_all(&challenge).await?;
    let finish = read_payload(stream, dec).await?;
    Ok(state.on_finish(&finish)?)
}

/// How a refused or failed handshake is counted in the warning summary.
fn handshake_kind(e: &TransportError) -> &'static str {
    match e {
        TransportError::HandshakeTimeout => "handshake timed out",
        TransportError::Handshake(HandshakeError::Refused(_)) => "handshake refused",
        TransportError::Handshake(HandshakeError::BadProof) => "handshake failed its proof",
        TransportError::PeerClosed | TransportError::Io(_) => "connection dropped in handshake",
        _ => "handshake failed",
    }
}

pub(super) async fn accept_loop<B: Message>(inner: Arc<Inner<B>>, listener: TcpListener) {
    let mut summary = tokio::time::interval(WARN_INTERVAL);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = summary.tick() => {
                inner.shared.warnings.flush();
                continue;
            }
        };
        let (stream, remote) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Usually out of file descriptors: pause instead of spinning.
                inner.shared.warnings.warn("accept failed", &"listener", &e);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let id = inner.next_conn.fetch_add(1, Ordering::Relaxed);
        let priority = inner.cfg.priority_ips.contains(&remote.ip());
        let admission = lock(&inner.handshakes).admit(id, remote.ip(), priority, Instant::now());
        match admission {
            Admission::Admitted => {}
            Admission::Evicted(_) => inner.shared.warnings.warn(
                "too many pending handshakes; evicted the oldest silent one",
                &remote,
                &"flood?",
            ),
            Admission::Refused => {
                inner.shared.warnings.warn(
                    "too many pending handshakes; refused a connection",
                    &remote,
                    &"flood?",
                );
                continue;
            }
        }
        let mut conns = lock(&inner.conns);
        if inner.shut.load(Ordering::Acquire) {
            return;
        }
        // Registered under the lock, so that the task's clean-up (which takes the lock)
        // cannot run before the entry exists.
        let task = inner
            .rt
            .spawn(serve_inbound(inner.clone(), id, stream, remote));
        lock(&inner.handshakes).set_task(id, task.abort_handle());
        conns.insert(
            id,
            ConnEntry {
                peer: None,
                task: task.abort_handle(),
            },
        );
    }
}

pub(super) async fn serve_inbound<B: Message>(
    inner: Arc<Inner<B>>,
    id: u64,
    mut stream: TcpStream,
    remote: SocketAddr,
) {
    let _registration = ConnRegistration {
        inner: inner.clone(),
        id,
    };
    let pending = TableEntry {
        table: &inner.handshakes,
        id,
    };
    let mut dec = FrameDecoder::new(HANDSHAKE_MAX_FRAME);
    let handshake = tokio::time::timeout(
        inner.cfg.handshake_timeout,
        server_handshake(
            &mut stream,
            &mut dec,
            &inner.cfg.local,
            &inner.authority,
            inner.cfg.hello_timeout,
            || lock(&inner.handshakes).hello_seen(id),
        ),
    )
    .await;
    drop(pending);
    let (mut est, channel) = match handshake {
        Ok(Ok(est)) => est,
        Ok(Err(e)) => {
            inner.shared.warnings.warn(handshake_kind(&e), &remote, &e);
            return;
        }
        Err(_) => {
            let e = TransportError::HandshakeTimeout;
            inner.shared.warnings.warn(handshake_kind(&e), &remote, &e);
            return;
        }
    };
    if let Access::Operator { name, .. } = &est.access {
        // A tool's label is its own claim; what it proved is the operator, and where
        // it came from is the socket. It must never pass for a node's address.
        est.peer = NodeAddr(format!("{name}@{remote}"));
    }
    if let Some(entry) = lock(&inner.conns).get_mut(&id) {
        entry.peer = Some(est.peer.clone());
    }
    // Pings are tiny and latency-sensitive, and we always write whole frames, so Nagle
    // would only add delay, on either lane.
    if let Err(e) = stream.set_nodelay(true) {
        debug!(%remote, error = %e, "could not set TCP_NODELAY");
    }
    debug!(peer = %est.peer, lane = %est.lane, access = ?est.access, %remote, "inbound connection authenticated");
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
    let shared = inner.shared.clone();
    let res = match ConnCtx::new(inner, est, reply_tx) {
        Ok(ctx) => run_conn(stream, dec, channel, None, &mut reply_rx, &ctx).await,
        Err(e) => Err(e),
    };
    log_end(&shared, peer.as_str(), lane, &res);
}

/// Connects to `peer` and authenticates, within the configured timeouts.
pub(super) async fn dial<B: Message>(
    inner: &Inner<B>,
    peer: &NodeAddr,
    lane: Lane,
) -> Result<(TcpStream, FrameDecoder, Established, Channel), TransportError> {
    let cfg = &inner.cfg;
    let mut stream = tokio::time::timeout(cfg.connect_timeout, TcpStream::connect(peer.as_str()))
        .await
        .map_err(|_| TransportError::ConnectTimeout {
            addr: peer.0.clone(),
        })??;
    stream.set_nodelay(true)?;
    let mut dec = FrameDecoder::new(HANDSHAKE_MAX_FRAME);
    let (est, channel) = tokio::time::timeout(
        cfg.handshake_timeout,
        client_handshake(
            &mut stream,
            &mut dec,
            &cfg.local,
            Role::Node,
            lane,
            &inner.credential,
        ),
    )
    .await
    .map_err(|_| TransportError::HandshakeTimeout)??;
    Ok((stream, dec, est, channel))
}

/// Owns the outbound connection to one (peer, lane): connects when there is something to
/// send, writes the queue, reconnects after a loss, and backs off while the peer is down.
pub(super) async fn peer_task<B: Message>(
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
                    inner.shared.warnings.warn(
                        "could not authenticate to peer",
                        &format_args!("{peer} ({lane})"),
                        &e,
                    );
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
            Ok((stream, dec, est, channel)) => {
                backoff = inner.cfg.backoff_min;
                debug!(%peer, %lane, announced = %est.peer, "outbound connection authenticated");
                // Replies on this connection must be matched against the address we
                // dialled, which is what requests were registered under.
                let est = Established {
                    peer: peer.clone(),
                    ..est
                };
                let res = match ConnCtx::new(inner.clone(), est, self_tx.clone()) {
                    Ok(ctx) => run_conn(stream, dec, channel, Some(first), &mut rx, &ctx).await,
                    Err(e) => Err(e),
                };
                log_end(&inner.shared, peer.as_str(), lane, &res);
                // A connection that worked and broke is retried at once: the peer most
                // likely restarted.
                retry_at = Instant::now();
            }
        }
    }
}

/// Seals and writes one frame.
async fn write_sealed(
    wr: &mut tokio::net::tcp::OwnedWriteHalf,
    sealer: &mut Sealer,
    mut frame: Vec<u8>,
) -> Result<usize, TransportError> {
    sealer.seal_frame(&mut frame)?;
    wr.write_all(&frame).await?;
    Ok(frame.len())
}

/// Drives one authenticated connection until either direction fails. Reading and writing
/// run concurrently, so two peers writing large frames to each other cannot deadlock.
/// Every frame is sealed on the way out and opened on the way in; one that does not open
/// ends the connection.
pub(super) async fn run_conn<B: Message>(
    stream: TcpStream,
    dec: FrameDecoder,
    channel: Channel,
    first: Option<Outgoing>,
    rx: &mut mpsc::Receiver<Outgoing>,
    ctx: &ConnCtx<B>,
) -> Result<(), TransportError> {
    let (mut rd, mut wr) = stream.into_split();
    let Channel { mut sealer, opener } = channel;
    let writer = async {
        let mut next = first;
        loop {
            let out = match next.take() {
                Some(out) => out,
                None => match rx.recv().await {
                    Some(out) => out,
                    None => return Ok(()),
                },
            };
            match write_sealed(&mut wr, &mut sealer, out.frame).await {
                Ok(len) => ctx.count(true, 1, len),
                Err(e) => {
                    ctx.inner.fail_pending(out.id);
                    return Err(e);
                }
            }
        }
    };
    let dec = SecureDecoder::new(dec, opener, ctx.inner.cfg.max_frame);
    let reader = read_loop(&mut rd, dec, ctx);
    tokio::select! {
        res = writer => res,
        res = reader => res,
    }
}

pub(super) async fn read_loop<B: Message>(
    rd: &mut OwnedReadHalf,
    mut dec: SecureDecoder,
    ctx: &ConnCtx<B>,
) -> Result<(), TransportError> {
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
        // Straight into the decoder's buffer, where the frame is then opened in place.
        let n = rd.read(dec.read_buf(READ_CHUNK)).await?;
        if n == 0 {
            return match dec.buffered() {
                0 => Err(TransportError::PeerClosed),
                buffered => Err(TransportError::Truncated { buffered }),
            };
        }
        dec.filled(n);
    }
}
