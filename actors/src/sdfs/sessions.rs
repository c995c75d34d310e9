//! Operator transfers on the node's side (`PutBegin` .. `TransferEnd`): which range of a
//! put's source the core waits for, which tool request waits for the answer, and the
//! pieces of a get on their way to the tool. A get streams through a short queue: when
//! the tool reads slower than the holders send, the holders' chunks are parked before
//! the core sees them, so it acknowledges nothing and the holders' windows stop them;
//! memory stays bounded and nothing touches the node's disk. The node never opens a
//! path a tool named: its only files here are the spool files of the scp transfer.

use std::collections::{HashMap, VecDeque};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::oneshot;

use crate::control::{Outcome, Piece, Reply, Transfer};
use crate::sdfs::{Input, OpId, SdfsName, MAX_CHUNK};

/// A session no tool request touched for this long is given up: its put fails, its
/// spool file or queued pieces are dropped. A tool that died mid-transfer never comes back for it.
pub(super) const IDLE: Duration = Duration::from_secs(60);

/// Where the node spools the puts of the scp transfer, under its SDFS root.
pub(super) const SPOOL_DIR: &str = "spool";

/// Pieces of a get queued for the tool before the holders' chunks are parked.
pub(super) const QUEUED_PIECES: usize = 8;

/// Most chunk bytes one answer to a get's request carries (far below the frame limit).
pub(super) const BATCH_BYTES: usize = 4 * MAX_CHUNK;

pub(super) enum Kind {
    /// A put whose core pulls the source from the tool, one range at a time. The tool
    /// is asked for the next range as soon as it sent one, so that reading and sending
    /// it overlaps with the node streaming the last one to the replicas: the round trip
    /// to the tool is not on every chunk's path. At most one range is held ahead.
    Pull {
        op: OpId,
        /// The range the core asked for and the tool has not sent yet.
        want: Option<(u64, usize)>,
        /// Bytes the tool sent (at that offset) before the core asked for them.
        ahead: Option<(u64, Vec<u8>)>,
    },
    /// scp transfer: the source is first spooled whole, because a staging copy sends a
    /// whole file; `next` is the offset the tool sends next.
    Spool {
        name: SdfsName,
        path: PathBuf,
        file: File,
        next: u64,
    },
    /// A put running from its spool file.
    Spooled { op: OpId, path: PathBuf },
    /// A get streaming to the tool.
    Stream {
        /// Pieces the tool has not taken yet.
        pieces: VecDeque<Piece>,
        /// The holders' chunks held back while `pieces` is full, in arrival order.
        parked: VecDeque<Input>,
        /// The read's answer, sent after the last piece.
        end: Option<Outcome>,
    },
    /// A put that ended while no request of the tool waited for the answer.
    Ended(Outcome),
}

impl Kind {
    /// A put whose core has asked for nothing yet.
    pub(super) fn pull(op: OpId) -> Kind {
        Kind::Pull {
            op,
            want: None,
            ahead: None,
        }
    }

    /// A get that has sent nothing yet.
    pub(super) fn stream() -> Kind {
        Kind::Stream {
            pieces: VecDeque::new(),
            parked: VecDeque::new(),
            end: None,
        }
    }
}

pub(super) struct Session {
    pub kind: Kind,
    /// The tool request that gets the next answer.
    pub waiter: Option<oneshot::Sender<Outcome>>,
    last: Instant,
}

/// What became of the core's ask for a range of a put's source.
pub(super) enum Want {
    /// The session is gone (the tool ended it): the put must fail.
    Gone,
    /// The tool was asked (or is sending it already); the bytes come with its request.
    Asked,
    /// The tool sent the range ahead: feed these bytes to the core now.
    Ready(Vec<u8>),
}

/// What a session's owner must do after the tool sent bytes of a put.
pub(super) enum Data {
    /// Feed these bytes to the core as op's source at `offset`.
    Feed {
        op: OpId,
        offset: u64,
        data: Vec<u8>,
    },
    /// The spooled source is complete: start the put of `name` from `path`.
    Spooled { name: SdfsName, path: PathBuf },
    /// Nothing (answered already, or the answer waits for the core).
    Nothing,
}

pub(super) struct Sessions {
    map: HashMap<u64, Session>,
    dir: PathBuf,
}

fn step(step: Transfer) -> Outcome {
    Ok(Reply::transfer(step))
}

impl Sessions {
    /// Sessions spooling under `dir`, which is emptied: leftovers of an earlier life
    /// have no tool waiting for them.
    pub(super) fn open(dir: PathBuf) -> io::Result<Self> {
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        Ok(Sessions {
            map: HashMap::new(),
            dir,
        })
    }

    /// A fresh session id: random, so one tool cannot stumble into another's transfer.
    pub(super) fn new_id(&self) -> u64 {
        let mut rng = rand::thread_rng();
        loop {
            let id: u64 = rng.gen();
            if id != 0 && !self.map.contains_key(&id) {
                return id;
            }
        }
    }

    pub(super) fn insert(&mut self, id: u64, kind: Kind, waiter: Option<oneshot::Sender<Outcome>>) {
        let last = Instant::now();
        self.map.insert(id, Session { kind, waiter, last });
    }

    pub(super) fn get_mut(&mut self, id: u64) -> Option<&mut Session> {
        self.map.get_mut(&id)
    }

    /// Removes a session and its spool file.
    pub(super) fn remove(&mut self, id: u64) -> Option<Session> {
        let s = self.map.remove(&id)?;
        match &s.kind {
            Kind::Spool { path, .. } | Kind::Spooled { path, .. } => {
                let _ = fs::remove_file(path);
            }
            Kind::Pull { .. } | Kind::Stream { .. } | Kind::Ended(_) => {}
        }
        Some(s)
    }

    /// A new spool file for session `id` (`tag` says what it holds).
    pub(super) fn spool_path(&self, id: u64, tag: &str) -> PathBuf {
        self.dir.join(format!("{tag}-{id:016x}"))
    }

    /// Starts spooling a put's source (scp transfer) and asks the tool for its start.
    pub(super) fn start_spool(
        &mut self,
        name: SdfsName,
        reply: oneshot::Sender<Outcome>,
    ) -> Result<(), String> {
        let id = self.new_id();
        let path = self.spool_path(id, "put");
        let file = File::create(&path).map_err(|e| format!("cannot spool the put: {e}"))?;
        let _ = reply.send(step(Transfer::Send {
            session: id,
            offset: 0,
            len: MAX_CHUNK as u32,
        }));
        let kind = Kind::Spool {
            name,
            path,
            file,
            next: 0,
        };
        self.insert(id, kind, None);
        Ok(())
    }

    /// The core asked for `len` bytes of session `id`'s source at `offset`.
    pub(super) fn want(&mut self, id: u64, offset: u64, len: usize) -> Want {
        let Some(s) = self.map.get_mut(&id) else {
            return Want::Gone;
        };
        let Kind::Pull { want, ahead, .. } = &mut s.kind else {
            return Want::Asked;
        };
        match ahead.take() {
            Some((at, data)) if at == offset => {
                // The tool is told the range after these bytes (none after the end).
                if !data.is_empty() {
                    let next = offset.saturating_add(data.len() as u64);
                    Self::ask(s, id, next, len);
                }
                Want::Ready(data)
            }
            // Bytes of a range the core does not want (it restarted the upload).
            _ => {
                *want = Some((offset, len));
                Self::ask(s, id, offset, len);
                Want::Asked
            }
        }
    }

    /// Tells a waiting tool request which range to send next.
    fn ask(s: &mut Session, id: u64, offset: u64, len: usize) {
        if let Some(tx) = s.waiter.take() {
            let len = u32::try_from(len).unwrap_or(u32::MAX);
            let _ = tx.send(step(Transfer::Send {
                session: id,
                offset,
                len,
            }));
        }
    }

    /// The tool sent `data` at `offset` for session `id`; `reply` waits for the next step.
    pub(super) fn data(
        &mut self,
        id: u64,
        offset: u64,
        data: Vec<u8>,
        reply: oneshot::Sender<Outcome>,
    ) -> Data {
        let Some(s) = self.map.get_mut(&id) else {
            let _ = reply.send(Err(gone(id)));
            return Data::Nothing;
        };
        s.last = Instant::now();
        match &mut s.kind {
            Kind::Pull { op, want, ahead } => {
                let op = *op;
                s.waiter = Some(reply);
                match *want {
                    Some((o, len)) if o == offset => {
                        *want = None;
                        // Read ahead: the tool sends the next range while the core
                        // streams this one (nothing is after the end).
                        if !data.is_empty() {
                            let next = offset.saturating_add(data.len() as u64);
                            Self::ask(s, id, next, len);
                        }
                        Data::Feed { op, offset, data }
                    }
                    // Bytes for a range the core no longer wants (it restarted the
                    // upload): ask for the current one again.
                    Some((o, len)) => {
                        Self::ask(s, id, o, len);
                        Data::Nothing
                    }
                    // The range read ahead: kept until the core asks for it; the tool's
                    // request waits until then, so no more than this is held.
                    None => {
                        *ahead = Some((offset, data));
                        Data::Nothing
                    }
                }
            }
            Kind::Spool {
                name,
                path,
                file,
                next,
            } => {
                if offset != *next {
                    let _ = reply.send(Err(format!(
                        "transfer {id:016x}: got bytes at {offset}, expected {next}"
                    )));
                    return Data::Nothing;
                }
                if data.is_empty() {
                    let (name, path) = (name.clone(), path.clone());
                    s.waiter = Some(reply);
                    return Data::Spooled { name, path };
                }
                if let Err(e) = file.write_all(&data) {
                    let _ = reply.send(Err(format!("cannot spool the put: {e}")));
                    self.remove(id);
                    return Data::Nothing;
                }
                *next += data.len() as u64;
                let _ = reply.send(step(Transfer::Send {
                    session: id,
                    offset: *next,
                    len: MAX_CHUNK as u32,
                }));
                Data::Nothing
            }
            Kind::Ended(_) => {
                if let Some(Session {
                    kind: Kind::Ended(outcome),
                    ..
                }) = self.map.remove(&id)
                {
                    let _ = reply.send(outcome);
                }
                Data::Nothing
            }
            Kind::Spooled { .. } | Kind::Stream { .. } => {
                let _ = reply.send(Err(format!("transfer {id:016x} is not sending")));
                Data::Nothing
            }
        }
    }

    /// A put of session `id` ended: answer the waiting request, or keep the answer for
    /// the tool's next one.
    pub(super) fn put_ended(&mut self, id: u64, outcome: Outcome) {
        let Some(mut s) = self.remove(id) else {
            return;
        };
        match s.waiter.take() {
            Some(tx) => {
                let _ = tx.send(outcome);
            }
            None => self.insert(id, Kind::Ended(outcome), None),
        }
    }

    /// A get of session `id` delivered a piece.
    pub(super) fn piece(&mut self, id: u64, piece: Piece) {
        let Some(s) = self.map.get_mut(&id) else {
            return;
        };
        if let Kind::Stream { pieces, .. } = &mut s.kind {
            pieces.push_back(piece);
            Self::stream(s, id);
        }
    }

    /// A get of session `id` ended: its answer follows the pieces still queued; a
    /// failure drops them (the tool discards what it has).
    pub(super) fn get_ended(&mut self, id: u64, outcome: Outcome) {
        let Some(s) = self.map.get_mut(&id) else {
            return;
        };
        if let Kind::Stream { pieces, end, .. } = &mut s.kind {
            if outcome.is_err() {
                pieces.clear();
            }
            *end = Some(outcome);
            if Self::stream(s, id) {
                self.map.remove(&id);
            }
        }
    }

    /// Answers a waiting request with the next piece or the end; `true` once the end
    /// was sent (the session is over).
    fn stream(s: &mut Session, id: u64) -> bool {
        let Kind::Stream { pieces, end, .. } = &mut s.kind else {
            return false;
        };
        if s.waiter.is_none() {
            return false;
        }
        let (answer, over) = if pieces.is_empty() {
            match end.take() {
                Some(outcome) => (outcome, true),
                None => return false,
            }
        } else {
            // Everything queued, up to BATCH_BYTES, in one answer: a tool slower than
            // the holders catches up in fewer round trips.
            let mut batch = Vec::new();
            let mut bytes = 0usize;
            while let Some(p) = pieces.front() {
                let len = match p {
                    Piece::Chunk(d) => d.len(),
                    Piece::Begin { .. } | Piece::End { .. } => 0,
                };
                if !batch.is_empty() && bytes.saturating_add(len) > BATCH_BYTES {
                    break;
                }
                bytes = bytes.saturating_add(len);
                batch.extend(pieces.pop_front());
            }
            let pieces = batch;
            (
                step(Transfer::Pieces {
                    session: id,
                    pieces,
                }),
                false,
            )
        };
        if let Some(tx) = s.waiter.take() {
            let _ = tx.send(answer);
        }
        over
    }

    /// The tool asks for the next piece of get `id`; returns the parked chunks to feed
    /// to the core again once the queue has room.
    pub(super) fn next_piece(&mut self, id: u64, reply: oneshot::Sender<Outcome>) -> Vec<Input> {
        let Some(s) = self.map.get_mut(&id) else {
            let _ = reply.send(Err(gone(id)));
            return Vec::new();
        };
        s.last = Instant::now();
        if !matches!(s.kind, Kind::Stream { .. }) {
            let _ = reply.send(Err(format!("transfer {id:016x} is not a get")));
            return Vec::new();
        }
        s.waiter = Some(reply);
        if Self::stream(s, id) {
            self.map.remove(&id);
            return Vec::new();
        }
        match &mut s.kind {
            Kind::Stream { pieces, parked, .. } if pieces.len() < QUEUED_PIECES => {
                parked.drain(..).collect()
            }
            _ => Vec::new(),
        }
    }

    /// Parks get `id`'s incoming chunk (returns `None`) while its queue is full or
    /// chunks that came before it wait (they stay in order); otherwise hands it back.
    pub(super) fn park(&mut self, id: u64, input: Input) -> Option<Input> {
        let Some(Session {
            kind: Kind::Stream { pieces, parked, .. },
            ..
        }) = self.map.get_mut(&id)
        else {
            return Some(input);
        };
        if pieces.len() < QUEUED_PIECES && parked.is_empty() {
            return Some(input);
        }
        parked.push_back(input);
        None
    }

    /// Sessions no tool request touched for [`IDLE`] and that wait for nothing from
    /// this node: removed; returned are the ops of the puts among them, which must fail.
    pub(super) fn expire(&mut self, now: Instant) -> Vec<OpId> {
        let idle: Vec<u64> = self
            .map
            .iter()
            .filter(|(_, s)| s.waiter.is_none() && now.saturating_duration_since(s.last) >= IDLE)
            .map(|(id, _)| *id)
            .collect();
        let mut ops = Vec::new();
        for id in idle {
            match self.remove(id).map(|s| s.kind) {
                Some(Kind::Pull { op, .. }) | Some(Kind::Spooled { op, .. }) => ops.push(op),
                _ => {}
            }
        }
        ops
    }
}

fn gone(id: u64) -> String {
    format!(
        "transfer {id:016x} is gone (ended, or idle for over {} s)",
        IDLE.as_secs()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sessions() -> (Sessions, PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "dml-sessions-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        (Sessions::open(dir.clone()).unwrap(), dir)
    }

    fn next(rx: oneshot::Receiver<Outcome>) -> Option<Transfer> {
        rx.blocking_recv().ok()?.ok()?.transfer
    }

    fn send(offset: u64) -> Option<Transfer> {
        Some(Transfer::Send {
            session: 7,
            offset,
            len: 4,
        })
    }

    fn fed(d: Data, at: u64) -> bool {
        matches!(d, Data::Feed { op: 1, offset, .. } if offset == at)
    }

    /// The tool sends `bytes` at `at`, which the core has not asked for yet: held, and
    /// its request left waiting.
    fn held(s: &mut Sessions, at: u64, bytes: &[u8]) -> oneshot::Receiver<Outcome> {
        let (tx, mut rx) = oneshot::channel();
        assert!(matches!(s.data(7, at, bytes.to_vec(), tx), Data::Nothing));
        assert!(rx.try_recv().is_err());
        rx
    }

    /// The tool sends the start the core asked for: fed, and the next range asked at once.
    fn sends_the_start(s: &mut Sessions) {
        let (tx, rx) = oneshot::channel();
        assert!(fed(s.data(7, 0, b"abcd".to_vec(), tx), 0));
        assert_eq!(next(rx), send(4));
    }

    #[test]
    fn a_pull_reads_one_range_ahead_and_follows_the_core_when_it_restarts() {
        let (mut s, dir) = sessions();
        let (tx, rx) = oneshot::channel();
        s.insert(7, Kind::pull(1), Some(tx));
        assert!(matches!(s.want(7, 0, 4), Want::Asked));
        assert_eq!(next(rx), send(0));
        // The bytes asked for go to the core, and the tool is told the next range at
        // once: it reads and sends while the node streams these.
        sends_the_start(&mut s);
        // They arrive before the core asks: held, and the tool's request waits, so
        // no more than one range is ever ahead.
        let rx = held(&mut s, 4, b"efgh");
        match s.want(7, 4, 4) {
            Want::Ready(d) => assert_eq!(d, b"efgh"),
            _ => panic!("the range read ahead is served at once"),
        }
        assert_eq!(next(rx), send(8));
        // The core restarted the upload while the tool sends the range at 8: those
        // bytes are dropped and the start is asked for again.
        assert!(matches!(s.want(7, 0, 4), Want::Asked));
        let (tx, rx) = oneshot::channel();
        assert!(matches!(s.data(7, 8, b"ij".to_vec(), tx), Data::Nothing));
        assert_eq!(next(rx), send(0));
        sends_the_start(&mut s);
        // A restart while a range is held ahead: it is dropped, the start asked for.
        let rx = held(&mut s, 4, b"efgh");
        assert!(matches!(s.want(7, 0, 4), Want::Asked));
        assert_eq!(next(rx), send(0));
        sends_the_start(&mut s);
        // The end of the source (no bytes) is held like any range; nothing is asked
        // after it, the put's answer goes to the waiting request.
        let mut rx = held(&mut s, 4, &[]);
        match s.want(7, 4, 4) {
            Want::Ready(d) => assert!(d.is_empty()),
            _ => panic!("the end read ahead is served at once"),
        }
        assert!(rx.try_recv().is_err());
        s.put_ended(7, Ok(Reply::new("stored", serde_json::json!({}))));
        assert_eq!(rx.blocking_recv().unwrap().unwrap().text, "stored");
        assert!(matches!(s.want(7, 0, 4), Want::Gone));
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn an_answer_with_nobody_waiting_is_kept_for_the_next_request() {
        let (mut s, dir) = sessions();
        s.insert(9, Kind::pull(1), None);
        s.put_ended(9, Err("replicas lost".into()));
        let (tx, rx) = oneshot::channel();
        assert!(matches!(s.data(9, 0, Vec::new(), tx), Data::Nothing));
        assert_eq!(rx.blocking_recv().unwrap(), Err("replicas lost".into()));
        let (tx, rx) = oneshot::channel();
        s.data(9, 0, Vec::new(), tx);
        assert!(rx.blocking_recv().unwrap().unwrap_err().contains("is gone"));
        let _ = fs::remove_dir_all(dir);
    }

    fn chunk(i: u8) -> Input {
        Input::SourceFailed {
            op: u64::from(i),
            error: String::new(),
        }
    }

    /// The first byte of each chunk of a batch of pieces (`None` for the others).
    fn firsts(t: Option<Transfer>) -> Vec<Option<u8>> {
        let Some(Transfer::Pieces { session: 3, pieces }) = t else {
            panic!("not pieces of session 3: {t:?}");
        };
        pieces
            .iter()
            .map(|p| match p {
                Piece::Chunk(d) => {
                    assert_eq!(d.len(), MAX_CHUNK);
                    d.first().copied()
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_get_streams_queued_pieces_in_batches_and_parks_chunks_while_the_tool_lags() {
        let (mut s, dir) = sessions();
        let (tx, rx) = oneshot::channel();
        s.insert(3, Kind::stream(), Some(tx));
        s.piece(3, Piece::Begin { version: 2 });
        assert_eq!(
            next(rx),
            Some(Transfer::Pieces {
                session: 3,
                pieces: vec![Piece::Begin { version: 2 }]
            })
        );
        // The tool is away: pieces queue up to the limit, then chunks are parked.
        for i in 0..QUEUED_PIECES {
            assert!(s.park(3, chunk(i as u8)).is_some());
            s.piece(3, Piece::Chunk(vec![i as u8; MAX_CHUNK]));
        }
        assert!(s.park(3, chunk(100)).is_none());
        assert!(s.park(3, chunk(101)).is_none());
        // One request takes what is queued, in order, up to BATCH_BYTES: room again,
        // the parked chunks come back in order.
        let per_batch = BATCH_BYTES / MAX_CHUNK;
        assert!((2..QUEUED_PIECES).contains(&per_batch));
        let (tx, rx) = oneshot::channel();
        let back = s.next_piece(3, tx);
        let first: Vec<Option<u8>> = (0..per_batch).map(|i| Some(i as u8)).collect();
        assert_eq!(firsts(next(rx)), first);
        let ops: Vec<u64> = back
            .iter()
            .map(|i| match i {
                Input::SourceFailed { op, .. } => *op,
                _ => 0,
            })
            .collect();
        assert_eq!(ops, vec![100, 101]);
        // The end comes after the last queued piece, and closes the session.
        let done = Ok(Reply::new("got", serde_json::json!({})));
        s.get_ended(3, done.clone());
        let mut rest = Vec::new();
        loop {
            let (tx, rx) = oneshot::channel();
            s.next_piece(3, tx);
            match rx.blocking_recv().unwrap() {
                Ok(Reply {
                    transfer: Some(t @ Transfer::Pieces { .. }),
                    ..
                }) => rest.extend(firsts(Some(t))),
                other => {
                    assert_eq!(other, done);
                    break;
                }
            }
        }
        let expect: Vec<Option<u8>> = (per_batch..QUEUED_PIECES).map(|i| Some(i as u8)).collect();
        assert_eq!(rest, expect);
        assert!(s.get_mut(3).is_none());
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn a_failed_get_drops_its_queue_and_says_why() {
        let (mut s, dir) = sessions();
        s.insert(4, Kind::stream(), None);
        s.piece(4, Piece::Chunk(vec![1]));
        s.get_ended(4, Err("every holder failed".into()));
        let (tx, rx) = oneshot::channel();
        s.next_piece(4, tx);
        assert_eq!(
            rx.blocking_recv().unwrap(),
            Err("every holder failed".into())
        );
        assert!(s.get_mut(4).is_none());
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn idle_sessions_expire_and_their_puts_fail() {
        let (mut s, dir) = sessions();
        let path = s.spool_path(5, "put");
        let file = File::create(&path).unwrap();
        let name = SdfsName::parse("x").unwrap();
        let pull = Kind::Pull {
            op: 44,
            want: Some((0, 1)),
            ahead: None,
        };
        s.insert(4, pull, None);
        let spool = Kind::Spool {
            name,
            path: path.clone(),
            file,
            next: 0,
        };
        s.insert(5, spool, None);
        let (tx, _rx) = oneshot::channel();
        s.insert(6, Kind::pull(66), Some(tx));
        assert!(s.expire(Instant::now()).is_empty());
        let ops = s.expire(Instant::now() + IDLE);
        assert_eq!(ops, vec![44]);
        assert!(!path.exists());
        // A session whose answer this node owes is not idle.
        assert!(s.get_mut(6).is_some());
        let _ = fs::remove_dir_all(dir);
    }
}
