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

#[cfg(test)]
mod tests {
    use super::*;

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
