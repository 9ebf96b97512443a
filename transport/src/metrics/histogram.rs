//! A lock-free high-dynamic-range histogram of nanosecond values: log-linear buckets (exact
//! below 256 ns, then 128 sub-buckets per power of two, so any value is known to within 0.8 %),
//! one relaxed `fetch_add` per record. [`Snapshot`]s subtract, so a reader can take the
//! percentiles of one measurement window from two scrapes.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

const SUB_BITS: u32 = 7;
const SUB: u64 = 1 << SUB_BITS;
const LINEAR: u64 = 2 * SUB;
/// Values are clamped to 2^40 ns (about 18 minutes).
const MAX_MSB: u32 = 40;
const BUCKETS: usize = (LINEAR + (MAX_MSB - SUB_BITS) as u64 * SUB) as usize;

/// The bucket holding `v`.
fn index(v: u64) -> usize {
    let v = v.min((1 << (MAX_MSB + 1)) - 1);
    if v < LINEAR {
        return v as usize;
    }
    let msb = 63 - v.leading_zeros();
    let shift = msb - SUB_BITS;
    let mantissa = v >> shift;
    (LINEAR + (shift as u64 - 1) * SUB + (mantissa - SUB)) as usize
}

/// The lowest value and the width of bucket `i`.
fn bounds(i: usize) -> (u64, u64) {
    let i = i as u64;
    if i < LINEAR {
        return (i, 1);
    }
    let shift = (i - LINEAR) / SUB + 1;
    let mantissa = (i - LINEAR) % SUB + SUB;
    (mantissa << shift, 1 << shift)
}

/// A histogram that many threads record into at once.
#[derive(Debug)]
pub struct Histogram {
    buckets: Box<[AtomicU64]>,
    sum: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    /// Records one value (nanoseconds).
    #[inline]
    pub fn record_ns(&self, ns: u64) {
        self.buckets[index(ns)].fetch_add(1, Relaxed);
        self.sum.fetch_add(ns, Relaxed);
    }

    /// Records one duration.
    #[inline]
    pub fn record(&self, d: Duration) {
        self.record_ns(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    /// The counts so far.
    pub fn snapshot(&self) -> Snapshot {
        let mut buckets = Vec::new();
        let mut count = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            let n = b.load(Relaxed);
            if n > 0 {
                buckets.push((i as u32, n));
                count += n;
            }
        }
        Snapshot {
            buckets,
            count,
            sum_ns: self.sum.load(Relaxed),
        }
    }
}

/// The non-empty buckets of a histogram at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// `(bucket index, count)`, ascending by index.
    buckets: Vec<(u32, u64)>,
    count: u64,
    sum_ns: u64,
}

impl Snapshot {
    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Sum of the values (ns).
    pub fn sum_ns(&self) -> u64 {
        self.sum_ns
    }

    /// Mean value (ns); 0 when empty.
    pub fn mean_ns(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum_ns as f64 / self.count as f64
        }
    }

    /// The value at quantile `q` (0..=1): the highest value of the bucket holding the value of
    /// that rank, so it never understates. 0 when empty.
    pub fn quantile_ns(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for &(i, n) in &self.buckets {
            seen += n;
            if seen >= rank {
                let (low, width) = bounds(i as usize);
                return low + width - 1;
            }
        }
        let (low, width) = bounds(self.buckets.last().map_or(0, |b| b.0) as usize);
        low + width - 1
    }

    /// What was recorded after `earlier` (a snapshot of the same histogram).
    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        let mut buckets = Vec::with_capacity(self.buckets.len());
        let mut old = earlier.buckets.iter().peekable();
        let mut count = 0;
        for &(i, n) in &self.buckets {
            while old.peek().is_some_and(|o| o.0 < i) {
                old.next();
            }
            let before = old.peek().filter(|o| o.0 == i).map_or(0, |o| o.1);
            let d = n.saturating_sub(before);
            if d > 0 {
                buckets.push((i, d));
                count += d;
            }
        }
        Snapshot {
            buckets,
            count,
            sum_ns: self.sum_ns.saturating_sub(earlier.sum_ns),
        }
    }

    /// The compact text form read back by [`Snapshot::parse`]:
    /// `count sum_ns index:count,index:count,…`.
    pub fn encode(&self) -> String {
        let mut s = format!("{} {} ", self.count, self.sum_ns);
        for (k, (i, n)) in self.buckets.iter().enumerate() {
            if k > 0 {
                s.push(',');
            }
            let _ = write!(s, "{i}:{n}");
        }
        s
    }

    /// Parses [`Snapshot::encode`]'s form.
    pub fn parse(text: &str) -> Option<Snapshot> {
        let mut parts = text.trim().splitn(3, ' ');
        let count: u64 = parts.next()?.parse().ok()?;
        let sum_ns = parts.next()?.parse().ok()?;
        let mut buckets = Vec::new();
        for pair in parts
            .next()
            .unwrap_or("")
            .split(',')
            .filter(|p| !p.is_empty())
        {
            let (i, n) = pair.split_once(':')?;
            let i: u32 = i.parse().ok()?;
            if i as usize >= BUCKETS || buckets.last().is_some_and(|&(j, _)| j >= i) {
                return None;
            }
            buckets.push((i, n.parse().ok()?));
        }
        if buckets.iter().map(|b| b.1).sum::<u64>() != count {
            return None;
        }
        Some(Snapshot {
            buckets,
            count,
            sum_ns,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_values_within_their_precision() {
        let check = |v: u64| {
            let i = index(v);
            let (low, width) = bounds(i);
            assert!(low <= v && v < low + width, "{v} outside bucket {i}");
            assert!(width == 1 || (width as f64) / (low as f64) <= 1.0 / 128.0 + 1e-9);
            i
        };
        let mut last = 0;
        for v in 0..5000u64 {
            let i = check(v);
            assert!(i >= last, "buckets not monotonic at {v}");
            last = i;
        }
        for s in 0..40 {
            check((1u64 << s) * 3 / 2);
            check((1u64 << s).saturating_sub(1));
        }
        assert_eq!(index(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn quantiles_match_exact_ranks_within_precision() {
        let h = Histogram::default();
        for v in 1..=100_000u64 {
            h.record_ns(v * 10);
        }
        let s = h.snapshot();
        assert_eq!(s.count(), 100_000);
        for (q, exact) in [(0.5, 500_000.0), (0.99, 990_000.0), (0.999, 999_000.0)] {
            let got = s.quantile_ns(q) as f64;
            assert!((got - exact).abs() / exact < 0.01, "q{q}: {got} vs {exact}");
        }
        assert_eq!(s.mean_ns(), 500_005.0);
    }

    #[test]
    fn a_window_is_the_difference_of_two_snapshots() {
        let h = Histogram::default();
        for _ in 0..1000 {
            h.record_ns(1_000_000);
        }
        let before = h.snapshot();
        for _ in 0..10 {
            h.record_ns(5_000);
        }
        let window = h.snapshot().since(&before);
        assert_eq!(window.count(), 10);
        assert_eq!(window.sum_ns(), 50_000);
        assert!(window.quantile_ns(0.99) < 5_100);
        let round = Snapshot::parse(&h.snapshot().encode()).expect("parses");
        assert_eq!(round, h.snapshot());
        assert!(
            Snapshot::parse("3 10 1:1,0:2").is_none(),
            "unordered buckets"
        );
        assert!(Snapshot::parse("5 10 1:1").is_none(), "count mismatch");
    }
}
