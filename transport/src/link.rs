//! The backend contract. A backend moves whole frames; everything above it (request/response
//! matching by opaque, timeouts, graceful close, the remoting Client and Server) is generic.
//!
//! The send side is buffer-first so that RDMA fits as naturally as TCP: a sender asks the link for
//! a buffer of the frame's exact length ([`LinkTx::reserve`], which is also where backpressure
//! and credit waits happen), encodes the frame into it once ([`crate::codec::FrameWrite`]), and
//! hands it back ([`LinkTx::send`]). A TCP buffer is heap memory queued for a vectored write; an
//! RDMA buffer is a registered send slot. Received frames are [`Bytes`] that may borrow the
//! backend's receive memory (a registered slot is re-posted when the last `Bytes` drops).

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;

use crate::codec::FrameWrite;
use crate::counters::LinkCounters;
use crate::endpoint::Endpoint;
use crate::error::TransportError;

/// A send buffer handed out by a link, sized for one frame.
pub trait FrameBuf: FrameWrite + Send + std::fmt::Debug + 'static {}

/// Sending half of a link. Shared by every task that sends on the connection.
pub trait LinkTx: Send + Sync + std::fmt::Debug + 'static {
    /// The backend's send buffer.
    type Buf: FrameBuf;

    /// Waits until a frame of `frame_len` bytes may be queued (bounded in-flight bytes, RDMA
    /// credits, free send slots) and returns a buffer for it. Fails once the link is closed.
    fn reserve(
        &self,
        frame_len: usize,
    ) -> impl Future<Output = Result<Self::Buf, TransportError>> + Send;

    /// Queues a filled buffer. Frames leave in the order they are queued.
    fn send(&self, buf: Self::Buf) -> Result<(), TransportError>;

    /// Graceful close of the sending direction: everything queued is written, then the peer
    /// is told no more frames follow. Bounded by the caller's timeout.
    fn close(&self) -> impl Future<Output = ()> + Send;

    /// Abrupt close: queued frames are dropped and the receive half fails promptly.
    fn abort(&self, reason: TransportError);
}

/// Receiving half of a link, owned by the connection's reader task.
pub trait LinkRx: Send + std::fmt::Debug + 'static {
    /// The next complete frame (length prefix included); `Ok(None)` on a clean end of stream
    /// between frames.
    fn recv(&mut self) -> impl Future<Output = Result<Option<Bytes>, TransportError>> + Send;
}

/// Facts about an established link.
#[derive(Debug, Clone)]
pub struct LinkInfo {
    /// Backend name (`tcp`, `rdma`, `rdma-sim`).
    pub transport: &'static str,
    /// Local address.
    pub local: String,
    /// Peer address.
    pub peer: String,
    /// Why this backend carries the link (e.g. "rdma requested" or "fell back to tcp: …").
    pub reason: String,
    /// Live counters.
    pub counters: Arc<LinkCounters>,
}

/// An established, framed, bidirectional link.
pub trait Link: Send + std::fmt::Debug + 'static {
    /// Sending half.
    type Tx: LinkTx;
    /// Receiving half.
    type Rx: LinkRx;

    /// Facts about the link.
    fn info(&self) -> &LinkInfo;

    /// Splits into halves (starting any background I/O task the backend needs).
    fn split(self) -> (Self::Tx, Self::Rx, LinkInfo);
}

/// A bound listener producing links.
pub trait Listener: Send + std::fmt::Debug + 'static {
    /// Links it produces.
    type Link: Link;

    /// The next inbound link.
    fn accept(&mut self) -> impl Future<Output = Result<Self::Link, TransportError>> + Send;

    /// The endpoint actually bound (with the OS-chosen port when 0 was asked for).
    fn local_endpoint(&self) -> Endpoint;
}

/// A backend: how to dial and how to listen.
pub trait Transport: Clone + Send + Sync + std::fmt::Debug + 'static {
    /// Links of this backend.
    type Link: Link;
    /// Listeners of this backend.
    type Listener: Listener<Link = Self::Link>;

    /// Dials `endpoint`.
    fn connect(
        &self,
        endpoint: &Endpoint,
    ) -> impl Future<Output = Result<Self::Link, TransportError>> + Send;

    /// Listens on `endpoint`.
    fn bind(
        &self,
        endpoint: &Endpoint,
    ) -> impl Future<Output = Result<Self::Listener, TransportError>> + Send;
}
