//! Fuzz target: the frame decoder, the envelope decoder, the handshake decoder, the
//! secure channel's decoder (sealed frames) and the key-file parsers must return an error
//! on any input, never panic, overflow the stack or allocate what a length prefix merely
//! announces. Input that is sealed properly first also exercises the decoding behind the
//! seal.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::{Deserialize, Serialize};

use dml_wire::types::NodeAddr;
use dml_wire::{
    encode_frame, Authority, Ephemeral, FrameDecoder, Key, Keyring, Lane, Opener, Role, Sealer,
    SecureDecoder, ServerHandshake, SystemRandom, LEN_PREFIX, MAX_FRAME,
};

const KEY: [u8; 32] = [7; 32];

/// A secure decoder of the fixed test key, fed `data` in two pieces; every envelope it
/// yields must encode again.
fn drain_sealed(data: &[u8], split: usize) {
    let Ok(opener) = Opener::new(&KEY) else {
        return;
    };
    let mut dec = SecureDecoder::new(FrameDecoder::new(MAX_FRAME), opener, MAX_FRAME);
    let (a, b) = data.split_at(split.min(data.len()));
    dec.push(a);
    let mut fed_rest = false;
    loop {
        match dec.next_envelope::<Body>() {
            Ok(Some(env)) => {
                let _ = encode_frame(&env);
            }
            Ok(None) if !fed_rest => {
                // The rest as a socket read straight into the buffer delivers it.
                dec.read_buf(b.len()).copy_from_slice(b);
                dec.filled(b.len());
                fed_rest = true;
            }
            Ok(None) | Err(_) => break,
        }
    }
}

/// A body with the shapes the cluster's messages use: strings, bytes, nesting, options.
#[derive(Debug, Serialize, Deserialize)]
enum Body {
    Unit,
    Ping { seq: u64, from: NodeAddr },
    Text(String),
    Bytes(Vec<u8>),
    List(Vec<Body>),
    Maybe(Option<Box<Body>>),
    Lane(Lane, Role),
}

fuzz_target!(|data: &[u8]| {
    // The input as a stream, fed in two pieces to exercise reassembly.
    let split = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    let (a, b) = data.split_at(split);
    let mut dec = FrameDecoder::new(MAX_FRAME);
    dec.push(a);
    let mut fed_rest = false;
    loop {
        match dec.next_envelope::<Body>() {
            Ok(Some(env)) => {
                // Whatever decodes must encode again.
                let _ = dml_wire::encode_frame(&env);
            }
            Ok(None) if !fed_rest => {
                dec.push(b);
                fed_rest = true;
            }
            Ok(None) | Err(_) => break,
        }
    }
    // The input as one handshake payload, as an unauthenticated peer would send it.
    let _ = dml_wire::decode_payload::<Body>(data);
    if let (Ok(key), Ok(eph)) = (
        Key::new(b"fuzzing cluster secret".to_vec()),
        Ephemeral::generate(&SystemRandom::new()),
    ) {
        let auth = Authority::nodes_only(Keyring::single(key));
        let _ = ServerHandshake::on_hello(&auth, &NodeAddr("a:1".into()), [0; 32], eph, data);
    }
    // The input as sealed traffic an attacker wrote without the key: never opens.
    drain_sealed(data, split);
    // The input as a plaintext payload sealed properly: the decoding behind the seal.
    if let Ok(mut sealer) = Sealer::new(&KEY) {
        let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
        let mut frame = len.to_be_bytes().to_vec();
        frame.extend_from_slice(data);
        if frame.len() > LEN_PREFIX && sealer.seal_frame(&mut frame).is_ok() {
            drain_sealed(&frame, split);
        }
    }
    // The input as an operators file and a credential file.
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = dml_wire::parse_operators(text);
        let _ = dml_wire::parse_credential(text);
    }
});
