//! The engine's side of the shared-memory data path: preparing and installing an attachment,
//! and executing send work requests of an attached QP in the caller's thread — taking the
//! peer's posted receive, checking keys, bounds and access against the peer's regions, copying
//! into the peer's mapped memory and writing completions into shared CQ rings. The NIC's work
//! proper (the copy and the completion writes) is timed and counted in [`ShmCounters`].

use std::time::Instant;

use super::*;
use crate::nic::shm::{
    Attach, CqRing, LocalInfo, MrInfo, Peer, QpShared, Source, Span, fetch, place, qp_state,
};

/// The shared state word of a QP state.
pub(crate) fn state_code(s: QpState) -> u64 {
    match s {
        QpState::Reset => qp_state::RESET,
        QpState::Init => qp_state::INIT,
        QpState::Rtr => qp_state::RTR,
        QpState::Rts => qp_state::RTS,
        QpState::Err => qp_state::ERR,
    }
}

enum Outcome {
    Done {
        byte_len: u32,
        bytes: u64,
        cqes: u64,
        ns: u64,
        bell: Option<Arc<EventFd>>,
    },
    /// No receive posted at the peer; retry after its RNR timer.
    Rnr { delay: u64 },
    /// The peer QP is not yet ready to receive (a real NIC's packets would be dropped).
    NotReady,
    Fail {
        status: WcStatus,
        /// The peer QP goes to ERR too (its receive completed in error or it refused access).
        remote: bool,
        bell: Option<Arc<EventFd>>,
    },
}

/// Writes a completion into the peer's CQ ring; returns the peer's eventfd if it must be
/// written (the CQ was armed for it, or it overflowed).
fn peer_cqe(peer: &Peer, wc: &WorkCompletion) -> Option<Arc<EventFd>> {
    if !peer.cq.push(wc) {
        peer.cq.set_overflow();
        return peer.doorbell.clone();
    }
    if peer.cq.take_armed(wc) {
        peer.doorbell.clone()
    } else {
        None
    }
}

impl State {
    /// True if `qpn` is attached to a peer process.
    pub(super) fn attached(&self, qpn: u32) -> bool {
        self.qps
            .get(&qpn)
            .is_some_and(|q| q.shm.as_ref().is_some_and(|a| a.peer.is_some()))
    }

    /// Readies `qpn` for attaching (towards `remote`, if known): creates its shared words and
    /// receive ring (moving receives already posted there) and its receive CQ's ring, and
    /// describes them and the PD's regions. `None` if the QP cannot attach.
    pub(crate) fn shm_prepare(&mut self, qpn: u32, remote: Option<QpAddress>) -> Option<LocalInfo> {
        let f = &self.faults;
        if f.drop_rate > 0.0 || f.completion_delay.is_some() || !f.links_down.is_empty() {
            return None;
        }
        let qp = self.qps.get(&qpn)?;
        if qp.state == QpState::Err
            || remote.is_some_and(|r| qp.remote.is_some_and(|x| x != r))
            || qp.shm.as_ref().is_some_and(|a| a.peer.is_some())
        {
            return None;
        }
        let (dev, pd, recv_cq) = (qp.dev, qp.pd, qp.recv_cq);
        let mut mrs = Vec::new();
        for (lkey, m) in &self.mrs {
            if m.dev != dev || m.pd != pd {
                continue;
            }
            let (fd, offset) = m.memfd.clone()?;
            mrs.push(MrInfo {
                lkey: *lkey,
                rkey: m.rkey,
                addr: m.addr,
                len: m.len,
                access: m.access,
                fd,
                offset,
            });
        }
        if mrs.len() > 200 {
            return None;
        }
        let cq = self.cqs.get_mut(&recv_cq)?;
        if cq.shared.ring.get().is_none() {
            let ring = CqRing::create(cq.cap).ok()?;
            if let Some(s) = cq.armed.take() {
                ring.arm(s);
            }
            let _ = cq.shared.ring.set(ring);
        }
        let ring = cq.shared.ring.get()?;
        let (cq_fd, cq_cap) = (ring.map().fd().clone(), ring.capacity() as u32);
        let efd = match &cq.channel {
            Some(c) => Some(c.dup().ok()?),
            None => None,
        };
        let qp = self.qps.get_mut(&qpn)?;
        if qp.shm.is_none() {
            let own = QpShared::create(qp.caps.max_recv_wr as usize, qp.caps.max_recv_sge as usize)
                .ok()?;
            own.set_state(state_code(qp.state));
            own.set_access(qp.access);
            own.set_min_rnr_ns(qp.min_rnr_timer_ns);
            for r in qp.rq.drain(..) {
                own.push(r.wr_id, &r.sges);
            }
            qp.shm = Some(Box::new(Attach { own, peer: None }));
        }
        let own = &qp.shm.as_ref()?.own;
        Some(LocalInfo {
            qpn,
            rq_cap: own.capacity() as u32,
            max_sge: own.max_sge() as u32,
            rq_fd: own.map().fd().clone(),
            cq_cap,
            cq_fd,
            efd,
            mrs,
        })
    }

    /// Undoes [`State::shm_prepare`] when the peer refused: receives move back to the engine.
    pub(crate) fn shm_abandon(&mut self, qpn: u32) {
        let Some(qp) = self.qps.get_mut(&qpn) else {
            return;
        };
        if qp.shm.as_ref().is_none_or(|a| a.peer.is_some()) {
            return;
        }
        if let Some(a) = qp.shm.take() {
            while let Some(r) = a.own.pop() {
                qp.rq.push_back(RecvEntry {
                    wr_id: r.wr_id,
                    sges: r.sges,
                });
            }
        }
    }

    /// Installs the mapped peer (or adds a second control link to the same peer).
    pub(crate) fn shm_install(
        &mut self,
        qpn: u32,
        mut peer: Peer,
        link: u64,
        ctl: Arc<std::os::unix::net::UnixStream>,
    ) -> bool {
        let Some(a) = self.qps.get_mut(&qpn).and_then(|q| q.shm.as_mut()) else {
            return false;
        };
        match &mut a.peer {
            None => {
                peer.links.push((link, ctl));
                a.peer = Some(peer);
                true
            }
            Some(p) if p.addr == peer.addr => {
                p.links.push((link, ctl));
                true
            }
            Some(_) => false,
        }
    }

    fn has_link(&self, qpn: u32, link: u64) -> bool {
        self.qps
            .get(&qpn)
            .and_then(|q| q.shm.as_ref())
            .and_then(|a| a.peer.as_ref())
            .is_some_and(|p| p.links.iter().any(|(l, _)| *l == link))
    }

    /// The control link reached its end: the peer process died or destroyed its QP.
    pub(crate) fn shm_link_lost(&mut self, qpn: u32, link: u64, now: u64, fx: &mut Effects) {
        if self.has_link(qpn, link) {
            self.qp_error(qpn, now, fx);
        }
    }

    /// The peer reported a remote error: this QP goes to ERR.
    pub(crate) fn shm_remote_error(&mut self, qpn: u32, link: u64, now: u64, fx: &mut Effects) {
        if self.has_link(qpn, link) {
            self.qp_error(qpn, now, fx);
        }
    }

    /// Executes pending send work requests of an attached QP, in order, until one must wait.
    pub(super) fn shm_pump(&mut self, qpn: u32, now: u64, fx: &mut Effects) {
        loop {
            let Some(qp) = self.qps.get_mut(&qpn) else {
                return;
            };
            if qp.state != QpState::Rts || qp.rnr_wait {
                return;
            }
            let Some(wr) = qp.pending.pop_front() else {
                return;
            };
            match self.shm_execute(qpn, &wr) {
                Outcome::Done {
                    byte_len,
                    bytes,
                    cqes,
                    ns,
                    bell,
                } => {
                    let t = Instant::now();
                    self.complete_send(qpn, &wr, WcStatus::Success, byte_len, now, fx);
                    let local_ns = t.elapsed().as_nanos() as u64;
                    let s = &mut self.shm_stats;
                    s.placements += 1;
                    s.bytes_placed += bytes;
                    s.cqes_written += cqes + wr.signaled as u64;
                    s.placement_ns += ns + if wr.signaled { local_ns } else { 0 };
                    if let Some(b) = bell {
                        s.doorbells += 1;
                        fx.notify.push(b);
                    }
                    self.note_progress(qpn, now);
                }
                Outcome::Rnr { delay } => {
                    let qp = self.qps.get_mut(&qpn).expect("qp exists");
                    if qp.rnr_retry == 7 || qp.rnr_left > 0 {
                        if qp.rnr_retry != 7 {
                            qp.rnr_left -= 1;
                        }
                        self.stats.rnr_naks += 1;
                        self.shm_wait(qpn, wr, delay, fx, now);
                    } else {
                        self.complete_send(qpn, &wr, WcStatus::RnrRetryExcErr, 0, now, fx);
                        self.qp_error(qpn, now, fx);
                    }
                    return;
                }
                Outcome::NotReady => {
                    let qp = self.qps.get_mut(&qpn).expect("qp exists");
                    qp.retries += 1;
                    if qp.retries > qp.retry_cnt {
                        self.complete_send(qpn, &wr, WcStatus::RetryExcErr, 0, now, fx);
                        self.qp_error(qpn, now, fx);
                    } else {
                        let t = qp.timeout_ns;
                        self.stats.retransmissions += 1;
                        self.shm_wait(qpn, wr, t, fx, now);
                    }
                    return;
                }
                Outcome::Fail {
                    status,
                    remote,
                    bell,
                } => {
                    if let Some(b) = bell {
                        self.shm_stats.doorbells += 1;
                        self.shm_stats.cqes_written += 1;
                        fx.notify.push(b);
                    }
                    if remote {
                        let qp = self.qps.get(&qpn).expect("qp exists");
                        let me = self.qp_address(qp);
                        if let Some(p) = qp.shm.as_ref().and_then(|a| a.peer.as_ref()) {
                            p.qp.set_state(qp_state::ERR);
                            p.notify_error(me);
                        }
                    }
                    self.complete_send(qpn, &wr, status, 0, now, fx);
                    self.qp_error(qpn, now, fx);
                    return;
                }
            }
        }
    }

    /// Puts `wr` back at the head of the send queue and resumes after `delay` ns.
    fn shm_wait(&mut self, qpn: u32, wr: WrEntry, delay: u64, fx: &mut Effects, now: u64) {
        let qp = self.qps.get_mut(&qpn).expect("qp exists");
        qp.pending.push_front(wr);
        qp.rnr_wait = true;
        qp.timer_gen += 1;
        let generation = qp.timer_gen;
        self.schedule(now + delay.max(1), Event::RnrResume { qpn, generation }, fx);
    }

    fn shm_execute(&self, qpn: u32, wr: &WrEntry) -> Outcome {
        let fail = |status, remote| Outcome::Fail {
            status,
            remote,
            bell: None,
        };
        let Some(qp) = self.qps.get(&qpn) else {
            return fail(WcStatus::LocQpOpErr, false);
        };
        let Some(peer) = qp.shm.as_ref().and_then(|a| a.peer.as_ref()) else {
            return fail(WcStatus::LocQpOpErr, false);
        };
        match peer.qp.state() {
            qp_state::ERR | qp_state::GONE => return fail(WcStatus::RetryExcErr, false),
            s if s < qp_state::RTR => return Outcome::NotReady,
            _ => {}
        }
        let (dev, pd) = (qp.dev, qp.pd);
        let local_ok = |s: &Sge, need: Access| {
            self.mrs.get(&s.lkey).is_some_and(|m| {
                m.dev == dev
                    && m.pd == pd
                    && m.access.contains(need)
                    && m.covers(s.addr, s.length as u64)
            })
        };
        let mut src: smallvec::SmallVec<[Source<'_>; 4]> = smallvec::SmallVec::new();
        if let Some(d) = &wr.inline {
            src.push(Source::Bytes(d));
        } else if wr.opcode != Opcode::RdmaRead {
            for s in &wr.sges {
                if !local_ok(s, Access::NONE) {
                    return fail(WcStatus::LocProtErr, false);
                }
                src.push(Source::Local {
                    addr: s.addr,
                    len: s.length as usize,
                });
            }
        }
        let total: usize = match &wr.inline {
            Some(d) => d.len(),
            None => wr.sges.iter().map(|s| s.length as usize).sum(),
        };
        let recv_wc = |wr_id, status, opcode| WorkCompletion {
            src_qp: qpn,
            imm: wr.imm,
            solicited: wr.solicited,
            ..wc(wr_id, status, opcode, peer.addr.qpn)
        };
        match wr.opcode {
            Opcode::Send | Opcode::SendWithImm => {
                let Some(recv) = peer.qp.pop() else {
                    return Outcome::Rnr {
                        delay: peer.qp.min_rnr_ns(),
                    };
                };
                let cap: u64 = recv.sges.iter().map(|s| s.length as u64).sum();
                let refuse = |status, sender| Outcome::Fail {
                    status: sender,
                    remote: true,
                    bell: peer_cqe(peer, &recv_wc(recv.wr_id, status, WcOpcode::Recv)),
                };
                if total as u64 > cap {
                    return refuse(WcStatus::LocLenErr, WcStatus::RemInvReqErr);
                }
                let mut dst: smallvec::SmallVec<[Span<'_>; 4]> = smallvec::SmallVec::new();
                let mut rest = total as u64;
                for g in &recv.sges {
                    if rest == 0 {
                        break;
                    }
                    let n = rest.min(g.length as u64);
                    let span = peer
                        .mrs
                        .get(&g.lkey)
                        .filter(|m| m.access.contains(Access::LOCAL_WRITE))
                        .and_then(|m| m.span(g.addr, n));
                    match span {
                        Some(s) => dst.push(s),
                        None => return refuse(WcStatus::LocProtErr, WcStatus::RemOpErr),
                    }
                    rest -= n;
                }
                let t = Instant::now();
                place(&src, &dst);
                let mut c = recv_wc(recv.wr_id, WcStatus::Success, WcOpcode::Recv);
                c.byte_len = total as u32;
                let bell = peer_cqe(peer, &c);
                Outcome::Done {
                    byte_len: 0,
                    bytes: total as u64,
                    cqes: 1,
                    ns: t.elapsed().as_nanos() as u64,
                    bell,
                }
            }
            Opcode::RdmaWrite | Opcode::RdmaWriteWithImm => {
                let r = wr.remote.expect("validated at post");
                let with_imm = wr.imm.is_some();
                if with_imm && peer.qp.len() == 0 {
                    return Outcome::Rnr {
                        delay: peer.qp.min_rnr_ns(),
                    };
                }
                let span = peer
                    .qp
                    .access()
                    .contains(Access::REMOTE_WRITE)
                    .then(|| peer.rkeys.get(&r.rkey).and_then(|l| peer.mrs.get(l)))
                    .flatten()
                    .filter(|m| m.access.contains(Access::REMOTE_WRITE))
                    .and_then(|m| m.span(r.addr, total as u64));
                let Some(span) = span else {
                    return fail(WcStatus::RemAccessErr, true);
                };
                let t = Instant::now();
                place(&src, &[span]);
                let mut bell = None;
                let mut cqes = 0;
                if with_imm {
                    // This thread, under the fabric lock, is the ring's only consumer: the
                    // receive seen above is still there.
                    let recv = peer.qp.pop().expect("a receive was posted");
                    let mut c = recv_wc(recv.wr_id, WcStatus::Success, WcOpcode::RecvRdmaWithImm);
                    c.byte_len = total as u32;
                    bell = peer_cqe(peer, &c);
                    cqes = 1;
                }
                Outcome::Done {
                    byte_len: 0,
                    bytes: total as u64,
                    cqes,
                    ns: t.elapsed().as_nanos() as u64,
                    bell,
                }
            }
            Opcode::RdmaRead => {
                let r = wr.remote.expect("validated at post");
                let span = peer
                    .qp
                    .access()
                    .contains(Access::REMOTE_READ)
                    .then(|| peer.rkeys.get(&r.rkey).and_then(|l| peer.mrs.get(l)))
                    .flatten()
                    .filter(|m| m.access.contains(Access::REMOTE_READ))
                    .and_then(|m| m.span(r.addr, total as u64));
                let Some(span) = span else {
                    return fail(WcStatus::RemAccessErr, true);
                };
                if !wr.sges.iter().all(|s| local_ok(s, Access::LOCAL_WRITE)) {
                    return fail(WcStatus::LocProtErr, false);
                }
                let dst: Vec<(u64, usize)> = wr
                    .sges
                    .iter()
                    .map(|s| (s.addr, s.length as usize))
                    .collect();
                let t = Instant::now();
                fetch(&[span], &dst);
                Outcome::Done {
                    byte_len: total as u32,
                    bytes: total as u64,
                    cqes: 0,
                    ns: t.elapsed().as_nanos() as u64,
                    bell: None,
                }
            }
        }
    }
}
