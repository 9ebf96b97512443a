//! A queue pair's shared words: its receive queue as a single-producer (the owner's
//! `post_recv`) single-consumer (the peer's NIC work) ring, plus the QP state, the remote
//! access it grants and its RNR timer, which the peer's sender reads.
//!
//! Words: `TAIL` receives posted, `HEAD` receives consumed, `STATE`, `ACCESS`, `MIN_RNR` (ns);
//! then `cap` slots of `2 + 2 * max_sge` words (wr_id, SGE count, then address and
//! `length << 32 | lkey` per SGE).

use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};

use super::region::ShmMap;
use crate::wr::{Access, Sge};

const TAIL: usize = 0;
const HEAD: usize = 8;
const STATE: usize = 16;
const ACCESS: usize = 17;
const MIN_RNR: usize = 18;
const HDR: usize = 32;

/// Values of the shared state word.
pub(crate) mod state {
    pub(crate) const RESET: u64 = 0;
    pub(crate) const INIT: u64 = 1;
    pub(crate) const RTR: u64 = 2;
    pub(crate) const RTS: u64 = 3;
    pub(crate) const ERR: u64 = 4;
    pub(crate) const GONE: u64 = 5;
}

/// A posted receive taken by the peer.
#[derive(Debug, Clone)]
pub(crate) struct SharedRecv {
    pub wr_id: u64,
    pub sges: smallvec::SmallVec<[Sge; 4]>,
}

#[derive(Debug)]
pub(crate) struct QpShared {
    map: ShmMap,
    cap: u64,
    max_sge: usize,
}

fn bytes(cap: usize, max_sge: usize) -> usize {
    (HDR + cap * (2 + 2 * max_sge)) * 8
}

impl QpShared {
    pub(crate) fn create(cap: usize, max_sge: usize) -> io::Result<QpShared> {
        let cap = cap.max(1);
        Ok(QpShared {
            map: ShmMap::create("rdma-sim-qp", bytes(cap, max_sge))?,
            cap: cap as u64,
            max_sge,
        })
    }

    pub(crate) fn open(fd: Arc<OwnedFd>, cap: usize, max_sge: usize) -> io::Result<QpShared> {
        let cap = cap.max(1);
        Ok(QpShared {
            map: ShmMap::map(fd, 0, bytes(cap, max_sge))?,
            cap: cap as u64,
            max_sge,
        })
    }

    pub(crate) fn map(&self) -> &ShmMap {
        &self.map
    }

    pub(crate) fn capacity(&self) -> usize {
        self.cap as usize
    }

    pub(crate) fn max_sge(&self) -> usize {
        self.max_sge
    }

    fn slot(&self, pos: u64) -> usize {
        HDR + (pos % self.cap) as usize * (2 + 2 * self.max_sge)
    }

    /// Receives posted and not yet consumed.
    pub(crate) fn len(&self) -> usize {
        let w = self.map.words();
        w[TAIL].load(Acquire).saturating_sub(w[HEAD].load(Acquire)) as usize
    }

    /// Posts one receive (owner side); false if the ring is full or has too many SGEs.
    pub(crate) fn push(&self, wr_id: u64, sges: &[Sge]) -> bool {
        let w = self.map.words();
        let tail = w[TAIL].load(Relaxed);
        if sges.len() > self.max_sge || tail - w[HEAD].load(Acquire) >= self.cap {
            return false;
        }
        let s = self.slot(tail);
        w[s].store(wr_id, Relaxed);
        w[s + 1].store(sges.len() as u64, Relaxed);
        for (i, g) in sges.iter().enumerate() {
            w[s + 2 + 2 * i].store(g.addr, Relaxed);
            w[s + 3 + 2 * i].store((g.length as u64) << 32 | g.lkey as u64, Relaxed);
        }
        w[TAIL].store(tail + 1, SeqCst);
        true
    }

    /// Takes the oldest posted receive (consumer side).
    pub(crate) fn pop(&self) -> Option<SharedRecv> {
        let w = self.map.words();
        let head = w[HEAD].load(Relaxed);
        if head >= w[TAIL].load(SeqCst) {
            return None;
        }
        let s = self.slot(head);
        let n = (w[s + 1].load(Relaxed) as usize).min(self.max_sge);
        let sges = (0..n)
            .map(|i| {
                let v = w[s + 3 + 2 * i].load(Relaxed);
                Sge {
                    addr: w[s + 2 + 2 * i].load(Relaxed),
                    length: (v >> 32) as u32,
                    lkey: v as u32,
                }
            })
            .collect();
        let wr_id = w[s].load(Relaxed);
        w[HEAD].store(head + 1, Release);
        Some(SharedRecv { wr_id, sges })
    }

    pub(crate) fn set_state(&self, s: u64) {
        self.map.words()[STATE].store(s, SeqCst);
    }

    pub(crate) fn state(&self) -> u64 {
        self.map.words()[STATE].load(SeqCst)
    }

    pub(crate) fn set_access(&self, a: Access) {
        self.map.words()[ACCESS].store(a.bits() as u64, Release);
    }

    pub(crate) fn access(&self) -> Access {
        Access::from_bits(self.map.words()[ACCESS].load(Acquire) as u8)
    }

    pub(crate) fn set_min_rnr_ns(&self, ns: u64) {
        self.map.words()[MIN_RNR].store(ns, Release);
    }

    pub(crate) fn min_rnr_ns(&self) -> u64 {
        self.map.words()[MIN_RNR].load(Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receives_round_trip_in_order() {
        let q = QpShared::create(2, 2).expect("ring");
        let g = Sge {
            addr: 0x1000,
            length: 64,
            lkey: 9,
        };
        assert!(q.push(1, &[g]));
        assert!(q.push(2, &[g, g]));
        assert!(!q.push(3, &[]), "full");
        let a = q.pop().expect("one");
        assert_eq!((a.wr_id, a.sges.len(), a.sges[0]), (1, 1, g));
        assert_eq!(q.pop().expect("two").sges.len(), 2);
        assert!(q.pop().is_none());
        q.set_state(state::RTS);
        assert_eq!(q.state(), state::RTS);
    }
}
