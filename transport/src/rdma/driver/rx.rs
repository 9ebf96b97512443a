//! The receiving half: the reading task polls the completion queues itself and takes each
//! frame from the registered slot it landed in — no driver task in between. With nothing
//! there it spins for a bounded time (busy-poll mode, lock-free checks between polls) or arms
//! the queues, polls once more, and sleeps on the completion channel (event mode).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;

use super::PollMode;
use super::background::SpinOnce;
use super::state::Shared;
use crate::counters::LinkCounters;
use crate::error::TransportError;
use crate::link::LinkRx;
use crate::rdma::verbs::VerbsQp;

/// Spins between clock reads while busy-polling.
const SPINS_PER_CLOCK_READ: u32 = 64;

/// Receiving half of an RDMA link.
pub struct RdmaRx<Q: VerbsQp> {
    shared: Arc<Shared<Q>>,
}

impl<Q: VerbsQp> std::fmt::Debug for RdmaRx<Q> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RdmaRx").finish_non_exhaustive()
    }
}

impl<Q: VerbsQp> RdmaRx<Q> {
    pub(super) fn new(shared: Arc<Shared<Q>>) -> Self {
        Self { shared }
    }

    /// Busy-poll: spins until a completion, a returned slot or a frame queued by another task
    /// may be there (true) or `spin` has passed since `since` (false).
    async fn spin(&self, since: Instant, spin: std::time::Duration) -> bool {
        let sh = &self.shared;
        let seen = sh.rx_gen.load(Ordering::Relaxed);
        let mut spins = 0u32;
        loop {
            SpinOnce::default().await;
            if (sh.may_complete)()
                || sh.recv_region.has_returned()
                || sh.rx_gen.load(Ordering::Relaxed) != seen
            {
                return true;
            }
            spins += 1;
            if spins.is_multiple_of(SPINS_PER_CLOCK_READ) && since.elapsed() >= spin {
                return false;
            }
        }
    }
}

impl<Q: VerbsQp> LinkRx for RdmaRx<Q> {
    async fn recv(&mut self) -> Result<Option<Bytes>, TransportError> {
        let sh = self.shared.clone();
        let started = Instant::now();
        loop {
            let ready = sh.rx_ready.notified();
            tokio::pin!(ready);
            ready.as_mut().enable();
            {
                let mut inner = sh.lock();
                if let Some(f) = inner.take_frame() {
                    return Ok(Some(f));
                }
                sh.drive(&mut inner, true);
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
            if let PollMode::BusyPoll { spin } = sh.mode
                && started.elapsed() < spin
            {
                self.spin(started, spin).await;
                continue;
            }
            {
                // Park: arm, then poll once more (a completion may have landed before the arm).
                let mut inner = sh.lock();
                let _ = inner.qp.arm(true);
                sh.drive(&mut inner, true);
                if inner.readable() {
                    continue;
                }
                sh.park_reader(true);
            }
            LinkCounters::add(&sh.counters.recv_calls, 1);
            tokio::select! {
                _ = sh.wait_channel() => {}
                _ = &mut ready => {}
                _ = sh.dead.wait() => {}
            }
            sh.park_reader(false);
        }
    }
}
