//! Real-socket tests of the transport on 127.0.0.1 (port 0): both lanes, request/response,
//! tool clients, authentication failures, hostile bytes, bounded queues, loss injection
//! and reconnection after a peer restarts. Waits are conditions with a generous safety
//! deadline, never timed assertions.

use std::time::Duration;

use dml_actors::net::transport::{
    Client, Inbound, Lane, Transport, TransportConfig, TransportError,
};
use dml_actors::net::wire::{self, ClientHandshake, Envelope, FrameDecoder, HandshakeError, Role};
use dml_actors::types::NodeAddr;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::Receiver;

const SECRET: &[u8] = b"test cluster secret";
/// Only a guard against a hung test; every wait ends on a condition long before this.
const DEADLINE: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum Msg {
    Ping(u64),
    Echo(String),
    Chunk(Vec<u8>),
}

struct Node {
    t: Transport<Msg>,
    rx: Receiver<Inbound<Msg>>,
    addr: NodeAddr,
}

fn config(addr: &NodeAddr, secret: &[u8]) -> TransportConfig {
    let mut cfg = TransportConfig::new(addr.clone(), secret);
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

/// A hand-driven client that completes the handshake (with `secret`), then lets the test
/// write whatever bytes it likes.
async fn raw_authenticated(to: &NodeAddr, me: &str, secret: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(to.as_str()).await.unwrap();
    let (hs, hello) =
        ClientHandshake::start(&NodeAddr(me.into()), Role::Node, Lane::Control, [42; 32]).unwrap();
    s.write_all(&hello).await.unwrap();
    let mut dec = FrameDecoder::new(wire::HANDSHAKE_MAX_FRAME);
    let challenge = read_payload(&mut s, &mut dec).await;
    let (_, finish) = hs.on_challenge(secret, &challenge).unwrap();
    s.write_all(&finish).await.unwrap();
    s
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
    let mut client = Client::<Msg>::connect(a.addr.as_str(), SECRET, DEADLINE)
        .await
        .unwrap();
    let ask = tokio::spawn(async move {
        let r1 = client.request(Msg::Echo("list_mem".into()), DEADLINE).await;
        let r2 = client.request(Msg::Ping(2), DEADLINE).await;
        (r1, r2)
    });
    for _ in 0..2 {
        let m = recv(&mut a.rx).await;
        assert!(m.from.as_str().starts_with("tool@"), "{}", m.from);
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
    assert_eq!(r2.unwrap(), Msg::Echo("answer to Ping(2)".into()));
}

#[tokio::test]
async fn wrong_secret_is_rejected_and_nothing_is_delivered() {
    let mut a = node().await;

    // A tool with the wrong secret notices at once (the server proves first).
    let err = Client::<Msg>::connect(a.addr.as_str(), b"not the secret", DEADLINE)
        .await
        .unwrap_err();
    assert!(
        matches!(err, TransportError::Handshake(HandshakeError::BadProof)),
        "{err}"
    );

    // A node with the wrong secret cannot get a request through.
    let c = start_with(|addr| config(addr, b"not the secret")).await;
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
        [1; 32],
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
    for (i, attack) in attacks.iter().enumerate() {
        let mut s = raw_authenticated(&a.addr, &format!("raw:{i}"), SECRET).await;
        s.write_all(attack).await.unwrap();
        if i == attacks.len() - 1 {
            // The truncated frame is only known to be truncated once the writer stops.
            s.shutdown().await.unwrap();
        }
        assert!(
            closed_by_peer(&mut s).await,
            "attack {i} was not disconnected"
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
async fn unfinished_handshakes_are_bounded() {
    let a = start_with(|addr| {
        let mut cfg = config(addr, SECRET);
        cfg.max_pending_handshakes = 2;
        cfg.handshake_timeout = Duration::from_secs(60);
        cfg
    })
    .await;
    let mut silent = Vec::new();
    for _ in 0..2 {
        silent.push(TcpStream::connect(a.addr.as_str()).await.unwrap());
    }
    let mut third = TcpStream::connect(a.addr.as_str()).await.unwrap();
    assert!(closed_by_peer(&mut third).await);
    // The first two still wait for their hello (their timeout is a minute away).
    let mut buf = [0u8; 8];
    for s in &silent {
        assert!(
            matches!(s.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        );
    }
    // Once one of them gives up, a new connection gets its slot and authenticates.
    drop(silent.pop());
    let mut ok = None;
    for _ in 0..100 {
        match Client::<Msg>::connect(a.addr.as_str(), SECRET, DEADLINE).await {
            Ok(c) => {
                ok = Some(c);
                break;
            }
            // The slot frees when the server notices the close: retry until it has.
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    assert!(ok.is_some());
    a.t.shutdown();
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
    let mut s = raw_authenticated(&a.addr, "raw:1", SECRET).await;
    s.write_all(&wire::encode_frame(&Envelope::message(1, Msg::Ping(1))).unwrap())
        .await
        .unwrap();
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
