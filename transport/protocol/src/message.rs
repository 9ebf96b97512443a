//! Messages as RocketMQ stores and ships them: the properties string (`key\x01value\x02…`) and
//! the stored-record layout (`MessageDecoder`), which is also the body format of PULL and POP
//! responses, so stored records are returned as they are.

use bytes::{BufMut, Bytes, BytesMut};

/// Separator between a property name and its value.
pub const NAME_VALUE_SEPARATOR: char = '\u{1}';
/// Separator between properties.
pub const PROPERTY_SEPARATOR: char = '\u{2}';

/// Well-known property names.
pub mod prop {
    /// Tag.
    pub const TAGS: &str = "TAGS";
    /// Space-separated keys.
    pub const KEYS: &str = "KEYS";
    /// Client-assigned message id.
    pub const UNIQ_KEY: &str = "UNIQ_KEY";
    /// Delay level.
    pub const DELAY: &str = "DELAY";
    /// Absolute delivery time (ms), client style.
    pub const START_DELIVER_TIME: &str = "__STARTDELIVERTIME";
    /// Absolute delivery time (ms), timer style.
    pub const TIMER_DELIVER_MS: &str = "TIMER_DELIVER_MS";
    /// FIFO message group.
    pub const SHARDING_KEY: &str = "__SHARDINGKEY";
    /// Relative delivery delay in seconds (5.x clients).
    pub const TIMER_DELAY_SEC: &str = "TIMER_DELAY_SEC";
    /// Relative delivery delay in milliseconds (5.x clients).
    pub const TIMER_DELAY_MS: &str = "TIMER_DELAY_MS";
    /// Destination topic of a message parked in a system topic (timers).
    pub const REAL_TOPIC: &str = "REAL_TOPIC";
    /// Destination queue of a message parked in a system topic.
    pub const REAL_QID: &str = "REAL_QID";
    /// The original topic of a message in a retry or dead-letter topic.
    pub const RETRY_TOPIC: &str = "RETRY_TOPIC";
    /// The id of the message a retry copy was made from.
    pub const ORIGIN_MESSAGE_ID: &str = "ORIGIN_MESSAGE_ID";
    /// The receipt handle of a popped message.
    pub const POP_CK: &str = "POP_CK";
    /// First delivery time of a popped message (ms).
    pub const FIRST_POP_TIME: &str = "1ST_POP_TIME";
    /// rdmq: the commit-log offset of the timer record a fired message came from.
    pub const TIMER_SRC: &str = "__RDMQ_TIMER_SRC";
}

/// Why a properties string is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PropertiesError {
    /// A pair without the name/value separator.
    #[error("property `{0}` has no value separator (\\u0001)")]
    MissingSeparator(String),
    /// An empty property name.
    #[error("property with an empty name")]
    EmptyName,
    /// A name or value containing a separator character.
    #[error("property `{0}` contains a separator character")]
    SeparatorInside(String),
}

/// Validates a properties string and calls `f` for every pair, without allocating.
pub fn scan_properties<'a>(
    s: &'a str,
    mut f: impl FnMut(&'a str, &'a str),
) -> Result<(), PropertiesError> {
    for pair in s.split(PROPERTY_SEPARATOR).filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once(NAME_VALUE_SEPARATOR)
            .ok_or_else(|| PropertiesError::MissingSeparator(pair.chars().take(40).collect()))?;
        if k.is_empty() {
            return Err(PropertiesError::EmptyName);
        }
        if v.contains(NAME_VALUE_SEPARATOR) {
            return Err(PropertiesError::SeparatorInside(k.to_owned()));
        }
        f(k, v);
    }
    Ok(())
}

/// Properties in their wire order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties(pub Vec<(String, String)>);

impl Properties {
    /// Parses `key\x01value\x02…` (a trailing separator is optional).
    pub fn parse(s: &str) -> Result<Properties, PropertiesError> {
        let mut out = Vec::new();
        scan_properties(s, |k, v| out.push((k.to_owned(), v.to_owned())))?;
        Ok(Properties(out))
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Sets `key`, replacing an earlier value.
    pub fn set(&mut self, key: &str, value: impl Into<String>) {
        let value = value.into();
        match self.0.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.0.push((key.to_owned(), value)),
        }
    }

    /// Removes `key`.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        let i = self.0.iter().position(|(k, _)| k == key)?;
        Some(self.0.remove(i).1)
    }

    /// Encodes to the wire string.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        for (k, v) in &self.0 {
            s.push_str(k);
            s.push(NAME_VALUE_SEPARATOR);
            s.push_str(v);
            s.push(PROPERTY_SEPARATOR);
        }
        s
    }

    /// The tag, if any.
    pub fn tag(&self) -> Option<&str> {
        self.get(prop::TAGS).filter(|t| !t.is_empty())
    }

    /// The keys (space separated in `KEYS`).
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.get(prop::KEYS)
            .unwrap_or("")
            .split(' ')
            .filter(|k| !k.is_empty())
    }
}

/// Hash of a tag as stored in consume-queue entries (Java `String.hashCode` of the tag, so
/// tag filters match upstream's).
pub fn tag_hash(tag: Option<&str>) -> i64 {
    match tag {
        None => 0,
        Some(t) => {
            let mut h: i32 = 0;
            for u in t.encode_utf16() {
                h = h.wrapping_mul(31).wrapping_add(u as i32);
            }
            h as i64
        }
    }
}

/// Magic of stored records whose topic length fits one byte.
pub const MAGIC_V1: i32 = -626_843_481;
/// Magic of stored records with a two-byte topic length.
pub const MAGIC_V2: i32 = -626_843_477;

/// `sysFlag` bit: born host is IPv6.
pub const SYSFLAG_BORN_V6: i32 = 1 << 4;
/// `sysFlag` bit: store host is IPv6.
pub const SYSFLAG_STORE_V6: i32 = 1 << 5;

/// A host address as stored (IPv4 + port; IPv6 is not produced by this broker).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HostAddr {
    /// IPv4 address.
    pub ip: [u8; 4],
    /// Port.
    pub port: u32,
}

impl std::fmt::Display for HostAddr {
    /// `a.b.c.d:port`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [a, b, c, d] = self.ip;
        write!(f, "{a}.{b}.{c}.{d}:{}", self.port)
    }
}

impl HostAddr {
    /// Parses `a.b.c.d:port` (anything else gives 0.0.0.0:0).
    pub fn parse(s: &str) -> HostAddr {
        let parsed: Option<std::net::SocketAddr> = s.parse().ok();
        match parsed {
            Some(std::net::SocketAddr::V4(a)) => HostAddr {
                ip: a.ip().octets(),
                port: a.port() as u32,
            },
            _ => HostAddr::default(),
        }
    }
}

/// Everything that goes into a stored record.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// Topic.
    pub topic: String,
    /// Queue.
    pub queue_id: i32,
    /// Application flag.
    pub flag: i32,
    /// System flag (compression etc.; host-address bits are set by the store).
    pub sys_flag: i32,
    /// Producer's timestamp (ms).
    pub born_timestamp: i64,
    /// Producer's address.
    pub born_host: HostAddr,
    /// Delivery attempts so far.
    pub reconsume_times: i32,
    /// Properties string (already validated).
    pub properties: String,
    /// Body.
    pub body: Bytes,
}

impl NewMessage {
    /// A copy of a stored message for re-putting (into its real topic, a retry or a
    /// dead-letter topic), with `properties` replaced.
    pub fn from_stored(m: &StoredMessage, topic: &str, queue_id: i32, properties: String) -> Self {
        NewMessage {
            topic: topic.to_owned(),
            queue_id,
            flag: m.flag,
            sys_flag: m.sys_flag,
            born_timestamp: m.born_timestamp,
            born_host: m.born_host,
            reconsume_times: m.reconsume_times,
            properties,
            body: m.body.clone(),
        }
    }
}

/// Size of a stored record for `msg`.
pub fn record_len(msg: &NewMessage) -> usize {
    let topic_len_size = if msg.topic.len() > 127 { 2 } else { 1 };
    4 + 4
        + 4
        + 4
        + 4
        + 8
        + 8
        + 4
        + 8
        + 8
        + 8
        + 8
        + 4
        + 8
        + 4
        + msg.body.len()
        + topic_len_size
        + msg.topic.len()
        + 2
        + msg.properties.len()
}

/// Appends the stored record of `msg` to `out` (the `MessageDecoder` layout, big-endian).
pub fn encode_record(
    msg: &NewMessage,
    queue_offset: i64,
    physical_offset: i64,
    store_timestamp: i64,
    store_host: HostAddr,
    out: &mut impl BufMut,
) {
    let total = record_len(msg) as i32;
    let v2 = msg.topic.len() > 127;
    out.put_i32(total);
    out.put_i32(if v2 { MAGIC_V2 } else { MAGIC_V1 });
    out.put_i32((crc32fast::hash(&msg.body) & 0x7FFF_FFFF) as i32);
    out.put_i32(msg.queue_id);
    out.put_i32(msg.flag);
    out.put_i64(queue_offset);
    out.put_i64(physical_offset);
    out.put_i32(msg.sys_flag & !(SYSFLAG_BORN_V6 | SYSFLAG_STORE_V6));
    out.put_i64(msg.born_timestamp);
    out.put_slice(&msg.born_host.ip);
    out.put_u32(msg.born_host.port);
    out.put_i64(store_timestamp);
    out.put_slice(&store_host.ip);
    out.put_u32(store_host.port);
    out.put_i32(msg.reconsume_times);
    out.put_i64(0); // prepared transaction offset
    out.put_i32(msg.body.len() as i32);
    out.put_slice(&msg.body);
    if v2 {
        out.put_u16(msg.topic.len() as u16);
    } else {
        out.put_u8(msg.topic.len() as u8);
    }
    out.put_slice(msg.topic.as_bytes());
    out.put_u16(msg.properties.len() as u16);
    out.put_slice(msg.properties.as_bytes());
}

/// Appends `msg` as the record of the stored message `like` (its offsets, store time and
/// store host kept): a stored record re-encoded with another topic, queue or properties.
pub fn encode_record_like(msg: &NewMessage, like: &StoredMessage, out: &mut impl BufMut) {
    encode_record(
        msg,
        like.queue_offset,
        like.physical_offset,
        like.store_timestamp,
        like.store_host,
        out,
    );
}

/// A stored record, decoded (fields borrow from the record bytes where possible).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Topic.
    pub topic: String,
    /// Queue.
    pub queue_id: i32,
    /// Application flag.
    pub flag: i32,
    /// Logical offset in the queue.
    pub queue_offset: i64,
    /// Offset in the commit log.
    pub physical_offset: i64,
    /// System flag.
    pub sys_flag: i32,
    /// Producer's timestamp.
    pub born_timestamp: i64,
    /// Producer's address.
    pub born_host: HostAddr,
    /// Store timestamp.
    pub store_timestamp: i64,
    /// Broker's address.
    pub store_host: HostAddr,
    /// Delivery attempts so far.
    pub reconsume_times: i32,
    /// Body CRC32 (masked) as stored.
    pub body_crc: i32,
    /// Properties string.
    pub properties: String,
    /// Body.
    pub body: Bytes,
}

/// Why a record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corrupt stored record: {0}")]
pub struct RecordError(pub &'static str);

/// Decodes back-to-back records, as a PULL response body carries them.
pub fn decode_records(body: &Bytes) -> Result<Vec<StoredMessage>, RecordError> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < body.len() {
        let head = body
            .get(at..at + 4)
            .ok_or(RecordError("truncated size field"))?;
        let len = i32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        if len < 4 || at + len as usize > body.len() {
            return Err(RecordError("record size exceeds the body"));
        }
        out.push(decode_record(&body.slice(at..at + len as usize))?);
        at += len as usize;
    }
    Ok(out)
}

/// Rewrites the queue id of every record in a PULL body in place (a proxy presenting several
/// brokers' queues as one broker's).
pub fn map_record_queue_ids(body: &mut [u8], map: impl Fn(i32) -> i32) -> Result<(), RecordError> {
    let mut at = 0;
    while at < body.len() {
        let field = |b: &[u8], i: usize| {
            b.get(i..i + 4)
                .map(|h| i32::from_be_bytes([h[0], h[1], h[2], h[3]]))
        };
        let len = field(body, at).ok_or(RecordError("truncated size field"))?;
        if len < 20 || at + len as usize > body.len() {
            return Err(RecordError("record size exceeds the body"));
        }
        let q = field(body, at + 12).ok_or(RecordError("truncated queue id"))?;
        body[at + 12..at + 16].copy_from_slice(&map(q).to_be_bytes());
        at += len as usize;
    }
    Ok(())
}

/// Decodes one stored record (exactly `record.len()` bytes).
pub fn decode_record(record: &Bytes) -> Result<StoredMessage, RecordError> {
    let mut r = Cursor { b: record, i: 0 };
    let total = r.i32()? as usize;
    if total != record.len() {
        return Err(RecordError("size field does not match"));
    }
    let magic = r.i32()?;
    let v2 = match magic {
        MAGIC_V1 => false,
        MAGIC_V2 => true,
        _ => return Err(RecordError("bad magic")),
    };
    let body_crc = r.i32()?;
    let queue_id = r.i32()?;
    let flag = r.i32()?;
    let queue_offset = r.i64()?;
    let physical_offset = r.i64()?;
    let sys_flag = r.i32()?;
    let born_timestamp = r.i64()?;
    let born_host = r.host(sys_flag & SYSFLAG_BORN_V6 != 0)?;
    let store_timestamp = r.i64()?;
    let store_host = r.host(sys_flag & SYSFLAG_STORE_V6 != 0)?;
    let reconsume_times = r.i32()?;
    let _prepared = r.i64()?;
    let body_len = r.i32()? as usize;
    let body = r.bytes(body_len)?;
    let topic_len = if v2 {
        r.u16()? as usize
    } else {
        r.u8()? as usize
    };
    let topic = String::from_utf8(r.bytes(topic_len)?.to_vec())
        .map_err(|_| RecordError("topic is not UTF-8"))?;
    let props_len = r.u16()? as usize;
    let properties = String::from_utf8(r.bytes(props_len)?.to_vec())
        .map_err(|_| RecordError("properties are not UTF-8"))?;
    Ok(StoredMessage {
        topic,
        queue_id,
        flag,
        queue_offset,
        physical_offset,
        sys_flag,
        born_timestamp,
        born_host,
        store_timestamp,
        store_host,
        reconsume_times,
        body_crc,
        properties,
        body,
    })
}

struct Cursor<'a> {
    b: &'a Bytes,
    i: usize,
}

impl Cursor<'_> {
    fn need(&self, n: usize) -> Result<(), RecordError> {
        // Lengths come off the wire (a negative i32 becomes a huge usize): compare without
        // adding, so nothing overflows.
        if n > self.b.len() - self.i {
            Err(RecordError("truncated"))
        } else {
            Ok(())
        }
    }
    fn u8(&mut self) -> Result<u8, RecordError> {
        self.need(1)?;
        self.i += 1;
        Ok(self.b[self.i - 1])
    }
    fn u16(&mut self) -> Result<u16, RecordError> {
        self.need(2)?;
        self.i += 2;
        Ok(u16::from_be_bytes([self.b[self.i - 2], self.b[self.i - 1]]))
    }
    fn i32(&mut self) -> Result<i32, RecordError> {
        self.need(4)?;
        self.i += 4;
        Ok(i32::from_be_bytes(
            self.b[self.i - 4..self.i].try_into().expect("4 bytes"),
        ))
    }
    fn i64(&mut self) -> Result<i64, RecordError> {
        self.need(8)?;
        self.i += 8;
        Ok(i64::from_be_bytes(
            self.b[self.i - 8..self.i].try_into().expect("8 bytes"),
        ))
    }
    fn bytes(&mut self, n: usize) -> Result<Bytes, RecordError> {
        self.need(n)?;
        self.i += n;
        Ok(self.b.slice(self.i - n..self.i))
    }
    fn host(&mut self, v6: bool) -> Result<HostAddr, RecordError> {
        if v6 {
            self.bytes(16)?;
            let port = self.i32()? as u32;
            return Ok(HostAddr { ip: [0; 4], port });
        }
        let ip = self.bytes(4)?;
        Ok(HostAddr {
            ip: [ip[0], ip[1], ip[2], ip[3]],
            port: self.i32()? as u32,
        })
    }
}

/// The "offset message id" of a stored record: store host (IPv4 + port) and physical offset
/// as 32 upper-case hex characters.
pub fn offset_msg_id(store: HostAddr, physical_offset: i64) -> String {
    let mut b = BytesMut::with_capacity(16);
    b.put_slice(&store.ip);
    b.put_u32(store.port);
    b.put_i64(physical_offset);
    b.iter().map(|x| format!("{x:02X}")).collect()
}

/// Parses an offset message id back into the physical offset.
pub fn parse_offset_msg_id(id: &str) -> Option<i64> {
    if id.len() != 32 || !id.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    i64::from_str_radix(&id[16..], 16).ok()
}

/// The store host (`ip:port`) and physical offset an offset message id names.
pub fn offset_msg_id_parts(id: &str) -> Option<(String, i64)> {
    let off = parse_offset_msg_id(id)?;
    let b = |i: usize| u8::from_str_radix(&id[i * 2..i * 2 + 2], 16).ok();
    let port = u32::from_str_radix(&id[8..16], 16).ok()?;
    Some((
        format!("{}.{}.{}.{}:{port}", b(0)?, b(1)?, b(2)?, b(3)?),
        off,
    ))
}

/// Decodes the body of SEND_BATCH_MESSAGE: messages encoded as
/// `totalSize | magic | bodyCRC | flag | bodyLen+body | propsLen(2)+props`.
pub fn decode_batch(body: &Bytes) -> Result<Vec<(i32, Bytes, String)>, RecordError> {
    let mut r = Cursor { b: body, i: 0 };
    let mut out = Vec::new();
    while r.i < body.len() {
        let start = r.i;
        let total = r.i32()? as usize;
        let _magic = r.i32()?;
        let _crc = r.i32()?;
        let flag = r.i32()?;
        let body_len = r.i32()? as usize;
        let msg_body = r.bytes(body_len)?;
        let props_len = r.u16()? as usize;
        let props = String::from_utf8(r.bytes(props_len)?.to_vec())
            .map_err(|_| RecordError("batch properties are not UTF-8"))?;
        if r.i - start != total {
            return Err(RecordError("batch entry size does not match"));
        }
        out.push((flag, msg_body, props));
    }
    Ok(out)
}

/// Encodes messages for a SEND_BATCH_MESSAGE body (used by tests and the bench).
pub fn encode_batch(messages: &[(i32, Bytes, String)]) -> Bytes {
    let mut b = BytesMut::new();
    for (flag, body, props) in messages {
        let total = 4 + 4 + 4 + 4 + 4 + body.len() + 2 + props.len();
        b.put_i32(total as i32);
        b.put_i32(0);
        b.put_i32((crc32fast::hash(body) & 0x7FFF_FFFF) as i32);
        b.put_i32(*flag);
        b.put_i32(body.len() as i32);
        b.put_slice(body);
        b.put_u16(props.len() as u16);
        b.put_slice(props.as_bytes());
    }
    b.freeze()
}

#[cfg(test)]
mod tests {
    #[test]
    fn negative_or_huge_lengths_in_a_batch_are_errors_not_panics() {
        use bytes::BufMut;
        for len in [-1i32, i32::MIN, i32::MAX] {
            let mut b = bytes::BytesMut::new();
            for v in [30, 0, 0, 0, len] {
                b.put_i32(v);
            }
            b.put_slice(b"abc");
            assert!(super::decode_batch(&b.freeze()).is_err(), "{len}");
        }
    }

    use super::*;

    #[test]
    fn host_addresses_print_as_they_parse() {
        for a in ["10.1.2.3:10911", "127.0.0.1:0", "255.255.255.255:65535"] {
            assert_eq!(HostAddr::parse(a).to_string(), a);
        }
    }

    #[test]
    fn properties_round_trip_and_reject_garbage() {
        let p =
            Properties::parse("TAGS\u{1}a\u{2}KEYS\u{1}k1 k2\u{2}UNIQ_KEY\u{1}ABC\u{2}").unwrap();
        assert_eq!(p.tag(), Some("a"));
        assert_eq!(p.keys().collect::<Vec<_>>(), vec!["k1", "k2"]);
        assert_eq!(Properties::parse(&p.encode()).unwrap(), p);
        assert!(matches!(
            Properties::parse("TAGS"),
            Err(PropertiesError::MissingSeparator(_))
        ));
        assert_eq!(Properties::parse("\u{1}x"), Err(PropertiesError::EmptyName));
        assert!(Properties::parse("").unwrap().0.is_empty());
    }

    #[test]
    fn offset_ids_name_their_store() {
        let id = offset_msg_id(HostAddr::parse("10.1.2.3:10911"), 77);
        assert_eq!(
            offset_msg_id_parts(&id),
            Some(("10.1.2.3:10911".to_owned(), 77))
        );
        assert_eq!(offset_msg_id_parts("01CLIENTID"), None);
    }

    #[test]
    fn java_string_hash_of_tags() {
        assert_eq!(tag_hash(Some("TagA")), 2_598_919);
        assert_eq!(tag_hash(Some("")), 0);
        assert_eq!(tag_hash(None), 0);
    }

    #[test]
    fn records_round_trip() {
        let msg = NewMessage {
            topic: "T".repeat(200),
            queue_id: 3,
            flag: 7,
            sys_flag: 0,
            born_timestamp: 1_700_000_000_000,
            born_host: HostAddr::parse("10.0.0.1:5000"),
            reconsume_times: 2,
            properties: "TAGS\u{1}x\u{2}".into(),
            body: Bytes::from_static(b"hello"),
        };
        let mut out = BytesMut::new();
        encode_record(
            &msg,
            11,
            4096,
            1_700_000_000_123,
            HostAddr::parse("127.0.0.1:10911"),
            &mut out,
        );
        assert_eq!(out.len(), record_len(&msg));
        let mut two = out.to_vec();
        two.extend_from_slice(&out);
        map_record_queue_ids(&mut two, |q| q + 10).unwrap();
        let back = decode_records(&Bytes::from(two.clone())).unwrap();
        assert_eq!(
            back.iter().map(|m| m.queue_id).collect::<Vec<_>>(),
            [13, 13]
        );
        assert!(map_record_queue_ids(&mut two[..30], |q| q).is_err());
        let m = decode_record(&out.freeze()).unwrap();
        assert_eq!(
            (m.topic.len(), m.queue_id, m.queue_offset, m.physical_offset),
            (200, 3, 11, 4096)
        );
        assert_eq!(&m.body[..], b"hello");
        assert_eq!(m.properties, "TAGS\u{1}x\u{2}");
        assert_eq!(m.born_host, HostAddr::parse("10.0.0.1:5000"));
        let id = offset_msg_id(m.store_host, 4096);
        assert_eq!(id, "7F00000100002A9F0000000000001000");
        assert_eq!(parse_offset_msg_id(&id), Some(4096));
    }

    #[test]
    fn batches_round_trip() {
        let msgs = vec![
            (0, Bytes::from_static(b"a"), "TAGS\u{1}x\u{2}".to_string()),
            (1, Bytes::from_static(b"bb"), String::new()),
        ];
        assert_eq!(decode_batch(&encode_batch(&msgs)).unwrap(), msgs);
        assert!(decode_batch(&Bytes::from_static(b"\x00\x00")).is_err());
    }
}
