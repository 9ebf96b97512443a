//! The commit log: segment files named by the physical offset of their first byte
//! (`commitlog/00000000000000000000`, …), holding frames
//! `u32 BE record length | u32 BE CRC32C(record) | record`, where the record is the
//! RocketMQ stored-message layout. A frame never spans segments; a zero length ends a segment's
//! data. Physical offsets are global and only grow.

use crate::poison::OrAbort;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use bytes::Bytes;

/// Bytes of the frame header before each record.
pub const FRAME_HEADER: u64 = 8;

/// A frame read back from the log.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Physical offset of the frame.
    pub offset: u64,
    /// The record (without the frame header).
    pub record: Bytes,
}

/// Result of scanning the log from some offset.
#[derive(Debug)]
pub struct ScanEnd {
    /// Offset just after the last valid frame.
    pub end: u64,
    /// True if a torn or corrupt tail was cut off.
    pub truncated: bool,
}

/// The segment files.
#[derive(Debug)]
pub struct Segments {
    dir: PathBuf,
    files: RwLock<BTreeMap<u64, Arc<File>>>,
    /// Bytes reserved for each new segment up front (0 = none): appends then write into
    /// allocated blocks, so a concurrent fsync does not stall them on block allocation.
    prealloc: u64,
    /// Free bytes a preallocation must leave on the file system; below that the segment is
    /// not reserved and grows with its appends instead (the store's own free-space check
    /// refuses appends at the same bound).
    keep_free: u64,
}

fn segment_name(base: u64) -> String {
    format!("{base:020}")
}

impl Segments {
    /// Opens (creating) `dir` and every segment in it; new segments get `prealloc` bytes
    /// reserved while that leaves `keep_free` bytes free on the file system.
    pub fn open(dir: &Path, prealloc: u64, keep_free: u64) -> io::Result<Segments> {
        std::fs::create_dir_all(dir)?;
        let mut files = BTreeMap::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(base) = name.to_str().and_then(|n| n.parse::<u64>().ok()) else {
                continue;
            };
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(entry.path())?;
            files.insert(base, Arc::new(f));
        }
        Ok(Segments {
            dir: dir.to_owned(),
            files: RwLock::new(files),
            prealloc,
            keep_free,
        })
    }

    /// Why the log can no longer be trusted to keep what is written to it: its directory is
    /// gone, or the newest segment was unlinked (written bytes would vanish at close).
    pub fn vanished(&self) -> Option<String> {
        use std::os::unix::fs::MetadataExt;
        if let Err(e) = std::fs::metadata(&self.dir) {
            return Some(format!("commit log directory {}: {e}", self.dir.display()));
        }
        let (base, file) = {
            let files = self.files();
            let (b, f) = files.iter().next_back()?;
            (*b, f.clone())
        };
        match file.metadata() {
            Ok(m) if m.nlink() == 0 => Some(format!(
                "commit log segment {} was deleted",
                self.dir.join(segment_name(base)).display()
            )),
            Ok(_) => None,
            Err(e) => Some(format!("commit log segment {base}: {e}")),
        }
    }

    fn files(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<u64, Arc<File>>> {
        self.files.read().or_abort("the commit log segments")
    }

    /// Base offsets of all segments, oldest first.
    pub fn bases(&self) -> Vec<u64> {
        self.files().keys().copied().collect()
    }

    /// The segment holding `offset` (its base and file).
    pub fn segment_of(&self, offset: u64) -> Option<(u64, Arc<File>)> {
        self.files()
            .range(..=offset)
            .next_back()
            .map(|(b, f)| (*b, f.clone()))
    }

    /// Creates the segment starting at `base` (idempotent).
    pub fn create(&self, base: u64) -> io::Result<Arc<File>> {
        let mut files = self.files.write().or_abort("the commit log segments");
        if let Some(f) = files.get(&base) {
            return Ok(f.clone());
        }
        let f = Arc::new(
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(self.dir.join(segment_name(base)))?,
        );
        files.insert(base, f.clone());
        drop(files);
        self.reserve(&f)?;
        sync_dir(&self.dir)?;
        Ok(f)
    }

    /// Reserves the segment at `base` up to the preallocation size (after recovery cut it).
    pub fn preallocate(&self, base: u64) -> io::Result<()> {
        match self.files().get(&base).cloned() {
            Some(f) => self.reserve(&f),
            None => Ok(()),
        }
    }

    /// Preallocation is an optimisation: where the disk lacks room for it, the segment is
    /// left to grow with its appends rather than failing the store.
    fn reserve(&self, f: &File) -> io::Result<()> {
        let len = f.metadata()?.len();
        if self.prealloc <= len {
            return Ok(());
        }
        let need = self.prealloc - len;
        if let Some(free) = crate::sys::free_bytes(&self.dir)
            && free < need.saturating_add(self.keep_free)
        {
            tracing::warn!(
                dir = %self.dir.display(),
                free, need, "not preallocating the commit log segment: too little free space"
            );
            return Ok(());
        }
        match crate::sys::preallocate(f, self.prealloc) {
            Err(e) if e.kind() == io::ErrorKind::Unsupported => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::StorageFull => {
                // Give back whatever the failed call reserved beyond the old end.
                f.set_len(len)?;
                tracing::warn!(
                    dir = %self.dir.display(),
                    "not preallocating the commit log segment: the disk is full"
                );
                Ok(())
            }
            other => other,
        }
    }

    /// Deletes the segment starting at `base`.
    pub fn delete(&self, base: u64) -> io::Result<()> {
        self.files
            .write()
            .or_abort("the commit log segments")
            .remove(&base);
        std::fs::remove_file(self.dir.join(segment_name(base)))?;
        sync_dir(&self.dir)
    }

    /// Total bytes in all segments.
    pub fn total_bytes(&self) -> u64 {
        self.files()
            .values()
            .map(|f| f.metadata().map(|m| m.len()).unwrap_or(0))
            .sum()
    }

    /// Last-modified time of the segment at `base`.
    pub fn modified(&self, base: u64) -> Option<std::time::SystemTime> {
        self.files().get(&base)?.metadata().ok()?.modified().ok()
    }

    /// Writes `data` at physical offset `offset`, which must lie in the segment at `base`.
    pub fn write_at(&self, base: u64, offset: u64, data: &[u8]) -> io::Result<()> {
        let f = self.create(base)?;
        f.write_all_at(data, offset - base)
    }

    /// fdatasync of the segment at `base`.
    pub fn sync(&self, base: u64) -> io::Result<()> {
        match self.files().get(&base) {
            Some(f) => f.sync_data(),
            None => Ok(()),
        }
    }

    /// Reads the frame at `offset`, checking its CRC (an offset inside a frame fails).
    pub fn read_frame(&self, offset: u64) -> io::Result<Frame> {
        let (base, f) = self.segment_of(offset).ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, "offset below the oldest segment")
        })?;
        let mut head = [0u8; FRAME_HEADER as usize];
        f.read_exact_at(&mut head, offset - base)?;
        let len = u32::from_be_bytes(head[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_be_bytes(head[4..].try_into().expect("4 bytes"));
        if len == 0 || len as u64 > f.metadata()?.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "no frame at this offset",
            ));
        }
        let mut record = vec![0u8; len];
        f.read_exact_at(&mut record, offset - base + FRAME_HEADER)?;
        if crc32c::crc32c(&record) != crc {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "no frame at this offset",
            ));
        }
        Ok(Frame {
            offset,
            record: Bytes::from(record),
        })
    }

    /// Reads `size` record bytes of the frame at `offset` (size known from a consume queue).
    pub fn read_record(&self, offset: u64, size: u32) -> io::Result<Bytes> {
        let (base, f) = self.segment_of(offset).ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, "offset below the oldest segment")
        })?;
        let mut record = vec![0u8; size as usize];
        f.read_exact_at(&mut record, offset - base + FRAME_HEADER)?;
        Ok(Bytes::from(record))
    }

    /// Scans frames from `from`, verifying CRCs, calling `each` for every valid frame. Stops at
    /// the end of the data; a torn or corrupt frame and everything after it is cut off (the
    /// segment truncated, later segments deleted).
    pub fn scan(&self, from: u64, mut each: impl FnMut(Frame)) -> io::Result<ScanEnd> {
        let bases = self.bases();
        let mut pos = from;
        let Some(first) = bases
            .iter()
            .rposition(|b| *b <= from)
            .or(if bases.is_empty() { None } else { Some(0) })
        else {
            return Ok(ScanEnd {
                end: from,
                truncated: false,
            });
        };
        if pos < bases[first] {
            pos = bases[first];
        }
        for (i, base) in bases.iter().enumerate().skip(first) {
            if pos < *base {
                pos = *base;
            }
            let f = self.files().get(base).cloned().expect("listed segment");
            let file_len = f.metadata()?.len();
            let last = i + 1 == bases.len();
            loop {
                let rel = pos - base;
                let avail = file_len.saturating_sub(rel).min(FRAME_HEADER) as usize;
                let mut head = [0u8; FRAME_HEADER as usize];
                f.read_exact_at(&mut head[..avail], rel)?;
                if head[..avail].iter().all(|b| *b == 0) {
                    // The end of this segment's data: the file ends, or zero fill follows
                    // (preallocation, or the slack a roll leaves, which may be shorter than a
                    // header). Frames are written header first in one write, so zeros here
                    // are a clean end, not a tear.
                    if last && avail > 0 {
                        return self.cut(&bases, i, pos, false);
                    }
                    break;
                }
                if avail < FRAME_HEADER as usize {
                    // Part of a header: a torn write.
                    return self.cut(&bases, i, pos, true);
                }
                let len = u32::from_be_bytes(head[..4].try_into().expect("4 bytes")) as u64;
                let crc = u32::from_be_bytes(head[4..].try_into().expect("4 bytes"));
                if rel + FRAME_HEADER + len > file_len {
                    return self.cut(&bases, i, pos, true);
                }
                let mut record = vec![0u8; len as usize];
                f.read_exact_at(&mut record, rel + FRAME_HEADER)?;
                if crc32c::crc32c(&record) != crc {
                    tracing::warn!(
                        offset = pos,
                        "commit log frame fails its CRC; cutting the log here"
                    );
                    return self.cut(&bases, i, pos, true);
                }
                each(Frame {
                    offset: pos,
                    record: Bytes::from(record),
                });
                pos += FRAME_HEADER + len;
            }
        }
        Ok(ScanEnd {
            end: pos,
            truncated: false,
        })
    }

    fn cut(&self, bases: &[u64], i: usize, at: u64, torn: bool) -> io::Result<ScanEnd> {
        let base = bases[i];
        if let Some(f) = self.files().get(&base).cloned() {
            f.set_len(at - base)?;
            f.sync_all()?;
        }
        for later in &bases[i + 1..] {
            self.delete(*later)?;
        }
        if torn {
            tracing::warn!(
                offset = at,
                "commit log truncated at a torn or corrupt tail"
            );
        }
        Ok(ScanEnd {
            end: at,
            truncated: torn,
        })
    }
}

/// Makes a directory's entries (created, renamed, removed files) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Encodes the frame header of `record`.
pub fn frame_header(record: &[u8]) -> [u8; FRAME_HEADER as usize] {
    let mut h = [0u8; FRAME_HEADER as usize];
    h[..4].copy_from_slice(&(record.len() as u32).to_be_bytes());
    h[4..].copy_from_slice(&crc32c::crc32c(record).to_be_bytes());
    h
}
