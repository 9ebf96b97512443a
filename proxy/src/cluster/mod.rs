//! The broker side of the proxy: remoting calls to brokers over the configured transport
//! (`tcp://`, `rdma://`, `rdma-sim://`), topic routes learned from the brokers, and the four
//! operations the gRPC front end needs (send, pop, ack, change invisible time).
//!
//! A broker that cannot be reached fails only the calls routed to it, with a clear status;
//! sends fail over to another broker holding the topic.

mod handle;
mod pop;
pub mod route;
mod send;

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
use rdmq_transport::{AnyTransport, Endpoint, RemotingCommand, Scheme, TransportError};

use crate::error::{ProxyError, ProxyResult};
use crate::pb::Code;
pub use handle::Changed;
pub use pop::{PopArgs, PoppedBatch, handles_of};
pub use route::{BrokerQueues, TopicRoute};
pub use send::{Outgoing, Sent};

/// How long a route learned from the brokers themselves is used before it is asked for again.
const ROUTE_TTL: Duration = Duration::from_secs(10);
/// Time left for a broker's answer to travel back after its long poll ends.
const REPLY_MARGIN: Duration = Duration::from_millis(300);
/// The producer group sends are made under (gRPC producers have none).
const PRODUCER_GROUP: &str = "rdmq-proxy";

/// A live broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerRef {
    /// Its name.
    pub name: String,
    /// Where the proxy reaches it.
    pub endpoint: Endpoint,
    /// Its `host:port` (the store host in its message ids).
    pub addr: String,
}

/// Connections and routes to the brokers.
#[derive(Debug)]
pub struct Cluster {
    client: Client<AnyTransport>,
    /// Long polls get their own connections, so sends and acks never queue behind them.
    poll_client: Client<AnyTransport>,
    seeds: Vec<Endpoint>,
    /// Name servers routes come from (instead of asking the seeds).
    namesrv: Vec<Endpoint>,
    /// Transport used towards brokers learned from name servers.
    broker_scheme: Scheme,
    /// Route lifetime with name servers.
    route_ttl: Duration,
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
            namesrv: Vec::new(),
            broker_scheme: Scheme::Tcp,
            route_ttl: ROUTE_TTL,
            fifo_layout: Mutex::new(HashMap::new()),
            routes: Mutex::new(HashMap::new()),
            names: Mutex::new(HashMap::new()),
            next: AtomicUsize::new(0),
            call_timeout,
        }
    }

    /// Learns brokers and routes from the name servers at `namesrv` (TCP `host:port`),
    /// refreshed every `ttl`, and reaches brokers over `scheme` where they serve it (else TCP).
    pub fn with_namesrv(mut self, namesrv: Vec<Endpoint>, scheme: Scheme, ttl: Duration) -> Self {
        self.namesrv = namesrv;
        self.broker_scheme = scheme;
        self.route_ttl = ttl;
        self
    }

    /// The configured broker endpoints.
    pub fn seeds(&self) -> &[Endpoint] {
        &self.seeds
    }

    /// The configured name servers.
    pub fn name_servers(&self) -> &[Endpoint] {
        &self.namesrv
    }

    /// Every broker known: the seeds and those learned from routes, by name.
    pub fn known_brokers(&self) -> Vec<(String, Endpoint)> {
        let mut v: Vec<_> = self
            .lock_names()
            .iter()
            .map(|(n, e)| (n.clone(), e.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Calls the broker `name` at `endpoint` (for the remoting front end and admin), within
    /// `timeout` (default: the call timeout).
    pub async fn call_broker(
        &self,
        name: &str,
        endpoint: &Endpoint,
        request: RemotingCommand,
        timeout: Option<Duration>,
    ) -> ProxyResult<RemotingCommand> {
        self.call(
            name,
            endpoint,
            request,
            timeout.unwrap_or(self.call_timeout),
        )
        .await
    }

    /// The call timeout towards brokers.
    pub fn call_timeout(&self) -> Duration {
        self.call_timeout
    }

    /// Every live broker: from the name servers' cluster info, else the configured seeds
    /// (named as their route answers named them).
    pub async fn all_brokers(&self) -> ProxyResult<Vec<BrokerRef>> {
        if self.namesrv.is_empty() {
            let names = self.lock_names().clone();
            return Ok(self
                .seeds
                .iter()
                .map(|ep| BrokerRef {
                    name: names
                        .iter()
                        .find(|(_, e)| *e == ep)
                        .map_or_else(|| ep.authority(), |(n, _)| n.clone()),
                    endpoint: ep.clone(),
                    addr: ep.authority(),
                })
                .collect());
        }
        let req = RemotingCommand::request(request_code::GET_BROKER_CLUSTER_INFO)
            .with_field(rdmq_protocol::route::ENDPOINTS_FIELD, "1");
        let resp = self.call_namesrv(req).await?;
        if resp.code != rc::SUCCESS {
            return Err(ProxyError::new(
                Code::InternalServerError,
                format!(
                    "name server answered the cluster info with code {}: {}",
                    resp.code,
                    resp.remark.as_deref().unwrap_or("")
                ),
            ));
        }
        let info = rdmq_protocol::route::ClusterInfo::parse(&resp.body).map_err(|e| {
            ProxyError::new(
                Code::InternalServerError,
                format!("name server cluster info: {e}"),
            )
        })?;
        Ok(info
            .brokers
            .values()
            .filter_map(|b| {
                Some(BrokerRef {
                    name: b.name.clone(),
                    endpoint: self.broker_endpoint(b)?,
                    addr: b.master()?.to_owned(),
                })
            })
            .collect())
    }

    /// Asks the name servers in turn until one answers.
    pub async fn call_namesrv(&self, request: RemotingCommand) -> ProxyResult<RemotingCommand> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut last = None;
        for i in 0..self.namesrv.len() {
            let ep = &self.namesrv[(start + i) % self.namesrv.len()];
            match self
                .client
                .invoke(ep, request.clone(), Some(self.call_timeout))
                .await
            {
                Ok(r) => return Ok(r),
                Err(e) => last = Some(ProxyError::unavailable(&ep.authority(), &e)),
            }
        }
        Err(last.unwrap_or_else(|| {
            ProxyError::new(Code::InternalServerError, "no name server is configured")
        }))
    }

    /// The endpoint to reach a broker learned from a name server at.
    fn broker_endpoint(&self, b: &rdmq_protocol::route::BrokerData) -> Option<Endpoint> {
        let served = b
            .endpoints
            .iter()
            .filter_map(|u| u.parse::<Endpoint>().ok())
            .find(|e| e.scheme == self.broker_scheme);
        served.or_else(|| format!("tcp://{}", b.master()?).parse().ok())
    }

    async fn route_from_namesrv(&self, topic: &str) -> ProxyResult<Vec<BrokerQueues>> {
        let req = RemotingCommand::request(request_code::GET_ROUTEINFO_BY_TOPIC)
            .with_field("topic", topic)
            .with_field(rdmq_protocol::route::ENDPOINTS_FIELD, "1");
        let resp = self.call_namesrv(req).await?;
        match resp.code {
            rc::SUCCESS => {}
            rc::TOPIC_NOT_EXIST => {
                return Err(ProxyError::new(
                    Code::TopicNotFound,
                    format!("topic `{topic}` does not exist"),
                ));
            }
            other => {
                return Err(ProxyError::new(
                    Code::InternalServerError,
                    format!(
                        "name server answered the route of `{topic}` with code {other}: {}",
                        resp.remark.as_deref().unwrap_or("")
                    ),
                ));
            }
        }
        let route = rdmq_protocol::route::TopicRoute::parse(&resp.body).map_err(|e| {
            ProxyError::new(
                Code::InternalServerError,
                format!("name server route of `{topic}`: {e}"),
            )
        })?;
        let mut out = Vec::new();
        for (b, q) in route.masters() {
            let Some(endpoint) = self.broker_endpoint(b) else {
                continue;
            };
            self.lock_names().insert(b.name.clone(), endpoint.clone());
            out.push(BrokerQueues {
                name: b.name.clone(),
                endpoint,
                write_queues: if q.perm & 4 != 0 { q.write_queues } else { 0 },
                read_queues: if q.perm & 2 != 0 { q.read_queues } else { 0 },
            });
        }
        Ok(out)
    }

    async fn call(
        &self,
        broker: &str,
        endpoint: &Endpoint,
        request: RemotingCommand,
        timeout: Duration,
    ) -> ProxyResult<RemotingCommand> {
        let client = if matches!(
            request.code,
            request_code::POP_MESSAGE | request_code::PULL_MESSAGE
        ) {
            &self.poll_client
        } else {
            &self.client
        };
        // Binary (ROCKETMQ) headers on the hop: cheaper to encode and decode than JSON, and
        // the broker answers in the same form. That header carries the code in 16 bits, so the
        // Pop family (200050…) stays on JSON, as RocketMQ's own clients do.
        let request = if i16::try_from(request.code).is_ok() {
            request.with_serialize_type(rdmq_transport::codec::SerializeType::RocketMq)
        } else {
            request
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
            && r.learned.elapsed() < self.route_ttl
        {
            return Ok(r.clone());
        }
        let brokers = if self.namesrv.is_empty() {
            self.route_from_brokers(topic, &self.seeds).await?
        } else {
            match self.route_from_namesrv(topic).await {
                Ok(b) if !b.is_empty() => b,
                Ok(_) => {
                    self.lock_routes().remove(topic);
                    return Err(ProxyError::new(
                        Code::TopicNotFound,
                        format!("no live broker holds topic `{topic}`"),
                    ));
                }
                Err(e) if e.code == Code::TopicNotFound => {
                    self.lock_routes().remove(topic);
                    return Err(e);
                }
                Err(e) => {
                    // Name servers out of reach: the brokers still are; keep the last route.
                    if let Some(r) = self.lock_routes().get(topic) {
                        tracing::warn!(topic, error = %e.message, "name servers unreachable; using the last route");
                        return Ok(r.clone());
                    }
                    return Err(e);
                }
            }
        };
        Ok(self.learned(topic, brokers))
    }

    /// Asks every live broker itself for the route of `topic` (a broker with topic
    /// auto-creation creates it) and uses the answer until the next refresh: for topics the
    /// name servers cannot know yet, such as a new consumer group's retry topic.
    pub async fn route_via_brokers(&self, topic: &str) -> ProxyResult<Arc<TopicRoute>> {
        let endpoints: Vec<Endpoint> = self
            .all_brokers()
            .await?
            .into_iter()
            .map(|b| b.endpoint)
            .collect();
        let brokers = self.route_from_brokers(topic, &endpoints).await?;
        Ok(self.learned(topic, brokers))
    }

    fn learned(&self, topic: &str, brokers: Vec<BrokerQueues>) -> Arc<TopicRoute> {
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
        route
    }

    async fn route_from_brokers(
        &self,
        topic: &str,
        endpoints: &[Endpoint],
    ) -> ProxyResult<Vec<BrokerQueues>> {
        let asks = endpoints.iter().map(|ep| {
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
        Ok(brokers)
    }

    /// Forgets the route of `topic` (after a broker failed).
    pub fn invalidate(&self, topic: &str) {
        self.lock_routes().remove(topic);
    }

    /// The endpoint of the broker called `name`.
    pub fn endpoint_of(&self, name: &str) -> Option<Endpoint> {
        self.lock_names().get(name).cloned()
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
