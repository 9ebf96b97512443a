//! `MessagingService`: QueryRoute, Telemetry, Heartbeat, SendMessage, ReceiveMessage,
//! AckMessage, ChangeInvisibleDuration, NotifyClientTermination, QueryAssignment and
//! ForwardMessageToDeadLetterQueue. Other RPCs answer `NOT_IMPLEMENTED`.
//!
//! Business errors travel in the response `Status` (gRPC status OK); a stream always ends
//! with exactly one status when something fails.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tonic::{Request, Response, Status as GrpcStatus, Streaming};

use super::metadata::{client_id, deadline};
use super::settings::{ServerSettings, merge};
use crate::cluster::{Cluster, PopArgs};
use crate::convert::{self, Limits};
use crate::error::{ProxyError, ProxyResult, ok_status};
use crate::pb::messaging_service_server::MessagingService;
use crate::pb::{self, Code, MessageType, Permission, receive_message_response, telemetry_command};

/// Settings of the gRPC service.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Largest body accepted.
    pub max_body_size: usize,
    /// Longest long poll.
    pub max_long_polling: Duration,
    /// Delivery attempts before dead-lettering (announced to consumers).
    pub max_delivery_attempts: u32,
    /// `host:port` put in routes, when not the one the client dialled.
    pub advertise: Option<(String, u16)>,
    /// Sends and receives in progress at once; beyond it calls get TOO_MANY_REQUESTS.
    pub max_in_flight: usize,
}

/// Time kept between the end of a long poll and the caller's deadline.
const DEADLINE_MARGIN: Duration = Duration::from_millis(800);
/// Longest invisible time.
const MAX_INVISIBLE: Duration = Duration::from_secs(12 * 3600);
/// Most messages one receive returns.
const MAX_BATCH: i32 = 32;
/// Invisible time when the client asks for auto-renewal and gives none.
const AUTO_RENEW_INVISIBLE: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct ClientState {
    settings: pb::Settings,
    seen: Instant,
}

#[derive(Debug)]
struct Shared {
    cluster: Arc<Cluster>,
    cfg: ServiceConfig,
    clients: Mutex<HashMap<String, ClientState>>,
    shutdown: watch::Receiver<bool>,
    in_flight: Arc<tokio::sync::Semaphore>,
}

/// The service. Cheap to clone.
#[derive(Debug, Clone)]
pub struct MessagingProxy {
    shared: Arc<Shared>,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, GrpcStatus>> + Send + 'static>>;

fn resource_name(r: &Option<pb::Resource>) -> &str {
    r.as_ref().map(|r| r.name.as_str()).unwrap_or("")
}

/// Topics clients may not produce to or consume from through gRPC: the brokers' own (pop log,
/// timer wheel) and retry topics. Dead-letter topics may be read, not written.
fn check_topic(name: &str, reading: bool) -> ProxyResult<()> {
    require(name, Code::IllegalTopic, "topic")?;
    let system = name.starts_with("rmq_sys_")
        || name.starts_with("%RETRY%")
        || (!reading && name.starts_with("%DLQ%"));
    if system {
        return Err(ProxyError::new(
            Code::IllegalTopic,
            format!("topic `{name}` is a system topic"),
        ));
    }
    Ok(())
}

fn require(name: &str, code: Code, what: &str) -> ProxyResult<()> {
    if name.trim().is_empty() {
        Err(ProxyError::new(code, format!("{what} is required")))
    } else {
        Ok(())
    }
}

impl MessagingProxy {
    /// A service forwarding to `cluster`; `shutdown` turning true ends parked long polls.
    pub fn new(cluster: Arc<Cluster>, cfg: ServiceConfig, shutdown: watch::Receiver<bool>) -> Self {
        Self {
            shared: Arc::new(Shared {
                cluster,
                in_flight: Arc::new(tokio::sync::Semaphore::new(cfg.max_in_flight.max(1))),
                cfg,
                clients: Mutex::new(HashMap::new()),
                shutdown,
            }),
        }
    }

    /// Clients that sent settings and have not terminated.
    pub fn client_count(&self) -> usize {
        self.clients().len()
    }

    /// A slot for one send or receive, or TOO_MANY_REQUESTS (clients back off and retry).
    fn admit(&self) -> ProxyResult<tokio::sync::OwnedSemaphorePermit> {
        self.shared
            .in_flight
            .clone()
            .try_acquire_owned()
            .map_err(|_| {
                ProxyError::new(
                    Code::TooManyRequests,
                    format!(
                        "{} sends and receives are in progress; retry later",
                        self.shared.cfg.max_in_flight
                    ),
                )
            })
    }

    fn clients(&self) -> std::sync::MutexGuard<'_, HashMap<String, ClientState>> {
        self.shared
            .clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn server_settings(&self) -> ServerSettings {
        ServerSettings {
            max_body_size: self.shared.cfg.max_body_size,
            long_polling: self.shared.cfg.max_long_polling,
            max_delivery_attempts: self.shared.cfg.max_delivery_attempts,
            receive_batch_size: MAX_BATCH,
        }
    }

    /// The endpoints routes point clients at: the configured address, else the one the
    /// client says it dialled.
    fn own_endpoints(&self, dialled: Option<&pb::Endpoints>) -> pb::Endpoints {
        if let Some((host, port)) = &self.shared.cfg.advertise {
            return endpoints(host, *port);
        }
        match dialled {
            Some(e) if !e.addresses.is_empty() => e.clone(),
            _ => endpoints("127.0.0.1", 8081),
        }
    }

    fn queue(
        &self,
        topic: &str,
        id: i32,
        perm: Permission,
        broker: &str,
        eps: &pb::Endpoints,
    ) -> pb::MessageQueue {
        pb::MessageQueue {
            topic: Some(pb::Resource {
                resource_namespace: String::new(),
                name: topic.to_owned(),
            }),
            id,
            permission: perm as i32,
            broker: Some(pb::Broker {
                name: broker.to_owned(),
                id: 0,
                endpoints: Some(eps.clone()),
            }),
            accept_message_types: vec![
                MessageType::Normal as i32,
                MessageType::Fifo as i32,
                MessageType::Delay as i32,
            ],
        }
    }

    async fn query_route_inner(
        &self,
        md: &tonic::metadata::MetadataMap,
        req: &pb::QueryRouteRequest,
    ) -> ProxyResult<Vec<pb::MessageQueue>> {
        client_id(md)?;
        let topic = resource_name(&req.topic);
        check_topic(topic, true)?;
        let route = self.shared.cluster.route(topic).await?;
        let eps = self.own_endpoints(req.endpoints.as_ref());
        let mut queues = Vec::new();
        for b in &route.brokers {
            for q in 0..b.read_queues.max(b.write_queues) {
                let perm = match (q < b.read_queues, q < b.write_queues) {
                    (true, true) => Permission::ReadWrite,
                    (true, false) => Permission::Read,
                    _ => Permission::Write,
                };
                queues.push(self.queue(topic, q as i32, perm, &b.name, &eps));
            }
        }
        Ok(queues)
    }

    async fn send_inner(
        &self,
        md: &tonic::metadata::MetadataMap,
        req: pb::SendMessageRequest,
    ) -> ProxyResult<Vec<pb::SendResultEntry>> {
        client_id(md)?;
        let _slot = self.admit()?;
        let first = req
            .messages
            .first()
            .ok_or_else(|| ProxyError::new(Code::BadRequest, "no message to send"))?;
        let topic = resource_name(&first.topic).to_owned();
        check_topic(&topic, false)?;
        let limits = Limits {
            max_body: self.shared.cfg.max_body_size,
            max_properties: 16 << 10,
            max_delay_ms: 40 * 24 * 3600 * 1000,
        };
        let now = rdmq_broker::store::now_ms();
        let out = req
            .messages
            .iter()
            .map(|m| convert::outgoing(m, &topic, &limits, now))
            .collect::<ProxyResult<Vec<_>>>()?;
        let groups: Vec<_> = out.iter().map(|o| o.group.clone()).collect();
        if groups.iter().any(|g| g != &groups[0]) {
            return Err(ProxyError::new(
                Code::IllegalMessageGroup,
                "messages of one request must share their message group",
            ));
        }
        let sent = self.shared.cluster.send(&topic, out).await?;
        Ok(req
            .messages
            .iter()
            .enumerate()
            .map(|(i, m)| pb::SendResultEntry {
                status: Some(ok_status()),
                message_id: m
                    .system_properties
                    .as_ref()
                    .map(|s| s.message_id.clone())
                    .unwrap_or_default(),
                transaction_id: String::new(),
                offset: sent.offset + i as i64,
                recall_handle: String::new(),
            })
            .collect())
    }

    fn fifo_for(&self, client: &str) -> bool {
        self.clients()
            .get(client)
            .and_then(|c| match &c.settings.pub_sub {
                Some(pb::settings::PubSub::Subscription(s)) => s.fifo,
                _ => None,
            })
            .unwrap_or(false)
    }

    async fn receive_inner(
        &self,
        md: &tonic::metadata::MetadataMap,
        req: pb::ReceiveMessageRequest,
    ) -> ProxyResult<(Vec<pb::Message>, i64)> {
        let client = client_id(md)?;
        let _slot = self.admit()?;
        let group = resource_name(&req.group).to_owned();
        require(&group, Code::IllegalConsumerGroup, "group")?;
        let topic = req
            .message_queue
            .as_ref()
            .map(|q| resource_name(&q.topic).to_owned())
            .unwrap_or_default();
        check_topic(&topic, true)?;
        if req.batch_size <= 0 || req.batch_size > MAX_BATCH {
            return Err(ProxyError::new(
                Code::BadRequest,
                format!(
                    "batch_size must be 1 to {MAX_BATCH}, got {}",
                    req.batch_size
                ),
            ));
        }
        let invisible = match (&req.invisible_duration, req.auto_renew) {
            (Some(d), _) => convert::std_duration(d)
                .filter(|d| d.as_millis() >= 1 && *d <= MAX_INVISIBLE)
                .ok_or_else(|| {
                    ProxyError::new(
                        Code::IllegalInvisibleTime,
                        format!(
                            "invisible_duration must be at least 1 ms and at most {} s",
                            MAX_INVISIBLE.as_secs()
                        ),
                    )
                })?,
            (None, true) => AUTO_RENEW_INVISIBLE,
            (None, false) => {
                return Err(ProxyError::new(
                    Code::IllegalInvisibleTime,
                    "invisible_duration is required unless auto_renew is set",
                ));
            }
        };
        let filter = match &req.filter_expression {
            None => "*".to_owned(),
            Some(f) if f.r#type == pb::FilterType::Sql as i32 => {
                return Err(ProxyError::new(
                    Code::IllegalFilterExpression,
                    "SQL92 filters are not supported; use a tag expression",
                ));
            }
            Some(f) if f.expression.trim().is_empty() => "*".to_owned(),
            Some(f) => f.expression.clone(),
        };
        // Long polling ends before the caller's deadline, with a margin for the answer.
        let wanted = match &req.long_polling_timeout {
            Some(d) => convert::std_duration(d).ok_or_else(|| {
                ProxyError::new(Code::IllegalPollingTime, "long_polling_timeout is negative")
            })?,
            None => self.shared.cfg.max_long_polling,
        }
        .min(self.shared.cfg.max_long_polling);
        let now = Instant::now();
        let answer_by = match deadline(md) {
            Some(left) if left <= DEADLINE_MARGIN => {
                return Err(ProxyError::new(
                    Code::IllegalPollingTime,
                    format!(
                        "the call's deadline ({} ms) leaves no time to poll",
                        left.as_millis()
                    ),
                ));
            }
            Some(left) => now + left - DEADLINE_MARGIN,
            None => now + wanted + Duration::from_secs(1),
        };
        let args = PopArgs {
            group: group.clone(),
            topic,
            filter,
            max: req.batch_size as u32,
            invisible,
            poll: wanted,
            answer_by,
            fifo: self.fifo_for(&client),
        };
        // The pop runs in its own task: if this call goes away (client cancel, drain) before
        // the broker answers, whatever it popped is made visible again at once instead of
        // staying hidden for the whole invisible time.
        let (tx, rx) = tokio::sync::oneshot::channel();
        let cluster = self.shared.cluster.clone();
        tokio::spawn(async move {
            let r = cluster.pop(&args).await;
            if let Err(Ok(Some(batch))) = tx.send(r) {
                for h in crate::cluster::handles_of(&batch) {
                    if let Err(e) = cluster
                        .change_invisible(&args.group, &h, Duration::ZERO)
                        .await
                    {
                        tracing::debug!(error = %e.message, "releasing an undelivered message failed; it returns after its invisible time");
                    }
                }
            }
        });
        let mut shutdown = self.shared.shutdown.clone();
        let popped = tokio::select! {
            r = rx => r.map_err(|_| ProxyError::new(Code::InternalServerError, "the pop task ended without an answer"))??,
            _ = shutdown.wait_for(|s| *s) => None,
        };
        Ok(match popped {
            Some(batch) => {
                let msgs = batch
                    .messages
                    .iter()
                    .map(|m| convert::delivered(m, batch.invisible_ms))
                    .collect();
                (msgs, rdmq_broker::store::now_ms())
            }
            None => (Vec::new(), rdmq_broker::store::now_ms()),
        })
    }
}

fn endpoints(host: &str, port: u16) -> pb::Endpoints {
    let scheme = if host.parse::<std::net::Ipv4Addr>().is_ok() {
        pb::AddressScheme::IPv4
    } else if host.parse::<std::net::Ipv6Addr>().is_ok() {
        pb::AddressScheme::IPv6
    } else {
        pb::AddressScheme::DomainName
    };
    pb::Endpoints {
        scheme: scheme as i32,
        addresses: vec![pb::Address {
            host: host.to_owned(),
            port: port as i32,
        }],
    }
}

fn status_of<T>(r: &ProxyResult<T>) -> pb::Status {
    match r {
        Ok(_) => ok_status(),
        Err(e) => e.status(),
    }
}

fn not_implemented(rpc: &str) -> pb::Status {
    ProxyError::new(
        Code::NotImplemented,
        format!("{rpc} is not implemented by rdmq-proxy yet"),
    )
    .status()
}

#[tonic::async_trait]
impl MessagingService for MessagingProxy {
    async fn query_route(
        &self,
        request: Request<pb::QueryRouteRequest>,
    ) -> Result<Response<pb::QueryRouteResponse>, GrpcStatus> {
        let r = self
            .query_route_inner(request.metadata(), request.get_ref())
            .await;
        Ok(Response::new(pb::QueryRouteResponse {
            status: Some(status_of(&r)),
            message_queues: r.unwrap_or_default(),
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, GrpcStatus> {
        let r = client_id(request.metadata()).map(|id| {
            if let Some(c) = self.clients().get_mut(&id) {
                c.seen = Instant::now();
            }
        });
        Ok(Response::new(pb::HeartbeatResponse {
            status: Some(status_of(&r)),
        }))
    }

    async fn send_message(
        &self,
        request: Request<pb::SendMessageRequest>,
    ) -> Result<Response<pb::SendMessageResponse>, GrpcStatus> {
        let (md, _, req) = request.into_parts();
        let n = req.messages.len();
        let r = self.send_inner(&md, req).await;
        let status = status_of(&r);
        let entries = match r {
            Ok(e) => e,
            Err(e) => (0..n)
                .map(|_| pb::SendResultEntry {
                    status: Some(e.status()),
                    ..Default::default()
                })
                .collect(),
        };
        Ok(Response::new(pb::SendMessageResponse {
            status: Some(status),
            entries,
        }))
    }

    async fn query_assignment(
        &self,
        request: Request<pb::QueryAssignmentRequest>,
    ) -> Result<Response<pb::QueryAssignmentResponse>, GrpcStatus> {
        let r: ProxyResult<Vec<pb::Assignment>> = async {
            client_id(request.metadata())?;
            let req = request.get_ref();
            let topic = resource_name(&req.topic);
            check_topic(topic, true)?;
            require(
                resource_name(&req.group),
                Code::IllegalConsumerGroup,
                "group",
            )?;
            let route = self.shared.cluster.route(topic).await?;
            let eps = self.own_endpoints(req.endpoints.as_ref());
            // Pop is per broker: one assignment per broker, any queue (-1).
            let a: Vec<pb::Assignment> = route
                .brokers
                .iter()
                .filter(|b| b.read_queues > 0)
                .map(|b| pb::Assignment {
                    message_queue: Some(self.queue(
                        topic,
                        -1,
                        Permission::ReadWrite,
                        &b.name,
                        &eps,
                    )),
                })
                .collect();
            if a.is_empty() {
                return Err(ProxyError::new(
                    Code::Forbidden,
                    format!("topic `{topic}` has no readable queue"),
                ));
            }
            Ok(a)
        }
        .await;
        Ok(Response::new(pb::QueryAssignmentResponse {
            status: Some(status_of(&r)),
            assignments: r.unwrap_or_default(),
        }))
    }

    type ReceiveMessageStream = BoxStream<pb::ReceiveMessageResponse>;

    async fn receive_message(
        &self,
        request: Request<pb::ReceiveMessageRequest>,
    ) -> Result<Response<Self::ReceiveMessageStream>, GrpcStatus> {
        use receive_message_response::Content;
        let (md, _, req) = request.into_parts();
        let r = self.receive_inner(&md, req).await;
        let mut out = Vec::new();
        let now = rdmq_broker::store::now_ms();
        match r {
            Ok((msgs, at)) if !msgs.is_empty() => {
                out.push(Content::Status(ok_status()));
                out.extend(msgs.into_iter().map(Content::Message));
                out.push(Content::DeliveryTimestamp(convert::timestamp(at)));
            }
            Ok((_, at)) => {
                out.push(Content::Status(
                    ProxyError::new(Code::MessageNotFound, "no new message").status(),
                ));
                out.push(Content::DeliveryTimestamp(convert::timestamp(at)));
            }
            Err(e) => {
                out.push(Content::Status(e.status()));
                out.push(Content::DeliveryTimestamp(convert::timestamp(now)));
            }
        }
        let items = out
            .into_iter()
            .map(|c| Ok(pb::ReceiveMessageResponse { content: Some(c) }));
        Ok(Response::new(Box::pin(tokio_stream::iter(items))))
    }

    async fn ack_message(
        &self,
        request: Request<pb::AckMessageRequest>,
    ) -> Result<Response<pb::AckMessageResponse>, GrpcStatus> {
        let (md, _, req) = request.into_parts();
        let head: ProxyResult<String> = (|| {
            client_id(&md)?;
            let group = resource_name(&req.group).to_owned();
            require(&group, Code::IllegalConsumerGroup, "group")?;
            require(resource_name(&req.topic), Code::IllegalTopic, "topic")?;
            if req.entries.is_empty() {
                return Err(ProxyError::new(Code::BadRequest, "no entry to ack"));
            }
            Ok(group)
        })();
        let group = match head {
            Ok(g) => g,
            Err(e) => {
                return Ok(Response::new(pb::AckMessageResponse {
                    status: Some(e.status()),
                    entries: Vec::new(),
                }));
            }
        };
        let mut entries = Vec::with_capacity(req.entries.len());
        for e in &req.entries {
            let r = self.shared.cluster.ack(&group, &e.receipt_handle).await;
            entries.push(pb::AckMessageResultEntry {
                message_id: e.message_id.clone(),
                receipt_handle: e.receipt_handle.clone(),
                status: Some(status_of(&r)),
            });
        }
        Ok(Response::new(pb::AckMessageResponse {
            status: Some(overall(entries.iter().map(|e| e.status.as_ref()))),
            entries,
        }))
    }

    async fn forward_message_to_dead_letter_queue(
        &self,
        request: Request<pb::ForwardMessageToDeadLetterQueueRequest>,
    ) -> Result<Response<pb::ForwardMessageToDeadLetterQueueResponse>, GrpcStatus> {
        let (md, _, req) = request.into_parts();
        let r: ProxyResult<()> = async {
            client_id(&md)?;
            let group = resource_name(&req.group);
            require(group, Code::IllegalConsumerGroup, "group")?;
            require(resource_name(&req.topic), Code::IllegalTopic, "topic")?;
            self.shared
                .cluster
                .dead_letter(group, &req.receipt_handle)
                .await
        }
        .await;
        Ok(Response::new(pb::ForwardMessageToDeadLetterQueueResponse {
            status: Some(status_of(&r)),
        }))
    }

    type PullMessageStream = BoxStream<pb::PullMessageResponse>;

    async fn pull_message(
        &self,
        _request: Request<pb::PullMessageRequest>,
    ) -> Result<Response<Self::PullMessageStream>, GrpcStatus> {
        let item = Ok(pb::PullMessageResponse {
            content: Some(pb::pull_message_response::Content::Status(not_implemented(
                "PullMessage",
            ))),
        });
        Ok(Response::new(Box::pin(tokio_stream::iter([item]))))
    }

    async fn update_offset(
        &self,
        _request: Request<pb::UpdateOffsetRequest>,
    ) -> Result<Response<pb::UpdateOffsetResponse>, GrpcStatus> {
        Ok(Response::new(pb::UpdateOffsetResponse {
            status: Some(not_implemented("UpdateOffset")),
        }))
    }

    async fn get_offset(
        &self,
        _request: Request<pb::GetOffsetRequest>,
    ) -> Result<Response<pb::GetOffsetResponse>, GrpcStatus> {
        Ok(Response::new(pb::GetOffsetResponse {
            status: Some(not_implemented("GetOffset")),
            ..Default::default()
        }))
    }

    async fn query_offset(
        &self,
        _request: Request<pb::QueryOffsetRequest>,
    ) -> Result<Response<pb::QueryOffsetResponse>, GrpcStatus> {
        Ok(Response::new(pb::QueryOffsetResponse {
            status: Some(not_implemented("QueryOffset")),
            ..Default::default()
        }))
    }

    async fn end_transaction(
        &self,
        _request: Request<pb::EndTransactionRequest>,
    ) -> Result<Response<pb::EndTransactionResponse>, GrpcStatus> {
        Ok(Response::new(pb::EndTransactionResponse {
            status: Some(not_implemented("EndTransaction")),
        }))
    }

    type TelemetryStream = BoxStream<pb::TelemetryCommand>;

    async fn telemetry(
        &self,
        request: Request<Streaming<pb::TelemetryCommand>>,
    ) -> Result<Response<Self::TelemetryStream>, GrpcStatus> {
        let client =
            client_id(request.metadata()).map_err(|e| GrpcStatus::invalid_argument(e.message))?;
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel::<Result<pb::TelemetryCommand, GrpcStatus>>(8);
        let this = self.clone();
        let mut shutdown = self.shared.shutdown.clone();
        tokio::spawn(async move {
            loop {
                // A drain ends telemetry streams, so the HTTP/2 connections can close.
                let next = tokio::select! {
                    m = inbound.message() => m,
                    _ = shutdown.wait_for(|s| *s) => break,
                };
                let cmd = match next {
                    Ok(Some(c)) => c,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(client, error = %e, "telemetry stream ended");
                        break;
                    }
                };
                let Some(telemetry_command::Command::Settings(s)) = cmd.command else {
                    // Thread dumps and verification results are accepted and ignored.
                    continue;
                };
                let reply = match merge(&s, &this.server_settings()) {
                    Ok(merged) => {
                        this.clients().insert(
                            client.clone(),
                            ClientState {
                                settings: merged.clone(),
                                seen: Instant::now(),
                            },
                        );
                        Ok(pb::TelemetryCommand {
                            status: Some(ok_status()),
                            command: Some(telemetry_command::Command::Settings(merged)),
                        })
                    }
                    Err(e) => Err(GrpcStatus::invalid_argument(e.0)),
                };
                let failed = reply.is_err();
                if tx.send(reply).await.is_err() || failed {
                    break;
                }
            }
            // The stream lives as long as the client: its settings go with it.
            this.clients().remove(&client);
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn notify_client_termination(
        &self,
        request: Request<pb::NotifyClientTerminationRequest>,
    ) -> Result<Response<pb::NotifyClientTerminationResponse>, GrpcStatus> {
        let r = client_id(request.metadata()).map(|id| {
            self.clients().remove(&id);
        });
        Ok(Response::new(pb::NotifyClientTerminationResponse {
            status: Some(status_of(&r)),
        }))
    }

    async fn change_invisible_duration(
        &self,
        request: Request<pb::ChangeInvisibleDurationRequest>,
    ) -> Result<Response<pb::ChangeInvisibleDurationResponse>, GrpcStatus> {
        let (md, _, req) = request.into_parts();
        let r: ProxyResult<String> = async {
            client_id(&md)?;
            let group = resource_name(&req.group);
            require(group, Code::IllegalConsumerGroup, "group")?;
            require(resource_name(&req.topic), Code::IllegalTopic, "topic")?;
            let invisible = req
                .invisible_duration
                .as_ref()
                .and_then(convert::std_duration)
                .filter(|d| *d <= MAX_INVISIBLE)
                .ok_or_else(|| {
                    ProxyError::new(
                        Code::IllegalInvisibleTime,
                        "invisible_duration must be 0 (visible now) to 12 h",
                    )
                })?;
            Ok(self
                .shared
                .cluster
                .change_invisible(group, &req.receipt_handle, invisible)
                .await?
                .handle)
        }
        .await;
        Ok(Response::new(pb::ChangeInvisibleDurationResponse {
            status: Some(status_of(&r)),
            receipt_handle: r.unwrap_or_default(),
        }))
    }

    async fn recall_message(
        &self,
        _request: Request<pb::RecallMessageRequest>,
    ) -> Result<Response<pb::RecallMessageResponse>, GrpcStatus> {
        Ok(Response::new(pb::RecallMessageResponse {
            status: Some(not_implemented("RecallMessage")),
            ..Default::default()
        }))
    }

    async fn sync_lite_subscription(
        &self,
        _request: Request<pb::SyncLiteSubscriptionRequest>,
    ) -> Result<Response<pb::SyncLiteSubscriptionResponse>, GrpcStatus> {
        Ok(Response::new(pb::SyncLiteSubscriptionResponse {
            status: Some(not_implemented("SyncLiteSubscription")),
        }))
    }
}

/// The status of a multi-entry answer: OK when all are, the common code when all failed
/// alike, MULTIPLE_RESULTS otherwise.
fn overall<'a>(statuses: impl Iterator<Item = Option<&'a pb::Status>>) -> pb::Status {
    let codes: Vec<&pb::Status> = statuses.flatten().collect();
    match codes.first() {
        None => ok_status(),
        Some(first) if codes.iter().all(|s| s.code == first.code) => (*first).clone(),
        Some(_) => {
            ProxyError::new(Code::MultipleResults, "entries have different results").status()
        }
    }
}
