//! `MessagingService`: the service state shared by every RPC and the tonic trait, whose
//! methods delegate to one module per concern (`route`, `send`, `receive`, `ack`,
//! `telemetry`). Heartbeat and NotifyClientTermination are handled here;
//! RPCs not implemented answer `NOT_IMPLEMENTED`.
//!
//! Business errors travel in the response `Status` (gRPC status OK); a stream always ends
//! with exactly one status when something fails.

use rdmq_transport::sync::Plain;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_stream::Stream;
use tonic::{Request, Response, Status as GrpcStatus, Streaming};

use super::metadata::client_id;
use super::settings::ServerSettings;
use crate::cluster::Cluster;
use crate::error::{ProxyError, ProxyResult, ok_status};
use crate::pb::messaging_service_server::MessagingService;
use crate::pb::{self, Code, MessageType, Permission};

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
pub(super) const DEADLINE_MARGIN: Duration = Duration::from_millis(800);
/// Longest invisible time.
pub(super) const MAX_INVISIBLE: Duration = Duration::from_secs(12 * 3600);
/// Most messages one receive returns.
pub(super) const MAX_BATCH: i32 = 32;
/// Invisible time when the client asks for auto-renewal and gives none.
pub(super) const AUTO_RENEW_INVISIBLE: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub(super) struct ClientState {
    pub(super) settings: pb::Settings,
    pub(super) seen: Instant,
}

#[derive(Debug)]
pub(super) struct Shared {
    pub(super) cluster: Arc<Cluster>,
    pub(super) cfg: ServiceConfig,
    pub(super) clients: Mutex<HashMap<String, ClientState>>,
    pub(super) shutdown: watch::Receiver<bool>,
    pub(super) in_flight: Arc<tokio::sync::Semaphore>,
    pub(super) renewals: super::renew::Renewals,
}

/// The service. Cheap to clone.
#[derive(Debug, Clone)]
pub struct MessagingProxy {
    pub(super) shared: Arc<Shared>,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, GrpcStatus>> + Send + 'static>>;

pub(super) fn resource_name(r: &Option<pb::Resource>) -> &str {
    r.as_ref().map(|r| r.name.as_str()).unwrap_or("")
}

/// Topics clients may not produce to or consume from through gRPC: the brokers' own (pop log,
/// timer wheel) and retry topics. Dead-letter topics may be read, not written.
pub(super) fn check_topic(name: &str, reading: bool) -> ProxyResult<()> {
    require(name, Code::IllegalTopic, "topic")?;
    rdmq_protocol::names::check_topic(name)
        .map_err(|e| ProxyError::new(Code::IllegalTopic, e.to_string()))?;
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

/// A consumer group name as the brokers accept it (so every derived retry and dead-letter
/// topic is valid too).
pub(super) fn check_group(name: &str) -> ProxyResult<()> {
    require(name, Code::IllegalConsumerGroup, "group")?;
    rdmq_protocol::names::check_group(name)
        .map_err(|e| ProxyError::new(Code::IllegalConsumerGroup, e.to_string()))
}

/// A group consuming a topic: the retry topic the pair gives must be a valid name.
pub(super) fn check_consumption(group: &str, topic: &str) -> ProxyResult<()> {
    rdmq_protocol::names::check_consumption(group, topic)
        .map_err(|e| ProxyError::new(Code::IllegalConsumerGroup, e.to_string()))
}

pub(super) fn require(name: &str, code: Code, what: &str) -> ProxyResult<()> {
    if name.trim().is_empty() {
        Err(ProxyError::new(code, format!("{what} is required")))
    } else {
        Ok(())
    }
}

impl MessagingProxy {
    /// A service forwarding to `cluster`; `shutdown` turning true ends parked long polls.
    /// Must be called within a tokio runtime (it starts the auto-renewal task).
    pub fn new(cluster: Arc<Cluster>, cfg: ServiceConfig, shutdown: watch::Receiver<bool>) -> Self {
        let this = Self {
            shared: Arc::new(Shared {
                cluster,
                in_flight: Arc::new(tokio::sync::Semaphore::new(cfg.max_in_flight.max(1))),
                renewals: Default::default(),
                cfg,
                clients: Mutex::new(HashMap::new()),
                shutdown,
            }),
        };
        this.start_renewer();
        this
    }

    /// Messages whose invisible time the proxy is renewing (`auto_renew` receives).
    pub fn renewing(&self) -> usize {
        self.shared.renewals.len()
    }

    /// Clients that sent settings and have not terminated.
    pub fn client_count(&self) -> usize {
        self.clients().len()
    }

    /// A slot for one send or receive, or TOO_MANY_REQUESTS (clients back off and retry).
    pub(super) fn admit(&self) -> ProxyResult<tokio::sync::OwnedSemaphorePermit> {
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

    pub(super) fn clients(&self) -> std::sync::MutexGuard<'_, HashMap<String, ClientState>> {
        self.shared.clients.lock().plain()
    }

    pub(super) fn server_settings(&self) -> ServerSettings {
        ServerSettings {
            max_body_size: self.shared.cfg.max_body_size,
            long_polling: self.shared.cfg.max_long_polling,
            max_delivery_attempts: self.shared.cfg.max_delivery_attempts,
            receive_batch_size: MAX_BATCH,
        }
    }

    /// The endpoints routes point clients at: the configured address, else the one the
    /// client says it dialled.
    pub(super) fn own_endpoints(&self, dialled: Option<&pb::Endpoints>) -> pb::Endpoints {
        if let Some((host, port)) = &self.shared.cfg.advertise {
            return endpoints(host, *port);
        }
        match dialled {
            Some(e) if !e.addresses.is_empty() => e.clone(),
            _ => endpoints("127.0.0.1", 8081),
        }
    }

    pub(super) fn queue(
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

pub(super) fn status_of<T>(r: &ProxyResult<T>) -> pb::Status {
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
        let r = self
            .assignment_inner(request.metadata(), request.get_ref())
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
        let (md, _, req) = request.into_parts();
        let items = self.receive_responses(&md, req).await;
        Ok(Response::new(Box::pin(tokio_stream::iter(items))))
    }

    async fn ack_message(
        &self,
        request: Request<pb::AckMessageRequest>,
    ) -> Result<Response<pb::AckMessageResponse>, GrpcStatus> {
        let (md, _, req) = request.into_parts();
        Ok(Response::new(self.ack_inner(&md, &req).await))
    }

    async fn forward_message_to_dead_letter_queue(
        &self,
        request: Request<pb::ForwardMessageToDeadLetterQueueRequest>,
    ) -> Result<Response<pb::ForwardMessageToDeadLetterQueueResponse>, GrpcStatus> {
        let (md, _, req) = request.into_parts();
        let r = self.forward_inner(&md, &req).await;
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
        let rx = self.open_telemetry(client, request.into_inner());
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
            self.shared.renewals.forget_client(&id);
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
        let r = self.change_inner(&md, &req).await;
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
pub(super) fn overall<'a>(statuses: impl Iterator<Item = Option<&'a pb::Status>>) -> pb::Status {
    let codes: Vec<&pb::Status> = statuses.flatten().collect();
    match codes.first() {
        None => ok_status(),
        Some(first) if codes.iter().all(|s| s.code == first.code) => (*first).clone(),
        Some(_) => {
            ProxyError::new(Code::MultipleResults, "entries have different results").status()
        }
    }
}
