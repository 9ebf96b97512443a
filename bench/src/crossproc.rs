//! `rdmq-bench transport --cross-process`: the echo server in a process of its own (pinned to
//! its own CPU where there are two), the client here, as a proxy and a broker are deployed.
//! For TCP and for rdma-sim in event and busy-poll modes, 1 KiB by default: round-trip p50/p99
//! and pipelined messages/s, then a paced phase at a fixed rate where both processes' CPU
//! (`/proc`), the simulated NIC's work (reported by rdma-sim in each process), wake-ups
//! (voluntary context switches), syscalls (`perf stat`, where it works) and heap allocations
//! (the counting allocator) are taken per call. Ratios are against TCP of the same run.

use std::path::Path;
use std::time::{Duration, Instant};

use rdmq_transport::rdma::sim::SimOpener;
use rdmq_transport::rdma::{PollMode, RdmaConfig, RdmaTransport};
use rdmq_transport::tcp::TcpTransport;
use rdmq_transport::{Endpoint, Scheme, Transport};

use crate::affinity;
use crate::headline::procs::{PerfCount, Proc, ProcSample, perf_available, ticks_per_second};
use crate::report::summary;
use crate::transport::{ConnOf, dial, echo_server, pipelined, round_trips, send_like_request};

/// A transport and poll mode measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// TCP loopback (the baseline).
    Tcp,
    /// rdma-sim, event mode.
    SimEvent,
    /// rdma-sim, busy-poll mode.
    SimBusy,
}

impl Variant {
    const ALL: [Variant; 3] = [Variant::Tcp, Variant::SimEvent, Variant::SimBusy];

    fn name(self) -> &'static str {
        match self {
            Variant::Tcp => "tcp",
            Variant::SimEvent => "rdma-sim-event",
            Variant::SimBusy => "rdma-sim-busy",
        }
    }

    fn parse(s: &str) -> Option<Variant> {
        Self::ALL.into_iter().find(|v| v.name() == s)
    }

    fn rdma(self) -> Option<RdmaTransport<SimOpener>> {
        let mode = match self {
            Variant::Tcp => return None,
            Variant::SimEvent => PollMode::Event,
            Variant::SimBusy => PollMode::BusyPoll {
                spin: Duration::from_millis(5),
            },
        };
        Some(RdmaTransport::new(
            SimOpener::default(),
            TcpTransport::default(),
            RdmaConfig {
                mode,
                fallback_to_tcp: false,
                ..RdmaConfig::default()
            },
        ))
    }
}

fn nic_ns() -> u64 {
    rdma_sim::Fabric::global_if_started()
        .map(|f| f.stats().total().as_nanos() as u64)
        .unwrap_or(0)
}

/// The server process: `rdmq-bench echo-peer <variant>`. Prints `listening <endpoint>`, then
/// answers each `stats` line on stdin with `stats <allocations> <NIC ns>`; ends at stdin's end.
pub fn peer_main(argv: &[String]) -> std::process::ExitCode {
    let Some(variant) = argv.first().and_then(|v| Variant::parse(v)) else {
        eprintln!("usage: rdmq-bench echo-peer tcp|rdma-sim-event|rdma-sim-busy");
        return std::process::ExitCode::FAILURE;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let served = rt.block_on(async {
        let handle = match variant.rdma() {
            None => echo_server(&TcpTransport::default(), &Endpoint::tcp("127.0.0.1", 0)).await,
            Some(t) => {
                let ep = Endpoint {
                    scheme: Scheme::RdmaSim,
                    ..Endpoint::tcp("127.0.0.1", 0)
                };
                echo_server(&t, &ep).await
            }
        }
        .map_err(|e| e.to_string())?;
        println!("listening {}", handle.local_endpoint());
        // Stats are answered off the runtime so they never wait behind the server.
        let (done_tx, done) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            for line in std::io::stdin().lines() {
                let Ok(line) = line else { break };
                if line.trim() == "stats" {
                    println!("stats {} {}", crate::alloc_count::allocations(), nic_ns());
                }
            }
            let _ = done_tx.send(());
        });
        let _ = done.await;
        handle.shutdown(Duration::from_millis(500)).await;
        Ok::<(), String>(())
    });
    match served {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rdmq-bench echo-peer: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Per-call figures of the paced phase.
#[derive(Debug, Clone, Copy, Default)]
struct Paced {
    calls: u64,
    rate: f64,
    /// µs of process CPU per call: client, server.
    cpu: [f64; 2],
    /// µs of the simulated NIC's work per call: client, server.
    nic: [f64; 2],
    wakeups: [f64; 2],
    syscalls: Option<[f64; 2]>,
    allocs: [f64; 2],
}

#[derive(Debug, Clone, Copy)]
struct Row {
    variant: Variant,
    p50_ns: u64,
    p99_ns: u64,
    pipelined: f64,
    /// Syscalls and allocations per call in the pipelined phase: client, server.
    loaded_syscalls: Option<[f64; 2]>,
    loaded_allocs: [f64; 2],
    paced: Paced,
}

fn peer_stats(peer: &mut Proc) -> Result<(u64, u64), String> {
    peer.send_line("stats")?;
    let line = peer.expect("stats ", Duration::from_secs(5))?;
    let mut f = line
        .split_whitespace()
        .map(|v| v.parse::<u64>().unwrap_or(0));
    Ok((f.next().unwrap_or(0), f.next().unwrap_or(0)))
}

async fn paced<T: Transport>(
    conn: &ConnOf<T>,
    size: usize,
    rate: u64,
    window: Duration,
    peer: &mut Proc,
    perf: bool,
) -> Result<Paced, String> {
    let me = std::process::id();
    let request = send_like_request(size);
    let period = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let (peer_alloc0, peer_nic0) = peer_stats(peer)?;
    let (self0, peer0) = (ProcSample::read(me)?, ProcSample::read(peer.pid())?);
    let (alloc0, nic0) = (crate::alloc_count::allocations(), nic_ns());
    let counters = if perf {
        Some((PerfCount::start(me)?, PerfCount::start(peer.pid())?))
    } else {
        None
    };
    let started = Instant::now();
    let mut due = tokio::time::Instant::now();
    let mut calls = 0u64;
    // The caller's copy of its request is its own cost, not the stack's: counted apart.
    let mut caller_allocs = 0u64;
    while started.elapsed() < window {
        let before = crate::alloc_count::allocations();
        let copy = request.clone();
        caller_allocs += crate::alloc_count::allocations() - before;
        conn.call(copy, Duration::from_secs(5))
            .await
            .map_err(|e| e.to_string())?;
        calls += 1;
        due += period;
        tokio::time::sleep_until(due).await;
    }
    let elapsed = started.elapsed();
    let syscalls = match counters {
        Some((a, b)) => {
            let (sa, _) = a.stop()?;
            let (sb, _) = b.stop()?;
            Some([sa as f64 / calls as f64, sb as f64 / calls as f64])
        }
        None => None,
    };
    let (alloc1, nic1) = (crate::alloc_count::allocations(), nic_ns());
    let (s, p) = (
        ProcSample::read(me)?.since(&self0),
        ProcSample::read(peer.pid())?.since(&peer0),
    );
    let (peer_alloc1, peer_nic1) = peer_stats(peer)?;
    let per = |v: f64| v / calls as f64;
    let tick_us = 1e6 / ticks_per_second();
    Ok(Paced {
        calls,
        rate: calls as f64 / elapsed.as_secs_f64(),
        cpu: [
            per((s.utime + s.stime) as f64 * tick_us),
            per((p.utime + p.stime) as f64 * tick_us),
        ],
        nic: [
            per((nic1 - nic0) as f64 / 1e3),
            per(peer_nic1.saturating_sub(peer_nic0) as f64 / 1e3),
        ],
        wakeups: [per(s.voluntary as f64), per(p.voluntary as f64)],
        syscalls,
        // The stats exchange itself allocates in the peer: a handful per window, not per call.
        allocs: [
            per((alloc1 - alloc0 - caller_allocs) as f64),
            per(peer_alloc1.saturating_sub(peer_alloc0) as f64),
        ],
    })
}

/// Settings of a cross-process run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Sequential and pipelined calls per variant.
    pub iterations: u64,
    /// Body size.
    pub size: usize,
    /// Calls per second of the paced phase.
    pub rate: u64,
    /// Length of the paced phase.
    pub window: Duration,
    /// Variants to run (by name); all when empty.
    pub only: Vec<String>,
}

async fn measure<T: Transport>(
    transport: T,
    endpoint: Endpoint,
    variant: Variant,
    s: &Settings,
    peer: &mut Proc,
    perf: bool,
) -> Result<Row, String> {
    let conn = dial(&transport, &endpoint)
        .await
        .map_err(|e| e.to_string())?;
    let rtt = round_trips::<T>(&conn, s.size, s.iterations / 10, s.iterations)
        .await
        .map_err(|e| e.to_string())?;
    // The pipelined phase is the steady state of a loaded link: its syscalls and allocations
    // per call are counted too (busy-poll spins between paced calls, which costs the runtime's
    // periodic I/O polls; under load there is no idle spin).
    let (peer_alloc0, _) = peer_stats(peer)?;
    let alloc0 = crate::alloc_count::allocations();
    let counters = if perf {
        Some((
            PerfCount::start(std::process::id())?,
            PerfCount::start(peer.pid())?,
        ))
    } else {
        None
    };
    let rate = pipelined::<T>(&conn, s.size, 64, s.iterations)
        .await
        .map_err(|e| e.to_string())?;
    let loaded_syscalls = match counters {
        Some((a, b)) => {
            let n = s.iterations as f64;
            Some([a.stop()?.0 as f64 / n, b.stop()?.0 as f64 / n])
        }
        None => None,
    };
    let loaded_allocs = [
        (crate::alloc_count::allocations() - alloc0) as f64 / s.iterations as f64,
        peer_stats(peer)?.0.saturating_sub(peer_alloc0) as f64 / s.iterations as f64,
    ];
    let p = paced::<T>(&conn, s.size, s.rate, s.window, peer, perf).await?;
    println!(
        "{:<15} {:>5} B  RTT {}  | pipelined(64) {:>8.0} msg/s",
        variant.name(),
        s.size,
        summary(&rtt.histogram),
        rate
    );
    conn.close(Duration::from_secs(1)).await;
    Ok(Row {
        variant,
        p50_ns: rtt.histogram.value_at_quantile(0.5),
        p99_ns: rtt.histogram.value_at_quantile(0.99),
        pipelined: rate,
        loaded_syscalls,
        loaded_allocs,
        paced: p,
    })
}

/// Runs every variant and prints the table, the ratios to TCP and the gates.
pub async fn run(exe: &Path, s: Settings) -> Result<(), String> {
    let cpus = affinity::current().map_err(|e| e.to_string())?;
    let (client_cpu, server_cpu) = match cpus.as_slice() {
        [a, b, ..] => (vec![*a], Some(vec![*b])),
        _ => (cpus.clone(), None),
    };
    let perf = perf_available().is_ok();
    println!(
        "# rdmq-bench transport --cross-process: echo server in its own process{}, client here{}",
        server_cpu
            .as_ref()
            .map(|c| format!(" on CPU {}", c[0]))
            .unwrap_or_default(),
        if server_cpu.is_some() {
            format!(" on CPU {}", client_cpu[0])
        } else {
            String::new()
        }
    );
    println!("# {}", crate::report::machine_line());
    println!(
        "# {} sequential and {} pipelined (64 outstanding) calls, then {} calls/s for {:?} for the per-call counts; syscalls {}",
        s.iterations,
        s.iterations,
        s.rate,
        s.window,
        if perf {
            "by perf stat"
        } else {
            "not counted (perf unavailable)"
        }
    );
    affinity::set(&client_cpu).map_err(|e| e.to_string())?;
    let log_dir = std::env::temp_dir();
    let mut rows = Vec::new();
    for v in Variant::ALL {
        if !s.only.is_empty() && !s.only.iter().any(|o| o == v.name()) {
            continue;
        }
        let log = log_dir.join(format!("rdmq-bench-echo-peer-{}.log", v.name()));
        let mut peer = Proc::spawn_interactive(
            "echo-peer",
            exe,
            &["echo-peer".to_owned(), v.name().to_owned()],
            server_cpu.as_deref(),
            &log,
        )?;
        let ep: Endpoint = peer
            .expect("listening ", Duration::from_secs(20))?
            .trim()
            .parse()
            .map_err(|e| format!("echo-peer endpoint: {e}"))?;
        let row = match v.rdma() {
            None => measure(TcpTransport::default(), ep, v, &s, &mut peer, perf).await,
            Some(t) => measure(t, ep, v, &s, &mut peer, perf).await,
        };
        drop(peer);
        rows.push(row?);
    }
    let floor =
        crate::wakefloor::measure(exe, server_cpu.as_deref(), s.iterations, s.rate, s.window);
    let _ = affinity::set(&cpus);
    print_table(&rows);
    match floor {
        Ok(f) => print_floor(&rows, &f),
        Err(e) => println!("# wake-up floor not measured: {e}"),
    }
    Ok(())
}

/// What no transport removes here: the floor's RTT and CPU beside each variant's.
fn print_floor(rows: &[Row], f: &crate::wakefloor::Floor) {
    println!();
    println!(
        "wake-up floor (1-byte blocking Unix-socket ping-pong, no runtime, same pinning): RTT p50 {:.2} µs; at {:.0}/s CPU {:.1} / {:.1} µs and wake-ups {:.2} / {:.2} per round trip (client / server)  [measured]",
        f.p50_ns as f64 / 1e3,
        rows.first().map(|r| r.paced.rate).unwrap_or(0.0),
        f.cpu[0],
        f.cpu[1],
        f.wakeups[0],
        f.wakeups[1],
    );
    let floor_cpu = f.cpu[0] + f.cpu[1];
    for r in rows.iter().filter(|r| r.variant != Variant::SimBusy) {
        let cpu = r.paced.cpu[0] + r.paced.cpu[1];
        println!(
            "  {:<15} RTT p50 {:.2} µs above the floor, CPU per call {:.1} µs above it ({:.0} % of its CPU is the floor's)",
            r.variant.name(),
            (r.p50_ns as f64 - f.p50_ns as f64) / 1e3,
            cpu - floor_cpu,
            100.0 * floor_cpu / cpu.max(1e-9),
        );
    }
}

fn print_table(rows: &[Row]) {
    println!();
    println!(
        "per call at the paced rate (client / server): CPU µs, NIC µs (simulated NIC's work, inside CPU), host µs = CPU − NIC, wake-ups, syscalls, heap allocations (the caller's copy of its request excluded)"
    );
    for r in rows {
        let p = &r.paced;
        let host = [p.cpu[0] - p.nic[0], p.cpu[1] - p.nic[1]];
        let sys = p
            .syscalls
            .map(|s| format!("{:.2} / {:.2}", s[0], s[1]))
            .unwrap_or_else(|| "n/a".into());
        let label = match r.variant {
            Variant::Tcp => "measured",
            _ => "measured, simulated NIC",
        };
        println!(
            "{:<15} {:>6.0}/s ({} calls)  CPU {:>6.1} / {:>6.1}  NIC {:>5.1} / {:>5.1}  host {:>6.1} / {:>6.1}  wake-ups {:.2} / {:.2}  syscalls {sys}  allocs {:.1} / {:.1}  [{label}]",
            r.variant.name(),
            p.rate,
            p.calls,
            p.cpu[0],
            p.cpu[1],
            p.nic[0],
            p.nic[1],
            host[0],
            host[1],
            p.wakeups[0],
            p.wakeups[1],
            p.allocs[0],
            p.allocs[1],
        );
    }
    println!();
    println!(
        "per call in the pipelined phase (client / server): syscalls, heap allocations (with the harness's task and request copy per call)"
    );
    for r in rows {
        let sys = r
            .loaded_syscalls
            .map(|s| format!("{:.3} / {:.3}", s[0], s[1]))
            .unwrap_or_else(|| "n/a".into());
        println!(
            "{:<15} {:>8.0} msg/s  syscalls {sys}  allocs {:.1} / {:.1}",
            r.variant.name(),
            r.pipelined,
            r.loaded_allocs[0],
            r.loaded_allocs[1]
        );
    }
    let Some(tcp) = rows.iter().find(|r| r.variant == Variant::Tcp) else {
        return;
    };
    println!();
    let sum = |v: [f64; 2]| v[0] + v[1];
    for r in rows.iter().filter(|r| r.variant != Variant::Tcp) {
        let (p, t) = (&r.paced, &tcp.paced);
        let host = sum(p.cpu) - sum(p.nic);
        println!(
            "ratio {}/tcp: RTT p50 {:.2}x  p99 {:.2}x  pipelined {:.2}x  host CPU/call {:.2}x  CPU incl. NIC {:.2}x  wake-ups {:.2}x",
            r.variant.name(),
            r.p50_ns as f64 / tcp.p50_ns as f64,
            r.p99_ns as f64 / tcp.p99_ns as f64,
            r.pipelined / tcp.pipelined,
            host / sum(t.cpu),
            sum(p.cpu) / sum(t.cpu),
            sum(p.wakeups) / sum(t.wakeups).max(1e-9),
        );
    }
    println!(
        "# gates (issue: the RDMA hop must cost less than TCP): busy-poll RTT p50 <= 0.35x, pipelined >= 2x; event RTT p50 <= 0.85x, host CPU/call <= 0.6x, CPU incl. NIC <= 1.0x, wake-ups <= 0.5x; busy-poll <= 0.05 syscalls and 0 allocations per call"
    );
}
