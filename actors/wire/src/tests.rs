//! Property and unit tests of the frame codec, the envelope and the handshake.

use super::*;
use crate::types::NodeAddr;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};

/// A stand-in for the cluster's body enum, with every shape serde can produce.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum TestBody {
    Unit,
    Ping { seq: u64, from: NodeAddr },
    Text(String),
    Bytes(Vec<u8>),
    Nested(Option<Box<TestBody>>),
    Pair(i64, bool),
    Float(f64),
}

/// Any nesting of values, to feed the decoder hostile depth.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum Tree {
    Leaf,
    Node(Vec<Tree>),
}

fn config() -> Config {
    Config {
        cases: 256,
        rng_seed: RngSeed::Fixed(0x0d31_2024),
        failure_persistence: None,
        ..Config::default()
    }
}

fn body() -> impl Strategy<Value = TestBody> {
    let leaf = prop_oneof![
        Just(TestBody::Unit),
        (any::<u64>(), "[a-z0-9.]{1,20}:[0-9]{1,5}").prop_map(|(seq, a)| TestBody::Ping {
            seq,
            from: NodeAddr(a)
        }),
        any::<String>().prop_map(TestBody::Text),
        proptest::collection::vec(any::<u8>(), 0..512).prop_map(TestBody::Bytes),
        (any::<i64>(), any::<bool>()).prop_map(|(a, b)| TestBody::Pair(a, b)),
        // NaN != NaN would make the round-trip comparison fail for the wrong reason.
        any::<f64>()
            .prop_filter("not NaN", |f| !f.is_nan())
            .prop_map(TestBody::Float),
    ];
    leaf.prop_recursive(4, 16, 1, |inner| {
        proptest::option::of(inner.prop_map(Box::new)).prop_map(TestBody::Nested)
    })
}

fn envelope() -> impl Strategy<Value = Envelope<TestBody>> {
    (any::<u64>(), any::<Option<u64>>(), any::<bool>(), body()).prop_map(
        |(id, reply_to, expects_reply, body)| Envelope {
            version: PROTOCOL_VERSION,
            id,
            reply_to,
            expects_reply,
            body,
        },
    )
}

fn prefix(len: u32) -> Vec<u8> {
    len.to_be_bytes().to_vec()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn envelope_round_trips_with_exact_length(env in envelope()) {
        let frame = encode_frame(&env).unwrap();
        let announced = frame_len(&frame, MAX_FRAME).unwrap().unwrap();
        prop_assert_eq!(announced + LEN_PREFIX, frame.len());
        prop_assert_eq!(announced, rmp_serde::to_vec(&env).unwrap().len());
        let (back, used) = decode_frame::<TestBody>(&frame, MAX_FRAME).unwrap().unwrap();
        prop_assert_eq!(used, frame.len());
        prop_assert_eq!(back, env);
    }

    #[test]
    fn every_strict_prefix_needs_more_bytes(env in envelope(), cut in any::<prop::sample::Index>()) {
        let frame = encode_frame(&env).unwrap();
        let cut = cut.index(frame.len());
        prop_assert!(decode_frame::<TestBody>(&frame[..cut], MAX_FRAME).unwrap().is_none());
    }

    #[test]
    fn trailing_bytes_inside_a_frame_are_rejected(
        env in envelope(),
        extra in proptest::collection::vec(any::<u8>(), 1..64),
    ) {
        let mut payload = rmp_serde::to_vec(&env).unwrap();
        payload.extend_from_slice(&extra);
        let mut frame = prefix(payload.len() as u32);
        frame.extend_from_slice(&payload);
        let err = decode_frame::<TestBody>(&frame, MAX_FRAME).unwrap_err();
        prop_assert!(matches!(err, WireError::TrailingBytes { extra: n } if n == extra.len()), "{err:?}");
    }

    #[test]
    fn bytes_after_a_frame_belong_to_the_next_one(
        env in envelope(),
        extra in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut buf = encode_frame(&env).unwrap();
        let len = buf.len();
        buf.extend_from_slice(&extra);
        let (back, used) = decode_frame::<TestBody>(&buf, MAX_FRAME).unwrap().unwrap();
        prop_assert_eq!(used, len);
        prop_assert_eq!(back, env);
    }

    #[test]
    fn oversized_prefix_is_rejected_from_four_bytes(len in (MAX_FRAME as u32 + 1)..=u32::MAX) {
        let err = decode_frame::<TestBody>(&prefix(len), MAX_FRAME).unwrap_err();
        prop_assert!(matches!(err, WireError::FrameTooLarge { .. }), "{err:?}");
        let mut dec = FrameDecoder::new(MAX_FRAME);
        dec.push(&prefix(len));
        prop_assert!(dec.next_payload().is_err());
    }

    #[test]
    fn random_bytes_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..2048)) {
        match decode_frame::<TestBody>(&buf, MAX_FRAME) {
            Ok(Some((_, used))) => prop_assert!(used <= buf.len()),
            Ok(None) => {
                // "Need more" only when the announced frame is really incomplete.
                let incomplete = match frame_len(&buf, MAX_FRAME) {
                    Ok(None) => buf.len() < LEN_PREFIX,
                    Ok(Some(n)) => buf.len() < LEN_PREFIX + n,
                    Err(_) => false,
                };
                prop_assert!(incomplete);
            }
            Err(_) => {}
        }
        let _ = decode_handshake(&buf);
    }

    #[test]
    fn random_payload_in_a_valid_frame_is_an_error_or_a_message(
        payload in proptest::collection::vec(any::<u8>(), 1..512),
    ) {
        let mut frame = prefix(payload.len() as u32);
        frame.extend_from_slice(&payload);
        // Either outcome is fine; what is checked is that neither panics nor hangs,
        // and that a success consumed the whole frame.
        if let Ok(Some((_, used))) = decode_frame::<TestBody>(&frame, MAX_FRAME) {
            prop_assert_eq!(used, frame.len());
        }
    }

    #[test]
    fn decoder_reassembles_any_chunking(
        envs in proptest::collection::vec(envelope(), 1..8),
        chunk in 1usize..97,
    ) {
        let stream: Vec<u8> = envs.iter().flat_map(|e| encode_frame(e).unwrap()).collect();
        let mut dec = FrameDecoder::new(MAX_FRAME);
        let mut out = Vec::new();
        for piece in stream.chunks(chunk) {
            dec.push(piece);
            while let Some(e) = dec.next_envelope::<TestBody>().unwrap() {
                out.push(e);
            }
        }
        prop_assert_eq!(dec.buffered(), 0);
        prop_assert_eq!(out, envs);
    }
}

#[test]
fn four_gib_prefix_costs_nothing() {
    let mut dec = FrameDecoder::new(MAX_FRAME);
    dec.push(&[0xff, 0xff, 0xff, 0xff]);
    assert!(matches!(
        dec.next_payload(),
        Err(WireError::FrameTooLarge { len, .. }) if len == u32::MAX as usize
    ));
    assert_eq!(dec.buffered(), 4);
}

#[test]
fn empty_frame_is_rejected() {
    assert!(matches!(
        decode_frame::<TestBody>(&[0, 0, 0, 0], MAX_FRAME),
        Err(WireError::EmptyFrame)
    ));
}

#[test]
fn encoder_refuses_payloads_over_the_cap() {
    let env = Envelope::message(1, TestBody::Bytes(vec![7; 100]));
    assert!(matches!(
        encode_frame_max(&env, 50),
        Err(WireError::FrameTooLarge { max: 50, .. })
    ));
    assert!(encode_frame_max(&env, 500).is_ok());
}

#[test]
fn decoder_respects_a_lower_cap() {
    let frame = encode_frame(&Envelope::message(1, TestBody::Bytes(vec![1; 64]))).unwrap();
    let mut dec = FrameDecoder::new(16);
    dec.push(&frame);
    assert!(matches!(
        dec.next_payload(),
        Err(WireError::FrameTooLarge { max: 16, .. })
    ));
    dec.set_max(MAX_FRAME);
    assert!(dec.next_envelope::<TestBody>().unwrap().is_some());
}

#[test]
fn other_versions_are_refused_before_the_body_is_decoded() {
    let mut env = Envelope::message(9, TestBody::Unit);
    env.version = PROTOCOL_VERSION + 1;
    let frame = encode_frame(&env).unwrap();
    assert!(matches!(
        decode_frame::<TestBody>(&frame, MAX_FRAME),
        Err(WireError::VersionMismatch { got, .. }) if got == PROTOCOL_VERSION + 1
    ));
    // A future layout with a different shape is still reported as a version problem.
    let future = (PROTOCOL_VERSION + 1, "something else entirely");
    let payload = rmp_serde::to_vec(&future).unwrap();
    assert!(matches!(
        decode_payload::<TestBody>(&payload),
        Err(WireError::VersionMismatch { .. })
    ));
}

#[test]
fn unknown_body_is_an_error() {
    #[derive(Serialize)]
    enum Other {
        NotInTestBody(u8),
    }
    let frame = encode_frame(&Envelope::message(3, Other::NotInTestBody(1))).unwrap();
    assert!(matches!(
        decode_frame::<TestBody>(&frame, MAX_FRAME),
        Err(WireError::Decode(_))
    ));
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    // [version, id, nil, false, body] where body nests 100 000 one-element arrays.
    let mut payload = vec![0x95, 0x01, 0x00, 0xc0, 0xc2];
    payload.extend(std::iter::repeat_n(0x91u8, 100_000));
    payload.push(0xc0);
    let err = decode_payload::<Tree>(&payload).unwrap_err();
    assert!(err.to_string().contains("depth"), "{err}");
    // Within the limit the same shape decodes.
    let shallow = Envelope::message(1, Tree::Node(vec![Tree::Node(vec![Tree::Leaf])]));
    let frame = encode_frame(&shallow).unwrap();
    assert_eq!(
        decode_frame::<Tree>(&frame, MAX_FRAME).unwrap().unwrap().0,
        shallow
    );
}

#[test]
fn huge_inner_lengths_do_not_allocate() {
    // A str32 header announcing 4 GiB inside a tiny frame: must fail on EOF.
    let payload = [0x95, 0x01, 0x00, 0xc0, 0xc2, 0xdb, 0xff, 0xff, 0xff, 0xff];
    assert!(decode_payload::<TestBody>(&payload).is_err());
    // Same for an array32 header announcing 4 billion elements.
    let payload = [
        0x95, 0x01, 0x00, 0xc0, 0xc2, 0x81, 0xa5, b'B', b'y', b't', b'e', b's', 0xdd, 0xff, 0xff,
        0xff, 0xff,
    ];
    assert!(decode_payload::<TestBody>(&payload).is_err());
}

// ---- handshake ----

const SECRET: &[u8] = b"cluster secret";

fn payload_of(frame: &[u8]) -> &[u8] {
    split_frame(frame, HANDSHAKE_MAX_FRAME).unwrap().unwrap().0
}

fn addr(s: &str) -> NodeAddr {
    NodeAddr(s.to_string())
}

/// Runs a full handshake; returns (client's view, server's view).
fn run(
    client_secret: &[u8],
    server_secret: &[u8],
) -> Result<(Established, Established), HandshakeError> {
    let (c, hello) =
        ClientHandshake::start(&addr("10.0.0.1:8001"), Role::Node, Lane::Bulk, [1; 32])?;
    let (s, challenge) = ServerHandshake::on_hello(
        server_secret,
        &addr("10.0.0.2:8002"),
        [2; 32],
        payload_of(&hello),
    )?;
    let (client_view, finish) = c.on_challenge(client_secret, payload_of(&challenge))?;
    let server_view = s.on_finish(server_secret, payload_of(&finish))?;
    Ok((client_view, server_view))
}

#[test]
fn handshake_with_the_same_secret_succeeds() {
    let (c, s) = run(SECRET, SECRET).unwrap();
    assert_eq!(c.peer, addr("10.0.0.2:8002"));
    assert_eq!(s.peer, addr("10.0.0.1:8001"));
    assert_eq!((s.role, s.lane), (Role::Node, Lane::Bulk));
    assert_eq!(c.lane, Lane::Bulk);
}

#[test]
fn wrong_secret_fails_on_either_side() {
    // The client checks the server's proof first, so a client with the wrong secret
    // notices before it sends anything but its hello.
    assert!(matches!(
        run(b"wrong", SECRET),
        Err(HandshakeError::BadProof)
    ));
    assert!(matches!(
        run(SECRET, b"wrong"),
        Err(HandshakeError::BadProof)
    ));
}

#[test]
fn server_rejects_a_forged_finish() {
    // An attacker without the secret completes the exchange with made-up proofs.
    let (_, hello) =
        ClientHandshake::start(&addr("evil:1"), Role::Node, Lane::Control, [3; 32]).unwrap();
    let (s, _) =
        ServerHandshake::on_hello(SECRET, &addr("a:1"), [4; 32], payload_of(&hello)).unwrap();
    let finish = encode_handshake(&HandshakeMsg::Finish { proof: [0; 32] }).unwrap();
    assert!(matches!(
        s.on_finish(SECRET, payload_of(&finish)),
        Err(HandshakeError::BadProof)
    ));
}

#[test]
fn replayed_finish_fails_against_a_new_server_nonce() {
    let hello_of =
        || ClientHandshake::start(&addr("b:1"), Role::Node, Lane::Control, [5; 32]).unwrap();
    // Session 1 is recorded.
    let (c, hello) = hello_of();
    let (s, challenge) =
        ServerHandshake::on_hello(SECRET, &addr("a:1"), [6; 32], payload_of(&hello)).unwrap();
    let (_, finish) = c.on_challenge(SECRET, payload_of(&challenge)).unwrap();
    s.on_finish(SECRET, payload_of(&finish)).unwrap();
    // The attacker replays hello and finish; the server drew a new nonce.
    let (_, hello) = hello_of();
    let (s2, _) =
        ServerHandshake::on_hello(SECRET, &addr("a:1"), [7; 32], payload_of(&hello)).unwrap();
    assert!(matches!(
        s2.on_finish(SECRET, payload_of(&finish)),
        Err(HandshakeError::BadProof)
    ));
}

#[test]
fn reflected_server_proof_fails() {
    // An attacker sends back the server's own proof as its Finish.
    let (_, hello) =
        ClientHandshake::start(&addr("b:1"), Role::Node, Lane::Control, [8; 32]).unwrap();
    let (s, challenge) =
        ServerHandshake::on_hello(SECRET, &addr("a:1"), [9; 32], payload_of(&hello)).unwrap();
    let HandshakeMsg::Challenge { proof, .. } = decode_handshake(payload_of(&challenge)).unwrap()
    else {
        panic!("not a challenge");
    };
    let finish = encode_handshake(&HandshakeMsg::Finish { proof }).unwrap();
    assert!(matches!(
        s.on_finish(SECRET, payload_of(&finish)),
        Err(HandshakeError::BadProof)
    ));
}

#[test]
fn tampered_challenge_fails() {
    let (c, hello) =
        ClientHandshake::start(&addr("b:1"), Role::Node, Lane::Control, [10; 32]).unwrap();
    let (_, challenge) =
        ServerHandshake::on_hello(SECRET, &addr("a:1"), [11; 32], payload_of(&hello)).unwrap();
    let HandshakeMsg::Challenge {
        version,
        nonce,
        proof,
        ..
    } = decode_handshake(payload_of(&challenge)).unwrap()
    else {
        panic!("not a challenge");
    };
    let forged = encode_handshake(&HandshakeMsg::Challenge {
        version,
        nonce,
        addr: "someone-else:1".into(),
        proof,
    })
    .unwrap();
    assert!(matches!(
        c.on_challenge(SECRET, payload_of(&forged)),
        Err(HandshakeError::BadProof)
    ));
}

#[test]
fn out_of_order_messages_and_bad_versions_are_refused() {
    let finish = encode_handshake(&HandshakeMsg::Finish { proof: [0; 32] }).unwrap();
    assert!(matches!(
        ServerHandshake::on_hello(SECRET, &addr("a:1"), [0; 32], payload_of(&finish)),
        Err(HandshakeError::Unexpected { .. })
    ));
    let old = encode_handshake(&HandshakeMsg::Hello {
        version: PROTOCOL_VERSION + 1,
        nonce: [0; 32],
        addr: "b:1".into(),
        role: Role::Node,
        lane: Lane::Control,
    })
    .unwrap();
    assert!(matches!(
        ServerHandshake::on_hello(SECRET, &addr("a:1"), [0; 32], payload_of(&old)),
        Err(HandshakeError::VersionMismatch { .. })
    ));
    let long = "x".repeat(MAX_ADDR_LEN + 1);
    assert!(matches!(
        ClientHandshake::start(&NodeAddr(long), Role::Node, Lane::Control, [0; 32]),
        Err(HandshakeError::BadAddr(_))
    ));
}

#[test]
fn empty_secret_is_refused() {
    assert!(matches!(run(b"", b""), Err(HandshakeError::EmptySecret)));
}

#[test]
fn handshake_frames_fit_their_cap() {
    let (_, hello) = ClientHandshake::start(
        &NodeAddr("h".repeat(MAX_ADDR_LEN)),
        Role::Tool,
        Lane::Bulk,
        [0xff; 32],
    )
    .unwrap();
    assert!(hello.len() <= HANDSHAKE_MAX_FRAME + LEN_PREFIX);
}
