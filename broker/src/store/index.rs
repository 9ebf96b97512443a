//! The key index: message keys (`KEYS`) and client message ids (`UNIQ_KEY`) → commit-log
//! offsets, on disk in hash-slot files like RocketMQ's IndexFile.
//!
//! `index/<first commit-log offset, 20 digits>` files, each
//! `header | SLOTS × u32 slot | up to MAX_ENTRIES × 20-byte entry`; an entry is
//! `key hash u64 | commit log offset u64 | previous entry of the slot u32` (entry numbers are
//! 1-based, 0 ends a chain). Entries are appended in commit-log order. Only the newest file's
//! slot table lives in memory (a fixed [`SLOTS`] × 4 bytes); its slots are written when the file
//! is full and sealed, and rebuilt from its entries on open, so a crash can never leave a slot
//! pointing at an entry that was not written. Lookups walk the chains of every file, newest
//! first, and return candidate offsets: hashes may collide, callers check the record.
//! Retention deletes files whose every entry lies below the commit log's start.
//!
//! A store of the previous layout (`index/keys`, `hash | offset` pairs) is converted on open.

use crate::poison::OrAbort;
use std::fs::{File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Hash slots per file.
pub const SLOTS: u32 = 1 << 20;
/// Entries per file.
pub const MAX_ENTRIES: u32 = 1 << 22;

const ENTRY: u64 = 20;
const HEADER: u64 = 32;
const MAGIC: u32 = 0x5244_4958; // "RDIX"
const VERSION: u32 = 1;

fn entries_at(slots: u32) -> u64 {
    HEADER + u64::from(slots) * 4
}

/// A fixed hasher for index keys (stable across restarts).
pub(crate) fn key_hash(key: &str) -> u64 {
    let mut h =
        std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
            .build_hasher();
    h.write(key.as_bytes());
    h.finish()
}

fn encode_entry(out: &mut Vec<u8>, hash: u64, phys: u64, prev: u32) {
    out.extend_from_slice(&hash.to_be_bytes());
    out.extend_from_slice(&phys.to_be_bytes());
    out.extend_from_slice(&prev.to_be_bytes());
}

fn decode_entry(b: &[u8]) -> (u64, u64, u32) {
    (
        u64::from_be_bytes(b[..8].try_into().expect("8 bytes")),
        u64::from_be_bytes(b[8..16].try_into().expect("8 bytes")),
        u32::from_be_bytes(b[16..20].try_into().expect("4 bytes")),
    )
}

fn file_name(first_phys: u64) -> String {
    format!("{first_phys:020}")
}

/// A sealed file: slots and entries on disk.
#[derive(Debug)]
struct Sealed {
    first_phys: u64,
    file: Arc<File>,
    slots: u32,
}

/// The file being filled: its slot table in memory, entries not yet written buffered.
#[derive(Debug)]
struct Active {
    first_phys: u64,
    file: Arc<File>,
    /// Shared only once the file is full (its flush writes them while lookups read them).
    slots: Arc<Vec<u32>>,
    /// Entries in the file or in `pending`.
    count: u32,
    /// Entries written to the file.
    written: u32,
    pending: Vec<u8>,
}

impl Active {
    fn create(dir: &Path, first_phys: u64, slots: u32) -> io::Result<Active> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.join(file_name(first_phys)))?;
        file.write_all_at(&header(slots, 0, false), 0)?;
        Ok(Active::empty(file, first_phys, slots))
    }

    /// An empty table over `file`.
    fn empty(file: File, first_phys: u64, slots: u32) -> Active {
        Active {
            first_phys,
            file: Arc::new(file),
            slots: Arc::new(vec![0; slots as usize]),
            count: 0,
            written: 0,
            pending: Vec::new(),
        }
    }

    fn insert(&mut self, hash: u64, phys: u64) {
        let slot = (hash % self.slots.len() as u64) as usize;
        encode_entry(&mut self.pending, hash, phys, self.slots[slot]);
        self.count += 1;
        // Unique while the file takes entries: no copy.
        Arc::make_mut(&mut self.slots)[slot] = self.count;
    }

    fn entry(&self, n: u32) -> Option<(u64, u64, u32)> {
        let i = n.checked_sub(1)?;
        if i >= self.written {
            let at = ((i - self.written) as u64 * ENTRY) as usize;
            return self.pending.get(at..at + ENTRY as usize).map(decode_entry);
        }
        None
    }
}

fn header(slots: u32, count: u32, sealed: bool) -> [u8; HEADER as usize] {
    let mut h = [0u8; HEADER as usize];
    h[..4].copy_from_slice(&MAGIC.to_be_bytes());
    h[4..8].copy_from_slice(&VERSION.to_be_bytes());
    h[8..12].copy_from_slice(&slots.to_be_bytes());
    h[12..16].copy_from_slice(&count.to_be_bytes());
    h[16] = u8::from(sealed);
    h
}

fn read_entry(file: &File, slots: u32, n: u32) -> io::Result<(u64, u64, u32)> {
    let mut b = [0u8; ENTRY as usize];
    file.read_exact_at(&mut b, entries_at(slots) + u64::from(n - 1) * ENTRY)?;
    Ok(decode_entry(&b))
}

#[derive(Debug)]
struct IndexState {
    sealed: Vec<Sealed>,
    /// Full files whose slots are not on disk yet (sealed at the next flush).
    sealing: Vec<Active>,
    active: Option<Active>,
}

/// Message ids and keys → commit log offsets.
#[derive(Debug)]
pub struct KeyIndex {
    dir: PathBuf,
    state: Mutex<IndexState>,
    /// Serializes flushes.
    flush_lock: Mutex<()>,
    /// Slots and entries of new files.
    slots: u32,
    max_entries: u32,
}

impl KeyIndex {
    /// Opens `dir`, dropping entries at or after `checkpoint` (recovery re-adds them), and
    /// converts an index of the previous layout.
    pub fn open(dir: &Path, checkpoint: u64) -> io::Result<KeyIndex> {
        Self::open_sized(dir, checkpoint, SLOTS, MAX_ENTRIES)
    }

    /// [`KeyIndex::open`] with new files of `slots` slots and `max_entries` entries.
    pub fn open_sized(
        dir: &Path,
        checkpoint: u64,
        slots: u32,
        max_entries: u32,
    ) -> io::Result<KeyIndex> {
        std::fs::create_dir_all(dir)?;
        let old = dir.join("keys");
        let mut names: Vec<u64> = Vec::new();
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            if let Some(first) = e.file_name().to_str().and_then(|n| n.parse::<u64>().ok()) {
                names.push(first);
            }
        }
        names.sort_unstable();
        if old.exists() {
            // A conversion may have been cut short: start it over.
            for n in names.drain(..) {
                std::fs::remove_file(dir.join(file_name(n)))?;
            }
        }
        let mut st = IndexState {
            sealed: Vec::new(),
            sealing: Vec::new(),
            active: None,
        };
        let last = names.len().saturating_sub(1);
        for (i, first) in names.iter().enumerate() {
            let path = dir.join(file_name(*first));
            let file = OpenOptions::new().read(true).write(true).open(&path)?;
            let mut h = [0u8; HEADER as usize];
            file.read_exact_at(&mut h, 0)?;
            let magic = u32::from_be_bytes(h[..4].try_into().expect("4 bytes"));
            let slots = u32::from_be_bytes(h[8..12].try_into().expect("4 bytes"));
            if magic != MAGIC || slots == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} is not an index file", path.display()),
                ));
            }
            if h[16] == 1 {
                st.sealed.push(Sealed {
                    first_phys: *first,
                    file: Arc::new(file),
                    slots,
                });
                continue;
            }
            let active = rebuild(file, *first, slots, checkpoint)?;
            if i < last || active.count >= max_entries {
                st.sealed.push(seal(active)?);
            } else if active.count == 0 && *first >= checkpoint {
                drop(active);
                std::fs::remove_file(&path)?;
            } else {
                st.active = Some(active);
            }
        }
        let index = KeyIndex {
            dir: dir.to_owned(),
            state: Mutex::new(st),
            flush_lock: Mutex::new(()),
            slots,
            max_entries,
        };
        if old.exists() {
            index.convert_v1(&old, checkpoint)?;
        }
        Ok(index)
    }

    /// Reads `index/keys` of the previous layout into this index, makes it durable, then
    /// removes the old file.
    fn convert_v1(&self, old: &Path, checkpoint: u64) -> io::Result<()> {
        let f = File::open(old)?;
        let len = f.metadata()?.len() / 16 * 16;
        let mut at = 0;
        let mut buf = vec![0u8; 1 << 20];
        let mut batch = Vec::new();
        let mut converted = 0u64;
        while at < len {
            let n = ((len - at) as usize).min(buf.len());
            f.read_exact_at(&mut buf[..n], at)?;
            batch.clear();
            for e in buf[..n].chunks_exact(16) {
                let h = u64::from_be_bytes(e[..8].try_into().expect("8 bytes"));
                let off = u64::from_be_bytes(e[8..].try_into().expect("8 bytes"));
                if off < checkpoint {
                    batch.push((h, off));
                }
            }
            converted += batch.len() as u64;
            self.add_hashed(&batch)?;
            self.flush()?;
            at += n as u64;
        }
        self.sync()?;
        std::fs::remove_file(old)?;
        super::log::sync_dir(&self.dir)?;
        tracing::info!(
            entries = converted,
            "converted the key index to hash-slot files"
        );
        Ok(())
    }

    /// Indexes `key` → `phys`.
    pub fn add(&self, key: &str, phys: u64) -> io::Result<()> {
        self.add_hashed(&[(key_hash(key), phys)])
    }

    /// Indexes `(key hash, phys)` pairs (in commit-log order). Memory only, except when a file
    /// fills and the next one is created.
    pub fn add_hashed(&self, entries: &[(u64, u64)]) -> io::Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut st = self.state.lock().or_abort("the key index");
        for &(h, phys) in entries {
            let full = st
                .active
                .as_ref()
                .is_some_and(|a| a.count >= self.max_entries);
            if full {
                let a = st.active.take().expect("checked");
                st.sealing.push(a);
            }
            if st.active.is_none() {
                st.active = Some(Active::create(&self.dir, phys, self.slots)?);
            }
            st.active.as_mut().expect("created").insert(h, phys);
        }
        Ok(())
    }

    /// Candidate offsets for `key`, newest first (check the record: hashes may collide).
    pub fn lookup(&self, key: &str) -> Vec<u64> {
        let h = key_hash(key);
        let mut out = Vec::new();
        // Chains continue into the files; walked after the lock is released.
        let mut on_disk: Vec<(Arc<File>, u32, u32)> = Vec::new();
        let sealed: Vec<(Arc<File>, u32)>;
        {
            let st = self.state.lock().or_abort("the key index");
            for a in st.active.iter().chain(st.sealing.iter().rev()) {
                let slot = (h % a.slots.len() as u64) as usize;
                let mut n = a.slots[slot];
                while n > 0 {
                    match a.entry(n) {
                        Some((eh, phys, prev)) => {
                            if eh == h {
                                out.push(phys);
                            }
                            n = prev;
                        }
                        None => {
                            on_disk.push((a.file.clone(), a.slots.len() as u32, n));
                            break;
                        }
                    }
                }
            }
            sealed = st
                .sealed
                .iter()
                .rev()
                .map(|s| (s.file.clone(), s.slots))
                .collect();
        }
        let walk = |file: &File, slots: u32, mut n: u32, out: &mut Vec<u64>| {
            let mut hops = 0u32;
            while n > 0 && hops < u32::MAX {
                match read_entry(file, slots, n) {
                    Ok((eh, phys, prev)) => {
                        if eh == h {
                            out.push(phys);
                        }
                        n = prev;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "key index read failed");
                        return;
                    }
                }
                hops += 1;
            }
        };
        for (file, slots, n) in on_disk {
            walk(&file, slots, n, &mut out);
        }
        for (file, slots) in sealed {
            let slot = h % u64::from(slots);
            let mut b = [0u8; 4];
            if let Err(e) = file.read_exact_at(&mut b, HEADER + slot * 4) {
                tracing::error!(error = %e, "key index read failed");
                continue;
            }
            walk(&file, slots, u32::from_be_bytes(b), &mut out);
        }
        out.dedup();
        out
    }

    /// Writes buffered entries, and the slot tables of files that filled up (page cache only;
    /// [`KeyIndex::sync`] makes them durable).
    pub fn flush(&self) -> io::Result<()> {
        let _f = self.flush_lock.lock().or_abort("the key index");
        // Full files first: their remaining entries, then their slots; then they are sealed.
        loop {
            let (file, slots, count, written, pending, table) = {
                let mut st = self.state.lock().or_abort("the key index");
                let Some(a) = st.sealing.first_mut() else {
                    break;
                };
                (
                    a.file.clone(),
                    a.slots.len() as u32,
                    a.count,
                    a.written,
                    a.pending.clone(),
                    a.slots.clone(),
                )
            };
            file.write_all_at(&pending, entries_at(slots) + u64::from(written) * ENTRY)?;
            write_slots(&file, &table)?;
            file.sync_data()?;
            file.write_all_at(&header(slots, count, true), 0)?;
            let mut st = self.state.lock().or_abort("the key index");
            let a = st.sealing.remove(0);
            st.sealed.push(Sealed {
                first_phys: a.first_phys,
                file: a.file,
                slots,
            });
        }
        let (first, file, slots, from, pending) = {
            let st = self.state.lock().or_abort("the key index");
            let Some(a) = st.active.as_ref() else {
                return Ok(());
            };
            if a.pending.is_empty() {
                return Ok(());
            }
            (
                a.first_phys,
                a.file.clone(),
                a.slots.len() as u32,
                a.written,
                a.pending.clone(),
            )
        };
        // Entries stay readable from `pending` until the write is done.
        file.write_all_at(&pending, entries_at(slots) + u64::from(from) * ENTRY)?;
        let mut st = self.state.lock().or_abort("the key index");
        let IndexState {
            active, sealing, ..
        } = &mut *st;
        // The file may have filled up meanwhile: it is then among those to seal.
        let a = active
            .iter_mut()
            .chain(sealing.iter_mut())
            .find(|a| a.first_phys == first)
            .expect("only flush retires index files");
        a.pending.drain(..pending.len());
        if a.pending.capacity() > (1 << 20) && a.pending.len() < a.pending.capacity() / 4 {
            a.pending.shrink_to(a.pending.len().max(1 << 16));
        }
        a.written = from + (pending.len() as u64 / ENTRY) as u32;
        Ok(())
    }

    /// fsync of the newest file (sealed files were synced when sealed) and the directory.
    pub fn sync(&self) -> io::Result<()> {
        let file = self
            .state
            .lock()
            .or_abort("the key index")
            .active
            .as_ref()
            .map(|a| a.file.clone());
        if let Some(f) = file {
            f.sync_data()?;
        }
        super::log::sync_dir(&self.dir)
    }

    /// Deletes files whose entries all lie below `log_start` (their segments were deleted).
    pub fn forget_below(&self, log_start: u64) -> io::Result<()> {
        let doomed: Vec<u64> = {
            let mut st = self.state.lock().or_abort("the key index");
            let mut firsts: Vec<u64> = st.sealed.iter().map(|s| s.first_phys).collect();
            firsts.extend(st.sealing.iter().map(|a| a.first_phys));
            firsts.extend(st.active.iter().map(|a| a.first_phys));
            // A file ends where the next one starts.
            let doomed: Vec<u64> = firsts
                .windows(2)
                .filter(|w| w[1] <= log_start)
                .map(|w| w[0])
                .filter(|f| st.sealed.iter().any(|s| s.first_phys == *f))
                .collect();
            st.sealed.retain(|s| !doomed.contains(&s.first_phys));
            doomed
        };
        for f in &doomed {
            match std::fs::remove_file(self.dir.join(file_name(*f))) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    /// Index files on disk (for tests and operators).
    pub fn file_count(&self) -> usize {
        let st = self.state.lock().or_abort("the key index");
        st.sealed.len() + st.sealing.len() + usize::from(st.active.is_some())
    }
}

/// The unsealed file's slot table rebuilt from its entries; entries at or past the checkpoint,
/// torn, or out of order are cut off.
fn rebuild(file: File, first_phys: u64, slots: u32, checkpoint: u64) -> io::Result<Active> {
    let len = file.metadata()?.len().saturating_sub(entries_at(slots)) / ENTRY;
    let len = len.min(u64::from(u32::MAX)) as u32;
    let mut a = Active::empty(file, first_phys, slots);
    let mut buf = vec![0u8; (1 << 16) * ENTRY as usize];
    let mut last = 0u64;
    let mut at = 0u32;
    'read: while at < len {
        let n = (len - at).min(1 << 16);
        let chunk = &mut buf[..(n as u64 * ENTRY) as usize];
        a.file
            .read_exact_at(chunk, entries_at(slots) + u64::from(at) * ENTRY)?;
        for e in chunk.chunks_exact(ENTRY as usize) {
            let (h, phys, _) = decode_entry(e);
            if phys >= checkpoint || phys < last || phys < first_phys {
                break 'read;
            }
            last = phys;
            a.insert(h, phys);
        }
        at += n;
    }
    a.pending.clear();
    a.written = a.count;
    a.file
        .set_len(entries_at(slots) + u64::from(a.count) * ENTRY)?;
    Ok(a)
}

/// Writes a slot table, 64 KiB at a time.
fn write_slots(file: &File, slots: &[u32]) -> io::Result<()> {
    let mut raw = Vec::with_capacity(64 << 10);
    for (i, chunk) in slots.chunks(16 << 10).enumerate() {
        raw.clear();
        for s in chunk {
            raw.extend_from_slice(&s.to_be_bytes());
        }
        file.write_all_at(&raw, HEADER + (i as u64) * (64 << 10))?;
    }
    Ok(())
}

/// Writes a rebuilt file's slots and seals it (on open, for files that are no longer newest).
fn seal(a: Active) -> io::Result<Sealed> {
    write_slots(&a.file, &a.slots)?;
    a.file.sync_data()?;
    a.file
        .write_all_at(&header(a.slots.len() as u32, a.count, true), 0)?;
    a.file.sync_data()?;
    Ok(Sealed {
        first_phys: a.first_phys,
        slots: a.slots.len() as u32,
        file: a.file,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp() -> PathBuf {
        crate::store::test_dir("index")
    }

    #[test]
    fn lookups_find_every_offset_across_flushes_reopens_and_the_old_layout() {
        let dir = tmp();
        // The previous layout: hash | offset pairs.
        let mut raw = Vec::new();
        for i in 0..100u64 {
            raw.extend_from_slice(&key_hash(&format!("old{i}")).to_be_bytes());
            raw.extend_from_slice(&(i * 10).to_be_bytes());
        }
        std::fs::write(dir.join("keys"), &raw).unwrap();
        {
            let idx = KeyIndex::open(&dir, 500).unwrap();
            assert!(!dir.join("keys").exists());
            assert_eq!(idx.lookup("old7"), vec![70]);
            // Offsets at or past the checkpoint were not carried over.
            assert!(idx.lookup("old60").is_empty());
            for i in 0..1000u64 {
                idx.add(&format!("k{}", i % 300), 1000 + i).unwrap();
                if i == 500 {
                    idx.flush().unwrap();
                }
            }
            let mut got = idx.lookup("k5");
            got.sort();
            assert_eq!(got, vec![1005, 1305, 1605, 1905]);
            idx.flush().unwrap();
            idx.sync().unwrap();
        }
        // Entries at or past the checkpoint are dropped on reopen.
        let idx = KeyIndex::open(&dir, 1605).unwrap();
        let mut got = idx.lookup("k5");
        got.sort();
        assert_eq!(got, vec![1005, 1305]);
        assert_eq!(idx.lookup("old7"), vec![70]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_that_fills_while_its_entries_are_written_is_sealed_whole() {
        let dir = tmp();
        let idx = std::sync::Arc::new(KeyIndex::open_sized(&dir, u64::MAX, 16, 50).unwrap());
        let writer = {
            let idx = idx.clone();
            std::thread::spawn(move || {
                for i in 0..20_000u64 {
                    idx.add(&format!("key{}", i % 40), i).unwrap();
                }
            })
        };
        while !writer.is_finished() {
            idx.flush().unwrap();
        }
        writer.join().unwrap();
        idx.flush().unwrap();
        idx.flush().unwrap();
        let expect: Vec<u64> = (0..20_000).filter(|i| i % 40 == 7).rev().collect();
        assert_eq!(idx.lookup("key7"), expect);
        drop(idx);
        let idx = KeyIndex::open_sized(&dir, u64::MAX, 16, 50).unwrap();
        assert_eq!(idx.lookup("key7"), expect);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn full_files_are_sealed_found_after_reopen_and_deleted_by_retention() {
        let dir = tmp();
        let key = |i: u64| format!("key{}", i % 40);
        {
            let idx = KeyIndex::open_sized(&dir, u64::MAX, 16, 50).unwrap();
            for i in 0..230u64 {
                idx.add(&key(i), i).unwrap();
                if i % 37 == 0 {
                    idx.flush().unwrap();
                }
            }
            // Found while files are full but not yet sealed, and once they are.
            let expect: Vec<u64> = (0..230).filter(|i| i % 40 == 3).rev().collect();
            assert_eq!(idx.lookup("key3"), expect);
            idx.flush().unwrap();
            idx.sync().unwrap();
            assert_eq!(idx.lookup("key3"), expect);
            assert_eq!(idx.file_count(), 5);
        }
        let idx = KeyIndex::open_sized(&dir, u64::MAX, 16, 50).unwrap();
        let expect: Vec<u64> = (0..230).filter(|i| i % 40 == 3).rev().collect();
        assert_eq!(idx.lookup("key3"), expect);
        // Files wholly below offset 120 go: [0,50) and [50,100).
        idx.forget_below(120).unwrap();
        assert_eq!(idx.file_count(), 3);
        assert_eq!(idx.lookup("key3")[..], expect[..expect.len() - 3]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
