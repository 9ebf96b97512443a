//! [`AnyTransport`]: one Transport value that serves every scheme compiled in, chosen per
//! endpoint, so binaries pick their backend from configuration.

use bytes::Bytes;

use crate::codec::FrameWrite;
use crate::endpoint::{Endpoint, Scheme};
use crate::error::TransportError;
use crate::link::{FrameBuf, Link, LinkInfo, LinkRx, LinkTx, Listener, Transport};
use crate::rdma::RdmaConfig;
#[cfg(feature = "ibverbs")]
use crate::rdma::ibverbs::{IbOpener, IbQp};
#[cfg(feature = "sim")]
use crate::rdma::sim::{SimOpener, SimQp};
#[cfg(any(feature = "sim", feature = "ibverbs"))]
use crate::rdma::transport::{RdmaLinkBuf, RdmaLinkRx, RdmaLinkTx};
#[cfg(any(feature = "sim", feature = "ibverbs"))]
use crate::rdma::{RdmaLink, RdmaListener, RdmaTransport};
use crate::tcp::{TcpBuf, TcpLink, TcpListener, TcpRx, TcpTransport, TcpTx};

/// Dispatches on the endpoint's scheme.
#[derive(Debug, Clone)]
pub struct AnyTransport {
    /// The TCP backend (also the bootstrap and fallback of the RDMA backends).
    pub tcp: TcpTransport,
    /// RDMA over the rdma-sim simulated NIC (`rdma-sim://`).
    #[cfg(feature = "sim")]
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
    #[cfg_attr(
        not(any(feature = "sim", feature = "ibverbs")),
        allow(unused_variables)
    )]
    pub fn new(tcp: TcpTransport, rdma: RdmaConfig) -> Self {
        Self {
            #[cfg(feature = "ibverbs")]
            rdma: RdmaTransport::new(IbOpener, tcp.clone(), rdma.clone()),
            #[cfg(feature = "sim")]
            sim: RdmaTransport::new(SimOpener::default(), tcp.clone(), rdma),
            tcp,
        }
    }
}

impl AnyTransport {
    #[cfg(not(all(feature = "ibverbs", feature = "sim")))]
    fn unsupported(scheme: Scheme) -> TransportError {
        let feature = match scheme {
            Scheme::RdmaSim => "sim",
            _ => "ibverbs",
        };
        TransportError::Unsupported {
            scheme: scheme.as_str(),
            reason: format!("this build was made without the `{feature}` feature"),
        }
    }
}

/// A link of any backend.
#[derive(Debug)]
pub enum AnyLink {
    /// TCP.
    Tcp(TcpLink),
    /// rdma-sim (or TCP after a fallback).
    #[cfg(feature = "sim")]
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
    #[cfg(feature = "sim")]
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
    #[cfg(feature = "sim")]
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
    #[cfg(feature = "sim")]
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
    #[cfg(feature = "sim")]
    Sim(RdmaListener<SimQp>),
    /// Real RDMA.
    #[cfg(feature = "ibverbs")]
    Rdma(RdmaListener<IbQp>),
}

impl FrameWrite for AnyBuf {
    fn put_slice(&mut self, src: &[u8]) {
        match self {
            AnyBuf::Tcp(b) => b.put_slice(src),
            #[cfg(feature = "sim")]
            AnyBuf::Sim(b) => b.put_slice(src),
            #[cfg(feature = "ibverbs")]
            AnyBuf::Rdma(b) => b.put_slice(src),
        }
    }
    fn put_bytes(&mut self, src: Bytes) {
        match self {
            AnyBuf::Tcp(b) => b.put_bytes(src),
            #[cfg(feature = "sim")]
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
            #[cfg(feature = "sim")]
            AnyTx::Sim(t) => t.reserve(frame_len).await.map(AnyBuf::Sim),
            #[cfg(feature = "ibverbs")]
            AnyTx::Rdma(t) => t.reserve(frame_len).await.map(AnyBuf::Rdma),
        }
    }

    fn send(&self, buf: AnyBuf) -> Result<(), TransportError> {
        match (self, buf) {
            (AnyTx::Tcp(t), AnyBuf::Tcp(b)) => t.send(b),
            #[cfg(feature = "sim")]
            (AnyTx::Sim(t), AnyBuf::Sim(b)) => t.send(b),
            #[cfg(feature = "ibverbs")]
            (AnyTx::Rdma(t), AnyBuf::Rdma(b)) => t.send(b),
            #[allow(unreachable_patterns)]
            _ => Err(TransportError::Closed),
        }
    }

    async fn close(&self) {
        match self {
            AnyTx::Tcp(t) => t.close().await,
            #[cfg(feature = "sim")]
            AnyTx::Sim(t) => t.close().await,
            #[cfg(feature = "ibverbs")]
            AnyTx::Rdma(t) => t.close().await,
        }
    }

    fn abort(&self, reason: TransportError) {
        match self {
            AnyTx::Tcp(t) => t.abort(reason),
            #[cfg(feature = "sim")]
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
            #[cfg(feature = "sim")]
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
            #[cfg(feature = "sim")]
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
            #[cfg(feature = "sim")]
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
            #[cfg(feature = "sim")]
            AnyListener::Sim(l) => l.accept().await.map(AnyLink::Sim),
            #[cfg(feature = "ibverbs")]
            AnyListener::Rdma(l) => l.accept().await.map(AnyLink::Rdma),
        }
    }

    fn local_endpoint(&self) -> Endpoint {
        match self {
            AnyListener::Tcp(l) => l.local_endpoint(),
            #[cfg(feature = "sim")]
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
            #[cfg(feature = "sim")]
            Scheme::RdmaSim => self.sim.connect(endpoint).await.map(AnyLink::Sim),
            #[cfg(feature = "ibverbs")]
            Scheme::Rdma => self.rdma.connect(endpoint).await.map(AnyLink::Rdma),
            #[cfg(not(all(feature = "ibverbs", feature = "sim")))]
            other => Err(Self::unsupported(other)),
        }
    }

    async fn bind(&self, endpoint: &Endpoint) -> Result<AnyListener, TransportError> {
        match endpoint.scheme {
            Scheme::Tcp => self.tcp.bind(endpoint).await.map(AnyListener::Tcp),
            #[cfg(feature = "sim")]
            Scheme::RdmaSim => self.sim.bind(endpoint).await.map(AnyListener::Sim),
            #[cfg(feature = "ibverbs")]
            Scheme::Rdma => self.rdma.bind(endpoint).await.map(AnyListener::Rdma),
            #[cfg(not(all(feature = "ibverbs", feature = "sim")))]
            other => Err(Self::unsupported(other)),
        }
    }
}
