//! An on-path attacker for security tests: a TCP proxy between a client (`dml ctl`, a
//! node) and a node that records every byte each connection carries, and can inject
//! bytes into a connection towards the node, flip a byte of what passes, or replay a
//! recorded stream on a fresh connection. It knows no key: whatever it achieves, an
//! attacker on the network achieves too.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

use anyhow::Context;
use dml_actors::net::wire::{split_frame, MAX_FRAME, TAG_LEN};

/// One proxied connection.
struct Conn {
    /// Towards the node (for injection).
    upstream: TcpStream,
    /// What the client sent, in order.
    from_client: Vec<u8>,
    /// What the node sent, in order.
    from_node: Vec<u8>,
    /// Whether the node's side has closed.
    closed: bool,
}

#[derive(Default)]
struct State {
    conns: Vec<Conn>,
    /// Flip the last byte of this client frame (0: the hello) in the next connection
    /// opened after the flip was asked for (the first field: the index of the first
    /// such connection) that sends that frame.
    flip_at: Option<(usize, usize)>,
}

/// The proxy; it stops accepting when dropped (open connections run out on their own).
pub struct Injector {
    addr: String,
    state: Arc<Mutex<State>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Injector {
    /// Listens on a free loopback port and forwards every connection to `target`.
    pub fn start(target: &str) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").context("cannot bind the proxy")?;
        let addr = listener.local_addr()?.to_string();
        listener.set_nonblocking(true)?;
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (st, halt, target) = (state.clone(), stop.clone(), target.to_string());
        thread::spawn(move || {
            while !halt.load(std::sync::atomic::Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let _ = client.set_nonblocking(false);
                        if let Err(e) = Self::proxy(&st, client, &target) {
                            eprintln!("injector: {e:#}");
                        }
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Ok(Injector { addr, state, stop })
    }

    fn proxy(st: &Arc<Mutex<State>>, client: TcpStream, target: &str) -> anyhow::Result<()> {
        let upstream = TcpStream::connect(target).context("proxy cannot reach the node")?;
        upstream.set_nodelay(true)?;
        client.set_nodelay(true)?;
        let idx = {
            let mut s = lock(st);
            s.conns.push(Conn {
                upstream: upstream.try_clone()?,
                from_client: Vec::new(),
                from_node: Vec::new(),
                closed: false,
            });
            s.conns.len() - 1
        };
        let (c_rd, n_wr) = (client.try_clone()?, upstream.try_clone()?);
        let s1 = st.clone();
        thread::spawn(move || pump(&s1, idx, c_rd, n_wr, true));
        let s2 = st.clone();
        thread::spawn(move || pump(&s2, idx, upstream, client, false));
        Ok(())
    }

    /// Where clients should connect.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Connections proxied so far.
    pub fn connections(&self) -> usize {
        lock(&self.state).conns.len()
    }

    /// Everything the client of connection `i` sent so far.
    pub fn from_client(&self, i: usize) -> Vec<u8> {
        lock(&self.state)
            .conns
            .get(i)
            .map(|c| c.from_client.clone())
            .unwrap_or_default()
    }

    /// Whether the node closed connection `i`.
    pub fn closed_by_node(&self, i: usize) -> bool {
        lock(&self.state).conns.get(i).is_some_and(|c| c.closed)
    }

    /// Writes `bytes` into connection `i` towards the node, as if the client sent them.
    pub fn inject(&self, i: usize, bytes: &[u8]) -> anyhow::Result<()> {
        let mut s = lock(&self.state);
        let c = s.conns.get_mut(i).context("no such connection")?;
        c.upstream.write_all(bytes).context("inject")?;
        Ok(())
    }

    /// Flips one bit of the last byte of the client's frame number `frame` (0: the
    /// hello; 2: the first sealed frame after the handshake) in the next connection
    /// opened from now on that sends it. Counted in frames, not bytes: the handshake's
    /// length differs from session to session (the tool's port is in its hello), and an
    /// older connection still forwarding its last bytes must not take the flip.
    pub fn flip_client_frame_end(&self, frame: usize) {
        let mut s = lock(&self.state);
        let first = s.conns.len();
        s.flip_at = Some((first, frame));
    }

    /// Sends `bytes` to the node on a fresh connection of the attacker's own (not through
    /// a client), waits until the node closes it or `within` passes; true if it closed.
    pub fn replay(&self, target: &str, bytes: &[u8], within: Duration) -> anyhow::Result<bool> {
        let mut s = TcpStream::connect(target)?;
        s.write_all(bytes)?;
        s.set_read_timeout(Some(within))?;
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) => return Ok(true),
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(true),
                Err(_) => return Ok(false),
            }
        }
    }
}

impl Drop for Injector {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for c in &lock(&self.state).conns {
            let _ = c.upstream.shutdown(Shutdown::Both);
        }
    }
}

/// Copies one direction of connection `idx`, recording it (and flipping a byte where
/// asked).
fn pump(st: &Mutex<State>, idx: usize, mut from: TcpStream, mut to: TcpStream, client_side: bool) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = buf.get_mut(..n).unwrap_or_default();
        {
            let mut s = lock(st);
            let flip = s.flip_at;
            let Some(c) = s.conns.get_mut(idx) else { break };
            let seen = if client_side {
                &mut c.from_client
            } else {
                &mut c.from_node
            };
            let start = seen.len();
            let mut flipped = false;
            if let Some((_, frame)) = flip.filter(|(first, _)| client_side && idx >= *first) {
                let mut all = seen.clone();
                all.extend_from_slice(chunk);
                let ends: Vec<usize> = frames(&all)
                    .iter()
                    .scan(0, |end, f| {
                        *end += f.len();
                        Some(*end)
                    })
                    .collect();
                let at = ends.get(frame).map(|end| end - 1);
                if let Some(b) = at
                    .and_then(|at| at.checked_sub(start))
                    .and_then(|i| chunk.get_mut(i))
                {
                    *b ^= 0x01;
                    flipped = true;
                }
            }
            seen.extend_from_slice(chunk);
            if flipped {
                s.flip_at = None;
            }
        }
        if to.write_all(chunk).is_err() {
            break;
        }
    }
    if !client_side {
        if let Some(c) = lock(st).conns.get_mut(idx) {
            c.closed = true;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// Splits a recorded client stream into its frames (handshake frames, then sealed data
/// frames), each with its length prefix.
pub fn frames(stream: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = stream;
    while let Ok(Some((_, used))) = split_frame(rest, MAX_FRAME + TAG_LEN) {
        let (frame, tail) = rest.split_at(used);
        out.push(frame.to_vec());
        rest = tail;
    }
    out
}
