//! Shared test helpers: temporary directories and an in-process broker behind a real server.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rdmq_broker::handlers::{Broker, BrokerInfo, router};
use rdmq_broker::store::{FlushMode, Store, StoreConfig};
use rdmq_transport::protocol::request_code;
use rdmq_transport::remoting::{Client, ClientConfig, Server, ServerConfig, ServerHandle};
use rdmq_transport::{AnyTransport, Endpoint, RemotingCommand};

/// A directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// A fresh empty directory under the system temp dir.
    pub fn new() -> Self {
        let p = std::env::temp_dir().join(format!(
            "rdmq-broker-test-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A broker with its store in a temp dir, served on `url`, and a client connected to it.
pub struct Harness {
    pub broker: Arc<Broker>,
    pub endpoint: Endpoint,
    pub client: Client<AnyTransport>,
    server: Option<ServerHandle>,
    _dir: TempDir,
}

impl Harness {
    pub async fn start(url: &str, info: BrokerInfo, tune: impl FnOnce(&mut StoreConfig)) -> Self {
        let dir = TempDir::new();
        let mut cfg = StoreConfig::new(dir.path());
        cfg.min_free_bytes = 0;
        cfg.flush = FlushMode::Sync;
        // Segments are preallocated: keep the tests' disk use small.
        cfg.segment_size = 64 << 20;
        tune(&mut cfg);
        let store = Store::open(cfg).unwrap();
        let broker = Broker::start(store, info).unwrap();
        let transport = AnyTransport::default();
        let server = Server::new(
            transport.clone(),
            router(broker.clone()),
            ServerConfig::default(),
        );
        let handle = server.bind(&url.parse().unwrap()).await.unwrap();
        let endpoint = handle.local_endpoint().clone();
        let client = Client::new(transport, ClientConfig::default());
        Self {
            broker,
            endpoint,
            client,
            server: Some(handle),
            _dir: dir,
        }
    }

    /// Sends `req` and returns the response (transport failures panic).
    pub async fn call(&self, req: RemotingCommand) -> RemotingCommand {
        self.client
            .invoke(&self.endpoint, req, Some(Duration::from_secs(10)))
            .await
            .expect("transport call")
    }

    pub async fn stop(mut self) {
        self.client.close(Duration::from_secs(1)).await;
        if let Some(h) = self.server.take() {
            h.shutdown(Duration::from_secs(1)).await;
        }
        self.broker.shutdown();
    }
}

/// A child `rdmq-broker` process on TCP port 0; killed (SIGKILL) on drop, so a failing
/// assertion never leaves a broker behind.
pub struct BrokerProcess {
    child: Child,
    /// The endpoint it printed.
    pub endpoint: Endpoint,
}

impl BrokerProcess {
    /// Starts the broker binary on `dir` with `args` and waits for its endpoint line.
    pub fn spawn(dir: &Path, args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_rdmq-broker"))
            .args(["--listen", "tcp://127.0.0.1:0"])
            .args(args)
            .arg("--store-dir")
            .arg(dir)
            .env(
                "RUST_LOG",
                std::env::var("RDMQ_CHILD_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn rdmq-broker");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let mut me = BrokerProcess {
            child,
            endpoint: Endpoint::tcp("0.0.0.0", 0),
        };
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("broker printed no endpoint within 30 s");
        let url = line
            .trim()
            .strip_prefix("listening ")
            .unwrap_or_else(|| panic!("unexpected broker output `{line}`"));
        me.endpoint = url.parse().unwrap();
        me
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A PULL_MESSAGE of up to `max` messages from `topic`/`queue` at `offset`, every tag, no
/// long polling.
pub fn pull_request(
    group: &str,
    topic: &str,
    queue: i32,
    offset: i64,
    max: u32,
) -> RemotingCommand {
    RemotingCommand::request(request_code::PULL_MESSAGE)
        .with_field("consumerGroup", group)
        .with_field("topic", topic)
        .with_field("queueId", queue.to_string())
        .with_field("queueOffset", offset.to_string())
        .with_field("maxMsgNums", max.to_string())
        .with_field("sysFlag", "0")
        .with_field("commitOffset", "0")
        .with_field("suspendTimeoutMillis", "0")
        .with_field("subscription", "*")
        .with_field("subVersion", "0")
        .with_field("expressionType", "TAG")
}
