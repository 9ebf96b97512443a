//! Membership: the broker registers with name servers as RocketMQ brokers do — REGISTER_BROKER
//! with every topic's configuration, every 30 s and within a second of a topic change — and
//! sends UNREGISTER_BROKER when it drains, so proxies and clients stop routing new sends to it
//! before it goes. A name server that does not answer costs a warning, never the broker.

use std::sync::Arc;
use std::time::Duration;

pub use rdmq_protocol::route::parse_namesrv;
use rdmq_protocol::route::{self, RegisterBody, TopicEntry};
use rdmq_transport::protocol::{request_code as rc, response_code as code};
use rdmq_transport::remoting::{Client, ClientConfig};
use rdmq_transport::{AnyTransport, Endpoint, RemotingCommand};
use tokio::sync::watch;

use crate::store::Store;

/// How often the topic table is checked for changes between registrations.
const CHANGE_CHECK: Duration = Duration::from_secs(1);
/// Each call to a name server.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// Who registers, where, how often.
#[derive(Debug, Clone)]
pub struct RegisterConfig {
    /// Name servers (`host:port`).
    pub namesrv: Vec<String>,
    /// Cluster name.
    pub cluster: String,
    /// Broker name.
    pub broker_name: String,
    /// The `host:port` clients reach the broker at.
    pub addr: String,
    /// Every transport URL served, with advertised hosts.
    pub endpoints: Vec<String>,
    /// Registration period (RocketMQ: 30 s).
    pub interval: Duration,
    /// Silence after which name servers drop this broker (RocketMQ: 120 s).
    pub timeout: Duration,
}

/// The running registration loop.
#[derive(Debug)]
pub struct Registrar {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    client: Arc<Client<AnyTransport>>,
    cfg: RegisterConfig,
}

fn signature(topics: &[TopicEntry]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for t in topics {
        (&t.name, t.read_queues, t.write_queues, t.perm, t.sys_flag).hash(&mut h);
    }
    h.finish()
}

fn entries(store: &Store) -> Vec<TopicEntry> {
    store
        .topics()
        .into_iter()
        .map(|t| TopicEntry {
            name: t.name,
            read_queues: t.read_queues,
            write_queues: t.write_queues,
            perm: t.perm,
            sys_flag: t.sys_flag,
        })
        .collect()
}

fn endpoint(addr: &str) -> Option<Endpoint> {
    format!("tcp://{addr}").parse().ok()
}

impl Registrar {
    /// Registers at once with every name server, then keeps registering in the background.
    pub fn start(store: Store, cfg: RegisterConfig) -> Self {
        let client = Arc::new(Client::new(
            AnyTransport::default(),
            ClientConfig {
                connections_per_endpoint: 1,
                call_timeout: CALL_TIMEOUT,
                backoff_max: Duration::from_secs(2),
                ..ClientConfig::default()
            },
        ));
        let (stop, mut stopped) = watch::channel(false);
        let task = {
            let client = client.clone();
            let cfg = cfg.clone();
            tokio::spawn(async move {
                let mut version = 0i64;
                let mut last_sig = None;
                let mut last_sent = tokio::time::Instant::now();
                let mut healthy = vec![true; cfg.namesrv.len()];
                loop {
                    let store2 = store.clone();
                    let topics = match tokio::task::spawn_blocking(move || entries(&store2)).await {
                        Ok(t) => t,
                        Err(_) => return,
                    };
                    let sig = signature(&topics);
                    if last_sig != Some(sig) || last_sent.elapsed() >= cfg.interval {
                        if last_sig != Some(sig) {
                            version += 1;
                            last_sig = Some(sig);
                        }
                        let body = RegisterBody {
                            topics,
                            version,
                            timestamp: rdmq_protocol::now_ms(),
                        };
                        register_all(&client, &cfg, &body, &mut healthy).await;
                        last_sent = tokio::time::Instant::now();
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(CHANGE_CHECK) => {}
                        _ = stopped.wait_for(|s| *s) => return,
                    }
                }
            })
        };
        Self {
            stop,
            task,
            client,
            cfg,
        }
    }

    /// Stops registering and unregisters from every name server (bounded by the call timeout).
    pub async fn unregister(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        let calls = self.cfg.namesrv.iter().filter_map(|ns| {
            let ep = endpoint(ns)?;
            let req = RemotingCommand::request(rc::UNREGISTER_BROKER)
                .with_field("brokerName", &self.cfg.broker_name)
                .with_field("brokerAddr", &self.cfg.addr)
                .with_field("clusterName", &self.cfg.cluster)
                .with_field("brokerId", "0");
            let client = self.client.clone();
            let ns = ns.clone();
            Some(async move {
                match client.invoke(&ep, req, Some(CALL_TIMEOUT)).await {
                    Ok(r) if r.code == code::SUCCESS => {
                        tracing::info!(namesrv = %ns, "unregistered from the name server")
                    }
                    Ok(r) => tracing::warn!(namesrv = %ns, code = r.code, remark = ?r.remark, "name server refused the unregistration"),
                    Err(e) => tracing::warn!(namesrv = %ns, error = %e, "cannot unregister from the name server"),
                }
            })
        });
        let calls: Vec<_> = calls.map(tokio::spawn).collect();
        for c in calls {
            let _ = c.await;
        }
        self.client.close(Duration::from_millis(200)).await;
    }
}

async fn register_all(
    client: &Arc<Client<AnyTransport>>,
    cfg: &RegisterConfig,
    body: &RegisterBody,
    healthy: &mut [bool],
) {
    let body = bytes::Bytes::from(body.to_json().into_bytes());
    let crc = crc32fast::hash(&body) & 0x7fff_ffff;
    let calls: Vec<_> = cfg
        .namesrv
        .iter()
        .map(|ns| {
            let req = RemotingCommand::request(rc::REGISTER_BROKER)
                .with_field("brokerName", &cfg.broker_name)
                .with_field("brokerAddr", &cfg.addr)
                .with_field("clusterName", &cfg.cluster)
                .with_field("haServerAddr", &cfg.addr)
                .with_field("brokerId", "0")
                .with_field(
                    "heartbeatTimeoutMillis",
                    cfg.timeout.as_millis().to_string(),
                )
                .with_field("enableActingMaster", "false")
                .with_field("compressed", "false")
                .with_field("bodyCrc32", crc.to_string())
                .with_field(route::REGISTER_ENDPOINTS_FIELD, cfg.endpoints.join(","))
                .with_body(body.clone());
            let client = client.clone();
            let ep = endpoint(ns);
            tokio::spawn(async move {
                let Some(ep) = ep else {
                    return Err("not host:port".to_owned());
                };
                match client.invoke(&ep, req, Some(CALL_TIMEOUT)).await {
                    Ok(r) if r.code == code::SUCCESS => Ok(()),
                    Ok(r) => Err(format!(
                        "code {} {}",
                        r.code,
                        r.remark.as_deref().unwrap_or("")
                    )),
                    Err(e) => Err(e.to_string()),
                }
            })
        })
        .collect();
    for ((call, ns), ok) in calls.into_iter().zip(&cfg.namesrv).zip(healthy.iter_mut()) {
        match call.await {
            Ok(Ok(())) => {
                if !*ok {
                    tracing::info!(namesrv = %ns, "registered with the name server again");
                }
                *ok = true;
            }
            Ok(Err(e)) => {
                if *ok {
                    tracing::warn!(namesrv = %ns, error = %e, "cannot register with the name server; retrying");
                }
                *ok = false;
            }
            Err(_) => *ok = false,
        }
    }
}
