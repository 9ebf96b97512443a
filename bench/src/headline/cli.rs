//! `rdmq-bench headline [options]`: flags, the run, and what is printed and written.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use super::{Options, output, rdma_device};

/// `rdmq-bench headline` flags (each also from `RDMQ_HEADLINE_<FLAG>`).
///
/// Starts rdmq-broker and rdmq-proxy as separate processes and a load generator in a third;
/// measures TCP's saturation rate, then SendMessage at fixed offered rates (1k, 3k msg/s and
/// 50 %/80 % of TCP saturation) and a ReceiveMessage+AckMessage phase, over each transport of
/// the proxy→broker hop, interleaved over several runs; prints the three ratios beside the
/// reference deployment's and writes headline.json, headline.md, cpu.svg and rt.svg.
#[derive(Debug, Default, clap::Args)]
pub struct Flags {
    /// Transports (default tcp,rdma-sim, plus rdma when a device exists)
    #[arg(long, value_name = "LIST", env = "RDMQ_HEADLINE_ONLY", value_delimiter = ',', value_parser = ["tcp", "rdma-sim", "rdma"])]
    pub only: Vec<String>,
    /// Interleaved runs (default 3)
    #[arg(long, value_name = "N", env = "RDMQ_HEADLINE_RUNS", value_parser = clap::value_parser!(u64).range(1..))]
    pub runs: Option<u64>,
    /// Message body (default 1024)
    #[arg(long, value_name = "BYTES", env = "RDMQ_HEADLINE_SIZE")]
    pub size: Option<usize>,
    /// Fixed send rates, msg/s (default 1000,3000)
    #[arg(
        long,
        value_name = "LIST",
        env = "RDMQ_HEADLINE_RATES",
        value_delimiter = ','
    )]
    pub rates: Option<Vec<f64>>,
    /// Fractions of TCP saturation also measured, each 0 to 1 (default 0.5,0.8)
    #[arg(
        long,
        value_name = "LIST",
        env = "RDMQ_HEADLINE_FRACTIONS",
        value_delimiter = ','
    )]
    pub fractions: Option<Vec<f64>>,
    /// Offered rate of the receive/ack phase (default 1000)
    #[arg(long, value_name = "N", env = "RDMQ_HEADLINE_RECEIVE_RATE")]
    pub receive_rate: Option<u64>,
    /// Warm-up before each window (default 1500)
    #[arg(long, value_name = "MS", env = "RDMQ_HEADLINE_WARMUP_MS")]
    pub warmup_ms: Option<u64>,
    /// Measured window (default 5000)
    #[arg(long, value_name = "MS", env = "RDMQ_HEADLINE_WINDOW_MS", value_parser = clap::value_parser!(u64).range(100..))]
    pub window_ms: Option<u64>,
    /// split (broker and proxy on CPUs of their own; default) or shared
    #[arg(long, value_name = "P", env = "RDMQ_HEADLINE_PLACEMENT", value_parser = ["split", "shared"])]
    pub placement: Option<String>,
    /// Run DIR/rdmq-broker and DIR/rdmq-proxy (default: this executable re-run as them, the
    /// same code as the binaries)
    #[arg(long, value_name = "DIR", env = "RDMQ_HEADLINE_BIN_DIR")]
    pub bin_dir: Option<PathBuf>,
    /// Where results go (default target/headline)
    #[arg(long, value_name = "DIR", env = "RDMQ_HEADLINE_OUT")]
    pub out: Option<PathBuf>,
    /// Count syscalls from /proc/<pid>/io (read/write family only) instead of perf stat's
    /// raw_syscalls tracepoint (which adds a little per syscall)
    #[arg(long, env = "RDMQ_HEADLINE_NO_PERF")]
    pub no_perf: bool,
    /// A few seconds at low rates: checks the machinery, not a result; fails if any operation
    /// fails
    #[arg(long, env = "RDMQ_HEADLINE_SMOKE")]
    pub smoke: bool,
}

#[derive(Debug, clap::Parser)]
#[command(name = "rdmq-bench headline", disable_version_flag = true)]
struct Standalone {
    #[command(flatten)]
    flags: Flags,
}

/// The options `flags` ask for, on top of the full (or smoke) defaults.
pub fn options(f: Flags) -> Result<Options, String> {
    let mut opts = if f.smoke {
        Options::smoke()
    } else {
        Options::full()
    };
    if let Some(v) = f.runs {
        opts.runs = v as usize;
    }
    if let Some(v) = f.size {
        opts.size = v;
    }
    if let Some(v) = f.rates {
        opts.fixed_rates = v;
    }
    if let Some(v) = f.fractions {
        opts.fractions = v;
    }
    if let Some(v) = f.receive_rate {
        opts.receive_rate = v as f64;
    }
    if let Some(v) = f.warmup_ms {
        opts.warmup = Duration::from_millis(v);
    }
    if let Some(v) = f.window_ms {
        opts.window = Duration::from_millis(v);
    }
    if let Some(v) = f.placement {
        opts.placement = v;
    }
    if f.bin_dir.is_some() {
        opts.bin_dir = f.bin_dir;
    }
    if let Some(v) = f.out {
        opts.out_dir = v;
    }
    opts.perf = !f.no_perf;
    opts.transports = if f.only.is_empty() {
        let mut t = vec!["tcp".to_owned(), "rdma-sim".to_owned()];
        if rdma_device().is_some() {
            t.push("rdma".into());
        }
        t
    } else {
        f.only
    };
    if opts.fractions.iter().any(|f| !(0.0..=1.0).contains(f)) {
        return Err("--fractions: each must be between 0 and 1".into());
    }
    if opts.fixed_rates.iter().any(|r| !r.is_finite() || *r < 0.0) {
        return Err("--rates: each must be a non-negative number".into());
    }
    Ok(opts)
}

/// Parses the flags after `headline`. `Ok(None)`: help was printed.
pub fn parse(args: &[String]) -> Result<Option<Options>, String> {
    use clap::Parser;
    match Standalone::try_parse_from(
        std::iter::once("rdmq-bench headline".to_owned()).chain(args.iter().cloned()),
    ) {
        Ok(s) => options(s.flags).map(Some),
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelp => {
            let _ = e.print();
            Ok(None)
        }
        Err(e) => Err(e.render().to_string().trim_end().to_owned()),
    }
}

/// `rdmq-bench headline …`.
pub fn main(args: &[String]) -> ExitCode {
    let opts = match parse(args) {
        Ok(Some(o)) => o,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    println!("{}", crate::report::machine_line());
    if opts.smoke {
        println!("smoke run: checks the machinery at low rates; the numbers are not a result");
    }
    let results = match super::run(&opts) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("rdmq-bench headline: {e}");
            return ExitCode::FAILURE;
        }
    };
    let rows = output::rows(&results);
    let heads = output::headlines(&rows);
    print!("\n{}", output::headline_text(&results, &heads));
    match output::write_all(&opts.out_dir, &results) {
        Ok(report) => {
            println!("\n{report}");
            println!(
                "measuring took {:.0} s; wrote headline.json, headline.md, cpu.svg, rt.svg to {}",
                results.measuring_seconds,
                opts.out_dir.display()
            );
        }
        Err(e) => {
            eprintln!("rdmq-bench headline: {e}");
            return ExitCode::FAILURE;
        }
    }
    let failed: u64 = results.cells.iter().map(|c| c.errors).sum();
    if failed > 0 {
        eprintln!(
            "rdmq-bench headline: {failed} operations failed (the table's errors column; first errors in headline.json)"
        );
        // At the smoke's low rates nothing may fail; in a full run a failing point is a result.
        if opts.smoke {
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
