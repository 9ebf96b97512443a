//! [`AnyTransport`]: one Transport value that serves every scheme compiled in, chosen per
//! endpoint, so binaries pick their backend from configuration.

use bytes::Bytes;

use crate::codec::FrameWrite;
use crate::endpoint::{Endpoint, Scheme};
use crate::error::TransportError;
use crate::link::{FrameBuf, Link, LinkInfo, LinkRx, LinkTx, Listener, Transport};
use crate::tcp::{TcpBuf, TcpLink, TcpListener, TcpRx, TcpTransport, TcpTx};

/// Dispatches on the endpoint's scheme.
#[derive(Debug, Clone, Default)]
pub struct AnyTransport {
    /// The TCP backend (also the bootstrap and fallback of the RDMA backends).
    pub tcp: TcpTransport,
}

impl AnyTransport {
    fn unsupported(scheme: Scheme) -> TransportError {
        TransportError::Unsupported {
            scheme: scheme.as_str(),
            reason: "this build has no backend for it yet".into(),
        }
    }
}

/// A link of any backend.
#[derive(Debug)]
pub enum AnyLink {
    /// TCP.
    Tcp(TcpLink),
}

/// Sending half of [`AnyLink`].
#[derive(Debug)]
pub enum AnyTx {
    /// TCP.
    Tcp(TcpTx),
}

/// Receiving half of [`AnyLink`].
#[derive(Debug)]
pub enum AnyRx {
    /// TCP.
    Tcp(TcpRx),
}

/// Send buffer of [`AnyLink`].
#[derive(Debug)]
pub enum AnyBuf {
    /// TCP.
    Tcp(TcpBuf),
}

/// Listener of [`AnyTransport`].
#[derive(Debug)]
pub enum AnyListener {
    /// TCP.
    Tcp(TcpListener),
}

impl FrameWrite for AnyBuf {
    fn put_slice(&mut self, src: &[u8]) {
        match self {
            AnyBuf::Tcp(b) => b.put_slice(src),
        }
    }
    fn put_bytes(&mut self, src: Bytes) {
        match self {
            AnyBuf::Tcp(b) => b.put_bytes(src),
        }
    }
}

impl FrameBuf for AnyBuf {}

impl LinkTx for AnyTx {
    type Buf = AnyBuf;

    async fn reserve(&self, frame_len: usize) -> Result<AnyBuf, TransportError> {
        match self {
            AnyTx::Tcp(t) => t.reserve(frame_len).await.map(AnyBuf::Tcp),
        }
    }

    fn send(&self, buf: AnyBuf) -> Result<(), TransportError> {
        match (self, buf) {
            (AnyTx::Tcp(t), AnyBuf::Tcp(b)) => t.send(b),
        }
    }

    async fn close(&self) {
        match self {
            AnyTx::Tcp(t) => t.close().await,
        }
    }

    fn abort(&self, reason: TransportError) {
        match self {
            AnyTx::Tcp(t) => t.abort(reason),
        }
    }
}

impl LinkRx for AnyRx {
    async fn recv(&mut self) -> Result<Option<Bytes>, TransportError> {
        match self {
            AnyRx::Tcp(r) => r.recv().await,
        }
    }
}

impl Link for AnyLink {
    type Tx = AnyTx;
    type Rx = AnyRx;

    fn info(&self) -> &LinkInfo {
        match self {
            AnyLink::Tcp(l) => l.info(),
        }
    }

    fn split(self) -> (AnyTx, AnyRx, LinkInfo) {
        match self {
            AnyLink::Tcp(l) => {
                let (t, r, i) = l.split();
                (AnyTx::Tcp(t), AnyRx::Tcp(r), i)
            }
        }
    }
}

impl Listener for AnyListener {
    type Link = AnyLink;

    async fn accept(&mut self) -> Result<AnyLink, TransportError> {
        match self {
            AnyListener::Tcp(l) => l.accept().await.map(AnyLink::Tcp),
        }
    }

    fn local_endpoint(&self) -> Endpoint {
        match self {
            AnyListener::Tcp(l) => l.local_endpoint(),
        }
    }
}

impl Transport for AnyTransport {
    type Link = AnyLink;
    type Listener = AnyListener;

    async fn connect(&self, endpoint: &Endpoint) -> Result<AnyLink, TransportError> {
        match endpoint.scheme {
            Scheme::Tcp => self.tcp.connect(endpoint).await.map(AnyLink::Tcp),
            other => Err(Self::unsupported(other)),
        }
    }

    async fn bind(&self, endpoint: &Endpoint) -> Result<AnyListener, TransportError> {
        match endpoint.scheme {
            Scheme::Tcp => self.tcp.bind(endpoint).await.map(AnyListener::Tcp),
            other => Err(Self::unsupported(other)),
        }
    }
}
