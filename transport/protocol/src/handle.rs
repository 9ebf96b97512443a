//! Receipt handles: what a consumer gets with a popped message and gives back to ack it or
//! change its invisible time.
//!
//! Text, space-separated (topic names cannot hold spaces), topic last:
//! `1 <pop ms> <invisible ms> <seq, 16 hex> <queue> <offset> <broker> <topic>`. The sequence
//! number is random per delivery, so a handle cannot be forged from what is visible in a
//! message, and a superseded handle (after a change or a redelivery) no longer matches.

use std::fmt;

/// A parsed receipt handle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptHandle {
    /// When the message was popped (ms).
    pub pop_time: i64,
    /// Invisible time granted (ms).
    pub invisible: i64,
    /// Delivery sequence number.
    pub seq: u64,
    /// Queue the message is stored in.
    pub queue: i32,
    /// Its offset in that queue.
    pub offset: i64,
    /// Broker that issued the handle.
    pub broker: String,
    /// Topic the message is stored in (a retry topic for redeliveries).
    pub topic: String,
}

/// Why a handle could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("receipt handle is malformed: {0}")]
pub struct MalformedHandle(pub &'static str);

impl ReceiptHandle {
    /// When the message becomes visible again.
    pub fn deadline(&self) -> i64 {
        self.pop_time.saturating_add(self.invisible)
    }

    /// Parses the text form.
    pub fn parse(s: &str) -> Result<ReceiptHandle, MalformedHandle> {
        let mut it = s.trim().splitn(8, ' ');
        let mut next = |what: &'static str| {
            it.next()
                .filter(|p| !p.is_empty())
                .ok_or(MalformedHandle(what))
        };
        if next("version")? != "1" {
            return Err(MalformedHandle("unknown version"));
        }
        let num = |v: &str, what: &'static str| v.parse::<i64>().map_err(|_| MalformedHandle(what));
        let pop_time = num(next("pop time")?, "pop time")?;
        let invisible = num(next("invisible time")?, "invisible time")?;
        let seq =
            u64::from_str_radix(next("sequence")?, 16).map_err(|_| MalformedHandle("sequence"))?;
        let queue = next("queue")?
            .parse::<i32>()
            .map_err(|_| MalformedHandle("queue"))?;
        let offset = num(next("offset")?, "offset")?;
        let broker = next("broker")?.to_owned();
        let topic = next("topic")?.to_owned();
        if queue < 0 || offset < 0 || invisible < 0 {
            return Err(MalformedHandle("negative field"));
        }
        Ok(ReceiptHandle {
            pop_time,
            invisible,
            seq,
            queue,
            offset,
            broker,
            topic,
        })
    }
}

impl fmt::Display for ReceiptHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "1 {} {} {:016x} {} {} {} {}",
            self.pop_time,
            self.invisible,
            self.seq,
            self.queue,
            self.offset,
            self.broker,
            self.topic
        )
    }
}

/// POP_MESSAGE field with which rdmq's proxy asks for rdmq receipt handles in each record's
/// `POP_CK`; without it a broker answers as RocketMQ's do (handles built from the header).
pub const OWN_HANDLES_FIELD: &str = "rdmqHandles";

/// RocketMQ's own receipt handle, the `extraInfo` its clients and proxies build from a POP
/// answer's header and send back on ack: `ckQueueOffset popTime invisibleTime reviveQid
/// retryFlag brokerName queueId queueOffset`, space-separated (later fields, such as the
/// proxy's commit-log offset, are ignored). The retry flag says which topic the message was
/// popped from: 0 the topic itself, 1 or 2 the group's retry topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtraInfo {
    /// Start offset of the pop on that queue (the checkpoint's).
    pub ck_offset: i64,
    /// Pop instant (ms).
    pub pop_time: i64,
    /// Invisible time (ms).
    pub invisible: i64,
    /// Revive queue.
    pub revive_qid: i32,
    /// 0 normal topic, 1 retry topic (v1), 2 retry topic (v2).
    pub retry: u8,
    /// Broker that popped it.
    pub broker: String,
    /// Queue.
    pub queue: i32,
    /// Offset in the queue.
    pub offset: i64,
}

impl ExtraInfo {
    /// Parses the text form.
    pub fn parse(s: &str) -> Result<ExtraInfo, MalformedHandle> {
        let f: Vec<&str> = s.split(' ').collect();
        if f.len() < 8 {
            return Err(MalformedHandle("extraInfo has fewer than 8 fields"));
        }
        let num =
            |i: usize, what: &'static str| f[i].parse::<i64>().map_err(|_| MalformedHandle(what));
        let retry = match f[4] {
            "0" => 0,
            "1" => 1,
            "2" => 2,
            _ => return Err(MalformedHandle("retry flag")),
        };
        if f[5].is_empty() {
            return Err(MalformedHandle("broker name"));
        }
        let e = ExtraInfo {
            ck_offset: num(0, "checkpoint offset")?,
            pop_time: num(1, "pop time")?,
            invisible: num(2, "invisible time")?,
            revive_qid: f[3].parse().map_err(|_| MalformedHandle("revive queue"))?,
            retry,
            broker: f[5].to_owned(),
            queue: f[6].parse().map_err(|_| MalformedHandle("queue"))?,
            offset: num(7, "queue offset")?,
        };
        if e.queue < 0 || e.offset < 0 || e.invisible < 0 {
            return Err(MalformedHandle("negative field"));
        }
        Ok(e)
    }

    /// The topic the message is stored in, given the topic and group of the request: the
    /// topic itself, `%RETRY%group` (flag 1) or `%RETRY%group+topic` (flag 2, rdmq's).
    pub fn stored_topic(&self, topic: &str, group: &str) -> String {
        Self::topic_of(self.retry, topic, group)
    }

    /// The topic retry flag `retry` names for `topic` and `group` (see [`Self::stored_topic`]).
    pub fn topic_of(retry: u8, topic: &str, group: &str) -> String {
        match retry {
            0 => topic.to_owned(),
            _ if topic.starts_with(crate::names::RETRY_PREFIX) => topic.to_owned(),
            1 => format!("{}{group}", crate::names::RETRY_PREFIX),
            _ => crate::names::retry_topic(group, topic),
        }
    }

    /// The retry flag of messages popped from `topic`.
    pub fn retry_flag(topic: &str) -> u8 {
        match topic.strip_prefix(crate::names::RETRY_PREFIX) {
            Some(rest) if rest.contains('+') => 2,
            Some(_) => 1,
            None => 0,
        }
    }
}

impl fmt::Display for ExtraInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} {} {} {} {} {}",
            self.ck_offset,
            self.pop_time,
            self.invisible,
            self.revive_qid,
            self.retry,
            self.broker,
            self.queue,
            self.offset
        )
    }
}

/// What one entry of RocketMQ's `BatchAckMessageRequestBody` acks (short keys as RocketMQ
/// writes them — `c`, `t`, `r`, `q`, `so`, `pt` — or the long names): bits of its bit set
/// count from `start`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchAckEntry<'a> {
    /// Consumer group.
    pub group: &'a str,
    /// Topic as the client names it (the original topic for retry copies).
    pub topic: &'a str,
    /// Retry flag, as in [`ExtraInfo::retry`].
    pub retry: u8,
    /// Queue.
    pub queue: i32,
    /// Offset of bit 0.
    pub start: i64,
    /// Pop instant (ms).
    pub pop_time: i64,
}

impl<'a> BatchAckEntry<'a> {
    /// Reads an entry; the error says which field is missing or wrong.
    pub fn parse(a: &'a serde_json::Value) -> Result<Self, String> {
        let get = |k: &str, long: &str| a.get(k).or_else(|| a.get(long));
        let s = |k: &str, long: &str| {
            get(k, long)
                .and_then(|x| x.as_str())
                .ok_or_else(|| format!("an ack lacks `{k}`"))
        };
        let n = |k: &str, long: &str| {
            get(k, long)
                .and_then(|x| x.as_i64())
                .ok_or_else(|| format!("an ack lacks `{k}`"))
        };
        let retry = match get("r", "retry") {
            None => 0,
            Some(r) => match r.as_str().and_then(|t| t.parse().ok()).or(r.as_u64()) {
                Some(f @ 0..=2) => f as u8,
                _ => return Err(format!("retry flag `{r}` is not 0, 1 or 2")),
            },
        };
        let queue = n("q", "queueId")?;
        Ok(BatchAckEntry {
            group: s("c", "consumerGroup")?,
            topic: s("t", "topic")?,
            retry,
            queue: i32::try_from(queue).map_err(|_| format!("queue {queue} is out of range"))?,
            start: n("so", "startOffset")?,
            pop_time: n("pt", "popTime")?,
        })
    }
}

/// The `startOffsetInfo` and `msgOffsetInfo` fields of a POP answer, from which RocketMQ
/// clients and proxies build each message's [`ExtraInfo`]: per `(topic, queue)` popped from,
/// in order, `retryFlag queueId startOffset` and `retryFlag queueId offset,offset,…`, entries
/// separated by `;`.
pub fn pop_offset_info<'a>(
    popped: impl IntoIterator<Item = (&'a str, i32, i64)>,
) -> (String, String) {
    let mut groups: Vec<(u8, i32, Vec<i64>)> = Vec::new();
    for (topic, queue, offset) in popped {
        let flag = ExtraInfo::retry_flag(topic);
        match groups
            .iter_mut()
            .find(|(f, q, _)| *f == flag && *q == queue)
        {
            Some(g) => g.2.push(offset),
            None => groups.push((flag, queue, vec![offset])),
        }
    }
    let start = groups
        .iter()
        .map(|(f, q, o)| format!("{f} {q} {}", o[0]))
        .collect::<Vec<_>>()
        .join(";");
    let offsets = groups
        .iter()
        .map(|(f, q, o)| {
            let list: Vec<String> = o.iter().map(i64::to_string).collect();
            format!("{f} {q} {}", list.join(","))
        })
        .collect::<Vec<_>>()
        .join(";");
    (start, offsets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rocketmq_extra_info_parses_and_names_the_stored_topic() {
        let e = ExtraInfo::parse("5 1700000000000 30000 0 2 broker-a 3 7 99").unwrap();
        assert_eq!((e.ck_offset, e.queue, e.offset, e.retry), (5, 3, 7, 2));
        assert_eq!(e.broker, "broker-a");
        assert_eq!(e.stored_topic("orders", "g"), "%RETRY%g+orders");
        assert_eq!(ExtraInfo::parse(&e.to_string()).unwrap(), e);
        let n = ExtraInfo::parse("0 1 2 0 0 b 0 0").unwrap();
        assert_eq!(n.stored_topic("orders", "g"), "orders");
        for bad in [
            "",
            "0 1 2 0 0 b 0",
            "0 1 2 0 9 b 0 0",
            "0 1 2 0 0 b -1 0",
            "x 1 2 0 0 b 0 0",
        ] {
            assert!(ExtraInfo::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(ExtraInfo::retry_flag("%RETRY%g+t"), 2);
        assert_eq!(ExtraInfo::retry_flag("%RETRY%g"), 1);
        assert_eq!(ExtraInfo::retry_flag("t"), 0);
    }

    #[test]
    fn pop_offset_info_groups_by_queue() {
        let (start, offsets) =
            pop_offset_info([("t", 1, 5), ("t", 1, 6), ("%RETRY%g+t", 0, 2), ("t", 2, 9)]);
        assert_eq!(start, "0 1 5;2 0 2;0 2 9");
        assert_eq!(offsets, "0 1 5,6;2 0 2;0 2 9");
    }

    #[test]
    fn round_trips_and_rejects_garbage() {
        let h = ReceiptHandle {
            pop_time: 1_700_000_000_000,
            invisible: 30_000,
            seq: 0xDEAD_BEEF_0123_4567,
            queue: 3,
            offset: 42,
            broker: "broker-a".into(),
            topic: "%RETRY%g+orders".into(),
        };
        assert_eq!(ReceiptHandle::parse(&h.to_string()).unwrap(), h);
        for bad in [
            "",
            "2 1 2 00 0 0 b t",
            "1 x 2 00 0 0 b t",
            "1 1 2 zz 0 0 b t",
            "1 1 2 00 -1 0 b t",
            "1 1 2 00 0 0 b",
        ] {
            assert!(ReceiptHandle::parse(bad).is_err(), "{bad}");
        }
    }
}
