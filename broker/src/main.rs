//! `rdmq-broker`: binds the configured endpoints, recovers the store, serves remoting until
//! SIGTERM or Ctrl-C, then drains and flushes.
//!
//! On start it prints one line per endpoint, `listening <url>`, to stdout (tests and scripts
//! read the real ports from there when they asked for port 0).

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use rdmq_broker::config::{BrokerConfig, USAGE};
use rdmq_broker::handlers::{Broker, router};
use rdmq_broker::store::Store;
use rdmq_transport::remoting::{Server, ServerConfig};
use rdmq_transport::{AnyTransport, Endpoint, Scheme, Transport};

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cfg = match BrokerConfig::from_args(&args) {
        Ok(Some(cfg)) => cfg,
        Ok(None) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("rdmq-broker: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("rdmq-broker: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rdmq-broker: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cfg: BrokerConfig) -> Result<(), String> {
    let transport = AnyTransport::default();
    // Bind first: the advertised address (stored in every message id) may depend on the
    // port the OS picked.
    let mut listeners = Vec::new();
    for url in &cfg.listen {
        let endpoint: Endpoint = url.parse().map_err(|e| format!("{e}"))?;
        let listener = transport
            .bind(&endpoint)
            .await
            .map_err(|e| format!("cannot listen on {url}: {e}"))?;
        listeners.push(listener);
    }
    let advertise = match &cfg.advertise {
        Some(a) => a.clone(),
        None => default_advertise(&listeners),
    };
    let store_cfg = cfg.store_config(&advertise);
    let store = tokio::task::spawn_blocking(move || Store::open(store_cfg))
        .await
        .map_err(|e| format!("store recovery panicked: {e}"))?
        .map_err(|e| format!("cannot open the store in {}: {e}", cfg.store_dir.display()))?;
    for topic in cfg.topic_configs() {
        let mut t = topic;
        if let Some(existing) = store.topic(&t.name) {
            t.perm = existing.perm;
            t.sys_flag = existing.sys_flag;
        }
        store
            .put_topic(t)
            .map_err(|e| format!("cannot create topic: {e}"))?;
    }
    let broker = {
        let info = cfg.broker_info(&advertise);
        tokio::task::spawn_blocking(move || Broker::start(store, info))
            .await
            .map_err(|e| format!("broker start panicked: {e}"))?
            .map_err(|e| format!("cannot start the pop and timer services: {e}"))?
    };
    let server = Server::new(transport, router(broker.clone()), ServerConfig::default());
    let mut handles = Vec::new();
    {
        let mut out = std::io::stdout().lock();
        for listener in listeners {
            let h = server.serve(listener);
            let _ = writeln!(out, "listening {}", h.local_endpoint());
            handles.push(h);
        }
        let _ = out.flush();
    }
    tracing::info!(
        broker = %cfg.broker_name,
        advertise = %advertise,
        store = %cfg.store_dir.display(),
        flush = ?cfg.flush,
        "broker ready"
    );
    wait_for_signal().await;
    tracing::info!("draining");
    let grace = Duration::from_millis(cfg.drain_grace_ms);
    for h in handles {
        h.shutdown(grace).await;
    }
    tokio::task::spawn_blocking(move || broker.shutdown())
        .await
        .map_err(|e| format!("store shutdown panicked: {e}"))?;
    tracing::info!("stopped");
    Ok(())
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

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops the broker")
            }
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
