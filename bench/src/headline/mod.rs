//! `rdmq-bench headline`: the reference deployment's three numbers (broker CPU, proxy CPU and
//! proxy→broker send RT, RDMA against TCP) measured as deployed — `rdmq-broker` and
//! `rdmq-proxy` in processes of their own, a load generator in a third, fixed offered rates,
//! transports interleaved over several runs.
//!
//! - [`pace`]: open-loop pacing (latency from due time) and the closed loop for saturation.
//! - [`loadgen`]: the load generator process (gRPC SendMessage, ReceiveMessage + AckMessage).
//! - [`procs`]: starting processes, placement on CPUs, `/proc` and `perf stat` sampling.
//! - [`measure`]: one deployment and one measured point.
//! - [`output`]: medians, the ratios beside the reference, Markdown, JSON and SVG.

pub mod cli;
pub mod loadgen;
pub mod measure;
pub mod output;
pub mod pace;
pub mod procs;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use self::loadgen::LoadSpec;
use self::measure::{Cell, Deployment};
use self::procs::{Placement, Programs};

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Transports of the hop, in the order of the first run.
    pub transports: Vec<String>,
    /// Interleaved runs.
    pub runs: usize,
    /// Body size (bytes).
    pub size: usize,
    /// Warm-up before each window.
    pub warmup: Duration,
    /// Each measured window.
    pub window: Duration,
    /// Fixed send rates (msg/s) measured besides 50 % and 80 % of saturation.
    pub fixed_rates: Vec<f64>,
    /// Fractions of the TCP saturation rate measured.
    pub fractions: Vec<f64>,
    /// Offered rate of the receive/ack phase (msg/s).
    pub receive_rate: f64,
    /// CPU placement (`split`, `shared`).
    pub placement: String,
    /// Where `rdmq-broker` and `rdmq-proxy` are (else this executable runs as them).
    pub bin_dir: Option<PathBuf>,
    /// Where results go.
    pub out_dir: PathBuf,
    /// A short run that checks the machinery, not a result.
    pub smoke: bool,
    /// Count syscalls with `perf stat` where it works.
    pub perf: bool,
}

impl Options {
    /// The full measurement.
    pub fn full() -> Options {
        Options {
            transports: Vec::new(),
            runs: 3,
            size: 1024,
            warmup: Duration::from_millis(1500),
            window: Duration::from_secs(5),
            fixed_rates: vec![1000.0, 3000.0],
            fractions: vec![0.5, 0.8],
            receive_rate: 1000.0,
            placement: "split".into(),
            bin_dir: None,
            out_dir: PathBuf::from("target/headline"),
            smoke: false,
            perf: true,
        }
    }

    /// The smoke run of the test command: every phase, briefly, at low rates.
    pub fn smoke() -> Options {
        Options {
            runs: 1,
            warmup: Duration::from_millis(300),
            window: Duration::from_millis(1000),
            fixed_rates: vec![200.0],
            fractions: vec![0.1],
            receive_rate: 200.0,
            smoke: true,
            out_dir: PathBuf::from("target/headline-smoke"),
            ..Options::full()
        }
    }
}

/// The label of figures over `transport` here: TCP loopback and rdma-sim are measured on this
/// machine (rdma-sim's NIC work is simulated and reported apart); `rdma` is emulated on SoftRoCE
/// (`rxe` devices) and hardware otherwise; everything is emulated inside the SoftRoCE qemu guest.
pub fn label(transport: &str) -> &'static str {
    // Inside scripts/softroce-vm.sh's qemu guest every figure is of an emulated machine.
    if std::env::var_os("SOFTROCE_GUEST").is_some() {
        return "emulated (qemu guest): not a performance result";
    }
    match transport {
        "rdma-sim" => "measured, simulated NIC",
        "rdma" if rdma_device().is_some_and(|d| d.starts_with("rxe")) => "emulated (SoftRoCE)",
        "rdma" => "hardware",
        _ => "measured",
    }
}

/// The first RDMA device of `/sys/class/infiniband`, if any.
pub fn rdma_device() -> Option<String> {
    let mut names: Vec<String> = std::fs::read_dir("/sys/class/infiniband")
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names.into_iter().next()
}

/// Everything a run produced.
#[derive(Debug, serde::Serialize)]
pub struct Results {
    /// How the run was set up.
    pub setup: Setup,
    /// The TCP saturation measurement (closed loop).
    pub saturation: Cell,
    /// The highest open-loop rate TCP sustained (within 5 %, no errors) in the probes: the
    /// base of the saturation fractions, since an open-loop load generator costs more per
    /// message than the closed loop and shares a CPU with the proxy.
    pub sustained: f64,
    /// Every measured point.
    pub cells: Vec<Cell>,
    /// Seconds spent measuring.
    pub measuring_seconds: f64,
}

/// How a run was set up, for the report.
#[derive(Debug, serde::Serialize)]
pub struct Setup {
    /// `machine: …` line.
    pub machine: String,
    /// Placement description.
    pub placement: String,
    /// Which programs ran.
    pub programs: String,
    /// How syscalls are counted.
    pub syscalls: String,
    /// Transports, in the first run's order.
    pub transports: Vec<String>,
    /// Runs.
    pub runs: usize,
    /// Body size.
    pub size: usize,
    /// Warm-up and window (s).
    pub warmup_s: f64,
    /// Window (s).
    pub window_s: f64,
    /// Send rates measured.
    pub rates: Vec<f64>,
    /// Smoke run (not a result).
    pub smoke: bool,
    /// The command line.
    pub command: String,
}

fn spec(target: &str, mode: &str, rate: f64, opts: &Options) -> LoadSpec {
    LoadSpec {
        target: target.into(),
        mode: mode.into(),
        rate,
        concurrency: 64,
        warmup_ms: opts.warmup.as_millis() as u64,
        window_ms: opts.window.as_millis() as u64,
        size: opts.size,
        topic: "bench".into(),
        group: "bench-consumers".into(),
        batch: 16,
        connections: 2,
    }
}

/// Runs the whole measurement.
pub fn run(opts: &Options) -> Result<Results, String> {
    let programs = Programs::find(opts.bin_dir.as_deref())?;
    let placement = Placement::new(&opts.placement)?;
    let perf = if opts.perf {
        procs::perf_available()
    } else {
        Err("--no-perf".to_owned())
    };
    let syscalls = match &perf {
        Ok(()) => "perf stat -e raw_syscalls:sys_enter per process, all threads".to_owned(),
        Err(why) => format!("/proc/<pid>/io syscr+syscw, read/write family only ({why})"),
    };
    let setup = |rates: Vec<f64>| Setup {
        machine: crate::report::machine_line(),
        placement: placement.describe(),
        programs: programs.origin.clone(),
        syscalls: syscalls.clone(),
        transports: opts.transports.clone(),
        runs: opts.runs,
        size: opts.size,
        warmup_s: opts.warmup.as_secs_f64(),
        window_s: opts.window.as_secs_f64(),
        rates,
        smoke: opts.smoke,
        command: std::env::args().collect::<Vec<_>>().join(" "),
    };
    let steps =
        1 + opts.runs * opts.transports.len() * (opts.fixed_rates.len() + opts.fractions.len() + 1);
    let bar = ProgressBar::new(steps as u64);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let started = Instant::now();
    let base = opts.out_dir.join("work");
    let perf_on = perf.is_ok();

    bar.set_message("tcp saturation (closed loop, then open-loop probes)");
    let (saturation, sustained) = {
        let dep = Deployment::start(&programs, &placement, "tcp", &base.join("saturation"))?;
        let res = saturation_of(&dep, &programs, &placement, opts, perf_on);
        dep.stop();
        res?
    };
    bar.inc(1);
    bar.println(format!(
        "tcp saturation: {:.0} msg/s closed loop (64 in flight); {:.0} msg/s sustained open loop (the base of the fractions)",
        saturation.achieved, sustained
    ));
    let mut rates: Vec<f64> = opts
        .fixed_rates
        .iter()
        .copied()
        .chain(opts.fractions.iter().map(|f| (f * sustained).round()))
        .filter(|r| *r > 0.0)
        .collect();
    rates.sort_by(f64::total_cmp);
    rates.dedup();

    let mut cells = Vec::new();
    for run in 0..opts.runs {
        let mut order = opts.transports.clone();
        let k = run % order.len().max(1);
        order.rotate_left(k);
        for transport in order {
            let dir = base.join(format!("run{run}-{transport}"));
            let dep = Deployment::start(&programs, &placement, &transport, &dir)?;
            let mut measure = |mode: &str, rate: f64| -> Result<(), String> {
                bar.set_message(format!(
                    "run {}/{} {transport} {mode} {rate:.0} msg/s",
                    run + 1,
                    opts.runs
                ));
                let cell = dep
                    .measure(
                        &programs,
                        &placement,
                        &spec(&dep.grpc, mode, rate, opts),
                        run,
                        perf_on,
                    )
                    .map_err(|e| {
                        format!(
                            "{transport} {mode} at {rate:.0}/s: {e} (logs in {})",
                            dep.dir().display()
                        )
                    })?;
                if !cell.link.starts_with(&format!("{transport}:")) {
                    return Err(format!(
                        "asked for {transport}, the proxy's links are {}",
                        cell.link
                    ));
                }
                if !cell.within_5pct {
                    bar.println(format!(
                        "  {transport} {mode} offered {rate:.0}/s achieved {:.0}/s: NOT within 5 %",
                        cell.achieved
                    ));
                }
                cells.push(cell);
                bar.inc(1);
                Ok(())
            };
            let res = rates
                .iter()
                .try_for_each(|&r| measure("send", r))
                .and_then(|()| measure("receive", opts.receive_rate));
            dep.stop();
            res?;
        }
    }
    bar.finish_and_clear();
    Ok(Results {
        setup: setup(rates),
        saturation,
        sustained,
        cells,
        measuring_seconds: started.elapsed().as_secs_f64(),
    })
}

/// TCP's closed-loop saturation, then the highest open-loop rate it sustains: probes from half
/// the closed-loop rate upwards in 10 % steps (short windows), stopping at the first that misses
/// its rate by more than 5 % or fails anything.
fn saturation_of(
    dep: &Deployment,
    programs: &Programs,
    placement: &Placement,
    opts: &Options,
    perf: bool,
) -> Result<(Cell, f64), String> {
    let closed = dep.measure(
        programs,
        placement,
        &spec(&dep.grpc, "saturate", 0.0, opts),
        0,
        perf,
    )?;
    let probe = Options {
        warmup: opts.warmup.min(Duration::from_millis(500)),
        window: opts.window.min(Duration::from_millis(1500)),
        ..opts.clone()
    };
    let mut sustained = 0.0;
    for step in 5..=10 {
        let rate = (closed.achieved * step as f64 / 10.0).round();
        if rate <= 0.0 {
            break;
        }
        let cell = dep.measure(
            programs,
            placement,
            &spec(&dep.grpc, "send", rate, &probe),
            0,
            false,
        )?;
        if !cell.within_5pct || cell.errors > 0 {
            break;
        }
        sustained = rate;
    }
    if sustained == 0.0 {
        // Not even half the closed-loop rate held: fall back on a quarter of it.
        sustained = (closed.achieved / 4.0).round();
    }
    Ok((closed, sustained))
}
