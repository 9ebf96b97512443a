//! Per-connection counters that benchmarks and operators read.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Live counters of one link. Backends update them; readers take a [`CounterSnapshot`].
#[derive(Debug, Default)]
pub struct LinkCounters {
    /// Frames handed to the backend for sending.
    pub frames_sent: AtomicU64,
    /// Frames received.
    pub frames_received: AtomicU64,
    /// Bytes sent (frames, length prefix included).
    pub bytes_sent: AtomicU64,
    /// Bytes received.
    pub bytes_received: AtomicU64,
    /// Kernel crossings and doorbells made to send: `write`/`writev` syscalls for TCP; for
    /// RDMA every doorbell the link rings, `post_recv` (re-posting receive slots) included.
    pub send_calls: AtomicU64,
    /// Receive-side kernel crossings: `read` syscalls for TCP, blocking waits for RDMA.
    pub recv_calls: AtomicU64,
    /// Payload copies made in user space (e.g. a body copied into a send buffer).
    pub payload_copies: AtomicU64,
    /// Bytes moved by those copies.
    pub copied_bytes: AtomicU64,
    /// Bytes reserved for sending and not yet written (a gauge).
    pub queued_bytes: AtomicU64,
    /// Highest value `queued_bytes` has reached.
    pub queued_bytes_peak: AtomicU64,
    /// Reservations that had to wait for send credits or a free send slot (RDMA) or for the
    /// send queue to drain (TCP).
    pub credit_waits: AtomicU64,
}

impl LinkCounters {
    /// Adds `n` to a counter.
    #[inline]
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    /// Records `n` more queued bytes and updates the peak.
    pub fn queue(&self, n: u64) {
        let now = self.queued_bytes.fetch_add(n, Relaxed) + n;
        self.queued_bytes_peak.fetch_max(now, Relaxed);
    }

    /// Records `n` queued bytes leaving the queue.
    pub fn dequeue(&self, n: u64) {
        self.queued_bytes.fetch_sub(n, Relaxed);
    }

    /// Records one payload copy of `n` bytes.
    pub fn copy(&self, n: u64) {
        self.payload_copies.fetch_add(1, Relaxed);
        self.copied_bytes.fetch_add(n, Relaxed);
    }

    /// A consistent-enough copy of all counters.
    pub fn snapshot(&self) -> CounterSnapshot {
        CounterSnapshot {
            frames_sent: self.frames_sent.load(Relaxed),
            frames_received: self.frames_received.load(Relaxed),
            bytes_sent: self.bytes_sent.load(Relaxed),
            bytes_received: self.bytes_received.load(Relaxed),
            send_calls: self.send_calls.load(Relaxed),
            recv_calls: self.recv_calls.load(Relaxed),
            payload_copies: self.payload_copies.load(Relaxed),
            copied_bytes: self.copied_bytes.load(Relaxed),
            queued_bytes: self.queued_bytes.load(Relaxed),
            queued_bytes_peak: self.queued_bytes_peak.load(Relaxed),
            credit_waits: self.credit_waits.load(Relaxed),
        }
    }
}

/// A point-in-time copy of [`LinkCounters`]; subtract two to get the counts of an interval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct CounterSnapshot {
    pub frames_sent: u64,
    pub frames_received: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub send_calls: u64,
    pub recv_calls: u64,
    pub payload_copies: u64,
    pub copied_bytes: u64,
    pub queued_bytes: u64,
    pub queued_bytes_peak: u64,
    pub credit_waits: u64,
}

impl std::ops::Sub for CounterSnapshot {
    type Output = CounterSnapshot;
    /// Interval counts; the gauges (`queued_bytes*`) keep the later value.
    fn sub(self, earlier: CounterSnapshot) -> CounterSnapshot {
        CounterSnapshot {
            frames_sent: self.frames_sent - earlier.frames_sent,
            frames_received: self.frames_received - earlier.frames_received,
            bytes_sent: self.bytes_sent - earlier.bytes_sent,
            bytes_received: self.bytes_received - earlier.bytes_received,
            send_calls: self.send_calls - earlier.send_calls,
            recv_calls: self.recv_calls - earlier.recv_calls,
            payload_copies: self.payload_copies - earlier.payload_copies,
            copied_bytes: self.copied_bytes - earlier.copied_bytes,
            queued_bytes: self.queued_bytes,
            queued_bytes_peak: self.queued_bytes_peak,
            credit_waits: self.credit_waits - earlier.credit_waits,
        }
    }
}
