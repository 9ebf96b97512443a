//! Consume queues and the key index, both built from the commit log by the dispatcher.
//!
//! A consume queue (`consumequeue/<topic>/<queue>`) holds fixed 20-byte entries
//! (`commit log offset u64 | record size u32 | tag hash i64`); entry *i* is logical offset *i*.
//! Retention moves a queue's first live offset forward in memory; files are never rewritten.
//! The key index (`index/keys`) holds `hash u64 | commit log offset u64` pairs for message ids
//! and keys; lookups re-check the record, so hash collisions are harmless.

use crate::poison::OrAbort;
use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// Bytes per consume-queue entry.
pub const CQ_ENTRY: u64 = 20;

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
    fn encode(&self) -> [u8; CQ_ENTRY as usize] {
        let mut b = [0u8; CQ_ENTRY as usize];
        b[..8].copy_from_slice(&self.phys.to_be_bytes());
        b[8..12].copy_from_slice(&self.size.to_be_bytes());
        b[12..].copy_from_slice(&self.tag_hash.to_be_bytes());
        b
    }

    fn decode(b: &[u8]) -> CqEntry {
        CqEntry {
            phys: u64::from_be_bytes(b[..8].try_into().expect("8 bytes")),
            size: u32::from_be_bytes(b[8..12].try_into().expect("4 bytes")),
            tag_hash: i64::from_be_bytes(b[12..20].try_into().expect("8 bytes")),
        }
    }
}

#[derive(Debug)]
struct CqData {
    /// Logical offset of `entries[0]`.
    first: i64,
    entries: VecDeque<CqEntry>,
    /// Entries written to the file.
    in_file: u64,
}

/// The consume queue of one topic queue.
#[derive(Debug)]
pub struct ConsumeQueue {
    data: RwLock<CqData>,
    file: File,
    /// The next logical offset to hand out; ahead of `max_offset` while appended records
    /// wait for dispatch. Only the store's append path (under its lock) moves it.
    next: AtomicI64,
}

impl ConsumeQueue {
    fn open(path: &Path, checkpoint: u64) -> io::Result<ConsumeQueue> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let len = file.metadata()?.len() / CQ_ENTRY;
        let mut raw = vec![0u8; (len * CQ_ENTRY) as usize];
        file.read_exact_at(&mut raw, 0)?;
        let mut entries: VecDeque<CqEntry> = raw
            .chunks_exact(CQ_ENTRY as usize)
            .map(CqEntry::decode)
            .collect();
        // Entries at or after the checkpoint may be partial or point at a torn tail: the
        // dispatcher re-creates them from the commit log.
        while entries.back().is_some_and(|e| e.phys >= checkpoint) {
            entries.pop_back();
        }
        file.set_len(entries.len() as u64 * CQ_ENTRY)?;
        Ok(ConsumeQueue {
            next: AtomicI64::new(entries.len() as i64),
            data: RwLock::new(CqData {
                first: 0,
                in_file: entries.len() as u64,
                entries,
            }),
            file,
        })
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
        let d = self.read();
        d.first + d.entries.len() as i64
    }

    /// Entries from logical `offset`, at most `max`.
    pub fn entries_from(&self, offset: i64, max: usize) -> Vec<(i64, CqEntry)> {
        let d = self.read();
        if offset < d.first {
            return Vec::new();
        }
        let start = (offset - d.first) as usize;
        d.entries
            .iter()
            .skip(start)
            .take(max)
            .enumerate()
            .map(|(i, e)| (offset + i as i64, *e))
            .collect()
    }

    /// The entry at logical `offset`.
    pub fn entry(&self, offset: i64) -> Option<CqEntry> {
        let d = self.read();
        if offset < d.first {
            return None;
        }
        d.entries.get((offset - d.first) as usize).copied()
    }

    /// Appends the entry for logical `offset` (dispatch); ignores entries already present.
    pub fn push(&self, offset: i64, e: CqEntry) -> Result<(), String> {
        let mut d = self.write();
        let next = d.first + d.entries.len() as i64;
        if offset < next {
            return Ok(());
        }
        if offset > next {
            return Err(format!(
                "consume queue gap: entry {offset} where {next} was expected"
            ));
        }
        d.entries.push_back(e);
        Ok(())
    }

    /// Writes entries not yet in the file.
    pub fn flush(&self) -> io::Result<()> {
        let (from, bytes) = {
            let d = self.read();
            let total = d.first as u64 + d.entries.len() as u64;
            if d.in_file >= total {
                return Ok(());
            }
            let skip = (d.in_file - d.first as u64) as usize;
            let mut bytes = Vec::with_capacity((total - d.in_file) as usize * CQ_ENTRY as usize);
            for e in d.entries.iter().skip(skip) {
                bytes.extend_from_slice(&e.encode());
            }
            (d.in_file, bytes)
        };
        self.file.write_all_at(&bytes, from * CQ_ENTRY)?;
        let mut d = self.write();
        d.in_file = d.in_file.max(from + bytes.len() as u64 / CQ_ENTRY);
        Ok(())
    }

    /// fsync.
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Drops entries before logical `offset` (retention). Only entries already in the file
    /// are dropped, so file positions stay aligned with logical offsets.
    pub fn trim_before(&self, offset: i64) {
        let mut d = self.write();
        let limit = offset.min(d.in_file as i64);
        while d.first < limit && !d.entries.is_empty() {
            d.entries.pop_front();
            d.first += 1;
        }
    }

    /// Drops entries whose records lie below commit-log offset `log_start`.
    pub fn trim_below_phys(&self, log_start: u64) -> i64 {
        let mut d = self.write();
        while d.first < d.in_file as i64 && d.entries.front().is_some_and(|e| e.phys < log_start) {
            d.entries.pop_front();
            d.first += 1;
        }
        d.first
    }

    /// The record offset of the first live entry.
    pub fn first_phys(&self) -> Option<u64> {
        self.read().entries.front().map(|e| e.phys)
    }
}

/// Queues of one topic by id.
type TopicQueues = HashMap<i32, Arc<ConsumeQueue>>;

/// All consume queues.
#[derive(Debug)]
pub struct Queues {
    dir: PathBuf,
    checkpoint: u64,
    map: RwLock<HashMap<String, TopicQueues>>,
}

impl Queues {
    /// Opens every consume queue under `dir`, dropping entries at or after `checkpoint`.
    pub fn open(dir: &Path, checkpoint: u64) -> io::Result<Queues> {
        std::fs::create_dir_all(dir)?;
        let mut map: HashMap<String, TopicQueues> = HashMap::new();
        for topic in std::fs::read_dir(dir)? {
            let topic = topic?;
            if !topic.file_type()?.is_dir() {
                continue;
            }
            let name = topic.file_name().to_string_lossy().into_owned();
            for q in std::fs::read_dir(topic.path())? {
                let q = q?;
                let Some(id) = q.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                    continue;
                };
                map.entry(name.clone())
                    .or_default()
                    .insert(id, Arc::new(ConsumeQueue::open(&q.path(), checkpoint)?));
            }
        }
        Ok(Queues {
            dir: dir.to_owned(),
            checkpoint,
            map: RwLock::new(map),
        })
    }

    /// The queue, if it exists.
    pub fn get(&self, topic: &str, queue: i32) -> Option<Arc<ConsumeQueue>> {
        self.map
            .read()
            .or_abort("a queue index")
            .get(topic)
            .and_then(|t| t.get(&queue))
            .cloned()
    }

    /// The queue, created if needed.
    pub fn get_or_create(&self, topic: &str, queue: i32) -> io::Result<Arc<ConsumeQueue>> {
        if let Some(q) = self.get(topic, queue) {
            return Ok(q);
        }
        let mut map = self.map.write().or_abort("a queue index");
        if let Some(q) = map.get(topic).and_then(|t| t.get(&queue)) {
            return Ok(q.clone());
        }
        let tdir = self.dir.join(topic);
        std::fs::create_dir_all(&tdir)?;
        let q = Arc::new(ConsumeQueue::open(
            &tdir.join(queue.to_string()),
            self.checkpoint,
        )?);
        map.entry(topic.to_owned())
            .or_default()
            .insert(queue, q.clone());
        Ok(q)
    }

    /// Every queue.
    pub fn all(&self) -> Vec<((String, i32), Arc<ConsumeQueue>)> {
        self.map
            .read()
            .or_abort("a queue index")
            .iter()
            .flat_map(|(t, qs)| qs.iter().map(|(id, q)| ((t.clone(), *id), q.clone())))
            .collect()
    }
}

/// A fixed hasher for index keys (stable across restarts).
pub(crate) fn key_hash(key: &str) -> u64 {
    let mut h =
        std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
            .build_hasher();
    h.write(key.as_bytes());
    h.finish()
}

/// Passes index-key hashes (already well mixed) through unchanged.
#[derive(Debug, Default, Clone, Copy)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

type HashedMap<V> = HashMap<u64, V, std::hash::BuildHasherDefault<PassThrough>>;

/// Key hash → commit log offsets. Most keys occur once, so the first offset lives inline and
/// only repeats get a list.
#[derive(Debug, Default)]
struct IndexState {
    first: HashedMap<u64>,
    more: HashedMap<Vec<u64>>,
    /// Encoded entries not yet written to the file.
    pending: Vec<u8>,
}

impl IndexState {
    fn insert(&mut self, h: u64, phys: u64) {
        match self.first.entry(h) {
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(phys);
            }
            std::collections::hash_map::Entry::Occupied(_) => {
                self.more.entry(h).or_default().push(phys);
            }
        }
    }
}

/// Message ids and keys → commit log offsets.
#[derive(Debug)]
pub struct KeyIndex {
    map: Mutex<IndexState>,
    file: File,
    in_file: Mutex<u64>,
}

impl KeyIndex {
    /// Opens `dir/keys`, dropping entries at or after `checkpoint`.
    pub fn open(dir: &Path, checkpoint: u64) -> io::Result<KeyIndex> {
        std::fs::create_dir_all(dir)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join("keys"))?;
        let len = file.metadata()?.len() / 16;
        let mut raw = vec![0u8; (len * 16) as usize];
        file.read_exact_at(&mut raw, 0)?;
        let mut map = IndexState::default();
        let mut kept = 0u64;
        for e in raw.chunks_exact(16) {
            let h = u64::from_be_bytes(e[..8].try_into().expect("8 bytes"));
            let off = u64::from_be_bytes(e[8..].try_into().expect("8 bytes"));
            if off >= checkpoint {
                break;
            }
            map.insert(h, off);
            kept += 1;
        }
        file.set_len(kept * 16)?;
        Ok(KeyIndex {
            map: Mutex::new(map),
            file,
            in_file: Mutex::new(kept),
        })
    }

    /// Indexes `key` → `phys`.
    pub fn add(&self, key: &str, phys: u64) {
        self.add_hashed(&[(key_hash(key), phys)]);
    }

    /// Indexes `(key hash, phys)` pairs.
    pub fn add_hashed(&self, entries: &[(u64, u64)]) {
        let mut g = self.map.lock().or_abort("a queue index");
        g.pending.reserve(entries.len() * 16);
        for &(h, phys) in entries {
            g.insert(h, phys);
            g.pending.extend_from_slice(&h.to_be_bytes());
            g.pending.extend_from_slice(&phys.to_be_bytes());
        }
    }

    /// Candidate offsets for `key` (check the record: hashes may collide).
    pub fn lookup(&self, key: &str) -> Vec<u64> {
        let h = key_hash(key);
        let g = self.map.lock().or_abort("a queue index");
        let mut out: Vec<u64> = g.first.get(&h).copied().into_iter().collect();
        if let Some(more) = g.more.get(&h) {
            out.extend_from_slice(more);
        }
        out
    }

    /// Writes pending entries.
    pub fn flush(&self) -> io::Result<()> {
        let pending = {
            let mut g = self.map.lock().or_abort("a queue index");
            std::mem::take(&mut g.pending)
        };
        if pending.is_empty() {
            return Ok(());
        }
        let mut at = self.in_file.lock().or_abort("a queue index");
        self.file.write_all_at(&pending, *at * 16)?;
        *at += pending.len() as u64 / 16;
        Ok(())
    }

    /// fsync.
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Forgets offsets below `log_start` (their segments were deleted).
    pub fn forget_below(&self, log_start: u64) {
        let mut g = self.map.lock().or_abort("a queue index");
        g.first.retain(|_, o| *o >= log_start);
        g.more.retain(|_, offs| {
            offs.retain(|o| *o >= log_start);
            !offs.is_empty()
        });
    }
}
