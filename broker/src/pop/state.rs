//! Pop state in memory: per consumer group and queue, the cursor (next offset never handed
//! out), the messages in flight with their delivery sequence and deadline, and (FIFO) the
//! timed-out offsets to hand out again first. Changed only by applying [`PopRecord`]s, both
//! live and when replaying the pop log, so the two cannot disagree.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use super::record::{PopRecord, QueueKey, ReviveOutcome};

/// A delivered, not yet acknowledged message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inflight {
    /// Delivery sequence (in the receipt handle).
    pub seq: u64,
    /// Pop instant (ms).
    pub pop_time: i64,
    /// Invisible time (ms).
    pub invisible: i64,
    /// Which delivery this is (1 = first).
    pub attempt: u32,
    /// Delivered under FIFO rules.
    pub fifo: bool,
}

impl Inflight {
    /// When it becomes visible again.
    pub fn deadline(&self) -> i64 {
        self.pop_time.saturating_add(self.invisible)
    }
}

/// One group's state on one queue.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueState {
    /// Offsets below this have been handed out at least once.
    pub cursor: i64,
    /// In flight, by offset.
    pub inflight: BTreeMap<i64, Inflight>,
    /// FIFO: timed-out offsets to hand out again before anything else, with the attempts so far.
    pub redeliver: BTreeMap<i64, u32>,
}

/// A deadline to watch: `(deadline, queue, offset, seq)`.
pub type Deadline = (i64, QueueKey, i64, u64);

/// The whole pop state.
#[derive(Debug, Default)]
pub struct PopState {
    /// Per group and queue.
    pub queues: HashMap<QueueKey, QueueState>,
    /// In-flight deadlines, earliest first.
    pub deadlines: BTreeSet<Deadline>,
    /// Pop-log offset of the next record to apply.
    pub log_offset: i64,
}

const SNAPSHOT_MAGIC: &[u8; 4] = b"RDPS";

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.b.len());
        let end = end.ok_or("pop snapshot is truncated")?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn i64(&mut self) -> Result<i64, String> {
        Ok(self.u64()? as i64)
    }

    fn string(&mut self) -> Result<String, String> {
        let n = u16::from_be_bytes(self.take(2)?.try_into().expect("2 bytes")) as usize;
        String::from_utf8(self.take(n)?.to_vec())
            .map_err(|_| "pop snapshot name is not UTF-8".into())
    }
}

/// What a snapshot file of the previous release (`snapshot.json`) holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Snapshot {
    /// Pop-log records below this are reflected.
    pub log_offset: i64,
    /// Per group and queue.
    pub queues: Vec<(QueueKey, QueueState)>,
}

impl PopState {
    /// State from a snapshot.
    pub fn from_snapshot(s: Snapshot) -> PopState {
        let mut st = PopState {
            log_offset: s.log_offset,
            ..Default::default()
        };
        for (k, q) in s.queues {
            for (off, f) in &q.inflight {
                st.deadlines.insert((f.deadline(), k.clone(), *off, f.seq));
            }
            st.queues.insert(k, q);
        }
        st
    }

    /// A snapshot of the current state.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            log_offset: self.log_offset,
            queues: self
                .queues
                .iter()
                .map(|(k, q)| (k.clone(), q.clone()))
                .collect(),
        }
    }

    /// The state in the binary snapshot format: `RDPS`, version 1, the log offset, then per
    /// group and queue its key, cursor, in-flight entries and FIFO redeliveries, and a CRC32C
    /// of everything before it. Written straight from the live state: no copy of it is made.
    pub fn encode_snapshot(&self) -> Vec<u8> {
        let inflight: usize = self.queues.values().map(|q| q.inflight.len()).sum();
        let mut b = Vec::with_capacity(24 + self.queues.len() * 64 + inflight * 41);
        b.extend_from_slice(SNAPSHOT_MAGIC);
        b.extend_from_slice(&1u32.to_be_bytes());
        b.extend_from_slice(&self.log_offset.to_be_bytes());
        b.extend_from_slice(&(self.queues.len() as u64).to_be_bytes());
        for (k, q) in &self.queues {
            for s in [&k.group, &k.topic] {
                b.extend_from_slice(&(s.len() as u16).to_be_bytes());
                b.extend_from_slice(s.as_bytes());
            }
            b.extend_from_slice(&k.queue.to_be_bytes());
            b.extend_from_slice(&q.cursor.to_be_bytes());
            b.extend_from_slice(&(q.inflight.len() as u64).to_be_bytes());
            for (off, f) in &q.inflight {
                b.extend_from_slice(&off.to_be_bytes());
                b.extend_from_slice(&f.seq.to_be_bytes());
                b.extend_from_slice(&f.pop_time.to_be_bytes());
                b.extend_from_slice(&f.invisible.to_be_bytes());
                b.extend_from_slice(&f.attempt.to_be_bytes());
                b.push(u8::from(f.fifo));
            }
            b.extend_from_slice(&(q.redeliver.len() as u64).to_be_bytes());
            for (off, attempts) in &q.redeliver {
                b.extend_from_slice(&off.to_be_bytes());
                b.extend_from_slice(&attempts.to_be_bytes());
            }
        }
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_be_bytes());
        b
    }

    /// A state from [`PopState::encode_snapshot`]'s bytes; `Err` says what is wrong.
    pub fn decode_snapshot(b: &[u8]) -> Result<PopState, String> {
        if b.len() < 28 || &b[..4] != SNAPSHOT_MAGIC {
            return Err("not a pop snapshot".into());
        }
        let (body, crc) = b.split_at(b.len() - 4);
        if crc32c::crc32c(body) != u32::from_be_bytes(crc.try_into().expect("4 bytes")) {
            return Err("pop snapshot checksum mismatch".into());
        }
        let mut r = Reader { b: body, at: 4 };
        let version = r.u32()?;
        if version != 1 {
            return Err(format!("pop snapshot version {version} is not known"));
        }
        let mut st = PopState {
            log_offset: r.i64()?,
            ..Default::default()
        };
        for _ in 0..r.u64()? {
            let group = r.string()?;
            let topic = r.string()?;
            let key = QueueKey {
                group,
                topic,
                queue: r.u32()? as i32,
            };
            let mut q = QueueState {
                cursor: r.i64()?,
                ..Default::default()
            };
            for _ in 0..r.u64()? {
                let off = r.i64()?;
                let f = Inflight {
                    seq: r.u64()?,
                    pop_time: r.i64()?,
                    invisible: r.i64()?,
                    attempt: r.u32()?,
                    fifo: r.take(1)?[0] != 0,
                };
                st.deadlines.insert((f.deadline(), key.clone(), off, f.seq));
                q.inflight.insert(off, f);
            }
            for _ in 0..r.u64()? {
                let off = r.i64()?;
                q.redeliver.insert(off, r.u32()?);
            }
            st.queues.insert(key, q);
        }
        if r.at != body.len() {
            return Err("pop snapshot has trailing bytes".into());
        }
        Ok(st)
    }

    /// The in-flight entry of `offset` if `seq` is its current delivery.
    pub fn current(&self, key: &QueueKey, offset: i64, seq: u64) -> Option<&Inflight> {
        self.queues
            .get(key)?
            .inflight
            .get(&offset)
            .filter(|f| f.seq == seq)
    }

    /// Applies one record (and counts it as applied).
    pub fn apply(&mut self, r: &PopRecord) {
        self.log_offset += 1;
        match r {
            PopRecord::Pop {
                key,
                cursor,
                pop_time,
                invisible,
                seq,
                fifo,
                items,
            } => {
                let q = self.queues.entry(key.clone()).or_default();
                q.cursor = q.cursor.max(*cursor);
                for (off, attempt) in items {
                    q.redeliver.remove(off);
                    let f = Inflight {
                        seq: *seq,
                        pop_time: *pop_time,
                        invisible: *invisible,
                        attempt: *attempt,
                        fifo: *fifo,
                    };
                    if let Some(old) = q.inflight.insert(*off, f) {
                        self.deadlines
                            .remove(&(old.deadline(), key.clone(), *off, old.seq));
                    }
                    self.deadlines
                        .insert((f.deadline(), key.clone(), *off, *seq));
                }
            }
            PopRecord::Ack { key, offset, seq } => {
                if let Some(f) = self.take(key, *offset, *seq) {
                    self.deadlines
                        .remove(&(f.deadline(), key.clone(), *offset, *seq));
                }
            }
            PopRecord::Change {
                key,
                offset,
                seq,
                new_seq,
                pop_time,
                invisible,
            } => {
                if let Some(q) = self.queues.get_mut(key)
                    && let Some(f) = q.inflight.get_mut(offset)
                    && f.seq == *seq
                {
                    self.deadlines
                        .remove(&(f.deadline(), key.clone(), *offset, *seq));
                    f.seq = *new_seq;
                    f.pop_time = *pop_time;
                    f.invisible = *invisible;
                    self.deadlines
                        .insert((f.deadline(), key.clone(), *offset, *new_seq));
                }
            }
            PopRecord::Revive {
                key,
                offset,
                seq,
                outcome,
            } => {
                if let Some(f) = self.take(key, *offset, *seq) {
                    self.deadlines
                        .remove(&(f.deadline(), key.clone(), *offset, *seq));
                    if *outcome == ReviveOutcome::Redeliver
                        && let Some(q) = self.queues.get_mut(key)
                    {
                        q.redeliver.insert(*offset, f.attempt);
                    }
                }
            }
            PopRecord::Reset { key, cursor } => {
                let q = self.queues.entry(key.clone()).or_default();
                q.cursor = *cursor;
                q.redeliver.clear();
                for (off, f) in std::mem::take(&mut q.inflight) {
                    self.deadlines
                        .remove(&(f.deadline(), key.clone(), off, f.seq));
                }
            }
        }
    }

    fn take(&mut self, key: &QueueKey, offset: i64, seq: u64) -> Option<Inflight> {
        let q = self.queues.get_mut(key)?;
        match q.inflight.get(&offset) {
            Some(f) if f.seq == seq => q.inflight.remove(&offset),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> QueueKey {
        QueueKey {
            group: "g".into(),
            topic: "t".into(),
            queue: 0,
        }
    }

    #[test]
    fn pop_ack_change_revive_and_snapshot() {
        let mut s = PopState::default();
        s.apply(&PopRecord::Pop {
            key: key(),
            cursor: 3,
            pop_time: 100,
            invisible: 50,
            seq: 1,
            fifo: true,
            items: vec![(0, 1), (1, 1), (2, 1)],
        });
        assert_eq!(s.deadlines.len(), 3);
        // A stale sequence changes nothing.
        s.apply(&PopRecord::Ack {
            key: key(),
            offset: 0,
            seq: 9,
        });
        assert!(s.current(&key(), 0, 1).is_some());
        s.apply(&PopRecord::Ack {
            key: key(),
            offset: 0,
            seq: 1,
        });
        s.apply(&PopRecord::Change {
            key: key(),
            offset: 1,
            seq: 1,
            new_seq: 2,
            pop_time: 120,
            invisible: 100,
        });
        assert!(s.current(&key(), 1, 1).is_none());
        assert_eq!(s.current(&key(), 1, 2).unwrap().deadline(), 220);
        s.apply(&PopRecord::Revive {
            key: key(),
            offset: 2,
            seq: 1,
            outcome: ReviveOutcome::Redeliver,
        });
        let q = &s.queues[&key()];
        assert_eq!(q.redeliver.get(&2), Some(&1));
        assert_eq!(q.inflight.len(), 1);
        assert_eq!(s.deadlines.len(), 1);
        assert_eq!(s.log_offset, 5);
        let again = PopState::from_snapshot(s.snapshot());
        assert_eq!(again.queues, s.queues);
        assert_eq!(again.deadlines, s.deadlines);
        assert_eq!(again.log_offset, 5);
        let bin = s.encode_snapshot();
        let again = PopState::decode_snapshot(&bin).unwrap();
        assert_eq!(again.queues, s.queues);
        assert_eq!(again.deadlines, s.deadlines);
        assert_eq!(again.log_offset, 5);
        // A flipped bit or a cut file is refused, never half-read.
        let mut bad = bin.clone();
        bad[30] ^= 1;
        assert!(PopState::decode_snapshot(&bad).is_err());
        assert!(PopState::decode_snapshot(&bin[..bin.len() - 9]).is_err());
        // A reset moves the cursor either way and forgets what was in flight or due.
        s.apply(&PopRecord::Reset {
            key: key(),
            cursor: 1,
        });
        let q = &s.queues[&key()];
        assert_eq!(q.cursor, 1);
        assert!(q.inflight.is_empty() && q.redeliver.is_empty());
        assert!(s.deadlines.is_empty());
        assert!(s.current(&key(), 1, 2).is_none());
    }
}
