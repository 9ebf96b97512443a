//! rdmq-proxy: the stateless RocketMQ 5 gRPC endpoint. Clients speak
//! `apache.rocketmq.v2.MessagingService` to it; every call becomes remoting requests
//! (SEND_MESSAGE_V2, POP_MESSAGE, ACK_MESSAGE, CHANGE_MESSAGE_INVISIBLETIME, …) to the brokers
//! over the configured transport — TCP, RDMA, or rdma-sim — which is the hop rdmq accelerates.
//!
//! - [`grpc`]: the tonic service, telemetry settings, metadata rules.
//! - [`convert`]: gRPC messages ↔ remoting properties and stored records.
//! - [`cluster`]: broker connections, routes, and the remoting operations.
//! - [`remoting`]: the remoting endpoint for RocketMQ remoting clients.
//! - [`admin`]: the `rdmq-admin` command line.
//! - [`namesrv`]: the `rdmq-namesrv` name server (broker registry, routes).
//! - [`RunningProxy`]: start and stop a proxy, optionally with an embedded broker.

pub mod admin;
pub mod admit;
pub mod cluster;
pub mod config;
pub mod convert;
pub mod error;
pub mod grpc;
pub mod namesrv;
pub mod pb;
pub mod remoting;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

#[cfg(feature = "embedded")]
use rdmq_broker::serve::RunningBroker;
use rdmq_transport::{AnyTransport, Endpoint, Scheme};
use tokio::sync::watch;

use crate::cluster::Cluster;
use crate::config::ProxyConfig;
use crate::grpc::{MessagingProxy, ServiceConfig};
use crate::pb::messaging_service_server::MessagingServiceServer;

/// The `rdmq-proxy` program; `args` without the program name. Prints
/// `listening grpc://<addr>`, `listening remoting://<addr>` (unless off), `broker <url>` per broker and, with `--metrics-listen`,
/// `metrics http://<addr>/metrics` on start.
pub fn proxy_main(args: Vec<String>) -> std::process::ExitCode {
    use rdmq_transport::process as serve;
    use std::io::Write;
    serve::init_logging();
    let cfg = match ProxyConfig::from_args(&args) {
        Ok(Some(c)) => c,
        Ok(None) => {
            print!("{}", config::usage());
            return std::process::ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("rdmq-proxy: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    serve::run_main("rdmq-proxy", async move {
        let metrics_listen = cfg.metrics_listen.clone();
        let proxy = RunningProxy::start(cfg).await?;
        let _metrics = serve::start_metrics(metrics_listen.as_deref())
            .await
            .map_err(|source| StartError::Listen {
                addr: metrics_listen.clone().unwrap_or_default(),
                source,
            })?;
        {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "listening grpc://{}", proxy.grpc_addr());
            if let Some(r) = proxy.remoting_endpoint() {
                let _ = writeln!(out, "listening remoting://{}", r.authority());
            }
            for b in proxy.brokers() {
                let _ = writeln!(out, "broker {b}");
            }
            let _ = out.flush();
        }
        serve::wait_for_signal().await;
        tracing::info!("draining");
        proxy.shutdown().await?;
        tracing::info!("stopped");
        Ok::<(), StartError>(())
    })
}

/// Why a proxy could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A broker URL does not parse.
    #[error("broker {url}: {source}")]
    BrokerUrl {
        /// The URL.
        url: String,
        /// Why.
        source: rdmq_transport::TransportError,
    },
    /// The embedded broker failed.
    #[cfg(feature = "embedded")]
    #[error("embedded broker: {0}")]
    Embedded(#[from] rdmq_broker::serve::ServeError),
    /// `--advertise` is not `HOST:PORT`.
    #[error("--advertise {0}: expected HOST:PORT")]
    Advertise(String),
    /// The gRPC or metrics address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
}

/// A serving proxy (and its embedded broker, if configured).
#[derive(Debug)]
pub struct RunningProxy {
    addr: SocketAddr,
    #[cfg(feature = "embedded")]
    broker: Option<RunningBroker>,
    cluster: Arc<Cluster>,
    service: MessagingProxy,
    stop: watch::Sender<bool>,
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    remoting: Option<rdmq_transport::remoting::ServerHandle>,
    grace: Duration,
}

impl RunningProxy {
    /// Starts the embedded broker (if any), then serves gRPC on `cfg.listen`.
    pub async fn start(cfg: ProxyConfig) -> Result<RunningProxy, StartError> {
        let transport = AnyTransport::default();
        #[allow(unused_mut)]
        let mut seeds: Vec<Endpoint> = cfg
            .brokers
            .iter()
            .map(|b| {
                b.parse().map_err(|source| StartError::BrokerUrl {
                    url: b.clone(),
                    source,
                })
            })
            .collect::<Result<_, _>>()?;
        #[cfg(feature = "embedded")]
        let broker = match &cfg.embedded_broker {
            Some(bcfg) => {
                let b = RunningBroker::start(bcfg, transport.clone()).await?;
                // Reach the embedded broker over its first listener's transport.
                seeds.insert(0, b.endpoints()[0].clone());
                Some(b)
            }
            None => None,
        };
        let namesrv: Vec<Endpoint> = cfg
            .namesrv
            .iter()
            .map(|a| {
                format!("tcp://{a}")
                    .parse()
                    .map_err(|source| StartError::BrokerUrl {
                        url: a.clone(),
                        source,
                    })
            })
            .collect::<Result<_, _>>()?;
        let scheme = [Scheme::Tcp, Scheme::Rdma, Scheme::RdmaSim]
            .into_iter()
            .find(|s| s.as_str() == cfg.broker_transport)
            .unwrap_or(Scheme::Tcp);
        let cluster = Arc::new(
            Cluster::new(
                transport,
                seeds,
                cfg.connections_per_broker,
                Duration::from_millis(cfg.call_timeout_ms),
            )
            .with_namesrv(namesrv, scheme, Duration::from_millis(cfg.route_refresh_ms)),
        );
        let advertise = match &cfg.advertise {
            Some(a) => {
                let (h, p) = a
                    .rsplit_once(':')
                    .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)))
                    .ok_or_else(|| StartError::Advertise(a.clone()))?;
                Some((h, p))
            }
            None => None,
        };
        let remoting = match cfg.remoting_addr() {
            Some(bind) => Some(
                remoting::serve(
                    cluster.clone(),
                    &bind,
                    advertise.as_ref().map(|(h, _)| h.as_str()),
                )
                .await
                .map_err(|source| StartError::Listen {
                    addr: bind.clone(),
                    source: std::io::Error::other(source.to_string()),
                })?,
            ),
            None => None,
        };
        let (stop, stop_rx) = watch::channel(false);
        let service = MessagingProxy::new(
            cluster.clone(),
            ServiceConfig {
                max_body_size: cfg.max_body_size,
                max_long_polling: Duration::from_millis(cfg.max_long_polling_ms),
                max_delivery_attempts: cfg.max_delivery_attempts,
                advertise,
                max_in_flight: cfg.max_in_flight,
            },
            stop_rx.clone(),
        );
        let listener = tokio::net::TcpListener::bind(&cfg.listen)
            .await
            .map_err(|source| StartError::Listen {
                addr: cfg.listen.clone(),
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| StartError::Listen {
            addr: cfg.listen.clone(),
            source,
        })?;
        // Room for the largest body plus the message's other fields.
        let max_message = cfg.max_body_size + (1 << 20);
        let svc = MessagingServiceServer::new(service.clone())
            .max_decoding_message_size(max_message)
            .max_encoding_message_size(max_message.max(64 << 20));
        // NODELAY on every accepted connection (the builder's own setting does not reach an
        // incoming stream): without it small responses wait for delayed ACKs (~40 ms).
        let incoming = tonic::transport::server::TcpIncoming::from(listener)
            .with_nodelay(Some(true))
            .with_keepalive(Some(Duration::from_secs(60)));
        let incoming = admit::admitted(
            incoming,
            admit::Admission::new(
                cfg.max_connections,
                cfg.max_connections_per_client,
                Duration::from_millis(cfg.handshake_timeout_ms),
            ),
        );
        let mut until = stop_rx;
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .http2_keepalive_interval(Some(Duration::from_secs(30)))
                .add_service(svc)
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = until.wait_for(|s| *s).await;
                }),
        );
        tracing::info!(grpc = %addr, brokers = ?cluster.seeds().iter().map(|e| e.to_string()).collect::<Vec<_>>(), namesrv = ?cfg.namesrv, "proxy ready");
        Ok(RunningProxy {
            addr,
            #[cfg(feature = "embedded")]
            broker,
            cluster,
            service,
            stop,
            server,
            remoting,
            grace: Duration::from_millis(cfg.drain_grace_ms),
        })
    }

    /// The gRPC address served (the real port when asked for port 0).
    pub fn grpc_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The remoting endpoint served, if any.
    pub fn remoting_endpoint(&self) -> Option<&Endpoint> {
        self.remoting.as_ref().map(|h| h.local_endpoint())
    }

    /// The embedded broker, if any.
    #[cfg(feature = "embedded")]
    pub fn embedded_broker(&self) -> Option<&RunningBroker> {
        self.broker.as_ref()
    }

    /// The broker endpoints forwarded to.
    pub fn brokers(&self) -> &[Endpoint] {
        self.cluster.seeds()
    }

    /// The gRPC service (for inspection).
    pub fn service(&self) -> &MessagingProxy {
        &self.service
    }

    /// Drains: parked long polls answer at once, HTTP/2 GOAWAY tells clients to go elsewhere,
    /// in-flight calls finish (bounded by the drain grace); then the embedded broker stops.
    pub async fn shutdown(self) -> Result<(), StartError> {
        let _ = self.stop.send(true);
        let abort = self.server.abort_handle();
        match tokio::time::timeout(self.grace, self.server).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "gRPC server ended with an error"),
            Ok(Err(e)) => tracing::warn!(error = %e, "gRPC server task failed"),
            Err(_) => {
                tracing::warn!("in-flight gRPC calls outlived the drain grace; closing them");
                abort.abort();
            }
        }
        if let Some(r) = self.remoting {
            r.shutdown(self.grace).await;
        }
        self.cluster.close().await;
        #[cfg(feature = "embedded")]
        if let Some(b) = self.broker {
            b.shutdown().await?;
        }
        Ok(())
    }
}
