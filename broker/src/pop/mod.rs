//! Pop consumption: stateless consumers receive messages that stay invisible to their group
//! for a while, then ack them; what is not acked comes back.
//!
//! - **Pop** hands out messages from a group's cursor (tag filters applied here: filtered-out
//!   messages are passed over and never delivered), each with a [receipt handle](ReceiptHandle).
//!   Long polling waits for new messages up to the request's poll time.
//! - **Ack** / **change invisible time** need the handle's current delivery sequence; a
//!   malformed, forged, superseded, already-acked or expired handle is refused.
//! - **Revive**: when a message's invisible time passes, a copy goes to the group's retry topic
//!   `%RETRY%<group>+<topic>` with its delivery attempt + 1 (popped along with the topic), or,
//!   after the group's maximum attempts, to `%DLQ%<group>`. FIFO deliveries (`order`) instead
//!   lock their queue for the group until acked, and a timed-out one is delivered again in
//!   place, so a message group's order holds.
//! - **Durability**: every state change is a [`PopRecord`] stored through the commit log (system
//!   topic [`POP_LOG_TOPIC`]) before the consumer hears of it; a snapshot every few seconds
//!   bounds the replay after a crash.
//! - **New groups** start per [`InitialOffset`].

pub mod handle;
pub mod record;
pub mod state;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::filter::TagFilter;
use crate::message::{self, NewMessage, Properties, StoredMessage, prop};
use crate::store::queue::CqEntry;
use crate::store::{Store, StoreError, meta, now_ms};
pub use handle::{MalformedHandle, ReceiptHandle};
use record::{PopRecord, QueueKey, ReviveOutcome};
use state::{PopState, QueueState, Snapshot};

/// The system topic holding the pop log.
pub const POP_LOG_TOPIC: &str = "rmq_sys_POP_LOG";

/// The retry topic of `group` for `topic`.
pub fn retry_topic(group: &str, topic: &str) -> String {
    format!("%RETRY%{group}+{topic}")
}

/// The dead-letter topic of `group`.
pub fn dlq_topic(group: &str) -> String {
    format!("%DLQ%{group}")
}

/// Where a new group starts on a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InitialOffset {
    /// From the beginning if the queue still holds its first message and that message is
    /// younger than the fresh window (a new topic: produce-then-consume works); otherwise
    /// from the end (a long-lived topic is not replayed into a new group).
    Auto,
    /// From the oldest stored message.
    First,
    /// From the end: only messages stored after the group first pops.
    Last,
}

/// Pop settings.
#[derive(Debug, Clone)]
pub struct PopConfig {
    /// This broker's name (in receipt handles).
    pub broker_name: String,
    /// Where new groups start.
    pub initial: InitialOffset,
    /// The age under which a queue's first message makes [`InitialOffset::Auto`] start there.
    pub fresh_window: Duration,
    /// Most messages one pop returns.
    pub max_batch: u32,
    /// Longest invisible time.
    pub max_invisible: Duration,
    /// Longest long poll.
    pub max_poll: Duration,
    /// Create unknown groups on first use.
    pub auto_create_groups: bool,
    /// Delivery attempts before dead-lettering, for groups created implicitly.
    pub default_max_attempts: u32,
    /// How often deadlines are checked.
    pub tick: Duration,
}

impl Default for PopConfig {
    fn default() -> Self {
        Self {
            broker_name: "broker-a".into(),
            initial: InitialOffset::Auto,
            fresh_window: Duration::from_secs(3600),
            max_batch: 32,
            max_invisible: Duration::from_secs(12 * 3600),
            max_poll: Duration::from_secs(30),
            auto_create_groups: true,
            default_max_attempts: 16,
            tick: Duration::from_millis(100),
        }
    }
}

/// A consumer group's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupConfig {
    /// Name.
    pub name: String,
    /// Deliveries of a message before it goes to the dead-letter topic.
    pub max_attempts: u32,
    /// Consumes in order (FIFO) whatever the pop requests say: each queue is locked while
    /// its delivered messages are in flight (upstream's `consumeMessageOrderly`).
    #[serde(default)]
    pub fifo: bool,
}

/// Why a pop operation was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PopError {
    /// The group does not exist (and is not created implicitly).
    #[error("consumer group `{0}` does not exist")]
    UnknownGroup(String),
    /// The topic does not exist.
    #[error("topic `{0}` does not exist")]
    UnknownTopic(String),
    /// A request field is out of range.
    #[error("{0}")]
    Invalid(String),
    /// The receipt handle cannot be parsed or is not for this broker, group or topic.
    #[error("{0}")]
    BadHandle(String),
    /// The handle's invisible time is over.
    #[error("{0}")]
    Expired(String),
    /// The handle was acked, changed or redelivered since.
    #[error("{0}")]
    Stale(String),
    /// The store refused.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What to pop.
#[derive(Debug, Clone)]
pub struct PopRequest {
    /// Consumer group.
    pub group: String,
    /// Topic.
    pub topic: String,
    /// Queue, or -1 for any.
    pub queue: i32,
    /// Most messages.
    pub max: u32,
    /// Invisible time (ms).
    pub invisible_ms: i64,
    /// Long-poll time when nothing is available.
    pub poll: Duration,
    /// Tag filter.
    pub filter: TagFilter,
    /// FIFO: lock each queue until its delivered messages are acked.
    pub fifo: bool,
}

/// A delivered message.
#[derive(Debug, Clone)]
pub struct Popped {
    /// Its handle.
    pub handle: ReceiptHandle,
    /// Which delivery this is (1 = first).
    pub attempt: u32,
    /// The record as delivered: the stored record with `POP_CK` set to the handle,
    /// `reconsumeTimes` = attempt − 1 and, for retry copies, the original topic.
    pub record: Bytes,
}

/// What a pop returned.
#[derive(Debug, Clone)]
pub struct PopResult {
    /// Pop instant (ms).
    pub pop_time: i64,
    /// Invisible time granted (ms).
    pub invisible_ms: i64,
    /// The messages.
    pub messages: Vec<Popped>,
    /// Messages still waiting in the queues looked at (an estimate).
    pub rest: i64,
}

const SNAPSHOT: &str = "snapshot.json";
const GROUPS: &str = "groups.json";
const SNAPSHOT_EVERY: Duration = Duration::from_secs(5);
const SNAPSHOT_RECORDS: i64 = 50_000;
const WAIT: Duration = Duration::from_secs(10);
/// Most bytes of records one pop returns (a response must fit in one remoting frame).
const MAX_POP_BYTES: usize = 8 << 20;

struct Inner {
    store: Store,
    dir: PathBuf,
    cfg: PopConfig,
    state: Mutex<PopState>,
    groups: Mutex<HashMap<String, GroupConfig>>,
    /// Woken when something becomes poppable without a new message (ack, FIFO redelivery).
    available: tokio::sync::Notify,
    stop: AtomicBool,
    /// Set by a drain: long polls answer at once.
    draining: AtomicBool,
    rotate: AtomicU64,
    seq: AtomicU64,
    seq_key: u64,
}

/// The pop service. Cheap to clone.
#[derive(Clone)]
pub struct PopService {
    inner: Arc<Inner>,
    thread: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl std::fmt::Debug for PopService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PopService")
            .field("dir", &self.inner.dir)
            .finish()
    }
}

/// splitmix64: spreads a counter into unpredictable-looking sequence numbers.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn random_key() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.write_u32(std::process::id());
    h.finish()
}

impl PopService {
    /// Opens the pop state under `dir` (snapshot + pop-log replay) and starts the revive
    /// thread.
    pub fn start(store: Store, dir: &Path, cfg: PopConfig) -> Result<PopService, StoreError> {
        std::fs::create_dir_all(dir)?;
        store.ensure_system_topic(POP_LOG_TOPIC, 1)?;
        let snapshot: Snapshot = meta::load_json(dir, SNAPSHOT)?.unwrap_or_default();
        let mut state = PopState::from_snapshot(snapshot);
        let mut replayed = 0u64;
        if let Some(q) = store.queue(POP_LOG_TOPIC, 0) {
            if state.log_offset < q.min_offset() {
                tracing::warn!(
                    from = state.log_offset,
                    oldest = q.min_offset(),
                    "pop log older than the snapshot was deleted; replaying what is left"
                );
                state.log_offset = q.min_offset();
            }
            loop {
                let entries = q.entries_from(state.log_offset, 4096);
                if entries.is_empty() {
                    break;
                }
                for (off, e) in entries {
                    let rec = store.read_entry(&e)?;
                    match message::decode_record(&rec)
                        .ok()
                        .and_then(|m| PopRecord::decode(&m.body))
                    {
                        Some(r) => state.apply(&r),
                        None => {
                            tracing::error!(offset = off, "unreadable pop-log record skipped");
                            state.log_offset += 1;
                        }
                    }
                    replayed += 1;
                }
            }
        }
        let groups: Vec<GroupConfig> = meta::load_json(dir, GROUPS)?.unwrap_or_default();
        tracing::info!(
            replayed,
            queues = state.queues.len(),
            in_flight = state.deadlines.len(),
            "pop state recovered"
        );
        let inner = Arc::new(Inner {
            store,
            dir: dir.to_owned(),
            cfg,
            state: Mutex::new(state),
            groups: Mutex::new(groups.into_iter().map(|g| (g.name.clone(), g)).collect()),
            available: tokio::sync::Notify::new(),
            stop: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            rotate: AtomicU64::new(0),
            seq: AtomicU64::new(0),
            seq_key: random_key(),
        });
        let i2 = inner.clone();
        let thread = std::thread::Builder::new()
            .name("rdmq-pop-revive".into())
            .spawn(move || i2.run())?;
        Ok(PopService {
            inner,
            thread: Arc::new(Mutex::new(Some(thread))),
        })
    }

    /// Creates or updates a group.
    pub fn put_group(&self, g: GroupConfig) -> Result<(), StoreError> {
        if g.max_attempts == 0 {
            return Err(StoreError::Illegal(
                "max attempts must be at least 1".into(),
            ));
        }
        let mut groups = self.inner.lock_groups();
        groups.insert(g.name.clone(), g);
        let mut all: Vec<&GroupConfig> = groups.values().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        meta::save_json(&self.inner.dir, GROUPS, &all)?;
        Ok(())
    }

    /// A group's settings.
    pub fn group(&self, name: &str) -> Option<GroupConfig> {
        self.inner.lock_groups().get(name).cloned()
    }

    /// Pops up to `req.max` messages, long-polling up to `req.poll` when none is available.
    pub async fn pop(&self, req: &PopRequest) -> Result<PopResult, PopError> {
        let inner = &self.inner;
        if req.max == 0 || req.max > inner.cfg.max_batch {
            return Err(PopError::Invalid(format!(
                "maxMsgNums must be between 1 and {}, got {}",
                inner.cfg.max_batch, req.max
            )));
        }
        if req.invisible_ms <= 0 || req.invisible_ms > inner.cfg.max_invisible.as_millis() as i64 {
            return Err(PopError::Invalid(format!(
                "invisibleTime must be between 1 and {} ms, got {}",
                inner.cfg.max_invisible.as_millis(),
                req.invisible_ms
            )));
        }
        let group = inner.group_or_create(&req.group)?;
        let ordered;
        let req = if group.fifo && !req.fifo {
            ordered = PopRequest {
                fifo: true,
                ..req.clone()
            };
            &ordered
        } else {
            req
        };
        let topic = inner
            .store
            .topic(&req.topic)
            .ok_or_else(|| PopError::UnknownTopic(req.topic.clone()))?;
        if req.queue >= 0 && req.queue as u32 >= topic.queues() {
            return Err(PopError::Invalid(format!(
                "queueId {} is illegal: topic `{}` has {} queues",
                req.queue,
                req.topic,
                topic.queues()
            )));
        }
        let poll_until = Instant::now() + req.poll.min(inner.cfg.max_poll);
        let mut arrivals = inner.store.arrivals();
        loop {
            arrivals.borrow_and_update();
            let notified = inner.available.notified();
            let r = inner.try_pop(req, topic.queues()).await?;
            let left = poll_until.saturating_duration_since(Instant::now());
            if !r.messages.is_empty() || left.is_zero() || inner.draining.load(Ordering::SeqCst) {
                return Ok(r);
            }
            tokio::select! {
                _ = arrivals.changed() => {}
                _ = notified => {}
                _ = tokio::time::sleep(left.min(Duration::from_millis(200))) => {}
            }
        }
    }

    /// Acknowledges the message of `handle` for `group`.
    pub async fn ack(&self, group: &str, handle: &str) -> Result<(), PopError> {
        let inner = &self.inner;
        let (h, key) = inner.check_handle(group, handle)?;
        let end = {
            let mut st = inner.lock_state();
            inner.current(&st, &key, &h, now_ms())?;
            let r = PopRecord::Ack {
                key,
                offset: h.offset,
                seq: h.seq,
            };
            inner.log(&mut st, Vec::new(), &[r])?
        };
        inner.store.wait_stored(end, WAIT).await?;
        inner.available.notify_waiters();
        Ok(())
    }

    /// Gives the message of `handle` a new invisible time from now; returns the new handle
    /// (the old one stops working).
    pub async fn change_invisible(
        &self,
        group: &str,
        handle: &str,
        invisible_ms: i64,
    ) -> Result<ReceiptHandle, PopError> {
        let inner = &self.inner;
        if invisible_ms < 0 || invisible_ms > inner.cfg.max_invisible.as_millis() as i64 {
            return Err(PopError::Invalid(format!(
                "invisibleTime must be between 0 and {} ms, got {invisible_ms}",
                inner.cfg.max_invisible.as_millis()
            )));
        }
        let (h, key) = inner.check_handle(group, handle)?;
        let now = now_ms();
        let new = ReceiptHandle {
            pop_time: now,
            invisible: invisible_ms,
            seq: inner.next_seq(),
            ..h.clone()
        };
        let end = {
            let mut st = inner.lock_state();
            inner.current(&st, &key, &h, now)?;
            let r = PopRecord::Change {
                key,
                offset: h.offset,
                seq: h.seq,
                new_seq: new.seq,
                pop_time: now,
                invisible: invisible_ms,
            };
            inner.log(&mut st, Vec::new(), &[r])?
        };
        inner.store.wait_stored(end, WAIT).await?;
        Ok(new)
    }

    /// Moves the message of `handle` to the group's dead-letter topic now (a consumer gave
    /// up on it), ending its delivery like an ack.
    pub async fn dead_letter(&self, group: &str, handle: &str) -> Result<(), PopError> {
        let inner = &self.inner;
        let (h, key) = inner.check_handle(group, handle)?;
        let end = {
            let mut st = inner.lock_state();
            inner.current(&st, &key, &h, now_ms())?;
            let attempt = st
                .current(&key, h.offset, h.seq)
                .map(|f| f.attempt)
                .unwrap_or(1);
            let stored = inner
                .store
                .queue(&key.topic, key.queue)
                .and_then(|q| q.entry(h.offset))
                .and_then(|e| inner.store.read_entry(&e).ok())
                .and_then(|rec| message::decode_record(&rec).ok())
                .ok_or_else(|| {
                    PopError::Expired(format!(
                        "message at {}:{} offset {} is no longer stored",
                        key.topic, key.queue, h.offset
                    ))
                })?;
            let copy = inner.copy_for(&stored, &key.group, &dlq_topic(&key.group), attempt)?;
            let r = PopRecord::Revive {
                key,
                offset: h.offset,
                seq: h.seq,
                outcome: ReviveOutcome::DeadLetter,
            };
            inner.log(&mut st, vec![copy], &[r])?
        };
        inner.store.wait_stored(end, WAIT).await?;
        inner.available.notify_waiters();
        Ok(())
    }

    /// Messages in flight (all groups).
    pub fn in_flight(&self) -> usize {
        self.inner.lock_state().deadlines.len()
    }

    /// Ends every long poll now, and makes later ones answer at once (a drain).
    pub fn end_long_polls(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
        self.inner.available.notify_waiters();
    }

    /// Saves a snapshot and stops the revive thread.
    pub fn shutdown(&self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
    }
}

/// The topic a retry copy came from (`None` for an ordinary message).
fn original_topic(m: &StoredMessage) -> Option<String> {
    if !m.topic.starts_with("%RETRY%") && !m.topic.starts_with("%DLQ%") {
        return None;
    }
    Properties::parse(&m.properties)
        .ok()?
        .get(prop::RETRY_TOPIC)
        .map(str::to_owned)
}

impl Inner {
    fn lock_state(&self) -> MutexGuard<'_, PopState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_groups(&self) -> MutexGuard<'_, HashMap<String, GroupConfig>> {
        self.groups.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn next_seq(&self) -> u64 {
        mix(self.seq.fetch_add(1, Ordering::Relaxed) ^ self.seq_key)
    }

    fn group_or_create(&self, name: &str) -> Result<GroupConfig, PopError> {
        let mut groups = self.lock_groups();
        if let Some(g) = groups.get(name) {
            return Ok(g.clone());
        }
        if !self.cfg.auto_create_groups {
            return Err(PopError::UnknownGroup(name.to_owned()));
        }
        if name.is_empty() || name.len() > 255 || name.contains(char::is_whitespace) {
            return Err(PopError::Invalid(format!(
                "consumer group name `{name}` is not valid"
            )));
        }
        let g = GroupConfig {
            name: name.to_owned(),
            max_attempts: self.cfg.default_max_attempts,
            fifo: false,
        };
        groups.insert(name.to_owned(), g.clone());
        let mut all: Vec<&GroupConfig> = groups.values().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        meta::save_json(&self.dir, GROUPS, &all).map_err(StoreError::from)?;
        tracing::info!(group = name, "consumer group auto-created");
        Ok(g)
    }

    /// Parses `handle` and checks it is this broker's, for a topic of `group`.
    fn check_handle(
        &self,
        group: &str,
        handle: &str,
    ) -> Result<(ReceiptHandle, QueueKey), PopError> {
        let h = ReceiptHandle::parse(handle).map_err(|e| PopError::BadHandle(e.to_string()))?;
        if h.broker != self.cfg.broker_name {
            return Err(PopError::BadHandle(format!(
                "receipt handle was issued by broker `{}`, not `{}`",
                h.broker, self.cfg.broker_name
            )));
        }
        if h.topic.starts_with("%RETRY%") && !h.topic.starts_with(&format!("%RETRY%{group}+")) {
            return Err(PopError::BadHandle(format!(
                "receipt handle belongs to another group's retry topic `{}`",
                h.topic
            )));
        }
        let key = QueueKey {
            group: group.to_owned(),
            topic: h.topic.clone(),
            queue: h.queue,
        };
        Ok((h, key))
    }

    /// Refuses a handle that is not the current, unexpired delivery.
    fn current(
        &self,
        st: &PopState,
        key: &QueueKey,
        h: &ReceiptHandle,
        now: i64,
    ) -> Result<(), PopError> {
        match st.current(key, h.offset, h.seq) {
            Some(f) if f.deadline() <= now => Err(PopError::Expired(format!(
                "receipt handle expired at {} (invisible time over); the message will be delivered again",
                f.deadline()
            ))),
            Some(f) if f.pop_time != h.pop_time || f.invisible != h.invisible => Err(
                PopError::BadHandle("receipt handle does not match its delivery".into()),
            ),
            Some(_) => Ok(()),
            None => Err(PopError::Stale(format!(
                "receipt handle of {}@{} offset {} is not in flight for group `{}`: already acked, changed or redelivered",
                key.topic, key.queue, h.offset, key.group
            ))),
        }
    }

    /// Appends `extra` messages then `records` to the pop log, applying the records; returns
    /// the end to wait for. Call with the state lock held, so log order is apply order.
    fn log(
        &self,
        st: &mut PopState,
        mut extra: Vec<NewMessage>,
        records: &[PopRecord],
    ) -> Result<u64, StoreError> {
        for r in records {
            extra.push(NewMessage {
                topic: POP_LOG_TOPIC.to_owned(),
                queue_id: 0,
                flag: 0,
                sys_flag: 0,
                born_timestamp: now_ms(),
                born_host: self.store.config().store_host,
                reconsume_times: 0,
                properties: String::new(),
                body: Bytes::from(r.encode()),
            });
        }
        let placed = self.store.append(&extra)?;
        for r in records {
            st.apply(r);
        }
        Ok(placed.last().map(|p| p.end).unwrap_or(0))
    }

    /// The cursor a group starts at on a queue.
    fn initial_cursor(&self, topic: &str, queue: i32) -> i64 {
        let (min, max) = self.store.offsets(topic, queue);
        if topic.starts_with("%RETRY%") {
            return min;
        }
        match self.cfg.initial {
            InitialOffset::First => min,
            InitialOffset::Last => max,
            InitialOffset::Auto => {
                let fresh = min == 0
                    && self
                        .store
                        .queue(topic, queue)
                        .and_then(|q| q.entry(0))
                        .and_then(|e| self.store.read_entry(&e).ok())
                        .map(|rec| crate::store::store_timestamp(&rec))
                        .is_none_or(|ts| now_ms() - ts <= self.cfg.fresh_window.as_millis() as i64);
                if fresh { min } else { max }
            }
        }
    }

    async fn try_pop(&self, req: &PopRequest, queues: u32) -> Result<PopResult, PopError> {
        let now = now_ms();
        let rotation = self.rotate.fetch_add(1, Ordering::Relaxed);
        let mut order: Vec<(String, i32)> = if req.queue >= 0 {
            vec![(req.topic.clone(), req.queue)]
        } else {
            (0..queues)
                .map(|i| {
                    (
                        req.topic.clone(),
                        ((i as u64 + rotation) % queues as u64) as i32,
                    )
                })
                .collect()
        };
        if !req.fifo {
            let retry = retry_topic(&req.group, &req.topic);
            if self.store.topic(&retry).is_some() {
                // Retry copies are served first one pop in five, last otherwise.
                if rotation.is_multiple_of(5) {
                    order.insert(0, (retry, 0));
                } else {
                    order.push((retry, 0));
                }
            }
        }
        let mut out = PopResult {
            pop_time: now,
            invisible_ms: req.invisible_ms,
            messages: Vec::new(),
            rest: 0,
        };
        let mut end = 0;
        for (topic, queue) in order {
            let bytes: usize = out.messages.iter().map(|m| m.record.len()).sum();
            let need = if bytes >= MAX_POP_BYTES {
                0
            } else {
                req.max as usize - out.messages.len()
            };
            let key = QueueKey {
                group: req.group.clone(),
                topic,
                queue,
            };
            if need == 0 {
                out.rest += self.backlog(&key);
                continue;
            }
            let bytes_left = MAX_POP_BYTES - bytes;
            if let Some(e) = self.pop_queue(req, key, need, bytes_left, now, &mut out)? {
                end = end.max(e);
            }
        }
        if end > 0 {
            self.store.wait_stored(end, WAIT).await?;
        }
        Ok(out)
    }

    fn backlog(&self, key: &QueueKey) -> i64 {
        let (_, max) = self.store.offsets(&key.topic, key.queue);
        let st = self.lock_state();
        let cursor = st.queues.get(key).map(|q| q.cursor).unwrap_or(max);
        (max - cursor).max(0)
    }

    /// Pops from one queue; returns the log end to wait for if anything was logged.
    fn pop_queue(
        &self,
        req: &PopRequest,
        key: QueueKey,
        need: usize,
        bytes_left: usize,
        now: i64,
        out: &mut PopResult,
    ) -> Result<Option<u64>, PopError> {
        let Some(cq) = self.store.queue(&key.topic, key.queue) else {
            return Ok(None);
        };
        let mut st = self.lock_state();
        let created = !st.queues.contains_key(&key);
        let qs: QueueState = match st.queues.get(&key) {
            Some(q) => q.clone(),
            None => QueueState {
                cursor: self.initial_cursor(&key.topic, key.queue),
                ..Default::default()
            },
        };
        if req.fifo && !qs.inflight.is_empty() {
            return Ok(None);
        }
        let seq = self.next_seq();
        let mut batch = Batch {
            req,
            now,
            seq,
            key: &key,
            broker: &self.cfg.broker_name,
            items: Vec::new(),
            delivered: Vec::new(),
            groups: Vec::new(),
            bytes_left,
        };
        let mut stopped = false;
        if req.fifo {
            for (off, attempts) in &qs.redeliver {
                if batch.delivered.len() >= need {
                    break;
                }
                if let Some(e) = cq.entry(*off)
                    && batch.take(&self.store, *off, &e, Some(attempts + 1)) == Pick::Stop
                {
                    stopped = true;
                    break;
                }
            }
        }
        let mut cursor = qs.cursor.max(cq.min_offset());
        if !stopped {
            let scan = (need * 4).max(64);
            for (off, e) in cq.entries_from(cursor, scan) {
                if batch.delivered.len() >= need {
                    break;
                }
                if qs.inflight.contains_key(&off) || !req.filter.may_match(e.tag_hash) {
                    cursor = off + 1;
                    continue;
                }
                match batch.take(&self.store, off, &e, None) {
                    Pick::Stop => break,
                    Pick::Skip | Pick::Taken => cursor = off + 1,
                }
            }
        }
        let Batch {
            items, delivered, ..
        } = batch;
        if items.is_empty() && cursor == qs.cursor && !created {
            return Ok(None);
        }
        let record = PopRecord::Pop {
            key: key.clone(),
            cursor,
            pop_time: now,
            invisible: req.invisible_ms,
            seq,
            fifo: req.fifo,
            items,
        };
        let end = self.log(&mut st, Vec::new(), &[record])?;
        drop(st);
        for (m, mut props, handle, attempt) in delivered {
            let topic = original_topic(&m).unwrap_or_else(|| m.topic.clone());
            props.set(prop::POP_CK, handle.to_string());
            let mut nm = NewMessage::from_stored(&m, &topic, m.queue_id, props.encode());
            nm.reconsume_times = attempt as i32 - 1;
            let mut buf = BytesMut::with_capacity(message::record_len(&nm));
            message::encode_record(
                &nm,
                m.queue_offset,
                m.physical_offset,
                m.store_timestamp,
                m.store_host,
                &mut buf,
            );
            out.messages.push(Popped {
                handle,
                attempt,
                record: buf.freeze(),
            });
        }
        out.rest += (cq.max_offset() - cursor).max(0);
        Ok(Some(end))
    }

    fn run(self: Arc<Self>) {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "pop revive thread cannot start");
                return;
            }
        };
        let mut last_snapshot = Instant::now();
        let mut snapshot_at = self.lock_state().log_offset;
        loop {
            let stopping = self.stop.load(Ordering::SeqCst);
            match rt.block_on(self.revive_due()) {
                Ok(0) => {}
                Ok(_) => self.available.notify_waiters(),
                Err(e) => tracing::error!(error = %e, "revive failed; retrying"),
            }
            let logged = self.lock_state().log_offset;
            if logged != snapshot_at
                && (stopping
                    || last_snapshot.elapsed() >= SNAPSHOT_EVERY
                    || logged - snapshot_at >= SNAPSHOT_RECORDS)
            {
                match rt.block_on(self.save_snapshot()) {
                    Ok(at) => {
                        snapshot_at = at;
                        last_snapshot = Instant::now();
                    }
                    Err(e) => tracing::error!(error = %e, "pop snapshot failed"),
                }
            }
            if stopping {
                return;
            }
            std::thread::sleep(self.cfg.tick);
        }
    }

    /// Revives in-flight messages whose deadline passed; returns how many.
    async fn revive_due(&self) -> Result<usize, StoreError> {
        let now = now_ms();
        let due: Vec<state::Deadline> = self
            .lock_state()
            .deadlines
            .iter()
            .take_while(|d| d.0 <= now)
            .take(1024)
            .cloned()
            .collect();
        let mut end = 0;
        let mut n = 0;
        for (_, key, offset, seq) in due {
            let max_attempts = self
                .lock_groups()
                .get(&key.group)
                .map(|g| g.max_attempts)
                .unwrap_or(self.cfg.default_max_attempts);
            let mut st = self.lock_state();
            let Some(f) = st.current(&key, offset, seq).copied() else {
                continue;
            };
            let stored = self
                .store
                .queue(&key.topic, key.queue)
                .and_then(|q| q.entry(offset))
                .and_then(|e| self.store.read_entry(&e).ok())
                .and_then(|rec| message::decode_record(&rec).ok());
            let dead = f.attempt >= max_attempts;
            let (outcome, copy) = match (&stored, f.fifo, dead) {
                (None, _, _) => {
                    tracing::warn!(topic = %key.topic, queue = key.queue, offset, "in-flight message no longer stored; dropped");
                    (ReviveOutcome::DeadLetter, None)
                }
                (Some(m), _, true) => (
                    ReviveOutcome::DeadLetter,
                    Some(self.copy_for(m, &key.group, &dlq_topic(&key.group), f.attempt)?),
                ),
                (Some(_), true, false) => (ReviveOutcome::Redeliver, None),
                (Some(m), false, false) => {
                    let orig = original_topic(m).unwrap_or_else(|| m.topic.clone());
                    let retry = retry_topic(&key.group, &orig);
                    (
                        ReviveOutcome::Retry,
                        Some(self.copy_for(m, &key.group, &retry, f.attempt)?),
                    )
                }
            };
            let r = PopRecord::Revive {
                key,
                offset,
                seq,
                outcome,
            };
            end = end.max(self.log(&mut st, copy.into_iter().collect(), &[r])?);
            n += 1;
        }
        if end > 0 {
            self.store.wait_stored(end, WAIT).await?;
        }
        Ok(n)
    }

    /// A copy of `m` for `topic` (retry or dead-letter) after `attempts` deliveries.
    fn copy_for(
        &self,
        m: &StoredMessage,
        _group: &str,
        topic: &str,
        attempts: u32,
    ) -> Result<NewMessage, StoreError> {
        self.store.ensure_system_topic(topic, 1)?;
        let mut p = Properties::parse(&m.properties).unwrap_or_default();
        p.remove(prop::POP_CK);
        if p.get(prop::RETRY_TOPIC).is_none() {
            p.set(prop::RETRY_TOPIC, m.topic.clone());
        }
        if p.get(prop::ORIGIN_MESSAGE_ID).is_none() {
            let id = p
                .get(prop::UNIQ_KEY)
                .map(str::to_owned)
                .unwrap_or_else(|| message::offset_msg_id(m.store_host, m.physical_offset));
            p.set(prop::ORIGIN_MESSAGE_ID, id);
        }
        let mut nm = NewMessage::from_stored(m, topic, 0, p.encode());
        nm.reconsume_times = attempts as i32;
        Ok(nm)
    }

    /// Writes a snapshot of everything logged and written so far; returns its log offset.
    async fn save_snapshot(&self) -> Result<i64, StoreError> {
        let (snap, end) = {
            let st = self.lock_state();
            (st.snapshot(), self.store.log_end())
        };
        // Everything the snapshot reflects must be in the log before the snapshot exists.
        self.store.wait_stored(end, WAIT).await?;
        meta::save_json(&self.dir, SNAPSHOT, &snap)?;
        Ok(snap.log_offset)
    }
}

/// What [`Batch::take`] did with a candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pick {
    /// Delivered.
    Taken,
    /// Passed over (filtered out or unreadable); the cursor moves past it.
    Skip,
    /// FIFO: its message group is already in the batch; stop here.
    Stop,
}

/// The messages one pop takes from one queue.
struct Batch<'a> {
    req: &'a PopRequest,
    now: i64,
    seq: u64,
    key: &'a QueueKey,
    broker: &'a str,
    items: Vec<(i64, u32)>,
    delivered: Vec<(StoredMessage, Properties, ReceiptHandle, u32)>,
    /// FIFO: message groups in the batch. One message per group per batch (the queue then
    /// stays locked until the batch is acked), so a group's next message is never handed out
    /// while one is in flight.
    groups: Vec<String>,
    /// Bytes the response may still carry; a message that does not fit ends the batch
    /// (the first one is always taken).
    bytes_left: usize,
}

impl Batch<'_> {
    /// Considers the message at `off` (`attempt` is set for FIFO redeliveries).
    fn take(&mut self, store: &Store, off: i64, e: &CqEntry, attempt: Option<u32>) -> Pick {
        let Some((m, props)) = store
            .read_entry(e)
            .ok()
            .and_then(|rec| message::decode_record(&rec).ok())
            .and_then(|m| Properties::parse(&m.properties).ok().map(|p| (m, p)))
        else {
            return Pick::Skip;
        };
        if attempt.is_none()
            && self.req.filter.is_selective()
            && !self.req.filter.matches(props.tag())
        {
            return Pick::Skip;
        }
        let size = m.body.len() + m.properties.len() + 256;
        if !self.delivered.is_empty() && size > self.bytes_left {
            return Pick::Stop;
        }
        self.bytes_left = self.bytes_left.saturating_sub(size);
        if self.req.fifo {
            let g = props.get(prop::SHARDING_KEY).unwrap_or("");
            if self.groups.iter().any(|x| x == g) {
                return Pick::Stop;
            }
            self.groups.push(g.to_owned());
        }
        let attempt = attempt.unwrap_or(m.reconsume_times.max(0) as u32 + 1);
        let handle = ReceiptHandle {
            pop_time: self.now,
            invisible: self.req.invisible_ms,
            seq: self.seq,
            queue: self.key.queue,
            offset: off,
            broker: self.broker.to_owned(),
            topic: self.key.topic.clone(),
        };
        self.items.push((off, attempt));
        self.delivered.push((m, props, handle, attempt));
        Pick::Taken
    }
}
