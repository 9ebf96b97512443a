//! Where the driver hands registered memory to the device and takes it back: its only
//! `unsafe`. Each function relies on the [`Core`](crate::rdma::core::Core)'s bookkeeping,
//! which the driver follows exactly:
//! - a receive slot is handed out for posting ([`Core::poll_recv_posts`]) only after the
//!   application's view of it was dropped (the slot checked in) or a control message in it
//!   was consumed, so no Rust reference to it exists while it is posted;
//! - a frame or chunk event names a receive slot only after its receive completed;
//! - a send slot is posted from a [`PostedSlot`] (still checked out, no access to its bytes),
//!   and comes back from the free list ([`Core::alloc_send_slot`]) only after the signalled
//!   completion that covers its send, or a flush.
//!
//! [`Core::poll_recv_posts`]: crate::rdma::core::Core::poll_recv_posts
//! [`Core::alloc_send_slot`]: crate::rdma::core::Core::alloc_send_slot

#![allow(unsafe_code)]

use std::sync::Arc;

use crate::rdma::core::{RecvWork, SendWork};
use crate::rdma::memory::{PostedSlot, Slot, SlotRegion};
use crate::rdma::post::{PostBuffers, RecvPost};
use crate::rdma::verbs::{VerbsError, VerbsQp};

/// Posts the core's receive work (whole slots of `region`).
pub(super) fn post_recv<Q: VerbsQp>(
    qp: &mut Q,
    bufs: &mut PostBuffers,
    work: &[RecvWork],
    region: &SlotRegion,
    lkey: u32,
) -> Result<(), VerbsError> {
    let reqs = bufs.recv(RecvPost::new(work, region, lkey));
    // SAFETY: every request names a whole slot of `region`, registered under `lkey` for the
    // link's life (the registration outlives the QP); the core hands a slot out for posting
    // only while no view of it exists (module docs), and the driver checks it out again only
    // after its completion.
    unsafe { qp.post_recv(reqs) }
}

/// Posts the core's send work: data from send slots held as [`PostedSlot`]s, control
/// messages without data.
pub(super) fn post_send<Q: VerbsQp>(
    qp: &mut Q,
    bufs: &mut PostBuffers,
    work: &[SendWork],
    region: &SlotRegion,
    lkey: u32,
) -> Result<(), VerbsError> {
    bufs.send(work, region, lkey, |reqs| {
        // SAFETY: each data request names the first bytes of a send slot of `region`
        // (registered under `lkey` for the link's life) that the driver holds as a
        // `PostedSlot` — no access to its bytes — until the completion that frees it.
        unsafe { qp.post_send(reqs) }
    })
}

/// The receive slot a frame or chunk event names, for the application or a copy.
pub(super) fn take_received(region: &Arc<SlotRegion>, idx: u32) -> Slot {
    // SAFETY: the core reports a frame or chunk in slot `idx` only after that receive's
    // completion was polled: the device no longer writes it.
    unsafe { region.checkout(idx) }
}

/// A send slot the core handed out, taken back from its last send if it had one.
pub(super) fn take_send(region: &Arc<SlotRegion>, previous: Option<PostedSlot>, idx: u32) -> Slot {
    // SAFETY: the core returns a send slot to its free list only after the signalled
    // completion covering its last send (or a flush), so the device no longer reads it.
    drop(previous.map(|p| unsafe { p.into_slot() }));
    // SAFETY: as above; and a slot never sent was never posted.
    unsafe { region.checkout(idx) }
}
