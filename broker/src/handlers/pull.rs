//! PULL_MESSAGE (long polling, tag filters) and the offset requests: QUERY/UPDATE_CONSUMER_OFFSET,
//! GET_MAX/MIN_OFFSET, SEARCH_OFFSET_BY_TIMESTAMP.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use rdmq_transport::RemotingCommand;
use rdmq_transport::protocol::response_code;
use rdmq_transport::remoting::Request;

use super::{Broker, Fields, Reject, fail, ok, reply, store_failure};
use crate::filter::TagFilter;
use crate::message::{self, Properties};
use crate::store::meta::PERM_READ;

/// PULL sysFlag bits.
const FLAG_COMMIT_OFFSET: i32 = 0x1;
const FLAG_SUSPEND: i32 = 0x2;

/// Most messages and bytes one PULL returns.
const MAX_MESSAGES: usize = 1024;
const MAX_BYTES: usize = 8 << 20;

fn queue_checked(b: &Broker, topic: &str, queue: i32) -> Result<(), Reject> {
    let t = b.store.topic(topic).ok_or_else(|| {
        fail(
            response_code::TOPIC_NOT_EXIST,
            format!(
                "topic `{topic}` does not exist on broker {}",
                b.info.broker_name
            ),
        )
    })?;
    if queue < 0 || queue as u32 >= t.queues() {
        return Err(fail(
            response_code::SYSTEM_ERROR,
            format!(
                "queueId {queue} is illegal: topic `{topic}` has {} queues",
                t.queues()
            ),
        ));
    }
    if t.perm & PERM_READ == 0 {
        return Err(fail(
            response_code::NO_PERMISSION,
            format!("topic `{topic}` is not readable"),
        ));
    }
    Ok(())
}

pub(super) async fn pull(b: &Broker, req: Request) -> Result<RemotingCommand, Reject> {
    let f = Fields(&req.command);
    let group = f.str("consumerGroup")?.to_owned();
    let topic = f.str("topic")?.to_owned();
    let queue: i32 = f.num("queueId")?;
    let offset: i64 = f.num("queueOffset")?;
    let max: i32 = f.num("maxMsgNums")?;
    let sys_flag: i32 = f.opt_num("sysFlag")?.unwrap_or(0);
    let commit: i64 = f.opt_num("commitOffset")?.unwrap_or(-1);
    let suspend_ms: u64 = f.opt_num("suspendTimeoutMillis")?.unwrap_or(0);
    let expr_type = req.command.field("expressionType").unwrap_or("TAG");
    if !expr_type.eq_ignore_ascii_case("TAG") {
        return Err(fail(
            response_code::SUBSCRIPTION_NOT_EXIST,
            format!("expression type `{expr_type}` is not supported (only TAG)"),
        ));
    }
    let filter = TagFilter::parse(req.command.field("subscription").unwrap_or("*"));
    if max <= 0 {
        return Err(fail(
            response_code::SYSTEM_ERROR,
            format!("maxMsgNums must be positive, got {max}"),
        ));
    }
    queue_checked(b, &topic, queue)?;
    if sys_flag & FLAG_COMMIT_OFFSET != 0 && commit >= 0 {
        b.store.commit_offset(&group, &topic, queue, commit);
    }
    let deadline = Instant::now()
        + if sys_flag & FLAG_SUSPEND != 0 {
            Duration::from_millis(suspend_ms).min(b.info.max_long_poll)
        } else {
            Duration::ZERO
        };
    let cq = b
        .store
        .queue_or_create(&topic, queue)
        .map_err(store_failure)?;
    loop {
        // Registered before the check, so an arrival in between is not missed.
        let arrived = cq.arrival();
        let (min, max_off) = (cq.min_offset(), cq.max_offset());
        let header = |r: RemotingCommand, next: i64| {
            r.with_field("nextBeginOffset", next.to_string())
                .with_field("minOffset", min.to_string())
                .with_field("maxOffset", max_off.to_string())
                .with_field("suggestWhichBrokerId", "0")
        };
        if offset < min || offset > max_off {
            let next = if offset < min { min } else { max_off };
            return Ok(header(
                reply(
                    response_code::PULL_OFFSET_MOVED,
                    format!("offset {offset} is outside {min}..={max_off}"),
                ),
                next,
            ));
        }
        if offset < max_off {
            let (body, next, count) = collect(
                b,
                &topic,
                queue,
                offset,
                (max as usize).min(MAX_MESSAGES),
                &filter,
            )?;
            if count > 0 {
                return Ok(header(ok().with_body(body), next));
            }
            if next > offset {
                // Everything in range was filtered out: move the consumer past it.
                return Ok(header(
                    reply(
                        response_code::PULL_RETRY_IMMEDIATELY,
                        "no message matched the subscription",
                    ),
                    next,
                ));
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(header(
                reply(response_code::PULL_NOT_FOUND, "no new message"),
                offset,
            ));
        }
        if tokio::time::timeout(left, arrived).await.is_ok() {
            b.store.count_poll_wakeup();
        }
    }
}

/// Records from `offset`, filtered; returns (body, next offset, messages).
fn collect(
    b: &Broker,
    topic: &str,
    queue: i32,
    offset: i64,
    max: usize,
    filter: &TagFilter,
) -> Result<(bytes::Bytes, i64, usize), Reject> {
    let q = b.store.queue(topic, queue).expect("queue checked");
    let mut body = BytesMut::new();
    let mut next = offset;
    let mut count = 0;
    for (off, e) in q.entries_from(offset, max * 4) {
        if count >= max || body.len() >= MAX_BYTES {
            break;
        }
        next = off + 1;
        if !filter.may_match(e.tag_hash) {
            continue;
        }
        let rec = b.store.read_entry(&e).map_err(store_failure)?;
        if filter.is_selective() {
            let m = message::decode_record(&rec)
                .map_err(|e| fail(response_code::SYSTEM_ERROR, e.to_string()))?;
            let props = Properties::parse(&m.properties).unwrap_or_default();
            if !filter.matches(props.tag()) {
                continue;
            }
        }
        body.extend_from_slice(&rec);
        count += 1;
    }
    Ok((body.freeze(), next, count))
}

/// The request's `topic` and `queueId`, checked to exist and be readable.
fn checked_queue<'a>(b: &Broker, f: &Fields<'a>) -> Result<(&'a str, i32), Reject> {
    let topic = f.str("topic")?;
    let queue: i32 = f.num("queueId")?;
    queue_checked(b, topic, queue)?;
    Ok((topic, queue))
}

pub(super) async fn query_consumer_offset(
    b: &Broker,
    req: Request,
) -> Result<RemotingCommand, Reject> {
    let f = Fields(&req.command);
    let group = f.str("consumerGroup")?;
    let (topic, queue) = checked_queue(b, &f)?;
    // Pull consumers commit offsets; Pop consumers' progress is their acked frontier.
    let committed = b
        .store
        .committed_offset(group, topic, queue)
        .or_else(|| b.pop.progress(group, topic, queue));
    match committed {
        Some(o) => Ok(ok().with_field("offset", o.to_string())),
        // A new group on a queue that still holds its first message starts at the beginning.
        None if b.store.offsets(topic, queue).0 == 0 => Ok(ok().with_field("offset", "0")),
        None => Err(fail(
            response_code::QUERY_NOT_FOUND,
            format!("no offset committed by group `{group}` on {topic}@{queue}"),
        )),
    }
}

pub(super) async fn update_consumer_offset(
    b: &Broker,
    req: Request,
) -> Result<RemotingCommand, Reject> {
    let f = Fields(&req.command);
    let group = f.str("consumerGroup")?;
    let (topic, queue) = checked_queue(b, &f)?;
    let offset: i64 = f.num("commitOffset")?;
    if offset < 0 {
        return Err(fail(
            response_code::SYSTEM_ERROR,
            format!("commitOffset {offset} is negative"),
        ));
    }
    b.store.commit_offset(group, topic, queue, offset);
    Ok(ok())
}

/// INVOKE_BROKER_TO_RESET_OFFSET (222): moves `group`'s offsets on `topic` to `offset` (one
/// queue, `queueId` and `offset` given, as rdmq-admin and RocketMQ 5's tools send it) or to the
/// first message stored at or after `timestamp` (the queue given, or every queue). Where the
/// group pops, its pop cursor moves and what it had in flight there is forgotten; elsewhere its
/// committed offset moves (pull consumers keep offsets in memory: stopped first, or they
/// commit theirs over it). Answers RocketMQ's `{"offsetTable": {queue: offset}}`.
pub(super) async fn reset_offset(b: &Broker, req: Request) -> Result<RemotingCommand, Reject> {
    let f = Fields(&req.command);
    let group = f.str("group")?;
    let topic = f.str("topic")?;
    let queue: i32 = f.opt_num("queueId")?.unwrap_or(-1);
    let offset: Option<i64> = f.opt_num("offset")?.filter(|o: &i64| *o >= 0);
    let timestamp: Option<i64> = f.opt_num("timestamp")?;
    let queues: Vec<i32> = if queue >= 0 {
        queue_checked(b, topic, queue)?;
        vec![queue]
    } else {
        queue_checked(b, topic, 0)?;
        let n = b.store.topic(topic).map_or(0, |t| t.queues()) as i32;
        (0..n).collect()
    };
    let mut table = Vec::new();
    for q in queues {
        let (min, max) = b.store.offsets(topic, q);
        let new = match (offset.filter(|_| queue >= 0), timestamp) {
            (Some(o), _) => o.clamp(min, max),
            (None, Some(ts)) => b
                .store
                .search_offset_by_time(topic, q, ts)
                .map_err(store_failure)?,
            (None, None) => {
                return Err(fail(
                    response_code::SYSTEM_ERROR,
                    "a reset needs `timestamp`, or `queueId` and `offset`",
                ));
            }
        };
        if b.pop.pops_on(group, topic, q) {
            b.pop
                .reset(group, topic, q, new)
                .await
                .map_err(super::pop::pop_failure)?;
        } else {
            b.store.commit_offset(group, topic, q, new);
        }
        table.push(format!(
            "{{\"brokerName\":{},\"queueId\":{q},\"topic\":{}}}:{new}",
            serde_json::Value::from(b.info.broker_name.as_str()),
            serde_json::Value::from(topic)
        ));
    }
    Ok(ok().with_body(format!("{{\"offsetTable\":{{{}}}}}", table.join(",")).into_bytes()))
}

pub(super) async fn max_offset(b: &Broker, req: Request) -> Result<RemotingCommand, Reject> {
    let f = Fields(&req.command);
    let (topic, queue) = checked_queue(b, &f)?;
    Ok(ok().with_field("offset", b.store.offsets(topic, queue).1.to_string()))
}

pub(super) async fn min_offset(b: &Broker, req: Request) -> Result<RemotingCommand, Reject> {
    let f = Fields(&req.command);
    let (topic, queue) = checked_queue(b, &f)?;
    Ok(ok().with_field("offset", b.store.offsets(topic, queue).0.to_string()))
}

pub(super) async fn search_offset_by_timestamp(
    b: &Broker,
    req: Request,
) -> Result<RemotingCommand, Reject> {
    let f = Fields(&req.command);
    let (topic, queue) = checked_queue(b, &f)?;
    let ts: i64 = f.num("timestamp")?;
    let off = b
        .store
        .search_offset_by_time(topic, queue, ts)
        .map_err(store_failure)?;
    Ok(ok().with_field("offset", off.to_string()))
}
