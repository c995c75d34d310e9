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

pub(super) enum Kind {
    /// A put whose core pulls the source from the tool, one range at a time.
    Pull {
        op: OpId,
        /// The range the core asked for and the tool has not sent yet.
        want: Option<(u64, usize)>,
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

    /// The core asked for `len` bytes of session `id`'s source at `offset`; `false` if
    /// the session is gone (the tool ended it), so the put must fail.
    pub(super) fn want(&mut self, id: u64, offset: u64, len: usize) -> bool {
        let Some(s) = self.map.get_mut(&id) else {
            return false;
        };
        if let Kind::Pull { want, .. } = &mut s.kind {
            *want = Some((offset, len));
            Self::ask(s, id);
        }
        true
    }

    /// Tells a waiting tool request which range to send next.
    fn ask(s: &mut Session, id: u64) {
        let Kind::Pull {
            want: Some((offset, len)),
            ..
        } = s.kind
        else {
            return;
        };
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
            Kind::Pull { op, want } => {
                let op = *op;
                s.waiter = Some(reply);
                match *want {
                    Some((o, _)) if o == offset => {
                        *want = None;
                        Data::Feed { op, offset, data }
                    }
                    // Bytes for a range the core no longer wants (it restarted the
                    // upload): ask for the current one again.
                    Some(_) => {
                        Self::ask(s, id);
                        Data::Nothing
                    }
                    // The core has not asked yet; the answer waits for it.
                    None => Data::Nothing,
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
        let (answer, over) = match pieces.pop_front() {
            Some(piece) => (step(Transfer::Piece { session: id, piece }), false),
            None => match end.take() {
                Some(outcome) => (outcome, true),
                None => return false,
            },
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

    #[test]
    fn a_pull_answers_each_request_with_the_range_the_core_wants() {
        let (mut s, dir) = sessions();
        let (tx, rx) = oneshot::channel();
        s.insert(7, Kind::Pull { op: 1, want: None }, Some(tx));
        assert!(s.want(7, 0, 4));
        assert_eq!(
            next(rx),
            Some(Transfer::Send {
                session: 7,
                offset: 0,
                len: 4
            })
        );
        // The bytes asked for go to the core; the answer waits for its next ask.
        let (tx, mut rx) = oneshot::channel();
        assert!(matches!(
            s.data(7, 0, b"abcd".to_vec(), tx),
            Data::Feed {
                op: 1,
                offset: 0,
                ..
            }
        ));
        assert!(rx.try_recv().is_err());
        // The core restarted the upload before the tool's next bytes came: those are
        // dropped and the start is asked for again.
        assert!(s.want(7, 0, 4));
        assert!(next(rx).is_some());
        let (tx, rx) = oneshot::channel();
        assert!(matches!(s.data(7, 4, b"ef".to_vec(), tx), Data::Nothing));
        assert_eq!(
            next(rx),
            Some(Transfer::Send {
                session: 7,
                offset: 0,
                len: 4
            })
        );
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn an_answer_with_nobody_waiting_is_kept_for_the_next_request() {
        let (mut s, dir) = sessions();
        s.insert(9, Kind::Pull { op: 1, want: None }, None);
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

    #[test]
    fn a_get_streams_piece_by_piece_and_parks_chunks_while_the_tool_lags() {
        let (mut s, dir) = sessions();
        let (tx, rx) = oneshot::channel();
        s.insert(3, Kind::stream(), Some(tx));
        s.piece(3, Piece::Begin { version: 2 });
        assert_eq!(
            next(rx),
            Some(Transfer::Piece {
                session: 3,
                piece: Piece::Begin { version: 2 }
            })
        );
        // The tool is away: pieces queue up to the limit, then chunks are parked.
        for i in 0..QUEUED_PIECES {
            assert!(s.park(3, chunk(i as u8)).is_some());
            s.piece(3, Piece::Chunk(vec![i as u8]));
        }
        assert!(s.park(3, chunk(100)).is_none());
        assert!(s.park(3, chunk(101)).is_none());
        // One piece taken: room again, the parked chunks come back in order.
        let (tx, rx) = oneshot::channel();
        let back = s.next_piece(3, tx);
        assert_eq!(
            next(rx),
            Some(Transfer::Piece {
                session: 3,
                piece: Piece::Chunk(vec![0])
            })
        );
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
        for i in 1..QUEUED_PIECES {
            let (tx, rx) = oneshot::channel();
            s.next_piece(3, tx);
            assert_eq!(
                next(rx),
                Some(Transfer::Piece {
                    session: 3,
                    piece: Piece::Chunk(vec![i as u8])
                })
            );
        }
        let (tx, rx) = oneshot::channel();
        s.next_piece(3, tx);
        assert_eq!(rx.blocking_recv().unwrap(), done);
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
        s.insert(6, Kind::Pull { op: 66, want: None }, Some(tx));
        assert!(s.expire(Instant::now()).is_empty());
        let ops = s.expire(Instant::now() + IDLE);
        assert_eq!(ops, vec![44]);
        assert!(!path.exists());
        // A session whose answer this node owes is not idle.
        assert!(s.get_mut(6).is_some());
        let _ = fs::remove_dir_all(dir);
    }
}
