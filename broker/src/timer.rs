//! Timed and delayed messages: a persistent timing wheel over the commit log.
//!
//! - **Schedule**: a SEND whose message asks for a later delivery (`__STARTDELIVERTIME`,
//!   `TIMER_DELIVER_MS`, `TIMER_DELAY_SEC/MS`, or a `DELAY` level) is stored in the system topic
//!   [`TIMER_TOPIC`] with its destination in `REAL_TOPIC`/`REAL_QID` and the absolute time in
//!   `TIMER_DELIVER_MS`. It is durable like any message.
//! - **Index**: the timer thread reads that topic's consume queue and files each timer by the
//!   minute it is due in: `timer/<minute>.bkt`, 20-byte entries (due ms, commit-log offset,
//!   size). Timers due within the next few minutes are also held in memory; far-future ones
//!   (days) cost 20 bytes of disk and nothing in memory until their minute comes near.
//! - **Fire**: every tick (100 ms) the due timers are copied into their real topics (same body,
//!   properties and message id; `__RDMQ_TIMER_SRC` names the timer record), then progress is
//!   saved (`timer/state.json`: consume-queue cursor, fired-until time, commit-log position).
//! - **Recover**: bucket files are reloaded, the consume queue is re-read from the saved
//!   cursor, and the commit log written since the last save is scanned for fired copies, so a
//!   SIGKILL neither loses nor duplicates a timer.

use crate::poison::OrAbort;
use std::collections::{BTreeMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::message::{self, NewMessage, Properties, prop};
use crate::store::queue::CqEntry;
use crate::store::{Store, StoreError, meta, now_ms};

/// The system topic timed messages wait in.
pub const TIMER_TOPIC: &str = "rmq_sys_wheel_timer";

/// Delay levels 1..=18 (RocketMQ's defaults), in ms.
pub const DELAY_LEVELS_MS: [i64; 18] = [
    1_000, 5_000, 10_000, 30_000, 60_000, 120_000, 180_000, 240_000, 300_000, 360_000, 420_000,
    480_000, 540_000, 600_000, 1_200_000, 1_800_000, 3_600_000, 7_200_000,
];

const MINUTE_MS: i64 = 60_000;
const ENTRY: usize = 20;
/// Minutes ahead of the current one whose timers are held in memory.
const WINDOW_MINUTES: i64 = 2;
/// Shortest sleep of the timer thread between ticks.
const MIN_PAUSE: Duration = Duration::from_millis(5);
/// Re-puts per store append.
const FIRE_BATCH: usize = 512;

/// Timer settings.
#[derive(Debug, Clone)]
pub struct TimerConfig {
    /// The latest delivery time accepted, from now.
    pub max_delay: Duration,
    /// How often due timers are fired.
    pub tick: Duration,
}

impl Default for TimerConfig {
    fn default() -> Self {
        Self {
            max_delay: Duration::from_secs(40 * 24 * 3600),
            tick: Duration::from_millis(100),
        }
    }
}

/// Why a message's delivery time is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TimingError(pub String);

/// The absolute delivery time (ms) a message asks for, if it is in the future.
pub fn deliver_at(
    properties: &str,
    now: i64,
    max_delay: Duration,
) -> Result<Option<i64>, TimingError> {
    let mut at: Option<i64> = None;
    let mut bad: Option<String> = None;
    let _ = message::scan_properties(properties, |k, v| {
        let parsed = |v: &str| {
            v.trim()
                .parse::<i64>()
                .map_err(|_| format!("property {k} `{v}` is not a number"))
        };
        let t = match k {
            prop::START_DELIVER_TIME | prop::TIMER_DELIVER_MS => parsed(v),
            prop::TIMER_DELAY_SEC => parsed(v).map(|s| now.saturating_add(s.saturating_mul(1000))),
            prop::TIMER_DELAY_MS => parsed(v).map(|ms| now.saturating_add(ms)),
            prop::DELAY => parsed(v).map(|level| match level {
                i64::MIN..=0 => now,
                l => now + DELAY_LEVELS_MS[(l.min(18) - 1) as usize],
            }),
            _ => return,
        };
        match t {
            Ok(t) => at = Some(at.map_or(t, |a| a.max(t))),
            Err(e) => bad = Some(e),
        }
    });
    if let Some(e) = bad {
        return Err(TimingError(e));
    }
    match at {
        Some(t) if t > now => {
            if t - now > max_delay.as_millis() as i64 {
                return Err(TimingError(format!(
                    "delivery time {t} is more than {} s ahead",
                    max_delay.as_secs()
                )));
            }
            Ok(Some(t))
        }
        _ => Ok(None),
    }
}

/// The message to store instead of `msg`, due at `at`: parked in the timer topic.
pub fn park(msg: &NewMessage, at: i64) -> NewMessage {
    let mut p = Properties::parse(&msg.properties).unwrap_or_default();
    p.set(prop::REAL_TOPIC, msg.topic.clone());
    p.set(prop::REAL_QID, msg.queue_id.to_string());
    p.set(prop::TIMER_DELIVER_MS, at.to_string());
    NewMessage {
        topic: TIMER_TOPIC.to_owned(),
        queue_id: 0,
        properties: p.encode(),
        ..msg.clone()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Timer {
    due: i64,
    phys: u64,
    size: u32,
}

impl Timer {
    fn encode(&self) -> [u8; ENTRY] {
        let mut b = [0u8; ENTRY];
        b[..8].copy_from_slice(&self.due.to_be_bytes());
        b[8..16].copy_from_slice(&self.phys.to_be_bytes());
        b[16..].copy_from_slice(&self.size.to_be_bytes());
        b
    }

    fn decode(b: &[u8]) -> Timer {
        Timer {
            due: i64::from_be_bytes(b[..8].try_into().expect("8 bytes")),
            phys: u64::from_be_bytes(b[8..16].try_into().expect("8 bytes")),
            size: u32::from_be_bytes(b[16..20].try_into().expect("4 bytes")),
        }
    }
}

/// Saved progress.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct TimerState {
    /// Timer consume-queue entries below this are filed.
    cursor: i64,
    /// Every filed timer due before this has fired.
    fired_until: i64,
    /// Commit-log end when this was saved: fired copies after it are found by scanning.
    log_pos: u64,
}

const STATE: &str = "state.json";

struct Wheel {
    state: TimerState,
    /// Timers due before `window_end`, by due time.
    near: BTreeMap<i64, Vec<Timer>>,
    near_count: usize,
    window_end: i64,
    /// Appended bucket files, by minute (a few kept open).
    open: BTreeMap<i64, File>,
}

/// Counters of the timer service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimerStats {
    /// Timers held in memory (due within the window).
    pub in_memory: usize,
    /// Timers fired since start.
    pub fired: u64,
    /// Consume-queue entries filed (the cursor).
    pub filed: i64,
}

struct Inner {
    store: Store,
    dir: PathBuf,
    cfg: TimerConfig,
    wheel: Mutex<Wheel>,
    stop: AtomicBool,
    fired: AtomicU64,
}

/// The timer service: one thread that files and fires timers.
pub struct TimerService {
    inner: Arc<Inner>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for TimerService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimerService")
            .field("dir", &self.inner.dir)
            .finish()
    }
}

fn minute_of(ms: i64) -> i64 {
    ms.div_euclid(MINUTE_MS)
}

fn bucket_path(dir: &Path, minute: i64) -> PathBuf {
    dir.join(format!("{minute}.bkt"))
}

fn read_bucket(dir: &Path, minute: i64) -> io::Result<Vec<Timer>> {
    match std::fs::read(bucket_path(dir, minute)) {
        Ok(raw) => Ok(raw.chunks_exact(ENTRY).map(Timer::decode).collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

fn bucket_minutes(dir: &Path) -> io::Result<Vec<i64>> {
    let mut v: Vec<i64> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".bkt")?.parse().ok())
        .collect();
    v.sort_unstable();
    Ok(v)
}

impl TimerService {
    /// Opens (recovering) the timer state under `dir` and starts the timer thread.
    pub fn start(store: Store, dir: &Path, cfg: TimerConfig) -> Result<TimerService, StoreError> {
        std::fs::create_dir_all(dir)?;
        store.ensure_system_topic(TIMER_TOPIC, 1)?;
        let saved: Option<TimerState> = meta::load_json(dir, STATE)?;
        let now = now_ms();
        let mut state = saved.unwrap_or(TimerState {
            cursor: 0,
            fired_until: i64::MIN,
            log_pos: store.log_start(),
        });
        // Copies fired after the last save: never fire those again.
        let mut fired_since = HashSet::new();
        store.scan_records(state.log_pos, |_, rec| {
            if let Ok(m) = message::decode_record(&rec)
                && let Ok(p) = Properties::parse(&m.properties)
                && let Some(src) = p.get(prop::TIMER_SRC).and_then(|s| s.parse::<u64>().ok())
            {
                fired_since.insert(src);
            }
        });
        let window_end = (minute_of(now) + WINDOW_MINUTES + 1) * MINUTE_MS;
        let mut wheel = Wheel {
            state,
            near: BTreeMap::new(),
            near_count: 0,
            window_end,
            open: BTreeMap::new(),
        };
        let mut loaded = HashSet::new();
        for minute in bucket_minutes(dir)? {
            if (minute + 1) * MINUTE_MS <= state.fired_until {
                let _ = std::fs::remove_file(bucket_path(dir, minute));
                continue;
            }
            if minute * MINUTE_MS >= window_end {
                continue;
            }
            for t in read_bucket(dir, minute)? {
                if t.due < state.fired_until
                    || fired_since.contains(&t.phys)
                    || !loaded.insert(t.phys)
                {
                    continue;
                }
                wheel.insert_near(t);
            }
        }
        let inner = Arc::new(Inner {
            store,
            dir: dir.to_owned(),
            cfg,
            wheel: Mutex::new(wheel),
            stop: AtomicBool::new(false),
            fired: AtomicU64::new(0),
        });
        // Re-file what the consume queue holds past the saved cursor.
        {
            let mut w = inner.lock();
            inner.file_new(&mut w, |t| {
                !fired_since.contains(&t.phys) && !loaded.contains(&t.phys)
            })?;
            state = w.state;
        }
        tracing::info!(
            pending_in_memory = inner.lock().near_count,
            cursor = state.cursor,
            "timer wheel recovered"
        );
        let i2 = inner.clone();
        let thread = std::thread::Builder::new()
            .name("rdmq-timer".into())
            .spawn(move || i2.run())?;
        Ok(TimerService {
            inner,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Counters.
    pub fn stats(&self) -> TimerStats {
        let w = self.inner.lock();
        TimerStats {
            in_memory: w.near_count,
            fired: self.inner.fired.load(Ordering::Relaxed),
            filed: w.state.cursor,
        }
    }

    /// Stops the thread after saving progress.
    pub fn shutdown(&self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.lock().or_abort("the timer wheel").take() {
            let _ = t.join();
        }
    }
}

impl Wheel {
    fn insert_near(&mut self, t: Timer) {
        self.near.entry(t.due).or_default().push(t);
        self.near_count += 1;
    }

    fn append_bucket(&mut self, dir: &Path, t: Timer) -> io::Result<()> {
        let minute = minute_of(t.due);
        if !self.open.contains_key(&minute) {
            if self.open.len() >= 64 {
                let first = *self.open.keys().next().expect("non-empty");
                self.open.remove(&first);
            }
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(bucket_path(dir, minute))?;
            self.open.insert(minute, f);
        }
        self.open
            .get_mut(&minute)
            .expect("opened")
            .write_all(&t.encode())
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Wheel> {
        self.wheel.lock().or_abort("the timer wheel")
    }

    /// Files consume-queue entries past the cursor (those `keep` accepts).
    fn file_new(&self, w: &mut Wheel, keep: impl Fn(&Timer) -> bool) -> Result<(), StoreError> {
        let Some(q) = self.store.queue(TIMER_TOPIC, 0) else {
            return Ok(());
        };
        loop {
            let entries = q.entries_from(w.state.cursor.max(q.min_offset()), 4096);
            if entries.is_empty() {
                return Ok(());
            }
            for (off, e) in entries {
                w.state.cursor = off + 1;
                let Some(t) = self.timer_of(&e) else { continue };
                if !keep(&t) {
                    continue;
                }
                w.append_bucket(&self.dir, t)?;
                if t.due < w.window_end {
                    w.insert_near(t);
                }
            }
        }
    }

    fn timer_of(&self, e: &CqEntry) -> Option<Timer> {
        let rec = self.store.read_entry(e).ok()?;
        let m = message::decode_record(&rec).ok()?;
        let p = Properties::parse(&m.properties).ok()?;
        let due = p.get(prop::TIMER_DELIVER_MS)?.parse().ok()?;
        Some(Timer {
            due,
            phys: e.phys,
            size: e.size,
        })
    }

    fn run(self: Arc<Self>) {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "timer thread cannot start");
                return;
            }
        };
        let mut last_durable_save = Instant::now();
        loop {
            let stopping = self.stop.load(Ordering::SeqCst);
            if let Err(e) = rt.block_on(self.tick()) {
                tracing::error!(error = %e, "timer tick failed; retrying");
            }
            let durable = stopping || last_durable_save.elapsed() >= Duration::from_secs(1);
            if let Err(e) = self.save(durable) {
                tracing::error!(error = %e, "saving timer progress failed");
            } else if durable {
                last_durable_save = Instant::now();
            }
            if stopping {
                return;
            }
            std::thread::sleep(self.pause());
        }
    }

    /// Until the next tick: the configured tick, or sooner when a held timer falls due
    /// before it (never below [`MIN_PAUSE`], so dense timers are fired in batches).
    fn pause(&self) -> Duration {
        let next_due = self.lock().near.keys().next().copied();
        match next_due {
            Some(due) => {
                let wait = Duration::from_millis((due - now_ms()).max(0) as u64);
                wait.clamp(MIN_PAUSE.min(self.cfg.tick), self.cfg.tick)
            }
            None => self.cfg.tick,
        }
    }

    /// Files new timers, moves the window, fires what is due.
    async fn tick(&self) -> Result<(), StoreError> {
        let now = now_ms();
        let due: Vec<Timer> = {
            let mut w = self.lock();
            self.file_new(&mut w, |_| true)?;
            let new_end = (minute_of(now) + WINDOW_MINUTES + 1) * MINUTE_MS;
            while w.window_end < new_end {
                let minute = minute_of(w.window_end);
                let mut ts = read_bucket(&self.dir, minute)?;
                ts.sort_unstable_by_key(|t| t.phys);
                ts.dedup_by_key(|t| t.phys);
                for t in ts {
                    if t.due >= w.state.fired_until {
                        w.insert_near(t);
                    }
                }
                w.window_end = (minute + 1) * MINUTE_MS;
            }
            let later = w.near.split_off(&(now + 1));
            let due: Vec<Timer> = std::mem::replace(&mut w.near, later)
                .into_values()
                .flatten()
                .collect();
            w.near_count -= due.len();
            due
        };
        for (i, chunk) in due.chunks(FIRE_BATCH).enumerate() {
            let msgs: Vec<NewMessage> = chunk.iter().filter_map(|t| self.fired_copy(t)).collect();
            if msgs.is_empty() {
                continue;
            }
            let stored = match self.store.append(&msgs) {
                Ok(placed) => match placed.last() {
                    Some(last) => {
                        self.store
                            .wait_stored(last.end, Duration::from_secs(10))
                            .await
                    }
                    None => Ok(()),
                },
                Err(e) => Err(e),
            };
            if let Err(e) = stored {
                // Not fired (or not known to be stored): back into the wheel for the next tick.
                // A copy that did get stored is found by recovery's scan if we crash first;
                // otherwise it may fire twice (at-least-once).
                let mut w = self.lock();
                for t in &due[i * FIRE_BATCH..] {
                    w.insert_near(*t);
                }
                return Err(e);
            }
            self.fired.fetch_add(msgs.len() as u64, Ordering::Relaxed);
        }
        let mut w = self.lock();
        w.state.fired_until = w.state.fired_until.max(now + 1);
        w.state.log_pos = self.store.log_end();
        Ok(())
    }

    /// The copy of a due timer for its real topic (`None` if its record is gone).
    fn fired_copy(&self, t: &Timer) -> Option<NewMessage> {
        let rec = self
            .store
            .read_entry(&CqEntry {
                phys: t.phys,
                size: t.size,
                tag_hash: 0,
            })
            .ok()?;
        let m = message::decode_record(&rec).ok()?;
        let mut p = Properties::parse(&m.properties).ok()?;
        let topic = p.remove(prop::REAL_TOPIC)?;
        let queue: i32 = p.remove(prop::REAL_QID)?.parse().ok()?;
        p.set(prop::TIMER_SRC, t.phys.to_string());
        if self.store.topic(&topic).is_none() {
            tracing::warn!(
                topic,
                "timer fired for a topic that no longer exists; dropped"
            );
            return None;
        }
        Some(NewMessage::from_stored(&m, &topic, queue, p.encode()))
    }

    /// Saves progress; `durable` also fsyncs the bucket files and drops fully fired ones.
    fn save(&self, durable: bool) -> io::Result<()> {
        let mut w = self.lock();
        let state = w.state;
        if durable {
            for f in w.open.values() {
                f.sync_data()?;
            }
            meta::save_json(&self.dir, STATE, &state)?;
            let done: Vec<i64> = w
                .open
                .keys()
                .copied()
                .filter(|m| (m + 1) * MINUTE_MS <= state.fired_until)
                .collect();
            for m in done {
                w.open.remove(&m);
            }
            drop(w);
            for m in bucket_minutes(&self.dir)? {
                if (m + 1) * MINUTE_MS <= state.fired_until {
                    let _ = std::fs::remove_file(bucket_path(&self.dir, m));
                }
            }
            Ok(())
        } else {
            drop(w);
            let tmp = self.dir.join("state.json.tmp");
            let f = File::create(&tmp)?;
            f.write_all_at(&serde_json::to_vec(&state).map_err(io::Error::other)?, 0)?;
            std::fs::rename(&tmp, self.dir.join(STATE))
        }
    }
}
