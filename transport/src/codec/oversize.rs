//! Frames whose header is too large to be worth parsing: just enough is read to answer them
//! (opaque, flag, header encoding), so a peer sending megabyte headers gets a refusal for
//! each while the connection — and every other connection on the same thread — is spared the
//! parse. RocketMQ's own headers are a few hundred bytes to a few KiB.

use bytes::Bytes;

use super::command::SerializeType;

/// Largest request header the connection parses by default (a message's properties travel
/// in it and are limited to 32 KiB by the store's record format).
pub const DEFAULT_MAX_HEADER: usize = 64 << 10;

/// What a too-large header reveals without parsing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OversizedHeader {
    /// The declared header length.
    pub header_len: usize,
    /// The command's opaque, when it could be found.
    pub opaque: Option<i32>,
    /// The command's flag (0 when not found).
    pub flag: i32,
    /// The header encoding.
    pub serialize_type: SerializeType,
}

/// `Some` when `frame` (length prefix included) declares a header longer than `max_header`.
pub fn peek_oversized(frame: &Bytes, max_header: usize) -> Option<OversizedHeader> {
    let word = u32::from_be_bytes(frame.get(4..8)?.try_into().ok()?);
    let header_len = (word & 0x00FF_FFFF) as usize;
    if header_len <= max_header {
        return None;
    }
    let header = frame.get(8..8 + header_len.min(frame.len() - 8))?;
    let ser = SerializeType::from_code((word >> 24) as u8)?;
    let (opaque, flag) = match ser {
        // code i16, language u8, version i16, opaque i32, flag i32.
        SerializeType::RocketMq => {
            let int = |at: usize| {
                header
                    .get(at..at + 4)
                    .map(|b| i32::from_be_bytes(b.try_into().expect("4 bytes")))
            };
            (int(5), int(9).unwrap_or(0))
        }
        SerializeType::Json => (
            json_int(header, b"\"opaque\":"),
            json_int(header, b"\"flag\":").unwrap_or(0),
        ),
    };
    Some(OversizedHeader {
        header_len,
        opaque,
        flag,
        serialize_type: ser,
    })
}

/// The integer after `key` (a quoted name and colon) in `json`. Encoders put the scalar
/// fields before or after `extFields` (fastjson, RocketMQ's, sorts them: `opaque` comes
/// after), so both ends are looked at before the whole header is.
fn json_int(json: &[u8], key: &[u8]) -> Option<i32> {
    const END: usize = 512;
    let tail = json.len().saturating_sub(END);
    let find = |from: usize, to: usize, last: bool| {
        let mut w = json[from..to].windows(key.len());
        let hit = if last {
            w.rposition(|w| w == key)
        } else {
            w.position(|w| w == key)
        };
        hit.map(|i| from + i)
    };
    let at = find(tail, json.len(), true)
        .or_else(|| find(0, END.min(json.len()), false))
        .or_else(|| find(0, json.len(), true))?
        + key.len();
    let rest = &json[at..];
    let rest = &rest[rest.iter().take_while(|b| b.is_ascii_whitespace()).count()..];
    let len = rest
        .iter()
        .enumerate()
        .take_while(|(i, b)| b.is_ascii_digit() || (*i == 0 && **b == b'-'))
        .count();
    std::str::from_utf8(&rest[..len]).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::RemotingCommand;

    #[test]
    fn the_opaque_and_flag_of_a_large_header_are_found_in_both_encodings() {
        for ser in [SerializeType::Json, SerializeType::RocketMq] {
            let mut c = RemotingCommand::request(310).with_field("k", "v".repeat(100_000));
            c.opaque = -42;
            c.flag = 2;
            c.serialize_type = ser;
            let frame = Bytes::from(c.encode_to_vec().unwrap());
            assert_eq!(peek_oversized(&frame, 1 << 20), None);
            let o = peek_oversized(&frame, 1024).expect("oversized");
            assert_eq!((o.opaque, o.flag, o.serialize_type), (Some(-42), 2, ser));
            assert!(o.header_len > 100_000);
        }
    }
}
