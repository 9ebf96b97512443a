//! Open-loop pacing: operation `i` is due at `start + i / rate`, whether or not earlier ones have
//! finished, and its latency runs from that due time, so a stall shows up in every operation it
//! delays (no coordinated omission). A closed loop ([`closed`]) is kept for finding the
//! saturation rate.
//!
//! Both run a warm-up, then a measured window; `on_edge` is called as the window opens and closes
//! so the caller can sample the processes under load at those instants.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use rdmq_transport::metrics::{Histogram, Snapshot};
use tokio::sync::Semaphore;
use tokio::time::{Instant, sleep_until};

/// The phases of one measurement.
#[derive(Debug, Clone, Copy)]
pub struct Phases {
    /// Load before the window opens (connections, caches, JIT-free but warm).
    pub warmup: Duration,
    /// The measured window.
    pub window: Duration,
    /// After the window closes, how long in-flight operations may take to finish.
    pub drain: Duration,
}

/// A window's edge, passed to `on_edge`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edge {
    /// The window opens.
    Start,
    /// The window closes.
    End,
}

/// What a paced or closed run measured.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Operations due inside the window.
    pub due_in_window: u64,
    /// Units of work (messages) completed successfully inside the window, by completion time.
    pub done_in_window: u64,
    /// Failed operations due (or, closed loop, started) inside the window.
    pub errors: u64,
    /// Operations that started more than 1 ms after they were due (in-flight bound reached or
    /// the pacer fell behind); their latency still counts from the due time.
    pub late_starts: u64,
    /// Latency of the window's operations from their due time (closed loop: from their start).
    pub latency: Snapshot,
    /// Operations still unfinished when the drain time ran out.
    pub unfinished: u64,
    /// Operations due before the window closed that never started (in-flight bound held).
    pub not_started: u64,
}

#[derive(Default)]
struct Tally {
    latency: Histogram,
    done: AtomicU64,
    errors: AtomicU64,
}

/// Runs `op(i)` at `rate` per second, at most `max_in_flight` at once. `op` returns the units of
/// work it completed (`Err` on failure).
pub async fn open<F, Fut>(
    rate: f64,
    phases: Phases,
    max_in_flight: usize,
    on_edge: impl FnMut(Edge) + Send + 'static,
    op: F,
) -> Outcome
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = Result<u64, String>> + Send + 'static,
{
    let start = Instant::now();
    let win_start = start + phases.warmup;
    let win_end = win_start + phases.window;
    let period = Duration::from_secs_f64(1.0 / rate.max(1e-3));
    let tally = Arc::new(Tally::default());
    let permits = Arc::new(Semaphore::new(max_in_flight));
    let edges = tokio::spawn(edges(win_start, win_end, on_edge));
    let (mut due_in_window, mut late, mut not_started) = (0, 0, 0);
    let total = (phases.warmup + phases.window).as_secs_f64() * rate;
    for i in 0u64.. {
        let due = start + period.mul_f64(i as f64);
        if due >= win_end {
            break;
        }
        sleep_until(due).await;
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("semaphore never closed"),
            _ = sleep_until(win_end) => {
                not_started = (total as u64).saturating_sub(i);
                break;
            }
        };
        if Instant::now().saturating_duration_since(due) > Duration::from_millis(1) {
            late += 1;
        }
        let in_window = due >= win_start;
        due_in_window += u64::from(in_window);
        let fut = op(i);
        let tally = tally.clone();
        tokio::spawn(async move {
            let res = fut.await;
            let now = Instant::now();
            if in_window {
                tally.latency.record(now - due);
            }
            match res {
                Ok(n) if now >= win_start && now < win_end => {
                    tally.done.fetch_add(n, Relaxed);
                }
                Ok(_) => {}
                Err(_) if in_window => {
                    tally.errors.fetch_add(1, Relaxed);
                }
                Err(_) => {}
            }
            drop(permit);
        });
    }
    let _ = edges.await;
    let mut out = finish(
        tally,
        permits,
        max_in_flight,
        phases.drain,
        due_in_window,
        late,
    )
    .await;
    out.not_started = not_started;
    out
}

/// Calls `on_edge` as the window opens and as it closes, whatever the pacer is doing.
async fn edges(win_start: Instant, win_end: Instant, mut on_edge: impl FnMut(Edge)) {
    sleep_until(win_start).await;
    on_edge(Edge::Start);
    sleep_until(win_end).await;
    on_edge(Edge::End);
}

/// Keeps `concurrency` operations in flight back to back (for the saturation rate).
pub async fn closed<F, Fut>(
    concurrency: usize,
    phases: Phases,
    on_edge: impl FnMut(Edge) + Send + 'static,
    op: F,
) -> Outcome
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<u64, String>> + Send + 'static,
{
    let start = Instant::now();
    let win_start = start + phases.warmup;
    let win_end = win_start + phases.window;
    let tally = Arc::new(Tally::default());
    let started_in_window = Arc::new(AtomicU64::new(0));
    let op = Arc::new(op);
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (op, tally, next, started) = (
            op.clone(),
            tally.clone(),
            next.clone(),
            started_in_window.clone(),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let t0 = Instant::now();
                if t0 >= win_end {
                    break;
                }
                let in_window = t0 >= win_start;
                started.fetch_add(u64::from(in_window), Relaxed);
                let res = op(next.fetch_add(1, Relaxed)).await;
                let now = Instant::now();
                if in_window {
                    tally.latency.record(now - t0);
                }
                match res {
                    Ok(n) if now >= win_start && now < win_end => {
                        tally.done.fetch_add(n, Relaxed);
                    }
                    Ok(_) => {}
                    Err(_) => {
                        tally.errors.fetch_add(u64::from(in_window), Relaxed);
                    }
                }
            }
        }));
    }
    edges(win_start, win_end, on_edge).await;
    let deadline = win_end + phases.drain;
    let mut unfinished = 0;
    for w in workers {
        if tokio::time::timeout_at(deadline, w).await.is_err() {
            unfinished += 1;
        }
    }
    Outcome {
        due_in_window: started_in_window.load(Relaxed),
        done_in_window: tally.done.load(Relaxed),
        errors: tally.errors.load(Relaxed),
        late_starts: 0,
        latency: tally.latency.snapshot(),
        unfinished,
        not_started: 0,
    }
}

async fn finish(
    tally: Arc<Tally>,
    permits: Arc<Semaphore>,
    max_in_flight: usize,
    drain: Duration,
    due_in_window: u64,
    late_starts: u64,
) -> Outcome {
    let all = u32::try_from(max_in_flight).unwrap_or(u32::MAX);
    let unfinished = match tokio::time::timeout(drain, permits.acquire_many(all)).await {
        Ok(_) => 0,
        Err(_) => (max_in_flight - permits.available_permits()) as u64,
    };
    Outcome {
        due_in_window,
        done_in_window: tally.done.load(Relaxed),
        errors: tally.errors.load(Relaxed),
        late_starts,
        latency: tally.latency.snapshot(),
        unfinished,
        not_started: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    const PHASES: Phases = Phases {
        warmup: Duration::from_secs(1),
        window: Duration::from_secs(2),
        drain: Duration::from_secs(5),
    };

    /// Records when each operation started (virtual time since the test began).
    fn starts() -> Arc<Mutex<Vec<(u64, Duration)>>> {
        Arc::new(Mutex::new(Vec::new()))
    }

    #[tokio::test(start_paused = true)]
    async fn operations_start_on_schedule_and_the_window_counts_them() {
        let t0 = Instant::now();
        let log = starts();
        let edges = Arc::new(Mutex::new(Vec::new()));
        let e = edges.clone();
        let l = log.clone();
        let out = open(
            1000.0,
            PHASES,
            64,
            move |edge| e.lock().unwrap().push((edge, t0.elapsed())),
            move |i| {
                l.lock().unwrap().push((i, t0.elapsed()));
                async {
                    tokio::time::sleep(Duration::from_micros(300)).await;
                    Ok(1)
                }
            },
        )
        .await;
        let log = log.lock().unwrap();
        assert_eq!(log.len(), 3000, "1000/s for 3 s");
        for (i, at) in log.iter() {
            let due = Duration::from_micros(i * 1000);
            assert!(
                *at >= due && *at - due < Duration::from_millis(1),
                "op {i} at {at:?}"
            );
        }
        assert_eq!(out.due_in_window, 2000);
        assert!((1998..=2000).contains(&out.done_in_window), "{out:?}");
        assert_eq!((out.errors, out.late_starts, out.unfinished), (0, 0, 0));
        assert_eq!(out.latency.count(), 2000);
        assert!(out.latency.quantile_ns(0.99) < 1_400_000, "{out:?}");
        let edges = edges.lock().unwrap();
        assert_eq!(edges[0], (Edge::Start, Duration::from_secs(1)));
        assert_eq!(edges[1], (Edge::End, Duration::from_secs(3)));
    }

    /// One server that handles one request at a time, each taking 2 ms, offered 1000/s: it
    /// falls behind by 1 ms per request. Open-loop latency must show the growing queue; a
    /// closed-loop client timing from its own send would see a flat 2 ms.
    #[tokio::test(start_paused = true)]
    async fn a_slow_server_shows_its_queue_in_the_latency() {
        let server = Arc::new(tokio::sync::Mutex::new(()));
        let phases = Phases {
            warmup: Duration::ZERO,
            window: Duration::from_millis(500),
            drain: Duration::from_secs(5),
        };
        let out = open(
            1000.0,
            phases,
            10_000,
            |_| {},
            move |_| {
                let server = server.clone();
                async move {
                    let _one = server.lock().await;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    Ok(1)
                }
            },
        )
        .await;
        assert_eq!(out.due_in_window, 500);
        // Request k is due at k ms and done at (k + 1) × 2 ms: its latency is about k ms, so
        // the last of 500 waits about 0.5 s and the median about 0.25 s.
        let max = out.latency.quantile_ns(1.0) as f64 / 1e9;
        assert!((0.45..0.55).contains(&max), "max latency {max} s");
        let p50 = out.latency.quantile_ns(0.5) as f64 / 1e9;
        assert!((0.2..0.3).contains(&p50), "median {p50} s");
        assert!(
            out.done_in_window < 260,
            "only ~250 fit in the window: {out:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_in_flight_bound_delays_starts_and_counts_them_late() {
        let out = open(
            1000.0,
            PHASES,
            1,
            |_| {},
            |_| async {
                tokio::time::sleep(Duration::from_millis(3)).await;
                Err::<u64, _>("refused".into())
            },
        )
        .await;
        assert!(out.late_starts > 0);
        assert_eq!(out.errors, out.due_in_window - out.unfinished);
        assert_eq!(out.done_in_window, 0);
        // 3 ms per operation, one at a time: about a third of the schedule starts.
        assert!(out.not_started > 1500, "{out:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn closed_loop_rate_follows_the_service_time() {
        let out = closed(
            4,
            PHASES,
            |_| {},
            |_| async {
                tokio::time::sleep(Duration::from_millis(2)).await;
                Ok(1)
            },
        )
        .await;
        // 4 in flight, 2 ms each: 2000/s over a 2 s window.
        assert!((3990..=4004).contains(&out.done_in_window), "{out:?}");
        assert_eq!(out.unfinished, 0);
    }
}
