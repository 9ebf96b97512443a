//! The message store.
//!
//! - **Append** ([`Store::append`]): under one lock, messages get their queue offsets and
//!   physical offsets and are encoded, with their frame CRC, into a pending buffer.
//! - **Flush** (one thread): the pending buffer is written to the segment files in one write
//!   per segment, fsynced (always in SYNC mode, periodically in ASYNC mode), then dispatched:
//!   consume-queue and index entries become visible. Group commit falls out of this: every
//!   append made while a batch is written goes into the next one.
//! - **Acknowledge** ([`Store::wait_stored`]): SYNC waits for the fsync of the message,
//!   ASYNC for its write to the page cache (it survives a process crash, not a power cut).
//! - **Recover** ([`Store::open`]): consume queues and the index are loaded up to the last
//!   checkpoint; the commit log is scanned from there with CRCs verified; a torn or corrupt
//!   tail is cut off; records after the checkpoint are dispatched again.
//! - **Read**: only written records are visible, so readers use the segment files alone.

mod flush;
pub mod index;
pub mod log;
pub mod meta;
pub mod queue;
mod recovery;
mod retention;
mod watermark;

use crate::poison::OrAbort;
use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::message::{self, HostAddr, NewMessage, PropertiesError};
use flush::{checkpoint_now, flush_loop, sync_loop};
use index::KeyIndex;
use log::{FRAME_HEADER, Segments};
use meta::{Checkpoint, Offsets, TopicConfig};
use queue::{ConsumeQueue, CqEntry, Queues};
use recovery::index_facts;
use watermark::Watermark;

pub use retention::RetentionConfig;

/// When an append is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushMode {
    /// After fsync.
    Sync,
    /// After the write to the page cache; fsync every `interval`.
    Async {
        /// Time between fsyncs.
        interval: Duration,
    },
}

/// Store settings.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Root directory.
    pub dir: PathBuf,
    /// Commit log segment size.
    pub segment_size: u64,
    /// Acknowledgement policy.
    pub flush: FlushMode,
    /// This broker's address, stored in records and message ids.
    pub store_host: HostAddr,
    /// Largest message body.
    pub max_body: usize,
    /// Refuse appends when the store's file system has less free space than this.
    pub min_free_bytes: u64,
    /// Refuse appends when the commit log is larger than this.
    pub max_log_bytes: Option<u64>,
    /// Retention of old segments.
    pub retention: RetentionConfig,
    /// Time between checkpoints (consume queues and index made durable).
    pub checkpoint_interval: Duration,
}

impl StoreConfig {
    /// Defaults for a store in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            segment_size: 1 << 30,
            flush: FlushMode::Async {
                interval: Duration::from_millis(500),
            },
            store_host: HostAddr::parse("127.0.0.1:10911"),
            max_body: 4 << 20,
            min_free_bytes: 64 << 20,
            max_log_bytes: None,
            retention: RetentionConfig::default(),
            checkpoint_interval: Duration::from_secs(1),
        }
    }
}

/// Why appends are refused for lack of free space under the store, if they are.
fn space_refusal(cfg: &StoreConfig) -> Option<String> {
    match crate::sys::free_bytes(&cfg.dir) {
        Some(free) if free < cfg.min_free_bytes => Some(format!(
            "disk full: {free} bytes free under {}, at least {} required",
            cfg.dir.display(),
            cfg.min_free_bytes
        )),
        _ => None,
    }
}

/// Why a store operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The topic does not exist.
    #[error("topic `{0}` does not exist")]
    TopicNotFound(String),
    /// The queue does not exist in the topic.
    #[error("queue {queue} does not exist in topic `{topic}` ({queues} queues)")]
    QueueNotFound {
        /// Topic.
        topic: String,
        /// Queue asked for.
        queue: i32,
        /// Queues the topic has.
        queues: u32,
    },
    /// The message is invalid.
    #[error("{0}")]
    Illegal(String),
    /// The store refuses writes for now (disk full, or flushing fails).
    #[error("store is not accepting writes: {0}")]
    Busy(String),
    /// An I/O error.
    #[error("I/O error: {0}")]
    Io(Arc<io::Error>),
    /// The store is shutting down.
    #[error("store is shutting down")]
    ShuttingDown,
}

impl From<io::Error> for StoreError {
    fn from(e: io::Error) -> Self {
        StoreError::Io(Arc::new(e))
    }
}

/// Where an appended message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// Queue.
    pub queue_id: i32,
    /// Logical offset in the queue.
    pub queue_offset: i64,
    /// Offset of the record's frame in the commit log.
    pub phys: u64,
    /// End of the frame.
    pub end: u64,
}

/// A record appended but not yet in its consume queue.
struct Dispatch {
    queue: Arc<ConsumeQueue>,
    queue_offset: i64,
    entry: CqEntry,
}

/// What recovery reads back from a record to rebuild queues and the index.
struct Recovered {
    topic: String,
    queue_id: i32,
    queue_offset: i64,
    entry: CqEntry,
    key_hashes: Vec<u64>,
}

/// In ASYNC mode the syncer also fsyncs whenever this much is written but not yet durable, so
/// no single fsync has to push out seconds of writes (which stalls the writer behind it).
const ASYNC_SYNC_BYTES: u64 = 4 << 20;

/// How often the file system's free space is re-checked while appending.
const SPACE_CHECK_BYTES: u64 = 4 << 20;
const SPACE_CHECK_INTERVAL: Duration = Duration::from_millis(100);

struct AppendState {
    /// Next physical offset.
    write_pos: u64,
    /// Encoded frames not yet written, starting at `pending_start`.
    pending: Vec<u8>,
    pending_start: u64,
    dispatch: Vec<Dispatch>,
    /// `(key hash, commit log offset)` pairs for the index, with the pending records.
    index_pending: Vec<(u64, u64)>,
    /// Segment bases created by rolls within the pending range.
    rolls: Vec<u64>,
    /// End of the current segment.
    segment_end: u64,
    segment_base: u64,
    /// Last free-space check: position, time and its refusal, if any.
    space_checked_pos: u64,
    space_checked_at: Instant,
    space_refusal: Option<String>,
    /// Set while writes fail (e.g. the disk is full): appends are refused.
    failure: Option<String>,
    /// An fsync failed: `failure` stays set until restart.
    fatal: bool,
    shutdown: bool,
}

pub(crate) struct Shared {
    cfg: StoreConfig,
    state: Mutex<AppendState>,
    wake: Condvar,
    /// The write round's buffers, held by whoever writes (flusher or an appending task).
    writer: Mutex<flush::WriteBuffers>,
    /// A batch in `writer` awaits the flusher thread.
    handoff: std::sync::atomic::AtomicBool,
    /// Write rounds run by appending tasks and by the flusher thread.
    rounds_inline: std::sync::atomic::AtomicU64,
    rounds_flusher: std::sync::atomic::AtomicU64,
    /// Wakes the syncer (shutdown).
    sync_wake: Condvar,
    /// Set once the flusher has written everything and stopped.
    flusher_done: std::sync::atomic::AtomicBool,
    segments: Segments,
    queues: Queues,
    index: KeyIndex,
    written: Watermark,
    durable: Watermark,
    topics: std::sync::RwLock<HashMap<String, TopicConfig>>,
    /// Orders the writes of `topics` (concurrent creations share one write).
    topics_gate: meta::SaveGate,
    offsets: Mutex<Offsets>,
    offsets_dirty: std::sync::atomic::AtomicBool,
    /// Long polls woken by an arrival signal.
    poll_wakeups: Arc<std::sync::atomic::AtomicU64>,
    /// The checkpoint last written (an idle store writes none).
    last_checkpoint: Mutex<Checkpoint>,
}

/// The store's background threads.
struct StoreThreads {
    /// Writes appended records, fsyncs them in SYNC mode, dispatches them.
    flusher: std::thread::JoinHandle<()>,
    /// Periodic fsync in ASYNC mode, checkpoints and retention, off the write path.
    syncer: std::thread::JoinHandle<()>,
}

/// The message store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
    threads: Arc<Mutex<Option<StoreThreads>>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.shared.cfg.dir)
            .finish()
    }
}

const TOPICS: &str = "topics.json";
const OFFSETS: &str = "offsets.json";
const CHECKPOINT: &str = "checkpoint.json";

impl Store {
    /// The configuration.
    pub fn config(&self) -> &StoreConfig {
        &self.shared.cfg
    }

    fn state(&self) -> MutexGuard<'_, AppendState> {
        self.shared.state.lock().or_abort("store state")
    }

    // ----- topics -------------------------------------------------------------------------------

    /// The topic's configuration.
    pub fn topic(&self, name: &str) -> Option<TopicConfig> {
        self.shared
            .topics
            .read()
            .or_abort("store state")
            .get(name)
            .cloned()
    }

    /// Every topic.
    pub fn topics(&self) -> Vec<TopicConfig> {
        let mut v: Vec<_> = self
            .shared
            .topics
            .read()
            .or_abort("store state")
            .values()
            .cloned()
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Creates or updates a topic, durably.
    pub fn put_topic(&self, topic: TopicConfig) -> Result<(), StoreError> {
        self.put_topics(vec![topic])
    }

    /// Creates or updates topics, durably, with one write of the topic file for the whole
    /// list (and for concurrent callers: a save that already holds a caller's topics ends its
    /// wait). Either every topic is valid and applied, or none is.
    pub fn put_topics(&self, topics: Vec<TopicConfig>) -> Result<(), StoreError> {
        for t in &topics {
            validate_topic_name(&t.name)?;
        }
        self.put_topics_unchecked(topics)
    }

    /// [`Store::put_topic`] on a blocking thread (its fsync stays off the runtime threads).
    pub async fn put_topic_async(&self, topic: TopicConfig) -> Result<(), StoreError> {
        self.put_topics_async(vec![topic]).await
    }

    /// [`Store::put_topics`] on a blocking thread.
    pub async fn put_topics_async(&self, topics: Vec<TopicConfig>) -> Result<(), StoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.put_topics(topics))
            .await
            .map_err(|e| StoreError::Busy(format!("topic creation did not finish: {e}")))?
    }

    /// Creates a broker-internal topic (retry, dead-letter, timer and pop-log topics) if it
    /// does not exist. Their names may use `+`, which user topics cannot.
    pub fn ensure_system_topic(&self, name: &str, queues: u32) -> Result<TopicConfig, StoreError> {
        if let Some(t) = self.topic(name) {
            return Ok(t);
        }
        if name.is_empty()
            || name.len() > 255
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '%' | '|' | '+'))
        {
            return Err(StoreError::Illegal(format!(
                "system topic name `{name}` is not valid"
            )));
        }
        let t = TopicConfig::new(name, queues);
        self.put_topic_unchecked(t.clone())?;
        Ok(t)
    }

    fn put_topic_unchecked(&self, topic: TopicConfig) -> Result<(), StoreError> {
        self.put_topics_unchecked(vec![topic])
    }

    /// Deletes a topic's configuration, durably: it is no longer routed, registered or
    /// accepted. Its stored messages stay until retention removes them (re-creating the topic
    /// finds its queues as they were). False when it did not exist.
    pub fn delete_topic(&self, name: &str) -> Result<bool, StoreError> {
        let generation = {
            let mut map = self.shared.topics.write().or_abort("store state");
            if map.remove(name).is_none() {
                return Ok(false);
            }
            self.shared.topics_gate.changed()
        };
        self.save_topics(generation)?;
        Ok(true)
    }

    fn save_topics(&self, generation: u64) -> Result<(), StoreError> {
        self.shared.topics_gate.persist(
            generation,
            || {
                let map = self.shared.topics.read().or_abort("store state");
                let mut all: Vec<TopicConfig> = map.values().cloned().collect();
                all.sort_by(|a, b| a.name.cmp(&b.name));
                all
            },
            |all| meta::save_json_compact(&self.shared.cfg.dir, TOPICS, all),
        )?;
        Ok(())
    }

    fn put_topics_unchecked(&self, topics: Vec<TopicConfig>) -> Result<(), StoreError> {
        if let Some(t) = topics.iter().find(|t| t.queues() == 0 || t.queues() > 1024) {
            return Err(StoreError::Illegal(format!(
                "topic `{}` must have between 1 and 1024 queues",
                t.name
            )));
        }
        // Applied in memory under the lock; written to disk outside it, so sends to other
        // topics never wait for this fsync.
        let generation = {
            let mut map = self.shared.topics.write().or_abort("store state");
            for t in topics {
                map.insert(t.name.clone(), t);
            }
            self.shared.topics_gate.changed()
        };
        self.save_topics(generation)
    }

    // ----- append -------------------------------------------------------------------------------

    /// Appends messages (of one or more topics) and returns where they went. They become
    /// readable, and may be acknowledged, once [`Store::wait_stored`] returns.
    pub fn append(&self, msgs: &[NewMessage]) -> Result<Vec<Placement>, StoreError> {
        let cfg = &self.shared.cfg;
        // Validate and resolve everything before taking the append lock.
        let mut prepared = Vec::with_capacity(msgs.len());
        let mut key_hashes = Vec::new();
        for m in msgs {
            let queues = self
                .topic_queues(&m.topic)
                .ok_or_else(|| StoreError::TopicNotFound(m.topic.clone()))?;
            if m.queue_id < 0 || m.queue_id as u32 >= queues {
                return Err(StoreError::QueueNotFound {
                    topic: m.topic.clone(),
                    queue: m.queue_id,
                    queues,
                });
            }
            if m.body.len() > cfg.max_body {
                return Err(StoreError::Illegal(format!(
                    "message body of {} bytes exceeds the maximum of {}",
                    m.body.len(),
                    cfg.max_body
                )));
            }
            if m.properties.len() > u16::MAX as usize {
                return Err(StoreError::Illegal(
                    "properties longer than 65535 bytes".into(),
                ));
            }
            let keys_from = key_hashes.len();
            let tag_hash = index_facts(&m.properties, &mut key_hashes)
                .map_err(|e| StoreError::Illegal(format!("invalid properties: {e}")))?;
            let frame_len = FRAME_HEADER + message::record_len(m) as u64;
            if frame_len > cfg.segment_size {
                return Err(StoreError::Illegal(format!(
                    "message of {frame_len} bytes does not fit a {}-byte segment",
                    cfg.segment_size
                )));
            }
            let queue = self.shared.queues.get_or_create(&m.topic, m.queue_id)?;
            prepared.push((queue, tag_hash, keys_from..key_hashes.len()));
        }
        let now = now_ms();
        let mut st = self.state();
        if st.shutdown {
            return Err(StoreError::ShuttingDown);
        }
        if let Some(f) = &st.failure {
            return Err(StoreError::Busy(f.clone()));
        }
        self.check_space(&mut st)?;
        let mut out = Vec::with_capacity(msgs.len());
        for (m, (queue, tag_hash, keys)) in msgs.iter().zip(prepared) {
            let rec_len = message::record_len(m) as u64;
            let frame_len = FRAME_HEADER + rec_len;
            if st.write_pos + frame_len > st.segment_end {
                let base = st.write_pos;
                st.rolls.push(base);
                st.segment_base = base;
                st.segment_end = base + cfg.segment_size;
            }
            let qoff = queue.assign_offset();
            let phys = st.write_pos;
            let at = st.pending.len();
            st.pending.extend_from_slice(&[0u8; FRAME_HEADER as usize]);
            message::encode_record(m, qoff, phys as i64, now, cfg.store_host, &mut st.pending);
            let header = log::frame_header(&st.pending[at + FRAME_HEADER as usize..]);
            st.pending[at..at + FRAME_HEADER as usize].copy_from_slice(&header);
            st.write_pos += frame_len;
            for h in &key_hashes[keys] {
                st.index_pending.push((*h, phys));
            }
            st.dispatch.push(Dispatch {
                queue,
                queue_offset: qoff,
                entry: CqEntry {
                    phys,
                    size: rec_len as u32,
                    tag_hash,
                },
            });
            out.push(Placement {
                queue_id: m.queue_id,
                queue_offset: qoff,
                phys,
                end: phys + frame_len,
            });
        }
        drop(st);
        // ASYNC: write it from this task when nobody else is (no thread hand-off per send);
        // SYNC: the flusher thread writes and fsyncs.
        let inline =
            matches!(cfg.flush, FlushMode::Async { .. }) && flush::write_inline(&self.shared);
        if !inline {
            self.shared.wake.notify_one();
        }
        Ok(out)
    }

    /// Queues of `topic`, without copying its configuration.
    fn topic_queues(&self, topic: &str) -> Option<u32> {
        self.shared
            .topics
            .read()
            .or_abort("store state")
            .get(topic)
            .map(TopicConfig::queues)
    }

    /// Refuses appends when the log is at its size limit or the disk is nearly full. The
    /// file system is asked at most every few MiB or 100 ms.
    fn check_space(&self, st: &mut AppendState) -> Result<(), StoreError> {
        let cfg = &self.shared.cfg;
        if let Some(max) = cfg.max_log_bytes {
            let used = st.write_pos - self.log_start();
            if used >= max {
                return Err(StoreError::Busy(format!(
                    "disk full: the commit log holds {used} bytes, its limit is {max}"
                )));
            }
        }
        if st.write_pos >= st.space_checked_pos + SPACE_CHECK_BYTES
            || st.space_checked_at.elapsed() >= SPACE_CHECK_INTERVAL
            || st.space_refusal.is_some()
        {
            st.space_checked_pos = st.write_pos;
            st.space_checked_at = Instant::now();
            st.space_refusal = space_refusal(cfg);
        }
        match &st.space_refusal {
            Some(why) => Err(StoreError::Busy(why.clone())),
            None => Ok(()),
        }
    }

    /// Write rounds so far: `(by appending tasks, by the flusher thread)`. In ASYNC mode an
    /// uncontended send is written by its own task; SYNC mode writes on the flusher only.
    pub fn write_rounds(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.shared.rounds_inline.load(Relaxed),
            self.shared.rounds_flusher.load(Relaxed),
        )
    }

    /// Waits until everything up to `end` is stored per the flush policy (fsynced in SYNC
    /// mode, written in ASYNC mode), at most `timeout`.
    pub async fn wait_stored(&self, end: u64, timeout: Duration) -> Result<(), StoreError> {
        let mark = match self.shared.cfg.flush {
            FlushMode::Sync => &self.shared.durable,
            FlushMode::Async { .. } => &self.shared.written,
        };
        match tokio::time::timeout(timeout, mark.wait(end)).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(StoreError::ShuttingDown),
            Err(_) => {
                let failure = self.state().failure.clone();
                Err(StoreError::Busy(failure.unwrap_or_else(|| {
                    format!("flush did not complete within {timeout:?}")
                })))
            }
        }
    }

    /// Appends and waits until stored.
    pub async fn put(&self, msgs: &[NewMessage]) -> Result<Vec<Placement>, StoreError> {
        let placed = self.append(msgs)?;
        if let Some(last) = placed.last() {
            self.wait_stored(last.end, Duration::from_secs(10)).await?;
        }
        Ok(placed)
    }

    // ----- read ---------------------------------------------------------------------------------

    /// End of the commit log: where the next record will be placed.
    pub fn log_end(&self) -> u64 {
        self.state().write_pos
    }

    /// First commit log offset still stored.
    pub fn log_start(&self) -> u64 {
        self.shared.segments.bases().first().copied().unwrap_or(0)
    }

    /// The consume queue of `topic`/`queue`.
    pub fn queue(&self, topic: &str, queue: i32) -> Option<Arc<ConsumeQueue>> {
        self.shared.queues.get(topic, queue)
    }

    /// First and one-past-last readable logical offsets of a queue.
    pub fn offsets(&self, topic: &str, queue: i32) -> (i64, i64) {
        match self.queue(topic, queue) {
            Some(q) => (q.min_offset(), q.max_offset()),
            None => (0, 0),
        }
    }

    /// The record of the frame at `phys` (checked against its CRC, so an offset that is not
    /// the start of a frame is refused).
    pub fn read_frame(&self, phys: u64) -> Result<Bytes, StoreError> {
        let missing = || StoreError::Illegal(format!("no message at commit log offset {phys}"));
        if phys >= self.shared.written.get() || phys < self.log_start() {
            return Err(missing());
        }
        self.shared
            .segments
            .read_frame(phys)
            .map(|f| f.record)
            .map_err(|_| missing())
    }

    /// Calls `each(offset, record)` for every record from commit-log offset `from` up to what
    /// is written now (skipping the zero fill at the end of rolled segments). For recovery
    /// of services that log through the store; reads only, stops at the first unreadable
    /// frame.
    pub fn scan_records(&self, from: u64, mut each: impl FnMut(u64, Bytes)) {
        let end = self.shared.written.get();
        let mut pos = from.max(self.log_start());
        while pos < end {
            match self.shared.segments.read_frame(pos) {
                Ok(f) => {
                    pos += FRAME_HEADER + f.record.len() as u64;
                    each(f.offset, f.record);
                }
                Err(_) => {
                    // End of a segment's data: continue in the next segment, if any.
                    match self.shared.segments.bases().into_iter().find(|b| *b > pos) {
                        Some(next) if next < end => pos = next,
                        _ => break,
                    }
                }
            }
        }
    }

    /// The record of a consume-queue entry.
    pub fn read_entry(&self, e: &CqEntry) -> Result<Bytes, StoreError> {
        Ok(self.shared.segments.read_record(e.phys, e.size)?)
    }

    /// Candidate offsets of records under `key`: one of their `KEYS`, their `UNIQ_KEY`, or an
    /// offset message id of this store. Read them with `read_frame`, which checks the frame.
    pub fn lookup(&self, key: &str) -> Vec<u64> {
        let start = self.log_start();
        let mut found: Vec<u64> = self
            .shared
            .index
            .lookup(key)
            .into_iter()
            .filter(|o| *o >= start)
            .collect();
        // An offset message id of this store names its record directly.
        if let Some(phys) = message::parse_offset_msg_id(key)
            && key[..16]
                .eq_ignore_ascii_case(&message::offset_msg_id(self.shared.cfg.store_host, 0)[..16])
            && (phys as u64) >= start
            && (phys as u64) < self.shared.written.get()
            && !found.contains(&(phys as u64))
        {
            found.push(phys as u64);
        }
        found
    }

    /// The first logical offset whose store time is at or after `ts` (ms), or the queue's
    /// max offset.
    pub fn search_offset_by_time(
        &self,
        topic: &str,
        queue: i32,
        ts: i64,
    ) -> Result<i64, StoreError> {
        let Some(q) = self.queue(topic, queue) else {
            return Ok(0);
        };
        let (mut lo, mut hi) = (q.min_offset(), q.max_offset());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let Some(e) = q.entry(mid) else { break };
            let rec = self.read_entry(&e)?;
            let stored = store_timestamp(&rec).ok_or_else(|| {
                StoreError::Illegal(format!(
                    "record at offset {mid} is too short for a timestamp"
                ))
            })?;
            if stored < ts {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }

    /// The arrival signal of every queue of `topic` (for long polls across a topic's queues;
    /// a single queue's is [`ConsumeQueue::arrival`]).
    pub fn topic_arrival(&self, topic: &str) -> Arc<tokio::sync::Notify> {
        self.shared.queues.topic_arrival(topic)
    }

    /// The consume queue of `topic`/`queue`, created (in memory) if it has no entries yet;
    /// the caller has checked that the topic has that queue.
    pub fn queue_or_create(
        &self,
        topic: &str,
        queue: i32,
    ) -> Result<Arc<ConsumeQueue>, StoreError> {
        Ok(self.shared.queues.get_or_create(topic, queue)?)
    }

    /// Counts a long poll woken by an arrival signal (pull and pop call this).
    pub fn count_poll_wakeup(&self) {
        self.shared
            .poll_wakeups
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Long polls woken by arrival signals so far: with per-queue signals, only polls whose
    /// queue (or topic) got messages wake.
    pub fn poll_wakeups(&self) -> u64 {
        self.shared
            .poll_wakeups
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The counter behind [`Store::poll_wakeups`], for a metrics collector that must not keep
    /// the store alive.
    pub fn poll_wakeup_counter(&self) -> std::sync::Weak<std::sync::atomic::AtomicU64> {
        Arc::downgrade(&self.shared.poll_wakeups)
    }

    // ----- consumer offsets ---------------------------------------------------------------------

    /// The committed offset of `group` on a queue.
    pub fn committed_offset(&self, group: &str, topic: &str, queue: i32) -> Option<i64> {
        self.shared
            .offsets
            .lock()
            .or_abort("store state")
            .get(group)?
            .get(&meta::queue_key(topic, queue))
            .copied()
    }

    /// Commits `offset` for `group` (persisted at the next checkpoint).
    pub fn commit_offset(&self, group: &str, topic: &str, queue: i32, offset: i64) {
        self.shared
            .offsets
            .lock()
            .or_abort("store state")
            .entry(group.to_owned())
            .or_default()
            .insert(meta::queue_key(topic, queue), offset);
        self.shared
            .offsets_dirty
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    // ----- lifecycle ----------------------------------------------------------------------------

    /// Flushes everything, writes a checkpoint and stops the flusher.
    pub fn shutdown(&self) {
        self.state().shutdown = true;
        self.shared.wake.notify_all();
        let threads = self.threads.lock().or_abort("store state").take();
        if let Some(t) = threads {
            // The flusher drains what is pending; then the syncer makes it durable and
            // writes the final checkpoint.
            let _ = t.flusher.join();
            self.shared
                .flusher_done
                .store(true, std::sync::atomic::Ordering::SeqCst);
            {
                let _st = self.state();
                self.shared.sync_wake.notify_all();
            }
            let _ = t.syncer.join();
        }
    }

    /// Deletes expired segments now (also runs periodically).
    pub fn enforce_retention(&self) -> Result<usize, StoreError> {
        retention::enforce(self)
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        let _ = self.queues.flush();
    }
}

/// The store timestamp of a stored record; `None` when the record is too short to hold one
/// (a corrupt record is skipped or reported by the caller, never a panic).
pub(crate) fn store_timestamp(record: &[u8]) -> Option<i64> {
    // totalSize 4, magic 4, bodyCRC 4, queueId 4, flag 4, queueOffset 8, physicalOffset 8,
    // sysFlag 4, bornTimestamp 8, bornHost 8 (IPv4) → storeTimestamp at 56.
    let sys_flag = i32::from_be_bytes(record.get(36..40)?.try_into().ok()?);
    let at = if sys_flag & message::SYSFLAG_BORN_V6 != 0 {
        68
    } else {
        56
    };
    Some(i64::from_be_bytes(record.get(at..at + 8)?.try_into().ok()?))
}

pub use rdmq_protocol::now_ms;

/// Topic names: 1–255 characters of `[A-Za-z0-9_%|-]` ([`rdmq_protocol::names`]).
pub fn validate_topic_name(name: &str) -> Result<(), StoreError> {
    rdmq_protocol::names::check_topic(name).map_err(|e| StoreError::Illegal(e.to_string()))
}

impl Shared {
    fn log_start_of(&self) -> u64 {
        self.segments.bases().first().copied().unwrap_or(0)
    }
}

/// A fresh directory for a unit test (the caller removes it).
#[cfg(test)]
pub(crate) fn test_dir(what: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let p = std::env::temp_dir().join(format!(
        "rdmq-{what}-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).expect("test directory");
    p
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_truncated_record_has_no_timestamp_instead_of_a_panic() {
        assert_eq!(super::store_timestamp(&[0u8; 20]), None);
        assert_eq!(super::store_timestamp(&[0u8; 60]), None);
        let mut rec = vec![0u8; 64];
        rec[56..64].copy_from_slice(&1234i64.to_be_bytes());
        assert_eq!(super::store_timestamp(&rec), Some(1234));
    }
}
