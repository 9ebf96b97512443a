//! `rdmq-namesrv`: a RocketMQ name server. Brokers register with it (REGISTER_BROKER with their
//! topics, every 30 s; UNREGISTER_BROKER on drain) and are dropped after their heartbeat timeout
//! (120 s by default) of silence; proxies and remoting clients ask it for routes
//! (GET_ROUTEINFO_BY_TOPIC), the cluster (GET_BROKER_CLUSTER_INFO) and topic lists. It speaks
//! RocketMQ's own formats, so RocketMQ brokers, clients and admin tools use it as theirs, and
//! rdmq brokers can register with a RocketMQ name server instead.
//!
//! A separate process rather than a proxy role: it is the one stateful piece of the control
//! plane (soft state, rebuilt from registrations within a heartbeat), deployments already run
//! name servers at known addresses, and proxies stay stateless and interchangeable.

pub mod registry;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdmq_protocol::route::{self, RegisterBody};
use rdmq_transport::protocol::{request_code as rc, response_code as code};
use rdmq_transport::remoting::{Request, Router, Server, ServerConfig, ServerHandle};
use rdmq_transport::sync::Plain;
use rdmq_transport::{AnyTransport, Endpoint, RemotingCommand, Transport};

use crate::error::Refusal;
use registry::{Registration, Registry};

/// The heartbeat timeout of a registration that does not state one (RocketMQ's default).
pub const DEFAULT_BROKER_TIMEOUT: Duration = Duration::from_secs(120);

/// Name server settings.
#[derive(Debug, Clone)]
pub struct NameServerConfig {
    /// `host:port` to serve remoting on (TCP).
    pub listen: String,
    /// Drop brokers silent this long, whatever their registration says (`None`: as they say).
    pub broker_timeout: Option<Duration>,
    /// Serve Prometheus metrics here.
    pub metrics_listen: Option<String>,
}

impl Default for NameServerConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:9876".into(),
            broker_timeout: None,
            metrics_listen: None,
        }
    }
}

/// Why a name server could not start.
#[derive(Debug, thiserror::Error)]
pub enum NameServerError {
    /// A bad flag.
    #[error("{0}")]
    Config(String),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// Why.
        source: rdmq_transport::TransportError,
    },
}

type Shared = Arc<Mutex<Registry>>;

fn reply(c: i32, remark: impl Into<String>) -> Refusal {
    Refusal::new(c, remark)
}

fn ok() -> RemotingCommand {
    RemotingCommand::response(code::SUCCESS, None)
}

fn field<'a>(req: &'a RemotingCommand, key: &str) -> Result<&'a str, Refusal> {
    req.field(key)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| reply(code::SYSTEM_ERROR, format!("missing header field `{key}`")))
}

fn register(
    reg: &Shared,
    req: &RemotingCommand,
    cap: Option<Duration>,
) -> Result<RemotingCommand, Refusal> {
    let name = field(req, "brokerName")?;
    let addr = field(req, "brokerAddr")?;
    let cluster = field(req, "clusterName")?;
    let num = |k: &str, default: i64| match req.field(k) {
        None | Some("") => Ok(default),
        Some(v) => v
            .parse::<i64>()
            .map_err(|_| reply(code::SYSTEM_ERROR, format!("`{k}` is not a number: `{v}`"))),
    };
    let id = num("brokerId", 0)?;
    if req.field("compressed") == Some("true") {
        return Err(reply(
            code::SYSTEM_ERROR,
            "compressed registrations are not supported; register with compressed=false",
        ));
    }
    let crc = num("bodyCrc32", 0)?;
    // RocketMQ's crc32 keeps the low 31 bits.
    if crc != 0 && (crc as u32 & 0x7fff_ffff) != (crc32fast::hash(&req.body) & 0x7fff_ffff) {
        return Err(reply(
            code::SYSTEM_ERROR,
            "registration body does not match its bodyCrc32",
        ));
    }
    let body = if req.body.is_empty() {
        RegisterBody::default()
    } else {
        RegisterBody::parse(&req.body).map_err(|e| reply(code::SYSTEM_ERROR, e.to_string()))?
    };
    let stated = Duration::from_millis(num("heartbeatTimeoutMillis", 120_000)?.max(1_000) as u64);
    let timeout = cap.map_or(stated, |c| c.min(stated));
    let endpoints = req
        .field(route::REGISTER_ENDPOINTS_FIELD)
        .map(|e| {
            e.split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let topics = body.topics.len();
    let new = reg.lock().plain().register(
        Registration {
            cluster: cluster.to_owned(),
            name: name.to_owned(),
            id,
            addr: addr.to_owned(),
            endpoints,
            topics: body.topics,
            timeout,
        },
        Instant::now(),
    );
    if new {
        tracing::info!(
            broker = name,
            addr,
            cluster,
            id,
            topics,
            "broker registered"
        );
    }
    Ok(ok()
        .with_field("haServerAddr", "")
        .with_field("masterAddr", if id == 0 { "" } else { addr }))
}

fn route_info(reg: &Shared, req: &RemotingCommand) -> Result<RemotingCommand, Refusal> {
    let topic = field(req, "topic")?;
    let with_endpoints = req.field(route::ENDPOINTS_FIELD).is_some();
    let mut r = reg.lock().plain();
    r.expire(Instant::now());
    match r.route(topic) {
        Some(route) => Ok(ok().with_body(route.to_json(with_endpoints).into_bytes())),
        None => Err(reply(
            code::TOPIC_NOT_EXIST,
            format!("No topic route info in name server for the topic: {topic}"),
        )),
    }
}

fn handle(reg: &Shared, cap: Option<Duration>, req: &Request) -> RemotingCommand {
    let cmd = &req.command;
    let r = match cmd.code {
        rc::REGISTER_BROKER => register(reg, cmd, cap),
        rc::UNREGISTER_BROKER => field(cmd, "brokerAddr").map(|addr| {
            if let Some(name) = reg.lock().plain().unregister(addr) {
                tracing::info!(broker = %name, addr, "broker unregistered");
            }
            ok()
        }),
        rc::BROKER_HEARTBEAT => field(cmd, "brokerAddr").map(|addr| {
            if reg.lock().plain().heartbeat(addr, Instant::now()) {
                ok()
            } else {
                reply(
                    code::SYSTEM_ERROR,
                    format!("broker {addr} is not registered"),
                )
                .into_response()
            }
        }),
        rc::GET_ROUTEINFO_BY_TOPIC => route_info(reg, cmd),
        rc::GET_BROKER_CLUSTER_INFO => {
            let mut r = reg.lock().plain();
            r.expire(Instant::now());
            let with_endpoints = cmd.field(route::ENDPOINTS_FIELD).is_some();
            Ok(ok().with_body(r.cluster_info().to_json(with_endpoints).into_bytes()))
        }
        rc::GET_ALL_TOPIC_LIST_FROM_NAMESERVER => {
            let topics = reg.lock().plain().topics(None);
            Ok(ok().with_body(route::topic_list_json(&topics).into_bytes()))
        }
        rc::GET_TOPICS_BY_CLUSTER => field(cmd, "cluster").map(|c| {
            let topics = reg.lock().plain().topics(Some(c));
            ok().with_body(route::topic_list_json(&topics).into_bytes())
        }),
        rc::DELETE_TOPIC_IN_NAMESRV => field(cmd, "topic").map(|t| {
            let cluster = cmd.field("clusterName").filter(|c| !c.is_empty());
            reg.lock().plain().delete_topic(t, cluster);
            ok()
        }),
        other => Err(reply(
            code::REQUEST_CODE_NOT_SUPPORTED,
            format!("request code {other} is not supported by the name server"),
        )),
    };
    r.unwrap_or_else(Refusal::into_response)
}

/// A serving name server.
#[derive(Debug)]
pub struct RunningNameServer {
    handle: ServerHandle,
    registry: Shared,
    sweeper: tokio::task::JoinHandle<()>,
}

impl RunningNameServer {
    /// Binds `cfg.listen` and serves.
    pub async fn start(cfg: &NameServerConfig) -> Result<Self, NameServerError> {
        let url = format!("tcp://{}", cfg.listen);
        let endpoint: Endpoint = url.parse().map_err(|source| NameServerError::Listen {
            addr: cfg.listen.clone(),
            source,
        })?;
        let registry: Shared = Arc::new(Mutex::new(Registry::default()));
        let mut router = Router::new();
        for c in [
            rc::REGISTER_BROKER,
            rc::UNREGISTER_BROKER,
            rc::BROKER_HEARTBEAT,
            rc::GET_ROUTEINFO_BY_TOPIC,
            rc::GET_BROKER_CLUSTER_INFO,
            rc::GET_ALL_TOPIC_LIST_FROM_NAMESERVER,
            rc::GET_TOPICS_BY_CLUSTER,
            rc::DELETE_TOPIC_IN_NAMESRV,
        ] {
            let reg = registry.clone();
            let cap = cfg.broker_timeout;
            router.add(c, move |req: Request| {
                let out = handle(&reg, cap, &req);
                async move { out }
            });
        }
        let transport = AnyTransport::default();
        let listener =
            transport
                .bind(&endpoint)
                .await
                .map_err(|source| NameServerError::Listen {
                    addr: cfg.listen.clone(),
                    source,
                })?;
        let handle = Server::new(transport, router, ServerConfig::default()).serve(listener);
        let sweep = registry.clone();
        let sweeper = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                for (name, addr) in sweep.lock().plain().expire(Instant::now()) {
                    tracing::warn!(broker = %name, %addr, "broker expired: no registration within its heartbeat timeout");
                }
            }
        });
        tracing::info!(listen = %handle.local_endpoint(), "name server ready");
        Ok(Self {
            handle,
            registry,
            sweeper,
        })
    }

    /// The endpoint served (the real port when asked for port 0).
    pub fn endpoint(&self) -> &Endpoint {
        self.handle.local_endpoint()
    }

    /// Live registrations.
    pub fn brokers(&self) -> usize {
        self.registry.lock().plain().len()
    }

    /// Stops serving.
    pub async fn shutdown(self) {
        self.sweeper.abort();
        self.handle.shutdown(Duration::from_secs(1)).await;
    }
}

/// The flags of `rdmq-namesrv` (each also from `RDMQ_NAMESRV_<FLAG>`).
#[derive(Debug, clap::Parser)]
#[command(
    name = "rdmq-namesrv",
    about = "rdmq name server: RocketMQ broker registry and routes (REGISTER_BROKER, GET_ROUTEINFO_BY_TOPIC, …)",
    disable_version_flag = true
)]
struct Flags {
    /// Remoting endpoint (TCP)
    #[arg(
        long,
        value_name = "HOST:PORT",
        default_value = "0.0.0.0:9876",
        env = "RDMQ_NAMESRV_LISTEN"
    )]
    listen: String,
    /// Drop brokers silent this long even if they registered a longer timeout (default: theirs,
    /// 120000 when unstated)
    #[arg(long, value_name = "MS", env = "RDMQ_NAMESRV_BROKER_TIMEOUT_MS")]
    broker_timeout_ms: Option<u64>,
    /// Serve Prometheus metrics at http://HOST:PORT/metrics (default off)
    #[arg(long, value_name = "HOST:PORT", env = "RDMQ_NAMESRV_METRICS_LISTEN")]
    metrics_listen: Option<String>,
}

/// Parses the flags; `Ok(None)` for `--help` (printed).
pub fn parse_args(args: &[String]) -> Result<Option<NameServerConfig>, NameServerError> {
    use clap::Parser;
    match Flags::try_parse_from(
        std::iter::once("rdmq-namesrv".to_owned()).chain(args.iter().cloned()),
    ) {
        Ok(f) => {
            if let Some(0) = f.broker_timeout_ms {
                return Err(NameServerError::Config(
                    "--broker-timeout-ms must be above 0".into(),
                ));
            }
            Ok(Some(NameServerConfig {
                listen: f.listen,
                broker_timeout: f.broker_timeout_ms.map(Duration::from_millis),
                metrics_listen: f.metrics_listen,
            }))
        }
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelp => {
            print!("{e}");
            Ok(None)
        }
        Err(e) => Err(NameServerError::Config(
            e.render().to_string().trim_end().to_owned(),
        )),
    }
}

/// The `rdmq-namesrv` program; prints `listening tcp://<addr>` when serving.
pub fn namesrv_main(args: Vec<String>) -> std::process::ExitCode {
    use rdmq_transport::process as serve;
    use std::io::Write;
    serve::init_logging();
    let cfg = match parse_args(&args) {
        Ok(Some(c)) => c,
        Ok(None) => return std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rdmq-namesrv: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    serve::run_main("rdmq-namesrv", async move {
        let ns = RunningNameServer::start(&cfg).await?;
        let _metrics = serve::start_metrics(cfg.metrics_listen.as_deref())
            .await
            .map_err(|e| NameServerError::Listen {
                addr: cfg.metrics_listen.clone().unwrap_or_default(),
                source: e.into(),
            })?;
        {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "listening {}", ns.endpoint());
            let _ = out.flush();
        }
        serve::wait_for_signal().await;
        ns.shutdown().await;
        Ok::<(), NameServerError>(())
    })
}
