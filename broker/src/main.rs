//! `rdmq-broker`: binds the configured endpoints, recovers the store, serves remoting until
//! SIGTERM or Ctrl-C, then drains and flushes.
//!
//! On start it prints one line per endpoint, `listening <url>`, to stdout (tests and scripts
//! read the real ports from there when they asked for port 0).

use std::io::Write;
use std::process::ExitCode;

use rdmq_broker::config::{BrokerConfig, USAGE};
use rdmq_broker::serve::RunningBroker;
use rdmq_transport::AnyTransport;

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
    let running = RunningBroker::start(&cfg, AnyTransport::default()).await?;
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
    Ok(())
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
