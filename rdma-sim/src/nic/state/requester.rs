//! The network side and the requester: transmitting packets (faults applied), sending work
//! requests as packets, cumulative acks, go-back-N retransmission, responses.

use super::*;

impl State {
    // ----- network ----------------------------------------------------------------------------

    pub(super) fn transmit(&mut self, pkt: Packet, _now: u64, fx: &mut Effects) {
        self.stats.packets += 1;
        self.stats.bytes += pkt.payload_len() as u64;
        let down = self.faults.links_down.contains(&pkt.src.gid)
            || self.faults.links_down.contains(&pkt.dst.gid);
        if down || self.rng.chance(self.faults.drop_rate) {
            self.stats.dropped += 1;
            return;
        }
        if self.local_dev(&pkt.dst.gid).is_some() {
            self.schedule_now(Event::Deliver { pkt }, fx);
        } else {
            fx.outbound.push(pkt);
        }
    }

    /// Injects a packet that arrived from another process.
    pub(crate) fn inject(&mut self, pkt: Packet, fx: &mut Effects) {
        self.schedule_now(Event::Deliver { pkt }, fx);
    }

    pub(super) fn reply(
        &mut self,
        from: QpAddress,
        to: QpAddress,
        psn: u32,
        body: Body,
        now: u64,
        fx: &mut Effects,
    ) {
        if matches!(body, Body::Nak(NakKind::Rnr(_))) {
            self.stats.rnr_naks += 1;
        }
        self.transmit(
            Packet {
                src: from,
                dst: to,
                psn,
                body,
            },
            now,
            fx,
        );
    }

    // ----- requester ----------------------------------------------------------------------------

    pub(super) fn pump(&mut self, qpn: u32, now: u64, fx: &mut Effects) {
        if self.attached(qpn) {
            return self.shm_pump(qpn, now, fx);
        }
        loop {
            let Some(qp) = self.qps.get_mut(&qpn) else {
                return;
            };
            if qp.state != QpState::Rts || qp.rnr_wait {
                return;
            }
            let Some(mut wr) = qp.pending.pop_front() else {
                return;
            };
            wr.psn = qp.next_psn;
            qp.next_psn = psn_add(qp.next_psn, 1);
            let (dev, pd) = (qp.dev, qp.pd);
            let Some(dst) = qp.remote else {
                return;
            };
            let src = QpAddress {
                gid: self.devices[dev].gid,
                qpn,
            };
            let body = match self.request_body(&wr, dev, pd) {
                Ok(b) => b,
                Err(status) => {
                    self.complete_send(qpn, &wr, status, 0, now, fx);
                    self.qp_error(qpn, now, fx);
                    return;
                }
            };
            let psn = wr.psn;
            let qp = self.qps.get_mut(&qpn).expect("qp exists");
            qp.unacked.push_back(wr);
            if qp.retrans_deadline.is_none() {
                qp.retrans_deadline = Some(now + qp.timeout_ns);
            }
            if !qp.timer_scheduled {
                qp.timer_scheduled = true;
                let (at, generation) = (now + qp.timeout_ns, qp.timer_gen);
                self.schedule(at, Event::Retransmit { qpn, generation }, fx);
            }
            self.transmit(
                Packet {
                    src,
                    dst,
                    psn,
                    body,
                },
                now,
                fx,
            );
        }
    }

    pub(super) fn request_body(&self, wr: &WrEntry, dev: usize, pd: u32) -> Result<Body, WcStatus> {
        let data = || match &wr.inline {
            Some(d) => Ok(d.clone()),
            None => self.gather(&wr.sges, dev, pd),
        };
        Ok(match wr.opcode {
            Opcode::Send | Opcode::SendWithImm => Body::Send {
                imm: wr.imm,
                solicited: wr.solicited,
                data: data()?,
            },
            Opcode::RdmaWrite | Opcode::RdmaWriteWithImm => {
                let r = wr.remote.expect("validated at post");
                Body::Write {
                    raddr: r.addr,
                    rkey: r.rkey,
                    imm: wr.imm,
                    solicited: wr.solicited,
                    data: data()?,
                }
            }
            Opcode::RdmaRead => {
                let r = wr.remote.expect("validated at post");
                Body::ReadReq {
                    raddr: r.addr,
                    rkey: r.rkey,
                    len: wr.sges.iter().map(|s| s.length).sum(),
                }
            }
        })
    }

    /// Completes (successfully) every unacked request up to and including `psn`, stopping at
    /// reads, which only their response completes.
    pub(super) fn ack_through(&mut self, qpn: u32, psn: u32, now: u64, fx: &mut Effects) {
        let mut progressed = false;
        loop {
            let Some(qp) = self.qps.get_mut(&qpn) else {
                return;
            };
            let Some(front) = qp.unacked.front() else {
                break;
            };
            if !psn_le(front.psn, psn) || front.opcode == Opcode::RdmaRead {
                break;
            }
            let wr = qp.unacked.pop_front().expect("front exists");
            progressed = true;
            self.complete_send(qpn, &wr, WcStatus::Success, 0, now, fx);
        }
        if progressed {
            self.note_progress(qpn, now);
        }
    }

    pub(super) fn note_progress(&mut self, qpn: u32, now: u64) {
        if let Some(qp) = self.qps.get_mut(&qpn) {
            qp.retries = 0;
            qp.rnr_left = qp.rnr_retry;
            qp.retrans_deadline = (!qp.unacked.is_empty()).then_some(now + qp.timeout_ns);
        }
    }

    /// Go-back-N: everything unacked is transmitted again, in order.
    pub(super) fn go_back(qp: &mut QpEntry) {
        if let Some(front) = qp.unacked.front() {
            qp.next_psn = front.psn;
        }
        let mut again = std::mem::take(&mut qp.unacked);
        again.append(&mut qp.pending);
        qp.pending = again;
        qp.retrans_deadline = None;
    }

    pub(super) fn fail_front(&mut self, qpn: u32, status: WcStatus, now: u64, fx: &mut Effects) {
        let Some(wr) = self.qps.get_mut(&qpn).and_then(|q| q.unacked.pop_front()) else {
            return;
        };
        self.complete_send(qpn, &wr, status, 0, now, fx);
        self.qp_error(qpn, now, fx);
    }

    pub(super) fn on_retransmit_timer(
        &mut self,
        qpn: u32,
        generation: u64,
        now: u64,
        fx: &mut Effects,
    ) {
        let Some(qp) = self.qps.get_mut(&qpn) else {
            return;
        };
        if qp.timer_gen != generation {
            return;
        }
        qp.timer_scheduled = false;
        let Some(deadline) = qp.retrans_deadline else {
            return;
        };
        if deadline > now {
            qp.timer_scheduled = true;
            self.schedule(deadline, Event::Retransmit { qpn, generation }, fx);
            return;
        }
        if qp.unacked.is_empty() {
            qp.retrans_deadline = None;
            return;
        }
        qp.retries += 1;
        if qp.retries > qp.retry_cnt {
            self.fail_front(qpn, WcStatus::RetryExcErr, now, fx);
            return;
        }
        self.stats.retransmissions += 1;
        Self::go_back(qp);
        self.pump(qpn, now, fx);
    }

    pub(super) fn on_response(&mut self, qpn: u32, pkt: Packet, now: u64, fx: &mut Effects) {
        let psn = pkt.psn;
        match pkt.body {
            Body::Ack => {
                self.ack_through(qpn, psn, now, fx);
                self.pump(qpn, now, fx);
            }
            Body::ReadResp { data } => {
                self.ack_through(qpn, psn_add(psn, PSN_MASK), now, fx);
                let Some(qp) = self.qps.get_mut(&qpn) else {
                    return;
                };
                if qp
                    .unacked
                    .front()
                    .is_none_or(|w| w.psn != psn || w.opcode != Opcode::RdmaRead)
                {
                    return; // stale or duplicate
                }
                let wr = qp.unacked.pop_front().expect("front exists");
                let (dev, pd) = (qp.dev, qp.pd);
                match self.scatter(&wr.sges, &data, dev, pd) {
                    Ok(()) => {
                        self.complete_send(qpn, &wr, WcStatus::Success, data.len() as u32, now, fx);
                        self.note_progress(qpn, now);
                        self.pump(qpn, now, fx);
                    }
                    Err(status) => {
                        self.complete_send(qpn, &wr, status, 0, now, fx);
                        self.qp_error(qpn, now, fx);
                    }
                }
            }
            Body::Nak(kind) => {
                self.ack_through(qpn, psn_add(psn, PSN_MASK), now, fx);
                let Some(qp) = self.qps.get_mut(&qpn) else {
                    return;
                };
                if qp.unacked.front().is_none_or(|w| w.psn != psn) {
                    return; // stale
                }
                match kind {
                    NakKind::Rnr(delay) => {
                        if qp.rnr_retry == 7 || qp.rnr_left > 0 {
                            if qp.rnr_retry != 7 {
                                qp.rnr_left -= 1;
                            }
                            Self::go_back(qp);
                            qp.rnr_wait = true;
                            qp.timer_gen += 1;
                            qp.timer_scheduled = false;
                            let generation = qp.timer_gen;
                            self.schedule(
                                now + delay.max(1),
                                Event::RnrResume { qpn, generation },
                                fx,
                            );
                        } else {
                            self.fail_front(qpn, WcStatus::RnrRetryExcErr, now, fx);
                        }
                    }
                    NakKind::RemoteAccess => self.fail_front(qpn, WcStatus::RemAccessErr, now, fx),
                    NakKind::InvalidRequest => {
                        self.fail_front(qpn, WcStatus::RemInvReqErr, now, fx)
                    }
                    NakKind::RemoteOperation => self.fail_front(qpn, WcStatus::RemOpErr, now, fx),
                }
            }
            _ => {}
        }
    }
}
