//! Real-socket tests of the transport on 127.0.0.1 (port 0): both lanes, request/response,
//! tool clients, authentication failures, hostile bytes, bounded queues, loss injection
//! and reconnection after a peer restarts. Waits are conditions with a generous safety
//! deadline, never timed assertions.

use std::time::Duration;

use dml_actors::net::transport::{
    Client, Inbound, Lane, Message, Transport, TransportConfig, TransportError,
};
use dml_actors::net::wire::{
    self, Access, Channel, ClientHandshake, Credential, Envelope, Ephemeral, FrameDecoder, Grant,
    HandshakeError, Key, OperatorKey, Role, SystemRandom,
};
use dml_actors::types::NodeAddr;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::Receiver;

const SECRET: &[u8] = b"test cluster secret";
const WRONG: &[u8] = b"not the cluster secret";
const OP_KEY: &[u8] = b"operator key of ops, 32 bytes..";
/// Only a guard against a hung test; every wait ends on a condition long before this.
const DEADLINE: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum Msg {
    Ping(u64),
    Echo(String),
    Chunk(Vec<u8>),
}

/// Pings stand for node-only messages (membership, SDFS, jobs); the rest for commands.
impl Message for Msg {
    fn tool_may_send(&self) -> bool {
        !matches!(self, Msg::Ping(_))
    }
}

fn key(b: &[u8]) -> Key {
    Key::new(b).unwrap()
}

/// The credential of the admin operator every test node knows.
fn ops() -> Credential {
    Credential::operator("ops", key(OP_KEY))
}

fn cluster(secret: &[u8]) -> Credential {
    Credential::cluster(key(secret))
}

struct Node {
    t: Transport<Msg>,
    rx: Receiver<Inbound<Msg>>,
    addr: NodeAddr,
}

fn config(addr: &NodeAddr, secret: &[u8]) -> TransportConfig {
    let mut cfg = TransportConfig::new(addr.clone(), secret);
    cfg.operators = vec![
        OperatorKey {
            name: "ops".into(),
            grant: Grant::Admin,
            key: key(OP_KEY),
        },
        OperatorKey {
            name: "viewer".into(),
            grant: Grant::ReadOnly,
            key: key(b"viewer key 0123456789abcdef"),
        },
    ];
    cfg.backoff_min = Duration::from_millis(10);
    cfg.backoff_max = Duration::from_millis(100);
    cfg.handshake_timeout = Duration::from_secs(5);
    cfg
}

async fn start_with(cfg: impl FnOnce(&NodeAddr) -> TransportConfig) -> Node {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = NodeAddr(listener.local_addr().unwrap().to_string());
    let (t, rx) = Transport::start(listener, cfg(&addr)).unwrap();
    Node { t, rx, addr }
}

async fn node() -> Node {
    start_with(|a| config(a, SECRET)).await
}

async fn recv(rx: &mut Receiver<Inbound<Msg>>) -> Inbound<Msg> {
    tokio::time::timeout(DEADLINE, rx.recv())
        .await
        .expect("nothing arrived")
        .expect("inbound channel closed")
}

/// Answers every request with `Echo("re:<what it got>")` until the channel closes.
fn serve_echo(mut rx: Receiver<Inbound<Msg>>) {
    tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if let Some(r) = m.responder {
                let reply = match m.body {
                    Msg::Chunk(data) => Msg::Chunk(data.into_iter().rev().collect()),
                    other => Msg::Echo(format!("re:{other:?}")),
                };
                r.respond(reply).unwrap();
            }
        }
    });
}

async fn read_payload(s: &mut TcpStream, dec: &mut FrameDecoder) -> Vec<u8> {
    let mut buf = [0u8; 1024];
    loop {
        if let Some(p) = dec.next_payload().unwrap() {
            return p;
        }
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed during handshake");
        dec.push(&buf[..n]);
    }
}

fn eph() -> Ephemeral {
    Ephemeral::generate(&SystemRandom::new()).unwrap()
}

/// A hand-driven client that completes the handshake (as `role` with `cred`), then lets
/// the test write whatever bytes it likes, sealed with the channel or not.
async fn raw_as(to: &NodeAddr, me: &str, role: Role, cred: &Credential) -> (TcpStream, Channel) {
    let mut s = TcpStream::connect(to.as_str()).await.unwrap();
    let (hs, hello) = ClientHandshake::start(
        &NodeAddr(me.into()),
        role,
        Lane::Control,
        cred,
        [42; 32],
        eph(),
    )
    .unwrap();
    s.write_all(&hello).await.unwrap();
    let mut dec = FrameDecoder::new(wire::HANDSHAKE_MAX_FRAME);
    let challenge = read_payload(&mut s, &mut dec).await;
    let (_, channel, finish) = hs.on_challenge(&challenge).unwrap();
    s.write_all(&finish).await.unwrap();
    (s, channel)
}

async fn raw_authenticated(to: &NodeAddr, me: &str, secret: &[u8]) -> (TcpStream, Channel) {
    raw_as(to, me, Role::Node, &cluster(secret)).await
}

/// `frame` (as `encode_frame` makes it) sealed for the next counter of `ch`.
fn seal(ch: &mut Channel, mut frame: Vec<u8>) -> Vec<u8> {
    ch.sealer.seal_frame(&mut frame).unwrap();
    frame
}

/// Waits until the other side closes `s`; false if it is still open at the deadline.
async fn closed_by_peer(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(DEADLINE, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test]
async fn messages_and_requests_flow_on_both_lanes() {
    let a = node().await;
    let mut b = node().await;

    a.t.send(&b.addr, Lane::Control, Msg::Ping(1)).unwrap();
    let big = vec![7u8; 1 << 20];
    a.t.send(&b.addr, Lane::Bulk, Msg::Chunk(big.clone()))
        .unwrap();
    let mut got = [recv(&mut b.rx).await, recv(&mut b.rx).await];
    got.sort_by_key(|m| m.lane);
    assert_eq!((got[0].lane, &got[0].body), (Lane::Control, &Msg::Ping(1)));
    assert_eq!((got[1].lane, &got[1].body), (Lane::Bulk, &Msg::Chunk(big)));
    assert!(got
        .iter()
        .all(|m| m.from == a.addr && m.responder.is_none()));

    serve_echo(b.rx);
    let reply =
        a.t.request(&b.addr, Lane::Control, Msg::Echo("hi".into()), DEADLINE)
            .await;
    assert_eq!(reply.unwrap(), Msg::Echo("re:Echo(\"hi\")".into()));
    let data: Vec<u8> = (0..=255u8).cycle().take(1 << 20).collect();
    let reply =
        a.t.request(&b.addr, Lane::Bulk, Msg::Chunk(data.clone()), DEADLINE)
            .await;
    assert_eq!(reply.unwrap(), Msg::Chunk(data.into_iter().rev().collect()));

    // The other direction opens its own connection.
    serve_echo(a.rx);
    let reply =
        b.t.request(&a.addr, Lane::Control, Msg::Ping(5), DEADLINE)
            .await;
    assert_eq!(reply.unwrap(), Msg::Echo("re:Ping(5)".into()));
}

#[tokio::test]
async fn many_concurrent_requests_are_matched_to_their_replies() {
    let a = node().await;
    let b = node().await;
    serve_echo(b.rx);
    let calls = (0..50u64).map(|i| {
        let t = a.t.clone();
        let to = b.addr.clone();
        let lane = if i % 2 == 0 {
            Lane::Control
        } else {
            Lane::Bulk
        };
        async move { (i, t.request(&to, lane, Msg::Ping(i), DEADLINE).await) }
    });
    for (i, reply) in futures_join_all(calls).await {
        assert_eq!(reply.unwrap(), Msg::Echo(format!("re:Ping({i})")));
    }
}

/// `join_all` without another dependency: spawn each and await in order.
async fn futures_join_all<F, T>(futs: impl Iterator<Item = F>) -> Vec<T>
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test]
async fn tool_client_gets_replies_on_its_own_connection() {
    let mut a = node().await;
    let mut client = Client::<Msg>::connect(a.addr.as_str(), &ops(), DEADLINE)
        .await
        .unwrap();
    let ask = tokio::spawn(async move {
        let r1 = client.request(Msg::Echo("list_mem".into()), DEADLINE).await;
        let r2 = client.request(Msg::Echo("2".into()), DEADLINE).await;
        (r1, r2)
    });
    for _ in 0..2 {
        let m = recv(&mut a.rx).await;
        // Named by the operator it proved and the socket it came from.
        assert!(m.from.as_str().starts_with("ops@127.0.0.1:"), "{}", m.from);
        assert_eq!(
            m.access,
            Access::Operator {
                name: "ops".into(),
                grant: Grant::Admin
            }
        );
        let reply = Msg::Echo(format!("answer to {:?}", m.body));
        m.responder
            .expect("a request has a responder")
            .respond(reply)
            .unwrap();
    }
    let (r1, r2) = ask.await.unwrap();
    assert_eq!(
        r1.unwrap(),
        Msg::Echo("answer to Echo(\"list_mem\")".into())
    );
    assert_eq!(r2.unwrap(), Msg::Echo("answer to Echo(\"2\")".into()));
}

#[tokio::test]
async fn a_reply_too_large_for_a_frame_is_replaced_by_the_reason() {
    let mut a = start_with(|addr| {
        let mut cfg = config(addr, SECRET);
        cfg.max_frame = 64 * 1024;
        cfg
    })
    .await;
    let mut client = Client::<Msg>::connect(a.addr.as_str(), &ops(), DEADLINE)
        .await
        .unwrap();
    let ask = tokio::spawn(async move { client.request(Msg::Echo("all".into()), DEADLINE).await });
    let m = recv(&mut a.rx).await;
    let responder = m.responder.expect("a request has a responder");
    let big = Msg::Chunk(vec![7; 100 * 1024]);
    let err = responder
        .respond_or(big, |e| Some(Msg::Echo(format!("refused: {e}"))))
        .unwrap_err();
    assert!(matches!(err, TransportError::Wire(_)), "{err}");
    // The asker gets the reason at once, not a timeout.
    let got = ask.await.unwrap().unwrap();
    let Msg::Echo(why) = got else {
        panic!("{got:?}")
    };
    assert!(
        why.starts_with("refused: frame of") && why.contains("maximum of 65536"),
        "{why}"
    );
}

#[tokio::test]
async fn wrong_secret_is_rejected_and_nothing_is_delivered() {
    let mut a = node().await;

    // A tool with a wrong operator key, or with the cluster secret, is told why.
    for cred in [
        Credential::operator("ops", key(WRONG)),
        Credential::operator("nobody", key(OP_KEY)),
        cluster(SECRET),
    ] {
        let err = Client::<Msg>::connect(a.addr.as_str(), &cred, DEADLINE)
            .await
            .unwrap_err();
        assert!(
            matches!(
                &err,
                TransportError::Handshake(HandshakeError::RefusedByPeer(_))
            ),
            "{err}"
        );
    }

    // A node with the wrong secret cannot get a request through.
    let c = start_with(|addr| config(addr, WRONG)).await;
    let err =
        c.t.request(&a.addr, Lane::Control, Msg::Ping(1), DEADLINE)
            .await
            .unwrap_err();
    assert!(matches!(err, TransportError::Undeliverable { .. }), "{err}");

    // A peer that skips the proof and sends data anyway is cut off, and its data dropped.
    let mut s = TcpStream::connect(a.addr.as_str()).await.unwrap();
    let (_, hello) = ClientHandshake::start(
        &NodeAddr("evil:1".into()),
        Role::Node,
        Lane::Control,
        &cluster(SECRET),
        [1; 32],
        eph(),
    )
    .unwrap();
    s.write_all(&hello).await.unwrap();
    let mut dec = FrameDecoder::new(wire::HANDSHAKE_MAX_FRAME);
    let _challenge = read_payload(&mut s, &mut dec).await;
    let forged = wire::encode_handshake(&wire::HandshakeMsg::Finish { proof: [0; 32] }).unwrap();
    let data = wire::encode_frame(&Envelope::message(1, Msg::Ping(666))).unwrap();
    s.write_all(&[forged, data].concat()).await.unwrap();
    assert!(closed_by_peer(&mut s).await);

    // Nothing from any of them reached the application; a good peer still does.
    assert!(a.rx.try_recv().is_err());
    let b = node().await;
    b.t.send(&a.addr, Lane::Control, Msg::Ping(7)).unwrap();
    assert_eq!(recv(&mut a.rx).await.body, Msg::Ping(7));
}

#[tokio::test]
async fn hostile_bytes_close_only_that_connection() {
    let mut a = node().await;
    let mut rng = ChaCha8Rng::seed_from_u64(7);

    // Before authentication: a 4 GiB length prefix.
    let mut s = TcpStream::connect(a.addr.as_str()).await.unwrap();
    s.write_all(&[0xff, 0xff, 0xff, 0xff]).await.unwrap();
    assert!(closed_by_peer(&mut s).await);

    // Before authentication: random bytes in a well-sized frame.
    let mut junk = vec![0u8; 200];
    rng.fill_bytes(&mut junk);
    let mut s = TcpStream::connect(a.addr.as_str()).await.unwrap();
    s.write_all(&[&200u32.to_be_bytes()[..], &junk].concat())
        .await
        .unwrap();
    assert!(closed_by_peer(&mut s).await);

    // After authentication: oversized prefix, junk payload, trailing bytes, unknown body,
    // other protocol version, truncated frame.
    let valid = rmp_serde::to_vec(&Envelope::message(1, Msg::Ping(1))).unwrap();
    let framed = |p: &[u8]| [&(p.len() as u32).to_be_bytes()[..], p].concat();
    #[derive(Serialize)]
    enum Unknown {
        Surprise(u8),
    }
    let mut future = Envelope::message(1, Msg::Ping(1));
    future.version += 1;
    let attacks: Vec<Vec<u8>> = vec![
        vec![0xff, 0xff, 0xff, 0xff, 1, 2, 3],
        framed(&junk),
        framed(&[&valid[..], &[0xc0]].concat()),
        wire::encode_frame(&Envelope::message(1, Unknown::Surprise(3))).unwrap(),
        wire::encode_frame(&future).unwrap(),
        framed(&valid)[..valid.len()].to_vec(),
    ];
    // Each attack twice: as raw bytes (which never open) and sealed properly, so that
    // the decoder behind the seal is tried too.
    let mut runs = Vec::new();
    for (i, attack) in attacks.iter().enumerate() {
        runs.push((i, attack.clone(), false));
        if attack.len() > 4 && i != attacks.len() - 1 && i != 0 {
            runs.push((i, attack.clone(), true));
        }
    }
    for (i, attack, sealed) in runs {
        let (mut s, mut ch) = raw_authenticated(&a.addr, &format!("raw:{i}"), SECRET).await;
        let bytes = if sealed {
            seal(&mut ch, attack)
        } else {
            attack
        };
        s.write_all(&bytes).await.unwrap();
        if i == attacks.len() - 1 {
            // The truncated frame is only known to be truncated once the writer stops.
            s.shutdown().await.unwrap();
        }
        assert!(
            closed_by_peer(&mut s).await,
            "attack {i} (sealed: {sealed}) was not disconnected"
        );
    }

    // The node still serves others, and none of the above was delivered.
    assert!(a.rx.try_recv().is_err());
    let b = node().await;
    b.t.send(&a.addr, Lane::Control, Msg::Ping(9)).unwrap();
    assert_eq!(recv(&mut a.rx).await.body, Msg::Ping(9));
}

#[tokio::test]
async fn a_silent_peer_is_closed_by_the_handshake_timeout() {
    let a = start_with(|addr| {
        let mut cfg = config(addr, SECRET);
        cfg.handshake_timeout = Duration::from_millis(200);
        cfg
    })
    .await;
    let mut s = TcpStream::connect(a.addr.as_str()).await.unwrap();
    assert!(closed_by_peer(&mut s).await);
    // Half a hello is no better.
    let mut s = TcpStream::connect(a.addr.as_str()).await.unwrap();
    s.write_all(&[0, 0, 0, 40, 0x81]).await.unwrap();
    assert!(closed_by_peer(&mut s).await);
}

#[tokio::test]
async fn unfinished_handshakes_are_bounded_and_silent_ones_make_room() {
    for per_ip in [false, true] {
        let a = start_with(|addr| {
            let mut cfg = config(addr, SECRET);
            if per_ip {
                cfg.max_pending_per_ip = 2;
            } else {
                cfg.max_pending_handshakes = 2;
            }
            cfg.handshake_timeout = Duration::from_secs(60);
            cfg.hello_timeout = Duration::from_secs(60);
            cfg
        })
        .await;
        let mut silent = Vec::new();
        for _ in 0..2 {
            silent.push(TcpStream::connect(a.addr.as_str()).await.unwrap());
        }
        // A client that talks at once is served, in place of the oldest silent one.
        let _client = Client::<Msg>::connect(a.addr.as_str(), &ops(), DEADLINE)
            .await
            .unwrap();
        assert!(closed_by_peer(&mut silent[0]).await, "per ip: {per_ip}");
        // The newer silent one still waits for its hello (its timeout is a minute away).
        let mut buf = [0u8; 8];
        assert!(
            matches!(silent[1].try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        );
        a.t.shutdown();
    }
}

#[tokio::test]
async fn a_silent_connection_must_say_hello_quickly() {
    let a = start_with(|addr| {
        let mut cfg = config(addr, SECRET);
        cfg.hello_timeout = Duration::from_millis(200);
        cfg.handshake_timeout = Duration::from_secs(60);
        cfg
    })
    .await;
    let mut s = TcpStream::connect(a.addr.as_str()).await.unwrap();
    assert!(closed_by_peer(&mut s).await);
}

#[tokio::test]
async fn a_tool_may_send_commands_only() {
    let mut a = node().await;
    // A node-only message from an operator's connection: cut off, not delivered.
    let (mut s, mut ch) = raw_as(&a.addr, "tool", Role::Tool, &ops()).await;
    let ping = wire::encode_frame(&Envelope::message(1, Msg::Ping(1))).unwrap();
    s.write_all(&seal(&mut ch, ping)).await.unwrap();
    assert!(closed_by_peer(&mut s).await);
    // A reply from a tool could complete a request sent to a node it names: refused too.
    let (mut s, mut ch) = raw_as(&a.addr, "127.0.0.1:1", Role::Tool, &ops()).await;
    let reply = wire::encode_frame(&Envelope::reply(1, 1, Msg::Echo("x".into()))).unwrap();
    s.write_all(&seal(&mut ch, reply)).await.unwrap();
    assert!(closed_by_peer(&mut s).await);
    assert!(a.rx.try_recv().is_err());
    // An operator key never makes a node.
    let err = Client::<Msg>::connect_as(
        a.addr.as_str(),
        Role::Node,
        Some("10.0.0.9:1"),
        Lane::Control,
        &ops(),
        DEADLINE,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, TransportError::Handshake(_)), "{err}");
    // A read-only operator's grant reaches the application.
    let viewer = Credential::operator("viewer", key(b"viewer key 0123456789abcdef"));
    let mut c = Client::<Msg>::connect(a.addr.as_str(), &viewer, DEADLINE)
        .await
        .unwrap();
    drop(
        c.request(Msg::Echo("ls".into()), Duration::from_millis(50))
            .await,
    );
    let m = recv(&mut a.rx).await;
    assert!(matches!(
        m.access,
        Access::Operator {
            grant: Grant::ReadOnly,
            ..
        }
    ));
}

#[tokio::test]
async fn tampered_replayed_and_injected_frames_close_the_connection() {
    let mut a = node().await;
    let frame = |n| wire::encode_frame(&Envelope::message(n, Msg::Echo(format!("m{n}")))).unwrap();
    // A flipped bit.
    let (mut s, mut ch) = raw_authenticated(&a.addr, "raw:t", SECRET).await;
    let mut bad = seal(&mut ch, frame(1));
    let last = bad.len() - 1;
    bad[last] ^= 1;
    s.write_all(&bad).await.unwrap();
    assert!(closed_by_peer(&mut s).await);
    // A replay: the first copy is delivered, the second closes the connection.
    let (mut s, mut ch) = raw_authenticated(&a.addr, "raw:r", SECRET).await;
    let f = seal(&mut ch, frame(2));
    s.write_all(&f).await.unwrap();
    assert_eq!(recv(&mut a.rx).await.body, Msg::Echo("m2".into()));
    s.write_all(&f).await.unwrap();
    assert!(closed_by_peer(&mut s).await);
    // A frame captured on one connection, injected into another.
    let (_, mut ch1) = raw_authenticated(&a.addr, "raw:c1", SECRET).await;
    let (mut s2, _) = raw_authenticated(&a.addr, "raw:c2", SECRET).await;
    s2.write_all(&seal(&mut ch1, frame(3))).await.unwrap();
    assert!(closed_by_peer(&mut s2).await);
    assert!(a.rx.try_recv().is_err());
}

#[tokio::test]
async fn a_keyring_lets_old_and_new_keys_talk_both_ways() {
    const NEW: &[u8] = b"the new cluster secret 0123";
    let mut old = node().await;
    let mut new = start_with(|addr| {
        let mut cfg = config(addr, NEW);
        cfg.accept_secrets = vec![SECRET.to_vec()];
        cfg
    })
    .await;
    old.t.send(&new.addr, Lane::Control, Msg::Ping(1)).unwrap();
    assert_eq!(recv(&mut new.rx).await.body, Msg::Ping(1));
    // The old node does not accept NEW yet: the new node's dial is refused.
    new.t.send(&old.addr, Lane::Control, Msg::Ping(2)).unwrap();
    let late = tokio::time::timeout(Duration::from_millis(500), old.rx.recv()).await;
    assert!(late.is_err(), "{late:?}");
    let both = start_with(|addr| {
        let mut cfg = config(addr, SECRET);
        cfg.accept_secrets = vec![NEW.to_vec()];
        cfg
    })
    .await;
    let mut both = both;
    new.t.send(&both.addr, Lane::Control, Msg::Ping(3)).unwrap();
    assert_eq!(recv(&mut both.rx).await.body, Msg::Ping(3));
}

#[tokio::test]
async fn drop_rate_drops_control_messages_only() {
    let a = node().await;
    let mut b = node().await;
    a.t.set_drop_rate(1.0);
    a.t.send(&b.addr, Lane::Control, Msg::Ping(1)).unwrap();
    a.t.send(&b.addr, Lane::Bulk, Msg::Ping(2)).unwrap();
    let m = recv(&mut b.rx).await;
    assert_eq!((m.lane, m.body), (Lane::Bulk, Msg::Ping(2)));
    a.t.set_drop_rate(0.0);
    a.t.send(&b.addr, Lane::Control, Msg::Ping(3)).unwrap();
    // Ping(1) was never queued, so the first control message to arrive is Ping(3).
    let m = recv(&mut b.rx).await;
    assert_eq!((m.lane, m.body), (Lane::Control, Msg::Ping(3)));
}

#[tokio::test]
async fn a_full_queue_is_an_error_not_a_wait() {
    // A listener that never answers the hello keeps the connection in its handshake.
    let mute = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mute_addr = NodeAddr(mute.local_addr().unwrap().to_string());
    let a = start_with(|addr| {
        let mut cfg = config(addr, SECRET);
        cfg.queue_cap = 2;
        cfg
    })
    .await;
    let results: Vec<_> = (0..4)
        .map(|i| a.t.send(&mute_addr, Lane::Control, Msg::Ping(i)))
        .collect();
    assert!(
        results
            .iter()
            .any(|r| matches!(r, Err(TransportError::QueueFull { .. }))),
        "{results:?}"
    );
    // Forgetting the peer discards its queue; sending is possible again.
    a.t.forget(&mute_addr);
    assert!(a.t.send(&mute_addr, Lane::Control, Msg::Ping(9)).is_ok());
    drop(mute);
}

#[tokio::test]
async fn requests_to_a_dead_address_fail_fast() {
    let gone = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gone_addr = NodeAddr(gone.local_addr().unwrap().to_string());
    drop(gone);
    let a = node().await;
    let err =
        a.t.request(&gone_addr, Lane::Control, Msg::Ping(1), DEADLINE)
            .await
            .unwrap_err();
    assert!(matches!(err, TransportError::Undeliverable { .. }), "{err}");
}

#[tokio::test]
async fn forget_closes_the_peers_inbound_connections() {
    let mut a = node().await;
    let (mut s, mut ch) = raw_authenticated(&a.addr, "raw:1", SECRET).await;
    let ping = wire::encode_frame(&Envelope::message(1, Msg::Ping(1))).unwrap();
    s.write_all(&seal(&mut ch, ping)).await.unwrap();
    // Delivered, so the connection is registered under its peer.
    assert_eq!(recv(&mut a.rx).await.from, NodeAddr("raw:1".into()));
    a.t.forget(&NodeAddr("raw:1".into()));
    assert!(closed_by_peer(&mut s).await);
}

#[tokio::test]
async fn reconnects_after_the_peer_restarts() {
    let a = node().await;
    let mut b = node().await;
    a.t.send(&b.addr, Lane::Control, Msg::Ping(0)).unwrap();
    assert_eq!(recv(&mut b.rx).await.body, Msg::Ping(0));

    // B goes away and comes back on the same port.
    let b_addr = b.addr.clone();
    b.t.shutdown();
    drop(b);
    let listener = tokio::time::timeout(DEADLINE, async {
        loop {
            // The old listener closes when its task is cancelled; retry until then.
            match TcpListener::bind(b_addr.as_str()).await {
                Ok(l) => return l,
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    })
    .await
    .expect("port never freed");
    let (b2, mut rx2) = Transport::<Msg>::start(listener, config(&b_addr, SECRET)).unwrap();

    // Keep sending until one arrives: early ones may die with the old connection or be
    // dropped during back-off, which is the documented behaviour.
    let (last, got) = tokio::time::timeout(DEADLINE, async {
        for i in 1u64.. {
            a.t.send(&b_addr, Lane::Control, Msg::Ping(i)).unwrap();
            if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(20), rx2.recv()).await {
                return (i, m);
            }
        }
        unreachable!()
    })
    .await
    .expect("never reconnected");
    assert_eq!(got.from, a.addr);
    // The first to arrive is the first one the new connection carried; every later
    // one went on that connection too, so the rest arrive exactly in order, none lost,
    // up to the last one sent.
    let Msg::Ping(first) = got.body else {
        panic!("expected a Ping, got {:?}", got.body);
    };
    assert!((1..=last).contains(&first), "Ping({first}) of 1..={last}");
    for i in first + 1..=last {
        assert_eq!(recv(&mut rx2).await.body, Msg::Ping(i));
    }
    serve_echo(rx2);
    let reply =
        a.t.request(&b_addr, Lane::Control, Msg::Ping(77), DEADLINE)
            .await;
    assert_eq!(reply.unwrap(), Msg::Echo("re:Ping(77)".into()));
    b2.shutdown();
}

#[tokio::test]
async fn shutdown_fails_sends_and_closes_the_inbound_channel() {
    let mut a = node().await;
    let b = node().await;
    a.t.shutdown();
    assert!(matches!(
        a.t.send(&b.addr, Lane::Control, Msg::Ping(1)),
        Err(TransportError::Shutdown)
    ));
    assert!(tokio::time::timeout(DEADLINE, a.rx.recv())
        .await
        .unwrap()
        .is_none());
    // Its port no longer accepts.
    let err =
        b.t.request(&a.addr, Lane::Control, Msg::Ping(2), DEADLINE)
            .await
            .unwrap_err();
    assert!(matches!(err, TransportError::Undeliverable { .. }), "{err}");
}

#[tokio::test]
async fn bad_configuration_is_refused() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cfg = TransportConfig::new(NodeAddr("127.0.0.1:1".into()), Vec::new());
    let err = Transport::<Msg>::start(listener, cfg).unwrap_err();
    assert!(matches!(err, TransportError::Config(_)), "{err}");
    // The secret never shows in a debug print.
    let cfg = TransportConfig::new(NodeAddr("h:1".into()), b"hunter2".to_vec());
    assert!(!format!("{cfg:?}").contains("hunter2"));
}
