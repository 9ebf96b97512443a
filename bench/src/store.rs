//! The broker's message store under load: concurrent producers each append one message at a
//! time and wait for the flush policy's acknowledgement (SYNC: fsynced; ASYNC: written), as the
//! SEND handler does. Reports messages/s, per-message latency and CPU cores used.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use rdmq_broker::message::{HostAddr, NewMessage};
use rdmq_broker::store::meta::TopicConfig;
use rdmq_broker::store::{FlushMode, Store, StoreConfig};

use crate::report::{latency_histogram, process_cpu_time};

/// One store run.
#[derive(Debug)]
pub struct StoreRun {
    /// Messages acknowledged.
    pub messages: u64,
    /// Wall time from the first append to the last acknowledgement.
    pub wall: Duration,
    /// Process CPU time over the same span (producers, flusher, dispatcher).
    pub cpu: Duration,
    /// Append-to-acknowledgement latency per message (ns).
    pub latency: Histogram<u64>,
    /// Bytes the commit log grew by.
    pub log_bytes: u64,
}

impl StoreRun {
    /// Acknowledged messages per wall-clock second.
    pub fn rate(&self) -> f64 {
        self.messages as f64 / self.wall.as_secs_f64()
    }

    /// Messages per CPU-second: the rate one fully used core sustains.
    pub fn per_core(&self) -> f64 {
        self.messages as f64 / self.cpu.as_secs_f64().max(1e-9)
    }
}

/// The file-system type under `dir` (tmpfs makes fsync free, so SYNC numbers there mean little).
pub fn fs_type(dir: &Path) -> &'static str {
    match rdmq_broker::sys::fs_magic(dir) {
        Some(0x0102_1994) => "tmpfs",
        Some(0xEF53) => "ext4",
        Some(0x5846_5342) => "xfs",
        Some(0x9123_683E) => "btrfs",
        Some(0x794C_7630) => "overlayfs",
        Some(0x6969) => "nfs",
        Some(0x0102_1997) => "9p",
        Some(_) => "other",
        None => "unknown",
    }
}

/// A fresh directory for one run.
pub fn run_dir(parent: &Path, mode: &str) -> std::io::Result<PathBuf> {
    let d = parent.join(format!("store-bench-{mode}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

/// Appends `messages` bodies of `size` bytes from `producers` concurrent tasks on one
/// current-thread runtime (one core for producers; the store's own threads come on top).
pub fn run(
    dir: &Path,
    flush: FlushMode,
    size: usize,
    messages: u64,
    producers: usize,
) -> Result<StoreRun, String> {
    let cfg = StoreConfig {
        flush,
        segment_size: 256 << 20,
        min_free_bytes: 0,
        ..StoreConfig::new(dir)
    };
    let store = Arc::new(Store::open(cfg).map_err(|e| e.to_string())?);
    store
        .put_topic(TopicConfig::new("bench", 8))
        .map_err(|e| e.to_string())?;
    let body = Bytes::from((0..size).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    let props = "TAGS\u{1}bench\u{2}KEYS\u{1}k".to_owned();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let per_task = messages / producers as u64;
    let born_host = HostAddr::parse("127.0.0.1:1");
    let cpu0 = process_cpu_time();
    let t0 = Instant::now();
    let latency = rt.block_on(async {
        let mut tasks = Vec::new();
        for p in 0..producers {
            let store = store.clone();
            let body = body.clone();
            let props = props.clone();
            tasks.push(tokio::spawn(async move {
                let mut h = latency_histogram();
                for _ in 0..per_task {
                    let msg = NewMessage {
                        topic: "bench".into(),
                        queue_id: (p % 8) as i32,
                        flag: 0,
                        sys_flag: 0,
                        born_timestamp: 0,
                        born_host,
                        reconsume_times: 0,
                        properties: props.clone(),
                        body: body.clone(),
                    };
                    let start = Instant::now();
                    store
                        .put(std::slice::from_ref(&msg))
                        .await
                        .map_err(|e| e.to_string())?;
                    h.record(start.elapsed().as_nanos() as u64).ok();
                }
                Ok::<_, String>(h)
            }));
        }
        let mut all = latency_histogram();
        for t in tasks {
            let h = t.await.map_err(|e| e.to_string())??;
            all.add(h).map_err(|e| e.to_string())?;
        }
        Ok::<_, String>(all)
    })?;
    let wall = t0.elapsed();
    let cpu = process_cpu_time() - cpu0;
    let log_bytes = store.log_end() - store.log_start();
    store.shutdown();
    Ok(StoreRun {
        messages: per_task * producers as u64,
        wall,
        cpu,
        latency,
        log_bytes,
    })
}
