//! Property and unit tests of the frame codec, the envelope and the handshake.

use super::*;
use crate::types::NodeAddr;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};

/// A stand-in for the cluster's body enum, with every shape serde can produce.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum TestBody {
    Unit,
    Ping {
        seq: u64,
        from: NodeAddr,
    },
    Text(String),
    Bytes(Vec<u8>),
    /// Bytes as MessagePack `bin`, as the cluster's chunks travel.
    Bin(#[serde(with = "bin")] Vec<u8>),
    Nested(Option<Box<TestBody>>),
    Pair(i64, bool),
    Float(f64),
}

/// MessagePack `bin` for a byte vector (serde's default is an array of integers).
mod bin {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    struct V;

    impl serde::de::Visitor<'_> for V {
        type Value = Vec<u8>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("bytes")
        }
        fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }
        fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_byte_buf(V)
    }
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
        proptest::collection::vec(any::<u8>(), 0..512).prop_map(TestBody::Bin),
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

/// The envelope decoder as it was before the fast path: the version peeked first (slow
/// path), then the whole payload decoded (slow path).
fn reference_decode(payload: &[u8]) -> Result<Envelope<TestBody>, WireError> {
    let VersionPeek(got) = decode_exact_reader(payload)?;
    if got != PROTOCOL_VERSION {
        return Err(WireError::VersionMismatch {
            got,
            expected: PROTOCOL_VERSION,
        });
    }
    decode_exact_reader(payload)
}

/// Same outcome from both decoders: the same envelope, or errors of the same kind.
fn same_outcome(payload: &[u8]) -> Result<(), TestCaseError> {
    let fast = decode_payload::<TestBody>(payload);
    let slow = reference_decode(payload);
    match (&fast, &slow) {
        (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
        (Err(a), Err(b)) => prop_assert_eq!(
            std::mem::discriminant(a),
            std::mem::discriminant(b),
            "{:?} vs {:?}",
            a,
            b
        ),
        _ => prop_assert!(false, "fast {fast:?}, reference {slow:?}"),
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn fast_decode_agrees_with_the_reader_on_random_payloads(
        payload in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        same_outcome(&payload)?;
    }

    #[test]
    fn fast_decode_agrees_with_the_reader_on_damaged_envelopes(
        env in envelope(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        cut in any::<prop::sample::Index>(),
        tail in proptest::collection::vec(any::<u8>(), 0..8),
    ) {
        let mut payload = rmp_serde::to_vec(&env).unwrap();
        for (at, byte) in flips {
            let i = at.index(payload.len());
            payload[i] = byte;
        }
        same_outcome(&payload)?;
        let cut = cut.index(payload.len() + 1);
        same_outcome(&payload[..cut])?;
        payload.extend_from_slice(&tail);
        same_outcome(&payload)?;
    }

    #[test]
    fn reads_into_the_decoder_reassemble_any_chunking(
        envs in proptest::collection::vec(envelope(), 1..8),
        reads in proptest::collection::vec((1usize..200, any::<prop::sample::Index>()), 1..64),
    ) {
        // A socket read offers `room` bytes and fills only some of them.
        let stream: Vec<u8> = envs.iter().flat_map(|e| encode_frame(e).unwrap()).collect();
        let mut dec = FrameDecoder::new(MAX_FRAME);
        let mut out = Vec::new();
        let mut at = 0;
        let mut i = 0;
        while at < stream.len() {
            let (room, fill) = reads[i % reads.len()];
            i += 1;
            let n = (fill.index(room) + 1).min(stream.len() - at);
            let buf = dec.read_buf(room);
            prop_assert_eq!(buf.len(), room);
            buf[..n].copy_from_slice(&stream[at..at + n]);
            dec.filled(n);
            at += n;
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

const SECRET: &[u8] = b"cluster secret 0123456789";
const OTHER: &[u8] = b"another secret 0123456789";
const OP_KEY: &[u8] = b"operator key 0123456789abc";

fn key(b: &[u8]) -> Key {
    Key::new(b).unwrap()
}

fn eph() -> Ephemeral {
    Ephemeral::generate(&ring::rand::SystemRandom::new()).unwrap()
}

fn nodes(secret: &[u8]) -> Authority {
    Authority::nodes_only(Keyring::single(key(secret)))
}

fn with_operators(secret: &[u8]) -> Authority {
    Authority {
        operators: parse_operators(&format!(
            "# name role key\nalice admin {}\nbob read-only {}\n",
            hex(OP_KEY),
            hex(OTHER)
        ))
        .unwrap(),
        ..nodes(secret)
    }
}

fn payload_of(frame: &[u8]) -> &[u8] {
    split_frame(frame, HANDSHAKE_MAX_FRAME).unwrap().unwrap().0
}

fn addr(s: &str) -> NodeAddr {
    NodeAddr(s.to_string())
}

fn hello(role: Role, cred: &Credential, nonce: u8) -> (ClientHandshake, Vec<u8>) {
    ClientHandshake::start(&addr("b:1"), role, Lane::Control, cred, [nonce; 32], eph()).unwrap()
}

type Ends = ((Established, Channel), (Established, Channel));

/// Runs a full handshake; returns (client's view, server's view).
fn run_as(role: Role, cred: &Credential, auth: &Authority) -> Result<Ends, HandshakeError> {
    let (c, hello) = ClientHandshake::start(
        &addr("10.0.0.1:8001"),
        role,
        Lane::Bulk,
        cred,
        [1; 32],
        eph(),
    )?;
    let (s, challenge) = ServerHandshake::on_hello(
        auth,
        &addr("10.0.0.2:8002"),
        [2; 32],
        eph(),
        payload_of(&hello),
    )?;
    let (client_view, client_ch, finish) = c.on_challenge(payload_of(&challenge))?;
    let server = s.on_finish(payload_of(&finish))?;
    Ok(((client_view, client_ch), server))
}

fn run(client_secret: &[u8], server_secret: &[u8]) -> Result<Ends, HandshakeError> {
    run_as(
        Role::Node,
        &Credential::cluster(key(client_secret)),
        &nodes(server_secret),
    )
}

#[test]
fn handshake_with_the_same_secret_succeeds() {
    let ((c, _), (s, _)) = run(SECRET, SECRET).unwrap();
    assert_eq!(c.peer, addr("10.0.0.2:8002"));
    assert_eq!(s.peer, addr("10.0.0.1:8001"));
    assert_eq!((s.role, s.lane), (Role::Node, Lane::Bulk));
    assert_eq!(s.access, Access::Node);
    assert_eq!(c.lane, Lane::Bulk);
}

#[test]
fn wrong_secret_fails_on_either_side() {
    // Another key has another id: the server does not know it and says so.
    assert!(matches!(
        run(OTHER, SECRET),
        Err(HandshakeError::Refused(_))
    ));
    // An impostor server that does not hold the key the client named cannot make a
    // proof: the client stops before sending anything but its hello.
    let (c, _) = hello(Role::Node, &Credential::cluster(key(SECRET)), 3);
    let impostor = encode_handshake(&HandshakeMsg::Challenge {
        version: PROTOCOL_VERSION,
        nonce: [4; 32],
        addr: "a:1".into(),
        ephemeral: eph().public(),
        proof: [0; 32],
    })
    .unwrap();
    assert!(matches!(
        c.on_challenge(payload_of(&impostor)),
        Err(HandshakeError::BadProof)
    ));
}

#[test]
fn wrong_key_id_is_refused_with_a_reason_the_client_sees() {
    let (c, hello) = hello(Role::Node, &Credential::cluster(key(OTHER)), 5);
    let err = ServerHandshake::on_hello(
        &nodes(SECRET),
        &addr("a:1"),
        [6; 32],
        eph(),
        payload_of(&hello),
    )
    .unwrap_err();
    assert!(matches!(err, HandshakeError::Refused(_)), "{err}");
    let frame = refusal_frame(&err).unwrap();
    let seen = c.on_challenge(payload_of(&frame)).unwrap_err();
    assert!(
        matches!(&seen, HandshakeError::RefusedByPeer(r) if r.contains("unknown cluster key id")),
        "{seen}"
    );
}

#[test]
fn a_keyring_accepts_old_keys_and_dials_with_the_new_one() {
    let ring = Keyring::new(key(OTHER), vec![key(SECRET)]);
    let auth = Authority::nodes_only(ring.clone());
    for k in [SECRET, OTHER] {
        run_as(Role::Node, &Credential::cluster(key(k)), &auth).unwrap();
    }
    assert_eq!(ring.send().id(), key(OTHER).id());
}

#[test]
fn server_rejects_a_forged_finish() {
    // An attacker without the secret completes the exchange with made-up proofs.
    let (_, hello) = hello(Role::Node, &Credential::cluster(key(SECRET)), 7);
    let (s, _) = ServerHandshake::on_hello(
        &nodes(SECRET),
        &addr("a:1"),
        [8; 32],
        eph(),
        payload_of(&hello),
    )
    .unwrap();
    let finish = encode_handshake(&HandshakeMsg::Finish { proof: [0; 32] }).unwrap();
    assert!(matches!(
        s.on_finish(payload_of(&finish)),
        Err(HandshakeError::BadProof)
    ));
}

#[test]
fn replayed_finish_fails_against_a_new_server_nonce() {
    let cred = Credential::cluster(key(SECRET));
    let auth = nodes(SECRET);
    // Session 1 is recorded.
    let (c, hello1) = hello(Role::Node, &cred, 9);
    let (s, challenge) =
        ServerHandshake::on_hello(&auth, &addr("a:1"), [10; 32], eph(), payload_of(&hello1))
            .unwrap();
    let (_, _, finish) = c.on_challenge(payload_of(&challenge)).unwrap();
    s.on_finish(payload_of(&finish)).unwrap();
    // The attacker replays hello and finish; the server drew a new nonce and key.
    let (s2, _) =
        ServerHandshake::on_hello(&auth, &addr("a:1"), [11; 32], eph(), payload_of(&hello1))
            .unwrap();
    assert!(matches!(
        s2.on_finish(payload_of(&finish)),
        Err(HandshakeError::BadProof)
    ));
}

#[test]
fn reflected_server_proof_fails() {
    // An attacker sends back the server's own proof as its Finish.
    let (_, hello) = hello(Role::Node, &Credential::cluster(key(SECRET)), 12);
    let (s, challenge) = ServerHandshake::on_hello(
        &nodes(SECRET),
        &addr("a:1"),
        [13; 32],
        eph(),
        payload_of(&hello),
    )
    .unwrap();
    let HandshakeMsg::Challenge { proof, .. } = decode_handshake(payload_of(&challenge)).unwrap()
    else {
        panic!("not a challenge");
    };
    let finish = encode_handshake(&HandshakeMsg::Finish { proof }).unwrap();
    assert!(matches!(
        s.on_finish(payload_of(&finish)),
        Err(HandshakeError::BadProof)
    ));
}

#[test]
fn tampered_challenge_fails() {
    let (c, hello) = hello(Role::Node, &Credential::cluster(key(SECRET)), 14);
    let (_, challenge) = ServerHandshake::on_hello(
        &nodes(SECRET),
        &addr("a:1"),
        [15; 32],
        eph(),
        payload_of(&hello),
    )
    .unwrap();
    let HandshakeMsg::Challenge {
        version,
        nonce,
        addr: a,
        proof,
        ..
    } = decode_handshake(payload_of(&challenge)).unwrap()
    else {
        panic!("not a challenge");
    };
    // A man in the middle swaps in its own ephemeral key: the proof no longer matches.
    let forged = encode_handshake(&HandshakeMsg::Challenge {
        version,
        nonce,
        addr: a,
        ephemeral: eph().public(),
        proof,
    })
    .unwrap();
    assert!(matches!(
        c.on_challenge(payload_of(&forged)),
        Err(HandshakeError::BadProof)
    ));
}

#[test]
fn out_of_order_messages_and_bad_versions_are_refused() {
    let auth = nodes(SECRET);
    let finish = encode_handshake(&HandshakeMsg::Finish { proof: [0; 32] }).unwrap();
    assert!(matches!(
        ServerHandshake::on_hello(&auth, &addr("a:1"), [0; 32], eph(), payload_of(&finish)),
        Err(HandshakeError::Unexpected { .. })
    ));
    let old = encode_handshake(&HandshakeMsg::Hello {
        version: PROTOCOL_VERSION + 1,
        nonce: [0; 32],
        addr: "b:1".into(),
        role: Role::Node,
        lane: Lane::Control,
        key_id: key(SECRET).id(),
        operator: None,
        ephemeral: [9; 32],
    })
    .unwrap();
    let err = ServerHandshake::on_hello(&auth, &addr("a:1"), [0; 32], eph(), payload_of(&old))
        .unwrap_err();
    assert!(matches!(err, HandshakeError::VersionMismatch { .. }));
    assert!(refusal_frame(&err).is_some());
    let long = "x".repeat(MAX_ADDR_LEN + 1);
    assert!(matches!(
        ClientHandshake::start(
            &NodeAddr(long),
            Role::Node,
            Lane::Control,
            &Credential::cluster(key(SECRET)),
            [0; 32],
            eph()
        ),
        Err(HandshakeError::BadAddr(_))
    ));
}

#[test]
fn short_and_empty_keys_are_refused() {
    assert_eq!(Key::new(b"".to_vec()), Err(KeyError::TooShort(0)));
    assert_eq!(Key::new(b"short".to_vec()), Err(KeyError::TooShort(5)));
    assert!(!format!("{:?}", key(SECRET)).contains("cluster"));
}

#[test]
fn handshake_frames_fit_their_cap() {
    let (_, hello) = ClientHandshake::start(
        &NodeAddr("h".repeat(MAX_ADDR_LEN)),
        Role::Tool,
        Lane::Bulk,
        &Credential::operator("o".repeat(MAX_OPERATOR_LEN), key(OP_KEY)),
        [0xff; 32],
        eph(),
    )
    .unwrap();
    assert!(hello.len() <= HANDSHAKE_MAX_FRAME + LEN_PREFIX);
}

// ---- roles and operators ----

#[test]
fn operators_prove_their_own_key_and_get_their_grant() {
    let auth = with_operators(SECRET);
    let (_, (s, _)) = run_as(
        Role::Tool,
        &Credential::operator("alice", key(OP_KEY)),
        &auth,
    )
    .unwrap();
    assert_eq!(
        s.access,
        Access::Operator {
            name: "alice".into(),
            grant: Grant::Admin
        }
    );
    let (_, (s, _)) = run_as(Role::Tool, &Credential::operator("bob", key(OTHER)), &auth).unwrap();
    assert!(matches!(
        s.access,
        Access::Operator {
            grant: Grant::ReadOnly,
            ..
        }
    ));
}

#[test]
fn wrong_or_missing_operator_credentials_are_refused() {
    let auth = with_operators(SECRET);
    let refused = |role, cred: Credential, auth: &Authority| match run_as(role, &cred, auth) {
        Err(HandshakeError::Refused(r)) => r,
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    };
    // bob's name with alice's key, an unknown name, and the cluster secret as a tool.
    assert!(
        refused(Role::Tool, Credential::operator("bob", key(OP_KEY)), &auth)
            .contains("unknown operator or wrong key")
    );
    assert!(
        refused(Role::Tool, Credential::operator("eve", key(OP_KEY)), &auth)
            .contains("unknown operator")
    );
    assert!(refused(Role::Tool, Credential::cluster(key(SECRET)), &auth)
        .contains("operator credential"));
    // An operator key never makes a node, and a node hello with an operator is refused.
    assert!(refused(
        Role::Node,
        Credential::operator("alice", key(OP_KEY)),
        &auth
    )
    .contains("cluster key"));
    assert!(refused(
        Role::Tool,
        Credential::operator("alice", key(OP_KEY)),
        &nodes(SECRET)
    )
    .contains("no operators configured"));
    // Where explicitly allowed, the cluster secret makes an admin tool.
    let lax = Authority {
        allow_secret_for_tools: true,
        ..nodes(SECRET)
    };
    let (_, (s, _)) = run_as(Role::Tool, &Credential::cluster(key(SECRET)), &lax).unwrap();
    assert!(matches!(
        s.access,
        Access::Operator {
            grant: Grant::Admin,
            ..
        }
    ));
}

#[test]
fn key_files_parse_and_bad_lines_name_their_line() {
    let c = parse_credential(&format!("# mine\nalice {}\n", hex(OP_KEY))).unwrap();
    assert_eq!(c, Credential::operator("alice", key(OP_KEY)));
    assert_eq!(parse_credential("# nothing\n"), Err(KeyError::Empty));
    for (text, line) in [
        ("alice admin zz", 1),
        ("\nalice root 00112233445566778899aabbccddeeff", 2),
        ("alice admin 0011", 1),
        ("al/ice admin 00112233445566778899aabbccddeeff", 1),
        (
            "a admin 00112233445566778899aabbccddeeff\na admin 00112233445566778899aabbccddeeff",
            2,
        ),
    ] {
        assert!(
            matches!(parse_operators(text), Err(KeyError::Syntax { line: l, .. }) if l == line),
            "{text:?}: {:?}",
            parse_operators(text)
        );
    }
    assert_eq!(unhex("0aFf"), Some(vec![0x0a, 0xff]));
    assert_eq!(unhex("0"), None);
}

// ---- secure channel ----

/// A connected pair after a real handshake: (client channel, server channel).
fn pair() -> (Channel, Channel) {
    let ((_, c), (_, s)) = run(SECRET, SECRET).unwrap();
    (c, s)
}

fn sealed(ch: &mut Channel, body: TestBody, id: u64) -> Vec<u8> {
    let mut f = encode_frame(&Envelope::message(id, body)).unwrap();
    ch.sealer.seal_frame(&mut f).unwrap();
    f
}

fn reader(ch: Channel) -> SecureDecoder {
    SecureDecoder::new(FrameDecoder::new(HANDSHAKE_MAX_FRAME), ch.opener, MAX_FRAME)
}

#[test]
fn sealed_frames_open_in_order_and_hide_their_content() {
    let (mut c, s) = pair();
    let mut rd = reader(s);
    let secret_text = "the quick brown fox";
    let f1 = sealed(&mut c, TestBody::Text(secret_text.into()), 1);
    let f2 = sealed(&mut c, TestBody::Unit, 2);
    assert!(!f1
        .windows(secret_text.len())
        .any(|w| w == secret_text.as_bytes()));
    let mut stream = f1.clone();
    stream.extend_from_slice(&f2);
    // Fed byte by byte: reassembly is unchanged by the seal.
    for b in &stream {
        rd.push(std::slice::from_ref(b));
    }
    let e1: Envelope<TestBody> = rd.next_envelope().unwrap().unwrap();
    let e2: Envelope<TestBody> = rd.next_envelope().unwrap().unwrap();
    assert_eq!(e1.body, TestBody::Text(secret_text.into()));
    assert_eq!(e2.id, 2);
    assert!(rd.next_envelope::<TestBody>().unwrap().is_none());
}

#[test]
fn a_tampered_frame_fails_and_so_does_everything_after_it() {
    let (mut c, s) = pair();
    let mut f1 = sealed(&mut c, TestBody::Text("delete".into()), 1);
    let f2 = sealed(&mut c, TestBody::Unit, 2);
    for at in [LEN_PREFIX, f1.len() / 2, f1.len() - 1] {
        let (_, s2) = pair();
        let mut rd = reader(s2);
        let mut bad = f1.clone();
        if let Some(b) = bad.get_mut(at) {
            *b ^= 1;
        }
        rd.push(&bad);
        assert!(matches!(
            rd.next_envelope::<TestBody>(),
            Err(WireError::Unauthentic)
        ));
    }
    let mut rd = reader(s);
    if let Some(b) = f1.get_mut(LEN_PREFIX + 1) {
        *b ^= 0x80;
    }
    rd.push(&f1);
    rd.push(&f2);
    assert!(rd.next_envelope::<TestBody>().is_err());
    // The good frame after it is not processed either.
    assert!(rd.next_envelope::<TestBody>().is_err());
}

#[test]
fn a_replayed_frame_fails() {
    let (mut c, s) = pair();
    let mut rd = reader(s);
    let f = sealed(&mut c, TestBody::Text("delete x".into()), 1);
    rd.push(&f);
    rd.next_envelope::<TestBody>().unwrap().unwrap();
    rd.push(&f);
    assert!(matches!(
        rd.next_envelope::<TestBody>(),
        Err(WireError::Unauthentic)
    ));
}

#[test]
fn reordered_frames_fail() {
    let (mut c, s) = pair();
    let mut rd = reader(s);
    let f1 = sealed(&mut c, TestBody::Unit, 1);
    let f2 = sealed(&mut c, TestBody::Unit, 2);
    rd.push(&f2);
    rd.push(&f1);
    assert!(matches!(
        rd.next_envelope::<TestBody>(),
        Err(WireError::Unauthentic)
    ));
}

#[test]
fn a_frame_from_another_connection_or_injected_plaintext_fails() {
    let (mut c1, _) = pair();
    let (_, s2) = pair();
    let mut rd = reader(s2);
    // Same key, same counter, another handshake: other ephemeral keys, other channel.
    rd.push(&sealed(&mut c1, TestBody::Unit, 1));
    assert!(matches!(
        rd.next_envelope::<TestBody>(),
        Err(WireError::Unauthentic)
    ));
    let (_, s3) = pair();
    let mut rd = reader(s3);
    rd.push(&encode_frame(&Envelope::message(1, TestBody::Unit)).unwrap());
    assert!(rd.next_envelope::<TestBody>().is_err());
}

#[test]
fn a_reflected_frame_fails() {
    // A frame the client sealed, sent back to the client: the directions have
    // different keys.
    let (mut c, _s) = pair();
    let f = sealed(&mut c, TestBody::Unit, 1);
    let mut back = SecureDecoder::new(FrameDecoder::new(HANDSHAKE_MAX_FRAME), c.opener, MAX_FRAME);
    back.push(&f);
    assert!(matches!(
        back.next_envelope::<TestBody>(),
        Err(WireError::Unauthentic)
    ));
}

#[test]
fn sealed_length_is_checked_before_buffering() {
    let (_, s) = pair();
    let mut rd = SecureDecoder::new(FrameDecoder::new(HANDSHAKE_MAX_FRAME), s.opener, 1024);
    rd.push(&u32::MAX.to_be_bytes());
    assert!(matches!(
        rd.next_envelope::<TestBody>(),
        Err(WireError::FrameTooLarge { .. })
    ));
    assert!(rd.buffered() <= LEN_PREFIX);
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn random_bytes_never_open(buf in proptest::collection::vec(any::<u8>(), 0..512)) {
        let (_, s) = pair();
        let mut rd = reader(s);
        rd.push(&buf);
        prop_assert!(!matches!(rd.next_envelope::<TestBody>(), Ok(Some(_))));
    }
}

/// The codec's cost per MB with and without the seal, in the same run: 256 envelopes of
/// a 1 MiB chunk each (an SDFS bulk frame), encoded, (sealed, opened,) decoded. Run with
/// `cargo test -p dml-wire --release -- --ignored --nocapture channel_throughput`.
#[test]
#[ignore]
fn channel_throughput() {
    use std::time::Instant;
    const FRAMES: usize = 256;
    let chunk = TestBody::Bin(vec![0x5a; 1024 * 1024]);
    let mb = (FRAMES * 1024 * 1024) as f64 / 1e6;
    for round in 0..3 {
        let t = Instant::now();
        let mut dec = FrameDecoder::new(MAX_FRAME);
        for i in 0..FRAMES {
            dec.push(&encode_frame(&Envelope::message(i as u64, chunk.clone())).unwrap());
            let env: Envelope<TestBody> = dec.next_envelope().unwrap().unwrap();
            assert_eq!(env.id, i as u64);
        }
        let plain = mb / t.elapsed().as_secs_f64();
        let (mut c, s) = pair();
        let mut rd = reader(s);
        let t = Instant::now();
        for i in 0..FRAMES {
            rd.push(&sealed(&mut c, chunk.clone(), i as u64));
            let env: Envelope<TestBody> = rd.next_envelope().unwrap().unwrap();
            assert_eq!(env.id, i as u64);
        }
        let secure = mb / t.elapsed().as_secs_f64();
        let t = Instant::now();
        let mut f = vec![0x5a; 1024 * 1024 + LEN_PREFIX];
        for _ in 0..FRAMES {
            f.truncate(1024 * 1024 + LEN_PREFIX);
            c.sealer.seal_frame(&mut f).unwrap();
        }
        let seal_only = mb / t.elapsed().as_secs_f64();
        println!(
            "round {round}: plain codec {plain:.0} MB/s, sealed codec {secure:.0} MB/s, \
             AES-256-GCM seal alone {seal_only:.0} MB/s (one core)"
        );
    }
}
