//! `rdmq-proxy` configuration: a TOML file and command-line flags on top of it.

use std::path::Path;

#[cfg(feature = "embedded")]
use rdmq_broker::config::BrokerConfig;
use rdmq_protocol::route::parse_namesrv;
use serde::Deserialize;

/// Everything the proxy is configured with.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// gRPC listen address (`host:port`, plaintext HTTP/2).
    pub listen: String,
    /// Brokers to forward to (`tcp://`, `rdma://`, `rdma-sim://` URLs).
    pub brokers: Vec<String>,
    /// Name servers (`host:port`) to learn brokers and routes from, instead of `brokers`.
    pub namesrv: Vec<String>,
    /// Transport towards brokers learned from name servers (`tcp`, `rdma`, `rdma-sim`); a
    /// broker that does not serve it is reached over TCP.
    pub broker_transport: String,
    /// How long a route from the name servers is used before it is asked for again (ms).
    pub route_refresh_ms: u64,
    /// Remoting endpoint for RocketMQ 4.x/5.x remoting clients (`host:port`; `off` disables).
    /// Default: the gRPC host, port 8080 (an ephemeral port when `listen` asks for one).
    pub remoting_listen: Option<String>,
    /// The `host:port` clients are told to use in routes (default: the address they dialled).
    pub advertise: Option<String>,
    /// Largest message body accepted (and announced to producers).
    pub max_body_size: usize,
    /// Remoting call timeout towards brokers (ms).
    pub call_timeout_ms: u64,
    /// Connections per broker.
    pub connections_per_broker: usize,
    /// Longest long poll of a ReceiveMessage (ms).
    pub max_long_polling_ms: u64,
    /// Delivery attempts announced to consumers (the brokers' dead-letter threshold).
    pub max_delivery_attempts: u32,
    /// How long a drain waits for in-flight calls (ms).
    pub drain_grace_ms: u64,
    /// Sends and receives in progress at once (long polls included); more get
    /// TOO_MANY_REQUESTS.
    pub max_in_flight: usize,
    /// Open gRPC connections beyond which new ones are closed at once.
    pub max_connections: usize,
    /// Open gRPC connections from one client address beyond which its new ones are closed.
    pub max_connections_per_client: usize,
    /// A new gRPC connection must send the HTTP/2 preface within this (ms).
    pub handshake_timeout_ms: u64,
    /// Run a broker in this process and forward to it over its first listener (feature
    /// `embedded`).
    #[cfg(feature = "embedded")]
    pub embedded_broker: Option<BrokerConfig>,
    /// Serve Prometheus metrics on this `host:port` (`/metrics`); off when unset.
    pub metrics_listen: Option<String>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8081".into(),
            brokers: Vec::new(),
            namesrv: Vec::new(),
            broker_transport: "tcp".into(),
            route_refresh_ms: 2_000,
            remoting_listen: None,
            advertise: None,
            max_body_size: 4 << 20,
            call_timeout_ms: 3_000,
            connections_per_broker: 2,
            max_long_polling_ms: 20_000,
            max_delivery_attempts: 16,
            drain_grace_ms: 5_000,
            // Below the long-poll connections' request permits (2 × 4,096), so polls never
            // wait for a permit on the broker connection.
            max_in_flight: 8_000,
            max_connections: 10_000,
            max_connections_per_client: 1_000,
            handshake_timeout_ms: 10_000,
            #[cfg(feature = "embedded")]
            embedded_broker: None,
            metrics_listen: None,
        }
    }
}

/// The flags, parsed by clap (generated help; each flag also from an environment variable,
/// `RDMQ_PROXY_<FLAG>`, lists comma-separated). Values are checked by
/// [`ProxyConfig::from_args`], which applies them on top of `--config`.
#[derive(Debug, clap::Parser)]
#[command(
    name = "rdmq-proxy",
    about = "rdmq proxy: RocketMQ 5 gRPC, forwarded to brokers over tcp://, rdma:// or rdma-sim://",
    disable_version_flag = true
)]
struct Flags {
    /// TOML configuration (the flags below override it)
    #[arg(long, value_name = "FILE", env = "RDMQ_PROXY_CONFIG")]
    config: Option<String>,
    /// gRPC endpoint (default 0.0.0.0:8081)
    #[arg(long, value_name = "HOST:PORT", env = "RDMQ_PROXY_LISTEN")]
    listen: Option<String>,
    /// Broker to forward to; repeatable (tcp://, rdma://, rdma-sim://)
    #[arg(
        long,
        value_name = "URL",
        env = "RDMQ_PROXY_BROKER",
        value_delimiter = ','
    )]
    broker: Vec<String>,
    /// Learn brokers and routes from these name servers instead of --broker
    #[arg(long, value_name = "HOST:PORT;HOST:PORT", env = "RDMQ_PROXY_NAMESRV")]
    namesrv: Option<String>,
    /// Transport to brokers learned from name servers: tcp, rdma or rdma-sim (default tcp)
    #[arg(long, value_name = "SCHEME", env = "RDMQ_PROXY_BROKER_TRANSPORT")]
    broker_transport: Option<String>,
    /// Route refresh from name servers (default 2000)
    #[arg(long, value_name = "MS", env = "RDMQ_PROXY_ROUTE_REFRESH_MS")]
    route_refresh_ms: Option<String>,
    /// Remoting endpoint for RocketMQ remoting clients, or `off` (default: gRPC host, port
    /// 8080)
    #[arg(long, value_name = "HOST:PORT", env = "RDMQ_PROXY_REMOTING_LISTEN")]
    remoting_listen: Option<String>,
    /// Address put in routes (default: the one the client dialled)
    #[arg(long, value_name = "HOST:PORT", env = "RDMQ_PROXY_ADVERTISE")]
    advertise: Option<String>,
    /// Largest message body (suffixes K, M, G; default 4M)
    #[arg(long, value_name = "BYTES", env = "RDMQ_PROXY_MAX_BODY_SIZE")]
    max_body_size: Option<String>,
    /// Broker call timeout
    #[arg(long, value_name = "MS", env = "RDMQ_PROXY_CALL_TIMEOUT_MS")]
    call_timeout_ms: Option<String>,
    /// Connections per broker
    #[arg(long, value_name = "N", env = "RDMQ_PROXY_CONNECTIONS")]
    connections: Option<String>,
    /// Sends and receives at once (default 8000; then TOO_MANY_REQUESTS)
    #[arg(long, value_name = "N", env = "RDMQ_PROXY_MAX_IN_FLIGHT")]
    max_in_flight: Option<String>,
    /// Open gRPC connections beyond which new ones are closed (default 10000)
    #[arg(long, value_name = "N", env = "RDMQ_PROXY_MAX_CONNECTIONS")]
    max_connections: Option<String>,
    /// Open gRPC connections from one client address beyond which its new ones are closed
    /// (default 1000)
    #[arg(long, value_name = "N", env = "RDMQ_PROXY_MAX_CONNECTIONS_PER_CLIENT")]
    max_connections_per_client: Option<String>,
    /// A new gRPC connection must send the HTTP/2 preface within this (default 10000)
    #[arg(long, value_name = "MS", env = "RDMQ_PROXY_HANDSHAKE_TIMEOUT_MS")]
    handshake_timeout_ms: Option<String>,
    /// Serve Prometheus metrics at http://HOST:PORT/metrics (default off)
    #[arg(long, value_name = "HOST:PORT", env = "RDMQ_PROXY_METRICS_LISTEN")]
    metrics_listen: Option<String>,
    /// Run a broker in this process (one command runs everything)
    #[arg(
        long,
        env = "RDMQ_PROXY_EMBEDDED_BROKER",
        help_heading = "Embedded broker"
    )]
    embedded_broker: bool,
    /// Its endpoint, also the transport used to reach it (default tcp://127.0.0.1:0)
    #[arg(
        long,
        value_name = "URL",
        env = "RDMQ_PROXY_BROKER_LISTEN",
        help_heading = "Embedded broker"
    )]
    broker_listen: Option<String>,
    /// Its store directory (default rdmq-store)
    #[arg(
        long,
        value_name = "DIR",
        env = "RDMQ_PROXY_STORE_DIR",
        help_heading = "Embedded broker"
    )]
    store_dir: Option<String>,
    /// Its flush mode
    #[arg(
        long,
        value_name = "sync|async",
        env = "RDMQ_PROXY_FLUSH",
        help_heading = "Embedded broker"
    )]
    flush: Option<String>,
    /// Its commit-log segment size, reserved on disk up front (default 1g)
    #[arg(
        long,
        value_name = "SIZE",
        env = "RDMQ_PROXY_SEGMENT_SIZE",
        help_heading = "Embedded broker"
    )]
    segment_size: Option<String>,
    /// Create a topic at start; repeatable
    #[arg(
        long,
        value_name = "NAME[:QUEUES]",
        env = "RDMQ_PROXY_TOPIC",
        value_delimiter = ',',
        help_heading = "Embedded broker"
    )]
    topic: Vec<String>,
    /// Its name (default broker-a)
    #[arg(
        long,
        value_name = "NAME",
        env = "RDMQ_PROXY_BROKER_NAME",
        help_heading = "Embedded broker"
    )]
    broker_name: Option<String>,
}

impl ProxyConfig {
    /// The remoting endpoint to bind, if any.
    pub fn remoting_addr(&self) -> Option<String> {
        match self.remoting_listen.as_deref() {
            Some("off") => None,
            Some(a) => Some(a.to_owned()),
            None => {
                let (host, port) = self.listen.rsplit_once(':')?;
                Some(format!("{host}:{}", if port == "0" { "0" } else { "8080" }))
            }
        }
    }
}

/// The generated `--help` text.
pub fn usage() -> String {
    use clap::CommandFactory;
    Flags::command().render_help().to_string()
}

/// A configuration problem.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl ProxyConfig {
    /// Parses TOML text. An `[embedded_broker]` section starts from the embedded defaults
    /// (loopback listener on a free port, no topic auto-creation), not a standalone broker's.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        #[allow(unused_mut)]
        let mut cfg: Self = toml::from_str(text).map_err(|e| ConfigError(e.to_string()))?;
        #[cfg(feature = "embedded")]
        if let Some(b) = cfg.embedded_broker.as_mut() {
            let table: toml::Table = text.parse().map_err(|e| ConfigError(format!("{e}")))?;
            let given = |k: &str| {
                table
                    .get("embedded_broker")
                    .and_then(|t| t.as_table())
                    .is_some_and(|t| t.contains_key(k))
            };
            let defaults = embedded_defaults();
            if !given("listen") {
                b.listen = defaults.listen;
            }
            if !given("auto_create_topics") {
                b.auto_create_topics = defaults.auto_create_topics;
            }
        }
        Ok(cfg)
    }

    /// The configuration from `args` (without the program name). `Ok(None)`: `--help`.
    pub fn from_args(args: &[String]) -> Result<Option<Self>, ConfigError> {
        use clap::Parser;
        let f = match Flags::try_parse_from(
            std::iter::once("rdmq-proxy".to_owned()).chain(args.iter().cloned()),
        ) {
            Ok(f) => f,
            Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelp => return Ok(None),
            Err(e) => return Err(ConfigError(e.render().to_string().trim_end().to_owned())),
        };
        let mut cfg = match &f.config {
            Some(path) => {
                let text = std::fs::read_to_string(Path::new(path))
                    .map_err(|e| ConfigError(format!("{path}: {e}")))?;
                Self::from_toml(&text).map_err(|e| ConfigError(format!("{path}: {e}")))?
            }
            None => Self::default(),
        };
        let brokers = f.broker;
        let embedded = f.embedded_broker;
        let mut broker_args: Vec<String> = Vec::new();
        let mut pairs: Vec<(&str, String)> = Vec::new();
        for (flag, v) in [
            ("--listen", f.listen),
            ("--namesrv", f.namesrv),
            ("--broker-transport", f.broker_transport),
            ("--route-refresh-ms", f.route_refresh_ms),
            ("--remoting-listen", f.remoting_listen),
            ("--advertise", f.advertise),
            ("--metrics-listen", f.metrics_listen),
            ("--max-body-size", f.max_body_size),
            ("--call-timeout-ms", f.call_timeout_ms),
            ("--max-in-flight", f.max_in_flight),
            ("--max-connections", f.max_connections),
            ("--max-connections-per-client", f.max_connections_per_client),
            ("--handshake-timeout-ms", f.handshake_timeout_ms),
            ("--connections", f.connections),
            ("--broker-listen", f.broker_listen),
            ("--store-dir", f.store_dir),
            ("--flush", f.flush),
            ("--segment-size", f.segment_size),
            ("--broker-name", f.broker_name),
        ] {
            if let Some(v) = v {
                pairs.push((flag, v));
            }
        }
        pairs.extend(f.topic.into_iter().map(|t| ("--topic", t)));
        for (flag, value) in pairs {
            let value = &value;
            let bad = |what: &str| ConfigError(format!("{flag} {value}: {what}"));
            let positive = || {
                value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| bad("not a positive number"))
            };
            match flag {
                "--listen" => cfg.listen = value.clone(),
                "--namesrv" => cfg.namesrv = parse_namesrv(value).map_err(|e| bad(&e))?,
                "--broker-transport" => cfg.broker_transport = value.clone(),
                "--route-refresh-ms" => cfg.route_refresh_ms = positive()? as u64,
                "--remoting-listen" => cfg.remoting_listen = Some(value.clone()),
                "--advertise" => cfg.advertise = Some(value.clone()),
                "--metrics-listen" => cfg.metrics_listen = Some(value.clone()),
                "--max-body-size" => {
                    cfg.max_body_size =
                        rdmq_protocol::parse_size(value).ok_or_else(|| bad("not a size"))? as usize
                }
                "--call-timeout-ms" => {
                    cfg.call_timeout_ms = value.parse().map_err(|_| bad("not a number"))?
                }
                "--max-in-flight" => cfg.max_in_flight = positive()?,
                "--max-connections" => cfg.max_connections = positive()?,
                "--max-connections-per-client" => cfg.max_connections_per_client = positive()?,
                "--handshake-timeout-ms" => cfg.handshake_timeout_ms = positive()? as u64,
                "--connections" => {
                    cfg.connections_per_broker = value.parse().map_err(|_| bad("not a number"))?
                }
                "--broker-listen" => broker_args.extend(["--listen".into(), value.clone()]),
                other => broker_args.extend([other.to_owned(), value.clone()]),
            }
        }
        if !brokers.is_empty() {
            cfg.brokers = brokers;
        }
        #[cfg(not(feature = "embedded"))]
        if embedded || !broker_args.is_empty() {
            return Err(ConfigError(
                "this rdmq-proxy was built without the embedded broker (cargo feature `embedded`): start an rdmq-broker and give --broker URL".into(),
            ));
        }
        #[cfg(feature = "embedded")]
        if embedded || !broker_args.is_empty() {
            if !embedded && cfg.embedded_broker.is_none() {
                return Err(ConfigError(
                    "--broker-listen, --store-dir, --flush, --segment-size and --topic configure the embedded broker: add --embedded-broker".into(),
                ));
            }
            let base = cfg.embedded_broker.take().unwrap_or_else(embedded_defaults);
            cfg.embedded_broker = Some(apply_broker_flags(base, &broker_args)?);
        }
        cfg.validate()?;
        Ok(Some(cfg))
    }

    /// Checks the values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        #[cfg(feature = "embedded")]
        let embedded = self.embedded_broker.is_some();
        #[cfg(not(feature = "embedded"))]
        let embedded = false;
        if self.brokers.is_empty() && self.namesrv.is_empty() && !embedded {
            return Err(ConfigError(
                "no broker: give --broker URL, --namesrv HOST:PORT or --embedded-broker".into(),
            ));
        }
        for ns in &self.namesrv {
            parse_namesrv(ns).map_err(ConfigError)?;
        }
        if !["tcp", "rdma", "rdma-sim"].contains(&self.broker_transport.as_str()) {
            return Err(ConfigError(format!(
                "--broker-transport {}: expected tcp, rdma or rdma-sim",
                self.broker_transport
            )));
        }
        if let Some(r) = &self.remoting_listen
            && r != "off"
            && r.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(ConfigError(format!(
                "--remoting-listen {r}: expected IP:PORT or off"
            )));
        }
        for b in &self.brokers {
            b.parse::<rdmq_transport::Endpoint>()
                .map_err(|e| ConfigError(format!("--broker {b}: {e}")))?;
        }
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(ConfigError(format!(
                "--listen {}: expected HOST:PORT with an IP address",
                self.listen
            )));
        }
        if self.max_body_size == 0 || self.max_body_size > 64 << 20 {
            return Err(ConfigError(
                "max_body_size must be between 1 byte and 64 MiB".into(),
            ));
        }
        #[cfg(feature = "embedded")]
        if let Some(b) = &self.embedded_broker
            && b.max_body < self.max_body_size
        {
            return Err(ConfigError(format!(
                "the embedded broker's max_body ({}) is below the proxy's max_body_size ({})",
                b.max_body, self.max_body_size
            )));
        }
        Ok(())
    }
}

/// The embedded broker's defaults: loopback TCP on a free port, topics only as configured.
#[cfg(feature = "embedded")]
pub fn embedded_defaults() -> BrokerConfig {
    BrokerConfig {
        listen: vec!["tcp://127.0.0.1:0".into()],
        auto_create_topics: false,
        ..BrokerConfig::default()
    }
}

#[cfg(feature = "embedded")]
fn apply_broker_flags(base: BrokerConfig, flags: &[String]) -> Result<BrokerConfig, ConfigError> {
    // Reuse the broker's own flag parsing on top of `base`.
    let mut cfg = base;
    let mut listen = Vec::new();
    for pair in flags.chunks(2) {
        let (flag, value) = (&pair[0], &pair[1]);
        match flag.as_str() {
            "--listen" => listen.push(value.clone()),
            _ => {
                let parsed = BrokerConfig::from_args(&[flag.clone(), value.clone()])
                    .map_err(|e| ConfigError(e.to_string()))?
                    .expect("not --help");
                match flag.as_str() {
                    "--store-dir" => cfg.store_dir = parsed.store_dir,
                    "--flush" => cfg.flush = parsed.flush,
                    "--segment-size" => cfg.segment_size = parsed.segment_size,
                    "--topic" => cfg.topics.extend(parsed.topics),
                    "--broker-name" => cfg.broker_name = parsed.broker_name,
                    _ => unreachable!("only embedded-broker flags reach here"),
                }
            }
        }
    }
    if !listen.is_empty() {
        cfg.listen = listen;
    }
    cfg.validate().map_err(|e| ConfigError(e.to_string()))?;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[cfg(feature = "embedded")]
    #[test]
    fn flags_configure_brokers_and_the_embedded_broker() {
        let c = ProxyConfig::from_args(&args(
            "--listen 127.0.0.1:0 --embedded-broker --broker-listen rdma-sim://127.0.0.1:0 --topic a:8 --topic b",
        ))
        .unwrap()
        .unwrap();
        let b = c.embedded_broker.unwrap();
        assert_eq!(b.listen, vec!["rdma-sim://127.0.0.1:0".to_owned()]);
        assert_eq!(b.topics.len(), 2);
        assert_eq!(b.topics[0].queues, 8);
        assert!(!b.auto_create_topics);
        let c = ProxyConfig::from_args(&args(
            "--broker tcp://10.0.0.1:10911 --broker rdma://10.0.0.2:10912",
        ))
        .unwrap()
        .unwrap();
        assert_eq!(c.brokers.len(), 2);
        assert!(c.embedded_broker.is_none());
    }

    #[test]
    fn bad_configurations_are_refused_with_a_reason() {
        for bad in [
            "",
            "--broker nonsense",
            "--topic a",
            "--broker tcp://h:1 --listen nowhere",
            "--broker tcp://h:1 --max-body-size 0",
            "--broker tcp://h:1 --bogus 1",
            "--broker",
        ] {
            let e = ProxyConfig::from_args(&args(bad)).unwrap_err();
            assert!(!e.0.is_empty(), "{bad}");
        }
        for (bad, flag) in [
            ("--broker tcp://h:1 --bogus 1", "--bogus"),
            ("--broker", "--broker"),
        ] {
            let e = ProxyConfig::from_args(&args(bad)).unwrap_err();
            assert!(e.0.contains(flag), "{bad}: the error names {flag}: {e}");
        }
        assert!(
            super::usage().contains("RDMQ_PROXY_BROKER"),
            "help shows the environment variables"
        );
        assert!(ProxyConfig::from_toml("nope = 1").is_err());
    }

    #[cfg(feature = "embedded")]
    #[test]
    fn a_toml_embedded_broker_starts_from_the_embedded_defaults() {
        let toml = "listen = \"127.0.0.1:8081\"\nbrokers = [\"tcp://127.0.0.1:10911\"]\n[embedded_broker]\ntopics = [{ name = \"t\", queues = 2 }]\n";
        let c = ProxyConfig::from_toml(toml).unwrap();
        let b = c.embedded_broker.unwrap();
        assert_eq!(b.topics[0].name, "t");
        assert_eq!(
            b.listen,
            vec!["tcp://127.0.0.1:0".to_owned()],
            "embedded defaults"
        );
        assert!(!b.auto_create_topics);
    }

    #[cfg(not(feature = "embedded"))]
    #[test]
    fn without_the_embedded_feature_its_flags_are_refused() {
        for a in ["--embedded-broker", "--broker tcp://h:1 --topic t"] {
            let e = ProxyConfig::from_args(&args(a)).unwrap_err();
            assert!(e.0.contains("feature `embedded`"), "{a}: {e}");
        }
        assert!(
            ProxyConfig::from_args(&args("--broker tcp://h:1"))
                .unwrap()
                .is_some()
        );
    }
}
