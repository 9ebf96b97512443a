//! UPDATE_AND_CREATE_TOPIC, UPDATE_AND_CREATE_TOPIC_LIST, VIEW_MESSAGE_BY_ID, QUERY_MESSAGE, HEART_BEAT, UNREGISTER_CLIENT,
//! GET_CONSUMER_LIST_BY_GROUP and
//! GET_ROUTEINFO_BY_TOPIC (so one broker also serves remoting clients directly).

use crate::poison::OrAbort;
use rdmq_transport::RemotingCommand;
use rdmq_transport::protocol::response_code;
use rdmq_transport::remoting::Request;

use super::route::topic_route_json;
use super::{Broker, ClientInfo, Fields, Reject, fail, ok, store_failure};
use crate::store::meta::{PERM_READ, PERM_WRITE, TopicConfig};

pub(super) async fn update_and_create_topic(
    b: &Broker,
    req: Request,
) -> Result<RemotingCommand, Reject> {
    let f = Fields(&req.command);
    let name = f.str("topic")?;
    let read: u32 = f.opt_num("readQueueNums")?.unwrap_or(b.info.default_queues);
    let write: u32 = f.opt_num("writeQueueNums")?.unwrap_or(read);
    let perm: u32 = f.opt_num("perm")?.unwrap_or(PERM_READ | PERM_WRITE);
    let sys_flag: u32 = f.opt_num("topicSysFlag")?.unwrap_or(0);
    if perm & !(PERM_READ | PERM_WRITE | 1) != 0 {
        return Err(fail(
            response_code::SYSTEM_ERROR,
            format!("perm {perm} is not a valid permission"),
        ));
    }
    let mut topic = b
        .store
        .topic(name)
        .unwrap_or_else(|| TopicConfig::new(name, read));
    topic.read_queues = read;
    topic.write_queues = write;
    topic.perm = perm;
    topic.sys_flag = sys_flag;
    b.store.put_topic_async(topic).await.map_err(|e| match e {
        crate::store::StoreError::Illegal(msg) => fail(response_code::SYSTEM_ERROR, msg),
        other => store_failure(other),
    })?;
    tracing::info!(topic = name, read, write, perm, "topic created or updated");
    Ok(ok())
}

/// DELETE_TOPIC_IN_BROKER: the topic's configuration goes (its messages age out).
pub(super) async fn delete_topic(b: &Broker, req: Request) -> Result<RemotingCommand, Reject> {
    let name = Fields(&req.command).str("topic")?.to_owned();
    let store = b.store.clone();
    let n = name.clone();
    let existed = tokio::task::spawn_blocking(move || store.delete_topic(&n))
        .await
        .map_err(|e| {
            fail(
                response_code::SYSTEM_ERROR,
                format!("topic deletion failed: {e}"),
            )
        })?
        .map_err(store_failure)?;
    if !existed {
        return Err(fail(
            response_code::TOPIC_NOT_EXIST,
            format!(
                "topic `{name}` does not exist on broker {}",
                b.info.broker_name
            ),
        ));
    }
    tracing::info!(topic = %name, "topic deleted");
    Ok(ok())
}

/// Most topics one UPDATE_AND_CREATE_TOPIC_LIST may carry.
pub const MAX_TOPIC_LIST: usize = 10_000;

/// One entry of RocketMQ's `CreateTopicListRequestBody.topicConfigList`.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListedTopic {
    topic_name: String,
    read_queue_nums: Option<u32>,
    write_queue_nums: Option<u32>,
    perm: Option<u32>,
    topic_sys_flag: Option<u32>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct TopicList {
    topic_config_list: Vec<ListedTopic>,
}

/// Creates or updates many topics with one durable write (the body is RocketMQ's
/// `{"topicConfigList":[{"topicName":…,"readQueueNums":…,"writeQueueNums":…,"perm":…}]}`);
/// all or nothing: one invalid entry refuses the request.
pub(super) async fn update_and_create_topic_list(
    b: &Broker,
    req: Request,
) -> Result<RemotingCommand, Reject> {
    // Thousands of entries: parsed on the blocking pool, not on a thread serving sends.
    let body = req.command.body.clone();
    let list: TopicList = tokio::task::spawn_blocking(move || serde_json::from_slice(&body))
        .await
        .map_err(|e| fail(response_code::SYSTEM_ERROR, format!("topic list: {e}")))?
        .map_err(|e| {
            fail(
                response_code::SYSTEM_ERROR,
                format!("body is not a topic list (topicConfigList): {e}"),
            )
        })?;
    if list.topic_config_list.is_empty() || list.topic_config_list.len() > MAX_TOPIC_LIST {
        return Err(fail(
            response_code::SYSTEM_ERROR,
            format!(
                "a topic list holds 1 to {MAX_TOPIC_LIST} topics, this one {}",
                list.topic_config_list.len()
            ),
        ));
    }
    let mut topics = Vec::with_capacity(list.topic_config_list.len());
    for t in list.topic_config_list {
        let read = t.read_queue_nums.unwrap_or(b.info.default_queues);
        let perm = t.perm.unwrap_or(PERM_READ | PERM_WRITE);
        if perm & !(PERM_READ | PERM_WRITE | 1) != 0 {
            return Err(fail(
                response_code::SYSTEM_ERROR,
                format!(
                    "perm {perm} of topic `{}` is not a valid permission",
                    t.topic_name
                ),
            ));
        }
        let mut topic = b
            .store
            .topic(&t.topic_name)
            .unwrap_or_else(|| TopicConfig::new(&t.topic_name, read));
        topic.read_queues = read;
        topic.write_queues = t.write_queue_nums.unwrap_or(read);
        topic.perm = perm;
        topic.sys_flag = t.topic_sys_flag.unwrap_or(0);
        topics.push(topic);
    }
    let n = topics.len();
    b.store
        .put_topics_async(topics)
        .await
        .map_err(|e| match e {
            crate::store::StoreError::Illegal(msg) => fail(response_code::SYSTEM_ERROR, msg),
            other => store_failure(other),
        })?;
    tracing::info!(topics = n, "topics created or updated");
    Ok(ok())
}

/// Most messages one QUERY_MESSAGE returns.
pub const MAX_QUERY_MESSAGES: usize = 64;

/// Messages of `topic` by key (`KEYS`) or, with `_UNIQUE_KEY_QUERY=true`, by client message id
/// (`UNIQ_KEY`), stored between `beginTimestamp` and `endTimestamp` (ms; 0 = unbounded), at
/// most `maxNum`: the records concatenated in the body, QUERY_NOT_FOUND when none matches.
pub(super) async fn query_message(b: &Broker, req: Request) -> Result<RemotingCommand, Reject> {
    use crate::message::{Properties, decode_record, prop};
    let f = Fields(&req.command);
    let topic = f.str("topic")?;
    let key = f.str("key")?;
    let max = f
        .opt_num::<usize>("maxNum")?
        .unwrap_or(32)
        .clamp(1, MAX_QUERY_MESSAGES);
    let begin: i64 = f.opt_num("beginTimestamp")?.unwrap_or(0);
    let end = match f.opt_num::<i64>("endTimestamp")? {
        Some(e) if e > 0 => e,
        _ => i64::MAX,
    };
    let unique = f
        .opt2("_UNIQUE_KEY_QUERY", "_UNIQUE_KEY_QUERY")
        .is_some_and(|v| v == "true");
    let mut body = bytes::BytesMut::new();
    let mut found = 0;
    for off in b.store.lookup(key) {
        if found >= max {
            break;
        }
        let Ok(record) = b.store.read_frame(off) else {
            continue;
        };
        let Ok(m) = decode_record(&record) else {
            continue;
        };
        if m.topic != topic || m.store_timestamp < begin || m.store_timestamp > end {
            continue;
        }
        let Ok(props) = Properties::parse(&m.properties) else {
            continue;
        };
        let by_id = props.get(prop::UNIQ_KEY) == Some(key);
        let by_key = props
            .get(prop::KEYS)
            .is_some_and(|ks| ks.split(' ').any(|k| k == key));
        if by_id || (!unique && by_key) {
            body.extend_from_slice(&record);
            found += 1;
        }
    }
    if found == 0 {
        return Err(fail(
            response_code::QUERY_NOT_FOUND,
            format!("no message of topic `{topic}` has key `{key}`"),
        ));
    }
    Ok(ok()
        .with_field(
            "indexLastUpdateTimestamp",
            crate::store::now_ms().to_string(),
        )
        .with_field("indexLastUpdatePhyoffset", b.store.log_end().to_string())
        .with_body(body.freeze()))
}

pub(super) async fn view_message_by_id(
    b: &Broker,
    req: Request,
) -> Result<RemotingCommand, Reject> {
    let f = Fields(&req.command);
    let offset: i64 = f.num("offset")?;
    if offset < 0 {
        return Err(fail(
            response_code::SYSTEM_ERROR,
            format!("offset {offset} is negative"),
        ));
    }
    let record = b.store.read_frame(offset as u64).map_err(|e| {
        fail(
            response_code::SYSTEM_ERROR,
            format!("cannot find the message: {e}"),
        )
    })?;
    Ok(ok().with_body(record))
}

pub(super) async fn heart_beat(b: &Broker, req: Request) -> Result<RemotingCommand, Reject> {
    let body: serde_json::Value = if req.command.body.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&req.command.body).map_err(|e| {
            fail(
                response_code::SYSTEM_ERROR,
                format!("heartbeat body is not JSON: {e}"),
            )
        })?
    };
    let id = body
        .get("clientID")
        .and_then(|v| v.as_str())
        .unwrap_or(&req.peer)
        .to_owned();
    let groups = |key: &str| -> Vec<String> {
        body.get(key)
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|g| {
                        g.get("groupName")
                            .and_then(|n| n.as_str())
                            .map(str::to_owned)
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let info = ClientInfo {
        producer_groups: groups("producerDataSet"),
        consumer_groups: groups("consumerDataSet"),
        last_seen: crate::store::now_ms(),
    };
    b.clients
        .lock()
        .or_abort("the client registry")
        .insert(id, info);
    Ok(ok())
}

pub(super) async fn unregister_client(b: &Broker, req: Request) -> Result<RemotingCommand, Reject> {
    if let Some(id) = req.command.field("clientID") {
        b.clients.lock().or_abort("the client registry").remove(id);
    }
    Ok(ok())
}

/// Clients that have not sent a heartbeat for this long no longer count as group members.
const CLIENT_EXPIRY_MS: i64 = 120_000;

pub(super) async fn consumer_list_by_group(
    b: &Broker,
    req: Request,
) -> Result<RemotingCommand, Reject> {
    let f = Fields(&req.command);
    let group = f.str("consumerGroup")?;
    let now = crate::store::now_ms();
    let mut clients = b.clients.lock().or_abort("the client registry");
    clients.retain(|_, c| now - c.last_seen <= CLIENT_EXPIRY_MS);
    let mut ids: Vec<&String> = clients
        .iter()
        .filter(|(_, c)| c.consumer_groups.iter().any(|g| g == group))
        .map(|(id, _)| id)
        .collect();
    ids.sort();
    if ids.is_empty() {
        return Err(fail(
            response_code::SYSTEM_ERROR,
            format!("no consumer of group `{group}` is online"),
        ));
    }
    let body = serde_json::json!({ "consumerIdList": ids });
    Ok(ok().with_body(body.to_string().into_bytes()))
}

/// GET_BROKER_RUNTIME_INFO: RocketMQ's `KVTable` of broker facts (proxies probe it at start,
/// admin tools show it).
pub(super) async fn runtime_info(b: &Broker, _req: Request) -> Result<RemotingCommand, Reject> {
    let now = crate::store::now_ms();
    let table = serde_json::json!({ "table": {
        "brokerVersionDesc": "V5_3_3",
        "brokerVersion": rdmq_transport::codec::RDMQ_VERSION.to_string(),
        "brokerName": b.info.broker_name,
        "clusterName": b.info.cluster_name,
        "bootTimestamp": b.boot_ms.to_string(),
        "runtime": format!("{} s", (now - b.boot_ms) / 1000),
        "commitLogMinOffset": b.store.log_start().to_string(),
        "commitLogMaxOffset": b.store.log_end().to_string(),
        "topicCount": b.store.topics().len().to_string(),
        "popInFlight": b.pop.in_flight().to_string(),
    }});
    Ok(ok().with_body(table.to_string().into_bytes()))
}

/// GET_TOPIC_CONFIG: RocketMQ's `TopicConfigAndQueueMapping` (no static-topic mapping).
pub(super) async fn topic_config(b: &Broker, req: Request) -> Result<RemotingCommand, Reject> {
    let name = Fields(&req.command).str("topic")?;
    let t = b.store.topic(name).ok_or_else(|| {
        fail(
            response_code::TOPIC_NOT_EXIST,
            format!(
                "topic `{name}` does not exist on broker {}",
                b.info.broker_name
            ),
        )
    })?;
    let body = serde_json::json!({
        "attributes": {},
        "order": false,
        "perm": t.perm,
        "readQueueNums": t.read_queues,
        "topicFilterType": "SINGLE_TAG",
        "topicName": t.name,
        "topicSysFlag": t.sys_flag,
        "writeQueueNums": t.write_queues,
    });
    Ok(ok().with_body(body.to_string().into_bytes()))
}

pub(super) async fn route_info(b: &Broker, req: Request) -> Result<RemotingCommand, Reject> {
    let f = Fields(&req.command);
    let name = f.str("topic")?;
    if crate::store::validate_topic_name(name).is_err() {
        return Err(fail(
            response_code::TOPIC_NOT_EXIST,
            format!("no route for invalid topic name `{name}`"),
        ));
    }
    let topic = b.topic_or_create(name, None).await?;
    let json = topic_route_json(
        &topic,
        &b.info.broker_name,
        &b.info.cluster_name,
        &b.info.advertise,
    );
    Ok(ok().with_body(json.into_bytes()))
}
