//! UPDATE_AND_CREATE_TOPIC, VIEW_MESSAGE_BY_ID, HEART_BEAT, UNREGISTER_CLIENT,
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
    b.store.put_topic(topic).map_err(|e| match e {
        crate::store::StoreError::Illegal(msg) => fail(response_code::SYSTEM_ERROR, msg),
        other => store_failure(other),
    })?;
    tracing::info!(topic = name, read, write, perm, "topic created or updated");
    Ok(ok())
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

pub(super) async fn route_info(b: &Broker, req: Request) -> Result<RemotingCommand, Reject> {
    let f = Fields(&req.command);
    let name = f.str("topic")?;
    if crate::store::validate_topic_name(name).is_err() {
        return Err(fail(
            response_code::TOPIC_NOT_EXIST,
            format!("no route for invalid topic name `{name}`"),
        ));
    }
    let topic = b.topic_or_create(name, None)?;
    let json = topic_route_json(
        &topic,
        &b.info.broker_name,
        &b.info.cluster_name,
        &b.info.advertise,
    );
    Ok(ok().with_body(json.into_bytes()))
}
