//! Connection admission on the gRPC port: caps on open connections in all and per client
//! address, and a deadline for the HTTP/2 preface. A connection over a cap is closed as soon as it is accepted, before any TLS or
//! HTTP/2 work; the ones already open are not touched. The count of a connection ends when
//! its socket is dropped, however the connection ended; then the heap memory it freed is
//! given back to the system.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use rdmq_transport::sync::Plain;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// The caps and the counts behind them.
#[derive(Debug)]
pub struct Admission {
    max: usize,
    per_client: usize,
    handshake: Duration,
    open: AtomicUsize,
    by_client: Mutex<HashMap<IpAddr, usize>>,
    refused: AtomicU64,
    trim: Arc<rdmq_transport::heap::TrimAfterCloses>,
}

impl Admission {
    /// At most `max` connections in all and `per_client` from one address; a connection
    /// must deliver the HTTP/2 connection preface within `handshake`.
    pub fn new(max: usize, per_client: usize, handshake: Duration) -> Arc<Self> {
        Arc::new(Self {
            max,
            per_client,
            handshake,
            open: AtomicUsize::new(0),
            by_client: Mutex::new(HashMap::new()),
            refused: AtomicU64::new(0),
            trim: Arc::default(),
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Connections refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    fn clients(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.by_client.lock().plain()
    }

    fn admit(self: &Arc<Self>, stream: TcpStream) -> Option<Admitted> {
        let ip = stream.peer_addr().ok().map(|a| a.ip());
        let limit = {
            let mut clients = self.clients();
            if self.open.load(Ordering::Relaxed) >= self.max {
                Some("the proxy's connection limit")
            } else if let Some(ip) = ip
                && clients.get(&ip).copied().unwrap_or(0) >= self.per_client
            {
                Some("the per-client connection limit")
            } else {
                if let Some(ip) = ip {
                    *clients.entry(ip).or_insert(0) += 1;
                }
                self.open.fetch_add(1, Ordering::Relaxed);
                None
            }
        };
        if let Some(limit) = limit {
            let n = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(client = ?ip, limit, refused = n, "gRPC connection refused");
            }
            return None;
        }
        Some(Admitted {
            stream,
            ip,
            home: self.clone(),
            preface: Some((0, Box::pin(tokio::time::sleep(self.handshake)))),
        })
    }

    fn release(&self, ip: Option<IpAddr>) {
        if let Some(ip) = ip {
            let mut clients = self.clients();
            if let Some(n) = clients.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    clients.remove(&ip);
                }
            }
        }
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Accepted sockets that are within the caps (the others are dropped, which closes them).
pub fn admitted<S>(
    incoming: S,
    admission: Arc<Admission>,
) -> impl Stream<Item = io::Result<Admitted>> + Send + 'static
where
    S: Stream<Item = io::Result<TcpStream>> + Send + 'static,
{
    incoming.filter_map(move |accepted| match accepted {
        Ok(stream) => admission.admit(stream).map(Ok),
        Err(e) => Some(Err(e)),
    })
}

/// An admitted connection's socket; dropping it ends its count.
#[derive(Debug)]
pub struct Admitted {
    stream: TcpStream,
    ip: Option<IpAddr>,
    home: Arc<Admission>,
    /// Until the preface is in: bytes read so far and the deadline.
    preface: Option<(usize, Pin<Box<tokio::time::Sleep>>)>,
}

/// Length of the HTTP/2 client connection preface (`PRI * HTTP/2.0…`).
const PREFACE_LEN: usize = 24;

impl Drop for Admitted {
    fn drop(&mut self) {
        self.home.release(self.ip);
        self.home.trim.connection_closed();
    }
}

impl Connected for Admitted {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Admitted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        let Some((got, deadline)) = this.preface.as_mut() else {
            return polled;
        };
        match polled {
            Poll::Ready(Ok(())) => {
                *got += buf.filled().len() - before;
                if *got >= PREFACE_LEN {
                    this.preface = None;
                }
                Poll::Ready(Ok(()))
            }
            // A peer that connects and then sends nothing (or trickles the preface) would
            // hold its connection, and a graceful shutdown, for as long as it likes.
            Poll::Pending if deadline.as_mut().poll(cx).is_ready() => {
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no HTTP/2 preface within the handshake timeout",
                )))
            }
            other => other,
        }
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
