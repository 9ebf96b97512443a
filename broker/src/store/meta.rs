//! Small persisted state: topic configuration, consumer offsets and the recovery checkpoint.
//! Each is a JSON file replaced atomically (write a temporary file, fsync, rename, fsync the
//! directory).

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::log::sync_dir;

/// Permission bits of a topic (RocketMQ `perm`): 4 read, 2 write.
pub const PERM_READ: u32 = 4;
/// Write permission.
pub const PERM_WRITE: u32 = 2;

/// Configuration of one topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicConfig {
    /// Name.
    pub name: String,
    /// Queues producers write to.
    pub write_queues: u32,
    /// Queues consumers read from.
    pub read_queues: u32,
    /// Permission bits.
    pub perm: u32,
    /// Topic flags (`topicSysFlag`).
    #[serde(default)]
    pub sys_flag: u32,
    /// Keep messages at most this long (ms); `None` = the broker default.
    #[serde(default)]
    pub retention_ms: Option<u64>,
    /// Keep at most this many bytes of messages per queue; `None` = unlimited.
    #[serde(default)]
    pub retention_bytes: Option<u64>,
}

impl TopicConfig {
    /// A read-write topic with `queues` queues.
    pub fn new(name: &str, queues: u32) -> Self {
        Self {
            name: name.to_owned(),
            write_queues: queues,
            read_queues: queues,
            perm: PERM_READ | PERM_WRITE,
            sys_flag: 0,
            retention_ms: None,
            retention_bytes: None,
        }
    }

    /// Number of queues that exist (the larger of read and write counts).
    pub fn queues(&self) -> u32 {
        self.write_queues.max(self.read_queues)
    }
}

/// The recovery checkpoint: everything before `offset` in the commit log is durable and
/// dispatched into durable consume-queue and index files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Physical offset.
    pub offset: u64,
}

/// Writes `value` as JSON to `dir/name`, atomically.
pub fn save_json<T: Serialize>(dir: &Path, name: &str, value: &T) -> io::Result<()> {
    save_bytes(
        dir,
        name,
        &serde_json::to_vec_pretty(value).map_err(io::Error::other)?,
    )
}

/// [`save_json`] without indentation (large files: thousands of topics).
pub fn save_json_compact<T: Serialize>(dir: &Path, name: &str, value: &T) -> io::Result<()> {
    save_bytes(
        dir,
        name,
        &serde_json::to_vec(value).map_err(io::Error::other)?,
    )
}

/// Writes `bytes` to `dir/name`, atomically.
pub fn save_bytes(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)
}

/// Reads `dir/name` as JSON; `Ok(None)` if absent.
pub fn load_json<T: for<'de> Deserialize<'de>>(dir: &Path, name: &str) -> io::Result<Option<T>> {
    match std::fs::read(dir.join(name)) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{name}: {e}"))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Consumer offsets: group → "topic@queue" → next offset to consume.
pub type Offsets = BTreeMap<String, BTreeMap<String, i64>>;

/// The key of a queue in [`Offsets`].
pub fn queue_key(topic: &str, queue: i32) -> String {
    format!("{topic}@{queue}")
}

/// Orders the saves of a small persisted map: changes are applied in memory under the map's
/// lock and written outside it, a later change is never overwritten by an older snapshot, and
/// callers whose change a finished save already holds skip their own write.
#[derive(Debug, Default)]
pub struct SaveGate {
    generation: AtomicU64,
    saved: Mutex<u64>,
}

impl SaveGate {
    /// Counts a change; call under the map's lock, right after changing it.
    pub fn changed(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Makes change `generation` durable: `snapshot` (taking the map's lock) and `write` run
    /// unless a save since then already covered it.
    pub fn persist<S>(
        &self,
        generation: u64,
        snapshot: impl FnOnce() -> S,
        write: impl FnOnce(&S) -> io::Result<()>,
    ) -> io::Result<()> {
        let mut saved = self.saved.lock().unwrap_or_else(|p| p.into_inner());
        if *saved >= generation {
            return Ok(());
        }
        // Every change counted so far was applied before it was counted: the snapshot taken
        // after this load holds them all.
        let upto = self.generation.load(Ordering::SeqCst);
        let snap = snapshot();
        write(&snap)?;
        *saved = upto;
        Ok(())
    }
}
