//! [`Client`]: the connection of a one-shot tool (`dml ctl`), which does not listen:
//! it dials a node's control lane, proves an operator credential (or, where the node
//! allows it, the cluster key), and reads each reply from the same sealed connection.

use std::marker::PhantomData;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::net::wire::{
    self, Channel, Credential, Envelope, FrameDecoder, Sealer, SecureDecoder, HANDSHAKE_MAX_FRAME,
    MAX_FRAME,
};
use crate::types::NodeAddr;

use super::conn::{client_handshake, READ_CHUNK};
use super::{Lane, Role, TransportError};

/// A connection for one-shot tools (`dml ctl`): it does not listen, sends requests and
/// reads the replies from the same connection.
#[derive(Debug)]
pub struct Client<B> {
    stream: TcpStream,
    dec: SecureDecoder,
    sealer: Sealer,
    peer: NodeAddr,
    next_id: u64,
    /// Set when a request was cut off mid-way: the stream may hold half a frame.
    broken: bool,
    _body: PhantomData<fn() -> B>,
}

impl<B: Serialize + DeserializeOwned> Client<B> {
    /// Connects to a node's control lane and authenticates, all within `timeout`.
    pub async fn connect(
        addr: &str,
        cred: &Credential,
        timeout: Duration,
    ) -> Result<Self, TransportError> {
        Self::connect_lane(addr, Lane::Control, cred, timeout).await
    }

    /// Connects on a chosen lane (bulk for large uploads or downloads).
    pub async fn connect_lane(
        addr: &str,
        lane: Lane,
        cred: &Credential,
        timeout: Duration,
    ) -> Result<Self, TransportError> {
        Self::connect_as(addr, Role::Tool, None, lane, cred, timeout).await
    }

    /// Connects in a chosen role. A `Role::Node` client must prove the cluster key and
    /// announces `label` as its address (tests that speak for a node use it); a tool's
    /// label is only informative.
    pub async fn connect_as(
        addr: &str,
        role: Role,
        label: Option<&str>,
        lane: Lane,
        cred: &Credential,
        timeout: Duration,
    ) -> Result<Self, TransportError> {
        let work = async {
            let mut stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let label = match (label, stream.local_addr()) {
                (Some(l), _) => l.to_string(),
                (None, Ok(a)) => format!("tool@{a}"),
                (None, Err(_)) => "tool".to_string(),
            };
            let mut dec = FrameDecoder::new(HANDSHAKE_MAX_FRAME);
            let (_, channel) =
                client_handshake(&mut stream, &mut dec, &NodeAddr(label), role, lane, cred).await?;
            Ok::<_, TransportError>((stream, dec, channel))
        };
        let (stream, dec, Channel { sealer, opener }) = tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| TransportError::ConnectTimeout {
                addr: addr.to_string(),
            })??;
        Ok(Client {
            stream,
            dec: SecureDecoder::new(dec, opener, MAX_FRAME),
            sealer,
            peer: NodeAddr(addr.to_string()),
            next_id: 0,
            broken: false,
            _body: PhantomData,
        })
    }

    /// The node this client talks to.
    pub fn peer(&self) -> &NodeAddr {
        &self.peer
    }

    /// Writes one message and does not wait for anything: for a client that speaks for a
    /// node (`Role::Node`), whose protocol answers go to the node address it announced,
    /// not back on this connection (tests that play a hostile member use it).
    pub async fn send(&mut self, body: B) -> Result<(), TransportError> {
        if self.broken {
            return Err(TransportError::Closed);
        }
        self.next_id += 1;
        let mut frame = wire::encode_frame(&Envelope::request(self.next_id, body))?;
        self.sealer.seal_frame(&mut frame)?;
        self.broken = true;
        self.stream.write_all(&frame).await?;
        self.broken = false;
        Ok(())
    }

    /// Sends a request and waits for its reply, at most `timeout`. After a timeout the
    /// connection is unusable (a frame may be half written); connect again.
    pub async fn request(&mut self, body: B, timeout: Duration) -> Result<B, TransportError> {
        self.within(timeout, |c| async move {
            let id = c.write_request(body).await?;
            c.read_reply(id).await
        })
        .await
    }

    /// Writes a request (at most `timeout`) and returns its id without waiting for the
    /// reply, which [`Client::reply`] collects: a tool overlaps its own work (writing
    /// the last bytes it got to disk) with the node's round trip.
    pub async fn start_request(
        &mut self,
        body: B,
        timeout: Duration,
    ) -> Result<u64, TransportError> {
        self.within(timeout, |c| c.write_request(body)).await
    }

    /// Waits for the reply to request `id` (at most `timeout`); anything else that comes
    /// first (a reply nobody waits for any more, an unsolicited message) is skipped.
    pub async fn reply(&mut self, id: u64, timeout: Duration) -> Result<B, TransportError> {
        self.within(timeout, |c| c.read_reply(id)).await
    }

    /// Runs `work` on this connection, at most `timeout`.
    async fn within<'a, T, F, Fut>(
        &'a mut self,
        timeout: Duration,
        work: F,
    ) -> Result<T, TransportError>
    where
        F: FnOnce(&'a mut Self) -> Fut,
        Fut: std::future::Future<Output = Result<T, TransportError>> + 'a,
    {
        let peer = self.peer.clone();
        tokio::time::timeout(timeout, work(self))
            .await
            .map_err(|_| TransportError::Timeout {
                peer,
                after: timeout,
            })?
    }

    async fn write_request(&mut self, body: B) -> Result<u64, TransportError> {
        if self.broken {
            return Err(TransportError::Closed);
        }
        self.next_id += 1;
        let id = self.next_id;
        let mut frame = wire::encode_frame(&Envelope::request(id, body))?;
        self.sealer.seal_frame(&mut frame)?;
        // Left set if the write is cut off (timeout) or fails: the stream may hold half
        // a frame.
        self.broken = true;
        self.stream.write_all(&frame).await?;
        self.broken = false;
        Ok(id)
    }

    async fn read_reply(&mut self, id: u64) -> Result<B, TransportError> {
        if self.broken {
            return Err(TransportError::Closed);
        }
        // A protocol error, a timeout or a closed stream leaves it in an unknown state.
        self.broken = true;
        loop {
            while let Some(env) = self.dec.next_envelope::<B>()? {
                if env.reply_to == Some(id) {
                    self.broken = false;
                    return Ok(env.body);
                }
                // Anything else (an unsolicited message) is not for a tool.
            }
            let n = self.stream.read(self.dec.read_buf(READ_CHUNK)).await?;
            if n == 0 {
                return Err(TransportError::PeerClosed);
            }
            self.dec.filled(n);
        }
    }
}
