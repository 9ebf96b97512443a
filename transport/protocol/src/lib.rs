//! rdmq-protocol: what a RocketMQ proxy and broker agree on above the remoting frame, without
//! any storage or networking — so the stateless proxy links this and not the broker.
//!
//! - [`message`]: the stored-message record (the commit log's and PULL/POP bodies' layout),
//!   properties, tag hashes, offset message ids, batch bodies.
//! - [`handle`]: Pop receipt handles.
//! - [`route`]: topic routes, cluster info and broker registrations as name servers
//!   exchange them.
//! - [`names`]: the rules for topic and group names and the retry and dead-letter topics
//!   derived from them.
//! - [`now_ms`], [`parse_size`], [`POP_LOG_TOPIC`]: time, sizes and system names.

pub mod handle;
pub mod message;
pub mod names;
pub mod route;

pub use handle::{ExtraInfo, MalformedHandle, ReceiptHandle};

/// The system topic that logs every pop and ack before the consumer hears of it.
pub const POP_LOG_TOPIC: &str = "rmq_sys_POP_LOG";

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A byte size with an optional binary suffix: `512`, `64K`, `4M`, `1G`. `None` when malformed
/// or overflowing.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last()? {
        (i, 'k' | 'K') => (&s[..i], 1u64 << 10),
        (i, 'm' | 'M') => (&s[..i], 1 << 20),
        (i, 'g' | 'G') => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    num.trim().parse::<u64>().ok()?.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_take_binary_suffixes_and_refuse_overflow() {
        assert_eq!(super::parse_size("64K"), Some(65_536));
        assert_eq!(super::parse_size(" 4m "), Some(4 << 20));
        assert_eq!(super::parse_size("1G"), Some(1 << 30));
        assert_eq!(super::parse_size("12"), Some(12));
        assert_eq!(super::parse_size("x"), None);
        assert_eq!(super::parse_size("99999999999G"), None);
    }

    #[test]
    fn the_clock_is_after_2020() {
        assert!(super::now_ms() > 1_577_836_800_000);
    }
}
