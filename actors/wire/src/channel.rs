//! The secure channel every connection carries after its handshake: each frame's payload
//! is sealed with AES-256-GCM under a key of its own direction, with a 64-bit frame
//! counter as nonce. The counter is not sent: both ends count, so a frame that was
//! tampered with, replayed, reordered, dropped or injected, or that was sealed for the
//! other direction (reflected), fails to open, and the connection is closed.
//!
//! Sealed frame: `u32` big-endian length of what follows, then the ciphertext of the
//! plaintext payload and its 16-byte tag. The length prefix is the associated data.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use serde::de::DeserializeOwned;

use crate::{decode_payload, Envelope, FrameDecoder, WireError, LEN_PREFIX};

/// Bytes the seal adds to a payload.
pub const TAG_LEN: usize = 16;

/// Length of a direction key.
pub const CHANNEL_KEY_LEN: usize = 32;

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; NONCE_LEN];
    if let Some(tail) = n.get_mut(NONCE_LEN - 8..) {
        tail.copy_from_slice(&counter.to_be_bytes());
    }
    Nonce::assume_unique_for_key(n)
}

fn aead_key(bytes: &[u8; CHANNEL_KEY_LEN]) -> Result<LessSafeKey, WireError> {
    UnboundKey::new(&AES_256_GCM, bytes)
        .map(LessSafeKey::new)
        .map_err(|_| WireError::Unauthentic)
}

/// Seals the frames of one direction. Each frame gets the next counter value.
pub struct Sealer {
    key: LessSafeKey,
    next: u64,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sealer(next {})", self.next)
    }
}

impl Sealer {
    /// A sealer whose first frame has counter 0.
    pub fn new(key: &[u8; CHANNEL_KEY_LEN]) -> Result<Self, WireError> {
        Ok(Sealer {
            key: aead_key(key)?,
            next: 0,
        })
    }

    /// Seals a plaintext frame (length prefix and payload, as [`crate::encode_frame`]
    /// makes it) in place: the payload is encrypted, the tag appended, the prefix
    /// rewritten.
    pub fn seal_frame(&mut self, frame: &mut Vec<u8>) -> Result<(), WireError> {
        let counter = self.next;
        self.next = counter.checked_add(1).ok_or(WireError::CounterExhausted)?;
        let sealed_len = frame
            .len()
            .checked_sub(LEN_PREFIX)
            .ok_or(WireError::EmptyFrame)?
            .saturating_add(TAG_LEN);
        let too_large = WireError::FrameTooLarge {
            len: sealed_len,
            max: u32::MAX as usize,
        };
        let prefix = u32::try_from(sealed_len)
            .map_err(|_| too_large)?
            .to_be_bytes();
        let tag = {
            let (head, payload) = frame.split_at_mut(LEN_PREFIX);
            head.copy_from_slice(&prefix);
            self.key
                .seal_in_place_separate_tag(nonce(counter), Aad::from(prefix), payload)
                .map_err(|_| WireError::Unauthentic)?
        };
        frame.extend_from_slice(tag.as_ref());
        Ok(())
    }
}

/// Opens the frames of one direction, in order.
pub struct Opener {
    key: LessSafeKey,
    next: u64,
}

impl std::fmt::Debug for Opener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Opener(next {})", self.next)
    }
}

impl Opener {
    /// An opener that expects counter 0 first.
    pub fn new(key: &[u8; CHANNEL_KEY_LEN]) -> Result<Self, WireError> {
        Ok(Opener {
            key: aead_key(key)?,
            next: 0,
        })
    }

    /// Opens one sealed payload (without its length prefix) in place and returns the
    /// plaintext. Any failure is final: the expected counter does not move, so nothing
    /// after a bad frame can open either.
    pub fn open<'a>(&mut self, sealed: &'a mut [u8]) -> Result<&'a [u8], WireError> {
        let len = u32::try_from(sealed.len()).map_err(|_| WireError::Unauthentic)?;
        if sealed.len() <= TAG_LEN {
            return Err(WireError::Unauthentic);
        }
        let plain = self
            .key
            .open_in_place(nonce(self.next), Aad::from(len.to_be_bytes()), sealed)
            .map_err(|_| WireError::Unauthentic)?;
        self.next = self
            .next
            .checked_add(1)
            .ok_or(WireError::CounterExhausted)?;
        Ok(plain)
    }
}

/// Both directions of an established connection.
#[derive(Debug)]
pub struct Channel {
    /// Seals what this side sends.
    pub sealer: Sealer,
    /// Opens what this side receives.
    pub opener: Opener,
}

/// Reassembles sealed frames from a byte stream and opens them in order. Lengths are
/// judged before anything is buffered for them, as in [`FrameDecoder`].
#[derive(Debug)]
pub struct SecureDecoder {
    frames: FrameDecoder,
    opener: Opener,
    /// Set after a failure: nothing more is decoded from this stream.
    failed: bool,
}

impl SecureDecoder {
    /// Continues `frames` (which may hold bytes read past the handshake) with `opener`,
    /// accepting plaintext payloads of at most `max` bytes.
    pub fn new(mut frames: FrameDecoder, opener: Opener, max: usize) -> Self {
        frames.set_max(max.saturating_add(TAG_LEN));
        SecureDecoder {
            frames,
            opener,
            failed: false,
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.frames.push(data);
    }

    /// Room for the next `len` received bytes, as [`FrameDecoder::read_buf`].
    pub fn read_buf(&mut self, len: usize) -> &mut [u8] {
        self.frames.read_buf(len)
    }

    /// Takes `n` bytes written into the last [`SecureDecoder::read_buf`] as received.
    pub fn filled(&mut self, n: usize) {
        self.frames.filled(n);
    }

    /// Bytes buffered and not yet returned.
    pub fn buffered(&self) -> usize {
        self.frames.buffered()
    }

    /// The next frame, opened in place in the receive buffer: `Ok(None)` if more bytes
    /// are needed. After a failure nothing more is decoded from this stream.
    fn next_opened(&mut self) -> Result<Option<&[u8]>, WireError> {
        if self.failed {
            return Err(WireError::Unauthentic);
        }
        self.failed = true;
        let Some(sealed) = self.frames.next_payload_mut()? else {
            self.failed = false;
            return Ok(None);
        };
        let plain = self.opener.open(sealed)?;
        if plain.is_empty() {
            return Err(WireError::EmptyFrame);
        }
        self.failed = false;
        Ok(Some(plain))
    }

    /// The next opened payload, `Ok(None)` if more bytes are needed.
    pub fn next_plain(&mut self) -> Result<Option<Vec<u8>>, WireError> {
        Ok(self.next_opened()?.map(<[u8]>::to_vec))
    }

    /// The next opened and decoded envelope, `Ok(None)` if more bytes are needed.
    pub fn next_envelope<B: DeserializeOwned>(&mut self) -> Result<Option<Envelope<B>>, WireError> {
        match self.next_opened()? {
            None => Ok(None),
            Some(plain) => decode_payload(plain).map(Some),
        }
    }
}
