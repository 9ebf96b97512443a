//! The verbs entry points on the engine: creating and modifying queue pairs, posting work
//! requests, polling and arming completion queues.

use super::*;

impl State {
    // ----- verbs entry points ----------------------------------------------------------------

    pub(crate) fn create_qp(
        &mut self,
        dev: usize,
        pd: u32,
        send_cq: u32,
        recv_cq: u32,
        caps: QpCaps,
    ) -> u32 {
        let qpn = loop {
            let q = (self.rng.next_u64() as u32) & PSN_MASK;
            if q > 1 && !self.qps.contains_key(&q) {
                break q;
            }
        };
        self.qps.insert(
            qpn,
            QpEntry {
                qpn,
                dev,
                pd,
                send_cq,
                recv_cq,
                state: QpState::Reset,
                caps,
                access: Access::NONE,
                remote: None,
                min_rnr_timer_ns: 0,
                timeout_ns: 0,
                retry_cnt: 0,
                rnr_retry: 0,
                sq_outstanding: 0,
                completed_unsignaled: 0,
                pending: VecDeque::new(),
                unacked: VecDeque::new(),
                next_psn: 0,
                retries: 0,
                rnr_left: 0,
                rnr_wait: false,
                timer_gen: 0,
                timer_scheduled: false,
                retrans_deadline: None,
                kick_scheduled: false,
                rq: VecDeque::new(),
                epsn: 0,
                shm: None,
            },
        );
        qpn
    }

    pub(crate) fn modify_qp(
        &mut self,
        qpn: u32,
        to: QpState,
        attr: &QpAttr,
        now: u64,
        fx: &mut Effects,
    ) -> Result<(), VerbsError> {
        let qp = self
            .qps
            .get_mut(&qpn)
            .ok_or_else(|| VerbsError::InvalidArgument("unknown QP".into()))?;
        let from = qp.state;
        let legal = matches!(
            (from, to),
            (QpState::Reset, QpState::Init)
                | (QpState::Init, QpState::Init)
                | (QpState::Init, QpState::Rtr)
                | (QpState::Rtr, QpState::Rts)
                | (QpState::Rts, QpState::Rts)
                | (_, QpState::Err)
                | (_, QpState::Reset)
        );
        if !legal {
            return Err(VerbsError::IllegalTransition { from, to });
        }
        match to {
            QpState::Init => qp.access = attr.access,
            QpState::Rtr => {
                let remote = attr.remote.ok_or_else(|| {
                    VerbsError::InvalidArgument("RTR needs the remote QP address".into())
                })?;
                qp.remote = Some(remote);
                qp.epsn = attr.rq_psn & PSN_MASK;
                qp.min_rnr_timer_ns = attr.min_rnr_timer.as_nanos() as u64;
            }
            QpState::Rts => {
                if from == QpState::Rtr {
                    qp.next_psn = attr.sq_psn & PSN_MASK;
                }
                qp.timeout_ns = attr.timeout.as_nanos().max(1) as u64;
                qp.retry_cnt = attr.retry_cnt.min(7);
                qp.rnr_retry = attr.rnr_retry.min(7);
                qp.rnr_left = qp.rnr_retry;
            }
            QpState::Err => {
                self.qp_error(qpn, now, fx);
                return Ok(());
            }
            QpState::Reset => {
                qp.shm = None;
                qp.pending.clear();
                qp.unacked.clear();
                qp.rq.clear();
                qp.sq_outstanding = 0;
                qp.completed_unsignaled = 0;
                qp.remote = None;
                qp.rnr_wait = false;
                qp.timer_gen += 1;
                qp.timer_scheduled = false;
                qp.retrans_deadline = None;
                qp.retries = 0;
            }
        }
        qp.state = to;
        if let Some(a) = &qp.shm {
            a.own.set_access(qp.access);
            a.own.set_min_rnr_ns(qp.min_rnr_timer_ns);
            a.own.set_state(super::shm::state_code(to));
        }
        Ok(())
    }

    pub(crate) fn post_send(
        &mut self,
        qpn: u32,
        wrs: &[SendWr<'_>],
        now: u64,
        fx: &mut Effects,
    ) -> Result<(), VerbsError> {
        let qp = self
            .qps
            .get_mut(&qpn)
            .ok_or_else(|| VerbsError::InvalidArgument("unknown QP".into()))?;
        match qp.state {
            QpState::Rts => {}
            QpState::Err => return Err(VerbsError::QpInError),
            s => return Err(VerbsError::InvalidState(s)),
        }
        let depth = qp.caps.max_send_wr as usize;
        if qp.sq_outstanding + wrs.len() > depth {
            return Err(VerbsError::SendQueueFull {
                outstanding: qp.sq_outstanding,
                depth,
            });
        }
        for wr in wrs {
            if let Some(data) = wr.inline {
                if data.len() > qp.caps.max_inline_data as usize {
                    return Err(VerbsError::InlineTooLarge {
                        len: data.len(),
                        max: qp.caps.max_inline_data as usize,
                    });
                }
                if wr.opcode == Opcode::RdmaRead {
                    return Err(VerbsError::InvalidArgument(
                        "RDMA READ cannot be inline".into(),
                    ));
                }
            } else if wr.sges.len() > qp.caps.max_send_sge as usize {
                return Err(VerbsError::TooManySges {
                    count: wr.sges.len(),
                    max: qp.caps.max_send_sge as usize,
                });
            }
            let needs_remote = matches!(
                wr.opcode,
                Opcode::RdmaWrite | Opcode::RdmaWriteWithImm | Opcode::RdmaRead
            );
            if needs_remote != wr.remote.is_some() {
                return Err(VerbsError::InvalidArgument(format!(
                    "{:?} {} a remote address",
                    wr.opcode,
                    if needs_remote { "needs" } else { "takes no" }
                )));
            }
            let needs_imm = matches!(wr.opcode, Opcode::SendWithImm | Opcode::RdmaWriteWithImm);
            if needs_imm != wr.imm.is_some() {
                return Err(VerbsError::InvalidArgument(format!(
                    "{:?} {} immediate data",
                    wr.opcode,
                    if needs_imm { "needs" } else { "takes no" }
                )));
            }
        }
        for wr in wrs {
            qp.pending.push_back(WrEntry {
                wr_id: wr.wr_id,
                opcode: wr.opcode,
                sges: if wr.inline.is_some() {
                    SgeList::new()
                } else {
                    SgeList::from_slice(wr.sges)
                },
                inline: wr.inline.map(<[u8]>::to_vec),
                imm: wr.imm,
                signaled: wr.signaled,
                solicited: wr.solicited,
                remote: wr.remote,
                psn: 0,
            });
            qp.sq_outstanding += 1;
        }
        if qp.shm.as_ref().is_some_and(|a| a.peer.is_some()) {
            // Shared-memory mode: the NIC's work happens here, in the caller's thread.
            self.shm_pump(qpn, now, fx);
            return Ok(());
        }
        if !qp.kick_scheduled {
            qp.kick_scheduled = true;
            self.schedule_now(Event::Kick { qpn }, fx);
        }
        Ok(())
    }

    pub(crate) fn post_recv(&mut self, qpn: u32, wrs: &[RecvWr<'_>]) -> Result<(), VerbsError> {
        let qp = self
            .qps
            .get_mut(&qpn)
            .ok_or_else(|| VerbsError::InvalidArgument("unknown QP".into()))?;
        match qp.state {
            QpState::Reset => return Err(VerbsError::InvalidState(QpState::Reset)),
            QpState::Err => return Err(VerbsError::QpInError),
            _ => {}
        }
        let depth = qp.caps.max_recv_wr as usize;
        let posted = qp.rq.len() + qp.shm.as_ref().map_or(0, |a| a.own.len());
        if posted + wrs.len() > depth {
            return Err(VerbsError::RecvQueueFull { depth });
        }
        if let Some(wr) = wrs
            .iter()
            .find(|w| w.sges.len() > qp.caps.max_recv_sge as usize)
        {
            return Err(VerbsError::TooManySges {
                count: wr.sges.len(),
                max: qp.caps.max_recv_sge as usize,
            });
        }
        if let Some(a) = &qp.shm {
            for w in wrs {
                if !a.own.push(w.wr_id, w.sges) {
                    return Err(VerbsError::RecvQueueFull { depth });
                }
            }
            return Ok(());
        }
        qp.rq.extend(wrs.iter().map(|w| RecvEntry {
            wr_id: w.wr_id,
            sges: SgeList::from_slice(w.sges),
        }));
        Ok(())
    }

    pub(crate) fn poll_cq(
        &mut self,
        cq: u32,
        out: &mut [WorkCompletion],
    ) -> Result<usize, VerbsError> {
        let cq = self
            .cqs
            .get_mut(&cq)
            .ok_or_else(|| VerbsError::InvalidArgument("unknown CQ".into()))?;
        if cq.overflowed {
            // An overflowed CQ is in error: what it holds can no longer be trusted.
            return Err(VerbsError::CqOverflow);
        }
        let n = out.len().min(cq.entries.len());
        for (slot, wc) in out.iter_mut().zip(cq.entries.drain(..n)) {
            *slot = wc;
        }
        cq.shared.ready.store(
            cq.entries.len() + cq.overflowed as usize,
            std::sync::atomic::Ordering::Release,
        );
        Ok(n)
    }

    /// Arms the CQ; if a qualifying completion is already queued, notifies at once (hardware
    /// would not, but the arm-then-poll discipline makes this harmless and it avoids a lost
    /// wake-up window in the simulator).
    pub(crate) fn arm_cq(&mut self, cq: u32, solicited_only: bool) -> Result<(), VerbsError> {
        let cq = self
            .cqs
            .get_mut(&cq)
            .ok_or_else(|| VerbsError::InvalidArgument("unknown CQ".into()))?;
        match cq.shared.ring.get() {
            Some(r) => r.arm(solicited_only),
            None => cq.armed = Some(solicited_only),
        }
        Ok(())
    }
}
