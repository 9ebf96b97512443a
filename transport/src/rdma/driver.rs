//! The tokio driver of an RDMA link: it feeds completions and timers to the [`Core`], posts the
//! work requests the core asks for, lends received slots to the application as `Bytes`, and
//! exposes the link as [`LinkTx`] / [`LinkRx`]. Sends are posted from the sender's own task
//! (no hand-off); a driver task handles completions in event mode (completion channel
//! registered with tokio) or busy-poll mode (spin while traffic flows, then arm and park).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::io::unix::AsyncFd;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::core::{Core, CoreError, Event, Outgoing, RecvWork, SendWork};
use super::memory::{PostedSlot, Slot, SlotRegion};
use super::post;
use super::sys::{ChannelFd, register};
use super::verbs::{Registration, VerbsError, VerbsQp};
use crate::codec::FrameWrite;
use crate::counters::LinkCounters;
use crate::error::TransportError;
use crate::link::{FrameBuf, LinkRx, LinkTx};
use crate::signal::DeadSignal;

/// How completions are waited for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollMode {
    /// Arm the completion queues and sleep on the completion channel.
    Event,
    /// Poll continuously while traffic flows; after `spin` without any, arm and sleep.
    BusyPoll {
        /// How long to keep spinning after the last activity.
        spin: Duration,
    },
}

/// Everything one link owns below the core.
pub(crate) struct LinkParts<Q: VerbsQp> {
    pub qp: Q,
    pub send: Arc<SlotRegion>,
    pub recv: Arc<SlotRegion>,
    pub lkey: u32,
    pub registration: Registration,
    pub core: Core,
    pub mode: PollMode,
    pub max_frame: usize,
    pub max_held: usize,
    pub max_unread_bytes: usize,
    pub bootstrap: TcpStream,
}

struct Inner<Q: VerbsQp> {
    core: Core,
    qp: Q,
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
    eof: bool,
    closed: bool,
    error: Option<TransportError>,
    torn_down: bool,
    wcs: Vec<super::verbs::Completion>,
    recv_work: Vec<RecvWork>,
    send_work: Vec<SendWork>,
    returned: Vec<u32>,
    frames_posted: u64,
}

struct Shared<Q: VerbsQp> {
    inner: Mutex<Inner<Q>>,
    rx_ready: Notify,
    tx_ready: Notify,
    wake_driver: Notify,
    dead: DeadSignal,
    send_region: Arc<SlotRegion>,
    recv_region: Arc<SlotRegion>,
    lkey: u32,
    slot_size: usize,
    max_frame: usize,
    max_held: usize,
    max_unread_bytes: usize,
    counters: Arc<LinkCounters>,
    epoch: Instant,
    mode: PollMode,
    /// Next core timer (ns since `epoch`; `u64::MAX` if none), for the lock-free idle check.
    next_timer: std::sync::atomic::AtomicU64,
    /// The QP can be polled without the inner lock's help: completions are hinted here.
    may_complete: Arc<dyn Fn() -> bool + Send + Sync>,
    _registration: Registration,
}

impl<Q: VerbsQp> Shared<Q> {
    /// The link's state. A poisoned lock (a panic mid-update) fails the link: its slots and
    /// credits can no longer be trusted, so it is torn down and its calls fail, while other
    /// links carry on.
    fn lock(&self) -> MutexGuard<'_, Inner<Q>> {
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

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn wake_all(&self) {
        self.rx_ready.notify_waiters();
        self.tx_ready.notify_waiters();
        self.wake_driver.notify_waiters();
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
        sh.next_timer.store(
            self.core.poll_timeout().unwrap_or(u64::MAX),
            std::sync::atomic::Ordering::Relaxed,
        );
        progress
    }

    fn on_event(&mut self, event: Event, sh: &Shared<Q>) {
        let c = &sh.counters;
        match event {
            Event::Frame { slot, len } => {
                let s = sh.recv_region.checkout(slot);
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
                LinkCounters::add(&c.frames_received, 1);
                LinkCounters::add(&c.bytes_received, len as u64);
            }
            Event::Chunk { slot, len, last } => self.pending_chunks.push_back((slot, len, last)),
            Event::PeerClosed => self.eof = true,
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
            let reqs = post::recv_requests(&self.recv_work, &sh.recv_region, sh.lkey);
            LinkCounters::add(&sh.counters.send_calls, 1);
            if let Err(e) = self.qp.post_recv(&reqs) {
                self.core
                    .fail(CoreError::Protocol(format!("post_recv failed: {e}")));
            }
        }
        self.send_work.clear();
        self.core.poll_transmit(now, &mut self.send_work);
        if self.send_work.is_empty() {
            return;
        }
        let work = std::mem::take(&mut self.send_work);
        let mut bytes = 0u64;
        for w in &work {
            if let Some(idx) = w.slot {
                if let Some(data) = &w.copy_from {
                    let mut s = self.take_send_slot(sh, idx);
                    s.as_mut_slice()[..data.len()].copy_from_slice(data);
                    self.send_slots[idx as usize] = Some(s.into_posted());
                    sh.counters.copy(data.len() as u64);
                }
                bytes += w.len as u64;
                self.frames_posted += 1;
            }
        }
        let sges = post::send_sges(&work, &sh.send_region, sh.lkey);
        let reqs = post::send_requests(&work, &sges);
        let result = self.qp.post_send(&reqs);
        drop(reqs);
        self.send_work = work;
        LinkCounters::add(&sh.counters.send_calls, 1);
        match result {
            Ok(()) => {
                let data = sges.iter().filter(|s| s.is_some()).count() as u64;
                LinkCounters::add(&sh.counters.frames_sent, data);
                LinkCounters::add(&sh.counters.bytes_sent, bytes);
            }
            Err(e) => self
                .core
                .fail(CoreError::Protocol(format!("post_send failed: {e}"))),
        }
    }

    fn take_frame(&mut self) -> Option<Bytes> {
        let (frame, lent) = self.incoming.pop_front()?;
        if lent {
            self.queued_lent -= 1;
        } else {
            self.queued_heap -= frame.len();
        }
        Some(frame)
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
            let s = sh.recv_region.checkout(slot);
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
            }
        }
        progress
    }

    /// Checks out send slot `idx` afresh (a previous owner — the NIC — is done with it).
    fn take_send_slot(&mut self, sh: &Shared<Q>, idx: u32) -> Slot {
        drop(
            self.send_slots[idx as usize]
                .take()
                .map(PostedSlot::into_slot),
        );
        sh.send_region.checkout(idx)
    }

    fn update_gauge(&self, sh: &Shared<Q>) {
        let in_use = (sh.send_region.count() - self.core.free_send_slots()) * sh.slot_size;
        let c = &sh.counters;
        let now = in_use as u64;
        let prev = c
            .queued_bytes
            .swap(now, std::sync::atomic::Ordering::Relaxed);
        if now > prev {
            c.queued_bytes_peak
                .fetch_max(now, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Ends the link: the QP goes to the error state (flushing what is posted) and everyone
    /// waiting learns why.
    fn teardown(&mut self, sh: &Shared<Q>, reason: TransportError) {
        if self.error.is_none() {
            self.error = Some(reason.clone());
        }
        if !self.torn_down {
            self.torn_down = true;
            let _ = self.qp.set_error();
            sh.dead.trigger(reason);
        }
    }
}

/// An established RDMA link, before it is split into halves.
pub struct RdmaConn<Q: VerbsQp> {
    shared: Arc<Shared<Q>>,
    channel: Option<ChannelFd>,
    bootstrap: TcpStream,
}

impl<Q: VerbsQp> std::fmt::Debug for RdmaConn<Q> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RdmaConn").finish_non_exhaustive()
    }
}

impl<Q: VerbsQp> RdmaConn<Q> {
    /// Wraps resources whose QP is connected and whose receives may be posted now.
    pub(crate) fn new(parts: LinkParts<Q>, counters: Arc<LinkCounters>) -> Self {
        let channel = parts.qp.channel();
        let may_complete = parts.qp.completion_hint();
        let slots = parts.send.count();
        let slot_size = parts.send.slot_size();
        let mut inner = Inner {
            core: parts.core,
            qp: parts.qp,
            send_slots: (0..slots).map(|_| None).collect(),
            incoming: VecDeque::new(),
            queued_lent: 0,
            queued_heap: 0,
            pending_chunks: VecDeque::new(),
            assembling: BytesMut::new(),
            eof: false,
            closed: false,
            error: None,
            torn_down: false,
            wcs: Vec::with_capacity(32),
            recv_work: Vec::new(),
            send_work: Vec::new(),
            returned: Vec::new(),
            frames_posted: 0,
        };
        // Post every receive before the peer is told it may send.
        let mut work = Vec::new();
        inner.core.poll_recv_posts(&mut work);
        inner.recv_work = work;
        let shared = Arc::new(Shared {
            rx_ready: Notify::new(),
            tx_ready: Notify::new(),
            wake_driver: Notify::new(),
            dead: DeadSignal::default(),
            send_region: parts.send,
            recv_region: parts.recv,
            lkey: parts.lkey,
            slot_size,
            max_frame: parts.max_frame,
            max_held: parts.max_held,
            max_unread_bytes: parts.max_unread_bytes,
            counters,
            epoch: Instant::now(),
            mode: parts.mode,
            next_timer: std::sync::atomic::AtomicU64::new(0),
            may_complete,
            _registration: parts.registration,
            inner: Mutex::new(inner),
        });
        {
            let mut inner = shared.lock();
            let work = std::mem::take(&mut inner.recv_work);
            let reqs = post::recv_requests(&work, &shared.recv_region, shared.lkey);
            if let Err(e) = inner.qp.post_recv(&reqs) {
                inner.core.fail(CoreError::Protocol(format!(
                    "initial post_recv failed: {e}"
                )));
            }
        }
        Self {
            shared,
            channel,
            bootstrap: parts.bootstrap,
        }
    }

    /// The bootstrap socket (for the last handshake messages).
    pub(crate) fn bootstrap_mut(&mut self) -> &mut TcpStream {
        &mut self.bootstrap
    }

    /// Starts the driver and the bootstrap watcher; returns the halves.
    pub(crate) fn split(self) -> (RdmaTx<Q>, RdmaRx<Q>) {
        let channel = match self.channel.map(register).transpose() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "completion channel not usable; polling on timers");
                None
            }
        };
        tokio::spawn(run_driver(self.shared.clone(), channel));
        tokio::spawn(watch_bootstrap(self.shared.clone(), self.bootstrap));
        (
            RdmaTx {
                shared: self.shared.clone(),
            },
            RdmaRx {
                shared: self.shared,
            },
        )
    }
}

/// Spin iterations between clock reads in busy-poll mode.
const SPINS_PER_CLOCK_READ: u32 = 64;

async fn run_driver<Q: VerbsQp>(sh: Arc<Shared<Q>>, channel: Option<AsyncFd<ChannelFd>>) {
    let mut last_progress = Instant::now();
    let mut spins = 0u32;
    loop {
        // Busy-poll fast path: while nothing is hinted (no completion, no returned slot, no timer
        // due), spinning costs a few atomic loads, not the lock and a full round.
        if let PollMode::BusyPoll { spin } = sh.mode {
            spins += 1;
            let hinted = (sh.may_complete)() || sh.recv_region.has_returned();
            if !hinted && !spins.is_multiple_of(SPINS_PER_CLOCK_READ) {
                SpinOnce(false).await;
                continue;
            }
            if !hinted {
                let now = sh.now();
                let timer_due = sh.next_timer.load(std::sync::atomic::Ordering::Relaxed) <= now;
                if !timer_due && last_progress.elapsed() < spin {
                    SpinOnce(false).await;
                    continue;
                }
            }
        }
        let (progress, deadline, finished) = {
            let mut inner = sh.lock();
            let p = inner.drive(&sh);
            (p, inner.core.poll_timeout(), inner.torn_down)
        };
        if progress {
            last_progress = Instant::now();
            sh.rx_ready.notify_waiters();
            sh.tx_ready.notify_waiters();
        }
        if finished {
            sh.wake_all();
            return;
        }
        if let PollMode::BusyPoll { spin } = sh.mode
            && last_progress.elapsed() < spin
        {
            SpinOnce(false).await;
            continue;
        }
        spins = 0;
        // Park: arm, then poll once more (a completion may have landed before the arm).
        let wake = sh.wake_driver.notified();
        let returned = sh.recv_region.returned_notify.notified();
        tokio::pin!(wake, returned);
        wake.as_mut().enable();
        returned.as_mut().enable();
        {
            let mut inner = sh.lock();
            let _ = inner.qp.arm(true);
            if inner.drive(&sh) {
                drop(inner);
                last_progress = Instant::now();
                sh.rx_ready.notify_waiters();
                sh.tx_ready.notify_waiters();
                continue;
            }
        }
        LinkCounters::add(&sh.counters.recv_calls, 1);
        let sleep = async {
            match deadline {
                Some(t) => {
                    let at = sh.epoch + Duration::from_nanos(t);
                    tokio::time::sleep_until(at.into()).await
                }
                None => std::future::pending().await,
            }
        };
        let readable = async {
            match &channel {
                Some(fd) => match fd.readable().await {
                    Ok(mut guard) => {
                        sh.lock().qp.take_events();
                        guard.clear_ready();
                    }
                    Err(_) => std::future::pending().await,
                },
                None => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        };
        tokio::select! {
            _ = readable => {}
            _ = &mut wake => {}
            _ = &mut returned => {}
            _ = sleep => {}
            _ = sh.dead.wait() => {}
        }
    }
}

/// Gives other tasks a turn without a trip through the I/O driver: the task wakes itself and
/// goes to the back of the run queue (`tokio::task::yield_now` instead defers the task until
/// the reactor has been polled, which costs an `epoll_wait` per spin).
struct SpinOnce(bool);

impl std::future::Future for SpinOnce {
    type Output = ();
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.0 {
            std::task::Poll::Ready(())
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    }
}

/// The TCP connection of the handshake stays open for liveness: its end (peer process died)
/// fails the link at once, unless the peer had already said goodbye.
async fn watch_bootstrap<Q: VerbsQp>(sh: Arc<Shared<Q>>, mut stream: TcpStream) {
    let mut buf = [0u8; 64];
    let read = tokio::select! {
        r = stream.read(&mut buf) => r,
        _ = sh.dead.wait() => return,
    };
    let mut inner = sh.lock();
    match read {
        // Nothing may follow `Ready` on the bootstrap socket.
        Ok(n) if n > 0 => inner.teardown(
            &sh,
            TransportError::ConnectionLost(
                "protocol violation: data on the bootstrap connection".into(),
            ),
        ),
        _ => {
            inner.drive(&sh);
            if !inner.eof && !inner.closed {
                inner.teardown(
                    &sh,
                    TransportError::ConnectionLost(
                        "bootstrap connection closed (peer gone)".into(),
                    ),
                );
            }
        }
    }
    drop(inner);
    sh.wake_all();
}

/// Sending half of an RDMA link.
pub struct RdmaTx<Q: VerbsQp> {
    shared: Arc<Shared<Q>>,
}

impl<Q: VerbsQp> std::fmt::Debug for RdmaTx<Q> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RdmaTx").finish_non_exhaustive()
    }
}

/// A send buffer of an RDMA link.
#[derive(Debug)]
pub enum RdmaBuf {
    /// A registered send slot (frames up to one slot): the frame is encoded in place.
    Slot(SlotBuf),
    /// A large frame, chunked into send slots as they free up.
    Large(BytesMut, Arc<LinkCounters>),
}

/// Gives an unsent send slot back to its link's free list.
trait ReturnSlot: Send + Sync {
    fn return_send_slot(&self, idx: u32);
}

impl<Q: VerbsQp> ReturnSlot for Shared<Q> {
    fn return_send_slot(&self, idx: u32) {
        {
            let mut inner = self.lock();
            inner.core.free_send_slot(idx);
            inner.update_gauge(self);
        }
        self.tx_ready.notify_waiters();
    }
}

/// A send slot being filled. Dropped unsent, it goes back to the link's free list (else the
/// link would lose a slot for good).
pub struct SlotBuf {
    slot: Option<Slot>,
    len: usize,
    counters: Arc<LinkCounters>,
    home: Arc<dyn ReturnSlot>,
}

impl std::fmt::Debug for SlotBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotBuf")
            .field("slot", &self.slot.as_ref().map(Slot::index))
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl SlotBuf {
    /// Takes the slot and length out for sending (the drop then returns nothing).
    fn take(mut self) -> (Slot, usize) {
        (self.slot.take().expect("a slot until sent"), self.len)
    }
}

impl Drop for SlotBuf {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            let idx = slot.index();
            drop(slot);
            self.home.return_send_slot(idx);
        }
    }
}

impl FrameWrite for RdmaBuf {
    fn put_slice(&mut self, src: &[u8]) {
        match self {
            RdmaBuf::Slot(b) => {
                let len = b.len;
                b.slot.as_mut().expect("a slot until sent").as_mut_slice()[len..len + src.len()]
                    .copy_from_slice(src);
                b.len += src.len();
            }
            RdmaBuf::Large(b, _) => b.extend_from_slice(src),
        }
    }

    fn put_bytes(&mut self, src: Bytes) {
        let counters = match self {
            RdmaBuf::Slot(SlotBuf { counters, .. }) | RdmaBuf::Large(_, counters) => {
                counters.clone()
            }
        };
        counters.copy(src.len() as u64);
        self.put_slice(&src);
    }
}

impl FrameBuf for RdmaBuf {}

impl<Q: VerbsQp> LinkTx for RdmaTx<Q> {
    type Buf = RdmaBuf;

    async fn reserve(&self, frame_len: usize) -> Result<RdmaBuf, TransportError> {
        let sh = &self.shared;
        loop {
            let ready = sh.tx_ready.notified();
            tokio::pin!(ready);
            ready.as_mut().enable();
            {
                let mut inner = sh.lock();
                if let Some(e) = &inner.error {
                    return Err(e.clone());
                }
                if !inner.core.is_running() {
                    return Err(TransportError::Closed);
                }
                if frame_len <= sh.slot_size {
                    if let Some(idx) = inner.core.alloc_send_slot() {
                        let slot = inner.take_send_slot(sh, idx);
                        inner.update_gauge(sh);
                        return Ok(RdmaBuf::Slot(SlotBuf {
                            slot: Some(slot),
                            len: 0,
                            counters: sh.counters.clone(),
                            home: self.shared.clone(),
                        }));
                    }
                } else if inner.core.can_queue_large(frame_len) {
                    return Ok(RdmaBuf::Large(
                        BytesMut::with_capacity(frame_len),
                        sh.counters.clone(),
                    ));
                }
                // No room: completions may be waiting to free some.
                if inner.drive(sh) {
                    continue;
                }
            }
            LinkCounters::add(&sh.counters.credit_waits, 1);
            tokio::select! {
                _ = &mut ready => {}
                reason = sh.dead.wait() => return Err(reason),
            }
        }
    }

    fn send(&self, buf: RdmaBuf) -> Result<(), TransportError> {
        let sh = &self.shared;
        let mut inner = sh.lock();
        if let Some(e) = &inner.error {
            return Err(e.clone());
        }
        let frame = match buf {
            RdmaBuf::Slot(b) => {
                let (slot, len) = b.take();
                let idx = slot.index();
                inner.send_slots[idx as usize] = Some(slot.into_posted());
                Outgoing::Slot {
                    slot: idx,
                    len: len as u32,
                }
            }
            RdmaBuf::Large(bytes, _) => Outgoing::Large(bytes.freeze()),
        };
        inner.core.send(frame).map_err(|_| TransportError::Closed)?;
        inner.drive(sh);
        Ok(())
    }

    async fn close(&self) {
        let sh = &self.shared;
        {
            let mut inner = sh.lock();
            inner.core.close();
            inner.drive(sh);
        }
        sh.wake_driver.notify_waiters();
        loop {
            let ready = sh.tx_ready.notified();
            tokio::pin!(ready);
            ready.as_mut().enable();
            {
                let mut inner = sh.lock();
                inner.drive(sh);
                if inner.closed || inner.torn_down {
                    inner.teardown(sh, TransportError::Closed);
                    break;
                }
            }
            tokio::select! {
                _ = &mut ready => {}
                _ = sh.dead.wait() => break,
            }
        }
        sh.wake_all();
    }

    fn abort(&self, reason: TransportError) {
        let sh = &self.shared;
        sh.lock().teardown(sh, reason);
        sh.wake_all();
    }
}

/// Receiving half of an RDMA link.
pub struct RdmaRx<Q: VerbsQp> {
    shared: Arc<Shared<Q>>,
}

impl<Q: VerbsQp> std::fmt::Debug for RdmaRx<Q> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RdmaRx").finish_non_exhaustive()
    }
}

impl<Q: VerbsQp> LinkRx for RdmaRx<Q> {
    async fn recv(&mut self) -> Result<Option<Bytes>, TransportError> {
        let sh = &self.shared;
        loop {
            let ready = sh.rx_ready.notified();
            tokio::pin!(ready);
            ready.as_mut().enable();
            {
                let mut inner = sh.lock();
                if let Some(f) = inner.take_frame() {
                    return Ok(Some(f));
                }
                if inner.drive(sh) {
                    sh.tx_ready.notify_waiters();
                }
                if let Some(f) = inner.take_frame() {
                    return Ok(Some(f));
                }
                if inner.eof {
                    return Ok(None);
                }
                if let Some(e) = &inner.error {
                    return Err(e.clone());
                }
            }
            tokio::select! {
                _ = &mut ready => {}
                _ = sh.dead.wait() => {}
            }
        }
    }
}
