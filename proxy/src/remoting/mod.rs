//! The proxy's remoting endpoint (8080 by default), for RocketMQ 4.x/5.x remoting clients that
//! use it as their name server: routes name the proxy itself as one broker whose queues are
//! every broker's queues in a row ([`layout`]); sends, pulls and consumer offsets are forwarded
//! to the broker owning the queue over the configured transport, with queue ids translated
//! both ways; heartbeats and client unregistrations go to every broker, consumer lists are
//! merged from all, and send-backs follow the store host in the message id; Pop and its
//! acks are forwarded with queue ids and receipt handles translated ([`pop`]).

pub mod layout;
mod pop;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use bytes::Bytes;
use rdmq_protocol::route::{BrokerData, QueueData, TopicRoute};
use rdmq_transport::protocol::{request_code as rc, response_code as code};
use rdmq_transport::remoting::{Request, Router, Server, ServerConfig, ServerHandle};
use rdmq_transport::{AnyTransport, Endpoint, RemotingCommand, Transport, TransportError};

use crate::cluster::{BrokerRef, Cluster};
use crate::error::{ProxyError, Refusal};
use crate::pb::Code;
use layout::Layout;

/// The broker name remoting clients see: the proxy presents the cluster as one broker.
pub const VIRTUAL_BROKER: &str = "rdmq-proxy";
/// Cluster name in the routes it answers.
const VIRTUAL_CLUSTER: &str = "rdmq";

struct Front {
    cluster: Arc<Cluster>,
    /// The `host:port` remoting clients are told to send to.
    addr: String,
    /// Rotates the broker an any-queue pop looks at first.
    next: AtomicUsize,
}

fn reply(c: i32, remark: impl Into<String>) -> Refusal {
    Refusal::new(c, remark)
}

fn refused(e: &ProxyError) -> Refusal {
    let c = match e.code {
        Code::TopicNotFound => code::TOPIC_NOT_EXIST,
        Code::TooManyRequests => code::SYSTEM_BUSY,
        _ => code::SYSTEM_ERROR,
    };
    Refusal::new(c, e.message.clone())
}

fn field<'a>(cmd: &'a RemotingCommand, short: &str, long: &str) -> Result<&'a str, Refusal> {
    cmd.field(short)
        .or_else(|| cmd.field(long))
        .ok_or_else(|| reply(code::SYSTEM_ERROR, format!("missing header field `{long}`")))
}

fn set_field(cmd: &mut RemotingCommand, short: &str, long: &str, value: &str) {
    let fields = cmd.ext_fields.get_or_insert_with(Default::default);
    let key = if fields.get(short).is_some() {
        short
    } else {
        long
    };
    fields.insert(key, value);
}

/// A copy of the client's request to forward: a response is always awaited (a one-way
/// offset update included), so the forward is bounded like every call.
fn forwarded(cmd: &RemotingCommand) -> RemotingCommand {
    let mut out = cmd.clone();
    out.flag = 0;
    out.opaque = 0;
    out
}

impl Front {
    async fn layout(&self, topic: &str) -> Result<Layout, Refusal> {
        let route = match self.cluster.route(topic).await {
            // A consumer group's retry topic exists once its brokers create it (they
            // register it within a second): ask them directly the first time.
            Err(e)
                if e.code == Code::TopicNotFound
                    && topic.starts_with(rdmq_protocol::names::RETRY_PREFIX) =>
            {
                self.cluster.route_via_brokers(topic).await
            }
            r => r,
        }
        .map_err(|e| refused(&e))?;
        let l = Layout::of(&route);
        if l.total() == 0 {
            return Err(reply(
                code::TOPIC_NOT_EXIST,
                format!("topic `{topic}` has no queues on a live broker"),
            ));
        }
        Ok(l)
    }

    async fn route_info(&self, cmd: &RemotingCommand) -> Result<RemotingCommand, Refusal> {
        let topic = field(cmd, "topic", "topic")?;
        let l = self.layout(topic).await?;
        let n = l.total() as u32;
        let route = TopicRoute {
            brokers: vec![BrokerData {
                cluster: VIRTUAL_CLUSTER.into(),
                name: VIRTUAL_BROKER.into(),
                addrs: [(0, self.addr.clone())].into(),
                endpoints: Vec::new(),
            }],
            queues: vec![QueueData {
                broker_name: VIRTUAL_BROKER.into(),
                read_queues: n,
                write_queues: n,
                perm: 6,
                sys_flag: 0,
            }],
        };
        Ok(RemotingCommand::response(code::SUCCESS, None)
            .with_body(route.to_json(false).into_bytes()))
    }

    /// Forwards a request naming a topic and a queue to the queue's broker.
    async fn by_queue(
        &self,
        cmd: &RemotingCommand,
        topic_key: (&str, &str),
        queue_key: (&str, &str),
    ) -> Result<RemotingCommand, Refusal> {
        let topic = field(cmd, topic_key.0, topic_key.1)?.to_owned();
        let raw = field(cmd, queue_key.0, queue_key.1)?;
        let vq: i32 = raw.trim().parse().map_err(|_| {
            reply(
                code::SYSTEM_ERROR,
                format!("header field `{}` is not a number: `{raw}`", queue_key.1),
            )
        })?;
        let l = self.layout(&topic).await?;
        let (part, rq) = l.real(vq).ok_or_else(|| {
            reply(
                code::SYSTEM_ERROR,
                format!(
                    "queue {vq} of topic `{topic}` does not exist (it has {})",
                    l.total()
                ),
            )
        })?;
        let mut req = forwarded(cmd);
        set_field(&mut req, queue_key.0, queue_key.1, &rq.to_string());
        let timeout = match cmd.code {
            rc::PULL_MESSAGE | rc::LITE_PULL_MESSAGE => {
                let suspend: u64 = cmd
                    .field("suspendTimeoutMillis")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                Some(Duration::from_millis(suspend) + self.cluster.call_timeout())
            }
            _ => None,
        };
        let mut resp = self
            .cluster
            .call_broker(&part.name, &part.endpoint, req, timeout)
            .await
            .map_err(|e| {
                self.cluster.invalidate(&topic);
                refused(&e)
            })?;
        if let Some(q) = resp.field("queueId").and_then(|q| q.parse::<i32>().ok())
            && let Some(v) = l.virtual_of(&part.name, q)
        {
            set_field(&mut resp, "queueId", "queueId", &v.to_string());
        }
        if matches!(cmd.code, rc::PULL_MESSAGE | rc::LITE_PULL_MESSAGE) && !resp.body.is_empty() {
            let mut body = resp.body.to_vec();
            rdmq_protocol::message::map_record_queue_ids(&mut body, |q| {
                l.virtual_of(&part.name, q).unwrap_or(q)
            })
            .map_err(|e| reply(code::SYSTEM_ERROR, format!("broker {}: {e}", part.name)))?;
            resp.body = Bytes::from(body);
        }
        Ok(resp)
    }

    async fn brokers(&self) -> Result<Vec<BrokerRef>, Refusal> {
        self.cluster.all_brokers().await.map_err(|e| refused(&e))
    }

    /// Sends the request to every broker; their answers, successes first.
    async fn broadcast(&self, cmd: &RemotingCommand) -> Result<Vec<RemotingCommand>, Refusal> {
        let brokers = self.brokers().await?;
        if brokers.is_empty() {
            return Err(reply(code::SYSTEM_ERROR, "no live broker"));
        }
        let calls = brokers.iter().map(|b| {
            self.cluster
                .call_broker(&b.name, &b.endpoint, forwarded(cmd), None)
        });
        let mut answers: Vec<RemotingCommand> = crate::cluster::join_all(calls)
            .await
            .into_iter()
            .map(|r| r.unwrap_or_else(|e| refused(&e).into_response()))
            .collect();
        answers.sort_by_key(|r| r.code != code::SUCCESS);
        Ok(answers)
    }

    async fn to_all(&self, cmd: &RemotingCommand) -> Result<RemotingCommand, Refusal> {
        let mut answers = self.broadcast(cmd).await?;
        Ok(answers.swap_remove(0))
    }

    async fn consumer_list(&self, cmd: &RemotingCommand) -> Result<RemotingCommand, Refusal> {
        let answers = self.broadcast(cmd).await?;
        let mut ids = BTreeSet::new();
        let mut any = false;
        for a in answers.iter().filter(|a| a.code == code::SUCCESS) {
            any = true;
            let v = rdmq_protocol::route::parse_json(&a.body, "consumer list")
                .map_err(|e| reply(code::SYSTEM_ERROR, e.to_string()))?;
            if let Some(list) = v.get("consumerIdList").and_then(|l| l.as_array()) {
                ids.extend(list.iter().filter_map(|i| i.as_str()).map(str::to_owned));
            }
        }
        if !any {
            return Ok(answers.into_iter().next().expect("at least one broker"));
        }
        let ids: Vec<String> = ids.into_iter().collect();
        let body = serde_json::json!({ "consumerIdList": ids }).to_string();
        Ok(RemotingCommand::response(code::SUCCESS, None).with_body(body.into_bytes()))
    }

    /// CONSUMER_SEND_MSG_BACK goes to the broker that stored the message, named by the store
    /// host in its offset message id.
    async fn send_back(&self, cmd: &RemotingCommand) -> Result<RemotingCommand, Refusal> {
        let id = field(cmd, "originMsgId", "originMsgId")?;
        let (host, _) = rdmq_protocol::message::offset_msg_id_parts(id).ok_or_else(|| {
            reply(
                code::SYSTEM_ERROR,
                format!("originMsgId `{id}` is not an offset message id"),
            )
        })?;
        let brokers = self.brokers().await?;
        let b = brokers.iter().find(|b| b.addr == host).ok_or_else(|| {
            reply(
                code::SYSTEM_ERROR,
                format!("no live broker stores at {host}"),
            )
        })?;
        self.cluster
            .call_broker(&b.name, &b.endpoint, forwarded(cmd), None)
            .await
            .map_err(|e| refused(&e))
    }

    async fn handle(&self, cmd: RemotingCommand) -> RemotingCommand {
        let r = match cmd.code {
            rc::GET_ROUTEINFO_BY_TOPIC => self.route_info(&cmd).await,
            rc::SEND_MESSAGE | rc::SEND_MESSAGE_V2 | rc::SEND_BATCH_MESSAGE => {
                self.by_queue(&cmd, ("b", "topic"), ("e", "queueId")).await
            }
            rc::PULL_MESSAGE
            | rc::LITE_PULL_MESSAGE
            | rc::QUERY_CONSUMER_OFFSET
            | rc::UPDATE_CONSUMER_OFFSET
            | rc::GET_MAX_OFFSET
            | rc::GET_MIN_OFFSET
            | rc::SEARCH_OFFSET_BY_TIMESTAMP
            | rc::GET_EARLIEST_MSG_STORETIME => {
                self.by_queue(&cmd, ("topic", "topic"), ("queueId", "queueId"))
                    .await
            }
            rc::HEART_BEAT | rc::UNREGISTER_CLIENT => self.to_all(&cmd).await,
            rc::GET_CONSUMER_LIST_BY_GROUP => self.consumer_list(&cmd).await,
            rc::CONSUMER_SEND_MSG_BACK => self.send_back(&cmd).await,
            rc::POP_MESSAGE => self.pop(&cmd).await,
            rc::ACK_MESSAGE | rc::CHANGE_MESSAGE_INVISIBLETIME => self.by_handle(&cmd).await,
            rc::BATCH_ACK_MESSAGE => self.batch_ack(&cmd).await,
            other => Err(reply(
                code::REQUEST_CODE_NOT_SUPPORTED,
                format!("request code {other} is not supported by the proxy's remoting endpoint"),
            )),
        };
        r.unwrap_or_else(Refusal::into_response)
    }
}

/// Serves the remoting endpoint on `bind`; routes tell clients to come back at
/// `advertise_host` (default: the bound host, 127.0.0.1 for an unspecified one) and the real
/// port.
pub async fn serve(
    cluster: Arc<Cluster>,
    bind: &str,
    advertise_host: Option<&str>,
) -> Result<ServerHandle, TransportError> {
    let endpoint: Endpoint = format!("tcp://{bind}").parse()?;
    let transport = AnyTransport::default();
    let listener = transport.bind(&endpoint).await?;
    let local = rdmq_transport::Listener::local_endpoint(&listener).clone();
    let host = match advertise_host {
        Some(h) => h.to_owned(),
        None if matches!(local.host.as_str(), "0.0.0.0" | "::" | "") => "127.0.0.1".to_owned(),
        None => local.host.clone(),
    };
    let front = Arc::new(Front {
        cluster,
        addr: format!("{host}:{}", local.port),
        next: AtomicUsize::new(0),
    });
    let mut router = Router::new();
    for c in [
        rc::GET_ROUTEINFO_BY_TOPIC,
        rc::SEND_MESSAGE,
        rc::SEND_MESSAGE_V2,
        rc::SEND_BATCH_MESSAGE,
        rc::PULL_MESSAGE,
        rc::LITE_PULL_MESSAGE,
        rc::QUERY_CONSUMER_OFFSET,
        rc::UPDATE_CONSUMER_OFFSET,
        rc::GET_MAX_OFFSET,
        rc::GET_MIN_OFFSET,
        rc::SEARCH_OFFSET_BY_TIMESTAMP,
        rc::GET_EARLIEST_MSG_STORETIME,
        rc::HEART_BEAT,
        rc::UNREGISTER_CLIENT,
        rc::GET_CONSUMER_LIST_BY_GROUP,
        rc::CONSUMER_SEND_MSG_BACK,
        rc::POP_MESSAGE,
        rc::ACK_MESSAGE,
        rc::CHANGE_MESSAGE_INVISIBLETIME,
        rc::BATCH_ACK_MESSAGE,
    ] {
        let front = front.clone();
        router.add(c, move |req: Request| {
            let front = front.clone();
            async move { front.handle(req.command).await }
        });
    }
    Ok(Server::new(transport, router, ServerConfig::default()).serve(listener))
}
