//! The sending half: the sender's own task takes a registered send slot, encodes the frame
//! into it and posts the work request (no hand-off to another task). Waiting for room — free
//! slots, the peer's credits — arms the completion queues so the completion that frees it
//! wakes the sender directly.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::state::Shared;
use crate::codec::FrameWrite;
use crate::counters::LinkCounters;
use crate::error::TransportError;
use crate::link::{FrameBuf, LinkTx};
use crate::rdma::core::Outgoing;
use crate::rdma::memory::Slot;
use crate::rdma::verbs::VerbsQp;

/// Sending half of an RDMA link.
pub struct RdmaTx<Q: VerbsQp> {
    shared: Arc<Shared<Q>>,
}

impl<Q: VerbsQp> std::fmt::Debug for RdmaTx<Q> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RdmaTx").finish_non_exhaustive()
    }
}

impl<Q: VerbsQp> RdmaTx<Q> {
    pub(super) fn new(shared: Arc<Shared<Q>>) -> Self {
        Self { shared }
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
            RdmaBuf::Slot(SlotBuf { counters, .. }) | RdmaBuf::Large(_, counters) => counters,
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
            let _waiting = {
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
                // No room: completions may be waiting to free some. Then arm, so the
                // completion that frees room wakes this task, and look once more.
                if sh.drive(&mut inner, false) {
                    continue;
                }
                let _ = inner.qp.arm(true);
                if sh.drive(&mut inner, false) {
                    continue;
                }
                sh.tx_waiter()
            };
            LinkCounters::add(&sh.counters.credit_waits, 1);
            tokio::select! {
                _ = sh.wait_channel() => {}
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
                Outgoing::Slot {
                    slot: inner.hold_posted(slot),
                    len: len as u32,
                }
            }
            RdmaBuf::Large(bytes, _) => Outgoing::Large(bytes.freeze()),
        };
        inner.core.send(frame).map_err(|_| TransportError::Closed)?;
        // Posts it now, from this task.
        sh.drive(&mut inner, false);
        Ok(())
    }

    async fn close(&self) {
        let sh = &self.shared;
        {
            let mut inner = sh.lock();
            inner.core.close();
            sh.drive(&mut inner, false);
        }
        sh.wake_background.notify_waiters();
        loop {
            let ready = sh.tx_ready.notified();
            tokio::pin!(ready);
            ready.as_mut().enable();
            let _waiting = {
                let mut inner = sh.lock();
                sh.drive(&mut inner, false);
                if inner.closed || inner.torn_down {
                    inner.teardown(sh, TransportError::Closed);
                    break;
                }
                let _ = inner.qp.arm(true);
                if sh.drive(&mut inner, false) {
                    continue;
                }
                sh.tx_waiter()
            };
            tokio::select! {
                _ = sh.wait_channel() => {}
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
