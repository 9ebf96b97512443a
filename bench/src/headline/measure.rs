//! One deployment (a broker and a proxy process over one transport) and one measured point on
//! it: a load generator runs, and at its window's edges the runner samples both processes'
//! `/proc` counters, the machine's `/proc/stat`, `perf stat` counts and both metrics endpoints.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rdmq_transport::metrics::{Snapshot, parse_hdr};
use serde::Serialize;

use super::loadgen::{LoadResult, LoadSpec};
use super::procs::{
    MachineSample, PerfCount, Placement, Proc, ProcSample, Programs, ticks_per_second,
};

const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running broker and proxy.
#[derive(Debug)]
pub struct Deployment {
    /// Transport of the proxy→broker hop.
    pub transport: String,
    broker: Proc,
    proxy: Proc,
    /// The proxy's gRPC address.
    pub grpc: String,
    broker_metrics: SocketAddr,
    proxy_metrics: SocketAddr,
    dir: PathBuf,
}

pub fn metrics_addr(url: &str) -> Result<SocketAddr, String> {
    url.trim_start_matches("http://")
        .trim_end_matches("/metrics")
        .parse()
        .map_err(|e| format!("metrics address `{url}`: {e}"))
}

impl Deployment {
    /// Starts a broker listening on `transport` and a proxy forwarding to it; stores under
    /// `dir` (emptied first), logs beside it.
    pub fn start(
        programs: &Programs,
        placement: &Placement,
        transport: &str,
        dir: &Path,
    ) -> Result<Deployment, String> {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let (exe, lead) = &programs.broker;
        let mut args = lead.clone();
        args.extend(
            [
                "--listen",
                &format!("{transport}://127.0.0.1:0"),
                "--store-dir",
                &dir.join("store").display().to_string(),
                "--topic",
                "bench:8",
                "--pop-initial-offset",
                "first",
                "--metrics-listen",
                "127.0.0.1:0",
            ]
            .map(String::from),
        );
        let mut broker = Proc::spawn(
            "broker",
            exe,
            &args,
            placement.broker.as_deref(),
            &dir.join("broker.log"),
        )?;
        let broker_metrics = metrics_addr(&broker.expect("metrics ", START_TIMEOUT)?)?;
        let url = broker.expect("listening ", START_TIMEOUT)?;
        let (exe, lead) = &programs.proxy;
        let mut args = lead.clone();
        args.extend(
            [
                "--listen",
                "127.0.0.1:0",
                "--broker",
                &url,
                "--metrics-listen",
                "127.0.0.1:0",
            ]
            .map(String::from),
        );
        let mut proxy = Proc::spawn(
            "proxy",
            exe,
            &args,
            placement.proxy.as_deref(),
            &dir.join("proxy.log"),
        )?;
        let proxy_metrics = metrics_addr(&proxy.expect("metrics ", START_TIMEOUT)?)?;
        let grpc = proxy
            .expect("listening ", START_TIMEOUT)?
            .trim_start_matches("grpc://")
            .to_owned();
        Ok(Deployment {
            transport: transport.into(),
            broker,
            proxy,
            grpc,
            broker_metrics,
            proxy_metrics,
            dir: dir.to_owned(),
        })
    }

    /// Stops both (proxy first, as a drain would).
    /// Stops both processes and deletes the broker's store (its segments are reserved on
    /// disk up front); the logs stay.
    pub fn stop(self) {
        self.proxy.stop(Duration::from_secs(10));
        self.broker.stop(Duration::from_secs(10));
        let _ = std::fs::remove_dir_all(self.dir.join("store"));
    }

    /// Where its logs are.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Latency percentiles (µs).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Rt {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Mean.
    pub mean_us: f64,
}

impl Rt {
    fn of(s: &Snapshot) -> Rt {
        let us = |q| s.quantile_ns(q) as f64 / 1e3;
        Rt {
            count: s.count(),
            p50_us: us(0.5),
            p90_us: us(0.9),
            p99_us: us(0.99),
            p999_us: us(0.999),
            mean_us: s.mean_ns() / 1e3,
        }
    }
}

/// One process's cost per message in a window.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProcFigures {
    /// User + system CPU per message (µs), from `/proc/<pid>/stat`.
    pub cpu_us: f64,
    /// User part.
    pub user_us: f64,
    /// System part.
    pub sys_us: f64,
    /// The simulated NIC's part of `cpu_us` (µs; 0 for TCP and real RDMA).
    pub nic_us: f64,
    /// `cpu_us - nic_us`: the host work a real NIC would leave.
    pub host_us: f64,
    /// Voluntary context switches per message (each a block, so one wake-up).
    pub wakeups: f64,
    /// Involuntary context switches per message.
    pub preemptions: f64,
    /// Syscalls per message (see `syscall_source`).
    pub syscalls: f64,
    /// How syscalls were counted.
    pub syscall_source: String,
}

/// One measured point.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    /// Run number (0-based).
    pub run: usize,
    /// Transport of the hop.
    pub transport: String,
    /// `send`, `receive` or `saturate`.
    pub phase: String,
    /// Offered messages per second (0 for the closed loop).
    pub offered: f64,
    /// Messages completed per second in the window.
    pub achieved: f64,
    /// Achieved within 5 % of offered.
    pub within_5pct: bool,
    /// Messages completed in the window.
    pub messages: u64,
    /// Failed operations (and the first error).
    pub errors: u64,
    /// First error, if any.
    pub first_error: Option<String>,
    /// Operations started over 1 ms late, or never.
    pub late_starts: u64,
    /// Broker process.
    pub broker: ProcFigures,
    /// Proxy process.
    pub proxy: ProcFigures,
    /// The load generator's own CPU per message (µs; user+sys), so the machine figure can be
    /// accounted for.
    pub loadgen_us: f64,
    /// The whole machine's busy CPU per message (µs), from `/proc/stat`: includes the load
    /// generator and kernel work charged to no process.
    pub machine_us: f64,
    /// Of which soft interrupts (µs).
    pub softirq_us: f64,
    /// vCPU time stolen by the hypervisor per message (µs; not in `machine_us`): a large value
    /// means the figures were taken on a contended host.
    pub steal_us: f64,
    /// Proxy→broker round trip of the phase's main request, inside the proxy's remoting client.
    pub hop_rt: Rt,
    /// The broker's own time for that request, arrival to response (its
    /// `rdmq_remoting_serve_seconds`): the hop RT minus this is transport and scheduling.
    pub broker_serve: Rt,
    /// The load generator's end-to-end latency from each operation's due time.
    pub client_rt: Rt,
    /// What the proxy's links report (`transport: reason`).
    pub link: String,
    /// Proxy sends that waited for credits or send slots, per 1000 messages.
    pub credit_waits_per_k: f64,
}

/// A blocking `GET` of a metrics endpoint.
pub fn scrape(addr: SocketAddr, path: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .map_err(|e| format!("metrics {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)
        .map_err(|e| format!("metrics {addr}: {e}"))?;
    let (head, body) = raw.split_once("\r\n\r\n").ok_or("metrics: no HTTP head")?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!(
            "metrics {addr}: {}",
            head.lines().next().unwrap_or("")
        ));
    }
    Ok(body.to_owned())
}

/// Sum of the samples of `name` whose labels contain every `filter` fragment.
pub fn value(text: &str, name: &str, filter: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
        })
        .filter(|l| filter.iter().all(|f| l.contains(f)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[derive(Debug)]
struct Sampled {
    at: Instant,
    broker: ProcSample,
    proxy: ProcSample,
    machine: MachineSample,
    broker_text: String,
    proxy_text: String,
    proxy_hdr: Vec<(String, Snapshot)>,
    broker_hdr: Vec<(String, Snapshot)>,
}

impl Deployment {
    fn sample(&self) -> Result<Sampled, String> {
        Ok(Sampled {
            at: Instant::now(),
            broker: ProcSample::read(self.broker.pid())?,
            proxy: ProcSample::read(self.proxy.pid())?,
            machine: MachineSample::read(),
            broker_text: scrape(self.broker_metrics, "/metrics")?,
            proxy_text: scrape(self.proxy_metrics, "/metrics")?,
            proxy_hdr: parse_hdr(&scrape(self.proxy_metrics, "/metrics/hdr")?),
            broker_hdr: parse_hdr(&scrape(self.broker_metrics, "/metrics/hdr")?),
        })
    }

    /// Runs one load generator with `spec` and measures the window.
    pub fn measure(
        &self,
        programs: &Programs,
        placement: &Placement,
        spec: &LoadSpec,
        run: usize,
        perf: bool,
    ) -> Result<Cell, String> {
        let (exe, lead) = &programs.loadgen;
        let mut args = lead.clone();
        args.push(serde_json::to_string(spec).map_err(|e| e.to_string())?);
        let mut lg = Proc::spawn(
            "loadgen",
            exe,
            &args,
            placement.loadgen.as_deref(),
            &self.dir.join("loadgen.log"),
        )?;
        let wait = Duration::from_millis(spec.warmup_ms) + START_TIMEOUT;
        lg.expect("window-start", wait)?;
        let perf_counts = if perf {
            Some((
                PerfCount::start(self.broker.pid())?,
                PerfCount::start(self.proxy.pid())?,
            ))
        } else {
            None
        };
        let lg_a = ProcSample::read(lg.pid())?;
        let a = self.sample()?;
        lg.expect(
            "window-end",
            Duration::from_millis(spec.window_ms) + START_TIMEOUT,
        )?;
        let lg_b = ProcSample::read(lg.pid())?;
        let b = self.sample()?;
        let perf_counts = match perf_counts {
            Some((pb, pp)) => {
                let wall = a.at.elapsed().as_secs_f64();
                Some((pb.stop()?.0, pp.stop()?.0, wall))
            }
            None => None,
        };
        let result: LoadResult =
            serde_json::from_str(&lg.expect("result ", Duration::from_secs(30))?)
                .map_err(|e| format!("load generator result: {e}"))?;
        lg.wait(Duration::from_secs(10))?;
        let window = Duration::from_millis(spec.window_ms).as_secs_f64();
        let n = result.done_in_window.max(1) as f64;
        let achieved = result.done_in_window as f64 / window;
        let tick_us = 1e6 / ticks_per_second();
        let figures = |pa: &ProcSample,
                       pb: &ProcSample,
                       ta: &str,
                       tb: &str,
                       perf: Option<u64>,
                       perf_wall: f64| {
            let d = pb.since(pa);
            let nic = |t: &str| value(t, "rdma_sim_nic_seconds_total", &[]);
            let nic_us = (nic(tb) - nic(ta)).max(0.0) * 1e6 / n;
            let cpu_us = (d.utime + d.stime) as f64 * tick_us / n;
            let (syscalls, source) = match perf {
                // perf ran from just after the window opened until just after it closed: per
                // message at the achieved rate over perf's own span.
                Some(sys) => (
                    sys as f64 / (perf_wall * achieved).max(1.0),
                    "perf stat raw_syscalls:sys_enter, all threads".to_owned(),
                ),
                None => (
                    d.io_syscalls as f64 / n,
                    "/proc/<pid>/io syscr+syscw (read/write family only)".to_owned(),
                ),
            };
            ProcFigures {
                cpu_us,
                user_us: d.utime as f64 * tick_us / n,
                sys_us: d.stime as f64 * tick_us / n,
                nic_us,
                host_us: (cpu_us - nic_us).max(0.0),
                wakeups: d.voluntary as f64 / n,
                preemptions: d.involuntary as f64 / n,
                syscalls,
                syscall_source: source,
            }
        };
        let (perf_b, perf_p, perf_wall) = match perf_counts {
            Some((b, p, w)) => (Some(b), Some(p), w),
            None => (None, None, 0.0),
        };
        let broker = figures(
            &a.broker,
            &b.broker,
            &a.broker_text,
            &b.broker_text,
            perf_b,
            perf_wall,
        );
        let proxy = figures(
            &a.proxy,
            &b.proxy,
            &a.proxy_text,
            &b.proxy_text,
            perf_p,
            perf_wall,
        );
        let m = b.machine.since(&a.machine);
        let series = |before: &[(String, Snapshot)], after: &[(String, Snapshot)], key: String| {
            let find = |v: &[(String, Snapshot)]| {
                v.iter()
                    .find(|(k, _)| *k == key)
                    .map(|(_, s)| s.clone())
                    .unwrap_or_default()
            };
            find(after).since(&find(before))
        };
        let (client, code) = match spec.mode.as_str() {
            "receive" => ("proxy-poll", "POP_MESSAGE"),
            _ => ("proxy", "SEND_MESSAGE_V2"),
        };
        let hop = series(
            &a.proxy_hdr,
            &b.proxy_hdr,
            format!("rdmq_remoting_call_seconds{{client=\"{client}\",code=\"{code}\"}}"),
        );
        let serve = series(
            &a.broker_hdr,
            &b.broker_hdr,
            format!("rdmq_remoting_serve_seconds{{server=\"broker\",code=\"{code}\"}}"),
        );
        let link = b
            .proxy_text
            .lines()
            .filter(|l| l.starts_with("rdmq_link_info{client=\"proxy\""))
            .filter_map(|l| {
                let get = |k: &str| {
                    let start = l.find(&format!("{k}=\""))? + k.len() + 2;
                    let end = l[start..].find('"')? + start;
                    Some(l[start..end].to_owned())
                };
                Some(format!("{}: {}", get("transport")?, get("reason")?))
            })
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
            .join("; ");
        let waits = value(
            &b.proxy_text,
            "rdmq_link_credit_waits_total",
            &["client=\"proxy\""],
        ) - value(
            &a.proxy_text,
            "rdmq_link_credit_waits_total",
            &["client=\"proxy\""],
        );
        let offered = if spec.mode == "saturate" {
            0.0
        } else {
            spec.rate
        };
        Ok(Cell {
            run,
            transport: self.transport.clone(),
            phase: spec.mode.clone(),
            offered,
            achieved,
            within_5pct: offered > 0.0 && (achieved - offered).abs() <= 0.05 * offered,
            messages: result.done_in_window,
            errors: result.errors,
            first_error: result.first_error.clone(),
            late_starts: result.late_starts + result.not_started,
            broker,
            proxy,
            loadgen_us: {
                let d = lg_b.since(&lg_a);
                (d.utime + d.stime) as f64 * tick_us / n
            },
            machine_us: m.busy as f64 * tick_us / n,
            softirq_us: m.softirq as f64 * tick_us / n,
            steal_us: m.steal as f64 * tick_us / n,
            hop_rt: Rt::of(&hop),
            broker_serve: Rt::of(&serve),
            client_rt: Rt::of(&Snapshot::parse(&result.latency).unwrap_or_default()),
            link,
            credit_waits_per_k: waits * 1000.0 / n,
        })
    }
}
