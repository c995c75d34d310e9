//! Fuzz target: the frame decoder, the envelope decoder and the handshake decoder must
//! return an error on any input, never panic, overflow the stack or allocate what a
//! length prefix merely announces.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::{Deserialize, Serialize};

use dml_wire::types::NodeAddr;
use dml_wire::{FrameDecoder, Lane, Role, ServerHandshake, MAX_FRAME};

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
    let _ = ServerHandshake::on_hello(b"secret", &NodeAddr("a:1".into()), [0; 32], data);
});
