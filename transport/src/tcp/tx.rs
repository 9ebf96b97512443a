//! Sending half of the TCP backend: a budget of in-flight bytes, and one writer task per
//! connection that gathers every queued frame into a single vectored write.

use std::io::IoSlice;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use super::TcpConfig;
use crate::codec::FrameWrite;
use crate::counters::LinkCounters;
use crate::error::TransportError;
use crate::link::{FrameBuf, LinkTx};
use crate::signal::DeadSignal;

/// Sending half of a TCP link; cheap to share between tasks.
#[derive(Debug)]
pub struct TcpTx {
    queue: mpsc::UnboundedSender<TxMsg>,
    budget: Arc<Semaphore>,
    max_inflight: usize,
    zero_copy_min: usize,
    counters: Arc<LinkCounters>,
    dead: Arc<DeadSignal>,
}

#[derive(Debug)]
enum TxMsg {
    Frame(Frame),
    Close(oneshot::Sender<()>),
}

/// Bytes of the in-flight budget held by one frame until it is written (or dropped).
#[derive(Debug)]
struct Reservation {
    _permit: OwnedSemaphorePermit,
    len: u64,
    counters: Arc<LinkCounters>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.counters.dequeue(self.len);
    }
}

#[derive(Debug)]
struct Frame {
    segments: Vec<Bytes>,
    /// Released when the frame has been written.
    _reservation: Reservation,
}

/// A TCP send buffer: a contiguous head for the prefix, header and small bodies, plus large
/// bodies kept as their own `Bytes` (sent without copying).
#[derive(Debug)]
pub struct TcpBuf {
    head: BytesMut,
    segments: Vec<Bytes>,
    zero_copy_min: usize,
    reservation: Reservation,
}

impl FrameWrite for TcpBuf {
    fn put_slice(&mut self, src: &[u8]) {
        self.head.extend_from_slice(src);
    }

    fn put_bytes(&mut self, src: Bytes) {
        if src.len() >= self.zero_copy_min {
            if !self.head.is_empty() {
                self.segments.push(self.head.split().freeze());
            }
            self.segments.push(src);
        } else {
            self.reservation.counters.copy(src.len() as u64);
            self.head.extend_from_slice(&src);
        }
    }
}

impl FrameBuf for TcpBuf {}

impl TcpTx {
    pub(super) fn start(
        w: OwnedWriteHalf,
        config: &TcpConfig,
        counters: Arc<LinkCounters>,
        dead: Arc<DeadSignal>,
    ) -> Self {
        let (queue, rx) = mpsc::unbounded_channel();
        let max_inflight = config.max_inflight_bytes.clamp(1, u32::MAX as usize);
        let budget = Arc::new(Semaphore::new(max_inflight));
        let writer = Writer {
            rx,
            w,
            counters: counters.clone(),
            dead: dead.clone(),
            budget: budget.clone(),
            max_iovecs: config.max_iovecs.max(1),
        };
        tokio::spawn(writer.run());
        Self {
            queue,
            budget,
            max_inflight,
            zero_copy_min: config.zero_copy_min,
            counters,
            dead,
        }
    }

    fn closed_error(&self) -> TransportError {
        self.dead
            .reason()
            .cloned()
            .unwrap_or(TransportError::Closed)
    }
}

impl LinkTx for TcpTx {
    type Buf = TcpBuf;

    async fn reserve(&self, frame_len: usize) -> Result<TcpBuf, TransportError> {
        let permits = frame_len.clamp(1, self.max_inflight) as u32;
        let permit = match self.budget.clone().try_acquire_many_owned(permits) {
            Ok(p) => p,
            Err(tokio::sync::TryAcquireError::Closed) => return Err(self.closed_error()),
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                self.counters
                    .credit_waits
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.budget
                    .clone()
                    .acquire_many_owned(permits)
                    .await
                    .map_err(|_| self.closed_error())?
            }
        };
        self.counters.queue(frame_len as u64);
        let head_cap = if frame_len < self.zero_copy_min {
            frame_len
        } else {
            1024
        };
        Ok(TcpBuf {
            head: BytesMut::with_capacity(head_cap),
            segments: Vec::new(),
            zero_copy_min: self.zero_copy_min,
            reservation: Reservation {
                _permit: permit,
                len: frame_len as u64,
                counters: self.counters.clone(),
            },
        })
    }

    fn send(&self, mut buf: TcpBuf) -> Result<(), TransportError> {
        if let Some(reason) = self.dead.reason() {
            return Err(reason.clone());
        }
        if !buf.head.is_empty() {
            buf.segments.push(buf.head.freeze());
        }
        let frame = Frame {
            segments: buf.segments,
            _reservation: buf.reservation,
        };
        self.queue
            .send(TxMsg::Frame(frame))
            .map_err(|_| self.closed_error())
    }

    async fn close(&self) {
        let (ack, done) = oneshot::channel();
        if self.queue.send(TxMsg::Close(ack)).is_ok() {
            let _ = done.await;
        }
    }

    fn abort(&self, reason: TransportError) {
        self.dead.trigger(reason);
        self.budget.close();
    }
}

struct Writer {
    rx: mpsc::UnboundedReceiver<TxMsg>,
    w: OwnedWriteHalf,
    counters: Arc<LinkCounters>,
    dead: Arc<DeadSignal>,
    budget: Arc<Semaphore>,
    max_iovecs: usize,
}

impl Writer {
    async fn run(mut self) {
        let mut batch: Vec<Frame> = Vec::new();
        loop {
            let msg = tokio::select! {
                biased;
                _ = self.dead.wait() => break,
                msg = self.rx.recv() => msg,
            };
            let mut close_ack = None;
            let mut segments = 0;
            match msg {
                None => break,
                Some(TxMsg::Close(ack)) => close_ack = Some(ack),
                Some(TxMsg::Frame(f)) => {
                    segments += f.segments.len();
                    batch.push(f);
                }
            }
            while close_ack.is_none() && segments < self.max_iovecs {
                match self.rx.try_recv() {
                    Ok(TxMsg::Frame(f)) => {
                        segments += f.segments.len();
                        batch.push(f);
                    }
                    Ok(TxMsg::Close(ack)) => close_ack = Some(ack),
                    Err(_) => break,
                }
            }
            if !batch.is_empty() {
                let written = tokio::select! {
                    biased;
                    _ = self.dead.wait() => break,
                    r = write_batch(&mut self.w, &batch, &self.counters) => r,
                };
                if let Err(e) = written {
                    self.dead
                        .trigger(TransportError::ConnectionLost(format!("write failed: {e}")));
                    break;
                }
                batch.clear();
            }
            if let Some(ack) = close_ack {
                let _ = self.w.shutdown().await;
                let _ = ack.send(());
                break;
            }
        }
        self.budget.close();
    }
}

async fn write_batch(
    w: &mut OwnedWriteHalf,
    batch: &[Frame],
    counters: &LinkCounters,
) -> std::io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = batch
        .iter()
        .flat_map(|f| f.segments.iter().map(|b| IoSlice::new(b)))
        .collect();
    let total: usize = slices.iter().map(|s| s.len()).sum();
    let mut rest: &mut [IoSlice<'_>] = &mut slices;
    while !rest.is_empty() {
        let n = w.write_vectored(rest).await?;
        LinkCounters::add(&counters.send_calls, 1);
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut rest, n);
    }
    LinkCounters::add(&counters.frames_sent, batch.len() as u64);
    LinkCounters::add(&counters.bytes_sent, total as u64);
    Ok(())
}
