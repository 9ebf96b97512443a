//! The TCP backend on tokio: `TCP_NODELAY`, write coalescing (queued frames leave in one
//! vectored write), read-buffer reuse, and a bound on in-flight bytes so a slow peer cannot make
//! the sender's memory grow without limit.

mod rx;
mod tx;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener as TokioListener, TcpStream};

use crate::codec::DEFAULT_MAX_FRAME;
use crate::counters::LinkCounters;
use crate::endpoint::{Endpoint, Scheme};
use crate::error::TransportError;
use crate::link::{Link, LinkInfo, Listener, Transport};

pub use rx::TcpRx;
pub use tx::{TcpBuf, TcpTx};

/// Tuning of the TCP backend.
#[derive(Debug, Clone)]
pub struct TcpConfig {
    /// Largest accepted frame, length prefix included.
    pub max_frame: usize,
    /// Bytes that may be queued for writing before senders wait (backpressure bound).
    pub max_inflight_bytes: usize,
    /// Read buffer growth step.
    pub read_chunk: usize,
    /// Bodies at least this large are written from their own buffer (no copy).
    pub zero_copy_min: usize,
    /// Most buffers gathered into one vectored write.
    pub max_iovecs: usize,
    /// Dial timeout.
    pub connect_timeout: Duration,
    /// A frame begun must be complete within this (a peer trickling bytes — slowloris —
    /// or stalling mid-frame loses the connection). `None`: no limit.
    pub frame_timeout: Option<Duration>,
}

impl Default for TcpConfig {
    fn default() -> Self {
        Self {
            max_frame: DEFAULT_MAX_FRAME,
            max_inflight_bytes: 8 * 1024 * 1024,
            read_chunk: 64 * 1024,
            zero_copy_min: 16 * 1024,
            max_iovecs: 64,
            connect_timeout: Duration::from_secs(3),
            frame_timeout: Some(Duration::from_secs(30)),
        }
    }
}

/// The TCP backend.
#[derive(Debug, Clone, Default)]
pub struct TcpTransport {
    config: Arc<TcpConfig>,
}

impl TcpTransport {
    /// A backend with the given tuning.
    pub fn new(config: TcpConfig) -> Self {
        Self {
            config: Arc::new(config),
        }
    }

    /// The tuning.
    pub fn config(&self) -> &TcpConfig {
        &self.config
    }

    /// Wraps an established stream (also used by backends that bootstrap over TCP and fall back
    /// to it).
    pub fn link_from_stream(
        &self,
        stream: TcpStream,
        reason: impl Into<String>,
    ) -> Result<TcpLink, TransportError> {
        self.link_from_stream_with_prefix(stream, bytes::Bytes::new(), reason)
    }

    /// Like [`TcpTransport::link_from_stream`], for a stream whose first bytes (`prefix`) were
    /// already read (e.g. while sniffing for a handshake).
    pub fn link_from_stream_with_prefix(
        &self,
        stream: TcpStream,
        prefix: bytes::Bytes,
        reason: impl Into<String>,
    ) -> Result<TcpLink, TransportError> {
        stream.set_nodelay(true)?;
        let info = LinkInfo {
            transport: "tcp",
            local: stream
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default(),
            peer: stream
                .peer_addr()
                .map(|a| a.to_string())
                .unwrap_or_default(),
            reason: reason.into(),
            counters: Arc::new(LinkCounters::default()),
        };
        Ok(TcpLink {
            stream,
            info,
            config: self.config.clone(),
            prefix,
        })
    }
}

/// An established TCP link.
#[derive(Debug)]
pub struct TcpLink {
    stream: TcpStream,
    info: LinkInfo,
    config: Arc<TcpConfig>,
    prefix: bytes::Bytes,
}

impl Link for TcpLink {
    type Tx = TcpTx;
    type Rx = TcpRx;

    fn info(&self) -> &LinkInfo {
        &self.info
    }

    fn split(self) -> (TcpTx, TcpRx, LinkInfo) {
        let (r, w) = self.stream.into_split();
        let dead = Arc::new(crate::signal::DeadSignal::default());
        let tx = TcpTx::start(w, &self.config, self.info.counters.clone(), dead.clone());
        let rx = TcpRx::new(
            r,
            &self.config,
            self.info.counters.clone(),
            dead,
            &self.prefix,
        );
        (tx, rx, self.info)
    }
}

/// A bound TCP listener.
#[derive(Debug)]
pub struct TcpListener {
    listener: TokioListener,
    local: Endpoint,
    transport: TcpTransport,
}

impl Listener for TcpListener {
    type Link = TcpLink;

    async fn accept(&mut self) -> Result<TcpLink, TransportError> {
        let (stream, _) = self.listener.accept().await?;
        self.transport.link_from_stream(stream, "tcp endpoint")
    }

    fn local_endpoint(&self) -> Endpoint {
        self.local.clone()
    }
}

impl Transport for TcpTransport {
    type Link = TcpLink;
    type Listener = TcpListener;

    async fn connect(&self, endpoint: &Endpoint) -> Result<TcpLink, TransportError> {
        let addr = endpoint.authority();
        let err = |reason: String| TransportError::Connect {
            endpoint: endpoint.to_string(),
            reason,
        };
        let stream = tokio::time::timeout(self.config.connect_timeout, TcpStream::connect(&addr))
            .await
            .map_err(|_| err(format!("timed out after {:?}", self.config.connect_timeout)))?
            .map_err(|e| err(e.to_string()))?;
        let reason = if endpoint.scheme == Scheme::Tcp {
            "tcp endpoint".to_owned()
        } else {
            format!("{} endpoint carried by tcp", endpoint.scheme.as_str())
        };
        self.link_from_stream(stream, reason)
    }

    async fn bind(&self, endpoint: &Endpoint) -> Result<TcpListener, TransportError> {
        let listener = TokioListener::bind(endpoint.authority())
            .await
            .map_err(|e| TransportError::Bind {
                endpoint: endpoint.to_string(),
                reason: e.to_string(),
            })?;
        let port = listener.local_addr()?.port();
        Ok(TcpListener {
            listener,
            local: endpoint.with_port(port),
            transport: self.clone(),
        })
    }
}
