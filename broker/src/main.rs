//! `rdmq-broker`: binds the configured endpoints, recovers the store, serves remoting until
//! SIGTERM or Ctrl-C, then drains and flushes.
//!
//! On start it prints one line per endpoint, `listening <url>`, to stdout (tests and scripts
//! read the real ports from there when they asked for port 0).

use std::io::Write;
use std::process::ExitCode;

use rdmq_broker::config::{BrokerConfig, USAGE};
use rdmq_broker::serve::{self, RunningBroker};
use rdmq_transport::AnyTransport;

fn main() -> ExitCode {
    serve::init_logging();
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
    serve::run_main("rdmq-broker", run(cfg))
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
    serve::wait_for_signal().await;
    tracing::info!("draining");
    running.shutdown().await?;
    tracing::info!("stopped");
    Ok(())
}
