//! SEND_MESSAGE (10, long header names), SEND_MESSAGE_V2 (310, one-letter names) and
//! SEND_BATCH_MESSAGE (320).

use std::time::Duration;

use bytes::Bytes;
use rdmq_transport::RemotingCommand;
use rdmq_transport::protocol::{request_code as rc, response_code};
use rdmq_transport::remoting::Request;

use super::{Broker, Fields, Reject, fail, ok, parse_num, store_failure};
use crate::message::{self, HostAddr, NewMessage};
use crate::timer;

/// How long a send may wait for its flush before FLUSH_DISK_TIMEOUT.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) async fn send(b: &Broker, req: Request) -> Result<RemotingCommand, Reject> {
    let cmd = &req.command;
    let f = Fields(cmd);
    let topic = f.str2("b", "topic")?;
    if topic.starts_with("rmq_sys_") {
        // The pop log and the timer wheel are written by the broker only.
        return Err(fail(
            response_code::NO_PERMISSION,
            format!("topic `{topic}` is a system topic and cannot be sent to"),
        ));
    }
    let queues_hint = f.opt_num2("d", "defaultTopicQueueNums")?;
    let topic_cfg = b.topic_or_create(topic, queues_hint).await?;
    if topic_cfg.perm & crate::store::meta::PERM_WRITE == 0 {
        return Err(fail(
            response_code::NO_PERMISSION,
            format!(
                "topic `{topic}` is not writable on broker {}",
                b.info.broker_name
            ),
        ));
    }
    let queue_id: i32 = parse_num("queueId", f.str2("e", "queueId")?)?;
    let queue_id = if queue_id < 0 {
        (rand_u32() % topic_cfg.write_queues.max(1)) as i32
    } else {
        queue_id
    };
    if queue_id as u32 >= topic_cfg.write_queues {
        return Err(fail(
            response_code::SYSTEM_ERROR,
            format!(
                "queueId {queue_id} is illegal: topic `{topic}` has {} write queues",
                topic_cfg.write_queues
            ),
        ));
    }
    let sys_flag: i32 = f.opt_num2("f", "sysFlag")?.unwrap_or(0);
    let born: i64 = f.opt_num2("g", "bornTimestamp")?.unwrap_or(0);
    let flag: i32 = f.opt_num2("h", "flag")?.unwrap_or(0);
    let reconsume: i32 = f.opt_num2("j", "reconsumeTimes")?.unwrap_or(0);
    let properties = f.opt2("i", "properties").unwrap_or("");
    let batch =
        cmd.code == rc::SEND_BATCH_MESSAGE || f.opt2("m", "batch").is_some_and(|v| v == "true");
    let born_host = HostAddr::parse(&req.peer);
    let mut msgs = Vec::new();
    if batch {
        let entries = message::decode_batch(&cmd.body)
            .map_err(|e| fail(response_code::MESSAGE_ILLEGAL, format!("batch body: {e}")))?;
        if entries.is_empty() {
            return Err(fail(
                response_code::MESSAGE_ILLEGAL,
                "batch contains no messages",
            ));
        }
        for (mflag, body, props) in entries {
            msgs.push(new_message(
                topic, queue_id, mflag, sys_flag, born, born_host, reconsume, &props, body,
            )?);
        }
    } else {
        msgs.push(new_message(
            topic,
            queue_id,
            flag,
            sys_flag,
            born,
            born_host,
            reconsume,
            properties,
            cmd.body.clone(),
        )?);
    }
    // Timed and delayed messages wait in the timer topic until they are due.
    let now = crate::store::now_ms();
    for m in msgs.iter_mut() {
        match timer::deliver_at(&m.properties, now, b.info.timer.max_delay) {
            Ok(Some(at)) => *m = timer::park(m, at),
            Ok(None) => {}
            Err(e) => return Err(fail(response_code::MESSAGE_ILLEGAL, e.to_string())),
        }
    }
    let placed = b.store.append(&msgs).map_err(store_failure)?;
    let last = placed.last().expect("at least one message");
    if let Err(e) = b.store.wait_stored(last.end, FLUSH_TIMEOUT).await {
        let code = if b.store.config().flush == crate::store::FlushMode::Sync {
            response_code::FLUSH_DISK_TIMEOUT
        } else {
            response_code::SYSTEM_BUSY
        };
        return Err(fail(code, e.to_string()));
    }
    let host = b.store.config().store_host;
    let ids: Vec<String> = placed
        .iter()
        .map(|p| message::offset_msg_id(host, p.phys as i64))
        .collect();
    Ok(ok()
        .with_field("msgId", ids.join(","))
        .with_field("queueId", queue_id.to_string())
        .with_field("queueOffset", placed[0].queue_offset.to_string())
        .with_field("transactionId", "")
        .with_field("MSG_REGION", "DefaultRegion")
        .with_field("TRACE_ON", "true"))
}

#[allow(clippy::too_many_arguments)]
fn new_message(
    topic: &str,
    queue_id: i32,
    flag: i32,
    sys_flag: i32,
    born: i64,
    born_host: HostAddr,
    reconsume: i32,
    properties: &str,
    body: Bytes,
) -> Result<NewMessage, Reject> {
    message::scan_properties(properties, |_, _| {}).map_err(|e| {
        fail(
            response_code::MESSAGE_ILLEGAL,
            format!("invalid properties: {e}"),
        )
    })?;
    Ok(NewMessage {
        topic: topic.to_owned(),
        queue_id,
        flag,
        sys_flag,
        born_timestamp: born,
        born_host,
        reconsume_times: reconsume,
        properties: properties.to_owned(),
        body,
    })
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(crate::store::now_ms() as u64);
    h.finish() as u32
}
