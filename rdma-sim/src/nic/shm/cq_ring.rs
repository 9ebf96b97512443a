//! A completion queue's ring in shared memory: bounded, multi-producer (the owner's own NIC
//! work and the peer process's placements), consumed by the owner's `poll`. Vyukov-style: each
//! slot carries a sequence number, so a producer claims a position with one CAS on the tail,
//! writes the entry, then publishes it by storing the slot's sequence.
//!
//! Words (all `AtomicU64`, on separate cache lines where hot): `TAIL` producers' claim counter,
//! `PUBLISHED` entries published, `HEAD` entries consumed, `ARMED` 0 / 1 (any) / 2
//! (solicited-only), `OVERFLOW` set once the ring was full; then `cap` slots of five words
//! (sequence, wr_id, flags and length, immediate and QP number, source QP).

use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};

use super::region::ShmMap;
use crate::wr::{WcOpcode, WcStatus, WorkCompletion};

const TAIL: usize = 0;
const PUBLISHED: usize = 8;
const HEAD: usize = 16;
const ARMED: usize = 24;
const OVERFLOW: usize = 25;
const HDR: usize = 32;
const SLOT: usize = 5;

const ARMED_ANY: u64 = 1;
const ARMED_SOLICITED: u64 = 2;

#[derive(Debug)]
pub(crate) struct CqRing {
    map: ShmMap,
    cap: u64,
}

fn bytes(cap: usize) -> usize {
    (HDR + cap * SLOT) * 8
}

impl CqRing {
    /// A new ring of `cap` entries in a fresh memfd.
    pub(crate) fn create(cap: usize) -> io::Result<CqRing> {
        let map = ShmMap::create("rdma-sim-cq", bytes(cap))?;
        let w = map.words();
        for i in 0..cap {
            w[HDR + i * SLOT].store(i as u64, Relaxed);
        }
        Ok(CqRing {
            map,
            cap: cap as u64,
        })
    }

    /// Maps a peer's ring of `cap` entries.
    pub(crate) fn open(fd: Arc<OwnedFd>, cap: usize) -> io::Result<CqRing> {
        let map = ShmMap::map(fd, 0, bytes(cap))?;
        Ok(CqRing {
            map,
            cap: cap as u64,
        })
    }

    pub(crate) fn map(&self) -> &ShmMap {
        &self.map
    }

    pub(crate) fn capacity(&self) -> usize {
        self.cap as usize
    }

    /// Publishes one completion; false if the ring is full (the CQ overflows).
    pub(crate) fn push(&self, wc: &WorkCompletion) -> bool {
        let w = self.map.words();
        let mut pos = w[TAIL].load(Relaxed);
        let mut spins = 0u32;
        loop {
            let slot = HDR + (pos % self.cap) as usize * SLOT;
            let seq = w[slot].load(Acquire);
            let diff = seq.wrapping_sub(pos) as i64;
            if diff == 0 {
                match w[TAIL].compare_exchange_weak(pos, pos + 1, Relaxed, Relaxed) {
                    Ok(_) => {
                        let [a, b, c, d] = encode(wc);
                        w[slot + 1].store(a, Relaxed);
                        w[slot + 2].store(b, Relaxed);
                        w[slot + 3].store(c, Relaxed);
                        w[slot + 4].store(d, Relaxed);
                        w[slot].store(pos + 1, SeqCst);
                        w[PUBLISHED].fetch_add(1, SeqCst);
                        return true;
                    }
                    Err(p) => pos = p,
                }
            } else if diff < 0 {
                // Full, unless the consumer has claimed the slot and is still reading it (it
                // frees the slot a few instructions later): wait for that, briefly.
                if w[HEAD].load(SeqCst) + self.cap > pos && spins < 10_000 {
                    spins += 1;
                    std::hint::spin_loop();
                    continue;
                }
                return false;
            } else {
                pos = w[TAIL].load(Relaxed);
            }
        }
    }

    /// After a publish: true if the ring was armed for this completion, in which case the
    /// arm is consumed and the caller must ring the owner's completion channel.
    pub(crate) fn take_armed(&self, wc: &WorkCompletion) -> bool {
        let w = self.map.words();
        let a = w[ARMED].load(SeqCst);
        let fires = a == ARMED_ANY
            || (a == ARMED_SOLICITED && (wc.solicited || wc.status != WcStatus::Success));
        fires && w[ARMED].compare_exchange(a, 0, SeqCst, Relaxed).is_ok()
    }

    /// Moves up to `out.len()` published completions into `out`.
    pub(crate) fn pop(&self, out: &mut [WorkCompletion]) -> usize {
        let w = self.map.words();
        let mut n = 0;
        while n < out.len() {
            let pos = w[HEAD].load(Relaxed);
            let slot = HDR + (pos % self.cap) as usize * SLOT;
            if w[slot].load(SeqCst) != pos + 1 {
                break;
            }
            if w[HEAD]
                .compare_exchange(pos, pos + 1, SeqCst, Relaxed)
                .is_err()
            {
                continue;
            }
            out[n] = decode([
                w[slot + 1].load(Relaxed),
                w[slot + 2].load(Relaxed),
                w[slot + 3].load(Relaxed),
                w[slot + 4].load(Relaxed),
            ]);
            w[slot].store(pos + self.cap, Release);
            n += 1;
        }
        n
    }

    /// Published, not yet consumed (a hint; the two counters are read separately).
    pub(crate) fn ready(&self) -> usize {
        let w = self.map.words();
        let done = w[HEAD].load(Acquire);
        let published = w[PUBLISHED].load(Acquire);
        published.saturating_sub(done) as usize + self.overflowed() as usize
    }

    pub(crate) fn arm(&self, solicited_only: bool) {
        let v = if solicited_only {
            ARMED_SOLICITED
        } else {
            ARMED_ANY
        };
        self.map.words()[ARMED].store(v, SeqCst);
    }

    /// The current arm (None if not armed), for moving it between queues.
    pub(crate) fn set_overflow(&self) {
        self.map.words()[OVERFLOW].store(1, SeqCst);
    }

    pub(crate) fn overflowed(&self) -> bool {
        self.map.words()[OVERFLOW].load(Acquire) != 0
    }
}

fn status_code(s: WcStatus) -> u64 {
    match s {
        WcStatus::Success => 0,
        WcStatus::LocLenErr => 1,
        WcStatus::LocQpOpErr => 2,
        WcStatus::LocProtErr => 3,
        WcStatus::WrFlushErr => 4,
        WcStatus::RemInvReqErr => 5,
        WcStatus::RemAccessErr => 6,
        WcStatus::RemOpErr => 7,
        WcStatus::RetryExcErr => 8,
        WcStatus::RnrRetryExcErr => 9,
    }
}

fn status_of(c: u64) -> WcStatus {
    match c {
        0 => WcStatus::Success,
        1 => WcStatus::LocLenErr,
        3 => WcStatus::LocProtErr,
        4 => WcStatus::WrFlushErr,
        5 => WcStatus::RemInvReqErr,
        6 => WcStatus::RemAccessErr,
        7 => WcStatus::RemOpErr,
        8 => WcStatus::RetryExcErr,
        9 => WcStatus::RnrRetryExcErr,
        _ => WcStatus::LocQpOpErr,
    }
}

fn opcode_code(o: WcOpcode) -> u64 {
    match o {
        WcOpcode::Send => 0,
        WcOpcode::RdmaWrite => 1,
        WcOpcode::RdmaRead => 2,
        WcOpcode::Recv => 3,
        WcOpcode::RecvRdmaWithImm => 4,
    }
}

fn opcode_of(c: u64) -> WcOpcode {
    match c {
        1 => WcOpcode::RdmaWrite,
        2 => WcOpcode::RdmaRead,
        3 => WcOpcode::Recv,
        4 => WcOpcode::RecvRdmaWithImm,
        _ => WcOpcode::Send,
    }
}

fn encode(wc: &WorkCompletion) -> [u64; 4] {
    let flags = status_code(wc.status)
        | opcode_code(wc.opcode) << 8
        | (wc.solicited as u64) << 16
        | (wc.imm.is_some() as u64) << 24
        | (wc.byte_len as u64) << 32;
    [
        wc.wr_id,
        flags,
        wc.imm.unwrap_or(0) as u64 | (wc.qp_num as u64) << 32,
        wc.src_qp as u64,
    ]
}

fn decode(w: [u64; 4]) -> WorkCompletion {
    WorkCompletion {
        wr_id: w[0],
        status: status_of(w[1] & 0xff),
        opcode: opcode_of((w[1] >> 8) & 0xff),
        solicited: (w[1] >> 16) & 1 != 0,
        imm: ((w[1] >> 24) & 1 != 0).then_some(w[2] as u32),
        byte_len: (w[1] >> 32) as u32,
        qp_num: (w[2] >> 32) as u32,
        src_qp: w[3] as u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_round_trips_and_overflows() {
        let r = CqRing::create(4).expect("ring");
        let mut wc = WorkCompletion::empty();
        for i in 0..4 {
            wc.wr_id = i;
            wc.imm = Some(7);
            wc.byte_len = 99;
            assert!(r.push(&wc));
        }
        assert!(!r.push(&wc), "a full ring refuses");
        assert_eq!(r.ready(), 4);
        let mut out = [WorkCompletion::empty(); 8];
        assert_eq!(r.pop(&mut out), 4);
        assert_eq!(out[3].wr_id, 3);
        assert_eq!(out[3].imm, Some(7));
        assert_eq!(out[3].byte_len, 99);
        assert!(r.push(&wc));
        assert_eq!(r.ready(), 1);
    }

    #[test]
    fn arming_fires_once() {
        let r = CqRing::create(4).expect("ring");
        let wc = WorkCompletion::empty();
        assert!(!r.take_armed(&wc));
        r.arm(true);
        assert!(
            !r.take_armed(&wc),
            "solicited-only ignores an unsolicited success"
        );
        r.arm(false);
        assert!(r.take_armed(&wc));
        assert!(!r.take_armed(&wc));
    }
}
