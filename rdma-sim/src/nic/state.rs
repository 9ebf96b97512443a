//! The simulated NIC's state and its reliable-connection engine: requester (transmit, ack
//! handling, go-back-N retransmission, RNR back-off) and responder (sequence checks, placement
//! into registered memory, receive consumption). Everything here runs under the fabric lock and
//! is driven by events; it performs no I/O and reads no clock.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use super::packet::{Body, NakKind, Packet, QpAddress};
use crate::error::VerbsError;
use crate::fault::{Faults, Rng};
use crate::memory::{read_registered, write_registered};
use crate::sys::EventFd;
use crate::wr::{
    Access, Opcode, RecvWr, RemoteAddr, SendWr, Sge, WcOpcode, WcStatus, WorkCompletion,
};
use crate::{AsyncEvent, Gid, QpAttr, QpCaps, QpState};

const PSN_MASK: u32 = 0x00FF_FFFF;

/// Multiplicative hashing for the simulator's integer ids (QP numbers, keys): they are not
/// attacker-controlled, and SipHash would dominate the per-message cost.
#[derive(Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(5) ^ *b as u64).wrapping_mul(0x517c_c1b7_2722_0a95);
        }
    }
    fn write_u32(&mut self, v: u32) {
        self.0 = (self.0.rotate_left(5) ^ v as u64).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

pub(crate) type HashMap<K, V> = std::collections::HashMap<K, V, BuildHasherDefault<IdHasher>>;

fn psn_add(a: u32, n: u32) -> u32 {
    a.wrapping_add(n) & PSN_MASK
}

/// `a` is at or before `b` in 24-bit sequence space.
fn psn_le(a: u32, b: u32) -> bool {
    (b.wrapping_sub(a) & PSN_MASK) < 0x0080_0000
}

pub(crate) struct DevState {
    pub gid: Gid,
    pub name: String,
    pub async_events: VecDeque<AsyncEvent>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct MrEntry {
    pub dev: usize,
    pub pd: u32,
    pub addr: u64,
    pub len: u64,
    pub access: Access,
    pub rkey: u32,
}

impl MrEntry {
    fn covers(&self, addr: u64, len: u64) -> bool {
        addr >= self.addr
            && addr
                .checked_add(len)
                .is_some_and(|e| e <= self.addr + self.len)
    }
}

pub(crate) struct CqState {
    pub dev: usize,
    pub cap: usize,
    pub entries: VecDeque<WorkCompletion>,
    pub armed: Option<bool>,
    pub channel: Option<Arc<EventFd>>,
    pub overflowed: bool,
    /// Delayed completions never overtake each other.
    pub deliver_after: u64,
    /// Completions ready to poll (or 1 after an overflow), readable without the fabric lock so
    /// that polling an empty queue costs what it costs on hardware: one memory read.
    pub ready: Arc<std::sync::atomic::AtomicUsize>,
}

#[derive(Debug, Clone)]
struct WrEntry {
    wr_id: u64,
    opcode: Opcode,
    sges: Vec<Sge>,
    inline: Option<Vec<u8>>,
    imm: Option<u32>,
    signaled: bool,
    solicited: bool,
    remote: Option<RemoteAddr>,
    psn: u32,
}

struct RecvEntry {
    wr_id: u64,
    sges: Vec<Sge>,
}

pub(crate) struct QpEntry {
    pub qpn: u32,
    pub dev: usize,
    pub pd: u32,
    pub send_cq: u32,
    pub recv_cq: u32,
    pub state: QpState,
    pub caps: QpCaps,
    access: Access,
    remote: Option<QpAddress>,
    min_rnr_timer_ns: u64,
    timeout_ns: u64,
    retry_cnt: u8,
    rnr_retry: u8,
    // requester
    sq_outstanding: usize,
    completed_unsignaled: usize,
    pending: VecDeque<WrEntry>,
    unacked: VecDeque<WrEntry>,
    next_psn: u32,
    retries: u8,
    rnr_left: u8,
    rnr_wait: bool,
    timer_gen: u64,
    timer_scheduled: bool,
    retrans_deadline: Option<u64>,
    kick_scheduled: bool,
    // responder
    rq: VecDeque<RecvEntry>,
    epsn: u32,
}

pub(crate) enum Event {
    /// Transmit what the QP has pending.
    Kick {
        qpn: u32,
    },
    /// A packet reaches a local QP.
    Deliver {
        pkt: Packet,
    },
    Retransmit {
        qpn: u32,
        generation: u64,
    },
    RnrResume {
        qpn: u32,
        generation: u64,
    },
    /// A delayed completion reaches its CQ.
    Cqe {
        cq: u32,
        wc: WorkCompletion,
    },
}

struct Timed {
    at: u64,
    seq: u64,
    ev: Event,
}

impl PartialEq for Timed {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Timed {}
impl PartialOrd for Timed {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Timed {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

/// What must happen after the lock is released.
#[derive(Default)]
pub(crate) struct Effects {
    pub notify: Vec<Arc<EventFd>>,
    pub outbound: Vec<Packet>,
    pub timer_changed: bool,
}

/// Counters of the simulated network.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Packets put on the simulated wire (requests, responses, retransmissions).
    pub packets: u64,
    /// Payload bytes carried.
    pub bytes: u64,
    /// Packets lost to injected faults.
    pub dropped: u64,
    /// Retransmissions after a timeout.
    pub retransmissions: u64,
    /// RNR NAKs sent by responders.
    pub rnr_naks: u64,
}

pub(crate) struct State {
    pub devices: Vec<DevState>,
    pub mrs: HashMap<u32, MrEntry>,
    pub rkeys: HashMap<u32, u32>,
    pub cqs: HashMap<u32, CqState>,
    pub qps: HashMap<u32, QpEntry>,
    pub pds: HashMap<u32, usize>,
    events: BinaryHeap<Reverse<Timed>>,
    /// Events due immediately (the common case: packets, kicks), in FIFO order.
    immediate: VecDeque<Event>,
    seq: u64,
    pub rng: Rng,
    pub faults: Faults,
    next_id: u32,
    pub stats: NetStats,
}

fn wc(wr_id: u64, status: WcStatus, opcode: WcOpcode, qpn: u32) -> WorkCompletion {
    WorkCompletion {
        wr_id,
        status,
        opcode,
        qp_num: qpn,
        ..WorkCompletion::empty()
    }
}

fn send_opcode(op: Opcode) -> WcOpcode {
    match op {
        Opcode::Send | Opcode::SendWithImm => WcOpcode::Send,
        Opcode::RdmaWrite | Opcode::RdmaWriteWithImm => WcOpcode::RdmaWrite,
        Opcode::RdmaRead => WcOpcode::RdmaRead,
    }
}

impl State {
    pub(crate) fn new(devices: Vec<DevState>, seed: u64) -> Self {
        Self {
            devices,
            mrs: HashMap::default(),
            rkeys: HashMap::default(),
            cqs: HashMap::default(),
            qps: HashMap::default(),
            pds: HashMap::default(),
            events: BinaryHeap::new(),
            immediate: VecDeque::new(),
            seq: 0,
            rng: Rng::new(seed),
            faults: Faults::default(),
            next_id: 1,
            stats: NetStats::default(),
        }
    }

    /// A fresh object id / key; keys are scrambled so that an lkey is never a valid rkey.
    pub(crate) fn fresh_id(&mut self) -> u32 {
        self.next_id += 1;
        self.next_id
    }

    pub(crate) fn fresh_key(&mut self) -> u32 {
        loop {
            let k = (self.rng.next_u64() as u32) | 1;
            if !self.mrs.contains_key(&k) && !self.rkeys.contains_key(&k) {
                return k;
            }
        }
    }

    pub(crate) fn local_dev(&self, gid: &Gid) -> Option<usize> {
        self.devices.iter().position(|d| d.gid == *gid)
    }

    pub(crate) fn qp_address(&self, qp: &QpEntry) -> QpAddress {
        QpAddress {
            gid: self.devices[qp.dev].gid,
            qpn: qp.qpn,
        }
    }

    // ----- scheduling ------------------------------------------------------------------------

    /// Queues an event due at the current instant. Whoever queues it runs it before releasing
    /// the fabric (inline mode) or steps to it (deterministic mode): no timer wake-up needed.
    pub(crate) fn schedule_now(&mut self, ev: Event, _fx: &mut Effects) {
        self.immediate.push_back(ev);
    }

    pub(crate) fn schedule(&mut self, at: u64, ev: Event, fx: &mut Effects) {
        if self.events.peek().is_none_or(|t| at < t.0.at) {
            fx.timer_changed = true;
        }
        self.seq += 1;
        self.events.push(Reverse(Timed {
            at,
            seq: self.seq,
            ev,
        }));
    }

    /// When the next event is due; immediate events are due at `now`.
    pub(crate) fn next_deadline_at(&self, now: u64) -> Option<u64> {
        if self.immediate.is_empty() {
            self.events.peek().map(|t| t.0.at)
        } else {
            Some(now)
        }
    }

    pub(crate) fn pending_events(&self) -> usize {
        self.events.len() + self.immediate.len()
    }

    /// Handles every event due at `now` (overdue timers first, then immediate events, until
    /// both are exhausted); returns how many.
    pub(crate) fn run_due(&mut self, now: u64, fx: &mut Effects) -> usize {
        let mut n = 0;
        loop {
            if self.events.peek().is_some_and(|t| t.0.at <= now) {
                let Some(Reverse(t)) = self.events.pop() else {
                    break;
                };
                self.handle(t.ev, now, fx);
            } else if let Some(ev) = self.immediate.pop_front() {
                self.handle(ev, now, fx);
            } else {
                break;
            }
            n += 1;
        }
        n
    }

    /// Handles one event: an immediate one at `now`, else the earliest timer whatever its
    /// time. Returns the time it ran at.
    pub(crate) fn step(&mut self, now: u64, fx: &mut Effects) -> Option<u64> {
        if let Some(ev) = self.immediate.pop_front() {
            self.handle(ev, now, fx);
            return Some(now);
        }
        let Reverse(t) = self.events.pop()?;
        self.handle(t.ev, t.at, fx);
        Some(t.at)
    }

    fn handle(&mut self, ev: Event, now: u64, fx: &mut Effects) {
        match ev {
            Event::Kick { qpn } => {
                if let Some(qp) = self.qps.get_mut(&qpn) {
                    qp.kick_scheduled = false;
                }
                self.pump(qpn, now, fx);
            }
            Event::Deliver { pkt } => self.on_packet(pkt, now, fx),
            Event::Retransmit { qpn, generation } => {
                self.on_retransmit_timer(qpn, generation, now, fx)
            }
            Event::RnrResume { qpn, generation } => {
                let Some(qp) = self.qps.get_mut(&qpn) else {
                    return;
                };
                if qp.timer_gen == generation && qp.rnr_wait {
                    qp.rnr_wait = false;
                    self.pump(qpn, now, fx);
                }
            }
            Event::Cqe { cq, wc } => self.push_cqe_now(cq, wc, now, fx),
        }
    }

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
                    Vec::new()
                } else {
                    wr.sges.to_vec()
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
        if !qp.kick_scheduled {
            qp.kick_scheduled = true;
            self.schedule_now(Event::Kick { qpn }, fx);
        }
        let _ = now;
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
        if qp.rq.len() + wrs.len() > depth {
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
        qp.rq.extend(wrs.iter().map(|w| RecvEntry {
            wr_id: w.wr_id,
            sges: w.sges.to_vec(),
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
        cq.ready.store(
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
        cq.armed = Some(solicited_only);
        Ok(())
    }

    // ----- completions and errors -----------------------------------------------------------

    fn push_cqe(&mut self, cq_id: u32, wc: WorkCompletion, now: u64, fx: &mut Effects) {
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

    fn push_cqe_now(&mut self, cq_id: u32, wc: WorkCompletion, now: u64, fx: &mut Effects) {
        let Some(cq) = self.cqs.get_mut(&cq_id) else {
            return;
        };
        if cq.overflowed {
            return;
        }
        if cq.entries.len() >= cq.cap {
            cq.overflowed = true;
            cq.ready.fetch_add(1, std::sync::atomic::Ordering::Release);
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
            return;
        }
        cq.entries.push_back(wc);
        cq.ready.fetch_add(1, std::sync::atomic::Ordering::Release);
        if let Some(solicited_only) = cq.armed
            && (!solicited_only || wc.solicited || wc.status != WcStatus::Success)
        {
            cq.armed = None;
            if let Some(ch) = &cq.channel {
                fx.notify.push(ch.clone());
            }
        }
    }

    fn complete_send(
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
    fn qp_error(&mut self, qpn: u32, now: u64, fx: &mut Effects) {
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
        let recvs: Vec<RecvEntry> = qp.rq.drain(..).collect();
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

    // ----- memory checks ----------------------------------------------------------------------

    fn gather(&self, sges: &[Sge], dev: usize, pd: u32) -> Result<Vec<u8>, WcStatus> {
        let total: usize = sges.iter().map(|s| s.length as usize).sum();
        let mut out = Vec::with_capacity(total);
        for s in sges {
            let mr = self
                .mrs
                .get(&s.lkey)
                .filter(|m| m.dev == dev && m.pd == pd && m.covers(s.addr, s.length as u64))
                .ok_or(WcStatus::LocProtErr)?;
            let _ = mr;
            read_registered(s.addr, s.length as usize, &mut out);
        }
        Ok(out)
    }

    fn scatter(&self, sges: &[Sge], data: &[u8], dev: usize, pd: u32) -> Result<(), WcStatus> {
        let capacity: u64 = sges.iter().map(|s| s.length as u64).sum();
        if (data.len() as u64) > capacity {
            return Err(WcStatus::LocLenErr);
        }
        let mut rest = data;
        for s in sges {
            if rest.is_empty() {
                break;
            }
            let n = rest.len().min(s.length as usize);
            self.mrs
                .get(&s.lkey)
                .filter(|m| {
                    m.dev == dev
                        && m.pd == pd
                        && m.access.contains(Access::LOCAL_WRITE)
                        && m.covers(s.addr, n as u64)
                })
                .ok_or(WcStatus::LocProtErr)?;
            write_registered(s.addr, &rest[..n]);
            rest = &rest[n..];
        }
        Ok(())
    }

    fn remote_ok(&self, qp: &QpEntry, rkey: u32, addr: u64, len: u64, need: Access) -> bool {
        qp.access.contains(need)
            && self
                .rkeys
                .get(&rkey)
                .and_then(|l| self.mrs.get(l))
                .is_some_and(|m| {
                    m.dev == qp.dev
                        && m.pd == qp.pd
                        && m.access.contains(need)
                        && m.covers(addr, len)
                })
    }

    // ----- network ----------------------------------------------------------------------------

    fn transmit(&mut self, pkt: Packet, _now: u64, fx: &mut Effects) {
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

    fn reply(
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

    fn pump(&mut self, qpn: u32, now: u64, fx: &mut Effects) {
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

    fn request_body(&self, wr: &WrEntry, dev: usize, pd: u32) -> Result<Body, WcStatus> {
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
    fn ack_through(&mut self, qpn: u32, psn: u32, now: u64, fx: &mut Effects) {
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

    fn note_progress(&mut self, qpn: u32, now: u64) {
        if let Some(qp) = self.qps.get_mut(&qpn) {
            qp.retries = 0;
            qp.rnr_left = qp.rnr_retry;
            qp.retrans_deadline = (!qp.unacked.is_empty()).then_some(now + qp.timeout_ns);
        }
    }

    /// Go-back-N: everything unacked is transmitted again, in order.
    fn go_back(qp: &mut QpEntry) {
        if let Some(front) = qp.unacked.front() {
            qp.next_psn = front.psn;
        }
        let mut again = std::mem::take(&mut qp.unacked);
        again.append(&mut qp.pending);
        qp.pending = again;
        qp.retrans_deadline = None;
    }

    fn fail_front(&mut self, qpn: u32, status: WcStatus, now: u64, fx: &mut Effects) {
        let Some(wr) = self.qps.get_mut(&qpn).and_then(|q| q.unacked.pop_front()) else {
            return;
        };
        self.complete_send(qpn, &wr, status, 0, now, fx);
        self.qp_error(qpn, now, fx);
    }

    fn on_retransmit_timer(&mut self, qpn: u32, generation: u64, now: u64, fx: &mut Effects) {
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

    fn on_response(&mut self, qpn: u32, pkt: Packet, now: u64, fx: &mut Effects) {
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

    // ----- responder ----------------------------------------------------------------------------

    fn on_packet(&mut self, pkt: Packet, now: u64, fx: &mut Effects) {
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

    fn on_request(&mut self, qpn: u32, pkt: Packet, now: u64, fx: &mut Effects) {
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

    fn advance_epsn(&mut self, qpn: u32) {
        if let Some(qp) = self.qps.get_mut(&qpn) {
            qp.epsn = psn_add(qp.epsn, 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psn_arithmetic_wraps_at_24_bits() {
        assert_eq!(psn_add(PSN_MASK, 1), 0);
        assert!(psn_le(PSN_MASK, 0));
        assert!(psn_le(5, 5));
        assert!(!psn_le(6, 5));
        assert!(psn_le(PSN_MASK - 3, 2));
    }
}
