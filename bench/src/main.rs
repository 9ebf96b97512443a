//! `rdmq-bench`: system benchmarks of rdmq. Every result names its transport and how to read it
//! (measured on this machine; the TCP baseline comes from the same run).

use std::process::ExitCode;

use rdmq_bench::report::{machine_line, summary};
use rdmq_bench::sim;
use rdmq_bench::transport::{dial, echo_server, pipelined, round_trips};
use rdmq_transport::rdma::sim::SimOpener;
use rdmq_transport::rdma::{PollMode, RdmaConfig, RdmaTransport};
use rdmq_transport::tcp::TcpTransport;
use rdmq_transport::{Endpoint, Scheme, Transport};

/// `rdmq-bench`: rdmq's system benchmarks. Every number names its transport and label.
#[derive(Debug, clap::Parser)]
#[command(name = "rdmq-bench", disable_version_flag = true)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, clap::Subcommand)]
enum Cmd {
    /// Round-trip p50/p99 and pipelined messages/s of one connection, for 128 B, 1 KiB and 4 KiB
    /// bodies, over TCP loopback (the baseline), rdma-sim, and real RDMA when a device is present
    Transport(Common),
    /// rdma-sim alone: SEND ping-pong p50/p99 and one-way messages/s, in one process and across
    /// two, with the simulated NIC's share of CPU time
    Sim(Common),
    /// The broker's store: append throughput and latency (ASYNC and SYNC) from --producers
    /// concurrent producers on one core; files under --dir (default target/store-bench)
    Store(Common),
    /// Pop + ack throughput: --producers consumers (default 16) pop batches of 32 and ack each
    /// message, in ASYNC and SYNC modes
    Pop(Common),
    /// End to end through rdmq-proxy in one process: gRPC SendMessage → proxy → embedded broker
    /// over TCP and rdma-sim, with the rdma-sim/TCP ratios
    E2e(Common),
    /// The reference deployment's three numbers with broker and proxy in processes of their own
    /// at fixed offered rates (see `rdmq-bench headline --help`)
    Headline(rdmq_bench::headline::cli::Flags),
    /// Timer firing accuracy: --iterations timers (default 200000) due over 5 s, lateness
    /// p50/p99/max
    Timers(Common),
    /// CPU per request of the largest header and property counts allowed and of 100,000
    /// (refused)
    Hostile(Common),
    /// The store at scale on a broker process of its own: RSS per million messages, sampled
    /// reads and lookups, a topic burst, idle long polls, restarts (see `rdmq-bench scale --help`)
    Scale,
    /// Pop at scale in process: --messages (default 1,000,000) over --topics (default 1250) × 8
    /// queues all in flight, half acked in batches, then a restart: its time and what survived
    #[command(name = "pop-scale")]
    PopScale,
}

/// Flags the benchmarks share (each also from `RDMQ_BENCH_<FLAG>`).
#[derive(Debug, clap::Args)]
struct Common {
    /// Iterations (per command default)
    #[arg(long, short = 'n', value_name = "N", env = "RDMQ_BENCH_ITERATIONS")]
    iterations: Option<u64>,
    /// Transports to run: tcp, rdma-sim, rdma
    #[arg(long, value_name = "LIST", env = "RDMQ_BENCH_ONLY")]
    only: Option<String>,
    /// Body sizes in bytes
    #[arg(
        long,
        value_name = "LIST",
        env = "RDMQ_BENCH_SIZES",
        value_delimiter = ','
    )]
    sizes: Vec<usize>,
    /// Concurrent producers (store) or consumers (pop)
    #[arg(long, value_name = "N", env = "RDMQ_BENCH_PRODUCERS", value_parser = clap::value_parser!(u64).range(1..))]
    producers: Option<u64>,
    /// Store directory
    #[arg(long, value_name = "DIR", env = "RDMQ_BENCH_DIR")]
    dir: Option<std::path::PathBuf>,
    /// Flush modes: async, sync
    #[arg(long, value_name = "LIST", env = "RDMQ_BENCH_MODES", value_delimiter = ',', value_parser = ["async", "sync"])]
    modes: Vec<String>,
    /// transport: the server in a process of its own (tcp, rdma-sim event and busy-poll), with
    /// CPU, NIC work, wake-ups, syscalls and allocations per call at --rate
    #[arg(long, env = "RDMQ_BENCH_CROSS_PROCESS")]
    cross_process: bool,
    /// transport --cross-process: calls per second of the paced phase (default 1000)
    #[arg(long, value_name = "N", env = "RDMQ_BENCH_RATE")]
    rate: Option<u64>,
}

struct Args {
    command: String,
    iterations: u64,
    only: Option<String>,
    sizes: Vec<usize>,
    sizes_given: bool,
    producers: usize,
    dir: std::path::PathBuf,
    modes: Vec<String>,
    cross_process: bool,
    rate: u64,
}

/// The parsed command, with each command's defaults filled in; `Err` carries clap's exit.
fn parse_args(argv: &[String]) -> Result<Args, clap::Error> {
    use clap::Parser;
    let cli =
        Cli::try_parse_from(std::iter::once("rdmq-bench".to_owned()).chain(argv.iter().cloned()))?;
    let (command, c) = match cli.command {
        Cmd::Transport(c) => ("transport", c),
        Cmd::Sim(c) => ("sim", c),
        Cmd::Store(c) => ("store", c),
        Cmd::Pop(c) => ("pop", c),
        Cmd::E2e(c) => ("e2e", c),
        Cmd::Timers(c) => ("timers", c),
        Cmd::Hostile(c) => ("hostile", c),
        Cmd::Headline(_) | Cmd::Scale | Cmd::PopScale => {
            unreachable!("headline and scale are dispatched before")
        }
    };
    // Store appends are cheap: a longer default run for stable numbers.
    let iterations = c.iterations.unwrap_or(match command {
        "store" => 400_000,
        "pop" => 100_000,
        "timers" => 200_000,
        "e2e" => 5_000,
        _ => 20_000,
    });
    let sizes_given = !c.sizes.is_empty();
    Ok(Args {
        command: command.to_owned(),
        iterations,
        only: c.only,
        sizes: if sizes_given {
            c.sizes
        } else {
            vec![128, 1024, 4096]
        },
        sizes_given,
        producers: c
            .producers
            .map(|p| p as usize)
            .unwrap_or(if command == "pop" { 16 } else { 256 }),
        dir: c.dir.unwrap_or_else(|| "target/store-bench".into()),
        modes: if c.modes.is_empty() {
            vec!["async".to_owned(), "sync".to_owned()]
        } else {
            c.modes
        },
        cross_process: c.cross_process,
        rate: c.rate.unwrap_or(1000),
    })
}

impl Args {
    /// The body sizes asked for (`--sizes`), 1 KiB when none were.
    fn sizes_or_1k(&self) -> Vec<usize> {
        if self.sizes_given {
            self.sizes.clone()
        } else {
            vec![1024]
        }
    }

    /// The flush modes asked for (`--modes`), named as printed.
    fn flush_modes(&self) -> Vec<(&'static str, rdmq_broker::store::FlushMode)> {
        use rdmq_broker::store::FlushMode;
        [
            (
                "ASYNC",
                FlushMode::Async {
                    interval: std::time::Duration::from_millis(500),
                },
            ),
            ("SYNC", FlushMode::Sync),
        ]
        .into_iter()
        .filter(|(name, _)| self.modes.iter().any(|m| m.eq_ignore_ascii_case(name)))
        .collect()
    }
}

/// p50, p99 (ns) and pipelined rate per body size.
type SizeResults = Vec<(usize, u64, u64, f64)>;

async fn transport_bench<T: Transport>(
    name: &str,
    label: &str,
    transport: T,
    endpoint: Endpoint,
    iterations: u64,
    sizes: &[usize],
) -> Result<SizeResults, String> {
    let mut results = Vec::new();
    let server = echo_server(&transport, &endpoint)
        .await
        .map_err(|e| e.to_string())?;
    let conn = dial(&transport, server.local_endpoint())
        .await
        .map_err(|e| e.to_string())?;
    for &size in sizes {
        let rtt = round_trips::<T>(&conn, size, iterations / 10, iterations)
            .await
            .map_err(|e| e.to_string())?;
        let rate = pipelined::<T>(&conn, size, 64, iterations)
            .await
            .map_err(|e| e.to_string())?;
        let c = rtt.counters;
        results.push((
            size,
            rtt.histogram.value_at_quantile(0.5),
            rtt.histogram.value_at_quantile(0.99),
            rate,
        ));
        println!(
            "{name:<9} {size:>5} B  RTT {}  | pipelined(64) {:>9.0} msg/s | per call: {:.2} send calls, {:.2} recv calls, {:.2} payload copies  [{label}]",
            summary(&rtt.histogram),
            rate,
            c.send_calls as f64 / rtt.iterations as f64,
            c.recv_calls as f64 / rtt.iterations as f64,
            c.payload_copies as f64 / rtt.iterations as f64,
        );
    }
    if conn.info().transport != name {
        return Err(format!(
            "{name} benchmark ran over {} ({})",
            conn.info().transport,
            conn.info().reason
        ));
    }
    conn.close(std::time::Duration::from_secs(1)).await;
    server.shutdown(std::time::Duration::from_secs(1)).await;
    Ok(results)
}

fn print_ratios(name: &str, base: &SizeResults, other: &SizeResults, goals: &str) {
    for ((size, tp50, tp99, trate), (_, p50, p99, rate)) in base.iter().zip(other) {
        println!(
            "ratio {name}/tcp {size:>5} B: p50 {:.2}x  p99 {:.2}x  pipelined throughput {:.2}x{goals}",
            *p50 as f64 / *tp50 as f64,
            *p99 as f64 / *tp99 as f64,
            rate / trate
        );
    }
}

async fn transport_command(args: &Args) -> Result<(), String> {
    if args.cross_process {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        return rdmq_bench::crossproc::run(
            &exe,
            rdmq_bench::crossproc::Settings {
                iterations: args.iterations,
                size: if args.sizes_given {
                    args.sizes[0]
                } else {
                    1024
                },
                rate: args.rate,
                window: std::time::Duration::from_secs(3),
                only: args
                    .only
                    .as_deref()
                    .map(|o| o.split(',').map(str::to_owned).collect())
                    .unwrap_or_default(),
            },
        )
        .await;
    }
    println!(
        "# rdmq-bench transport: one connection, client and server in one current-thread runtime"
    );
    println!("# {}", machine_line());
    println!(
        "# {} measured calls per size after {} warm-up calls; pipelined = 64 calls outstanding",
        args.iterations,
        args.iterations / 10
    );
    let run = |name: &str| {
        args.only
            .as_deref()
            .is_none_or(|o| o.split(',').any(|n| n == name))
    };
    let ep = |scheme| Endpoint {
        scheme,
        ..Endpoint::tcp("127.0.0.1", 0)
    };
    let emulated = std::env::var_os("SOFTROCE_GUEST").is_some();
    let tcp_label = if emulated {
        "TCP in the qemu guest: emulated, not a performance result"
    } else {
        "TCP loopback baseline, measured"
    };
    let tcp = if run("tcp") {
        transport_bench(
            "tcp",
            tcp_label,
            TcpTransport::default(),
            ep(Scheme::Tcp),
            args.iterations,
            &args.sizes,
        )
        .await?
    } else {
        Vec::new()
    };
    let busy = RdmaConfig {
        mode: PollMode::BusyPoll {
            spin: std::time::Duration::from_millis(5),
        },
        fallback_to_tcp: false,
        ..RdmaConfig::default()
    };
    if run("rdma-sim") {
        let fabric = rdma_sim::Fabric::global();
        let nic0 = fabric.stats().total();
        let cpu0 = rdmq_bench::report::process_cpu_time();
        let transport =
            RdmaTransport::new(SimOpener::default(), TcpTransport::default(), busy.clone());
        let sim = transport_bench(
            "rdma-sim",
            "simulated NIC, busy-poll",
            transport,
            ep(Scheme::RdmaSim),
            args.iterations,
            &args.sizes,
        )
        .await?;
        let nic = fabric.stats().total() - nic0;
        let cpu = rdmq_bench::report::process_cpu_time() - cpu0;
        println!(
            "# rdma-sim run: simulated NIC work {:.3} s of {:.3} s process CPU ({:.0}%)",
            nic.as_secs_f64(),
            cpu.as_secs_f64(),
            100.0 * nic.as_secs_f64() / cpu.as_secs_f64().max(1e-9)
        );
        print_ratios(
            "rdma-sim",
            &tcp,
            &sim,
            "  (goals: p50 <= 0.5x, throughput >= 4x)",
        );
    }
    if run("rdma") {
        let devices = rdmq_transport::rdma::ibverbs::device_names();
        if devices.is_empty() {
            println!("# rdma: skipped, no RDMA device on this host");
        } else {
            let label = if emulated {
                "emulated (qemu TCG + SoftRoCE): not a performance result"
            } else {
                "hardware"
            };
            let transport = RdmaTransport::new(
                rdmq_transport::rdma::ibverbs::IbOpener,
                TcpTransport::default(),
                RdmaConfig {
                    mode: if emulated { PollMode::Event } else { busy.mode },
                    ..busy
                },
            );
            let hw = transport_bench(
                "rdma",
                label,
                transport,
                ep(Scheme::Rdma),
                args.iterations,
                &args.sizes,
            )
            .await?;
            print_ratios(
                "rdma",
                &tcp,
                &hw,
                if emulated {
                    "  [emulated: not a performance result]"
                } else {
                    ""
                },
            );
        }
    }
    Ok(())
}

fn sim_line(mode: &str, size: usize, r: &sim::SimResult) {
    let share = 100.0 * r.nic.as_secs_f64() / r.cpu.as_secs_f64().max(1e-9);
    println!(
        "{mode:<13} {size:>5} B  RTT {}  | one-way(128) {:>9.0} msg/s | NIC {:.0}% of {:.2} s process CPU  [simulated NIC]",
        summary(&r.rtt),
        r.rate,
        share,
        r.cpu.as_secs_f64(),
    );
}

fn sim_bench(iterations: u64) -> Result<(), String> {
    println!(
        "# rdmq-bench sim: rdma-sim SEND_WITH_IMM ping-pong and one-way rate (simulated NIC: no wire timing model)"
    );
    println!("# {}", machine_line());
    println!(
        "# in-process: both QPs in one thread, busy polling; cross-process: a child echoes, both in event mode, over shared memory (direct placement) and over the socket wire"
    );
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    for size in [128usize, 1024, 4096] {
        sim_line("in-process", size, &sim::in_process(size, iterations));
    }
    for size in [128usize, 1024, 4096] {
        for (shm, mode) in [(true, "x-proc shm"), (false, "x-proc wire")] {
            let r =
                sim::cross_process(&exe, size, iterations / 4, shm).map_err(|e| e.to_string())?;
            sim_line(mode, size, &r);
        }
    }
    Ok(())
}

fn store_bench(args: &Args) -> Result<(), String> {
    use rdmq_bench::store;
    let sizes = args.sizes_or_1k();
    std::fs::create_dir_all(&args.dir).map_err(|e| format!("{}: {e}", args.dir.display()))?;
    println!("{}", machine_line());
    println!(
        "store under {} ({}); {} producers on one runtime thread; latency = append to acknowledgement",
        args.dir.display(),
        store::fs_type(&args.dir),
        args.producers
    );
    let messages = args.iterations.max(args.producers as u64);
    let all_cpus = rdmq_bench::affinity::current().map_err(|e| e.to_string())?;
    // Each configuration twice: free to use every core, then confined to one (producers,
    // flusher and syncer share it), which is the per-core number.
    let placements = [
        (format!("all {} cores", all_cpus.len()), all_cpus.clone()),
        ("pinned to 1 core".to_owned(), vec![all_cpus[0]]),
    ];
    for (placement, cpus) in &placements {
        rdmq_bench::affinity::set(cpus).map_err(|e| e.to_string())?;
        for &size in &sizes {
            for (name, flush) in args.flush_modes() {
                // SYNC waits for fsync: fewer messages keep the run short on slow disks.
                let n = if name == "SYNC" {
                    messages / 4
                } else {
                    messages
                };
                let dir = store::run_dir(&args.dir, name).map_err(|e| e.to_string())?;
                let r = store::run(&dir, flush, size, n, args.producers)?;
                let _ = std::fs::remove_dir_all(&dir);
                println!(
                    "store {name:<5} {size:>5} B  {:>9.0} msg/s  {:>7.1} MB/s  latency {}  | {:.2} cores busy, {:>9.0} msg per CPU-second  [{placement}]",
                    r.rate(),
                    r.log_bytes as f64 / r.wall.as_secs_f64() / 1e6,
                    summary(&r.latency),
                    r.cpu.as_secs_f64() / r.wall.as_secs_f64(),
                    r.per_core(),
                );
            }
        }
    }
    rdmq_bench::affinity::set(&all_cpus).map_err(|e| e.to_string())?;
    Ok(())
}

async fn e2e_command(args: &Args) -> Result<(), String> {
    use rdmq_bench::e2e;
    let sizes = args.sizes_or_1k();
    let wanted = |name: &str| {
        args.only
            .as_deref()
            .is_none_or(|o| o.split(',').any(|x| x.trim() == name))
    };
    println!("{}", machine_line());
    println!(
        "end to end: gRPC client → rdmq-proxy → broker (ASYNC flush, embedded, same process); {} sends per run; rdma-sim = simulated NIC",
        args.iterations
    );
    let mut results: Vec<(&str, usize, e2e::E2eRun)> = Vec::new();
    for (name, url, label) in [
        ("tcp", "tcp://127.0.0.1:0", "measured, TCP loopback"),
        ("rdma-sim", "rdma-sim://127.0.0.1:0", "simulated NIC"),
    ] {
        if !wanted(name) {
            continue;
        }
        std::fs::create_dir_all(&args.dir).map_err(|e| e.to_string())?;
        let dir = rdmq_bench::store::run_dir(&args.dir, &format!("e2e-{name}"))
            .map_err(|e| e.to_string())?;
        let proxy = e2e::start(url, &dir).await?;
        for &size in &sizes {
            let r = e2e::run(&proxy, size, args.iterations, 16).await;
            let r = match r {
                Ok(r) => r,
                Err(e) => {
                    let _ = proxy.shutdown().await;
                    return Err(e);
                }
            };
            println!(
                "e2e send {name:<8} {size:>5} B  latency {}  | 16 in flight {:>7.0} msg/s, {:>6.1} µs CPU/msg  [{label}]",
                summary(&r.latency),
                r.rate,
                r.cpu_per_message_us,
            );
            results.push((name, size, r));
        }
        proxy.shutdown().await.map_err(|e| e.to_string())?;
        let _ = std::fs::remove_dir_all(&dir);
    }
    for &size in &sizes {
        let find = |n: &str| results.iter().find(|(x, s, _)| *x == n && *s == size);
        if let (Some((_, _, t)), Some((_, _, r))) = (find("tcp"), find("rdma-sim")) {
            let q = |h: &hdrhistogram::Histogram<u64>, p| h.value_at_quantile(p) as f64;
            println!(
                "e2e ratio rdma-sim/tcp {size:>5} B: p50 {:.2}×  p99 {:.2}×  msg/s {:.2}×  CPU/msg {:.2}×  (same run; simulated NIC)",
                q(&r.latency, 0.5) / q(&t.latency, 0.5),
                q(&r.latency, 0.99) / q(&t.latency, 0.99),
                r.rate / t.rate,
                r.cpu_per_message_us / t.cpu_per_message_us,
            );
        }
    }
    Ok(())
}

fn pop_bench(args: &Args) -> Result<(), String> {
    use rdmq_bench::{pop, store};
    let sizes = args.sizes_or_1k();
    std::fs::create_dir_all(&args.dir).map_err(|e| format!("{}: {e}", args.dir.display()))?;
    println!("{}", machine_line());
    println!(
        "pop under {} ({}), in process; {} consumers on one runtime thread, batches of 32, one ack per message",
        args.dir.display(),
        store::fs_type(&args.dir),
        args.producers
    );
    for &size in &sizes {
        for (name, flush) in args.flush_modes() {
            let dir =
                store::run_dir(&args.dir, &format!("pop-{name}")).map_err(|e| e.to_string())?;
            let r = pop::run_pop(&dir, flush, size, args.iterations, args.producers, 32);
            let _ = std::fs::remove_dir_all(&dir);
            let r = r?;
            println!(
                "pop+ack {name:<5} {size:>5} B  {:>8.0} msg/s ({} pops, {:.1} msg/pop)  | {:.2} cores busy",
                r.rate(),
                r.pops,
                r.messages as f64 / r.pops as f64,
                r.cpu.as_secs_f64() / r.wall.as_secs_f64(),
            );
            println!("    pop latency {}", summary(&r.pop_latency));
            println!("    ack latency {}", summary(&r.ack_latency));
        }
    }
    Ok(())
}

fn timer_bench(args: &Args) -> Result<(), String> {
    use rdmq_bench::{pop, store};
    use std::time::Duration;
    std::fs::create_dir_all(&args.dir).map_err(|e| format!("{}: {e}", args.dir.display()))?;
    println!("{}", machine_line());
    let spread = Duration::from_secs(5);
    let lead = Duration::from_secs(2);
    println!(
        "timers under {} ({}), in process: {} timers due evenly over {} s, starting {} s ahead; lateness = fired copy's store time - delivery time",
        args.dir.display(),
        store::fs_type(&args.dir),
        args.iterations,
        spread.as_secs(),
        lead.as_secs()
    );
    let dir = store::run_dir(&args.dir, "timers").map_err(|e| e.to_string())?;
    let r = pop::run_timers(&dir, args.iterations, lead, spread);
    let _ = std::fs::remove_dir_all(&dir);
    let r = r?;
    let l = &r.lateness_ms;
    println!(
        "timers {:>8} fired (parked in {:.2} s)  lateness min {} ms  p50 {} ms  p99 {} ms  p99.9 {} ms  max {} ms  | within 1 s: {:.4} %",
        r.fired,
        r.scheduled_in.as_secs_f64(),
        pop::quantile(l, 0.0),
        pop::quantile(l, 0.5),
        pop::quantile(l, 0.99),
        pop::quantile(l, 0.999),
        pop::quantile(l, 1.0),
        100.0 * l.iter().filter(|v| (0..=1000).contains(*v)).count() as f64 / l.len().max(1) as f64,
    );
    Ok(())
}

#[global_allocator]
static ALLOCATOR: rdmq_bench::alloc_count::Counting = rdmq_bench::alloc_count::Counting;

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    // Commands with flags of their own; `broker`, `proxy` and `loadgen` are the processes the
    // headline runner starts (the broker's and proxy's are their binaries' main functions).
    match argv.first().map(String::as_str) {
        Some("headline") => return rdmq_bench::headline::cli::main(&argv[1..]),
        Some("scale") => return rdmq_bench::scale::main(&argv[1..]),
        Some("pop-scale") => return rdmq_bench::pop::pop_scale_main(&argv[1..]),
        Some("loadgen") => return rdmq_bench::headline::loadgen::main(&argv[1..]),
        Some("echo-peer") => return rdmq_bench::crossproc::peer_main(&argv[1..]),
        Some("wake-peer") => return rdmq_bench::wakefloor::peer_main(),
        Some("broker") => return rdmq_broker::serve::broker_main(argv[1..].to_vec()),
        Some("proxy") => return rdmq_proxy::proxy_main(argv[1..].to_vec()),
        Some("sim-peer") => {
            sim::peer_main();
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    let args = match parse_args(&argv) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(e.exit_code().clamp(0, 255) as u8);
        }
    };
    let own_runtime = match args.command.as_str() {
        "store" => Some(store_bench as fn(&Args) -> Result<(), String>),
        "pop" => Some(pop_bench as fn(&Args) -> Result<(), String>),
        "timers" => Some(timer_bench as fn(&Args) -> Result<(), String>),
        "hostile" => {
            Some((|_: &Args| rdmq_bench::hostile::run()) as fn(&Args) -> Result<(), String>)
        }
        _ => None,
    };
    if let Some(bench) = own_runtime {
        // Builds its own runtimes.
        return match bench(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("rdmq-bench: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = rt.block_on(async {
        match args.command.as_str() {
            "transport" => transport_command(&args).await,
            "e2e" => e2e_command(&args).await,
            "sim" => sim_bench(args.iterations),
            other => Err(format!("unknown command `{other}`")),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rdmq-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
