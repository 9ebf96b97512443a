//! `rdmq-bench scale`: the broker's store at scale, on a broker process of its own fed by a
//! batched remoting client (SEND_BATCH_MESSAGE, several requests in flight).
//!
//! 1. **Load**: `--messages` of `--body` bytes over `--topics` × `--queues` (topics made with one
//!    UPDATE_AND_CREATE_TOPIC_LIST); the broker's anonymous RSS (`RssAnon`) and peak (`VmHWM`)
//!    every million; growth per million messages after `--warmup`.
//! 2. **Samples**: pulls from random offsets and lookups by key and by `UNIQ_KEY`
//!    (QUERY_MESSAGE), each checked byte for byte against what was sent.
//! 3. **Topic burst**: `--create-topics` topics in one request while single sends to other
//!    topics keep going: creation time, their p99 before and during.
//! 4. **Idle polls**: `--idle-polls` long polls parked on idle queues, then traffic on one
//!    queue: long-poll wake-ups (the broker's `rdmq_broker_long_poll_wakeups_total`) and broker
//!    CPU per message, against the same traffic before the polls were parked.
//! 5. **Restart** (`--restart`): clean stop and restart, SIGKILL and restart (times), samples
//!    again.
//!
//! With `--gate`, the run fails when RSS growth exceeds `--max-growth-mib` (or the end's
//! `--max-rss-mib`), a sample is wrong, the burst takes more than 3 s, idle polls are woken, or
//! a restart takes longer than `--max-restart-s` / `--max-kill-restart-s`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdmq_broker::message::{self, Properties};
use rdmq_transport::protocol::{request_code as rc, response_code};
use rdmq_transport::remoting::{Client, ClientConfig};
use rdmq_transport::tcp::TcpTransport;
use rdmq_transport::{Endpoint, RemotingCommand};

use crate::headline::measure::{metrics_addr, scrape, value};
use crate::headline::procs::{Proc, ProcSample};

/// `rdmq-bench scale` flags.
#[derive(Debug, clap::Parser)]
#[command(
    name = "rdmq-bench scale",
    about = "The broker's store at scale (see module docs)"
)]
pub struct Flags {
    /// Messages to load
    #[arg(long, default_value_t = 5_000_000)]
    pub messages: u64,
    /// Topics
    #[arg(long, default_value_t = 1000)]
    pub topics: u64,
    /// Queues per topic
    #[arg(long, default_value_t = 8)]
    pub queues: u64,
    /// Body bytes
    #[arg(long, default_value_t = 128)]
    pub body: usize,
    /// Messages per SEND_BATCH_MESSAGE
    #[arg(long, default_value_t = 32)]
    pub batch: u64,
    /// Requests in flight
    #[arg(long, default_value_t = 16)]
    pub in_flight: usize,
    /// Messages before the RSS baseline is taken
    #[arg(long, default_value_t = 1_000_000)]
    pub warmup: u64,
    /// Random offsets (and keys, and ids) checked
    #[arg(long, default_value_t = 200)]
    pub samples: u64,
    /// Topics created in the burst (0 = skip)
    #[arg(long, default_value_t = 5000)]
    pub create_topics: u64,
    /// Long polls parked on idle queues (0 = skip)
    #[arg(long, default_value_t = 10_000)]
    pub idle_polls: u64,
    /// Also stop, restart, SIGKILL and restart the broker
    #[arg(long)]
    pub restart: bool,
    /// Fail on a missed target
    #[arg(long)]
    pub gate: bool,
    /// RSS growth allowed after warm-up, MiB per million messages (with --gate)
    #[arg(long, default_value_t = 2.0)]
    pub max_growth_mib: f64,
    /// Anonymous RSS allowed at the end of the load, MiB (with --gate)
    #[arg(long, default_value_t = 300.0)]
    pub max_rss_mib: f64,
    /// Start after a clean stop allowed, seconds (with --gate and --restart)
    #[arg(long, default_value_t = 5.0)]
    pub max_restart_s: f64,
    /// Start after SIGKILL allowed, seconds (with --gate and --restart)
    #[arg(long, default_value_t = 15.0)]
    pub max_kill_restart_s: f64,
    /// Store directory (emptied first, removed after unless --keep)
    #[arg(long, default_value = "target/scale-bench")]
    pub dir: PathBuf,
    /// Keep the store directory
    #[arg(long)]
    pub keep: bool,
}

/// Entry point of `rdmq-bench scale`.
pub fn main(argv: &[String]) -> ExitCode {
    use clap::Parser;
    let flags = match Flags::try_parse_from(
        std::iter::once("scale".to_owned()).chain(argv.iter().cloned()),
    ) {
        Ok(f) => f,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(e.exit_code().clamp(0, 255) as u8);
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    match rt.block_on(run(&flags)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rdmq-bench scale: {e}");
            ExitCode::FAILURE
        }
    }
}

fn topic_name(t: u64) -> String {
    format!("scale-{t:04}")
}

/// Where message `i` went: topic, queue and queue offset.
fn placement(f: &Flags, i: u64) -> (u64, u64, i64) {
    let k = i / f.batch;
    let j = i % f.batch;
    let t = k % f.topics;
    let q = (k / f.topics) % f.queues;
    let n = k / (f.topics * f.queues);
    (t, q, (n * f.batch + j) as i64)
}

fn body_of(i: u64, len: usize) -> Bytes {
    let mut b = Vec::with_capacity(len);
    b.extend_from_slice(&i.to_le_bytes()[..len.min(8)]);
    b.extend((b.len()..len).map(|x| (i as usize * 131 + x * 7) as u8));
    Bytes::from(b)
}

fn key_of(i: u64) -> String {
    format!("k{i}")
}

fn uniq_of(i: u64) -> String {
    format!("{i:032X}")
}

/// `RssAnon` and `VmHWM` of `pid`, in KiB.
fn memory(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (kib("RssAnon:"), kib("VmHWM:"))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

struct Broker {
    proc: Proc,
    endpoint: Endpoint,
    metrics: std::net::SocketAddr,
}

fn start_broker(dir: &Path, started: &mut Duration) -> Result<Broker, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let args: Vec<String> = [
        "broker",
        "--listen",
        "tcp://127.0.0.1:0",
        "--store-dir",
        &dir.join("store").display().to_string(),
        "--metrics-listen",
        "127.0.0.1:0",
        "--auto-create-topics",
        "false",
    ]
    .map(String::from)
    .to_vec();
    // A wrapper for diagnosis (e.g. `RDMQ_SCALE_WRAP=heaptrack`).
    let (exe, args) = match std::env::var("RDMQ_SCALE_WRAP") {
        Ok(w) if !w.is_empty() => (
            PathBuf::from(w),
            std::iter::once(exe.display().to_string())
                .chain(args)
                .collect(),
        ),
        _ => (exe, args),
    };
    let t = Instant::now();
    let mut proc = Proc::spawn("broker", &exe, &args, None, &dir.join("broker.log"))?;
    let metrics = metrics_addr(&proc.expect("metrics ", Duration::from_secs(120))?)?;
    let url = proc.expect("listening ", Duration::from_secs(120))?;
    *started = t.elapsed();
    let endpoint = url
        .parse()
        .map_err(|e| format!("broker url {url}: {e:?}"))?;
    Ok(Broker {
        proc,
        endpoint,
        metrics,
    })
}

type Cl = Client<TcpTransport>;

/// Pause before a memory reading: a checkpoint (every second) has written the queues' tails.
const SETTLE: Duration = Duration::from_millis(2500);

async fn call(c: &Cl, ep: &Endpoint, req: RemotingCommand) -> Result<RemotingCommand, String> {
    c.invoke(ep, req, Some(Duration::from_secs(60)))
        .await
        .map_err(|e| format!("call failed: {e}"))
}

fn batch_request(f: &Flags, first: u64) -> RemotingCommand {
    let (t, q, _) = placement(f, first);
    let entries: Vec<(i32, Bytes, String)> = (first..first + f.batch)
        .map(|i| {
            (
                0,
                body_of(i, f.body),
                format!(
                    "KEYS\u{1}{}\u{2}UNIQ_KEY\u{1}{}\u{2}",
                    key_of(i),
                    uniq_of(i)
                ),
            )
        })
        .collect();
    RemotingCommand::request(rc::SEND_BATCH_MESSAGE)
        .with_field("a", "scale-producer")
        .with_field("b", topic_name(t))
        .with_field("e", q.to_string())
        .with_body(message::encode_batch(&entries))
}

fn topic_list(names: &[String], queues: u64) -> RemotingCommand {
    let list: Vec<serde_json::Value> = names
        .iter()
        .map(|n| serde_json::json!({"topicName": n, "readQueueNums": queues, "writeQueueNums": queues, "perm": 6}))
        .collect();
    RemotingCommand::request(rc::UPDATE_AND_CREATE_TOPIC_LIST)
        .with_body(serde_json::to_vec(&serde_json::json!({"topicConfigList": list})).expect("json"))
}

fn pull(topic: &str, queue: u64, offset: i64, max: u32, suspend_ms: u64) -> RemotingCommand {
    RemotingCommand::request(rc::PULL_MESSAGE)
        .with_field("consumerGroup", "scale-checker")
        .with_field("topic", topic)
        .with_field("queueId", queue.to_string())
        .with_field("queueOffset", offset.to_string())
        .with_field("maxMsgNums", max.to_string())
        .with_field("sysFlag", if suspend_ms > 0 { "2" } else { "0" })
        .with_field("commitOffset", "0")
        .with_field("suspendTimeoutMillis", suspend_ms.to_string())
        .with_field("subscription", "*")
        .with_field("subVersion", "0")
        .with_field("expressionType", "TAG")
}

/// Checks `samples` random messages by offset, key and id; returns the failures.
async fn check_samples(f: &Flags, c: &Cl, ep: &Endpoint, seed: u64) -> Result<Vec<String>, String> {
    let mut bad = Vec::new();
    let mut x = seed | 1;
    let t0 = Instant::now();
    for _ in 0..f.samples {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let i = x % f.messages;
        let (t, q, off) = placement(f, i);
        let body = body_of(i, f.body);
        let r = call(c, ep, pull(&topic_name(t), q, off, 1, 0)).await?;
        let got = (r.code == response_code::SUCCESS)
            .then(|| message::decode_records(&r.body).ok())
            .flatten()
            .unwrap_or_default();
        let uniq_ok = |m: &message::StoredMessage| {
            Properties::parse(&m.properties)
                .ok()
                .and_then(|p| p.get("UNIQ_KEY").map(|u| u == uniq_of(i)))
                .unwrap_or(false)
        };
        if got.len() != 1 || got[0].body != body || !uniq_ok(&got[0]) {
            bad.push(format!(
                "message {i} at {}:{q}@{off}: pull answered {} ({:?})",
                topic_name(t),
                got.len(),
                r.remark
            ));
        }
        for (key, unique) in [(key_of(i), false), (uniq_of(i), true)] {
            let req = RemotingCommand::request(rc::QUERY_MESSAGE)
                .with_field("topic", topic_name(t))
                .with_field("key", key.as_str())
                .with_field("maxNum", "4")
                .with_field("beginTimestamp", "0")
                .with_field("endTimestamp", "0")
                .with_field("_UNIQUE_KEY_QUERY", if unique { "true" } else { "false" });
            let r = call(c, ep, req).await?;
            let got = (r.code == response_code::SUCCESS)
                .then(|| message::decode_records(&r.body).ok())
                .flatten()
                .unwrap_or_default();
            if got.len() != 1 || got[0].body != body {
                bad.push(format!(
                    "message {i}: lookup of `{key}` found {} ({:?})",
                    got.len(),
                    r.remark
                ));
            }
        }
    }
    println!(
        "samples: {} messages by offset, key and UNIQ_KEY in {:.2} s: {} wrong",
        f.samples,
        t0.elapsed().as_secs_f64(),
        bad.len()
    );
    Ok(bad)
}

fn p99(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * 0.99) as usize]
}

fn cpu_ticks(pid: u32) -> u64 {
    ProcSample::read(pid)
        .map(|s| s.utime + s.stime)
        .unwrap_or(0)
}

fn wakeups(b: &Broker) -> f64 {
    scrape(b.metrics, "/metrics")
        .map(|t| value(&t, "rdmq_broker_long_poll_wakeups_total", &[]))
        .unwrap_or(-1.0)
}

/// Sends `n` single messages to `topic`:0 with a consumer long-polling that queue; returns
/// the broker's CPU ticks and long-poll wake-ups over it.
async fn busy_queue(
    c: &Cl,
    b: &Broker,
    topic: &str,
    n: u64,
    from: &mut i64,
) -> Result<(u64, f64), String> {
    let (cpu0, w0) = (cpu_ticks(b.proc.pid()), wakeups(b));
    let consumer = {
        let (c, ep, topic, start) = (c.clone(), b.endpoint.clone(), topic.to_owned(), *from);
        tokio::spawn(async move {
            let mut at = start;
            while at < start + n as i64 {
                let r = call(&c, &ep, pull(&topic, 0, at, 32, 5_000)).await?;
                if r.code == response_code::SUCCESS {
                    at = r
                        .field("nextBeginOffset")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(at);
                }
            }
            Ok::<i64, String>(at)
        })
    };
    for i in 0..n {
        let entries = vec![(0, body_of(i, 128), format!("UNIQ_KEY\u{1}busy{i}\u{2}"))];
        let req = RemotingCommand::request(rc::SEND_BATCH_MESSAGE)
            .with_field("a", "scale-producer")
            .with_field("b", topic)
            .with_field("e", "0")
            .with_body(message::encode_batch(&entries));
        let r = call(c, &b.endpoint, req).await?;
        if r.code != response_code::SUCCESS {
            return Err(format!("busy send: {:?}", r.remark));
        }
        if i % 64 == 63 {
            // Let the consumer keep up, so every message is its own arrival.
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }
    *from = consumer.await.map_err(|e| e.to_string())??;
    Ok((cpu_ticks(b.proc.pid()) - cpu0, wakeups(b) - w0))
}

async fn run(f: &Flags) -> Result<(), String> {
    if f.batch == 0 || f.messages < f.batch || f.topics == 0 || f.queues == 0 {
        return Err("--messages, --batch, --topics and --queues must be positive".into());
    }
    let _ = std::fs::remove_dir_all(&f.dir);
    std::fs::create_dir_all(&f.dir).map_err(|e| format!("{}: {e}", f.dir.display()))?;
    // Disk: records (body + ~150 B of header and properties), consume-queue and index entries,
    // one preallocated segment.
    let need = f.messages * (f.body as u64 + 150 + 20 + 40) + (1 << 30);
    let free = rdmq_broker::sys::free_bytes(&f.dir).unwrap_or(u64::MAX);
    if free < need + need / 5 {
        return Err(format!(
            "{} has {:.1} GiB free; this run needs about {:.1} GiB",
            f.dir.display(),
            free as f64 / (1u64 << 30) as f64,
            need as f64 / (1u64 << 30) as f64
        ));
    }
    let mut failures: Vec<String> = Vec::new();
    let mut start_time = Duration::ZERO;
    let mut b = start_broker(&f.dir, &mut start_time)?;
    let client: Cl = Client::new(TcpTransport::default(), ClientConfig::default());
    let c = &client;
    let pid = b.proc.pid();
    let names: Vec<String> = (0..f.topics).map(topic_name).collect();
    let t = Instant::now();
    let r = call(c, &b.endpoint, topic_list(&names, f.queues)).await?;
    if r.code != response_code::SUCCESS {
        return Err(format!("topic list refused: {:?}", r.remark));
    }
    println!(
        "scale: {} messages of {} B over {} topics × {} queues, batches of {}, {} in flight (topics created in {:.0} ms, one request)",
        f.messages,
        f.body,
        f.topics,
        f.queues,
        f.batch,
        f.in_flight,
        t.elapsed().as_secs_f64() * 1e3
    );
    let (anon0, hwm0) = memory(pid);
    println!(
        "  start: RssAnon {:.1} MiB, VmHWM {:.1} MiB",
        mib(anon0),
        mib(hwm0)
    );

    // 1. Load.
    let mut warm: Option<(u64, u64)> = None;
    let mut set = tokio::task::JoinSet::new();
    let t_load = Instant::now();
    let mut t_mark = Instant::now();
    let mut acked = 0u64;
    let mut next_report = 1_000_000u64.min(f.messages);
    let mut first = 0u64;
    while acked < f.messages / f.batch * f.batch {
        while set.len() < f.in_flight && first + f.batch <= f.messages {
            let req = batch_request(f, first);
            let (c, ep) = (client.clone(), b.endpoint.clone());
            set.spawn(async move { call(&c, &ep, req).await });
            first += f.batch;
        }
        let r = set
            .join_next()
            .await
            .ok_or("no request in flight")?
            .map_err(|e| e.to_string())??;
        if r.code != response_code::SUCCESS {
            return Err(format!("send refused: {:?}", r.remark));
        }
        acked += f.batch;
        if warm.is_none() && acked >= f.warmup {
            // The baseline is taken as the end is: with nothing in flight, after a checkpoint.
            while let Some(r) = set.join_next().await {
                let r = r.map_err(|e| e.to_string())??;
                if r.code != response_code::SUCCESS {
                    return Err(format!("send refused: {:?}", r.remark));
                }
                acked += f.batch;
            }
            tokio::time::sleep(SETTLE).await;
            warm = Some(memory(pid));
        }
        if acked >= next_report {
            let (anon, hwm) = memory(pid);
            println!(
                "  {:>5.1} M: {:>7.0} msg/s, RssAnon {:>6.1} MiB, VmHWM {:>6.1} MiB",
                acked as f64 / 1e6,
                1_000_000f64.min(acked as f64) / t_mark.elapsed().as_secs_f64(),
                mib(anon),
                mib(hwm)
            );
            t_mark = Instant::now();
            next_report += 1_000_000;
        }
    }
    let load_s = t_load.elapsed().as_secs_f64();
    // A checkpoint writes the last queue and index entries.
    tokio::time::sleep(SETTLE).await;
    let (anon, hwm) = memory(pid);
    let (wa, _) = warm.unwrap_or((anon0, hwm0));
    let after_m = (acked.saturating_sub(f.warmup.min(acked))) as f64 / 1e6;
    let growth = if after_m > 0.0 {
        (mib(anon) - mib(wa)) / after_m
    } else {
        0.0
    };
    println!(
        "load: {acked} messages in {load_s:.1} s ({:.0} msg/s); RssAnon {:.1} MiB after warm-up ({} M) → {:.1} MiB at the end, VmHWM {:.1} MiB: growth {growth:.2} MiB per million (target ≤ {:.1})",
        acked as f64 / load_s,
        mib(wa),
        f.warmup as f64 / 1e6,
        mib(anon),
        mib(hwm),
        f.max_growth_mib
    );
    if growth > f.max_growth_mib {
        failures.push(format!("RSS grew {growth:.2} MiB per million messages"));
    }
    if mib(anon) > f.max_rss_mib {
        failures.push(format!("RssAnon {:.1} MiB at the end", mib(anon)));
    }
    println!(
        "  store directory: {:.2} GiB",
        dir_bytes(&f.dir.join("store")) as f64 / (1u64 << 30) as f64
    );

    // 2. Samples.
    failures.extend(check_samples(f, c, &b.endpoint, 0x9E37_79B9_7F4A_7C15).await?);

    // 3. Topic burst while sends continue.
    if f.create_topics > 0 {
        let burst: Vec<String> = (0..f.create_topics)
            .map(|t| format!("burst-{t:05}"))
            .collect();
        let sender = {
            let (c, ep) = (client.clone(), b.endpoint.clone());
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let t0 = Instant::now();
                let mut i = 0u64;
                while t0.elapsed() < Duration::from_secs(4) {
                    let entries = vec![(0, body_of(i, 128), String::new())];
                    let req = RemotingCommand::request(rc::SEND_BATCH_MESSAGE)
                        .with_field("a", "scale-producer")
                        .with_field("b", topic_name(i % 10))
                        .with_field("e", "0")
                        .with_body(message::encode_batch(&entries));
                    let s = Instant::now();
                    let ok = call(&c, &ep, req)
                        .await
                        .map(|r| r.code == response_code::SUCCESS)
                        .unwrap_or(false);
                    lat.push((
                        t0.elapsed().as_secs_f64(),
                        s.elapsed().as_secs_f64() * 1e6,
                        ok,
                    ));
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                lat
            })
        };
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let t = Instant::now();
        let r = call(c, &b.endpoint, topic_list(&burst, 2)).await?;
        let took = t.elapsed().as_secs_f64();
        let lat = sender.await.map_err(|e| e.to_string())?;
        if r.code != response_code::SUCCESS {
            failures.push(format!("topic burst refused: {:?}", r.remark));
        }
        let start_rel = 1.5;
        let mut before: Vec<f64> = lat
            .iter()
            .filter(|l| l.0 < start_rel)
            .map(|l| l.1)
            .collect();
        let mut during: Vec<f64> = lat
            .iter()
            .filter(|l| l.0 >= start_rel && l.0 <= start_rel + took + 0.05)
            .map(|l| l.1)
            .collect();
        let failed = lat.iter().filter(|l| !l.2).count();
        println!(
            "topic burst: {} topics created and durable in {:.0} ms (one UPDATE_AND_CREATE_TOPIC_LIST); sends to other topics p99 {:.0} µs before, {:.0} µs during ({} sends, {failed} failed)",
            f.create_topics,
            took * 1e3,
            p99(&mut before),
            p99(&mut during),
            lat.len()
        );
        if took > 3.0 || failed > 0 {
            failures.push(format!(
                "topic burst took {took:.2} s, {failed} sends failed"
            ));
        }
    }

    // 4. Idle long polls.
    if f.idle_polls > 0 {
        let idle: Vec<String> = (0..f.idle_polls.div_ceil(2))
            .map(|t| format!("idle-{t:05}"))
            .collect();
        let r = call(c, &b.endpoint, topic_list(&idle, 2)).await?;
        if r.code != response_code::SUCCESS {
            return Err(format!("idle topics refused: {:?}", r.remark));
        }
        let busy = topic_name(0);
        let (_, max) = {
            let r = call(
                c,
                &b.endpoint,
                RemotingCommand::request(rc::GET_MAX_OFFSET)
                    .with_field("topic", busy.as_str())
                    .with_field("queueId", "0"),
            )
            .await?;
            (
                (),
                r.field("offset")
                    .and_then(|v| v.parse::<i64>().ok())
                    .unwrap_or(0),
            )
        };
        let mut from = max;
        let n = 5_000;
        let (cpu_a, w_a) = busy_queue(c, &b, &busy, n, &mut from).await?;
        let parked_client: Cl = Client::new(TcpTransport::default(), ClientConfig::default());
        let mut parked = tokio::task::JoinSet::new();
        for p in 0..f.idle_polls {
            let (c, ep) = (parked_client.clone(), b.endpoint.clone());
            let topic = idle[(p / 2) as usize].clone();
            parked.spawn(async move { call(&c, &ep, pull(&topic, p % 2, 0, 32, 25_000)).await });
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (cpu_b, w_b) = busy_queue(c, &b, &busy, n, &mut from).await?;
        let tick_us = 1e6 / crate::affinity::clock_ticks() as f64;
        println!(
            "idle polls: {} long polls parked on idle queues; {n} messages to one busy queue: long-poll wake-ups {w_a:.0} without them, {w_b:.0} with them; broker CPU {:.1} µs/msg without, {:.1} µs/msg with",
            f.idle_polls,
            cpu_a as f64 * tick_us / n as f64,
            cpu_b as f64 * tick_us / n as f64
        );
        // A broker-wide arrival signal would wake every parked poll on every arrival
        // (≈ polls × arrivals); per-queue signals leave them asleep, so the busy consumer's
        // wake-ups are all there is, give or take its timing.
        if w_b > w_a + (f.idle_polls as f64 / 10.0) {
            failures.push(format!(
                "idle long polls were woken: {w_b:.0} wake-ups against {w_a:.0}"
            ));
        }
        parked.abort_all();
        parked_client.close(Duration::from_millis(100)).await;
    }

    // 5. Restarts.
    if f.restart {
        let t = Instant::now();
        b.proc.stop(Duration::from_secs(60));
        let stop_s = t.elapsed().as_secs_f64();
        println!("restart: clean stop {stop_s:.2} s");
        b = restart(f, "a clean stop", f.max_restart_s, &mut failures)?;
        failures.extend(check_samples(f, c, &b.endpoint, 0x2545_F491_4F6C_DD1D).await?);
        // SIGKILL under load: messages past the loaded ones (their keys and ids are new, so
        // the samples, drawn from the loaded ones, stay unambiguous).
        let mut set = tokio::task::JoinSet::new();
        for k in 0..64 {
            let req = batch_request(f, f.messages + k * f.batch);
            let (c, ep) = (client.clone(), b.endpoint.clone());
            set.spawn(async move { call(&c, &ep, req).await });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(b);
        while set.join_next().await.is_some() {}
        b = restart(f, "SIGKILL", f.max_kill_restart_s, &mut failures)?;
        failures.extend(check_samples(f, c, &b.endpoint, 0x1234_5678_9ABC_DEF1).await?);
        let (anon, hwm) = memory(b.proc.pid());
        println!(
            "  after restart: RssAnon {:.1} MiB, VmHWM {:.1} MiB",
            mib(anon),
            mib(hwm)
        );
    }
    client.close(Duration::from_millis(100)).await;
    b.proc.stop(Duration::from_secs(60));
    if !f.keep {
        let _ = std::fs::remove_dir_all(&f.dir);
    }
    for e in &failures {
        eprintln!("FAILED: {e}");
    }
    if f.gate && !failures.is_empty() {
        return Err(format!("{} target(s) missed", failures.len()));
    }
    Ok(())
}

/// Starts the broker again on the same store; records a start slower than `max_s`.
fn restart(
    f: &Flags,
    after: &str,
    max_s: f64,
    failures: &mut Vec<String>,
) -> Result<Broker, String> {
    let mut started = Duration::ZERO;
    let b = start_broker(&f.dir, &mut started)?;
    let s = started.as_secs_f64();
    println!("restart: start after {after} {s:.2} s");
    if s > max_s {
        failures.push(format!("start after {after} took {s:.2} s"));
    }
    Ok(b)
}

fn dir_bytes(p: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(p) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => {
                use std::os::unix::fs::MetadataExt;
                m.blocks() * 512
            }
            Err(_) => 0,
        })
        .sum()
}
