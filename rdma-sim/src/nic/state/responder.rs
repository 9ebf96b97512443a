//! The responder: incoming packets, expected PSNs, duplicate and out-of-order requests, RNR,
//! placement into posted receives or registered memory, read responses.

use super::*;

impl State {
    // ----- responder ----------------------------------------------------------------------------

    pub(super) fn on_packet(&mut self, pkt: Packet, now: u64, fx: &mut Effects) {
        let qpn = pkt.dst.qpn;
        let Some(qp) = self.qps.get(&qpn) else {
            return;
        };
        if self.devices[qp.dev].gid != pkt.dst.gid || qp.remote != Some(pkt.src) {
            return;
        }
        match &pkt.body {
            Body::Ack | Body::Nak(_) | Body::ReadResp { .. } => {
                if qp.state == QpState::Rts {
                    self.on_response(qpn, pkt, now, fx);
                }
            }
            _ => {
                if matches!(qp.state, QpState::Rtr | QpState::Rts) {
                    self.on_request(qpn, pkt, now, fx);
                }
            }
        }
    }

    pub(super) fn on_request(&mut self, qpn: u32, pkt: Packet, now: u64, fx: &mut Effects) {
        let qp = self.qps.get(&qpn).expect("checked by caller");
        let me = self.qp_address(qp);
        let peer = pkt.src;
        let psn = pkt.psn;
        if psn != qp.epsn {
            if psn_le(psn, psn_add(qp.epsn, PSN_MASK)) {
                // Duplicate of something already executed: answer again.
                match pkt.body {
                    Body::ReadReq { raddr, rkey, len } => {
                        if self.remote_ok(qp, rkey, raddr, len as u64, Access::REMOTE_READ) {
                            let mut data = Vec::new();
                            read_registered(raddr, len as usize, &mut data);
                            self.reply(me, peer, psn, Body::ReadResp { data }, now, fx);
                        }
                    }
                    _ => {
                        let last = psn_add(qp.epsn, PSN_MASK);
                        self.reply(me, peer, last, Body::Ack, now, fx);
                    }
                }
            }
            // Ahead of sequence (something before it was lost or refused): dropped.
            return;
        }
        let (dev, pd, recv_cq) = (qp.dev, qp.pd, qp.recv_cq);
        match pkt.body {
            Body::Send {
                imm,
                solicited,
                data,
            } => {
                let qp = self.qps.get_mut(&qpn).expect("exists");
                let Some(recv) = qp.rq.pop_front() else {
                    let t = qp.min_rnr_timer_ns;
                    self.reply(me, peer, psn, Body::Nak(NakKind::Rnr(t)), now, fx);
                    return;
                };
                match self.scatter(&recv.sges, &data, dev, pd) {
                    Ok(()) => {
                        let mut c = wc(recv.wr_id, WcStatus::Success, WcOpcode::Recv, qpn);
                        c.byte_len = data.len() as u32;
                        c.imm = imm;
                        c.src_qp = peer.qpn;
                        c.solicited = solicited;
                        self.push_cqe(recv_cq, c, now, fx);
                        self.advance_epsn(qpn);
                        self.reply(me, peer, psn, Body::Ack, now, fx);
                    }
                    Err(status) => {
                        let mut c = wc(recv.wr_id, status, WcOpcode::Recv, qpn);
                        c.src_qp = peer.qpn;
                        self.push_cqe(recv_cq, c, now, fx);
                        self.qp_error(qpn, now, fx);
                        let nak = if status == WcStatus::LocLenErr {
                            NakKind::InvalidRequest
                        } else {
                            NakKind::RemoteOperation
                        };
                        self.reply(me, peer, psn, Body::Nak(nak), now, fx);
                    }
                }
            }
            Body::Write {
                raddr,
                rkey,
                imm,
                solicited,
                data,
            } => {
                if imm.is_some() && qp.rq.is_empty() {
                    let t = qp.min_rnr_timer_ns;
                    self.reply(me, peer, psn, Body::Nak(NakKind::Rnr(t)), now, fx);
                    return;
                }
                if !self.remote_ok(qp, rkey, raddr, data.len() as u64, Access::REMOTE_WRITE) {
                    self.qp_error(qpn, now, fx);
                    self.reply(me, peer, psn, Body::Nak(NakKind::RemoteAccess), now, fx);
                    return;
                }
                write_registered(raddr, &data);
                if imm.is_some() {
                    let qp = self.qps.get_mut(&qpn).expect("exists");
                    let recv = qp.rq.pop_front().expect("checked above");
                    let mut c = wc(
                        recv.wr_id,
                        WcStatus::Success,
                        WcOpcode::RecvRdmaWithImm,
                        qpn,
                    );
                    c.byte_len = data.len() as u32;
                    c.imm = imm;
                    c.src_qp = peer.qpn;
                    c.solicited = solicited;
                    self.push_cqe(recv_cq, c, now, fx);
                }
                self.advance_epsn(qpn);
                self.reply(me, peer, psn, Body::Ack, now, fx);
            }
            Body::ReadReq { raddr, rkey, len } => {
                if !self.remote_ok(qp, rkey, raddr, len as u64, Access::REMOTE_READ) {
                    self.qp_error(qpn, now, fx);
                    self.reply(me, peer, psn, Body::Nak(NakKind::RemoteAccess), now, fx);
                    return;
                }
                let mut data = Vec::with_capacity(len as usize);
                read_registered(raddr, len as usize, &mut data);
                self.advance_epsn(qpn);
                self.reply(me, peer, psn, Body::ReadResp { data }, now, fx);
            }
            Body::Ack | Body::Nak(_) | Body::ReadResp { .. } => {}
        }
    }

    pub(super) fn advance_epsn(&mut self, qpn: u32) {
        if let Some(qp) = self.qps.get_mut(&qpn) {
            qp.epsn = psn_add(qp.epsn, 1);
        }
    }
}
