//! The simulated NIC's state and its reliable-connection engine: requester (transmit, ack
//! handling, go-back-N retransmission, RNR back-off) and responder (sequence checks, placement
//! into registered memory, receive consumption). Everything here runs under the fabric lock and
//! is driven by events; it performs no I/O and reads no clock.
//!
//! This file holds the state types and the event scheduler; `verbs.rs` the verbs entry points,
//! `completion.rs` completions and error flushes, `access.rs` memory checks, `requester.rs` the
//! network side and requester, `responder.rs` the responder.

mod access;
mod completion;
mod requester;
mod responder;
mod shm;
mod verbs;

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

#[derive(Debug, Clone)]
pub(crate) struct MrEntry {
    pub dev: usize,
    pub pd: u32,
    pub addr: u64,
    pub len: u64,
    pub access: Access,
    pub rkey: u32,
    /// The memfd behind the region and the region's offset in it, when a peer process can map
    /// it (regions without one keep their QPs on the packet wire).
    pub memfd: Option<(Arc<std::os::fd::OwnedFd>, u64)>,
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
    /// that polling an empty queue costs what it costs on hardware: one memory read; and the
    /// shared-memory ring once a QP using the CQ is attached to another process.
    pub shared: Arc<CqShared>,
}

/// The part of a CQ its handle reads without the fabric lock.
#[derive(Debug, Default)]
pub(crate) struct CqShared {
    /// Completions queued in the engine's own queue (or 1 after an overflow).
    pub ready: std::sync::atomic::AtomicUsize,
    /// The ring in shared memory, created when a QP on this CQ attaches to a peer process;
    /// from then on every completion of the CQ goes there.
    pub ring: std::sync::OnceLock<crate::nic::shm::CqRing>,
}

impl CqShared {
    pub(crate) fn ready(&self) -> usize {
        self.ready.load(std::sync::atomic::Ordering::Acquire)
            + self.ring.get().map_or(0, |r| r.ready())
    }
}

/// Scatter/gather lists of up to four entries stay inline (no allocation per work request).
pub(crate) type SgeList = smallvec::SmallVec<[Sge; 4]>;

#[derive(Debug, Clone)]
struct WrEntry {
    wr_id: u64,
    opcode: Opcode,
    sges: SgeList,
    inline: Option<Vec<u8>>,
    imm: Option<u32>,
    signaled: bool,
    solicited: bool,
    remote: Option<RemoteAddr>,
    psn: u32,
}

struct RecvEntry {
    wr_id: u64,
    sges: SgeList,
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
    /// Shared-memory attachment to a QP of another process (its receive ring, state words and
    /// the peer's mappings); `None` on the packet wire.
    pub shm: Option<Box<crate::nic::shm::Attach>>,
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
    /// RNR NAKs sent by responders (in shared-memory mode: receiver-not-ready retries).
    pub rnr_naks: u64,
}

/// Counters of direct placement into a peer process's memory (shared-memory mode).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ShmCounters {
    pub placements: u64,
    pub bytes_placed: u64,
    pub cqes_written: u64,
    pub doorbells: u64,
    pub placement_ns: u64,
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
    pub shm_stats: ShmCounters,
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
            shm_stats: ShmCounters::default(),
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

    pub(super) fn handle(&mut self, ev: Event, now: u64, fx: &mut Effects) {
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
