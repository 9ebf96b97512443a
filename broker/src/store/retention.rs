//! Retention: whole sealed segments are deleted, oldest first, once they are older than the
//! broker's maximum age (file modification time, as RocketMQ does) or the log exceeds its
//! maximum size; consume queues and the index then forget what pointed into them. Topics may
//! keep less: their own age and size limits move their queues' first offsets forward.

use crate::poison::OrAbort;
use std::time::{Duration, SystemTime};

use super::{Shared, Store, StoreError, now_ms, store_timestamp};

/// Broker-wide retention.
#[derive(Debug, Clone)]
pub struct RetentionConfig {
    /// Delete sealed segments older than this.
    pub max_age: Option<Duration>,
    /// Delete sealed segments, oldest first, while the log is larger than this.
    pub max_bytes: Option<u64>,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            max_age: Some(Duration::from_secs(72 * 3600)),
            max_bytes: None,
        }
    }
}

pub(super) fn enforce(store: &Store) -> Result<usize, StoreError> {
    enforce_shared(store.shared())
}

pub(super) fn enforce_shared(sh: &Shared) -> Result<usize, StoreError> {
    let cfg = &sh.cfg.retention;
    let bases = sh.segments.bases();
    let mut deleted = 0;
    // The newest segment is the one being written: never deleted.
    for base in bases.iter().take(bases.len().saturating_sub(1)) {
        let too_old = cfg.max_age.is_some_and(|age| {
            sh.segments
                .modified(*base)
                .is_some_and(|m| SystemTime::now().duration_since(m).unwrap_or_default() > age)
        });
        let too_big = cfg
            .max_bytes
            .is_some_and(|max| sh.segments.total_bytes() > max);
        if !(too_old || too_big) {
            break;
        }
        sh.segments.delete(*base)?;
        tracing::info!(
            segment = base,
            too_old,
            too_big,
            "retention deleted a commit log segment"
        );
        deleted += 1;
    }
    let log_start = sh.log_start_of();
    if deleted > 0 {
        for (_, q) in sh.queues.all() {
            q.trim_below_phys(log_start)?;
        }
        sh.index.forget_below(log_start)?;
    }
    // Per-topic limits: reads proportional to what is trimmed, not to what is kept.
    let topics: Vec<_> = sh
        .topics
        .read()
        .or_abort("retention state")
        .values()
        .filter(|t| t.retention_ms.is_some() || t.retention_bytes.is_some())
        .cloned()
        .collect();
    for t in topics {
        for (_, q) in sh.queues.of_topic(&t.name) {
            if let Some(ms) = t.retention_ms {
                let cutoff = now_ms() - ms as i64;
                let mut cut = q.min_offset();
                'age: loop {
                    let chunk = q.entries_from(cut, 256);
                    if chunk.is_empty() {
                        break;
                    }
                    for (off, e) in &chunk {
                        let Ok(rec) = sh.segments.read_record(e.phys, e.size) else {
                            break 'age;
                        };
                        if store_timestamp(&rec).is_none_or(|ts| ts >= cutoff) {
                            break 'age;
                        }
                        cut = off + 1;
                    }
                }
                q.trim_before(cut)?;
            }
            if let Some(max) = t.retention_bytes {
                let mut total = q.live_bytes();
                let mut cut = q.min_offset();
                'size: while total > max {
                    let chunk = q.entries_from(cut, 4096);
                    if chunk.is_empty() {
                        break;
                    }
                    for (off, e) in &chunk {
                        if total <= max {
                            break 'size;
                        }
                        total -= u64::from(e.size);
                        cut = off + 1;
                    }
                }
                q.trim_before(cut)?;
            }
        }
    }
    Ok(deleted)
}
