//! Running a broker: bind the configured endpoints, recover the store, start the pop and
//! timer services and serve remoting. Used by the `rdmq-broker` binary and by the proxy's
//! embedded mode.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use rdmq_transport::remoting::{Server, ServerConfig, ServerHandle};
use rdmq_transport::{AnyTransport, Endpoint, Scheme, Transport};

use crate::config::BrokerConfig;
use crate::handlers::{Broker, router};
use crate::store::{Store, StoreError};

/// Why a broker could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A `--listen` URL does not parse.
    #[error("listen URL {url}: {source}")]
    Endpoint {
        /// The URL.
        url: String,
        /// Why.
        source: rdmq_transport::TransportError,
    },
    /// An endpoint could not be bound.
    #[error("cannot listen on {url}: {source}")]
    Bind {
        /// The URL.
        url: String,
        /// Why.
        source: rdmq_transport::TransportError,
    },
    /// Nothing to listen on.
    #[error("no endpoint to listen on")]
    NoEndpoint,
    /// The store could not be opened (recovery failed).
    #[error("cannot open the store in {dir}: {source}")]
    Store {
        /// The store directory.
        dir: std::path::PathBuf,
        /// Why.
        source: StoreError,
    },
    /// A configured topic could not be created.
    #[error("cannot create topic {topic}: {source}")]
    Topic {
        /// The topic.
        topic: String,
        /// Why.
        source: StoreError,
    },
    /// The pop and timer services could not start.
    #[error("cannot start the pop and timer services: {0}")]
    Services(StoreError),
    /// A blocking start-up or shutdown step panicked.
    #[error("{what} panicked: {source}")]
    Panicked {
        /// The step.
        what: &'static str,
        /// The join error.
        source: tokio::task::JoinError,
    },
}

/// A serving broker.
#[derive(Debug)]
pub struct RunningBroker {
    broker: Arc<Broker>,
    handles: Vec<ServerHandle>,
    endpoints: Vec<Endpoint>,
    grace: Duration,
    registrar: Option<crate::register::Registrar>,
    unregister_wait: Duration,
}

impl RunningBroker {
    /// Binds every endpoint of `cfg` on `transport` (before recovery, so the advertised
    /// address is the real port), opens the store, creates the configured topics and serves.
    pub async fn start(cfg: &BrokerConfig, transport: AnyTransport) -> Result<Self, ServeError> {
        let mut listeners = Vec::new();
        for url in &cfg.listen {
            let endpoint: Endpoint = url.parse().map_err(|source| ServeError::Endpoint {
                url: url.clone(),
                source,
            })?;
            let listener = transport
                .bind(&endpoint)
                .await
                .map_err(|source| ServeError::Bind {
                    url: url.clone(),
                    source,
                })?;
            listeners.push(listener);
        }
        if listeners.is_empty() {
            return Err(ServeError::NoEndpoint);
        }
        let advertise = match &cfg.advertise {
            Some(a) => a.clone(),
            None => default_advertise(&listeners),
        };
        let store_cfg = cfg.store_config(&advertise);
        let dir = cfg.store_dir.clone();
        let store = tokio::task::spawn_blocking(move || Store::open(store_cfg))
            .await
            .map_err(|source| ServeError::Panicked {
                what: "store recovery",
                source,
            })?
            .map_err(|source| ServeError::Store { dir, source })?;
        for topic in cfg.topic_configs() {
            let mut t = topic;
            if let Some(existing) = store.topic(&t.name) {
                t.perm = existing.perm;
                t.sys_flag = existing.sys_flag;
            }
            let topic = t.name.clone();
            store
                .put_topic(t)
                .map_err(|source| ServeError::Topic { topic, source })?;
        }
        let broker = {
            let info = cfg.broker_info(&advertise);
            tokio::task::spawn_blocking(move || Broker::start(store, info))
                .await
                .map_err(|source| ServeError::Panicked {
                    what: "broker start",
                    source,
                })?
                .map_err(ServeError::Services)?
        };
        let wakeups = broker.store.poll_wakeup_counter();
        rdmq_transport::metrics::global().collect(Box::new(move |out| {
            let Some(c) = wakeups.upgrade() else {
                return false;
            };
            out.push(rdmq_transport::metrics::Sample {
                name: "rdmq_broker_long_poll_wakeups_total",
                help: "Long polls (pull and pop) woken by messages arriving on their queue or topic",
                kind: rdmq_transport::metrics::Kind::Counter,
                labels: vec![],
                value: c.load(std::sync::atomic::Ordering::Relaxed) as f64,
            });
            true
        }));
        use rdmq_transport::protocol::request_code as c;
        let metrics = rdmq_transport::remoting::CallMetrics::server(
            "broker",
            &[
                (c::SEND_MESSAGE, "SEND_MESSAGE"),
                (c::SEND_MESSAGE_V2, "SEND_MESSAGE_V2"),
                (c::SEND_BATCH_MESSAGE, "SEND_BATCH_MESSAGE"),
                (c::PULL_MESSAGE, "PULL_MESSAGE"),
                (c::POP_MESSAGE, "POP_MESSAGE"),
                (c::ACK_MESSAGE, "ACK_MESSAGE"),
                (
                    c::CHANGE_MESSAGE_INVISIBLETIME,
                    "CHANGE_MESSAGE_INVISIBLETIME",
                ),
            ],
        );
        let config = ServerConfig {
            metrics: Some(metrics),
            max_connections: cfg.max_connections,
            max_connections_per_client: cfg.max_connections_per_client,
            idle_timeout: (cfg.idle_timeout_secs > 0)
                .then(|| Duration::from_secs(cfg.idle_timeout_secs)),
            ..ServerConfig::default()
        };
        let server = Server::new(transport, router(broker.clone()), config);
        let handles: Vec<ServerHandle> = listeners.into_iter().map(|l| server.serve(l)).collect();
        let endpoints: Vec<Endpoint> = handles.iter().map(|h| h.local_endpoint().clone()).collect();
        let registrar = (!cfg.namesrv.is_empty()).then(|| {
            let host = advertise
                .rsplit_once(':')
                .map_or(advertise.as_str(), |(h, _)| h)
                .to_owned();
            let urls = endpoints
                .iter()
                .map(|e| {
                    let mut e = e.clone();
                    if matches!(e.host.as_str(), "0.0.0.0" | "::" | "") {
                        e.host = host.clone();
                    }
                    e.to_string()
                })
                .collect();
            crate::register::Registrar::start(
                broker.store.clone(),
                crate::register::RegisterConfig {
                    namesrv: cfg.namesrv.clone(),
                    cluster: cfg.cluster.clone(),
                    broker_name: cfg.broker_name.clone(),
                    addr: advertise.clone(),
                    endpoints: urls,
                    interval: Duration::from_millis(cfg.register_interval_ms),
                    timeout: Duration::from_millis(cfg.register_timeout_ms),
                },
            )
        });
        tracing::info!(
            broker = %cfg.broker_name,
            advertise = %advertise,
            store = %cfg.store_dir.display(),
            flush = ?cfg.flush,
            "broker ready"
        );
        Ok(Self {
            broker,
            handles,
            endpoints,
            grace: Duration::from_millis(cfg.drain_grace_ms),
            registrar,
            unregister_wait: Duration::from_millis(cfg.unregister_wait_ms),
        })
    }

    /// The endpoints served, with the real ports.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// The broker's state (store, pop and timer services).
    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// Drains: unregisters from the name servers and keeps serving for the unregister wait
    /// (routes move away), then drains the listeners (in-flight requests are answered), then
    /// flushes and stops the store.
    pub async fn shutdown(mut self) -> Result<(), ServeError> {
        if let Some(r) = self.registrar.take() {
            r.unregister().await;
            tracing::info!(wait = ?self.unregister_wait, "unregistered; serving until routes move away");
            tokio::time::sleep(self.unregister_wait).await;
        }
        self.broker.pop.end_long_polls();
        for h in self.handles {
            h.shutdown(self.grace).await;
        }
        let broker = self.broker;
        tokio::task::spawn_blocking(move || broker.shutdown())
            .await
            .map_err(|source| ServeError::Panicked {
                what: "store shutdown",
                source,
            })
    }
}

/// The first TCP-reachable listener's address; an unspecified host becomes 127.0.0.1 (set
/// `--advertise` for clients on other machines).
fn default_advertise<L: rdmq_transport::Listener>(listeners: &[L]) -> String {
    let ep = listeners
        .iter()
        .map(|l| l.local_endpoint())
        .find(|e| e.scheme == Scheme::Tcp)
        .or_else(|| listeners.first().map(|l| l.local_endpoint()))
        .expect("at least one listener");
    let host = match ep.host.as_str() {
        "0.0.0.0" | "::" | "" => {
            tracing::warn!("listening on all interfaces; advertising 127.0.0.1 (set --advertise)");
            "127.0.0.1".to_owned()
        }
        h => h.to_owned(),
    };
    Endpoint { host, ..ep }.authority()
}

pub use rdmq_transport::process::{init_logging, run_main, start_metrics, wait_for_signal};

/// The `rdmq-broker` program; `args` without the program name. On start it prints one line
/// per endpoint, `listening <url>`, to stdout (tests and scripts read the real ports from
/// there when they asked for port 0).
pub fn broker_main(args: Vec<String>) -> std::process::ExitCode {
    init_logging();
    let cfg = match BrokerConfig::from_args(&args) {
        Ok(Some(cfg)) => cfg,
        Ok(None) => {
            print!("{}", crate::config::usage());
            return std::process::ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("rdmq-broker: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    run_main("rdmq-broker", async move {
        let running = RunningBroker::start(&cfg, AnyTransport::default()).await?;
        let _metrics = start_metrics(cfg.metrics_listen.as_deref())
            .await
            .map_err(|source| ServeError::Bind {
                url: cfg.metrics_listen.clone().unwrap_or_default(),
                source: rdmq_transport::TransportError::from(source),
            })?;
        {
            let mut out = std::io::stdout().lock();
            for ep in running.endpoints() {
                let _ = writeln!(out, "listening {ep}");
            }
            let _ = out.flush();
        }
        wait_for_signal().await;
        tracing::info!("draining");
        running.shutdown().await?;
        tracing::info!("stopped");
        Ok::<(), ServeError>(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn start_failures_are_typed() {
        let mut cfg = BrokerConfig {
            listen: vec!["nonsense://x".into()],
            ..BrokerConfig::default()
        };
        let start = |cfg: BrokerConfig| async move {
            RunningBroker::start(&cfg, AnyTransport::default())
                .await
                .err()
        };
        assert!(matches!(
            start(cfg.clone()).await,
            Some(ServeError::Endpoint { .. })
        ));
        cfg.listen.clear();
        assert!(matches!(
            start(cfg.clone()).await,
            Some(ServeError::NoEndpoint)
        ));
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        cfg.listen = vec![format!("tcp://{}", taken.local_addr().unwrap())];
        let e = start(cfg).await;
        assert!(matches!(e, Some(ServeError::Bind { .. })), "{e:?}");
    }
}
