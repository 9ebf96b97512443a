//! Where the core's work becomes verbs work requests: receive slots to post become receive
//! requests over their registered addresses, and each send (a frame in a send slot, or a
//! control message with no data) becomes a SEND_WITH_IMM carrying the core's immediate.
//! The driver and the core's test harness both post through [`PostBuffers`], whose buffers are
//! reused from one post to the next (no allocation per message once warm).

use super::core::{RecvWork, SendWork};
use super::memory::SlotRegion;
use super::verbs::{Payload, RecvRequest, SendOp, SendRequest, Sge};

/// Receive slots to post: the core's work over its region and key.
#[derive(Debug, Clone, Copy)]
pub struct RecvPost<'a> {
    work: &'a [RecvWork],
    region: &'a SlotRegion,
    lkey: u32,
}

impl<'a> RecvPost<'a> {
    /// Receive work `work` (whole slots of `region`, registered under `lkey`).
    pub fn new(work: &'a [RecvWork], region: &'a SlotRegion, lkey: u32) -> Self {
        Self { work, region, lkey }
    }
}

/// Work-request buffers reused across posts.
#[derive(Debug, Default)]
pub struct PostBuffers {
    recv: Vec<RecvRequest>,
    sges: Vec<Option<Sge>>,
    send: Vec<SendRequest<'static>>,
}

/// An empty vector of another lifetime on the same allocation (`SendRequest<'a>` and
/// `SendRequest<'b>` have one layout, so the standard library collects in place).
fn recycle<'b>(mut v: Vec<SendRequest<'_>>) -> Vec<SendRequest<'b>> {
    v.clear();
    v.into_iter().map(|_| unreachable!("cleared")).collect()
}

impl PostBuffers {
    /// The receive requests of `post` (each a whole receive slot).
    pub fn recv(&mut self, post: RecvPost<'_>) -> &[RecvRequest] {
        self.recv.clear();
        self.recv.extend(post.work.iter().map(|w| RecvRequest {
            wr_id: w.wr_id,
            sge: Sge {
                addr: post.region.addr_of(w.slot),
                len: post.region.slot_size() as u32,
                lkey: post.lkey,
            },
        }));
        &self.recv
    }

    /// Builds the send requests of `work` (a slot's first `len` bytes, or no data for a
    /// control message) and hands them to `post` (one doorbell for all of them).
    pub fn send<R>(
        &mut self,
        work: &[SendWork],
        region: &SlotRegion,
        lkey: u32,
        post: impl FnOnce(&[SendRequest<'_>]) -> R,
    ) -> R {
        self.sges.clear();
        self.sges.extend(work.iter().map(|w| {
            w.slot.map(|idx| Sge {
                addr: region.addr_of(idx),
                len: w.len,
                lkey,
            })
        }));
        let mut reqs = recycle(std::mem::take(&mut self.send));
        reqs.extend(work.iter().zip(&self.sges).map(|(w, sge)| SendRequest {
            wr_id: w.wr_id,
            op: SendOp::SendImm(w.imm),
            payload: Payload::Sges(sge.as_ref().map(std::slice::from_ref).unwrap_or(&[])),
            signaled: w.signaled,
            solicited: w.solicited,
        }));
        let r = post(&reqs);
        self.send = recycle(reqs);
        r
    }
}
