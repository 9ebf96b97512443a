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

/// What a snapshot file holds.
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
    }
}
