//! Consume queues, built from the commit log by the dispatcher.
//!
//! A consume queue holds fixed 20-byte entries
//! (`commit log offset u64 | record size u32 | tag hash i64`, big-endian) in segment files
//! `consumequeue/<topic>/<queue>/<first logical offset, 20 digits>` of at most
//! [`SEGMENT_ENTRIES`] entries each, created when the first entry is written and never
//! preallocated. Entry *i* of a segment is logical offset `first + i`. Memory holds only each
//! queue's bounds and the entries dispatched since the last checkpoint; everything else is read
//! from the files (the page cache is the cache). Retention moves a queue's first live offset
//! and deletes segments that lie wholly below it.
//!
//! A store of the previous layout (one file per queue, `consumequeue/<topic>/<queue>`) is
//! converted on open by moving that file into the queue's directory as its first segment.

use crate::poison::OrAbort;
use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::Notify;

/// Bytes per consume-queue entry.
pub const CQ_ENTRY: u64 = 20;

/// Entries per segment file (5 MiB).
pub const SEGMENT_ENTRIES: i64 = 1 << 18;

/// Newest-segment descriptors the queues keep open at most; past that, reads and writes open
/// the file for the call, so tens of thousands of queues do not exhaust descriptors.
const MAX_CACHED_FILES: usize = 4096;

/// One consume-queue entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CqEntry {
    /// Offset of the record's frame in the commit log.
    pub phys: u64,
    /// Record size.
    pub size: u32,
    /// Hash of the tag (Java `String.hashCode`), 0 without a tag.
    pub tag_hash: i64,
}

impl CqEntry {
    fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.phys.to_be_bytes());
        out.extend_from_slice(&self.size.to_be_bytes());
        out.extend_from_slice(&self.tag_hash.to_be_bytes());
    }

    fn decode(b: &[u8]) -> CqEntry {
        CqEntry {
            phys: u64::from_be_bytes(b[..8].try_into().expect("8 bytes")),
            size: u32::from_be_bytes(b[8..12].try_into().expect("4 bytes")),
            tag_hash: i64::from_be_bytes(b[12..20].try_into().expect("8 bytes")),
        }
    }
}

fn segment_name(first: i64) -> String {
    format!("{first:020}")
}

#[derive(Debug)]
struct CqData {
    /// First live logical offset.
    first: i64,
    /// First logical offset of each segment file, oldest first (never empty once written).
    segments: Vec<i64>,
    /// Entries before this are in the files.
    in_file: i64,
    /// Entries from `in_file` on, dispatched but not yet written.
    tail: Vec<CqEntry>,
    /// The newest segment's file, kept open while the descriptor budget allows.
    newest: Option<Arc<File>>,
    /// Sum of record sizes from `first` on, kept once per-topic size retention asks for it.
    live_bytes: Option<u64>,
}

impl CqData {
    fn end(&self) -> i64 {
        self.in_file + self.tail.len() as i64
    }

    /// The segment holding file entry `offset`: its first offset and how many of the
    /// following entries are in it (and in the file).
    fn segment_of(&self, offset: i64) -> Option<(i64, i64)> {
        let i = self
            .segments
            .partition_point(|f| *f <= offset)
            .checked_sub(1)?;
        let seg = self.segments[i];
        let seg_end = self.segments.get(i + 1).copied().unwrap_or(self.in_file);
        Some((seg, seg_end.min(self.in_file) - offset))
    }
}

/// What the queues of a store share: their directory budget and the files made since the
/// last checkpoint (whose directories need an fsync).
#[derive(Debug, Default)]
struct QueuesShared {
    open_files: AtomicUsize,
    created_dirs: Mutex<HashSet<PathBuf>>,
    /// Files written since the last checkpoint.
    dirty: Mutex<HashSet<PathBuf>>,
}

/// The consume queue of one topic queue.
#[derive(Debug)]
pub struct ConsumeQueue {
    dir: PathBuf,
    data: RwLock<CqData>,
    /// Serializes writers of the files (checkpoint, retention, drop).
    file_lock: Mutex<()>,
    /// The next logical offset to hand out; ahead of the end while appended records wait
    /// for dispatch. Only the store's append path (under its lock) moves it.
    next: AtomicI64,
    shared: Arc<QueuesShared>,
    /// Long polls on this queue wait here; dispatch wakes them.
    arrived: Notify,
    /// The topic's signal, woken with this queue's (pops across a topic's queues wait on it).
    topic_arrived: Arc<Notify>,
}

impl ConsumeQueue {
    fn new(dir: PathBuf, shared: Arc<QueuesShared>, topic_arrived: Arc<Notify>) -> Self {
        ConsumeQueue {
            dir,
            data: RwLock::new(CqData {
                first: 0,
                segments: Vec::new(),
                in_file: 0,
                tail: Vec::new(),
                newest: None,
                live_bytes: None,
            }),
            file_lock: Mutex::new(()),
            next: AtomicI64::new(0),
            shared,
            arrived: Notify::new(),
            topic_arrived,
        }
    }

    fn open(
        dir: &Path,
        checkpoint: u64,
        shared: Arc<QueuesShared>,
        topic_arrived: Arc<Notify>,
    ) -> io::Result<ConsumeQueue> {
        let mut segments: Vec<i64> = Vec::new();
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            if let Some(first) = e.file_name().to_str().and_then(|n| n.parse::<i64>().ok()) {
                segments.push(first);
            }
        }
        segments.sort_unstable();
        // Entries at or after the checkpoint may be partial or point at a torn tail: the
        // dispatcher re-creates them from the commit log.
        let mut in_file = 0;
        while let Some(&seg) = segments.last() {
            let path = dir.join(segment_name(seg));
            let file = OpenOptions::new().read(true).write(true).open(&path)?;
            let mut n = (file.metadata()?.len() / CQ_ENTRY) as i64;
            // Entries are in commit-log order: drop the tail at or past the checkpoint,
            // reading back a chunk at a time.
            // Usually only the last entry is looked at (a clean stop checkpoints everything);
            // the chunks grow when more has to go.
            let mut chunk = 1;
            while n > 0 {
                let k = n.min(chunk);
                chunk = (chunk * 64).min(4096);
                let mut buf = vec![0u8; (k as u64 * CQ_ENTRY) as usize];
                file.read_exact_at(&mut buf, (n - k) as u64 * CQ_ENTRY)?;
                let keep = buf
                    .chunks_exact(CQ_ENTRY as usize)
                    .rposition(|b| CqEntry::decode(b).phys < checkpoint);
                match keep {
                    Some(i) => {
                        n = n - k + i as i64 + 1;
                        break;
                    }
                    None => n -= k,
                }
            }
            file.set_len(n as u64 * CQ_ENTRY)?;
            if n == 0 && segments.len() > 1 {
                drop(file);
                std::fs::remove_file(&path)?;
                segments.pop();
                continue;
            }
            in_file = seg + n;
            break;
        }
        let q = ConsumeQueue::new(dir.to_owned(), shared, topic_arrived);
        {
            let mut d = q.write();
            d.first = segments.first().copied().unwrap_or(0);
            d.segments = segments;
            d.in_file = in_file;
        }
        q.next.store(in_file, Ordering::Relaxed);
        Ok(q)
    }

    /// Hands out the next logical offset (the store's append path, under its lock).
    pub(crate) fn assign_offset(&self) -> i64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// Realigns the offsets handed out with the entries present (after recovery).
    pub(crate) fn reset_assigned(&self) {
        self.next.store(self.max_offset(), Ordering::Relaxed);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, CqData> {
        self.data.read().or_abort("a queue index")
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, CqData> {
        self.data.write().or_abort("a queue index")
    }

    /// First live logical offset.
    pub fn min_offset(&self) -> i64 {
        self.read().first
    }

    /// One past the last logical offset (the next one to be assigned once visible).
    pub fn max_offset(&self) -> i64 {
        self.read().end()
    }

    /// A handle on segment `seg` for reading: the cached newest one, or opened for the call.
    fn file_for_read(&self, d: &CqData, seg: i64) -> Option<Arc<File>> {
        if d.segments.last() == Some(&seg)
            && let Some(f) = &d.newest
        {
            return Some(f.clone());
        }
        File::open(self.dir.join(segment_name(seg)))
            .ok()
            .map(Arc::new)
    }

    /// Entries from logical `offset`, at most `max`. A segment that cannot be read (deleted
    /// by retention meanwhile, or an I/O error, which is logged) ends the list early.
    pub fn entries_from(&self, offset: i64, max: usize) -> Vec<(i64, CqEntry)> {
        let mut out = Vec::new();
        let mut at = offset;
        let mut left = max as i64;
        loop {
            let (file, count) = {
                let d = self.read();
                if at < d.first || left <= 0 || at >= d.end() {
                    return out;
                }
                if at >= d.in_file {
                    let from = (at - d.in_file) as usize;
                    let n = (left as usize).min(d.tail.len() - from);
                    out.reserve(n);
                    for (i, e) in d.tail[from..from + n].iter().enumerate() {
                        out.push((at + i as i64, *e));
                    }
                    return out;
                }
                let Some((seg, avail)) = d.segment_of(at) else {
                    return out;
                };
                (self.file_for_read(&d, seg), (avail.min(left), at - seg))
            };
            let (n, index) = count;
            let Some(file) = file else { return out };
            let mut buf = vec![0u8; (n as u64 * CQ_ENTRY) as usize];
            if let Err(e) = file.read_exact_at(&mut buf, index as u64 * CQ_ENTRY) {
                tracing::error!(error = %e, dir = %self.dir.display(), "consume queue read failed");
                return out;
            }
            out.reserve(n as usize);
            for (i, b) in buf.chunks_exact(CQ_ENTRY as usize).enumerate() {
                out.push((at + i as i64, CqEntry::decode(b)));
            }
            at += n;
            left -= n;
        }
    }

    /// The entry at logical `offset`.
    pub fn entry(&self, offset: i64) -> Option<CqEntry> {
        self.entries_from(offset, 1).first().map(|(_, e)| *e)
    }

    /// Appends the entry for logical `offset` (dispatch); ignores entries already present.
    pub fn push(&self, offset: i64, e: CqEntry) -> Result<(), String> {
        let mut d = self.write();
        let next = d.end();
        if offset < next {
            return Ok(());
        }
        if offset > next {
            return Err(format!(
                "consume queue gap: entry {offset} where {next} was expected"
            ));
        }
        d.tail.push(e);
        if let Some(b) = &mut d.live_bytes {
            *b += u64::from(e.size);
        }
        Ok(())
    }

    /// Wakes the long polls parked on this queue (after a dispatch round that added entries).
    pub(crate) fn wake_polls(&self) {
        self.arrived.notify_waiters();
        self.topic_arrived.notify_waiters();
    }

    /// A future resolved at the next [`ConsumeQueue::wake_polls`]; register it (e.g. with
    /// `Notified::enable`) before checking for entries, so no arrival is missed.
    pub fn arrival(&self) -> tokio::sync::futures::Notified<'_> {
        self.arrived.notified()
    }

    /// Whether entries wait to be written.
    pub fn is_dirty(&self) -> bool {
        !self.read().tail.is_empty()
    }

    /// Opens (creating) segment `seg` for writing.
    fn open_segment(&self, seg: i64) -> io::Result<File> {
        if !self.dir.exists() {
            std::fs::create_dir_all(&self.dir)?;
            let mut dirs = self.shared.created_dirs.lock().or_abort("a queue index");
            // The queue's directory, its topic's, and `consumequeue/` itself may be new.
            for d in self.dir.ancestors().take(3) {
                dirs.insert(d.to_owned());
            }
        }
        let path = self.dir.join(segment_name(seg));
        let existed = path.exists();
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        if !existed {
            self.shared
                .created_dirs
                .lock()
                .or_abort("a queue index")
                .insert(self.dir.clone());
        }
        Ok(f)
    }

    /// Writes the entries dispatched since the last call (page cache only; the checkpoint
    /// makes them durable). Returns whether anything was written.
    pub fn flush(&self) -> io::Result<bool> {
        let _w = self.file_lock.lock().or_abort("a queue index");
        let (start, bytes, segments, newest) = {
            let d = self.read();
            if d.tail.is_empty() {
                return Ok(false);
            }
            let mut bytes = Vec::with_capacity(d.tail.len() * CQ_ENTRY as usize);
            for e in &d.tail {
                e.encode_into(&mut bytes);
            }
            (d.in_file, bytes, d.segments.clone(), d.newest.clone())
        };
        let end = start + (bytes.len() as u64 / CQ_ENTRY) as i64;
        let mut segments = segments;
        let mut newest = newest;
        let mut at = start;
        while at < end {
            let seg = match segments.last() {
                Some(&s) if at - s < SEGMENT_ENTRIES => s,
                _ => {
                    segments.push(at);
                    newest = None;
                    at
                }
            };
            let upto = end.min(seg + SEGMENT_ENTRIES);
            let file = match &newest {
                Some(f) => f.clone(),
                None => {
                    let f = Arc::new(self.open_segment(seg)?);
                    newest = Some(f.clone());
                    f
                }
            };
            let from = ((at - start) as u64 * CQ_ENTRY) as usize;
            let to = ((upto - start) as u64 * CQ_ENTRY) as usize;
            file.write_all_at(&bytes[from..to], (at - seg) as u64 * CQ_ENTRY)?;
            self.shared
                .dirty
                .lock()
                .or_abort("a queue index")
                .insert(self.dir.join(segment_name(seg)));
            at = upto;
        }
        let mut d = self.write();
        let had = d.newest.is_some();
        d.segments = segments;
        d.newest = match newest {
            Some(f) if had => Some(f),
            Some(f) if self.shared.open_files.load(Ordering::Relaxed) < MAX_CACHED_FILES => {
                self.shared.open_files.fetch_add(1, Ordering::Relaxed);
                Some(f)
            }
            _ => {
                if had {
                    self.shared.open_files.fetch_sub(1, Ordering::Relaxed);
                }
                None
            }
        };
        // What arrived during the write moves to a buffer of its own size: a queue's memory
        // follows its current second, not its busiest one.
        let written = (end - start) as usize;
        d.tail = d.tail.split_off(written);
        d.in_file = end;
        Ok(true)
    }

    /// Moves the first live offset to `offset` (per-topic retention); segments wholly below
    /// it are deleted.
    pub fn trim_before(&self, offset: i64) -> io::Result<()> {
        let (old, new) = {
            let d = self.read();
            (d.first, offset.min(d.end()))
        };
        if new <= old {
            return Ok(());
        }
        let trimmed: u64 = if self.read().live_bytes.is_some() {
            self.entries_from(old, (new - old) as usize)
                .iter()
                .map(|(_, e)| u64::from(e.size))
                .sum()
        } else {
            0
        };
        {
            let mut d = self.write();
            if d.first != old {
                return Ok(());
            }
            d.first = new;
            if let Some(b) = &mut d.live_bytes {
                *b = b.saturating_sub(trimmed);
            }
        }
        self.delete_segments_below(new)
    }

    /// Moves the first live offset past entries whose records lie below commit-log offset
    /// `log_start` (their segments were deleted); returns the new first offset.
    pub fn trim_below_phys(&self, log_start: u64) -> io::Result<i64> {
        let (mut lo, mut hi) = {
            let d = self.read();
            (d.first, d.end())
        };
        // Nothing below the log's start: one read (every queue at every open).
        if self.entry(lo).is_none_or(|e| e.phys >= log_start) {
            return Ok(lo);
        }
        // Entries are in commit-log order: the first live one is found by bisection.
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.entry(mid) {
                Some(e) if e.phys < log_start => lo = mid + 1,
                _ => hi = mid,
            }
        }
        self.trim_before(lo)?;
        Ok(self.min_offset())
    }

    fn delete_segments_below(&self, first: i64) -> io::Result<()> {
        let _w = self.file_lock.lock().or_abort("a queue index");
        let doomed: Vec<i64> = {
            let d = self.read();
            d.segments
                .windows(2)
                .filter(|w| w[1] <= first)
                .map(|w| w[0])
                .collect()
        };
        if doomed.is_empty() {
            return Ok(());
        }
        for seg in &doomed {
            match std::fs::remove_file(self.dir.join(segment_name(*seg))) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        self.write().segments.retain(|s| !doomed.contains(s));
        self.shared
            .created_dirs
            .lock()
            .or_abort("a queue index")
            .insert(self.dir.clone());
        Ok(())
    }

    /// The record offset of the first live entry.
    pub fn first_phys(&self) -> Option<u64> {
        self.entry(self.min_offset()).map(|e| e.phys)
    }

    /// Segment files of this queue (for tests and operators).
    pub fn segment_count(&self) -> usize {
        self.read().segments.len()
    }

    /// Sum of record sizes of the live entries. The first call reads every live entry;
    /// later ones are kept up to date by dispatch and trimming.
    pub fn live_bytes(&self) -> u64 {
        if let Some(b) = self.read().live_bytes {
            return b;
        }
        let _w = self.file_lock.lock().or_abort("a queue index");
        let (first, end) = {
            let d = self.read();
            (d.first, d.end())
        };
        let mut total = 0u64;
        let mut at = first;
        while at < end {
            let chunk = self.entries_from(at, 65536);
            if chunk.is_empty() {
                break;
            }
            total += chunk.iter().map(|(_, e)| u64::from(e.size)).sum::<u64>();
            at += chunk.len() as i64;
        }
        let mut d = self.write();
        // Entries dispatched meanwhile.
        let extra: u64 = if d.end() > end && end >= d.in_file {
            d.tail[(end - d.in_file) as usize..]
                .iter()
                .map(|e| u64::from(e.size))
                .sum()
        } else {
            0
        };
        let b = if d.first == first { total + extra } else { 0 };
        d.live_bytes = Some(b);
        b
    }
}

impl Drop for ConsumeQueue {
    fn drop(&mut self) {
        if self.read().newest.is_some() {
            self.shared.open_files.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Queues of one topic by id, with the topic's own arrival signal (pops across all of a
/// topic's queues wait on it).
#[derive(Debug, Default)]
pub struct TopicQueues {
    queues: HashMap<i32, Arc<ConsumeQueue>>,
    arrived: Arc<Notify>,
}

/// All consume queues.
#[derive(Debug)]
pub struct Queues {
    dir: PathBuf,
    checkpoint: u64,
    map: RwLock<HashMap<String, TopicQueues>>,
    shared: Arc<QueuesShared>,
}

/// Moves a queue file of the previous layout (`<topic>/<queue>`) into the queue's directory
/// as its first segment. Crash-safe: the file is renamed aside first, and a leftover is
/// finished on the next open.
fn convert_v1(topic_dir: &Path, name: &str) -> io::Result<()> {
    let aside = topic_dir.join(format!("{name}.v1"));
    let target = topic_dir.join(name);
    if target.is_file() {
        std::fs::rename(&target, &aside)?;
        super::log::sync_dir(topic_dir)?;
    }
    if aside.exists() {
        std::fs::create_dir_all(&target)?;
        std::fs::rename(&aside, target.join(segment_name(0)))?;
        super::log::sync_dir(&target)?;
        super::log::sync_dir(topic_dir)?;
        tracing::info!(queue = %target.display(), "converted a consume queue to segment files");
    }
    Ok(())
}

impl Queues {
    /// Opens every consume queue under `dir`, dropping entries at or after `checkpoint`.
    pub fn open(dir: &Path, checkpoint: u64) -> io::Result<Queues> {
        std::fs::create_dir_all(dir)?;
        let shared = Arc::new(QueuesShared::default());
        let mut map: HashMap<String, TopicQueues> = HashMap::new();
        for topic in std::fs::read_dir(dir)? {
            let topic = topic?;
            if !topic.file_type()?.is_dir() {
                continue;
            }
            let name = topic.file_name().to_string_lossy().into_owned();
            let mut ids = Vec::new();
            for q in std::fs::read_dir(topic.path())? {
                let q = q?;
                let fname = q.file_name().to_string_lossy().into_owned();
                let (id, v1) = match fname.strip_suffix(".v1") {
                    Some(id) => (id.to_owned(), true),
                    None => (fname, false),
                };
                if id.parse::<i32>().is_err() {
                    continue;
                }
                if v1 || q.file_type()?.is_file() {
                    convert_v1(&topic.path(), &id)?;
                }
                ids.push(id);
            }
            ids.sort();
            ids.dedup();
            let t = map.entry(name.clone()).or_default();
            for id in ids {
                let qdir = topic.path().join(&id);
                let q = ConsumeQueue::open(&qdir, checkpoint, shared.clone(), t.arrived.clone())?;
                t.queues.insert(id.parse().expect("checked"), Arc::new(q));
            }
        }
        Ok(Queues {
            dir: dir.to_owned(),
            checkpoint,
            map: RwLock::new(map),
            shared,
        })
    }

    /// The queue, if it exists.
    pub fn get(&self, topic: &str, queue: i32) -> Option<Arc<ConsumeQueue>> {
        self.map
            .read()
            .or_abort("a queue index")
            .get(topic)
            .and_then(|t| t.queues.get(&queue))
            .cloned()
    }

    /// The queue, created if needed (in memory: its directory and first segment appear with
    /// its first written entry).
    pub fn get_or_create(&self, topic: &str, queue: i32) -> io::Result<Arc<ConsumeQueue>> {
        if let Some(q) = self.get(topic, queue) {
            return Ok(q);
        }
        let mut map = self.map.write().or_abort("a queue index");
        let t = map.entry(topic.to_owned()).or_default();
        if let Some(q) = t.queues.get(&queue) {
            return Ok(q.clone());
        }
        let qdir = self.dir.join(topic).join(queue.to_string());
        let q = if qdir.exists() {
            ConsumeQueue::open(
                &qdir,
                self.checkpoint,
                self.shared.clone(),
                t.arrived.clone(),
            )?
        } else {
            ConsumeQueue::new(qdir, self.shared.clone(), t.arrived.clone())
        };
        let q = Arc::new(q);
        t.queues.insert(queue, q.clone());
        Ok(q)
    }

    /// The arrival signal of `topic` (woken whenever any of its queues gets entries).
    pub fn topic_arrival(&self, topic: &str) -> Arc<Notify> {
        if let Some(t) = self.map.read().or_abort("a queue index").get(topic) {
            return t.arrived.clone();
        }
        self.map
            .write()
            .or_abort("a queue index")
            .entry(topic.to_owned())
            .or_default()
            .arrived
            .clone()
    }

    /// Every queue.
    pub fn all(&self) -> Vec<((String, i32), Arc<ConsumeQueue>)> {
        self.map
            .read()
            .or_abort("a queue index")
            .iter()
            .flat_map(|(t, qs)| {
                qs.queues
                    .iter()
                    .map(|(id, q)| ((t.clone(), *id), q.clone()))
            })
            .collect()
    }

    /// Queues of `topic`.
    pub fn of_topic(&self, topic: &str) -> Vec<(i32, Arc<ConsumeQueue>)> {
        self.map
            .read()
            .or_abort("a queue index")
            .get(topic)
            .map(|t| t.queues.iter().map(|(id, q)| (*id, q.clone())).collect())
            .unwrap_or_default()
    }

    /// Writes every queue's new entries; returns how many queues had some.
    pub fn flush(&self) -> io::Result<usize> {
        let mut n = 0;
        for (_, q) in self.all() {
            if q.flush()? {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Makes what [`Queues::flush`] wrote durable: the files written and the directories
    /// created since the last call. Past `syncfs_above` files, one `syncfs` of the whole file
    /// system replaces the per-file fsyncs.
    pub fn sync(&self, syncfs_above: usize) -> io::Result<()> {
        let dirty: Vec<PathBuf> =
            std::mem::take(&mut *self.shared.dirty.lock().or_abort("a queue index"))
                .into_iter()
                .collect();
        let dirs: Vec<PathBuf> =
            std::mem::take(&mut *self.shared.created_dirs.lock().or_abort("a queue index"))
                .into_iter()
                .collect();
        let result = if dirty.len() + dirs.len() > syncfs_above {
            crate::sys::syncfs(&self.dir)
        } else {
            dirty
                .iter()
                .try_for_each(|p| match File::open(p) {
                    Ok(f) => f.sync_data(),
                    // Deleted by retention since it was written.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(e),
                })
                .and_then(|()| {
                    dirs.iter().try_for_each(|d| match super::log::sync_dir(d) {
                        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                        r => r,
                    })
                })
        };
        if result.is_err() {
            // Not durable: try again at the next checkpoint.
            self.shared
                .dirty
                .lock()
                .or_abort("a queue index")
                .extend(dirty);
            self.shared
                .created_dirs
                .lock()
                .or_abort("a queue index")
                .extend(dirs);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp() -> PathBuf {
        crate::store::test_dir("cq")
    }

    fn e(phys: u64) -> CqEntry {
        CqEntry {
            phys,
            size: 10,
            tag_hash: phys as i64,
        }
    }

    #[test]
    fn entries_cross_segments_survive_reopen_and_old_segments_are_deleted() {
        let dir = tmp();
        let n = SEGMENT_ENTRIES * 2 + 100;
        {
            let qs = Queues::open(&dir, u64::MAX).unwrap();
            let q = qs.get_or_create("t", 3).unwrap();
            for i in 0..n {
                q.push(i, e(i as u64 * 100)).unwrap();
                if i % 100_000 == 0 {
                    q.flush().unwrap();
                }
            }
            // Unwritten and written entries read alike, across a segment boundary.
            let got = q.entries_from(SEGMENT_ENTRIES - 2, 4);
            assert_eq!(got.len(), 4);
            assert_eq!(
                got[3],
                (SEGMENT_ENTRIES + 1, e((SEGMENT_ENTRIES as u64 + 1) * 100))
            );
            qs.flush().unwrap();
            qs.sync(0).unwrap();
            assert_eq!(q.segment_count(), 3);
        }
        // Entries at or after the checkpoint are dropped on open.
        let cut = (n as u64 - 10) * 100;
        let qs = Queues::open(&dir, cut).unwrap();
        let q = qs.get("t", 3).unwrap();
        assert_eq!(q.max_offset(), n - 10);
        assert_eq!(q.entry(n - 11), Some(e(cut - 100)));
        assert_eq!(q.entry(n - 10), None);
        assert_eq!(q.live_bytes(), (n as u64 - 10) * 10);
        // Retention below a commit-log offset moves the first offset and deletes segments.
        let first = q
            .trim_below_phys(SEGMENT_ENTRIES as u64 * 100 + 50)
            .unwrap();
        assert_eq!(first, SEGMENT_ENTRIES + 1);
        assert_eq!(q.segment_count(), 2);
        assert_eq!(q.live_bytes(), (n as u64 - 10 - first as u64) * 10);
        assert_eq!(q.entry(SEGMENT_ENTRIES), None);
        assert_eq!(q.entry(first), Some(e(first as u64 * 100)));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_queue_file_of_the_previous_layout_becomes_the_first_segment() {
        let dir = tmp();
        std::fs::create_dir_all(dir.join("t")).unwrap();
        let mut raw = Vec::new();
        for i in 0..5u64 {
            e(i).encode_into(&mut raw);
        }
        std::fs::write(dir.join("t").join("0"), &raw).unwrap();
        let qs = Queues::open(&dir, u64::MAX).unwrap();
        let q = qs.get("t", 0).unwrap();
        assert_eq!((q.min_offset(), q.max_offset()), (0, 5));
        assert_eq!(q.entry(4), Some(e(4)));
        assert!(dir.join("t").join("0").join(segment_name(0)).is_file());
        q.push(5, e(5)).unwrap();
        q.flush().unwrap();
        drop(qs);
        let qs = Queues::open(&dir, u64::MAX).unwrap();
        assert_eq!(qs.get("t", 0).unwrap().entries_from(0, 10).len(), 6);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
