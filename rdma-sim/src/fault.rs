//! Fault injection with a seeded RNG, applied by the simulated network: packet loss, link
//! down, delayed completions. (QP → ERR is `QueuePair::modify(QpState::Err)`; CQ overflow
//! follows from a small CQ.)

use std::collections::HashSet;
use std::time::Duration;

use crate::Gid;

/// splitmix64: small, fast, reproducible.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// True with probability `p`.
    pub(crate) fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    /// Uniform in `[lo, hi]`.
    pub(crate) fn between(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            lo
        } else {
            lo + self.next_u64() % (hi - lo + 1)
        }
    }
}

/// The faults currently injected.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Probability that any packet is lost (the requester retransmits after its timeout).
    pub drop_rate: f64,
    /// Completions reach their CQ after a delay drawn uniformly from this range.
    pub completion_delay: Option<(Duration, Duration)>,
    /// Devices whose link is down: every packet from or to them is lost.
    pub links_down: HashSet<Gid>,
}
