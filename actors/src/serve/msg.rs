//! What nodes say to each other about online inference: a batch to run and its answer.
//! Both travel on the bulk lane (a batch of encoded images or pixel tensors is megabytes
//! and must never sit in front of a ping).

use serde::{Deserialize, Serialize};

/// One input of a batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Item {
    /// An encoded image (JPEG, PNG, ...), decoded and preprocessed where it runs.
    Encoded(#[serde(with = "bin")] Vec<u8>),
    /// A preprocessed `[3, S, S]` tensor, as little-endian f32 bytes.
    Pixels(#[serde(with = "bin")] Vec<u8>),
}

impl Item {
    /// Bytes it adds to a batch message.
    pub fn size(&self) -> usize {
        match self {
            Item::Encoded(b) | Item::Pixels(b) => b.len() + 8,
        }
    }
}

/// Per-item logits (or why that item could not be run), and the batch's compute time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunOutput {
    /// `Ok(logits)` (1000 values) or the reason, in input order.
    pub items: Vec<Result<Vec<f32>, String>>,
    /// Decode + forward pass, ms, measured where it ran.
    pub compute_ms: f64,
    /// The network runs on synthetic weights: its labels mean nothing.
    pub synthetic: bool,
}

/// The online-inference protocol between nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Msg {
    /// Run `items` on `model` and answer with [`Msg::Done`] under the same id.
    Run {
        id: u64,
        model: String,
        items: Vec<Item>,
    },
    /// The answer to a [`Msg::Run`].
    Done {
        id: u64,
        out: Result<RunOutput, String>,
    },
}

/// MessagePack `bin` for byte payloads (the default is an array of integers); the
/// frame limit bounds the size.
mod bin {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        Ok(Buf::deserialize(d)?.0)
    }

    struct Buf(Vec<u8>);

    impl<'de> Deserialize<'de> for Buf {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = Buf;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("bytes")
                }
                fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Buf, E> {
                    Ok(Buf(v.to_vec()))
                }
                fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Buf, E> {
                    Ok(Buf(v))
                }
            }
            d.deserialize_bytes(V)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_travel_as_msgpack_bin() {
        let m = Msg::Run {
            id: 7,
            model: "resnet50".into(),
            items: vec![Item::Encoded(vec![0xff; 1000]), Item::Pixels(vec![1; 12])],
        };
        let bytes = rmp_serde::to_vec(&m).expect("encode");
        // An array of integers would take up to 2 bytes per 0xff.
        assert!(bytes.len() < 1100, "{}", bytes.len());
        let back: Msg = rmp_serde::from_slice(&bytes).expect("decode");
        assert_eq!(back, m);
    }
}
