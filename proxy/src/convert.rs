//! gRPC messages ↔ remoting messages: what a producer's `Message` becomes on the broker
//! (properties, body) and what a stored record becomes for a consumer.

use std::collections::HashMap;

use bytes::Bytes;
use prost_types::{Duration as PbDuration, Timestamp};
use rdmq_protocol::message::{self, Properties, StoredMessage, prop};

use crate::cluster::Outgoing;
use crate::error::{ProxyError, ProxyResult};
use crate::pb::{self, Code, DigestType, Encoding, MessageType};

/// Property keys the system owns: a producer may not set them as user properties, and they
/// are not shown to consumers as such.
pub const RESERVED_KEYS: &[&str] = &[
    prop::TAGS,
    prop::KEYS,
    prop::UNIQ_KEY,
    prop::DELAY,
    prop::START_DELIVER_TIME,
    prop::TIMER_DELIVER_MS,
    prop::TIMER_DELAY_SEC,
    prop::TIMER_DELAY_MS,
    prop::SHARDING_KEY,
    prop::REAL_TOPIC,
    prop::REAL_QID,
    prop::RETRY_TOPIC,
    prop::ORIGIN_MESSAGE_ID,
    prop::POP_CK,
    prop::FIRST_POP_TIME,
    prop::TIMER_SRC,
    "WAIT",
    "TRAN_MSG",
    "PGROUP",
    "MIN_OFFSET",
    "MAX_OFFSET",
    "MSG_REGION",
    "TRACE_ON",
    "CLUSTER",
    "RECONSUME_TIME",
    "MAX_RECONSUME_TIMES",
    "CORRECTION_FLAG",
    "INNER_NUM",
    "INNER_BASE",
    "TIMER_OUT_MS",
    "TIMER_ENQUEUE_MS",
    "TIMER_DEQUEUE_MS",
    "TIMER_ROLL_TIMES",
    "TIMER_DEL_UNIQKEY",
];

/// Most user properties one message may carry.
pub const MAX_USER_PROPERTIES: usize = 128;

/// Limits applied to produced messages.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest body.
    pub max_body: usize,
    /// Largest encoded properties.
    pub max_properties: usize,
    /// Latest delivery time, from now.
    pub max_delay_ms: i64,
}

fn bad(code: Code, msg: impl Into<String>) -> ProxyError {
    ProxyError::new(code, msg)
}

fn has_separator(s: &str) -> bool {
    s.contains(message::NAME_VALUE_SEPARATOR) || s.contains(message::PROPERTY_SEPARATOR)
}

/// Milliseconds since the epoch of a protobuf timestamp.
pub fn millis(t: &Timestamp) -> i64 {
    t.seconds
        .saturating_mul(1000)
        .saturating_add(t.nanos as i64 / 1_000_000)
}

/// A protobuf timestamp of epoch milliseconds.
pub fn timestamp(ms: i64) -> Timestamp {
    Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// A protobuf duration of milliseconds.
pub fn duration(ms: i64) -> PbDuration {
    PbDuration {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// A protobuf duration as std, if it is not negative.
pub fn std_duration(d: &PbDuration) -> Option<std::time::Duration> {
    if d.seconds < 0 || d.nanos < 0 {
        return None;
    }
    Some(std::time::Duration::new(d.seconds as u64, d.nanos as u32))
}

/// Checks a produced message and encodes it for the broker. `topic` is the request's topic;
/// `now` the proxy's clock (ms).
pub fn outgoing(m: &pb::Message, topic: &str, limits: &Limits, now: i64) -> ProxyResult<Outgoing> {
    let name = m.topic.as_ref().map(|t| t.name.as_str()).unwrap_or("");
    if name != topic {
        return Err(bad(
            Code::IllegalTopic,
            format!("all messages of one request must be for topic `{topic}`, got `{name}`"),
        ));
    }
    let sys = m
        .system_properties
        .as_ref()
        .ok_or_else(|| bad(Code::BadRequest, "message has no system_properties"))?;
    if sys.message_id.is_empty() || sys.message_id.len() > 128 || has_separator(&sys.message_id) {
        return Err(bad(
            Code::IllegalMessageId,
            "message_id must be 1 to 128 characters without separators",
        ));
    }
    if m.body.is_empty() {
        return Err(bad(Code::MessageBodyEmpty, "message body is empty"));
    }
    if m.body.len() > limits.max_body {
        return Err(bad(
            Code::MessageBodyTooLarge,
            format!(
                "message body is {} bytes; the limit is {}",
                m.body.len(),
                limits.max_body
            ),
        ));
    }
    let mut p = Properties::default();
    if let Some(tag) = &sys.tag {
        if tag.trim().is_empty() || tag.contains('|') || tag.chars().any(char::is_control) {
            return Err(bad(
                Code::IllegalMessageTag,
                format!("tag {tag:?} is blank or holds `|` or control characters"),
            ));
        }
        p.set(prop::TAGS, tag.clone());
    }
    if !sys.keys.is_empty() {
        for k in &sys.keys {
            if k.is_empty() || k.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(bad(
                    Code::IllegalMessageKey,
                    format!("key {k:?} is empty or holds whitespace"),
                ));
            }
        }
        p.set(prop::KEYS, sys.keys.join(" "));
    }
    p.set(prop::UNIQ_KEY, sys.message_id.clone());
    let mut group = None;
    if let Some(g) = &sys.message_group {
        if g.trim().is_empty() || g.len() > 128 || g.chars().any(char::is_control) {
            return Err(bad(
                Code::IllegalMessageGroup,
                format!("message group {g:?} is blank, too long or holds control characters"),
            ));
        }
        p.set(prop::SHARDING_KEY, g.clone());
        group = Some(g.clone());
    }
    if let Some(at) = &sys.delivery_timestamp {
        if group.is_some() {
            return Err(bad(
                Code::MessagePropertyConflictWithType,
                "a message cannot have both a message group and a delivery time",
            ));
        }
        let at = millis(at);
        if at < 0 {
            return Err(bad(
                Code::IllegalDeliveryTime,
                format!("delivery time {at} is before 1970"),
            ));
        }
        if at.saturating_sub(now) > limits.max_delay_ms {
            return Err(bad(
                Code::IllegalDeliveryTime,
                format!(
                    "delivery time {at} is more than {} s ahead",
                    limits.max_delay_ms / 1000
                ),
            ));
        }
        if at > now {
            p.set(prop::START_DELIVER_TIME, at.to_string());
        }
    }
    if sys.message_type == MessageType::Transaction as i32 {
        return Err(bad(
            Code::Unsupported,
            "transactional messages are not supported yet",
        ));
    }
    // Checked before any per-property work, so a request with a huge map costs only its
    // decoding (RocketMQ's proxy has the same two limits: 128 properties, 16 KiB).
    let user_bytes: usize = m
        .user_properties
        .iter()
        .map(|(k, v)| k.len() + v.len() + 2)
        .sum();
    if m.user_properties.len() > MAX_USER_PROPERTIES || user_bytes > limits.max_properties {
        return Err(bad(
            Code::MessagePropertiesTooLarge,
            format!(
                "{} user properties of {user_bytes} bytes; the limits are {MAX_USER_PROPERTIES} \
                 properties and {} bytes",
                m.user_properties.len(),
                limits.max_properties
            ),
        ));
    }
    let mut user: Vec<(&String, &String)> = m.user_properties.iter().collect();
    user.sort();
    for (k, v) in user {
        if k.is_empty() || has_separator(k) || has_separator(v) {
            return Err(bad(
                Code::IllegalMessagePropertyKey,
                format!("user property {k:?} is empty or holds a separator character"),
            ));
        }
        if RESERVED_KEYS.contains(&k.as_str()) {
            return Err(bad(
                Code::IllegalMessagePropertyKey,
                format!("user property `{k}` is a reserved system property"),
            ));
        }
        // Keys of a map are distinct and none is a system key (refused above): no search.
        p.0.push((k.clone(), v.clone()));
    }
    let properties = p.encode();
    if properties.len() > limits.max_properties {
        return Err(bad(
            Code::MessagePropertiesTooLarge,
            format!(
                "properties take {} bytes; the limit is {}",
                properties.len(),
                limits.max_properties
            ),
        ));
    }
    Ok(Outgoing {
        properties,
        body: m.body.clone(),
        born_ms: sys.born_timestamp.as_ref().map(millis).unwrap_or(now),
        group,
    })
}

/// Upper-case hex MD5 of `body` (the digest the official proxy sends).
pub fn md5_hex(body: &[u8]) -> String {
    format!("{:X}", md5::compute(body))
}

/// A popped record as the consumer sees it.
pub fn delivered(m: &StoredMessage, invisible_ms: i64) -> pb::Message {
    let props = Properties::parse(&m.properties).unwrap_or_default();
    let mut user = HashMap::new();
    for (k, v) in &props.0 {
        if !RESERVED_KEYS.contains(&k.as_str()) {
            user.insert(k.clone(), v.clone());
        }
    }
    let message_id = props
        .get(prop::UNIQ_KEY)
        .map(str::to_owned)
        .unwrap_or_else(|| message::offset_msg_id(m.store_host, m.physical_offset));
    let group = props.get(prop::SHARDING_KEY).map(str::to_owned);
    let delivery = props
        .get(prop::TIMER_DELIVER_MS)
        .or_else(|| props.get(prop::START_DELIVER_TIME))
        .and_then(|v| v.parse::<i64>().ok());
    let message_type = if group.is_some() {
        MessageType::Fifo
    } else if delivery.is_some() {
        MessageType::Delay
    } else {
        MessageType::Normal
    };
    pb::Message {
        topic: Some(pb::Resource {
            resource_namespace: String::new(),
            name: m.topic.clone(),
        }),
        user_properties: user,
        system_properties: Some(pb::SystemProperties {
            tag: props.tag().map(str::to_owned),
            keys: props.keys().map(str::to_owned).collect(),
            message_id,
            body_digest: Some(pb::Digest {
                r#type: DigestType::Md5 as i32,
                checksum: md5_hex(&m.body),
            }),
            body_encoding: Encoding::Identity as i32,
            message_type: message_type as i32,
            born_timestamp: Some(timestamp(m.born_timestamp)),
            born_host: m.born_host.to_string(),
            store_timestamp: Some(timestamp(m.store_timestamp)),
            store_host: m.store_host.to_string(),
            delivery_timestamp: delivery.map(timestamp),
            receipt_handle: props.get(prop::POP_CK).map(str::to_owned),
            queue_id: m.queue_id,
            queue_offset: Some(m.queue_offset),
            invisible_duration: Some(duration(invisible_ms)),
            delivery_attempt: Some(m.reconsume_times.saturating_add(1)),
            message_group: group,
            ..Default::default()
        }),
        body: Bytes::clone(&m.body),
    }
}
