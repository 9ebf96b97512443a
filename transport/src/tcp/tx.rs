//! Sending half of the TCP backend: a budget of in-flight bytes; the sending task writes its
//! frame to the socket itself when nothing is queued ahead of it (one non-blocking vectored
//! write, no hand-off), and a writer task per connection takes over whatever cannot go at once
//! (a full socket buffer, a frame queued behind another), gathering every queued frame into a
//! single vectored write.

use std::io::IoSlice;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use super::TcpConfig;
use crate::codec::FrameWrite;
use crate::counters::LinkCounters;
use crate::error::TransportError;
use crate::link::{FrameBuf, LinkTx};
use crate::signal::DeadSignal;

/// Sends closer together than this after an inline write are a burst, left to the writer task
/// to coalesce (one write for many frames instead of a write each).
const BURST_NS: u64 = 50_000;

/// Sending half of a TCP link; cheap to share between tasks.
#[derive(Debug)]
pub struct TcpTx {
    queue: mpsc::UnboundedSender<TxMsg>,
    /// The socket's write half, held by whoever writes (a sender inline, or the writer task);
    /// `None` once the writer has ended.
    socket: Arc<Mutex<Option<OwnedWriteHalf>>>,
    /// Frames handed to the writer task and not yet written: a sender writes inline only
    /// when this is zero, so frames leave in order.
    handed_over: Arc<AtomicUsize>,
    /// When the last inline write happened (ns since `epoch`): a send soon after it is part of
    /// a burst and goes to the writer task, which coalesces the burst into one write.
    last_inline: AtomicU64,
    epoch: std::time::Instant,
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
        let socket = Arc::new(Mutex::new(Some(w)));
        let handed_over = Arc::new(AtomicUsize::new(0));
        let writer = Writer {
            rx,
            socket: socket.clone(),
            handed_over: handed_over.clone(),
            counters: counters.clone(),
            dead: dead.clone(),
            budget: budget.clone(),
            max_iovecs: config.max_iovecs.max(1),
        };
        tokio::spawn(writer.run());
        Self {
            queue,
            socket,
            handed_over,
            last_inline: AtomicU64::new(0),
            epoch: std::time::Instant::now(),
            budget,
            max_inflight,
            zero_copy_min: config.zero_copy_min,
            counters,
            dead,
        }
    }

    fn hand_over(&self, frame: Frame) -> Result<(), TransportError> {
        self.handed_over.fetch_add(1, Ordering::AcqRel);
        self.queue.send(TxMsg::Frame(frame)).map_err(|_| {
            self.handed_over.fetch_sub(1, Ordering::AcqRel);
            self.closed_error()
        })
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
        let mut frame = Frame {
            segments: buf.segments,
            _reservation: buf.reservation,
        };
        // Nothing queued ahead, nobody writing, no burst under way: write it from this task.
        let now = self.epoch.elapsed().as_nanos() as u64 + BURST_NS;
        if self.handed_over.load(Ordering::Acquire) == 0
            && now.saturating_sub(self.last_inline.swap(now, Ordering::Relaxed)) >= BURST_NS
            && let Ok(mut socket) = self.socket.try_lock()
            && self.handed_over.load(Ordering::Acquire) == 0
        {
            let Some(w) = socket.as_mut() else {
                return Err(self.closed_error());
            };
            match write_now(w, &mut frame, &self.counters) {
                Ok(true) => return Ok(()),
                // The rest goes first in the writer's queue (nothing is ahead of it), queued
                // before the socket is released so no other sender can overtake it.
                Ok(false) => return self.hand_over(frame),
                Err(e) => {
                    let e = TransportError::ConnectionLost(format!("write failed: {e}"));
                    self.dead.trigger(e.clone());
                    return Err(e);
                }
            }
        }
        self.hand_over(frame)
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
    socket: Arc<Mutex<Option<OwnedWriteHalf>>>,
    handed_over: Arc<AtomicUsize>,
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
            let mut socket = self.socket.lock().await;
            let Some(w) = socket.as_mut() else { break };
            if !batch.is_empty() {
                let written = tokio::select! {
                    biased;
                    _ = self.dead.wait() => break,
                    r = write_batch(w, &batch, &self.counters) => r,
                };
                if let Err(e) = written {
                    self.dead
                        .trigger(TransportError::ConnectionLost(format!("write failed: {e}")));
                    break;
                }
                self.handed_over.fetch_sub(batch.len(), Ordering::AcqRel);
                batch.clear();
            }
            if let Some(ack) = close_ack {
                let _ = w.shutdown().await;
                let _ = ack.send(());
                break;
            }
        }
        // The write half goes with the writer (its drop tells the peer).
        self.socket.lock().await.take();
        self.budget.close();
    }
}

/// One non-blocking vectored write of `frame`: true if it all went; else what was written is
/// cut off the front of `frame` (a full socket buffer), for the writer task to finish.
fn write_now(
    w: &OwnedWriteHalf,
    frame: &mut Frame,
    counters: &LinkCounters,
) -> std::io::Result<bool> {
    let total: usize = frame.segments.iter().map(|b| b.len()).sum();
    let mut slices = [IoSlice::new(&[]); 8];
    let n = frame.segments.len().min(slices.len());
    for (slot, seg) in slices.iter_mut().zip(&frame.segments) {
        *slot = IoSlice::new(seg);
    }
    let written = match w.try_write_vectored(&slices[..n]) {
        Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
        Ok(k) => k,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
        Err(e) => return Err(e),
    };
    if written > 0 {
        LinkCounters::add(&counters.send_calls, 1);
    }
    if written == total {
        LinkCounters::add(&counters.frames_sent, 1);
        LinkCounters::add(&counters.bytes_sent, total as u64);
        return Ok(true);
    }
    // Drop the written prefix; the writer task counts the frame when it finishes it.
    let mut skip = written;
    frame.segments.retain_mut(|seg| {
        if skip >= seg.len() {
            skip -= seg.len();
            false
        } else {
            bytes::Buf::advance(seg, skip);
            skip = 0;
            true
        }
    });
    LinkCounters::add(&counters.bytes_sent, written as u64);
    Ok(false)
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
