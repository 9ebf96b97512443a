//! [`AnyTransport`]: one Transport value that serves every scheme compiled in, chosen per
//! endpoint, so binaries pick their backend from configuration.

use bytes::Bytes;

use crate::codec::FrameWrite;
use crate::endpoint::{Endpoint, Scheme};
use crate::error::TransportError;
use crate::link::{FrameBuf, Link, LinkInfo, LinkRx, LinkTx, Listener, Transport};
#[cfg(feature = "ibverbs")]
use crate::rdma::ibverbs::{IbOpener, IbQp};
use crate::rdma::sim::{SimOpener, SimQp};
use crate::rdma::transport::{RdmaLinkBuf, RdmaLinkRx, RdmaLinkTx};
use crate::rdma::{RdmaConfig, RdmaLink, RdmaListener, RdmaTransport};
use crate::tcp::{TcpBuf, TcpLink, TcpListener, TcpRx, TcpTransport, TcpTx};

/// Dispatches on the endpoint's scheme.
#[derive(Debug, Clone)]
pub struct AnyTransport {
    /// The TCP backend (also the bootstrap and fallback of the RDMA backends).
    pub tcp: TcpTransport,
    /// RDMA over the rdma-sim simulated NIC (`rdma-sim://`).
    pub sim: RdmaTransport<SimOpener>,
    /// RDMA over real devices (`rdma://`).
    #[cfg(feature = "ibverbs")]
    pub rdma: RdmaTransport<IbOpener>,
}

impl Default for AnyTransport {
    fn default() -> Self {
        Self::new(TcpTransport::default(), RdmaConfig::default())
    }
}

impl AnyTransport {
    /// Every backend, with the given TCP and RDMA settings.
    pub fn new(tcp: TcpTransport, rdma: RdmaConfig) -> Self {
        Self {
            #[cfg(feature = "ibverbs")]
            rdma: RdmaTransport::new(IbOpener, tcp.clone(), rdma.clone()),
            sim: RdmaTransport::new(SimOpener::default(), tcp.clone(), rdma),
            tcp,
        }
    }
}

impl AnyTransport {
    #[cfg(not(feature = "ibverbs"))]
    fn unsupported(scheme: Scheme) -> TransportError {
        TransportError::Unsupported {
            scheme: scheme.as_str(),
            reason: "this build was made without the `ibverbs` feature".into(),
        }
    }
}

/// A link of any backend.
#[derive(Debug)]
pub enum AnyLink {
    /// TCP.
    Tcp(TcpLink),
    /// rdma-sim (or TCP after a fallback).
    Sim(RdmaLink<SimQp>),
    /// Real RDMA (or TCP after a fallback).
    #[cfg(feature = "ibverbs")]
    Rdma(RdmaLink<IbQp>),
}

/// Sending half of [`AnyLink`].
#[derive(Debug)]
pub enum AnyTx {
    /// TCP.
    Tcp(TcpTx),
    /// rdma-sim.
    Sim(RdmaLinkTx<SimQp>),
    /// Real RDMA.
    #[cfg(feature = "ibverbs")]
    Rdma(RdmaLinkTx<IbQp>),
}

/// Receiving half of [`AnyLink`].
#[derive(Debug)]
pub enum AnyRx {
    /// TCP.
    Tcp(TcpRx),
    /// rdma-sim.
    Sim(RdmaLinkRx<SimQp>),
    /// Real RDMA.
    #[cfg(feature = "ibverbs")]
    Rdma(RdmaLinkRx<IbQp>),
}

/// Send buffer of [`AnyLink`].
#[derive(Debug)]
pub enum AnyBuf {
    /// TCP.
    Tcp(TcpBuf),
    /// rdma-sim.
    Sim(RdmaLinkBuf),
    /// Real RDMA.
    #[cfg(feature = "ibverbs")]
    Rdma(RdmaLinkBuf),
}

/// Listener of [`AnyTransport`].
#[derive(Debug)]
pub enum AnyListener {
    /// TCP.
    Tcp(TcpListener),
    /// rdma-sim.
    Sim(RdmaListener<SimQp>),
    /// Real RDMA.
    #[cfg(feature = "ibverbs")]
    Rdma(RdmaListener<IbQp>),
}

impl FrameWrite for AnyBuf {
    fn put_slice(&mut self, src: &[u8]) {
        match self {
            AnyBuf::Tcp(b) => b.put_slice(src),
            AnyBuf::Sim(b) => b.put_slice(src),
            #[cfg(feature = "ibverbs")]
            AnyBuf::Rdma(b) => b.put_slice(src),
        }
    }
    fn put_bytes(&mut self, src: Bytes) {
        match self {
            AnyBuf::Tcp(b) => b.put_bytes(src),
            AnyBuf::Sim(b) => b.put_bytes(src),
            #[cfg(feature = "ibverbs")]
            AnyBuf::Rdma(b) => b.put_bytes(src),
        }
    }
}

impl FrameBuf for AnyBuf {}

impl LinkTx for AnyTx {
    type Buf = AnyBuf;

    async fn reserve(&self, frame_len: usize) -> Result<AnyBuf, TransportError> {
        match self {
            AnyTx::Tcp(t) => t.reserve(frame_len).await.map(AnyBuf::Tcp),
            AnyTx::Sim(t) => t.reserve(frame_len).await.map(AnyBuf::Sim),
            #[cfg(feature = "ibverbs")]
            AnyTx::Rdma(t) => t.reserve(frame_len).await.map(AnyBuf::Rdma),
        }
    }

    fn send(&self, buf: AnyBuf) -> Result<(), TransportError> {
        match (self, buf) {
            (AnyTx::Tcp(t), AnyBuf::Tcp(b)) => t.send(b),
            (AnyTx::Sim(t), AnyBuf::Sim(b)) => t.send(b),
            #[cfg(feature = "ibverbs")]
            (AnyTx::Rdma(t), AnyBuf::Rdma(b)) => t.send(b),
            _ => Err(TransportError::Closed),
        }
    }

    async fn close(&self) {
        match self {
            AnyTx::Tcp(t) => t.close().await,
            AnyTx::Sim(t) => t.close().await,
            #[cfg(feature = "ibverbs")]
            AnyTx::Rdma(t) => t.close().await,
        }
    }

    fn abort(&self, reason: TransportError) {
        match self {
            AnyTx::Tcp(t) => t.abort(reason),
            AnyTx::Sim(t) => t.abort(reason),
            #[cfg(feature = "ibverbs")]
            AnyTx::Rdma(t) => t.abort(reason),
        }
    }
}

impl LinkRx for AnyRx {
    async fn recv(&mut self) -> Result<Option<Bytes>, TransportError> {
        match self {
            AnyRx::Tcp(r) => r.recv().await,
            AnyRx::Sim(r) => r.recv().await,
            #[cfg(feature = "ibverbs")]
            AnyRx::Rdma(r) => r.recv().await,
        }
    }
}

impl Link for AnyLink {
    type Tx = AnyTx;
    type Rx = AnyRx;

    fn info(&self) -> &LinkInfo {
        match self {
            AnyLink::Tcp(l) => l.info(),
            AnyLink::Sim(l) => l.info(),
            #[cfg(feature = "ibverbs")]
            AnyLink::Rdma(l) => l.info(),
        }
    }

    fn split(self) -> (AnyTx, AnyRx, LinkInfo) {
        match self {
            AnyLink::Tcp(l) => {
                let (t, r, i) = l.split();
                (AnyTx::Tcp(t), AnyRx::Tcp(r), i)
            }
            AnyLink::Sim(l) => {
                let (t, r, i) = l.split();
                (AnyTx::Sim(t), AnyRx::Sim(r), i)
            }
            #[cfg(feature = "ibverbs")]
            AnyLink::Rdma(l) => {
                let (t, r, i) = l.split();
                (AnyTx::Rdma(t), AnyRx::Rdma(r), i)
            }
        }
    }
}

impl Listener for AnyListener {
    type Link = AnyLink;

    async fn accept(&mut self) -> Result<AnyLink, TransportError> {
        match self {
            AnyListener::Tcp(l) => l.accept().await.map(AnyLink::Tcp),
            AnyListener::Sim(l) => l.accept().await.map(AnyLink::Sim),
            #[cfg(feature = "ibverbs")]
            AnyListener::Rdma(l) => l.accept().await.map(AnyLink::Rdma),
        }
    }

    fn local_endpoint(&self) -> Endpoint {
        match self {
            AnyListener::Tcp(l) => l.local_endpoint(),
            AnyListener::Sim(l) => l.local_endpoint(),
            #[cfg(feature = "ibverbs")]
            AnyListener::Rdma(l) => l.local_endpoint(),
        }
    }
}

impl Transport for AnyTransport {
    type Link = AnyLink;
    type Listener = AnyListener;

    async fn connect(&self, endpoint: &Endpoint) -> Result<AnyLink, TransportError> {
        match endpoint.scheme {
            Scheme::Tcp => self.tcp.connect(endpoint).await.map(AnyLink::Tcp),
            Scheme::RdmaSim => self.sim.connect(endpoint).await.map(AnyLink::Sim),
            #[cfg(feature = "ibverbs")]
            Scheme::Rdma => self.rdma.connect(endpoint).await.map(AnyLink::Rdma),
            #[cfg(not(feature = "ibverbs"))]
            other => Err(Self::unsupported(other)),
        }
    }

    async fn bind(&self, endpoint: &Endpoint) -> Result<AnyListener, TransportError> {
        match endpoint.scheme {
            Scheme::Tcp => self.tcp.bind(endpoint).await.map(AnyListener::Tcp),
            Scheme::RdmaSim => self.sim.bind(endpoint).await.map(AnyListener::Sim),
            #[cfg(feature = "ibverbs")]
            Scheme::Rdma => self.rdma.bind(endpoint).await.map(AnyListener::Rdma),
            #[cfg(not(feature = "ibverbs"))]
            other => Err(Self::unsupported(other)),
        }
    }
}
