//! `rdmq-proxy`: serves RocketMQ 5 gRPC and forwards to brokers until SIGTERM or Ctrl-C, then
//! drains. Prints `listening grpc://<addr>` (and `broker <url>` per broker) on start.

use std::io::Write;
use std::process::ExitCode;

use rdmq_proxy::RunningProxy;
use rdmq_proxy::config::{ProxyConfig, USAGE};

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cfg = match ProxyConfig::from_args(&args) {
        Ok(Some(c)) => c,
        Ok(None) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("rdmq-proxy: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("rdmq-proxy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rdmq-proxy: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cfg: ProxyConfig) -> Result<(), String> {
    let proxy = RunningProxy::start(cfg).await?;
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening grpc://{}", proxy.grpc_addr());
        for b in proxy.brokers() {
            let _ = writeln!(out, "broker {b}");
        }
        let _ = out.flush();
    }
    wait_for_signal().await;
    tracing::info!("draining");
    proxy.shutdown().await?;
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops the proxy");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
