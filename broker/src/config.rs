//! Broker configuration: a TOML file, then command-line flags on top.
//!
//! ```toml
//! listen = ["tcp://0.0.0.0:10911", "rdma://0.0.0.0:10912"]
//! store_dir = "/var/lib/rdmq"
//! flush = "sync"            # or "async"
//! broker_name = "broker-a"
//! [[topics]]
//! name = "orders"
//! queues = 8
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::handlers::BrokerInfo;
use crate::message::HostAddr;
use crate::pop::{InitialOffset, PopConfig};
use crate::store::meta::TopicConfig;
use crate::store::{FlushMode, RetentionConfig, StoreConfig};
use crate::timer::TimerConfig;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("config file {path}: {message}")]
    Parse {
        /// File.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// A flag or value is wrong.
    #[error("{0}")]
    Invalid(String),
}

/// How commits are acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Flush {
    /// fsync before acknowledging.
    Sync,
    /// Acknowledge after the page-cache write; fsync periodically.
    Async,
}

/// A topic to create at start.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TopicSpec {
    /// Name.
    pub name: String,
    /// Read and write queues.
    #[serde(default = "default_queues")]
    pub queues: u32,
    /// Keep messages at most this many hours.
    #[serde(default)]
    pub retention_hours: Option<u64>,
    /// Keep at most this many bytes per queue.
    #[serde(default)]
    pub retention_bytes: Option<u64>,
}

fn default_queues() -> u32 {
    4
}

/// Everything the broker process is configured with.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// Endpoints to serve (`tcp://`, `rdma://`, `rdma-sim://`).
    pub listen: Vec<String>,
    /// Store directory.
    pub store_dir: PathBuf,
    /// Acknowledgement policy.
    pub flush: Flush,
    /// fsync period in ASYNC mode (ms).
    pub flush_interval_ms: u64,
    /// Commit log segment size (bytes).
    pub segment_size: u64,
    /// Broker name.
    pub broker_name: String,
    /// Cluster name.
    pub cluster: String,
    /// Address given to clients in routes and stored as the store host; defaults to the first
    /// TCP listener's address.
    pub advertise: Option<String>,
    /// Create unknown topics on first use.
    pub auto_create_topics: bool,
    /// Queues of auto-created topics.
    pub default_queues: u32,
    /// Largest message body (bytes).
    pub max_body: usize,
    /// Refuse sends when the disk has less free space than this (bytes).
    pub min_free_bytes: u64,
    /// Broker-wide retention: delete sealed segments older than this (hours; 0 = never).
    pub retention_hours: u64,
    /// Broker-wide retention: keep the commit log below this many bytes.
    pub retention_bytes: Option<u64>,
    /// Longest PULL long-poll (ms).
    pub max_long_poll_ms: u64,
    /// Time given to in-flight requests on shutdown (ms).
    pub drain_grace_ms: u64,
    /// Topics created at start (existing ones are updated).
    pub topics: Vec<TopicSpec>,
    /// Where a new consumer group starts popping: `auto`, `first` or `last`.
    pub pop_initial_offset: InitialOffset,
    /// Create unknown consumer groups on first pop.
    pub auto_create_groups: bool,
    /// Serve Prometheus metrics on this `host:port` (`/metrics`); off when unset.
    pub metrics_listen: Option<String>,
    /// Deliveries of a message before it is dead-lettered (groups created implicitly).
    pub max_delivery_attempts: u32,
    /// Latest accepted delivery time of a timed message, in hours from now.
    pub timer_max_delay_hours: u64,
    /// Open remoting connections per listener beyond which new ones are closed at once.
    pub max_connections: usize,
    /// Open connections from one client address beyond which its new ones are closed.
    pub max_connections_per_client: usize,
    /// Connections with no request and nothing in progress for this long are closed
    /// (seconds; 0 = never).
    pub idle_timeout_secs: u64,
    /// Name servers to register with (`host:port`); none = no registration.
    pub namesrv: Vec<String>,
    /// Registration period (ms; RocketMQ's 30 s).
    pub register_interval_ms: u64,
    /// Silence after which name servers drop this broker (ms; RocketMQ's 120 s).
    pub register_timeout_ms: u64,
    /// After unregistering on drain, keep serving this long so proxies and clients move away
    /// before the listeners close (ms; above the proxies' route refresh of 2 s; remoting
    /// clients reaching brokers directly refresh routes every 30 s).
    pub unregister_wait_ms: u64,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            listen: vec!["tcp://0.0.0.0:10911".into()],
            store_dir: PathBuf::from("rdmq-store"),
            flush: Flush::Async,
            flush_interval_ms: 500,
            segment_size: 1 << 30,
            broker_name: "broker-a".into(),
            cluster: "DefaultCluster".into(),
            advertise: None,
            auto_create_topics: true,
            default_queues: 4,
            max_body: 4 << 20,
            min_free_bytes: 64 << 20,
            retention_hours: 72,
            retention_bytes: None,
            max_long_poll_ms: 30_000,
            drain_grace_ms: 5_000,
            topics: Vec::new(),
            pop_initial_offset: InitialOffset::Auto,
            auto_create_groups: true,
            max_delivery_attempts: 16,
            timer_max_delay_hours: 40 * 24,
            metrics_listen: None,
            max_connections: 10_000,
            max_connections_per_client: 1_000,
            idle_timeout_secs: 120,
            namesrv: Vec::new(),
            register_interval_ms: 30_000,
            register_timeout_ms: 120_000,
            unregister_wait_ms: 5_000,
        }
    }
}

/// The flags, parsed by clap (generated help; each flag also from an environment variable,
/// `RDMQ_BROKER_<FLAG>`, lists comma-separated). Values are checked by
/// [`BrokerConfig::from_args`], which applies them on top of `--config`.
#[derive(Debug, clap::Parser)]
#[command(
    name = "rdmq-broker",
    about = "rdmq storage broker: serves RocketMQ remoting over tcp://, rdma:// and rdma-sim://",
    disable_version_flag = true
)]
struct Flags {
    /// TOML configuration (the flags below override it)
    #[arg(long, value_name = "FILE", env = "RDMQ_BROKER_CONFIG")]
    config: Option<String>,
    /// Endpoint to serve; repeatable (tcp://, rdma://, rdma-sim://)
    #[arg(
        long,
        value_name = "URL",
        env = "RDMQ_BROKER_LISTEN",
        value_delimiter = ','
    )]
    listen: Vec<String>,
    /// Store directory
    #[arg(long, value_name = "DIR", env = "RDMQ_BROKER_STORE_DIR")]
    store_dir: Option<String>,
    /// fsync before acknowledging (sync), or periodically (async)
    #[arg(long, value_name = "sync|async", env = "RDMQ_BROKER_FLUSH")]
    flush: Option<String>,
    /// fsync period in async mode
    #[arg(long, value_name = "MS", env = "RDMQ_BROKER_FLUSH_INTERVAL_MS")]
    flush_interval_ms: Option<String>,
    /// Commit log segment size (suffixes K, M, G)
    #[arg(long, value_name = "BYTES", env = "RDMQ_BROKER_SEGMENT_SIZE")]
    segment_size: Option<String>,
    /// Broker name
    #[arg(long, value_name = "NAME", env = "RDMQ_BROKER_BROKER_NAME")]
    broker_name: Option<String>,
    /// Cluster name
    #[arg(long, value_name = "NAME", env = "RDMQ_BROKER_CLUSTER")]
    cluster: Option<String>,
    /// Address given to clients
    #[arg(long, value_name = "HOST:PORT", env = "RDMQ_BROKER_ADVERTISE")]
    advertise: Option<String>,
    /// Serve Prometheus metrics at http://HOST:PORT/metrics (default off)
    #[arg(long, value_name = "HOST:PORT", env = "RDMQ_BROKER_METRICS_LISTEN")]
    metrics_listen: Option<String>,
    /// Create unknown topics on first use
    #[arg(long, value_name = "BOOL", env = "RDMQ_BROKER_AUTO_CREATE_TOPICS")]
    auto_create_topics: Option<String>,
    /// Queues of auto-created topics
    #[arg(long, value_name = "N", env = "RDMQ_BROKER_DEFAULT_QUEUES")]
    default_queues: Option<String>,
    /// Largest message body (suffixes K, M, G)
    #[arg(long, value_name = "BYTES", env = "RDMQ_BROKER_MAX_BODY")]
    max_body: Option<String>,
    /// Create a topic at start; repeatable
    #[arg(
        long,
        value_name = "NAME[:QUEUES]",
        env = "RDMQ_BROKER_TOPIC",
        value_delimiter = ','
    )]
    topic: Vec<String>,
    /// Where new consumer groups start: auto, first or last
    #[arg(long, value_name = "MODE", env = "RDMQ_BROKER_POP_INITIAL_OFFSET")]
    pop_initial_offset: Option<String>,
    /// Create unknown consumer groups on first pop
    #[arg(long, value_name = "BOOL", env = "RDMQ_BROKER_AUTO_CREATE_GROUPS")]
    auto_create_groups: Option<String>,
    /// Deliveries before a message is dead-lettered
    #[arg(long, value_name = "N", env = "RDMQ_BROKER_MAX_DELIVERY_ATTEMPTS")]
    max_delivery_attempts: Option<String>,
    /// Open connections per listener beyond which new ones are closed (default 10000)
    #[arg(long, value_name = "N", env = "RDMQ_BROKER_MAX_CONNECTIONS")]
    max_connections: Option<String>,
    /// Open connections from one client address beyond which its new ones are closed
    /// (default 1000)
    #[arg(long, value_name = "N", env = "RDMQ_BROKER_MAX_CONNECTIONS_PER_CLIENT")]
    max_connections_per_client: Option<String>,
    /// Close connections idle this long, nothing in progress (default 120; 0 = never)
    #[arg(long, value_name = "SECS", env = "RDMQ_BROKER_IDLE_TIMEOUT_SECS")]
    idle_timeout_secs: Option<String>,
    /// Name servers to register with, RocketMQ style (default none)
    #[arg(
        long,
        value_name = "HOST:PORT;HOST:PORT",
        env = "RDMQ_BROKER_NAMESRV",
        help_heading = "Cluster membership"
    )]
    namesrv: Option<String>,
    /// Registration period (default 30000)
    #[arg(
        long,
        value_name = "MS",
        env = "RDMQ_BROKER_REGISTER_INTERVAL_MS",
        help_heading = "Cluster membership"
    )]
    register_interval_ms: Option<String>,
    /// Name servers drop the broker after this much silence (default 120000)
    #[arg(
        long,
        value_name = "MS",
        env = "RDMQ_BROKER_REGISTER_TIMEOUT_MS",
        help_heading = "Cluster membership"
    )]
    register_timeout_ms: Option<String>,
    /// On drain, serve this long after unregistering (default 5000)
    #[arg(
        long,
        value_name = "MS",
        env = "RDMQ_BROKER_UNREGISTER_WAIT_MS",
        help_heading = "Cluster membership"
    )]
    unregister_wait_ms: Option<String>,
}

impl Flags {
    /// The given flags as `(flag, value)` pairs, repeatable ones once per value.
    fn pairs(self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let mut one = |flag: &'static str, v: Option<String>| {
            if let Some(v) = v {
                out.push((flag, v));
            }
        };
        one("--store-dir", self.store_dir);
        one("--flush", self.flush);
        one("--flush-interval-ms", self.flush_interval_ms);
        one("--segment-size", self.segment_size);
        one("--broker-name", self.broker_name);
        one("--cluster", self.cluster);
        one("--advertise", self.advertise);
        one("--metrics-listen", self.metrics_listen);
        one("--auto-create-topics", self.auto_create_topics);
        one("--default-queues", self.default_queues);
        one("--max-body", self.max_body);
        one("--pop-initial-offset", self.pop_initial_offset);
        one("--auto-create-groups", self.auto_create_groups);
        one("--max-delivery-attempts", self.max_delivery_attempts);
        one("--max-connections", self.max_connections);
        one(
            "--max-connections-per-client",
            self.max_connections_per_client,
        );
        one("--idle-timeout-secs", self.idle_timeout_secs);
        one("--namesrv", self.namesrv);
        one("--register-interval-ms", self.register_interval_ms);
        one("--register-timeout-ms", self.register_timeout_ms);
        one("--unregister-wait-ms", self.unregister_wait_ms);
        out.extend(self.listen.into_iter().map(|v| ("--listen", v)));
        out.extend(self.topic.into_iter().map(|v| ("--topic", v)));
        out
    }
}

/// The generated `--help` text.
pub fn usage() -> String {
    use clap::CommandFactory;
    Flags::command().render_help().to_string()
}

impl BrokerConfig {
    /// Reads a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// The configuration from `args` (without the program name): `--config` first, then
    /// every other flag on top. `Ok(None)` means `--help` was asked for.
    pub fn from_args(args: &[String]) -> Result<Option<Self>, ConfigError> {
        use clap::Parser;
        let flags = match Flags::try_parse_from(
            std::iter::once("rdmq-broker".to_owned()).chain(args.iter().cloned()),
        ) {
            Ok(f) => f,
            Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelp => return Ok(None),
            Err(e) => {
                return Err(ConfigError::Invalid(
                    e.render().to_string().trim_end().to_owned(),
                ));
            }
        };
        let mut cfg = match &flags.config {
            Some(path) => Self::from_file(Path::new(path))?,
            None => Self::default(),
        };
        let mut listen = Vec::new();
        for (flag, value) in flags.pairs() {
            let value = &value;
            let bad = |what: &str| ConfigError::Invalid(format!("{flag} {value}: {what}"));
            match flag {
                "--listen" => listen.push(value.clone()),
                "--store-dir" => cfg.store_dir = value.into(),
                "--flush" => {
                    cfg.flush = match value.as_str() {
                        "sync" => Flush::Sync,
                        "async" => Flush::Async,
                        _ => return Err(bad("expected sync or async")),
                    }
                }
                "--flush-interval-ms" => {
                    cfg.flush_interval_ms = value.parse().map_err(|_| bad("not a number"))?
                }
                "--segment-size" => {
                    cfg.segment_size = parse_size(value).ok_or_else(|| bad("not a size"))?
                }
                "--broker-name" => cfg.broker_name = value.clone(),
                "--cluster" => cfg.cluster = value.clone(),
                "--advertise" => cfg.advertise = Some(value.clone()),
                "--metrics-listen" => cfg.metrics_listen = Some(value.clone()),
                "--auto-create-topics" => {
                    cfg.auto_create_topics =
                        value.parse().map_err(|_| bad("expected true or false"))?
                }
                "--default-queues" => {
                    cfg.default_queues = value.parse().map_err(|_| bad("not a number"))?
                }
                "--max-body" => {
                    cfg.max_body = parse_size(value).ok_or_else(|| bad("not a size"))? as usize
                }
                "--pop-initial-offset" => {
                    cfg.pop_initial_offset = match value.as_str() {
                        "auto" => InitialOffset::Auto,
                        "first" => InitialOffset::First,
                        "last" => InitialOffset::Last,
                        _ => return Err(bad("expected auto, first or last")),
                    }
                }
                "--auto-create-groups" => {
                    cfg.auto_create_groups =
                        value.parse().map_err(|_| bad("expected true or false"))?
                }
                "--max-delivery-attempts" => {
                    cfg.max_delivery_attempts = value.parse().map_err(|_| bad("not a number"))?
                }
                "--max-connections" => {
                    cfg.max_connections = value.parse().map_err(|_| bad("not a number"))?
                }
                "--max-connections-per-client" => {
                    cfg.max_connections_per_client =
                        value.parse().map_err(|_| bad("not a number"))?
                }
                "--idle-timeout-secs" => {
                    cfg.idle_timeout_secs = value.parse().map_err(|_| bad("not a number"))?
                }
                "--namesrv" => {
                    cfg.namesrv = crate::register::parse_namesrv(value).map_err(|e| bad(&e))?
                }
                "--register-interval-ms" => {
                    cfg.register_interval_ms = value.parse().map_err(|_| bad("not a number"))?
                }
                "--register-timeout-ms" => {
                    cfg.register_timeout_ms = value.parse().map_err(|_| bad("not a number"))?
                }
                "--unregister-wait-ms" => {
                    cfg.unregister_wait_ms = value.parse().map_err(|_| bad("not a number"))?
                }
                "--topic" => {
                    let (name, queues) = match value.split_once(':') {
                        Some((n, q)) => (n, q.parse().map_err(|_| bad("queues is not a number"))?),
                        None => (value.as_str(), default_queues()),
                    };
                    cfg.topics.push(TopicSpec {
                        name: name.to_owned(),
                        queues,
                        retention_hours: None,
                        retention_bytes: None,
                    });
                }
                other => unreachable!("clap only yields known flags, not {other}"),
            }
        }
        if !listen.is_empty() {
            cfg.listen = listen;
        }
        cfg.validate()?;
        Ok(Some(cfg))
    }

    /// Checks values that would otherwise fail later, less clearly.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.listen.is_empty() {
            return bad("no --listen endpoint".into());
        }
        for l in &self.listen {
            if let Err(e) = l.parse::<rdmq_transport::Endpoint>() {
                return bad(e.to_string());
            }
        }
        if self.segment_size < 4096 {
            return bad(format!(
                "segment size {} is below 4096 bytes",
                self.segment_size
            ));
        }
        if (self.max_body as u64) + 4096 > self.segment_size {
            return bad(format!(
                "max body {} does not fit a segment of {} bytes",
                self.max_body, self.segment_size
            ));
        }
        if self.max_delivery_attempts == 0 {
            return bad("max delivery attempts must be at least 1".into());
        }
        if self.broker_name.is_empty() || self.broker_name.contains(char::is_whitespace) {
            return bad(format!(
                "broker name `{}` must be non-empty and without spaces",
                self.broker_name
            ));
        }
        if !(1..=1024).contains(&self.default_queues) {
            return bad(format!(
                "default queues {} is outside 1..=1024",
                self.default_queues
            ));
        }
        for t in &self.topics {
            if !(1..=1024).contains(&t.queues) {
                return bad(format!(
                    "topic {}: queues {} is outside 1..=1024",
                    t.name, t.queues
                ));
            }
            if let Err(e) = crate::store::validate_topic_name(&t.name) {
                return bad(e.to_string());
            }
        }
        for ns in &self.namesrv {
            crate::register::parse_namesrv(ns).map_err(ConfigError::Invalid)?;
        }
        if !self.namesrv.is_empty() && self.register_interval_ms == 0 {
            return bad("register interval must be above 0".into());
        }
        if let Some(a) = &self.advertise
            && a.parse::<std::net::SocketAddr>().is_err()
        {
            return bad(format!("advertise address `{a}` is not IP:PORT"));
        }
        Ok(())
    }

    /// The store settings, with `advertise` as the store host.
    pub fn store_config(&self, advertise: &str) -> StoreConfig {
        let mut s = StoreConfig::new(&self.store_dir);
        s.segment_size = self.segment_size;
        s.flush = match self.flush {
            Flush::Sync => FlushMode::Sync,
            Flush::Async => FlushMode::Async {
                interval: Duration::from_millis(self.flush_interval_ms.max(1)),
            },
        };
        s.store_host = HostAddr::parse(advertise);
        s.max_body = self.max_body;
        s.min_free_bytes = self.min_free_bytes;
        s.retention = RetentionConfig {
            max_age: (self.retention_hours > 0)
                .then(|| Duration::from_secs(self.retention_hours * 3600)),
            max_bytes: self.retention_bytes,
        };
        s
    }

    /// The handlers' identity and policies.
    pub fn broker_info(&self, advertise: &str) -> BrokerInfo {
        BrokerInfo {
            broker_name: self.broker_name.clone(),
            cluster_name: self.cluster.clone(),
            advertise: advertise.to_owned(),
            auto_create_topics: self.auto_create_topics,
            default_queues: self.default_queues,
            max_long_poll: Duration::from_millis(self.max_long_poll_ms),
            pop: PopConfig {
                broker_name: self.broker_name.clone(),
                initial: self.pop_initial_offset,
                auto_create_groups: self.auto_create_groups,
                default_max_attempts: self.max_delivery_attempts,
                ..PopConfig::default()
            },
            timer: TimerConfig {
                max_delay: Duration::from_secs(self.timer_max_delay_hours * 3600),
                ..TimerConfig::default()
            },
        }
    }

    /// The topics to create at start.
    pub fn topic_configs(&self) -> Vec<TopicConfig> {
        self.topics
            .iter()
            .map(|t| {
                let mut c = TopicConfig::new(&t.name, t.queues);
                c.retention_ms = t.retention_hours.map(|h| h * 3_600_000);
                c.retention_bytes = t.retention_bytes;
                c
            })
            .collect()
    }
}

pub use rdmq_protocol::parse_size;

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn flags_override_defaults() {
        let c = BrokerConfig::from_args(&args(
            "--listen tcp://127.0.0.1:0 --listen rdma-sim://127.0.0.1:0 --flush sync --segment-size 64M --topic orders:8 --topic logs",
        ))
        .unwrap()
        .unwrap();
        assert_eq!(c.listen.len(), 2);
        assert_eq!(c.flush, Flush::Sync);
        assert_eq!(c.segment_size, 64 << 20);
        assert_eq!(c.topics[0].queues, 8);
        assert_eq!(c.topics[1].queues, 4);
        assert!(matches!(
            c.store_config("127.0.0.1:1").flush,
            FlushMode::Sync
        ));
    }

    #[test]
    fn toml_file_then_flags() {
        let c = BrokerConfig::from_toml(
            "listen = [\"tcp://0.0.0.0:1\"]\nflush = \"sync\"\n[[topics]]\nname = \"a\"\nqueues = 2\nretention_hours = 1\n",
        )
        .unwrap();
        assert_eq!(c.flush, Flush::Sync);
        assert_eq!(c.topic_configs()[0].retention_ms, Some(3_600_000));
        assert!(BrokerConfig::from_toml("flush = \"sometimes\"").is_err());
        assert!(BrokerConfig::from_toml("no_such_key = 1").is_err());
    }

    #[test]
    fn bad_flags_are_refused_with_the_reason() {
        for (a, want) in [
            ("--flush maybe", "sync or async"),
            ("--listen quic://x:1", "unknown scheme"),
            ("--segment-size 1", "below 4096"),
            ("--bogus 1", "--bogus"),
            ("--listen", "--listen"),
            ("--topic bad/name:2", "topic"),
            ("--namesrv nohost", "HOST:PORT"),
        ] {
            let e = BrokerConfig::from_args(&args(a)).unwrap_err().to_string();
            assert!(e.contains(want), "{a}: {e}");
        }
        assert!(BrokerConfig::from_args(&args("--help")).unwrap().is_none());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("4k"), Some(4096));
        assert_eq!(parse_size("1G"), Some(1 << 30));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size(""), None);
    }
}
