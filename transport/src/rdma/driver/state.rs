//! The state of one link below the core, and one round of progress over it: returned receive
//! slots, completions, timers, the core's events and the work requests it asks for. Every task
//! that touches the link (sender, reader, background) drives it through here, under one short
//! lock, and wakes the others only when it produced something they wait for.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;

use super::{PollMode, nic};
use crate::counters::LinkCounters;
use crate::error::TransportError;
use crate::rdma::core::{Core, CoreError, Event, RecvWork, SendWork};
use crate::rdma::memory::{PostedSlot, Slot, SlotRegion};
use crate::rdma::post::PostBuffers;
use crate::rdma::sys::ChannelFd;
use crate::rdma::verbs::{Completion, Registration, VerbsError, VerbsQp};
use crate::signal::DeadSignal;

/// What [`Shared::new`] needs besides the queue pair and the core.
pub(crate) struct Settings {
    pub send: Arc<SlotRegion>,
    pub recv: Arc<SlotRegion>,
    pub lkey: u32,
    pub registration: Registration,
    pub mode: PollMode,
    pub max_frame: usize,
    pub max_held: usize,
    pub max_unread_bytes: usize,
}

pub(crate) struct Inner<Q: VerbsQp> {
    pub core: Core,
    pub qp: Q,
    /// Send slots checked out to the application or posted to the NIC.
    send_slots: Vec<Option<PostedSlot>>,
    /// Received frames not yet taken by the application; the flag says the frame still holds
    /// its receive slot (it was not copied out).
    incoming: VecDeque<(Bytes, bool)>,
    /// Frames in `incoming` that hold a slot.
    queued_lent: usize,
    /// Bytes of copied or assembled frames in `incoming` (not holding slots).
    queued_heap: usize,
    /// Chunks received but not yet copied: while too much sits unread they keep their slots
    /// (and credits), which is what pushes back on the peer.
    pending_chunks: VecDeque<(u32, u32, bool)>,
    assembling: BytesMut,
    pub eof: bool,
    pub closed: bool,
    pub error: Option<TransportError>,
    pub torn_down: bool,
    wcs: Vec<Completion>,
    recv_work: Vec<RecvWork>,
    send_work: Vec<SendWork>,
    returned: Vec<u32>,
    post: PostBuffers,
}

pub(crate) struct Shared<Q: VerbsQp> {
    inner: Mutex<Inner<Q>>,
    /// Frames (or the end) became available through a drive the reader did not run.
    pub rx_ready: Notify,
    /// Send room (slots, credits) or the close's end became available.
    pub tx_ready: Notify,
    /// The background task has something to do now (close, teardown).
    pub wake_background: Notify,
    pub dead: DeadSignal,
    channel: OnceLock<AsyncFd<ChannelFd>>,
    /// The reader is asleep waiting for frames: other drives that queue one must wake it.
    reader_parked: AtomicBool,
    /// Senders asleep waiting for room.
    tx_waiters: AtomicUsize,
    /// Bumped whenever something the reader waits for is queued (lock-free check for spinners).
    pub rx_gen: AtomicU64,
    pub send_region: Arc<SlotRegion>,
    pub recv_region: Arc<SlotRegion>,
    lkey: u32,
    pub slot_size: usize,
    max_frame: usize,
    max_held: usize,
    max_unread_bytes: usize,
    pub counters: Arc<LinkCounters>,
    epoch: Instant,
    pub mode: PollMode,
    /// A cheap, lock-free "the QP may have completions" (for spinning readers).
    pub may_complete: Arc<dyn Fn() -> bool + Send + Sync>,
    _registration: Registration,
}

impl<Q: VerbsQp> Shared<Q> {
    pub(crate) fn new(qp: Q, core: Core, s: Settings, counters: Arc<LinkCounters>) -> Arc<Self> {
        let may_complete = qp.completion_hint();
        let slots = s.send.count();
        let slot_size = s.send.slot_size();
        let mut inner = Inner {
            core,
            qp,
            send_slots: (0..slots).map(|_| None).collect(),
            incoming: VecDeque::with_capacity(s.recv.count()),
            queued_lent: 0,
            queued_heap: 0,
            pending_chunks: VecDeque::new(),
            assembling: BytesMut::new(),
            eof: false,
            closed: false,
            error: None,
            torn_down: false,
            wcs: Vec::with_capacity(32),
            recv_work: Vec::with_capacity(s.recv.count()),
            send_work: Vec::with_capacity(64),
            returned: Vec::with_capacity(s.recv.count()),
            post: PostBuffers::default(),
        };
        // Post every receive before the peer is told it may send.
        inner.core.poll_recv_posts(&mut inner.recv_work);
        let posted = nic::post_recv(
            &mut inner.qp,
            &mut inner.post,
            &inner.recv_work,
            &s.recv,
            s.lkey,
        );
        if let Err(e) = posted {
            inner.core.fail(CoreError::Protocol(format!(
                "initial post_recv failed: {e}"
            )));
        }
        inner.recv_work.clear();
        Arc::new(Shared {
            inner: Mutex::new(inner),
            rx_ready: Notify::new(),
            tx_ready: Notify::new(),
            wake_background: Notify::new(),
            dead: DeadSignal::default(),
            channel: OnceLock::new(),
            reader_parked: AtomicBool::new(false),
            tx_waiters: AtomicUsize::new(0),
            rx_gen: AtomicU64::new(0),
            send_region: s.send,
            recv_region: s.recv,
            lkey: s.lkey,
            slot_size,
            max_frame: s.max_frame,
            max_held: s.max_held,
            max_unread_bytes: s.max_unread_bytes,
            counters,
            epoch: Instant::now(),
            mode: s.mode,
            may_complete,
            _registration: s.registration,
        })
    }

    pub(crate) fn set_channel(&self, fd: AsyncFd<ChannelFd>) {
        let _ = self.channel.set(fd);
    }

    /// The link's state. A poisoned lock (a panic mid-update) fails the link: its slots and
    /// credits can no longer be trusted, so it is torn down and its calls fail, while other
    /// links carry on.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner<Q>> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(p) => {
                let mut g = p.into_inner();
                self.inner.clear_poison();
                tracing::error!("a panic interrupted this rdma link's driver; failing the link");
                g.core.fail(CoreError::Protocol(
                    "a panic interrupted the link's driver".into(),
                ));
                g
            }
        }
    }

    pub(crate) fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// The instant `t` (core nanoseconds) on tokio's clock.
    pub(crate) fn instant(&self, t: u64) -> tokio::time::Instant {
        (self.epoch + Duration::from_nanos(t)).into()
    }

    /// One round of progress by the reader (`by_reader`) or anyone else; wakes the reader or
    /// waiting senders only if this round produced what they wait for.
    pub(crate) fn drive(&self, inner: &mut Inner<Q>, by_reader: bool) -> bool {
        let before = self.rx_gen.load(Ordering::Relaxed);
        let progress = inner.drive(self);
        if progress {
            if !by_reader
                && self.rx_gen.load(Ordering::Relaxed) != before
                && self.reader_parked.load(Ordering::Relaxed)
            {
                self.rx_ready.notify_waiters();
            }
            if self.tx_waiters.load(Ordering::Relaxed) > 0 {
                self.tx_ready.notify_waiters();
            }
        }
        progress
    }

    /// Marks the reader asleep (call under the lock, after its last check).
    pub(crate) fn park_reader(&self, parked: bool) {
        self.reader_parked.store(parked, Ordering::Relaxed);
    }

    /// Counts a sender asleep until the guard drops (register under the lock).
    pub(crate) fn tx_waiter(&self) -> TxWaiter<'_, Q> {
        self.tx_waiters.fetch_add(1, Ordering::Relaxed);
        TxWaiter(self)
    }

    /// Waits for the completion channel (armed by the caller before its last poll) and
    /// consumes its events; without a channel, a 1 ms tick.
    pub(crate) async fn wait_channel(&self) {
        match self.channel.get() {
            Some(fd) => match fd.readable().await {
                Ok(mut guard) => {
                    self.lock().qp.take_events();
                    guard.clear_ready();
                }
                Err(_) => std::future::pending().await,
            },
            None => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }

    pub(crate) fn wake_all(&self) {
        self.rx_ready.notify_waiters();
        self.tx_ready.notify_waiters();
        self.wake_background.notify_waiters();
    }
}

/// A sender counted as waiting for room.
pub(crate) struct TxWaiter<'a, Q: VerbsQp>(&'a Shared<Q>);

impl<Q: VerbsQp> Drop for TxWaiter<'_, Q> {
    fn drop(&mut self) {
        self.0.tx_waiters.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<Q: VerbsQp> Inner<Q> {
    /// One round of progress: returned slots, completions, timers, events, posts.
    fn drive(&mut self, sh: &Shared<Q>) -> bool {
        if self.torn_down {
            return false;
        }
        let now = sh.now();
        let mut progress = false;
        sh.recv_region.take_returned(&mut self.returned);
        for idx in self.returned.drain(..) {
            self.core.release_recv(idx);
            progress = true;
        }
        let mut polled = 0;
        loop {
            self.wcs.clear();
            match self.qp.poll(&mut self.wcs, 32) {
                Ok(n) => {
                    for c in &self.wcs {
                        self.core.handle_completion(c, now);
                    }
                    polled += n;
                    if n < 32 {
                        break;
                    }
                }
                Err(VerbsError::CqOverflow) => {
                    self.core.fail(CoreError::CqOverflow);
                    break;
                }
                Err(e) => {
                    self.core
                        .fail(CoreError::Protocol(format!("poll failed: {e}")));
                    break;
                }
            }
        }
        progress |= polled > 0;
        let timer_due = self.core.poll_timeout().is_some_and(|t| t <= now);
        if !progress && !timer_due && !self.core.has_work() && self.pending_chunks.is_empty() {
            // Idle: nothing arrived, nothing is due (the common case of a spinning poller).
            return false;
        }
        if timer_due {
            self.core.handle_timeout(now);
        }
        while let Some(event) = self.core.poll_event() {
            progress = true;
            self.on_event(event, sh);
        }
        progress |= self.copy_chunks(sh);
        self.post(sh, now);
        // Posting can fail the link; make that visible before the lock is released.
        while let Some(event) = self.core.poll_event() {
            progress = true;
            self.on_event(event, sh);
        }
        self.update_gauge(sh);
        sh.recv_region
            .set_wake_on_return(self.core.credits_low() || !self.core.is_running());
        progress
    }

    fn on_event(&mut self, event: Event, sh: &Shared<Q>) {
        let c = &sh.counters;
        match event {
            Event::Frame { slot, len } => {
                let s = nic::take_received(&sh.recv_region, slot);
                // Frames the application took and still holds (not those queued unread: those
                // must keep their credit, or a slow reader could not push back on the peer).
                let held = (self.core.lent() as usize).saturating_sub(self.queued_lent + 1);
                if held >= sh.max_held && self.queued_heap < sh.max_unread_bytes {
                    let bytes = Bytes::copy_from_slice(&s.as_slice()[..len as usize]);
                    drop(s);
                    self.core.release_recv(slot);
                    c.copy(len as u64);
                    self.queued_heap += bytes.len();
                    self.incoming.push_back((bytes, false));
                } else {
                    self.queued_lent += 1;
                    self.incoming
                        .push_back((s.into_bytes(0, len as usize), true));
                }
                sh.rx_gen.fetch_add(1, Ordering::Relaxed);
                LinkCounters::add(&c.frames_received, 1);
                LinkCounters::add(&c.bytes_received, len as u64);
            }
            Event::Chunk { slot, len, last } => self.pending_chunks.push_back((slot, len, last)),
            Event::PeerClosed => {
                self.eof = true;
                sh.rx_gen.fetch_add(1, Ordering::Relaxed);
            }
            Event::Closed => {
                self.closed = true;
                self.teardown(sh, TransportError::Closed);
            }
            Event::Failed(e) => {
                tracing::warn!(error = %e, "rdma link failed");
                self.teardown(sh, TransportError::ConnectionLost(e.to_string()));
            }
        }
    }

    fn post(&mut self, sh: &Shared<Q>, now: u64) {
        self.recv_work.clear();
        self.core.poll_recv_posts(&mut self.recv_work);
        if !self.recv_work.is_empty() {
            LinkCounters::add(&sh.counters.send_calls, 1);
            let posted = nic::post_recv(
                &mut self.qp,
                &mut self.post,
                &self.recv_work,
                &sh.recv_region,
                sh.lkey,
            );
            if let Err(e) = posted {
                self.core
                    .fail(CoreError::Protocol(format!("post_recv failed: {e}")));
            }
        }
        self.send_work.clear();
        self.core.poll_transmit(now, &mut self.send_work);
        if self.send_work.is_empty() {
            return;
        }
        let mut bytes = 0u64;
        let mut frames = 0u64;
        for i in 0..self.send_work.len() {
            let (slot, len) = (self.send_work[i].slot, self.send_work[i].len);
            let Some(idx) = slot else { continue };
            if let Some(data) = self.send_work[i].copy_from.take() {
                let mut s = self.take_send_slot(sh, idx);
                s.as_mut_slice()[..data.len()].copy_from_slice(&data);
                self.send_slots[idx as usize] = Some(s.into_posted());
                sh.counters.copy(data.len() as u64);
            }
            bytes += len as u64;
            frames += 1;
        }
        let result = nic::post_send(
            &mut self.qp,
            &mut self.post,
            &self.send_work,
            &sh.send_region,
            sh.lkey,
        );
        LinkCounters::add(&sh.counters.send_calls, 1);
        match result {
            Ok(()) => {
                LinkCounters::add(&sh.counters.frames_sent, frames);
                LinkCounters::add(&sh.counters.bytes_sent, bytes);
            }
            Err(e) => self
                .core
                .fail(CoreError::Protocol(format!("post_send failed: {e}"))),
        }
    }

    /// The next received frame, if one is queued.
    pub(crate) fn take_frame(&mut self) -> Option<Bytes> {
        let (frame, lent) = self.incoming.pop_front()?;
        if lent {
            self.queued_lent -= 1;
        } else {
            self.queued_heap -= frame.len();
        }
        Some(frame)
    }

    /// True if the reader has something to take (a frame, the end, an error).
    pub(crate) fn readable(&self) -> bool {
        !self.incoming.is_empty() || self.eof || self.error.is_some()
    }

    /// Copies pending chunks into the frame being assembled (releasing their slots) while the
    /// unread backlog allows.
    fn copy_chunks(&mut self, sh: &Shared<Q>) -> bool {
        let mut progress = false;
        while self.queued_heap < sh.max_unread_bytes {
            let Some((slot, len, last)) = self.pending_chunks.pop_front() else {
                break;
            };
            progress = true;
            let s = nic::take_received(&sh.recv_region, slot);
            self.assembling
                .extend_from_slice(&s.as_slice()[..len as usize]);
            drop(s);
            self.core.release_recv(slot);
            let c = &sh.counters;
            c.copy(len as u64);
            LinkCounters::add(&c.bytes_received, len as u64);
            if self.assembling.len() > sh.max_frame {
                self.core.fail(CoreError::Protocol(format!(
                    "frame exceeds the maximum of {} bytes",
                    sh.max_frame
                )));
                break;
            }
            if last {
                let frame = std::mem::take(&mut self.assembling).freeze();
                LinkCounters::add(&c.frames_received, 1);
                self.queued_heap += frame.len();
                self.incoming.push_back((frame, false));
                sh.rx_gen.fetch_add(1, Ordering::Relaxed);
            }
        }
        progress
    }

    /// Checks out send slot `idx` afresh (a previous owner — the NIC — is done with it).
    pub(crate) fn take_send_slot(&mut self, sh: &Shared<Q>, idx: u32) -> Slot {
        nic::take_send(&sh.send_region, self.send_slots[idx as usize].take(), idx)
    }

    /// Records a filled send slot as posted (the NIC owns it until its completion).
    pub(crate) fn hold_posted(&mut self, slot: Slot) -> u32 {
        let idx = slot.index();
        self.send_slots[idx as usize] = Some(slot.into_posted());
        idx
    }

    pub(crate) fn update_gauge(&self, sh: &Shared<Q>) {
        let in_use = (sh.send_region.count() - self.core.free_send_slots()) * sh.slot_size;
        let c = &sh.counters;
        let now = in_use as u64;
        let prev = c.queued_bytes.swap(now, Ordering::Relaxed);
        if now > prev {
            c.queued_bytes_peak.fetch_max(now, Ordering::Relaxed);
        }
    }

    /// Ends the link: the QP goes to the error state (flushing what is posted) and everyone
    /// waiting learns why.
    pub(crate) fn teardown(&mut self, sh: &Shared<Q>, reason: TransportError) {
        if self.error.is_none() {
            self.error = Some(reason.clone());
        }
        if !self.torn_down {
            self.torn_down = true;
            let _ = self.qp.set_error();
            sh.rx_gen.fetch_add(1, Ordering::Relaxed);
            sh.dead.trigger(reason);
        }
    }
}
