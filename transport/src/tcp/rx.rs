//! Receiving half of the TCP backend: one reused read buffer, frames cut out of it as `Bytes`
//! slices (bodies are never copied).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::net::tcp::OwnedReadHalf;

use super::TcpConfig;
use crate::codec::{DecodeError, FrameSplitter};
use crate::counters::LinkCounters;
use crate::error::TransportError;
use crate::link::LinkRx;
use crate::signal::DeadSignal;

/// Receiving half of a TCP link.
#[derive(Debug)]
pub struct TcpRx {
    r: OwnedReadHalf,
    buf: BytesMut,
    splitter: FrameSplitter,
    read_chunk: usize,
    frame_timeout: Option<std::time::Duration>,
    /// When the incomplete frame at the front of `buf` began arriving.
    partial_since: Option<tokio::time::Instant>,
    counters: Arc<LinkCounters>,
    dead: Arc<DeadSignal>,
}

impl TcpRx {
    pub(super) fn new(
        r: OwnedReadHalf,
        config: &TcpConfig,
        counters: Arc<LinkCounters>,
        dead: Arc<DeadSignal>,
        prefix: &[u8],
    ) -> Self {
        let mut buf = BytesMut::with_capacity(config.read_chunk.max(prefix.len()));
        buf.extend_from_slice(prefix);
        Self {
            r,
            buf,
            splitter: FrameSplitter::new(config.max_frame),
            read_chunk: config.read_chunk.max(4096),
            frame_timeout: config.frame_timeout,
            partial_since: None,
            counters,
            dead,
        }
    }
}

impl LinkRx for TcpRx {
    async fn recv(&mut self) -> Result<Option<Bytes>, TransportError> {
        loop {
            if let Some(frame) = self.splitter.split(&mut self.buf)? {
                self.partial_since = None;
                LinkCounters::add(&self.counters.frames_received, 1);
                LinkCounters::add(&self.counters.bytes_received, frame.len() as u64);
                return Ok(Some(frame));
            }
            let stalled_at = match (self.frame_timeout, self.buf.is_empty()) {
                (Some(limit), false) => {
                    let since = *self
                        .partial_since
                        .get_or_insert_with(tokio::time::Instant::now);
                    Some((since + limit, limit))
                }
                _ => None,
            };
            if self.buf.capacity() - self.buf.len() < self.read_chunk / 4 {
                // Reclaims the space of frames already handed out once they are dropped.
                self.buf.reserve(self.read_chunk);
            }
            let n = tokio::select! {
                biased;
                reason = self.dead.wait() => return Err(reason),
                n = self.r.read_buf(&mut self.buf) => n.map_err(|e| {
                    TransportError::ConnectionLost(format!("read failed: {e}"))
                })?,
                _ = async {
                    match stalled_at {
                        Some((at, _)) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => {
                    let limit = stalled_at.map(|(_, l)| l).unwrap_or_default();
                    return Err(TransportError::Stalled {
                        bytes: self.buf.len(),
                        after: limit,
                    });
                }
            };
            LinkCounters::add(&self.counters.recv_calls, 1);
            if n == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(DecodeError::UnexpectedEof(self.buf.len()).into())
                };
            }
        }
    }
}
