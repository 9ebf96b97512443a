//! POP_MESSAGE (200050), ACK_MESSAGE (200051), BATCH_ACK_MESSAGE (200151),
//! CHANGE_MESSAGE_INVISIBLETIME (200053), UPDATE_AND_CREATE_SUBSCRIPTIONGROUP (200) and
//! CONSUMER_SEND_MSG_BACK (36) of popped messages to the dead-letter topic.
//!
//! Receipt handles travel in `extraInfo` (ack, change) and in each popped record's `POP_CK`
//! property; RocketMQ's `extraInfo` built from the POP answer's header is accepted too.
//! BATCH_ACK_MESSAGE takes rdmq's JSON body `{"consumerGroup": …, "receiptHandles": […]}`
//! (answered `{"results": [{"code": …, "remark": …}, …]}` in the same order) or RocketMQ's
//! `{"brokerName": …, "acks": [BatchAck…]}` (answered with one code).

use bytes::BytesMut;
use rdmq_transport::RemotingCommand;
use rdmq_transport::protocol::response_code;
use rdmq_transport::remoting::Request;
use std::time::Duration;

use super::{Broker, Fields, Reject, fail, ok, reply, store_failure};
use crate::filter::TagFilter;
use crate::pop::{GroupConfig, PopError, PopRequest, ReceiptHandle};

/// The response for a pop error.
pub(super) fn pop_failure(e: PopError) -> Reject {
    let code = match &e {
        PopError::UnknownGroup(_) => response_code::SUBSCRIPTION_GROUP_NOT_EXIST,
        PopError::UnknownTopic(_) => response_code::TOPIC_NOT_EXIST,
        PopError::Invalid(_) | PopError::BadHandle(_) => response_code::INVALID_PARAMETER,
        PopError::Expired(_) | PopError::Stale(_) => response_code::NO_MESSAGE,
        PopError::Store(s) => return store_failure(s.clone()),
    };
    fail(code, e.to_string())
}

pub(super) async fn pop(b: &Broker, req: Request) -> Result<RemotingCommand, Reject> {
    let f = Fields(&req.command);
    let exp_type = f.0.field("expType").unwrap_or("TAG");
    if !exp_type.eq_ignore_ascii_case("TAG") {
        return Err(fail(
            response_code::SUBSCRIPTION_NOT_EXIST,
            format!("expression type `{exp_type}` is not supported (only TAG)"),
        ));
    }
    let poll_ms: i64 = f.opt_num("pollTime")?.unwrap_or(0);
    let r = PopRequest {
        group: f.str("consumerGroup")?.to_owned(),
        topic: f.str("topic")?.to_owned(),
        queue: f.opt_num("queueId")?.unwrap_or(-1),
        max: f.num::<i64>("maxMsgNums")?.clamp(0, u32::MAX as i64) as u32,
        invisible_ms: f.num("invisibleTime")?,
        poll: Duration::from_millis(poll_ms.max(0) as u64),
        filter: TagFilter::parse(f.0.field("exp").unwrap_or("*")),
        fifo: f.0.field("order").is_some_and(|v| v == "true"),
    };
    let res = b.pop.pop(&r).await.map_err(pop_failure)?;
    // What RocketMQ clients and proxies build their receipt handles (`extraInfo`) from.
    let (start, offsets) = rdmq_protocol::handle::pop_offset_info(
        res.messages
            .iter()
            .map(|m| (m.handle.topic.as_str(), m.handle.queue, m.handle.offset)),
    );
    let header = |c: RemotingCommand| {
        let c = c
            .with_field("popTime", res.pop_time.to_string())
            .with_field("invisibleTime", res.invisible_ms.to_string())
            .with_field("reviveQid", "0")
            .with_field("restNum", res.rest.to_string());
        if start.is_empty() {
            c
        } else {
            c.with_field("startOffsetInfo", &start)
                .with_field("msgOffsetInfo", &offsets)
        }
    };
    if res.messages.is_empty() {
        let code = if poll_ms > 0 {
            response_code::POLLING_TIMEOUT
        } else {
            response_code::PULL_NOT_FOUND
        };
        return Ok(header(reply(code, "no new message")));
    }
    let mut body = BytesMut::with_capacity(res.messages.iter().map(|m| m.record.len()).sum());
    let own =
        f.0.field(rdmq_protocol::handle::OWN_HANDLES_FIELD)
            .is_some();
    for m in &res.messages {
        if own {
            body.extend_from_slice(&m.record);
        } else {
            // The checkpoint offset RocketMQ's handles carry: the pop's first offset on the
            // message's queue.
            let ck = res
                .messages
                .iter()
                .find(|o| o.handle.topic == m.handle.topic && o.handle.queue == m.handle.queue)
                .map_or(m.handle.offset, |o| o.handle.offset);
            foreign_record(&m.record, &m.handle, ck, &mut body)?;
        }
    }
    Ok(header(ok()).with_body(body.freeze()))
}

/// A popped record as RocketMQ's brokers deliver it: a message of the topic itself without
/// `POP_CK` (their clients build its handle from the answer's header, and cannot parse ours);
/// a retry copy, delivered under the original topic, with its RocketMQ `extraInfo` in `POP_CK`
/// (the header's offsets name the retry topic's queue, which the record does not show).
fn foreign_record(
    record: &bytes::Bytes,
    h: &ReceiptHandle,
    ck_offset: i64,
    out: &mut BytesMut,
) -> Result<(), Reject> {
    use rdmq_protocol::message::{self, NewMessage, Properties, prop};
    let bad = |e: String| fail(response_code::SYSTEM_ERROR, format!("popped record: {e}"));
    let m = message::decode_record(record).map_err(|e| bad(e.to_string()))?;
    let mut props = Properties::parse(&m.properties).map_err(|e| bad(e.to_string()))?;
    props.remove(prop::POP_CK);
    let retry = rdmq_protocol::ExtraInfo::retry_flag(&h.topic);
    if retry != 0 {
        let e = rdmq_protocol::ExtraInfo {
            ck_offset,
            pop_time: h.pop_time,
            invisible: h.invisible,
            revive_qid: 0,
            retry,
            broker: h.broker.clone(),
            queue: h.queue,
            offset: h.offset,
        };
        props.set(prop::POP_CK, e.to_string());
    }
    let mut nm = NewMessage::from_stored(&m, &m.topic, m.queue_id, props.encode());
    nm.reconsume_times = m.reconsume_times;
    message::encode_record_like(&nm, &m, out);
    Ok(())
}

/// The handle of an ACK or CHANGE request, checked against the header's offset: this
/// broker's own, or RocketMQ's `extraInfo` (translated to the delivery it names).
fn handle_of(b: &Broker, f: &Fields<'_>) -> Result<String, Reject> {
    let raw = f.str("extraInfo")?;
    let raw = match ReceiptHandle::parse(raw) {
        Ok(_) => raw.to_owned(),
        Err(own) => match rdmq_protocol::ExtraInfo::parse(raw) {
            Ok(e) => {
                let group = f.str("consumerGroup")?;
                let topic = e.stored_topic(f.str("topic")?, group);
                b.pop
                    .native_handle(group, &topic, &e)
                    .map_err(pop_failure)?
            }
            Err(_) => return Err(fail(response_code::INVALID_PARAMETER, own.to_string())),
        },
    };
    if let Some(off) = f.opt_num::<i64>("offset")? {
        let h = ReceiptHandle::parse(&raw)
            .map_err(|e| fail(response_code::INVALID_PARAMETER, e.to_string()))?;
        if h.offset != off {
            return Err(fail(
                response_code::INVALID_PARAMETER,
                format!(
                    "offset {off} does not match the receipt handle's offset {}",
                    h.offset
                ),
            ));
        }
    }
    Ok(raw)
}

pub(super) async fn ack(b: &Broker, req: Request) -> Result<RemotingCommand, Reject> {
    let f = Fields(&req.command);
    let group = f.str("consumerGroup")?;
    let handle = handle_of(b, &f)?;
    b.pop.ack(group, &handle).await.map_err(pop_failure)?;
    Ok(ok())
}

pub(super) async fn change_invisible(b: &Broker, req: Request) -> Result<RemotingCommand, Reject> {
    let f = Fields(&req.command);
    let group = f.str("consumerGroup")?;
    let handle = handle_of(b, &f)?;
    let invisible: i64 = f.num("invisibleTime")?;
    let new = b
        .pop
        .change_invisible(group, &handle, invisible)
        .await
        .map_err(pop_failure)?;
    Ok(ok()
        .with_field("popTime", new.pop_time.to_string())
        .with_field("invisibleTime", new.invisible.to_string())
        .with_field("reviveQid", "0")
        .with_field("receiptHandle", new.to_string()))
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct BatchAck {
    consumer_group: String,
    receipt_handles: Vec<String>,
}

/// RocketMQ's `BatchAckMessageRequestBody`: `{"brokerName", "acks": [{"c": group, "t": topic,
/// "r": retry flag, "so": start offset, "q": queue, "rq": revive queue, "pt": pop time,
/// "it": invisible time, "b": bit set}]}`, bit `i` acking offset `so + i`; the bit set is the
/// bytes of the set (least significant bit first) as a number array or a base64 string.
fn rocketmq_batch(b: &Broker, v: &serde_json::Value) -> Result<Vec<(String, String)>, Reject> {
    let bad = |m: String| fail(response_code::INVALID_PARAMETER, format!("batch ack: {m}"));
    let acks = v["acks"]
        .as_array()
        .ok_or_else(|| bad("`acks` is not a list".into()))?;
    let mut out = Vec::new();
    for a in acks {
        let rdmq_protocol::handle::BatchAckEntry {
            group,
            topic,
            retry,
            queue,
            start,
            pop_time,
        } = rdmq_protocol::handle::BatchAckEntry::parse(a).map_err(bad)?;
        let bits = match a.get("b").or_else(|| a.get("bitSet")) {
            Some(serde_json::Value::Array(x)) => x
                .iter()
                .map(|v| v.as_u64().filter(|b| *b < 256).map(|b| b as u8))
                .collect::<Option<Vec<u8>>>()
                .ok_or_else(|| bad("bit set bytes out of range".into()))?,
            Some(serde_json::Value::String(b64)) => {
                base64_decode(b64).ok_or_else(|| bad("bit set is not base64".into()))?
            }
            _ => return Err(bad("an ack lacks its bit set `b`".into())),
        };
        if bits.len() > 128 {
            return Err(bad(format!(
                "bit set of {} bytes (at most 128)",
                bits.len()
            )));
        }
        for (i, byte) in bits.iter().enumerate() {
            for j in 0..8 {
                if byte & (1 << j) == 0 {
                    continue;
                }
                let e = rdmq_protocol::ExtraInfo {
                    ck_offset: start,
                    pop_time,
                    invisible: 0,
                    revive_qid: 0,
                    retry,
                    broker: b.info.broker_name.clone(),
                    queue,
                    offset: start + (i * 8 + j) as i64,
                };
                let stored = e.stored_topic(topic, group);
                let h = b
                    .pop
                    .native_handle(group, &stored, &e)
                    .map_err(pop_failure)?;
                out.push((group.to_owned(), h));
            }
        }
    }
    if out.is_empty() || out.len() > 1024 {
        return Err(bad(format!(
            "a batch ack acks 1 to 1024 messages, got {}",
            out.len()
        )));
    }
    Ok(out)
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' | b'-' => Some(62),
        b'/' | b'_' => Some(63),
        _ => None,
    };
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut n) = (0u32, 0);
    for c in s.bytes().filter(|c| *c != b'=') {
        acc = (acc << 6) | u32::from(val(c)?);
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((acc >> n) as u8);
        }
    }
    Some(out)
}

pub(super) async fn batch_ack(b: &Broker, req: Request) -> Result<RemotingCommand, Reject> {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&req.command.body)
        && v.get("acks").is_some()
    {
        let acks = rocketmq_batch(b, &v)?;
        let mut by_group: Vec<(String, Vec<String>)> = Vec::new();
        for (g, h) in acks {
            match by_group.iter_mut().find(|(n, _)| *n == g) {
                Some((_, hs)) => hs.push(h),
                None => by_group.push((g, vec![h])),
            }
        }
        for (g, hs) in by_group {
            if let Some(Err(e)) = b
                .pop
                .ack_batch(&g, &hs)
                .await
                .into_iter()
                .find(|r| r.is_err())
            {
                return Err(pop_failure(e));
            }
        }
        return Ok(ok());
    }
    let batch: BatchAck = serde_json::from_slice(&req.command.body).map_err(|e| {
        fail(
            response_code::INVALID_PARAMETER,
            format!("batch ack body must be {{\"consumerGroup\", \"receiptHandles\"}} JSON: {e}"),
        )
    })?;
    if batch.receipt_handles.is_empty() || batch.receipt_handles.len() > 1024 {
        return Err(fail(
            response_code::INVALID_PARAMETER,
            format!(
                "a batch ack holds 1 to 1024 handles, got {}",
                batch.receipt_handles.len()
            ),
        ));
    }
    // One pop-log append and one durability wait for the whole batch.
    let results: Vec<serde_json::Value> = b
        .pop
        .ack_batch(&batch.consumer_group, &batch.receipt_handles)
        .await
        .into_iter()
        .map(|r| match r {
            Ok(()) => serde_json::json!({ "code": response_code::SUCCESS }),
            Err(e) => {
                let r = pop_failure(e);
                serde_json::json!({ "code": r.code, "remark": r.remark })
            }
        })
        .collect();
    Ok(ok().with_body(
        serde_json::json!({ "results": results })
            .to_string()
            .into_bytes(),
    ))
}

pub(super) async fn create_group(b: &Broker, req: Request) -> Result<RemotingCommand, Reject> {
    let v: serde_json::Value = serde_json::from_slice(&req.command.body).map_err(|e| {
        fail(
            response_code::INVALID_PARAMETER,
            format!("subscription group body is not JSON: {e}"),
        )
    })?;
    let name = v
        .get("groupName")
        .and_then(|n| n.as_str())
        .filter(|n| !n.is_empty() && !n.contains(char::is_whitespace))
        .ok_or_else(|| {
            fail(
                response_code::INVALID_PARAMETER,
                "subscription group body needs a groupName without spaces",
            )
        })?;
    let max_attempts = match v.get("retryMaxTimes") {
        None => b.info.pop.default_max_attempts,
        Some(n) => n
            .as_u64()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| {
                fail(
                    response_code::INVALID_PARAMETER,
                    "retryMaxTimes must be 1 to 1000",
                )
            })? as u32,
    };
    let fifo = match v.get("consumeMessageOrderly") {
        None => false,
        Some(serde_json::Value::Bool(b)) => *b,
        Some(_) => {
            return Err(fail(
                response_code::INVALID_PARAMETER,
                "consumeMessageOrderly must be true or false",
            ));
        }
    };
    b.pop
        .put_group(GroupConfig {
            name: name.to_owned(),
            max_attempts,
            fifo,
        })
        .map_err(store_failure)?;
    tracing::info!(
        group = name,
        max_attempts,
        fifo,
        "consumer group created or updated"
    );
    Ok(ok())
}

/// GET_SUBSCRIPTIONGROUP_CONFIG: RocketMQ's `SubscriptionGroupConfig` of a group (its
/// defaults where it was never configured and groups are created on first use).
pub(super) async fn group_config(b: &Broker, req: Request) -> Result<RemotingCommand, Reject> {
    let name = Fields(&req.command).str("group")?;
    let g = match b.pop.group(name) {
        Some(g) => g,
        None if b.info.pop.auto_create_groups => GroupConfig {
            name: name.to_owned(),
            max_attempts: b.info.pop.default_max_attempts,
            fifo: false,
        },
        None => {
            return Err(fail(
                response_code::SUBSCRIPTION_GROUP_NOT_EXIST,
                format!("consumer group `{name}` does not exist"),
            ));
        }
    };
    let body = serde_json::json!({
        "brokerId": 0,
        "consumeBroadcastEnable": true,
        "consumeEnable": true,
        "consumeFromMinEnable": true,
        "consumeMessageOrderly": g.fifo,
        "consumeTimeoutMinute": 15,
        "groupName": g.name,
        "groupSysFlag": 0,
        "notifyConsumerIdsChangedEnable": true,
        "retryMaxTimes": g.max_attempts,
        "retryQueueNums": 1,
        "whichBrokerWhenConsumeSlowly": 1,
    });
    Ok(ok().with_body(body.to_string().into_bytes()))
}

/// DELETE_SUBSCRIPTIONGROUP: the group's settings go (on the blocking pool: it is an fsync).
pub(super) async fn delete_group(b: &Broker, req: Request) -> Result<RemotingCommand, Reject> {
    let name = Fields(&req.command).str("groupName")?.to_owned();
    let pop = b.pop.clone();
    let n = name.clone();
    let existed = tokio::task::spawn_blocking(move || pop.delete_group(&n))
        .await
        .map_err(|e| {
            fail(
                response_code::SYSTEM_ERROR,
                format!("group deletion failed: {e}"),
            )
        })?
        .map_err(store_failure)?;
    if !existed {
        return Err(fail(
            response_code::SUBSCRIPTION_GROUP_NOT_EXIST,
            format!("consumer group `{name}` does not exist"),
        ));
    }
    tracing::info!(group = %name, "consumer group deleted");
    Ok(ok())
}

/// CONSUMER_SEND_MSG_BACK (36) for a popped message: with `delayLevel` -1 the message named
/// by the receipt handle in `extraInfo` goes to `%DLQ%<group>` now and its delivery ends
/// (the proxy's ForwardMessageToDeadLetterQueue). Offset-based send-back of PULL consumers
/// is not supported.
pub(super) async fn send_back(b: &Broker, req: Request) -> Result<RemotingCommand, Reject> {
    let f = Fields(&req.command);
    let group = f.str("group")?;
    let Some(handle) = f.0.field("extraInfo") else {
        return Err(fail(
            response_code::INVALID_PARAMETER,
            "send-back needs the receipt handle in extraInfo (offset-based send-back is not supported)",
        ));
    };
    let level: i32 = f.opt_num("delayLevel")?.unwrap_or(-1);
    if level != -1 {
        return Err(fail(
            response_code::INVALID_PARAMETER,
            format!("delayLevel {level} is not supported: only -1 (dead-letter now)"),
        ));
    }
    b.pop
        .dead_letter(group, handle)
        .await
        .map_err(pop_failure)?;
    Ok(ok())
}
