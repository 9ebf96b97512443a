//! The broker side of the proxy: remoting calls to brokers over the configured transport
//! (`tcp://`, `rdma://`, `rdma-sim://`), topic routes learned from the brokers, and the four
//! operations the gRPC front end needs (send, pop, ack, change invisible time).
//!
//! A broker that cannot be reached fails only the calls routed to it, with a clear status;
//! sends fail over to another broker holding the topic.

pub mod route;

use rdmq_transport::sync::Plain;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdmq_protocol::ReceiptHandle;
use rdmq_protocol::message::{self, StoredMessage};
use rdmq_transport::protocol::{request_code, response_code as rc};
use rdmq_transport::remoting::{CallMetrics, Client, ClientConfig};
use rdmq_transport::{AnyTransport, Endpoint, RemotingCommand, TransportError};

use crate::error::{ProxyError, ProxyResult};
use crate::pb::Code;
pub use route::{BrokerQueues, TopicRoute};

/// How long a learned route is used before it is asked for again.
const ROUTE_TTL: Duration = Duration::from_secs(10);
/// Time left for a broker's answer to travel back after its long poll ends.
const REPLY_MARGIN: Duration = Duration::from_millis(300);
/// The producer group sends are made under (gRPC producers have none).
const PRODUCER_GROUP: &str = "rdmq-proxy";

/// A message ready to be sent: remoting properties already encoded.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Properties (`key\x01value\x02…`).
    pub properties: String,
    /// Body.
    pub body: Bytes,
    /// Producer timestamp (ms).
    pub born_ms: i64,
    /// FIFO message group: picks the queue.
    pub group: Option<String>,
}

/// Where a sent batch was stored.
#[derive(Debug, Clone)]
pub struct Sent {
    /// Broker name.
    pub broker: String,
    /// Queue.
    pub queue: i32,
    /// Offset of the first message.
    pub offset: i64,
}

/// What to pop.
#[derive(Debug, Clone)]
pub struct PopArgs {
    /// Consumer group.
    pub group: String,
    /// Topic.
    pub topic: String,
    /// Tag expression.
    pub filter: String,
    /// Most messages.
    pub max: u32,
    /// Invisible time.
    pub invisible: Duration,
    /// Longest long poll.
    pub poll: Duration,
    /// When the answer must be back (the caller's deadline less a margin); every broker call
    /// of the pop, route lookup included, ends by then.
    pub answer_by: Instant,
    /// FIFO consumption.
    pub fifo: bool,
}

/// Messages popped from one broker.
#[derive(Debug, Clone)]
pub struct PoppedBatch {
    /// The broker.
    pub broker: String,
    /// Invisible time granted (ms).
    pub invisible_ms: i64,
    /// The records, decoded.
    pub messages: Vec<StoredMessage>,
}

/// The new handle after a change of invisible time.
#[derive(Debug, Clone)]
pub struct Changed {
    /// New receipt handle.
    pub handle: String,
}

/// The receipt handles of a popped batch.
pub fn handles_of(batch: &PoppedBatch) -> Vec<String> {
    batch
        .messages
        .iter()
        .filter_map(|m| {
            message::Properties::parse(&m.properties)
                .ok()?
                .get(message::prop::POP_CK)
                .map(str::to_owned)
        })
        .collect()
}

/// Connections and routes to the brokers.
#[derive(Debug)]
pub struct Cluster {
    client: Client<AnyTransport>,
    /// Long polls get their own connections, so sends and acks never queue behind them.
    poll_client: Client<AnyTransport>,
    seeds: Vec<Endpoint>,
    /// Per topic, every broker ever seen holding it (by name, with its write queues): FIFO
    /// groups hash over this stable list, so a broker briefly unreachable does not move
    /// groups to other queues.
    fifo_layout: Mutex<HashMap<String, Vec<(String, u32)>>>,
    routes: Mutex<HashMap<String, Arc<TopicRoute>>>,
    /// Broker name → endpoint, learned from route answers.
    names: Mutex<HashMap<String, Endpoint>>,
    next: AtomicUsize,
    call_timeout: Duration,
}

impl Cluster {
    /// Talks to the brokers at `seeds` over `transport`.
    pub fn new(
        transport: AnyTransport,
        seeds: Vec<Endpoint>,
        connections_per_broker: usize,
        call_timeout: Duration,
    ) -> Self {
        let config = ClientConfig {
            connections_per_endpoint: connections_per_broker.max(1),
            call_timeout,
            backoff_max: Duration::from_secs(2),
            ..ClientConfig::default()
        };
        use request_code as c;
        let codes = [
            (c::SEND_MESSAGE, "SEND_MESSAGE"),
            (c::SEND_MESSAGE_V2, "SEND_MESSAGE_V2"),
            (c::SEND_BATCH_MESSAGE, "SEND_BATCH_MESSAGE"),
            (c::POP_MESSAGE, "POP_MESSAGE"),
            (c::ACK_MESSAGE, "ACK_MESSAGE"),
            (
                c::CHANGE_MESSAGE_INVISIBLETIME,
                "CHANGE_MESSAGE_INVISIBLETIME",
            ),
        ];
        let poll_client = Client::new(
            transport.clone(),
            ClientConfig {
                metrics: Some(CallMetrics::register("proxy-poll", &codes)),
                ..config.clone()
            },
        );
        let client = Client::new(
            transport,
            ClientConfig {
                metrics: Some(CallMetrics::register("proxy", &codes)),
                ..config
            },
        );
        Self {
            client,
            poll_client,
            seeds,
            fifo_layout: Mutex::new(HashMap::new()),
            routes: Mutex::new(HashMap::new()),
            names: Mutex::new(HashMap::new()),
            next: AtomicUsize::new(0),
            call_timeout,
        }
    }

    /// The configured broker endpoints.
    pub fn seeds(&self) -> &[Endpoint] {
        &self.seeds
    }

    async fn call(
        &self,
        broker: &str,
        endpoint: &Endpoint,
        request: RemotingCommand,
        timeout: Duration,
    ) -> ProxyResult<RemotingCommand> {
        let client = if request.code == request_code::POP_MESSAGE {
            &self.poll_client
        } else {
            &self.client
        };
        client
            .invoke(endpoint, request, Some(timeout))
            .await
            .map_err(|e| {
                if matches!(e, TransportError::Timeout(_)) {
                    tracing::warn!(broker, error = %e, "broker call timed out");
                }
                ProxyError::unavailable(broker, &e)
            })
    }

    /// The route of `topic`: every reachable broker holding it. Cached for a few seconds.
    pub async fn route(&self, topic: &str) -> ProxyResult<Arc<TopicRoute>> {
        if let Some(r) = self.lock_routes().get(topic)
            && r.learned.elapsed() < ROUTE_TTL
        {
            return Ok(r.clone());
        }
        let asks = self.seeds.iter().map(|ep| {
            let req = RemotingCommand::request(request_code::GET_ROUTEINFO_BY_TOPIC)
                .with_field("topic", topic);
            let ep = ep.clone();
            async move {
                let res = self
                    .call(&ep.authority(), &ep, req, self.call_timeout)
                    .await;
                (ep, res)
            }
        });
        let answers = join_all(asks).await;
        let mut brokers = Vec::new();
        let mut failures = Vec::new();
        for (ep, res) in answers {
            match res {
                Ok(resp) if resp.code == rc::SUCCESS => match route::parse_route(&resp.body) {
                    Ok(a) => {
                        self.lock_names().insert(a.name.clone(), ep.clone());
                        brokers.push(BrokerQueues {
                            name: a.name,
                            endpoint: ep,
                            write_queues: a.write_queues,
                            read_queues: a.read_queues,
                        });
                    }
                    Err(e) => failures.push(format!("{ep}: {e}")),
                },
                Ok(resp) if resp.code == rc::TOPIC_NOT_EXIST => {
                    let name = self
                        .lock_names()
                        .iter()
                        .find(|(_, e)| **e == ep)
                        .map(|(n, _)| n.clone());
                    if let Some(name) = name
                        && let Some(layout) = self.lock_layout().get_mut(topic)
                    {
                        layout.retain(|(n, _)| *n != name);
                    }
                }
                Ok(resp) => failures.push(format!(
                    "{ep}: code {} {}",
                    resp.code,
                    resp.remark.as_deref().unwrap_or("")
                )),
                Err(e) => failures.push(e.message),
            }
        }
        if brokers.is_empty() {
            self.lock_routes().remove(topic);
            return Err(if failures.is_empty() {
                ProxyError::new(
                    Code::TopicNotFound,
                    format!("topic `{topic}` does not exist"),
                )
            } else {
                ProxyError::new(
                    Code::InternalServerError,
                    format!(
                        "no broker answered the route of `{topic}`: {}",
                        failures.join("; ")
                    ),
                )
            });
        }
        {
            let mut layouts = self.lock_layout();
            let layout = layouts.entry(topic.to_owned()).or_default();
            for b in &brokers {
                match layout.iter_mut().find(|(n, _)| *n == b.name) {
                    Some(slot) => slot.1 = b.write_queues,
                    None => layout.push((b.name.clone(), b.write_queues)),
                }
            }
            layout.sort();
        }
        let route = Arc::new(TopicRoute {
            topic: topic.to_owned(),
            brokers,
            learned: Instant::now(),
        });
        self.lock_routes().insert(topic.to_owned(), route.clone());
        Ok(route)
    }

    /// Forgets the route of `topic` (after a broker failed).
    pub fn invalidate(&self, topic: &str) {
        self.lock_routes().remove(topic);
    }

    /// The endpoint of the broker called `name`.
    pub fn endpoint_of(&self, name: &str) -> Option<Endpoint> {
        self.lock_names().get(name).cloned()
    }

    /// Sends `messages` (one topic) as one batch: FIFO messages to the queue their group
    /// hashes to, others round-robin; an unreachable broker is skipped for the next one.
    pub async fn send(&self, topic: &str, messages: Vec<Outgoing>) -> ProxyResult<Sent> {
        let route = self.route(topic).await?;
        let total: u32 = route.brokers.iter().map(|b| b.write_queues).sum();
        if total == 0 {
            return Err(ProxyError::new(
                Code::Forbidden,
                format!("topic `{topic}` has no writable queue"),
            ));
        }
        let fifo_group = messages.iter().find_map(|m| m.group.clone());
        let start = match &fifo_group {
            Some(g) => {
                // The group's queue in the stable layout; its broker must be reachable now.
                let (name, queue) = self.fifo_queue(topic, g).ok_or_else(|| {
                    ProxyError::new(
                        Code::Forbidden,
                        format!("topic `{topic}` has no writable queue"),
                    )
                })?;
                let Some(ix) = route.brokers.iter().position(|b| b.name == name) else {
                    return Err(ProxyError::new(
                        Code::InternalServerError,
                        format!(
                            "broker {name} holding message group `{g}` of `{topic}` is unavailable; the group's order is kept by not sending elsewhere"
                        ),
                    ));
                };
                route.brokers[..ix]
                    .iter()
                    .map(|b| b.write_queues)
                    .sum::<u32>()
                    + queue
            }
            None => (self.next.fetch_add(1, Ordering::Relaxed) % total as usize) as u32,
        };
        let request = build_send(topic, &messages);
        let mut last_err = None;
        // FIFO messages must not move to another queue: one try.
        let tries = if fifo_group.is_some() {
            1
        } else {
            route.brokers.len()
        };
        let (mut broker_ix, mut queue) = locate(&route, start);
        for _ in 0..tries {
            let b = &route.brokers[broker_ix];
            let req = request.clone().with_field("e", queue.to_string());
            match self
                .call(&b.name, &b.endpoint, req, self.call_timeout)
                .await
            {
                Ok(resp) if resp.code == rc::SUCCESS => {
                    return Ok(Sent {
                        broker: b.name.clone(),
                        queue: resp
                            .field("queueId")
                            .and_then(|q| q.parse().ok())
                            .unwrap_or(queue as i32),
                        offset: resp
                            .field("queueOffset")
                            .and_then(|q| q.parse().ok())
                            .unwrap_or(-1),
                    });
                }
                Ok(resp) => {
                    if resp.code == rc::TOPIC_NOT_EXIST {
                        self.invalidate(topic);
                    }
                    return Err(ProxyError::from_broker(
                        &b.name,
                        resp.code,
                        resp.remark.as_deref(),
                    ));
                }
                Err(e) => {
                    tracing::warn!(broker = %b.name, error = %e.message, "send failed; trying the next broker");
                    self.invalidate(topic);
                    last_err = Some(e);
                    broker_ix = (broker_ix + 1) % route.brokers.len();
                    queue = 0;
                }
            }
        }
        Err(last_err.expect("at least one try"))
    }

    /// The broker and queue message group `group` of `topic` maps to (stable across
    /// broker outages).
    fn fifo_queue(&self, topic: &str, group: &str) -> Option<(String, u32)> {
        let layouts = self.lock_layout();
        let layout = layouts.get(topic)?;
        let total: u32 = layout.iter().map(|(_, q)| q).sum();
        if total == 0 {
            return None;
        }
        let mut ix = (fnv1a(group.as_bytes()) % total as u64) as u32;
        for (name, q) in layout {
            if ix < *q {
                return Some((name.clone(), ix));
            }
            ix -= q;
        }
        None
    }

    /// Pops from the brokers holding the topic: a quick look at each (starting at a rotating
    /// one), then a long poll on one of them.
    pub async fn pop(&self, args: &PopArgs) -> ProxyResult<Option<PoppedBatch>> {
        let left = || args.answer_by.saturating_duration_since(Instant::now());
        let late = || {
            ProxyError::new(
                Code::ProxyTimeout,
                format!("no broker answered for `{}` in time", args.topic),
            )
        };
        let route = tokio::time::timeout(left(), self.route(&args.topic))
            .await
            .map_err(|_| late())??;
        let n = route.brokers.len();
        let first = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let mut failed: Vec<usize> = Vec::new();
        let mut last_err = None;
        if n > 1 {
            for i in 0..n {
                let ix = (first + i) % n;
                let timeout = self.call_timeout.min(left());
                match self
                    .pop_one(&route.brokers[ix], args, Duration::ZERO, timeout)
                    .await
                {
                    Ok(Some(batch)) => return Ok(Some(batch)),
                    Ok(None) => {}
                    Err(e) if is_unavailable(&e) => {
                        // Later receives skip it until it answers a route query again.
                        self.invalidate(&args.topic);
                        failed.push(ix);
                        last_err = Some(e);
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        let Some(ix) = (0..n)
            .map(|i| (first + i) % n)
            .find(|ix| !failed.contains(ix))
        else {
            return Err(last_err.expect("every broker failed"));
        };
        // The long poll ends early enough for the broker's answer to arrive by `answer_by`.
        let timeout = left();
        let poll = args.poll.min(timeout.saturating_sub(REPLY_MARGIN));
        match self.pop_one(&route.brokers[ix], args, poll, timeout).await {
            Err(e) if is_unavailable(&e) => {
                self.invalidate(&args.topic);
                Err(e)
            }
            other => other,
        }
    }

    async fn pop_one(
        &self,
        b: &BrokerQueues,
        args: &PopArgs,
        poll: Duration,
        timeout: Duration,
    ) -> ProxyResult<Option<PoppedBatch>> {
        let req = RemotingCommand::request(request_code::POP_MESSAGE)
            .with_field("consumerGroup", &args.group)
            .with_field("topic", &args.topic)
            .with_field("queueId", "-1")
            .with_field("maxMsgNums", args.max.to_string())
            .with_field("invisibleTime", args.invisible.as_millis().to_string())
            .with_field("pollTime", poll.as_millis().to_string())
            .with_field("bornTime", rdmq_protocol::now_ms().to_string())
            .with_field("initMode", "0")
            .with_field("expType", "TAG")
            .with_field("exp", &args.filter)
            .with_field("order", if args.fifo { "true" } else { "false" });
        let resp = self.call(&b.name, &b.endpoint, req, timeout).await?;
        match resp.code {
            rc::SUCCESS => {
                let messages = message::decode_records(&resp.body).map_err(|e| {
                    ProxyError::new(
                        Code::InternalServerError,
                        format!("broker {} sent undecodable records: {e}", b.name),
                    )
                })?;
                Ok(Some(PoppedBatch {
                    broker: b.name.clone(),
                    invisible_ms: resp
                        .field("invisibleTime")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(args.invisible.as_millis() as i64),
                    messages,
                }))
            }
            rc::POLLING_TIMEOUT | rc::PULL_NOT_FOUND | rc::NO_MESSAGE => Ok(None),
            code => Err(ProxyError::from_broker(
                &b.name,
                code,
                resp.remark.as_deref(),
            )),
        }
    }

    /// The broker a receipt handle names. A proxy is stateless: a handle issued through
    /// another proxy (or before a restart) names a broker not seen yet, so the brokers are
    /// asked for their names first (through the route of the pop log, which every broker
    /// has: a forged handle's topic is never looked up, so it cannot auto-create one).
    async fn handle_target(&self, handle: &str) -> ProxyResult<(ReceiptHandle, Endpoint)> {
        let h = ReceiptHandle::parse(handle)
            .map_err(|e| ProxyError::new(Code::InvalidReceiptHandle, e.to_string()))?;
        if self.endpoint_of(&h.broker).is_none() {
            let _ = self.route(rdmq_protocol::POP_LOG_TOPIC).await;
        }
        let ep = self.endpoint_of(&h.broker).ok_or_else(|| {
            ProxyError::new(
                Code::InvalidReceiptHandle,
                format!("receipt handle names unknown broker `{}`", h.broker),
            )
        })?;
        Ok((h, ep))
    }

    /// Acks one message by its receipt handle.
    pub async fn ack(&self, group: &str, handle: &str) -> ProxyResult<()> {
        let (h, ep) = self.handle_target(handle).await?;
        let req = RemotingCommand::request(request_code::ACK_MESSAGE)
            .with_field("consumerGroup", group)
            .with_field("topic", &h.topic)
            .with_field("queueId", h.queue.to_string())
            .with_field("offset", h.offset.to_string())
            .with_field("extraInfo", handle);
        let resp = self.call(&h.broker, &ep, req, self.call_timeout).await?;
        handle_result(&h.broker, resp.code, resp.remark.as_deref())
    }

    /// Changes a message's invisible time; the old handle stops working.
    pub async fn change_invisible(
        &self,
        group: &str,
        handle: &str,
        invisible: Duration,
    ) -> ProxyResult<Changed> {
        let (h, ep) = self.handle_target(handle).await?;
        let req = RemotingCommand::request(request_code::CHANGE_MESSAGE_INVISIBLETIME)
            .with_field("consumerGroup", group)
            .with_field("topic", &h.topic)
            .with_field("queueId", h.queue.to_string())
            .with_field("offset", h.offset.to_string())
            .with_field("extraInfo", handle)
            .with_field("invisibleTime", invisible.as_millis().to_string());
        let resp = self.call(&h.broker, &ep, req, self.call_timeout).await?;
        handle_result(&h.broker, resp.code, resp.remark.as_deref())?;
        let handle = resp.field("receiptHandle").ok_or_else(|| {
            ProxyError::new(
                Code::InternalServerError,
                format!("broker {} returned no new receipt handle", h.broker),
            )
        })?;
        Ok(Changed {
            handle: handle.to_owned(),
        })
    }

    /// Moves the message of `handle` to the group's dead-letter topic now.
    pub async fn dead_letter(&self, group: &str, handle: &str) -> ProxyResult<()> {
        let (h, ep) = self.handle_target(handle).await?;
        let req = RemotingCommand::request(request_code::CONSUMER_SEND_MSG_BACK)
            .with_field("group", group)
            .with_field("offset", h.offset.to_string())
            .with_field("delayLevel", "-1")
            .with_field("originTopic", &h.topic)
            .with_field("extraInfo", handle);
        let resp = self.call(&h.broker, &ep, req, self.call_timeout).await?;
        handle_result(&h.broker, resp.code, resp.remark.as_deref())
    }

    /// Closes the broker connections.
    pub async fn close(&self) {
        self.client.close(Duration::from_millis(500)).await;
        self.poll_client.close(Duration::from_millis(500)).await;
    }

    fn lock_routes(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<TopicRoute>>> {
        self.routes.lock().plain()
    }

    fn lock_layout(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<(String, u32)>>> {
        self.fifo_layout.lock().plain()
    }

    fn lock_names(&self) -> std::sync::MutexGuard<'_, HashMap<String, Endpoint>> {
        self.names.lock().plain()
    }
}

fn is_unavailable(e: &ProxyError) -> bool {
    e.broker_unavailable
}

/// An ack or change answer: stale, expired and foreign handles are the client's
/// INVALID_RECEIPT_HANDLE.
fn handle_result(broker: &str, code: i32, remark: Option<&str>) -> ProxyResult<()> {
    match code {
        rc::SUCCESS => Ok(()),
        rc::NO_MESSAGE | rc::INVALID_PARAMETER => Err(ProxyError::new(
            Code::InvalidReceiptHandle,
            remark.unwrap_or("receipt handle refused").to_owned(),
        )),
        code => Err(ProxyError::from_broker(broker, code, remark)),
    }
}

/// The broker and queue of global queue index `ix` (queues numbered across brokers).
fn locate(route: &TopicRoute, mut ix: u32) -> (usize, u32) {
    for (i, b) in route.brokers.iter().enumerate() {
        if ix < b.write_queues {
            return (i, ix);
        }
        ix -= b.write_queues;
    }
    (0, 0)
}

/// SEND_MESSAGE_V2 (one message) or SEND_BATCH_MESSAGE, without the queue id.
fn build_send(topic: &str, messages: &[Outgoing]) -> RemotingCommand {
    let first = &messages[0];
    let base = |code| {
        RemotingCommand::request(code)
            .with_field("a", PRODUCER_GROUP)
            .with_field("b", topic)
            .with_field("c", "TBW102")
            .with_field("d", "4")
            .with_field("f", "0")
            .with_field("g", first.born_ms.to_string())
            .with_field("h", "0")
            .with_field("j", "0")
            .with_field("k", "false")
    };
    if messages.len() == 1 {
        base(request_code::SEND_MESSAGE_V2)
            .with_field("i", &first.properties)
            .with_field("m", "false")
            .with_body(first.body.clone())
    } else {
        let entries: Vec<(i32, Bytes, String)> = messages
            .iter()
            .map(|m| (0, m.body.clone(), m.properties.clone()))
            .collect();
        base(request_code::SEND_BATCH_MESSAGE)
            .with_field("i", "")
            .with_field("m", "true")
            .with_body(message::encode_batch(&entries))
    }
}

/// FNV-1a: a stable hash of a message group (the same group always maps to the same queue).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Runs futures concurrently and collects their outputs in order.
pub(crate) async fn join_all<F: std::future::Future>(
    futs: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let futs: Vec<_> = futs.into_iter().map(Box::pin).collect();
    let mut outs: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    let mut futs: Vec<Option<_>> = futs.into_iter().map(Some).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, slot) in futs.iter_mut().enumerate() {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        outs[i] = Some(v);
                        *slot = None;
                    }
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outs.into_iter()
        .map(|o| o.expect("every future completed"))
        .collect()
}
