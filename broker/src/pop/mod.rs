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

mod deliver;
pub use rdmq_protocol::handle;
pub mod record;
mod revive;
pub mod state;

use crate::poison::OrAbort;
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
use rdmq_protocol::names;
use record::{PopRecord, QueueKey, ReviveOutcome};
use state::{PopState, QueueState, Snapshot};

/// The system topic holding the pop log.
pub use rdmq_protocol::POP_LOG_TOPIC;

pub use rdmq_protocol::names::{dlq_topic, retry_topic};

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

/// The binary snapshot ([`PopState::encode_snapshot`]).
const SNAPSHOT: &str = "snapshot.bin";
/// The previous release's JSON snapshot: read when no binary one exists, removed once one does.
const SNAPSHOT_JSON: &str = "snapshot.json";
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
    /// Orders the writes of the groups file.
    groups_gate: meta::SaveGate,
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
        let mut state = match std::fs::read(dir.join(SNAPSHOT)) {
            Ok(bytes) => match PopState::decode_snapshot(&bytes) {
                Ok(st) => st,
                Err(e) => {
                    // The pop log holds every change: replay all of it that is left.
                    tracing::error!(error = %e, "pop snapshot unreadable; replaying the whole pop log");
                    PopState::default()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let old: Snapshot = meta::load_json(dir, SNAPSHOT_JSON)?.unwrap_or_default();
                PopState::from_snapshot(old)
            }
            Err(e) => return Err(e.into()),
        };
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
            groups_gate: Default::default(),
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
        names::check_group(&g.name).map_err(|e| StoreError::Illegal(e.to_string()))?;
        if g.max_attempts == 0 {
            return Err(StoreError::Illegal(
                "max attempts must be at least 1".into(),
            ));
        }
        let generation = {
            let mut groups = self.inner.lock_groups();
            groups.insert(g.name.clone(), g);
            self.inner.groups_gate.changed()
        };
        self.inner.save_groups(generation)
    }

    /// Deletes a group's settings, durably (false when it had none): later pops of the group
    /// find the defaults, or are refused where groups are not created on first use.
    pub fn delete_group(&self, name: &str) -> Result<bool, StoreError> {
        let generation = {
            let mut groups = self.inner.lock_groups();
            if groups.remove(name).is_none() {
                return Ok(false);
            }
            self.inner.groups_gate.changed()
        };
        self.inner.save_groups(generation)?;
        Ok(true)
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
        names::check_consumption(&req.group, &req.topic)
            .map_err(|e| PopError::Invalid(e.to_string()))?;
        let known = inner.lock_groups().get(&req.group).cloned();
        let group = match known {
            Some(g) => g,
            // Creation writes the groups file: off the runtime threads.
            None => {
                let i = self.inner.clone();
                let name = req.group.clone();
                tokio::task::spawn_blocking(move || i.group_or_create(&name))
                    .await
                    .map_err(|e| {
                        PopError::Store(StoreError::Busy(format!(
                            "group creation did not finish: {e}"
                        )))
                    })??
            }
        };
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
        // Woken by arrivals on the topic's queues and on the group's retry topic, and by pop
        // state changes that may free messages (acks unlocking a FIFO queue, revives).
        let topic_sig = inner.store.topic_arrival(&req.topic);
        let retry_sig = inner
            .store
            .topic_arrival(&retry_topic(&req.group, &req.topic));
        loop {
            let on_topic = topic_sig.notified();
            let on_retry = retry_sig.notified();
            let notified = inner.available.notified();
            let r = inner.try_pop(req, topic.queues()).await?;
            let left = poll_until.saturating_duration_since(Instant::now());
            if !r.messages.is_empty() || left.is_zero() || inner.draining.load(Ordering::SeqCst) {
                return Ok(r);
            }
            tokio::select! {
                _ = on_topic => inner.store.count_poll_wakeup(),
                _ = on_retry => inner.store.count_poll_wakeup(),
                _ = notified => {}
                _ = tokio::time::sleep(left) => {}
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
        // An ack may unlock a FIFO queue: wake the pops of this topic only.
        inner.store.topic_arrival(&h.topic).notify_waiters();
        Ok(())
    }

    /// Acknowledges many handles of `group` with one pop-log append and one wait for its
    /// durability; one result per handle, in order (a bad handle fails alone).
    pub async fn ack_batch(&self, group: &str, handles: &[String]) -> Vec<Result<(), PopError>> {
        let inner = &self.inner;
        let mut results: Vec<Result<(), PopError>> = Vec::with_capacity(handles.len());
        let mut records = Vec::new();
        let mut topics: Vec<String> = Vec::new();
        let logged = {
            let mut st = inner.lock_state();
            let now = now_ms();
            for handle in handles {
                let checked = inner
                    .check_handle(group, handle)
                    .and_then(|(h, key)| inner.current(&st, &key, &h, now).map(|_| (h, key)));
                match checked {
                    Ok((h, key)) => {
                        if !topics.contains(&h.topic) {
                            topics.push(h.topic.clone());
                        }
                        records.push(PopRecord::Ack {
                            key,
                            offset: h.offset,
                            seq: h.seq,
                        });
                        results.push(Ok(()));
                    }
                    Err(e) => results.push(Err(e)),
                }
            }
            if records.is_empty() {
                Ok(0)
            } else {
                inner.log(&mut st, Vec::new(), &records)
            }
        };
        let stored = match logged {
            Ok(0) => Ok(()),
            Ok(end) => inner.store.wait_stored(end, WAIT).await,
            Err(e) => Err(e),
        };
        if let Err(e) = stored {
            for r in results.iter_mut().filter(|r| r.is_ok()) {
                *r = Err(PopError::Store(e.clone()));
            }
            return results;
        }
        for t in &topics {
            inner.store.topic_arrival(t).notify_waiters();
        }
        results
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
        // A group's first dead letter creates its DLQ topic: that write and fsync run on the
        // blocking pool, not under the pop state's lock on a runtime thread.
        let dlq = dlq_topic(&key.group);
        if inner.store.topic(&dlq).is_none() {
            let store = inner.store.clone();
            tokio::task::spawn_blocking(move || store.ensure_system_topic(&dlq, 1))
                .await
                .map_err(|e| {
                    PopError::Store(StoreError::Busy(format!(
                        "dead-letter topic creation did not finish: {e}"
                    )))
                })??;
        }
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
        inner.store.topic_arrival(&h.topic).notify_waiters();
        Ok(())
    }

    /// This broker's own handle for a message a RocketMQ client names by its `extraInfo`
    /// (queue, offset and pop time): the delivery in flight at that place, if its pop time
    /// matches (a later delivery or a change has another one).
    pub fn native_handle(
        &self,
        group: &str,
        topic: &str,
        e: &rdmq_protocol::ExtraInfo,
    ) -> Result<String, PopError> {
        let key = QueueKey {
            group: group.to_owned(),
            topic: topic.to_owned(),
            queue: e.queue,
        };
        let st = self.inner.lock_state();
        let f = st
            .queues
            .get(&key)
            .and_then(|q| q.inflight.get(&e.offset))
            .ok_or_else(|| {
                PopError::Expired(format!(
                    "no delivery of {topic}@{} offset {} is in flight for group `{group}`",
                    e.queue, e.offset
                ))
            })?;
        if f.pop_time != e.pop_time {
            return Err(PopError::Stale(format!(
                "the handle of {topic}@{} offset {} was superseded",
                e.queue, e.offset
            )));
        }
        Ok(ReceiptHandle {
            pop_time: f.pop_time,
            invisible: f.invisible,
            seq: f.seq,
            queue: e.queue,
            offset: e.offset,
            broker: self.inner.cfg.broker_name.clone(),
            topic: topic.to_owned(),
        }
        .to_string())
    }

    /// How far `group` has consumed `topic`'s queue by Pop: every offset below is acked
    /// (`None` when the group never popped there).
    pub fn progress(&self, group: &str, topic: &str, queue: i32) -> Option<i64> {
        let key = QueueKey {
            group: group.to_owned(),
            topic: topic.to_owned(),
            queue,
        };
        let st = self.inner.lock_state();
        let q = st.queues.get(&key)?;
        let pending = q.inflight.keys().chain(q.redeliver.keys()).min().copied();
        Some(pending.map_or(q.cursor, |p| p.min(q.cursor)))
    }

    /// Whether `group` has popped from `topic`'s queue (its progress there is the pop
    /// state's, not a committed offset).
    pub fn pops_on(&self, group: &str, topic: &str, queue: i32) -> bool {
        self.progress(group, topic, queue).is_some()
    }

    /// Moves `group`'s cursor on `topic`'s queue to `offset` (an operator's reset): what was
    /// in flight or due for redelivery there is forgotten and the next pop starts at
    /// `offset`. Durable when it returns.
    pub async fn reset(
        &self,
        group: &str,
        topic: &str,
        queue: i32,
        offset: i64,
    ) -> Result<(), PopError> {
        let inner = &self.inner;
        let key = QueueKey {
            group: group.to_owned(),
            topic: topic.to_owned(),
            queue,
        };
        let end = {
            let mut st = inner.lock_state();
            inner.log(
                &mut st,
                Vec::new(),
                &[PopRecord::Reset {
                    key,
                    cursor: offset,
                }],
            )?
        };
        inner.store.wait_stored(end, WAIT).await?;
        inner.store.topic_arrival(topic).notify_waiters();
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
        if let Some(t) = self.thread.lock().or_abort("pop state").take() {
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
        self.state.lock().or_abort("pop state")
    }

    fn lock_groups(&self) -> MutexGuard<'_, HashMap<String, GroupConfig>> {
        self.groups.lock().or_abort("pop state")
    }

    fn next_seq(&self) -> u64 {
        mix(self.seq.fetch_add(1, Ordering::Relaxed) ^ self.seq_key)
    }

    fn group_or_create(&self, name: &str) -> Result<GroupConfig, PopError> {
        let generation = {
            let mut groups = self.lock_groups();
            if let Some(g) = groups.get(name) {
                return Ok(g.clone());
            }
            if !self.cfg.auto_create_groups {
                return Err(PopError::UnknownGroup(name.to_owned()));
            }
            names::check_group(name).map_err(|e| PopError::Invalid(e.to_string()))?;
            let g = GroupConfig {
                name: name.to_owned(),
                max_attempts: self.cfg.default_max_attempts,
                fifo: false,
            };
            groups.insert(name.to_owned(), g);
            self.groups_gate.changed()
        };
        self.save_groups(generation)?;
        tracing::info!(group = name, "consumer group auto-created");
        Ok(self.lock_groups().get(name).cloned().expect("inserted"))
    }

    /// Writes the groups file (outside the groups lock) up to change `generation`.
    fn save_groups(&self, generation: u64) -> Result<(), StoreError> {
        self.groups_gate.persist(
            generation,
            || {
                let groups = self.lock_groups();
                let mut all: Vec<GroupConfig> = groups.values().cloned().collect();
                all.sort_by(|a, b| a.name.cmp(&b.name));
                all
            },
            |all| meta::save_json(&self.dir, GROUPS, all),
        )?;
        Ok(())
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
}
