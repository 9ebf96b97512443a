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
