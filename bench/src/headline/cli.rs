//! `rdmq-bench headline [options]`: flags, the run, and what is printed and written.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use super::{Options, output, rdma_device};

/// Usage of the headline command.
pub const USAGE: &str = "\
usage: rdmq-bench headline [options]
  Starts rdmq-broker and rdmq-proxy as separate processes and a load generator in a third;
  measures TCP's saturation rate, then SendMessage at fixed offered rates (1k, 3k msg/s and
  50 %/80 % of TCP saturation) and a ReceiveMessage+AckMessage phase, over each transport of
  the proxy→broker hop, interleaved over several runs; prints the three ratios beside the
  reference deployment's and writes headline.json, headline.md, cpu.svg and rt.svg.
  --only LIST          transports (default tcp,rdma-sim, plus rdma when a device exists)
  --runs N             interleaved runs (default 3)
  --size BYTES         message body (default 1024)
  --rates LIST         fixed send rates, msg/s (default 1000,3000)
  --fractions LIST     fractions of TCP saturation also measured (default 0.5,0.8)
  --receive-rate N     offered rate of the receive/ack phase (default 1000)
  --warmup-ms N        warm-up before each window (default 1500)
  --window-ms N        measured window (default 5000)
  --placement P        split (broker and proxy on CPUs of their own; default) or shared
  --bin-dir DIR        run DIR/rdmq-broker and DIR/rdmq-proxy (default: this executable
                       re-run as them, the same code as the binaries)
  --out DIR            where results go (default target/headline)
  --no-perf            count syscalls from /proc/<pid>/io (read/write family only) instead
                       of perf stat's raw_syscalls tracepoint (which adds a little per syscall)
  --smoke              a few seconds at low rates: checks the machinery, not a result;
                       fails if any operation fails
";

fn list<T: std::str::FromStr>(v: &str, flag: &str) -> Result<Vec<T>, String> {
    v.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.trim()
                .parse()
                .map_err(|_| format!("{flag}: bad value `{s}`"))
        })
        .collect()
}

/// Parses the flags after `headline`.
pub fn parse(args: &[String]) -> Result<Option<Options>, String> {
    let mut opts = if args.iter().any(|a| a == "--smoke") {
        Options::smoke()
    } else {
        Options::full()
    };
    let mut only: Option<Vec<String>> = None;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if flag == "--smoke" {
            continue;
        }
        if flag == "--no-perf" {
            opts.perf = false;
            continue;
        }
        if flag == "--help" || flag == "-h" {
            return Ok(None);
        }
        let v = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n\n{USAGE}"))?;
        let num = |what: &str| v.parse::<u64>().map_err(|_| format!("{flag}: {what}"));
        match flag.as_str() {
            "--only" => only = Some(list(v, flag)?),
            "--runs" => opts.runs = num("not a number")?.max(1) as usize,
            "--size" => opts.size = num("not a size")? as usize,
            "--rates" => opts.fixed_rates = list(v, flag)?,
            "--fractions" => opts.fractions = list(v, flag)?,
            "--receive-rate" => opts.receive_rate = num("not a rate")? as f64,
            "--warmup-ms" => opts.warmup = Duration::from_millis(num("not a number")?),
            "--window-ms" => opts.window = Duration::from_millis(num("not a number")?.max(100)),
            "--placement" => opts.placement = v.clone(),
            "--bin-dir" => opts.bin_dir = Some(PathBuf::from(v)),
            "--out" => opts.out_dir = PathBuf::from(v),
            other => return Err(format!("unknown flag `{other}`\n\n{USAGE}")),
        }
    }
    opts.transports = match only {
        Some(t) => t,
        None => {
            let mut t = vec!["tcp".to_owned(), "rdma-sim".to_owned()];
            if rdma_device().is_some() {
                t.push("rdma".into());
            }
            t
        }
    };
    if let Some(bad) = opts
        .transports
        .iter()
        .find(|t| !["tcp", "rdma-sim", "rdma"].contains(&t.as_str()))
    {
        return Err(format!(
            "--only: unknown transport `{bad}` (tcp, rdma-sim, rdma)"
        ));
    }
    if opts.fractions.iter().any(|f| !(0.0..=1.0).contains(f)) {
        return Err("--fractions: each must be between 0 and 1".into());
    }
    Ok(Some(opts))
}

/// `rdmq-bench headline …`.
pub fn main(args: &[String]) -> ExitCode {
    let opts = match parse(args) {
        Ok(Some(o)) => o,
        Ok(None) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("rdmq-bench headline: {e}");
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
            "rdmq-bench headline: {failed} operations failed (see the table's errors column)"
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
