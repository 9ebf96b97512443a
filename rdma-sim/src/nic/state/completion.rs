//! Completions and errors: pushing work completions (with injected delays), completing sends,
//! moving a queue pair to the error state and flushing it.

use super::*;

impl State {
    // ----- completions and errors -----------------------------------------------------------

    pub(super) fn push_cqe(&mut self, cq_id: u32, wc: WorkCompletion, now: u64, fx: &mut Effects) {
        if let Some((lo, hi)) = self.faults.completion_delay {
            let d = self.rng.between(lo.as_nanos() as u64, hi.as_nanos() as u64);
            if let Some(cq) = self.cqs.get_mut(&cq_id) {
                let at = (now + d).max(cq.deliver_after);
                cq.deliver_after = at;
                self.schedule(at, Event::Cqe { cq: cq_id, wc }, fx);
            }
            return;
        }
        self.push_cqe_now(cq_id, wc, now, fx);
    }

    pub(super) fn push_cqe_now(
        &mut self,
        cq_id: u32,
        wc: WorkCompletion,
        now: u64,
        fx: &mut Effects,
    ) {
        let Some(cq) = self.cqs.get_mut(&cq_id) else {
            return;
        };
        if cq.overflowed {
            return;
        }
        if let Some(ring) = cq.shared.ring.get() {
            // Attached to another process: every completion of this CQ goes to the shared ring.
            if ring.push(&wc) {
                if ring.take_armed(&wc)
                    && let Some(ch) = &cq.channel
                {
                    fx.notify.push(ch.clone());
                    self.shm_stats.doorbells += 1;
                }
                return;
            }
            self.cq_overflow(cq_id, now, fx);
            return;
        }
        if cq.entries.len() >= cq.cap {
            self.cq_overflow(cq_id, now, fx);
            return;
        }
        cq.entries.push_back(wc);
        cq.shared
            .ready
            .fetch_add(1, std::sync::atomic::Ordering::Release);
        if let Some(solicited_only) = cq.armed
            && (!solicited_only || wc.solicited || wc.status != WcStatus::Success)
        {
            cq.armed = None;
            if let Some(ch) = &cq.channel {
                fx.notify.push(ch.clone());
            }
        }
    }

    /// The CQ overflowed: it and every QP using it go to error, once.
    pub(crate) fn cq_overflow(&mut self, cq_id: u32, now: u64, fx: &mut Effects) {
        let Some(cq) = self.cqs.get_mut(&cq_id) else {
            return;
        };
        if cq.overflowed {
            return;
        }
        cq.overflowed = true;
        if let Some(r) = cq.shared.ring.get() {
            r.set_overflow();
        }
        cq.shared
            .ready
            .fetch_add(1, std::sync::atomic::Ordering::Release);
        let dev = cq.dev;
        if let Some(ch) = &cq.channel {
            fx.notify.push(ch.clone());
        }
        self.devices[dev]
            .async_events
            .push_back(AsyncEvent::CqOverflow { cq: cq_id });
        let victims: Vec<u32> = self
            .qps
            .values()
            .filter(|q| q.send_cq == cq_id || q.recv_cq == cq_id)
            .map(|q| q.qpn)
            .collect();
        for qpn in victims {
            self.qp_error(qpn, now, fx);
        }
    }

    pub(super) fn complete_send(
        &mut self,
        qpn: u32,
        wr: &WrEntry,
        status: WcStatus,
        byte_len: u32,
        now: u64,
        fx: &mut Effects,
    ) {
        let Some(qp) = self.qps.get_mut(&qpn) else {
            return;
        };
        if status == WcStatus::Success && !wr.signaled {
            qp.completed_unsignaled += 1;
            return;
        }
        // A signaled completion frees its slot and those of the unsignaled requests before it.
        let freed = 1 + qp.completed_unsignaled;
        qp.completed_unsignaled = 0;
        qp.sq_outstanding = qp.sq_outstanding.saturating_sub(freed);
        let cq = qp.send_cq;
        let mut c = wc(wr.wr_id, status, send_opcode(wr.opcode), qpn);
        c.byte_len = byte_len;
        self.push_cqe(cq, c, now, fx);
    }

    /// Moves the QP to ERR and flushes every outstanding work request.
    pub(super) fn qp_error(&mut self, qpn: u32, now: u64, fx: &mut Effects) {
        let Some(qp) = self.qps.get_mut(&qpn) else {
            return;
        };
        if qp.state == QpState::Err {
            return;
        }
        qp.state = QpState::Err;
        qp.timer_gen += 1;
        qp.timer_scheduled = false;
        qp.retrans_deadline = None;
        qp.rnr_wait = false;
        qp.sq_outstanding = 0;
        qp.completed_unsignaled = 0;
        let sends: Vec<WrEntry> = qp.unacked.drain(..).chain(qp.pending.drain(..)).collect();
        let mut recvs: Vec<RecvEntry> = qp.rq.drain(..).collect();
        if let Some(a) = &qp.shm {
            // Tell the peer first, so that it stops taking receives, then flush what is left.
            a.own.set_state(crate::nic::shm::qp_state::ERR);
            while let Some(r) = a.own.pop() {
                recvs.push(RecvEntry {
                    wr_id: r.wr_id,
                    sges: r.sges,
                });
            }
        }
        let (send_cq, recv_cq) = (qp.send_cq, qp.recv_cq);
        for wr in sends {
            self.push_cqe(
                send_cq,
                wc(wr.wr_id, WcStatus::WrFlushErr, send_opcode(wr.opcode), qpn),
                now,
                fx,
            );
        }
        for r in recvs {
            self.push_cqe(
                recv_cq,
                wc(r.wr_id, WcStatus::WrFlushErr, WcOpcode::Recv, qpn),
                now,
                fx,
            );
        }
    }
}
