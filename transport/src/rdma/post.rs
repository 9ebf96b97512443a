//! Where the core's work becomes verbs work requests: receive slots to post become receive
//! requests over their registered addresses, and each send (a frame in a send slot, or a
//! control message with no data) becomes a SEND_WITH_IMM carrying the core's immediate.
//! The driver and the core's test harness both post through here.

use super::core::{RecvWork, SendWork};
use super::memory::SlotRegion;
use super::verbs::{Payload, RecvRequest, SendOp, SendRequest, Sge};

/// Receive requests for `work` (each a whole receive slot of `region`).
pub fn recv_requests(work: &[RecvWork], region: &SlotRegion, lkey: u32) -> Vec<RecvRequest> {
    work.iter()
        .map(|w| RecvRequest {
            wr_id: w.wr_id,
            sge: Sge {
                addr: region.addr_of(w.slot),
                len: region.slot_size() as u32,
                lkey,
            },
        })
        .collect()
}

/// The scatter entry of each send: its slot's first `len` bytes, or none for a control message.
pub fn send_sges(work: &[SendWork], region: &SlotRegion, lkey: u32) -> Vec<Option<Sge>> {
    work.iter()
        .map(|w| {
            w.slot.map(|idx| Sge {
                addr: region.addr_of(idx),
                len: w.len,
                lkey,
            })
        })
        .collect()
}

/// The send requests of `work` over `sges` (from [`send_sges`]).
pub fn send_requests<'a>(work: &[SendWork], sges: &'a [Option<Sge>]) -> Vec<SendRequest<'a>> {
    work.iter()
        .zip(sges)
        .map(|(w, sge)| SendRequest {
            wr_id: w.wr_id,
            op: SendOp::SendImm(w.imm),
            payload: Payload::Sges(sge.as_ref().map(std::slice::from_ref).unwrap_or(&[])),
            signaled: w.signaled,
            solicited: w.solicited,
        })
        .collect()
}
