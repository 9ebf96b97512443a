//! [`RdmaTransport`]: RDMA links bootstrapped over TCP. The client dials the endpoint's TCP
//! port and exchanges queue-pair parameters ([`super::core::handshake`]); the TCP connection
//! then stays open to watch the peer's liveness. When either side has no device, the
//! parameters disagree or resources cannot be set up, the same socket carries the remoting
//! frames over TCP instead (unless fallback is disabled). Plain TCP remoting clients that dial
//! an RDMA listener are served over TCP too.

use crate::sync::Plain;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener as TokioListener, TcpStream};
use tokio::sync::mpsc;

use super::core::handshake::{
    HandshakeError, HelloKind, HelloMsg, MAGIC, MESSAGE_LEN, RejectReason, check_params,
};
use super::core::{Core, CoreConfig, Peer};
use super::driver::{LinkParts, PollMode, RdmaBuf, RdmaConn, RdmaRx, RdmaTx};
use super::memory::{Arena, SlotRegion};
use super::verbs::{QpConfig, QpEndpoint, RemoteAccess, Verbs, VerbsError, VerbsQp};
use crate::codec::{DEFAULT_MAX_FRAME, FrameWrite};
use crate::counters::LinkCounters;
use crate::endpoint::Endpoint;
use crate::error::TransportError;
use crate::link::{FrameBuf, Link, LinkInfo, LinkRx, LinkTx, Listener, Transport};
use crate::tcp::{TcpBuf, TcpLink, TcpRx, TcpTransport, TcpTx};

/// Opens devices of one verbs binding.
pub trait DeviceOpener: Send + Sync + std::fmt::Debug + 'static {
    /// The binding.
    type Verbs: Verbs;
    /// Scheme name for logs and link info (`rdma`, `rdma-sim`).
    fn scheme(&self) -> &'static str;
    /// Opens `device` (the first usable one if `None`). "No device" is an error, never a crash.
    fn open(&self, device: Option<&str>) -> Result<Self::Verbs, VerbsError>;
}

/// Settings of the RDMA backend.
#[derive(Debug, Clone)]
pub struct RdmaConfig {
    /// Slots, credits, signalling, keepalive.
    pub core: CoreConfig,
    /// Event mode or busy polling.
    pub mode: PollMode,
    /// Fall back to TCP when RDMA cannot be used (else the connection fails).
    pub fallback_to_tcp: bool,
    /// Bound on the whole handshake.
    pub handshake_timeout: Duration,
    /// Back the slot arena with 2 MiB hugepages (falls back to normal pages if none).
    pub hugepages: bool,
    /// Largest frame accepted.
    pub max_frame: usize,
    /// Device to use when the endpoint names none.
    pub device: Option<String>,
    /// Received frames the application may hold (taken and not dropped) before further frames
    /// are copied out, so that a long-lived body does not stall the peer.
    pub max_held: usize,
    /// Bytes of copied or reassembled frames that may wait unread; beyond that, received
    /// chunks keep their slots and the peer runs out of credit (backpressure).
    pub max_unread_bytes: usize,
}

impl Default for RdmaConfig {
    fn default() -> Self {
        Self {
            core: CoreConfig::default(),
            mode: PollMode::Event,
            fallback_to_tcp: true,
            handshake_timeout: Duration::from_secs(5),
            hugepages: false,
            max_frame: DEFAULT_MAX_FRAME,
            device: None,
            max_held: 128,
            max_unread_bytes: 32 << 20,
        }
    }
}

/// RDMA over the devices of `O`, with TCP bootstrap and fallback.
#[derive(Debug)]
pub struct RdmaTransport<O: DeviceOpener> {
    opener: Arc<O>,
    tcp: TcpTransport,
    config: Arc<RdmaConfig>,
    devices: Arc<Mutex<DeviceCache<O::Verbs>>>,
    generation: Arc<AtomicU16>,
}

/// Opened devices by name (`None`: the default device).
type DeviceCache<V> = HashMap<Option<String>, Arc<V>>;

impl<O: DeviceOpener> Clone for RdmaTransport<O> {
    fn clone(&self) -> Self {
        Self {
            opener: self.opener.clone(),
            tcp: self.tcp.clone(),
            config: self.config.clone(),
            devices: self.devices.clone(),
            generation: self.generation.clone(),
        }
    }
}

type QpOf<O> = <<O as DeviceOpener>::Verbs as Verbs>::Qp;

struct Resources<Q: VerbsQp> {
    qp: Q,
    send: Arc<SlotRegion>,
    recv: Arc<SlotRegion>,
    lkey: u32,
    registration: super::verbs::Registration,
    gid: [u8; 16],
}

impl<O: DeviceOpener> RdmaTransport<O> {
    /// A transport over `opener`'s devices; `tcp` carries bootstrap and fallback.
    pub fn new(opener: O, tcp: TcpTransport, config: RdmaConfig) -> Self {
        Self {
            opener: Arc::new(opener),
            tcp,
            config: Arc::new(config),
            devices: Arc::new(Mutex::new(HashMap::new())),
            generation: Arc::new(AtomicU16::new(std::process::id() as u16)),
        }
    }

    /// The settings.
    pub fn config(&self) -> &RdmaConfig {
        &self.config
    }

    fn device(&self, endpoint: &Endpoint) -> Result<Arc<O::Verbs>, VerbsError> {
        let name = endpoint
            .param("device")
            .map(str::to_owned)
            .or_else(|| self.config.device.clone());
        let mut devices = self.devices.lock().plain();
        if let Some(v) = devices.get(&name) {
            return Ok(v.clone());
        }
        let v = Arc::new(self.opener.open(name.as_deref())?);
        devices.insert(name, v.clone());
        Ok(v)
    }

    fn resources(&self, v: &O::Verbs) -> Result<Resources<QpOf<O>>, VerbsError> {
        let c = &self.config.core;
        let slot = c.slot_size as usize;
        let bytes = slot * (c.send_slots + c.recv_slots) as usize;
        let arena = if self.config.hugepages {
            Arena::with_hugepages(bytes).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "no hugepages; using normal pages");
                Arena::new(bytes)
            })
        } else if self.opener.scheme() == "rdma-sim" {
            // memfd-backed, so that rdma-sim can attach links to another process over shared
            // memory (direct placement) instead of its socket wire.
            Arena::shared(bytes).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "no memfd; using heap memory");
                Arena::new(bytes)
            })
        } else {
            Arena::new(bytes)
        };
        let registration = v.register(&arena, RemoteAccess::None)?;
        let send = SlotRegion::new(arena.clone(), 0, slot, c.send_slots as usize);
        let recv = SlotRegion::new(
            arena,
            slot * c.send_slots as usize,
            slot,
            c.recv_slots as usize,
        );
        let qp = v.create_qp(&QpConfig {
            send_depth: c.send_depth,
            recv_depth: c.recv_slots,
            cq_depth: c.send_depth + c.recv_slots + 16,
            max_inline: 0,
            event_channel: true,
            remote_access: RemoteAccess::None,
            ..QpConfig::default()
        })?;
        Ok(Resources {
            qp,
            send,
            recv,
            lkey: registration.lkey,
            registration,
            gid: v.gid(),
        })
    }

    fn hello(&self, kind: HelloKind, res: &Resources<QpOf<O>>, generation: u16) -> HelloMsg {
        let ep = res.qp.endpoint();
        HelloMsg {
            kind,
            gid: res.gid,
            qpn: ep.qpn,
            psn: ep.psn,
            slot_size: self.config.core.slot_size,
            recv_slots: self.config.core.recv_slots,
            max_frame: self.config.max_frame as u32,
            generation,
            reason: None,
            lid: ep.lid,
        }
    }

    fn ours(&self) -> HelloMsg {
        HelloMsg {
            slot_size: self.config.core.slot_size,
            recv_slots: self.config.core.recv_slots,
            max_frame: self.config.max_frame as u32,
            ..HelloMsg::bare(HelloKind::Hello)
        }
    }

    /// Connects the QP to the peer's, posts every receive, and wraps it all as a link that
    /// owns the bootstrap socket.
    fn establish(
        &self,
        mut res: Resources<QpOf<O>>,
        theirs: &HelloMsg,
        generation: u16,
        bootstrap: TcpStream,
        reason: String,
    ) -> Result<(RdmaConn<QpOf<O>>, LinkInfo), VerbsError> {
        res.qp.connect(&QpEndpoint {
            gid: theirs.gid,
            qpn: theirs.qpn,
            psn: theirs.psn,
            lid: theirs.lid,
        })?;
        let core = Core::new(
            self.config.core.clone(),
            Peer {
                recv_slots: theirs.recv_slots,
                slot_size: theirs.slot_size,
            },
            generation,
            0,
        );
        let info = LinkInfo {
            transport: self.opener.scheme(),
            local: bootstrap
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default(),
            peer: bootstrap
                .peer_addr()
                .map(|a| a.to_string())
                .unwrap_or_default(),
            reason,
            counters: Arc::new(LinkCounters::default()),
        };
        let conn = RdmaConn::new(
            LinkParts {
                qp: res.qp,
                send: res.send,
                recv: res.recv,
                lkey: res.lkey,
                registration: res.registration,
                core,
                mode: self.config.mode,
                max_frame: self.config.max_frame,
                max_held: self.config.max_held,
                max_unread_bytes: self.config.max_unread_bytes,
                bootstrap,
            },
            info.counters.clone(),
        );
        Ok((conn, info))
    }

    fn fallback(
        &self,
        stream: TcpStream,
        prefix: Bytes,
        why: String,
    ) -> Result<RdmaLink<QpOf<O>>, TransportError> {
        tracing::info!(reason = %why, "using tcp instead of {}", self.opener.scheme());
        Ok(RdmaLink::Tcp(self.tcp.link_from_stream_with_prefix(
            stream,
            prefix,
            format!("{} endpoint fell back to tcp: {why}", self.opener.scheme()),
        )?))
    }

    async fn client_handshake(
        &self,
        endpoint: &Endpoint,
        mut stream: TcpStream,
    ) -> Result<RdmaLink<QpOf<O>>, TransportError> {
        let fail = |e: String| TransportError::Connect {
            endpoint: endpoint.to_string(),
            reason: e,
        };
        let setup = self
            .device(endpoint)
            .and_then(|v| self.resources(&v).map(|r| (v, r)));
        let (_device, res) = match setup {
            Ok(ok) => ok,
            Err(e) if self.config.fallback_to_tcp => {
                stream
                    .write_all(&HelloMsg::bare(HelloKind::TcpOnly).encode())
                    .await?;
                return self.fallback(
                    stream,
                    Bytes::new(),
                    format!("no usable RDMA device here ({e})"),
                );
            }
            Err(e) => return Err(fail(format!("no usable RDMA device: {e}"))),
        };
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        let hello = self.hello(HelloKind::Hello, &res, generation);
        stream.write_all(&hello.encode()).await?;
        let reply = read_hello(&mut stream)
            .await
            .map_err(|e| fail(e.to_string()))?;
        match reply.kind {
            HelloKind::Accept => {
                check_params(&hello, &reply).map_err(|e| fail(e.to_string()))?;
                let reason = format!(
                    "{} requested and accepted by the server",
                    self.opener.scheme()
                );
                let (mut conn, info) = self
                    .establish(res, &reply, generation, stream, reason)
                    .map_err(|e| fail(format!("bringing up the queue pair failed: {e}")))?;
                conn.bootstrap_mut()
                    .write_all(&HelloMsg::bare(HelloKind::Ready).encode())
                    .await?;
                Ok(RdmaLink::Rdma(conn, info))
            }
            HelloKind::Reject if self.config.fallback_to_tcp => {
                let why = format!(
                    "server refused RDMA ({:?})",
                    reply.reason.unwrap_or(RejectReason::Resources)
                );
                self.fallback(stream, Bytes::new(), why)
            }
            HelloKind::Reject => Err(fail(
                HandshakeError::Rejected(reply.reason.unwrap_or(RejectReason::Resources))
                    .to_string(),
            )),
            other => Err(fail(
                HandshakeError::Unexpected {
                    got: other,
                    expected: "Accept or Reject",
                }
                .to_string(),
            )),
        }
    }

    async fn server_handshake(
        &self,
        mut stream: TcpStream,
    ) -> Result<RdmaLink<QpOf<O>>, TransportError> {
        let mut head = [0u8; MESSAGE_LEN];
        // A plain remoting client sends a frame, not our magic: serve it over TCP.
        let mut got = 0;
        while got < MAGIC.len() {
            let n = stream.read(&mut head[got..MAGIC.len()]).await?;
            if n == 0 {
                return Err(handshake_error(HandshakeError::Closed));
            }
            got += n;
        }
        if head[..4] != MAGIC {
            let prefix = Bytes::copy_from_slice(&head[..4]);
            return self.fallback(stream, prefix, "peer speaks plain tcp remoting".into());
        }
        stream
            .read_exact(&mut head[4..])
            .await
            .map_err(|_| handshake_error(HandshakeError::Closed))?;
        let theirs = HelloMsg::decode(&head).map_err(handshake_error)?;
        match theirs.kind {
            HelloKind::TcpOnly => {
                return self.fallback(stream, Bytes::new(), "the client has no RDMA device".into());
            }
            HelloKind::Hello => {}
            other => {
                return Err(handshake_error(HandshakeError::Unexpected {
                    got: other,
                    expected: "Hello",
                }));
            }
        }
        let reject = |reason: RejectReason| HelloMsg::reject(reason).encode();
        if let Err(e) = check_params(&self.ours(), &theirs) {
            stream
                .write_all(&reject(RejectReason::Incompatible))
                .await?;
            return self.fallback(stream, Bytes::new(), e.to_string());
        }
        let device = match self.device(&Endpoint::tcp("0.0.0.0", 0)) {
            Ok(v) => v,
            Err(e) => {
                stream.write_all(&reject(RejectReason::NoDevice)).await?;
                return self.fallback(
                    stream,
                    Bytes::new(),
                    format!("no usable RDMA device here ({e})"),
                );
            }
        };
        let res = match self.resources(&device) {
            Ok(r) => r,
            Err(e) => {
                stream.write_all(&reject(RejectReason::Resources)).await?;
                return self.fallback(
                    stream,
                    Bytes::new(),
                    format!("RDMA resources unavailable ({e})"),
                );
            }
        };
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        let accept = self.hello(HelloKind::Accept, &res, generation);
        let reason = format!("{} requested by the client", self.opener.scheme());
        let (mut conn, info) = self
            .establish(res, &theirs, generation, stream, reason)
            .map_err(|e| {
                handshake_error(HandshakeError::Incompatible(format!("queue pair: {e}")))
            })?;
        let bootstrap = conn.bootstrap_mut();
        bootstrap.write_all(&accept.encode()).await?;
        let ready = read_hello(bootstrap).await.map_err(handshake_error)?;
        if ready.kind != HelloKind::Ready {
            return Err(handshake_error(HandshakeError::Unexpected {
                got: ready.kind,
                expected: "Ready",
            }));
        }
        Ok(RdmaLink::Rdma(conn, info))
    }
}

fn handshake_error(e: HandshakeError) -> TransportError {
    TransportError::Connect {
        endpoint: "rdma handshake".into(),
        reason: e.to_string(),
    }
}

async fn read_hello(stream: &mut TcpStream) -> Result<HelloMsg, HandshakeError> {
    let mut buf = [0u8; MESSAGE_LEN];
    stream
        .read_exact(&mut buf)
        .await
        .map_err(|_| HandshakeError::Closed)?;
    HelloMsg::decode(&buf)
}

/// A link of [`RdmaTransport`]: RDMA, or TCP after a fallback.
#[derive(Debug)]
pub enum RdmaLink<Q: VerbsQp> {
    /// RDMA.
    Rdma(RdmaConn<Q>, LinkInfo),
    /// TCP on the bootstrap socket.
    Tcp(TcpLink),
}

/// Sending half of [`RdmaLink`].
#[derive(Debug)]
pub enum RdmaLinkTx<Q: VerbsQp> {
    /// RDMA.
    Rdma(RdmaTx<Q>),
    /// TCP.
    Tcp(TcpTx),
}

/// Receiving half of [`RdmaLink`].
#[derive(Debug)]
pub enum RdmaLinkRx<Q: VerbsQp> {
    /// RDMA.
    Rdma(RdmaRx<Q>),
    /// TCP.
    Tcp(TcpRx),
}

/// Send buffer of [`RdmaLink`].
#[derive(Debug)]
pub enum RdmaLinkBuf {
    /// RDMA.
    Rdma(RdmaBuf),
    /// TCP.
    Tcp(TcpBuf),
}

impl FrameWrite for RdmaLinkBuf {
    fn put_slice(&mut self, src: &[u8]) {
        match self {
            RdmaLinkBuf::Rdma(b) => b.put_slice(src),
            RdmaLinkBuf::Tcp(b) => b.put_slice(src),
        }
    }
    fn put_bytes(&mut self, src: Bytes) {
        match self {
            RdmaLinkBuf::Rdma(b) => b.put_bytes(src),
            RdmaLinkBuf::Tcp(b) => b.put_bytes(src),
        }
    }
}

impl FrameBuf for RdmaLinkBuf {}

impl<Q: VerbsQp> LinkTx for RdmaLinkTx<Q> {
    type Buf = RdmaLinkBuf;

    async fn reserve(&self, frame_len: usize) -> Result<RdmaLinkBuf, TransportError> {
        match self {
            RdmaLinkTx::Rdma(t) => t.reserve(frame_len).await.map(RdmaLinkBuf::Rdma),
            RdmaLinkTx::Tcp(t) => t.reserve(frame_len).await.map(RdmaLinkBuf::Tcp),
        }
    }

    fn send(&self, buf: RdmaLinkBuf) -> Result<(), TransportError> {
        match (self, buf) {
            (RdmaLinkTx::Rdma(t), RdmaLinkBuf::Rdma(b)) => t.send(b),
            (RdmaLinkTx::Tcp(t), RdmaLinkBuf::Tcp(b)) => t.send(b),
            _ => Err(TransportError::Closed),
        }
    }

    async fn close(&self) {
        match self {
            RdmaLinkTx::Rdma(t) => t.close().await,
            RdmaLinkTx::Tcp(t) => t.close().await,
        }
    }

    fn abort(&self, reason: TransportError) {
        match self {
            RdmaLinkTx::Rdma(t) => t.abort(reason),
            RdmaLinkTx::Tcp(t) => t.abort(reason),
        }
    }
}

impl<Q: VerbsQp> LinkRx for RdmaLinkRx<Q> {
    async fn recv(&mut self) -> Result<Option<Bytes>, TransportError> {
        match self {
            RdmaLinkRx::Rdma(r) => r.recv().await,
            RdmaLinkRx::Tcp(r) => r.recv().await,
        }
    }
}

impl<Q: VerbsQp> Link for RdmaLink<Q> {
    type Tx = RdmaLinkTx<Q>;
    type Rx = RdmaLinkRx<Q>;

    fn info(&self) -> &LinkInfo {
        match self {
            RdmaLink::Rdma(_, info) => info,
            RdmaLink::Tcp(l) => l.info(),
        }
    }

    fn split(self) -> (RdmaLinkTx<Q>, RdmaLinkRx<Q>, LinkInfo) {
        match self {
            RdmaLink::Rdma(conn, info) => {
                let (t, r) = conn.split();
                (RdmaLinkTx::Rdma(t), RdmaLinkRx::Rdma(r), info)
            }
            RdmaLink::Tcp(l) => {
                let (t, r, i) = l.split();
                (RdmaLinkTx::Tcp(t), RdmaLinkRx::Tcp(r), i)
            }
        }
    }
}

/// A listener of [`RdmaTransport`]: TCP accepts whose handshakes run in the background, so a
/// slow or silent client never holds up the others.
#[derive(Debug)]
pub struct RdmaListener<Q: VerbsQp> {
    links: mpsc::Receiver<Result<RdmaLink<Q>, TransportError>>,
    local: Endpoint,
    task: tokio::task::JoinHandle<()>,
}

impl<Q: VerbsQp> Drop for RdmaListener<Q> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<Q: VerbsQp> Listener for RdmaListener<Q> {
    type Link = RdmaLink<Q>;

    async fn accept(&mut self) -> Result<RdmaLink<Q>, TransportError> {
        loop {
            match self.links.recv().await {
                Some(Ok(link)) => return Ok(link),
                Some(Err(e)) => tracing::warn!(error = %e, "inbound rdma handshake failed"),
                None => return Err(TransportError::Closed),
            }
        }
    }

    fn local_endpoint(&self) -> Endpoint {
        self.local.clone()
    }
}

impl<O: DeviceOpener> Transport for RdmaTransport<O> {
    type Link = RdmaLink<QpOf<O>>;
    type Listener = RdmaListener<QpOf<O>>;

    async fn connect(&self, endpoint: &Endpoint) -> Result<Self::Link, TransportError> {
        let timeout = self.config.handshake_timeout;
        let fail = |reason: String| TransportError::Connect {
            endpoint: endpoint.to_string(),
            reason,
        };
        let work = async {
            let stream = TcpStream::connect(endpoint.authority())
                .await
                .map_err(|e| fail(e.to_string()))?;
            stream.set_nodelay(true)?;
            self.client_handshake(endpoint, stream).await
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| fail(HandshakeError::Timeout.to_string()))?
    }

    async fn bind(&self, endpoint: &Endpoint) -> Result<Self::Listener, TransportError> {
        let listener = TokioListener::bind(endpoint.authority())
            .await
            .map_err(|e| TransportError::Bind {
                endpoint: endpoint.to_string(),
                reason: e.to_string(),
            })?;
        let local = endpoint.with_port(listener.local_addr()?.port());
        let (tx, links) = mpsc::channel(64);
        let me = self.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let me = me.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let timeout = me.config.handshake_timeout;
                    let result = tokio::time::timeout(timeout, me.server_handshake(stream))
                        .await
                        .unwrap_or_else(|_| Err(handshake_error(HandshakeError::Timeout)));
                    let _ = tx.send(result).await;
                });
            }
        });
        Ok(RdmaListener { links, local, task })
    }
}
