//! `rdmq-proxy`: serves RocketMQ 5 gRPC and forwards to brokers until SIGTERM or Ctrl-C, then
//! drains. Prints `listening grpc://<addr>` (and `broker <url>` per broker) on start.

use std::io::Write;
use std::process::ExitCode;

use rdmq_broker::serve;
use rdmq_proxy::RunningProxy;
use rdmq_proxy::config::{ProxyConfig, USAGE};

fn main() -> ExitCode {
    serve::init_logging();
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
    serve::run_main("rdmq-proxy", run(cfg))
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
    serve::wait_for_signal().await;
    tracing::info!("draining");
    proxy.shutdown().await?;
    tracing::info!("stopped");
    Ok(())
}
