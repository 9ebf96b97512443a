//! Pop consumption and timers, in process (no transport: the broker's own cost).
//!
//! - [`run_pop`]: a topic is filled with 1 KiB messages, then concurrent consumers pop
//!   batches and ack every message one by one, as a RocketMQ 5 SimpleConsumer does. Every pop
//!   and ack writes a pop-log record through the commit log before it is answered.
//! - [`run_timers`]: timers due over the next few seconds are parked through the store, then
//!   fired by the timing wheel; lateness = the fired copy's store time − its delivery time.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use rdmq_broker::filter::TagFilter;
use rdmq_broker::message::{self, HostAddr, NewMessage, Properties};
use rdmq_broker::pop::{PopConfig, PopRequest, PopService};
use rdmq_broker::store::meta::TopicConfig;
use rdmq_broker::store::{FlushMode, Store, StoreConfig, now_ms};
use rdmq_broker::timer::{self, TimerConfig, TimerService};

use crate::report::{latency_histogram, process_cpu_time};

const TOPIC: &str = "bench";
const QUEUES: u32 = 8;

fn open_store(dir: &Path, flush: FlushMode) -> Result<Store, String> {
    let cfg = StoreConfig {
        flush,
        segment_size: 256 << 20,
        min_free_bytes: 0,
        ..StoreConfig::new(dir)
    };
    let store = Store::open(cfg).map_err(|e| e.to_string())?;
    store
        .put_topic(TopicConfig::new(TOPIC, QUEUES))
        .map_err(|e| e.to_string())?;
    Ok(store)
}

fn message(queue: i32, properties: String, body: Bytes) -> NewMessage {
    NewMessage {
        topic: TOPIC.into(),
        queue_id: queue,
        flag: 0,
        sys_flag: 0,
        born_timestamp: now_ms(),
        born_host: HostAddr::parse("127.0.0.1:1"),
        reconsume_times: 0,
        properties,
        body,
    }
}

/// One pop + ack run.
#[derive(Debug)]
pub struct PopRun {
    /// Messages popped and acked.
    pub messages: u64,
    /// Pop requests made.
    pub pops: u64,
    /// Wall time of the consuming phase.
    pub wall: Duration,
    /// Process CPU time of the consuming phase.
    pub cpu: Duration,
    /// Latency of one pop request (ns).
    pub pop_latency: Histogram<u64>,
    /// Latency of one ack (ns).
    pub ack_latency: Histogram<u64>,
}

impl PopRun {
    /// Messages popped and acked per second.
    pub fn rate(&self) -> f64 {
        self.messages as f64 / self.wall.as_secs_f64()
    }
}

/// Fills the topic with `messages` bodies of `size` bytes, then `consumers` tasks on one
/// runtime thread pop `batch` at a time and ack each message until all are consumed.
pub fn run_pop(
    dir: &Path,
    flush: FlushMode,
    size: usize,
    messages: u64,
    consumers: usize,
    batch: u32,
) -> Result<PopRun, String> {
    let store = open_store(dir, flush)?;
    let pop = PopService::start(store.clone(), &dir.join("pop"), PopConfig::default())
        .map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let body = Bytes::from((0..size).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    rt.block_on(async {
        let mut chunk = Vec::with_capacity(64);
        for i in 0..messages {
            chunk.push(message(
                (i % QUEUES as u64) as i32,
                "TAGS\u{1}bench".into(),
                body.clone(),
            ));
            if chunk.len() == 64 || i + 1 == messages {
                store.put(&chunk).await.map_err(|e| e.to_string())?;
                chunk.clear();
            }
        }
        Ok::<_, String>(())
    })?;
    let pop = Arc::new(pop);
    let cpu0 = process_cpu_time();
    let t0 = Instant::now();
    let (consumed, pops, pop_latency, ack_latency) = rt.block_on(async {
        let remaining = Arc::new(std::sync::atomic::AtomicI64::new(messages as i64));
        let mut tasks = Vec::new();
        for _ in 0..consumers {
            let pop = pop.clone();
            let remaining = remaining.clone();
            tasks.push(tokio::spawn(async move {
                let (mut hp, mut ha) = (latency_histogram(), latency_histogram());
                let (mut got, mut pops) = (0u64, 0u64);
                let req = PopRequest {
                    group: "bench-group".into(),
                    topic: TOPIC.into(),
                    queue: -1,
                    max: batch,
                    invisible_ms: 60_000,
                    poll: Duration::ZERO,
                    filter: TagFilter::parse("*"),
                    fifo: false,
                };
                let mut idle = 0;
                while remaining.load(std::sync::atomic::Ordering::Relaxed) > 0 {
                    let start = Instant::now();
                    let r = pop.pop(&req).await.map_err(|e| e.to_string())?;
                    hp.record(start.elapsed().as_nanos() as u64).ok();
                    pops += 1;
                    if r.messages.is_empty() {
                        // Other consumers hold the rest; stop once nothing shows up for a while.
                        idle += 1;
                        if idle > 200 {
                            break;
                        }
                        tokio::task::yield_now().await;
                        continue;
                    }
                    idle = 0;
                    for m in &r.messages {
                        let start = Instant::now();
                        pop.ack("bench-group", &m.handle.to_string())
                            .await
                            .map_err(|e| e.to_string())?;
                        ha.record(start.elapsed().as_nanos() as u64).ok();
                    }
                    got += r.messages.len() as u64;
                    remaining.fetch_sub(
                        r.messages.len() as i64,
                        std::sync::atomic::Ordering::Relaxed,
                    );
                }
                Ok::<_, String>((got, pops, hp, ha))
            }));
        }
        let (mut got, mut pops) = (0, 0);
        let (mut hp, mut ha) = (latency_histogram(), latency_histogram());
        for t in tasks {
            let (g, p, a, b) = t.await.map_err(|e| e.to_string())??;
            got += g;
            pops += p;
            hp.add(a).map_err(|e| e.to_string())?;
            ha.add(b).map_err(|e| e.to_string())?;
        }
        Ok::<_, String>((got, pops, hp, ha))
    })?;
    let wall = t0.elapsed();
    let cpu = process_cpu_time() - cpu0;
    pop.shutdown();
    store.shutdown();
    if consumed != messages {
        return Err(format!("consumed {consumed} of {messages} messages"));
    }
    Ok(PopRun {
        messages: consumed,
        pops,
        wall,
        cpu,
        pop_latency,
        ack_latency,
    })
}

/// One timer run.
#[derive(Debug)]
pub struct TimerRun {
    /// Timers fired.
    pub fired: u64,
    /// Time to park all of them.
    pub scheduled_in: Duration,
    /// Fired copy's store time − delivery time, per timer (ms; negative = early).
    pub lateness_ms: Vec<i64>,
}

/// Parks `count` timers due evenly over `spread` starting `lead` from now, waits for all of
/// them to fire, and measures each one's lateness.
pub fn run_timers(
    dir: &Path,
    count: u64,
    lead: Duration,
    spread: Duration,
) -> Result<TimerRun, String> {
    let store = open_store(
        dir,
        FlushMode::Async {
            interval: Duration::from_millis(500),
        },
    )?;
    let timers = TimerService::start(store.clone(), &dir.join("timer"), TimerConfig::default())
        .map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let start_pos = store.log_end();
    let first_due = now_ms() + lead.as_millis() as i64;
    let t0 = Instant::now();
    rt.block_on(async {
        let body = Bytes::from_static(b"timer");
        let mut chunk = Vec::with_capacity(256);
        for i in 0..count {
            let due = first_due + (spread.as_millis() as u64 * i / count.max(1)) as i64;
            let msg = message(
                (i % QUEUES as u64) as i32,
                format!("{}\u{1}{due}", message::prop::TIMER_DELIVER_MS),
                body.clone(),
            );
            chunk.push(timer::park(&msg, due));
            if chunk.len() == 256 || i + 1 == count {
                store.put(&chunk).await.map_err(|e| e.to_string())?;
                chunk.clear();
            }
        }
        Ok::<_, String>(())
    })?;
    let scheduled_in = t0.elapsed();
    let deadline = Instant::now() + lead + spread + Duration::from_secs(30);
    while timers.stats().fired < count {
        if Instant::now() > deadline {
            return Err(format!(
                "only {} of {count} timers fired",
                timers.stats().fired
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Let the last batch reach the log before scanning it.
    std::thread::sleep(Duration::from_millis(200));
    let mut lateness_ms = Vec::with_capacity(count as usize);
    store.scan_records(start_pos, |_, rec| {
        let Ok(msgs) = message::decode_records(&rec) else {
            return;
        };
        for m in msgs {
            if m.topic != TOPIC {
                continue;
            }
            if let Ok(p) = Properties::parse(&m.properties)
                && let Some(due) = p
                    .get(message::prop::TIMER_DELIVER_MS)
                    .and_then(|v| v.parse::<i64>().ok())
            {
                lateness_ms.push(m.store_timestamp - due);
            }
        }
    });
    timers.shutdown();
    store.shutdown();
    lateness_ms.sort_unstable();
    Ok(TimerRun {
        fired: lateness_ms.len() as u64,
        scheduled_in,
        lateness_ms,
    })
}

/// The `p` quantile of sorted values.
pub fn quantile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// `rdmq-bench pop-scale`: `messages` of 128 B spread over `topics` × 8 queues, all popped
/// (in flight at once, invisible for an hour), half of them acked with batch acks; then the
/// pop state is closed and reopened (clean restart, timed) and checked: what was acked is not
/// delivered again, every unacked delivery is still in flight and its handle still acks, an
/// acked handle is refused.
pub fn pop_scale_main(argv: &[String]) -> std::process::ExitCode {
    let num = |flag: &str, default: u64| {
        argv.iter()
            .position(|a| a == flag)
            .and_then(|i| argv.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let dir = argv
        .iter()
        .position(|a| a == "--dir")
        .and_then(|i| argv.get(i + 1))
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "target/pop-scale".into());
    match run_pop_scale(&dir, num("--messages", 1_000_000), num("--topics", 1250)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rdmq-bench pop-scale: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn scale_topic(t: u64) -> String {
    format!("pop-scale-{t:05}")
}

/// A pop of up to 32 from any queue of `topic`, without long polling.
fn scale_request(topic: &str, invisible_ms: i64) -> PopRequest {
    PopRequest {
        group: "scale-group".into(),
        topic: topic.to_owned(),
        queue: -1,
        max: 32,
        invisible_ms,
        poll: Duration::ZERO,
        filter: TagFilter::parse("*"),
        fifo: false,
    }
}

fn open_pop(dir: &Path) -> Result<(Store, PopService), String> {
    let cfg = StoreConfig {
        flush: FlushMode::Async {
            interval: Duration::from_millis(200),
        },
        segment_size: 256 << 20,
        min_free_bytes: 0,
        ..StoreConfig::new(dir)
    };
    let store = Store::open(cfg).map_err(|e| e.to_string())?;
    let pop = PopService::start(
        store.clone(),
        &dir.join("pop"),
        PopConfig {
            initial: rdmq_broker::pop::InitialOffset::First,
            ..PopConfig::default()
        },
    )
    .map_err(|e| e.to_string())?;
    Ok((store, pop))
}

fn vm_hwm_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

fn run_pop_scale(dir: &Path, messages: u64, topics: u64) -> Result<(), String> {
    const Q: u64 = 8;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let (store, pop) = open_pop(dir)?;
    let names: Vec<String> = (0..topics).map(scale_topic).collect();
    store
        .put_topics(
            names
                .iter()
                .map(|n| TopicConfig::new(n, Q as u32))
                .collect(),
        )
        .map_err(|e| e.to_string())?;
    let per_queue = messages.div_ceil(topics * Q);
    let t = Instant::now();
    rt.block_on(async {
        for (ti, name) in names.iter().enumerate() {
            for q in 0..Q {
                let chunk: Vec<NewMessage> = (0..per_queue)
                    .map(|k| {
                        let id = (ti as u64 * Q + q) * per_queue + k;
                        let mut m = message(
                            q as i32,
                            format!("UNIQ_KEY\u{1}{id}\u{2}"),
                            Bytes::from(vec![7u8; 128]),
                        );
                        m.topic = name.clone();
                        m
                    })
                    .collect();
                store.put(&chunk).await.map_err(|e| e.to_string())?;
            }
        }
        Ok::<_, String>(())
    })?;
    let total = per_queue * topics * Q;
    println!(
        "pop-scale: {total} messages of 128 B over {topics} topics × {Q} queues ({} queues) stored in {:.1} s",
        topics * Q,
        t.elapsed().as_secs_f64()
    );
    let id_of = |p: &rdmq_broker::pop::Popped| -> u64 {
        message::decode_record(&p.record)
            .ok()
            .and_then(|m| {
                Properties::parse(&m.properties)
                    .ok()?
                    .get("UNIQ_KEY")?
                    .parse()
                    .ok()
            })
            .unwrap_or(u64::MAX)
    };
    // Pop everything: all of it in flight at once.
    let pop = Arc::new(pop);
    let t = Instant::now();
    let cpu0 = process_cpu_time();
    let handles: Vec<(u64, String)> = rt.block_on(async {
        let mut tasks = Vec::new();
        for c in 0..16u64 {
            let (pop, names) = (pop.clone(), names.clone());
            tasks.push(tokio::spawn(async move {
                let mut got = Vec::new();
                for name in names.iter().skip(c as usize).step_by(16) {
                    loop {
                        let r = pop
                            .pop(&scale_request(name, 3_600_000))
                            .await
                            .map_err(|e| e.to_string())?;
                        if r.messages.is_empty() {
                            break;
                        }
                        got.extend(r.messages.iter().map(|p| (id_of(p), p.handle.to_string())));
                    }
                }
                Ok::<_, String>(got)
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.map_err(|e| e.to_string())??);
        }
        Ok::<_, String>(all)
    })?;
    let pop_s = t.elapsed().as_secs_f64();
    let pop_cpu = (process_cpu_time() - cpu0).as_secs_f64();
    let mut ids: Vec<u64> = handles.iter().map(|h| h.0).collect();
    ids.sort_unstable();
    ids.dedup();
    if ids.len() as u64 != total || handles.len() as u64 != total {
        return Err(format!(
            "popped {} ({} distinct) of {total}",
            handles.len(),
            ids.len()
        ));
    }
    println!(
        "  pop: {total} in flight after {:.1} s ({:.0} msg/s, {:.2} cores), pop service in flight {}, VmHWM {:.0} MiB",
        pop_s,
        total as f64 / pop_s,
        pop_cpu / pop_s,
        pop.in_flight(),
        vm_hwm_mib()
    );
    // Ack every other one, 32 per batch.
    let (acked, kept): (Vec<_>, Vec<_>) = handles.iter().enumerate().partition(|(i, _)| i % 2 == 0);
    let t = Instant::now();
    let cpu0 = process_cpu_time();
    rt.block_on(async {
        for chunk in acked.chunks(32) {
            let hs: Vec<String> = chunk.iter().map(|(_, h)| h.1.clone()).collect();
            for r in pop.ack_batch("scale-group", &hs).await {
                r.map_err(|e| format!("ack: {e}"))?;
            }
        }
        Ok::<_, String>(())
    })?;
    let ack_s = t.elapsed().as_secs_f64();
    println!(
        "  ack: {} acked in batches of 32 in {:.1} s ({:.0} msg/s, {:.2} cores); in flight {}",
        acked.len(),
        ack_s,
        acked.len() as f64 / ack_s,
        (process_cpu_time() - cpu0).as_secs_f64() / ack_s,
        pop.in_flight()
    );
    // Clean restart.
    let t = Instant::now();
    pop.shutdown();
    store.shutdown();
    drop(pop);
    drop(store);
    let stop_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let (store, pop) = open_pop(dir)?;
    let start_s = t.elapsed().as_secs_f64();
    let in_flight = pop.in_flight();
    println!(
        "  restart: stop {stop_s:.2} s, start {start_s:.2} s; in flight after {in_flight} (expected {})",
        kept.len()
    );
    let mut bad = Vec::new();
    if in_flight != kept.len() {
        bad.push(format!(
            "{in_flight} in flight after the restart, {} expected",
            kept.len()
        ));
    }
    rt.block_on(async {
        // Nothing is delivered again: acked ones are done, the rest still invisible.
        for name in names.iter().step_by((topics as usize / 50).max(1)) {
            let r = pop
                .pop(&scale_request(name, 60_000))
                .await
                .map_err(|e| e.to_string())?;
            if !r.messages.is_empty() {
                bad.push(format!(
                    "{} delivered again from {name} after the restart",
                    r.messages.len()
                ));
            }
        }
        // Every unacked delivery survived: its handle acks.
        let mut failed = 0;
        for chunk in kept.chunks(32) {
            let hs: Vec<String> = chunk.iter().map(|(_, h)| h.1.clone()).collect();
            failed += pop
                .ack_batch("scale-group", &hs)
                .await
                .iter()
                .filter(|r| r.is_err())
                .count();
        }
        if failed > 0 {
            bad.push(format!(
                "{failed} unacked handles no longer ack after the restart"
            ));
        }
        // An acked handle stays acked.
        let again: Vec<String> = acked.iter().take(100).map(|(_, h)| h.1.clone()).collect();
        let refused = pop
            .ack_batch("scale-group", &again)
            .await
            .iter()
            .filter(|r| r.is_err())
            .count();
        if refused != again.len() {
            bad.push(format!(
                "{} of {} acked handles acked again",
                again.len() - refused,
                again.len()
            ));
        }
        Ok::<_, String>(())
    })?;
    println!(
        "  after the restart: nothing delivered again, {} unacked handles acked, in flight {}: {}",
        kept.len(),
        pop.in_flight(),
        if bad.is_empty() {
            "correct".to_owned()
        } else {
            bad.join("; ")
        }
    );
    pop.shutdown();
    store.shutdown();
    let _ = std::fs::remove_dir_all(dir);
    if bad.is_empty() {
        Ok(())
    } else {
        Err(bad.join("; "))
    }
}
