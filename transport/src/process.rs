//! What the rdmq binaries share around their main function (feature `process`): logging to
//! stderr, the multi-threaded runtime, waiting for SIGTERM or Ctrl-C, and the metrics endpoint.

use std::io::Write;

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// Runs `main` on a multi-threaded runtime; an error is printed as `<program>: <error>` and
/// becomes a failing exit status.
pub fn run_main<E: std::fmt::Display>(
    program: &str,
    main: impl std::future::Future<Output = Result<(), E>>,
) -> std::process::ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{program}: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(main) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{program}: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Waits for SIGTERM or Ctrl-C.
pub async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops the process");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Serves this process's metrics on `addr` when one is configured (with the simulated NIC's
/// counters where rdma-sim is built in) and prints `metrics http://<addr>/metrics` to stdout.
/// Drop the server to stop it.
pub async fn start_metrics(
    addr: Option<&str>,
) -> std::io::Result<Option<crate::metrics::http::MetricsServer>> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    #[cfg(feature = "sim")]
    crate::rdma::sim::register_nic_metrics();
    let server = crate::metrics::http::serve(addr, crate::metrics::global())
        .await
        .map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot serve metrics on {addr}: {e}"))
        })?;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "metrics http://{}/metrics", server.local_addr());
    let _ = out.flush();
    Ok(Some(server))
}
