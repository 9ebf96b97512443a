//! Shared test helpers: temporary directories and an in-process broker behind a real server.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rdmq_broker::handlers::{Broker, BrokerInfo, router};
use rdmq_broker::store::{FlushMode, Store, StoreConfig};
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
        tune(&mut cfg);
        let store = Store::open(cfg).unwrap();
        let broker = Broker::new(store, info);
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
        self.broker.store.shutdown();
    }
}
