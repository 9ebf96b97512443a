//! The pop log: every change of pop state is a small binary record, stored as a message of the
//! system topic `rmq_sys_POP_LOG` (so it gets the commit log's group commit, CRC and crash
//! recovery). Replaying the records after the last snapshot rebuilds the state.

use bytes::{Buf, BufMut};
use serde::{Deserialize, Serialize};

/// One consumer group's view of one queue.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct QueueKey {
    /// Consumer group.
    pub group: String,
    /// Topic the messages are stored in.
    pub topic: String,
    /// Queue.
    pub queue: i32,
}

/// What happened to a message whose invisible time passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReviveOutcome {
    /// A copy went to the group's retry topic.
    Retry,
    /// A copy went to the group's dead-letter topic.
    DeadLetter,
    /// FIFO: it will be delivered again in place, before anything after it.
    Redeliver,
}

/// A change of pop state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PopRecord {
    /// Messages handed out (possibly none, when only the cursor moved past filtered ones).
    Pop {
        /// Queue.
        key: QueueKey,
        /// The queue's cursor afterwards.
        cursor: i64,
        /// Pop instant (ms).
        pop_time: i64,
        /// Invisible time (ms).
        invisible: i64,
        /// Sequence number of this delivery.
        seq: u64,
        /// Delivered under FIFO rules.
        fifo: bool,
        /// `(offset, delivery attempt)` of each message.
        items: Vec<(i64, u32)>,
    },
    /// A message was acknowledged.
    Ack {
        /// Queue.
        key: QueueKey,
        /// Offset.
        offset: i64,
        /// The delivery acknowledged.
        seq: u64,
    },
    /// A message's invisible time was changed: a new delivery sequence replaces the old.
    Change {
        /// Queue.
        key: QueueKey,
        /// Offset.
        offset: i64,
        /// The delivery replaced.
        seq: u64,
        /// The new delivery.
        new_seq: u64,
        /// New pop instant (ms).
        pop_time: i64,
        /// New invisible time (ms).
        invisible: i64,
    },
    /// A message's invisible time passed without an ack.
    Revive {
        /// Queue.
        key: QueueKey,
        /// Offset.
        offset: i64,
        /// The delivery that timed out.
        seq: u64,
        /// What was done.
        outcome: ReviveOutcome,
    },
    /// An operator moved the group's cursor on the queue (a reset by time or offset): what
    /// was in flight or due for redelivery there is forgotten.
    Reset {
        /// Queue.
        key: QueueKey,
        /// The new cursor.
        cursor: i64,
    },
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.put_u16(s.len() as u16);
    out.put_slice(s.as_bytes());
}

fn get_str(b: &mut &[u8]) -> Option<String> {
    if b.remaining() < 2 {
        return None;
    }
    let n = b.get_u16() as usize;
    if b.remaining() < n {
        return None;
    }
    let s = std::str::from_utf8(&b[..n]).ok()?.to_owned();
    b.advance(n);
    Some(s)
}

fn put_key(out: &mut Vec<u8>, k: &QueueKey) {
    put_str(out, &k.group);
    put_str(out, &k.topic);
    out.put_i32(k.queue);
}

fn get_key(b: &mut &[u8]) -> Option<QueueKey> {
    let group = get_str(b)?;
    let topic = get_str(b)?;
    (b.remaining() >= 4).then(|| QueueKey {
        group,
        topic,
        queue: b.get_i32(),
    })
}

macro_rules! need {
    ($b:expr, $n:expr) => {
        if $b.remaining() < $n {
            return None;
        }
    };
}

impl PopRecord {
    /// The binary form.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        match self {
            PopRecord::Pop {
                key,
                cursor,
                pop_time,
                invisible,
                seq,
                fifo,
                items,
            } => {
                out.put_u8(b'P');
                put_key(&mut out, key);
                out.put_i64(*cursor);
                out.put_i64(*pop_time);
                out.put_i64(*invisible);
                out.put_u64(*seq);
                out.put_u8(*fifo as u8);
                out.put_u32(items.len() as u32);
                for (off, attempt) in items {
                    out.put_i64(*off);
                    out.put_u32(*attempt);
                }
            }
            PopRecord::Ack { key, offset, seq } => {
                out.put_u8(b'A');
                put_key(&mut out, key);
                out.put_i64(*offset);
                out.put_u64(*seq);
            }
            PopRecord::Change {
                key,
                offset,
                seq,
                new_seq,
                pop_time,
                invisible,
            } => {
                out.put_u8(b'C');
                put_key(&mut out, key);
                out.put_i64(*offset);
                out.put_u64(*seq);
                out.put_u64(*new_seq);
                out.put_i64(*pop_time);
                out.put_i64(*invisible);
            }
            PopRecord::Revive {
                key,
                offset,
                seq,
                outcome,
            } => {
                out.put_u8(b'R');
                put_key(&mut out, key);
                out.put_i64(*offset);
                out.put_u64(*seq);
                out.put_u8(match outcome {
                    ReviveOutcome::Retry => 0,
                    ReviveOutcome::DeadLetter => 1,
                    ReviveOutcome::Redeliver => 2,
                });
            }
            PopRecord::Reset { key, cursor } => {
                out.put_u8(b'S');
                put_key(&mut out, key);
                out.put_i64(*cursor);
            }
        }
        out
    }

    /// Parses the binary form (`None` if it is not a pop record).
    pub fn decode(mut b: &[u8]) -> Option<PopRecord> {
        let b = &mut b;
        need!(b, 1);
        let kind = b.get_u8();
        let key = get_key(b)?;
        let r = match kind {
            b'P' => {
                need!(b, 8 * 4 + 1 + 4);
                let cursor = b.get_i64();
                let pop_time = b.get_i64();
                let invisible = b.get_i64();
                let seq = b.get_u64();
                let fifo = b.get_u8() != 0;
                let n = b.get_u32() as usize;
                need!(b, n.checked_mul(12)?);
                let items = (0..n).map(|_| (b.get_i64(), b.get_u32())).collect();
                PopRecord::Pop {
                    key,
                    cursor,
                    pop_time,
                    invisible,
                    seq,
                    fifo,
                    items,
                }
            }
            b'A' => {
                need!(b, 16);
                PopRecord::Ack {
                    key,
                    offset: b.get_i64(),
                    seq: b.get_u64(),
                }
            }
            b'C' => {
                need!(b, 40);
                PopRecord::Change {
                    key,
                    offset: b.get_i64(),
                    seq: b.get_u64(),
                    new_seq: b.get_u64(),
                    pop_time: b.get_i64(),
                    invisible: b.get_i64(),
                }
            }
            b'S' => {
                need!(b, 8);
                PopRecord::Reset {
                    key,
                    cursor: b.get_i64(),
                }
            }
            b'R' => {
                need!(b, 17);
                let offset = b.get_i64();
                let seq = b.get_u64();
                let outcome = match b.get_u8() {
                    0 => ReviveOutcome::Retry,
                    1 => ReviveOutcome::DeadLetter,
                    2 => ReviveOutcome::Redeliver,
                    _ => return None,
                };
                PopRecord::Revive {
                    key,
                    offset,
                    seq,
                    outcome,
                }
            }
            _ => return None,
        };
        b.is_empty().then_some(r)
    }

    /// The queue it is about.
    pub fn key(&self) -> &QueueKey {
        match self {
            PopRecord::Pop { key, .. }
            | PopRecord::Ack { key, .. }
            | PopRecord::Change { key, .. }
            | PopRecord::Revive { key, .. }
            | PopRecord::Reset { key, .. } => key,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_and_truncations_are_refused() {
        let key = QueueKey {
            group: "g".into(),
            topic: "%RETRY%g+t".into(),
            queue: 2,
        };
        let records = [
            PopRecord::Pop {
                key: key.clone(),
                cursor: 9,
                pop_time: 1,
                invisible: 30_000,
                seq: 77,
                fifo: true,
                items: vec![(7, 1), (8, 3)],
            },
            PopRecord::Ack {
                key: key.clone(),
                offset: 7,
                seq: 77,
            },
            PopRecord::Change {
                key: key.clone(),
                offset: 8,
                seq: 77,
                new_seq: 78,
                pop_time: 5,
                invisible: 10,
            },
            PopRecord::Revive {
                key: key.clone(),
                offset: 8,
                seq: 78,
                outcome: ReviveOutcome::Redeliver,
            },
            PopRecord::Reset { key, cursor: 4 },
        ];
        for r in records {
            let b = r.encode();
            assert_eq!(PopRecord::decode(&b), Some(r));
            for cut in 0..b.len() {
                assert_eq!(PopRecord::decode(&b[..cut]), None);
            }
        }
    }
}
