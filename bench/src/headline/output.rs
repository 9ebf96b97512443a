//! Reading a headline run: medians over runs with their spread, the three ratios beside the
//! reference deployment's, a Markdown table, JSON and two SVG charts.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use super::measure::Cell;
use super::{Results, label};

/// The reference deployment's changes, RDMA against TCP on the proxy→broker hop (hardware).
pub const REFERENCE: [(&str, f64); 3] = [
    ("broker CPU per message", -26.7),
    ("proxy CPU per message", -10.1),
    ("proxy→broker send RT", -23.8),
];

/// Median, lowest and highest of a figure over runs.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Spread {
    /// Median.
    pub median: f64,
    /// Lowest.
    pub min: f64,
    /// Highest.
    pub max: f64,
}

impl Spread {
    fn of(mut v: Vec<f64>) -> Spread {
        if v.is_empty() {
            return Spread::default();
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Spread {
            median,
            min: v[0],
            max: v[n - 1],
        }
    }

    fn show(&self) -> String {
        if (self.max - self.min).abs() < 1e-9 {
            format!("{:.1}", self.median)
        } else {
            format!("{:.1} ({:.1}–{:.1})", self.median, self.min, self.max)
        }
    }
}

/// One (phase, offered rate, transport) over all runs.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// `send` or `receive`.
    pub phase: String,
    /// Offered msg/s.
    pub offered: f64,
    /// Transport.
    pub transport: String,
    /// How to read it.
    pub label: &'static str,
    /// Runs.
    pub runs: usize,
    /// Every run within 5 % of the offered rate.
    pub all_within_5pct: bool,
    /// Achieved msg/s.
    pub achieved: Spread,
    /// Broker CPU per message, process total (µs).
    pub broker_cpu_us: Spread,
    /// Broker CPU per message without the simulated NIC (µs).
    pub broker_host_us: Spread,
    /// The simulated NIC's work in the broker process (µs per message).
    pub broker_nic_us: Spread,
    /// Proxy CPU per message (µs).
    pub proxy_cpu_us: Spread,
    /// Proxy CPU per message without the simulated NIC (µs).
    pub proxy_host_us: Spread,
    /// The simulated NIC's work in the proxy process (µs per message).
    pub proxy_nic_us: Spread,
    /// The load generator's CPU per message (µs).
    pub loadgen_us: Spread,
    /// Whole machine busy CPU per message (µs).
    pub machine_us: Spread,
    /// Of which soft interrupts (µs).
    pub softirq_us: Spread,
    /// Hypervisor steal (µs per message).
    pub steal_us: Spread,
    /// Hop RT mean (µs).
    pub hop_mean_us: Spread,
    /// Hop RT p50 (µs).
    pub hop_p50_us: Spread,
    /// Hop RT p99 (µs).
    pub hop_p99_us: Spread,
    /// Broker service time mean (µs).
    pub serve_mean_us: Spread,
    /// Client RT p50 (µs).
    pub client_p50_us: Spread,
    /// Client RT p99 (µs).
    pub client_p99_us: Spread,
    /// Broker wake-ups per message.
    pub broker_wakeups: Spread,
    /// Proxy wake-ups per message.
    pub proxy_wakeups: Spread,
    /// Broker syscalls per message.
    pub broker_syscalls: Spread,
    /// Proxy syscalls per message.
    pub proxy_syscalls: Spread,
    /// Errors over all runs.
    pub errors: u64,
}

/// Groups the cells into rows, in phase, rate, transport order.
pub fn rows(results: &Results) -> Vec<Row> {
    let mut keys: Vec<(String, f64, String)> = Vec::new();
    for c in &results.cells {
        let k = (c.phase.clone(), c.offered, c.transport.clone());
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    let t_order = |t: &str| {
        results
            .setup
            .transports
            .iter()
            .position(|x| x == t)
            .unwrap_or(99)
    };
    keys.sort_by(|a, b| {
        (a.0 != "send")
            .cmp(&(b.0 != "send"))
            .then(a.1.total_cmp(&b.1))
            .then(t_order(&a.2).cmp(&t_order(&b.2)))
    });
    keys.into_iter()
        .map(|(phase, offered, transport)| {
            let cs: Vec<&Cell> = results
                .cells
                .iter()
                .filter(|c| c.phase == phase && c.offered == offered && c.transport == transport)
                .collect();
            let s = |f: &dyn Fn(&Cell) -> f64| Spread::of(cs.iter().map(|c| f(c)).collect());
            Row {
                label: label(&transport),
                runs: cs.len(),
                all_within_5pct: cs.iter().all(|c| c.within_5pct),
                achieved: s(&|c| c.achieved),
                broker_cpu_us: s(&|c| c.broker.cpu_us),
                broker_host_us: s(&|c| c.broker.host_us),
                broker_nic_us: s(&|c| c.broker.nic_us),
                proxy_cpu_us: s(&|c| c.proxy.cpu_us),
                proxy_host_us: s(&|c| c.proxy.host_us),
                proxy_nic_us: s(&|c| c.proxy.nic_us),
                loadgen_us: s(&|c| c.loadgen_us),
                machine_us: s(&|c| c.machine_us),
                softirq_us: s(&|c| c.softirq_us),
                steal_us: s(&|c| c.steal_us),
                hop_mean_us: s(&|c| c.hop_rt.mean_us),
                hop_p50_us: s(&|c| c.hop_rt.p50_us),
                hop_p99_us: s(&|c| c.hop_rt.p99_us),
                serve_mean_us: s(&|c| c.broker_serve.mean_us),
                client_p50_us: s(&|c| c.client_rt.p50_us),
                client_p99_us: s(&|c| c.client_rt.p99_us),
                broker_wakeups: s(&|c| c.broker.wakeups),
                proxy_wakeups: s(&|c| c.proxy.wakeups),
                broker_syscalls: s(&|c| c.broker.syscalls),
                proxy_syscalls: s(&|c| c.proxy.syscalls),
                errors: cs.iter().map(|c| c.errors).sum(),
                phase,
                offered,
                transport,
            }
        })
        .collect()
}

/// One of the three headline comparisons.
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    /// What is compared.
    pub what: &'static str,
    /// TCP median.
    pub tcp: f64,
    /// The other transport's median.
    pub other: f64,
    /// Change in percent (`(other / tcp - 1) × 100`).
    pub change_pct: f64,
    /// The reference deployment's change (hardware RDMA).
    pub reference_pct: f64,
}

/// The headline: `transport` against TCP at the send point `offered`.
#[derive(Debug, Clone, Serialize)]
pub struct Headline {
    /// Compared transport.
    pub transport: String,
    /// Its label.
    pub label: &'static str,
    /// Offered msg/s of the point.
    pub offered: f64,
    /// Broker CPU, proxy CPU, hop RT.
    pub ratios: Vec<Ratio>,
    /// The same CPU ratios with the simulated NIC's work charged to the host.
    pub with_nic: Vec<Ratio>,
}

/// The headline at the 1 k msg/s send point (the lowest one when there is none), per non-TCP
/// transport.
pub fn headlines(rows: &[Row]) -> Vec<Headline> {
    let sends: Vec<&Row> = rows.iter().filter(|r| r.phase == "send").collect();
    let offered = if sends.iter().any(|r| r.offered == 1000.0) {
        1000.0
    } else {
        sends
            .iter()
            .map(|r| r.offered)
            .fold(f64::INFINITY, f64::min)
    };
    let at = |t: &str| {
        sends
            .iter()
            .find(|r| r.offered == offered && r.transport == t)
            .copied()
    };
    let Some(tcp) = at("tcp") else {
        return Vec::new();
    };
    let ratio = |what, a: f64, b: f64, reference_pct| Ratio {
        what,
        tcp: a,
        other: b,
        change_pct: if a > 0.0 {
            (b / a - 1.0) * 100.0
        } else {
            f64::NAN
        },
        reference_pct,
    };
    sends
        .iter()
        .filter(|r| r.offered == offered && r.transport != "tcp")
        .map(|o| Headline {
            transport: o.transport.clone(),
            label: o.label,
            offered,
            ratios: vec![
                ratio(
                    REFERENCE[0].0,
                    tcp.broker_host_us.median,
                    o.broker_host_us.median,
                    REFERENCE[0].1,
                ),
                ratio(
                    REFERENCE[1].0,
                    tcp.proxy_host_us.median,
                    o.proxy_host_us.median,
                    REFERENCE[1].1,
                ),
                ratio(
                    REFERENCE[2].0,
                    tcp.hop_mean_us.median,
                    o.hop_mean_us.median,
                    REFERENCE[2].1,
                ),
                ratio(
                    "proxy→broker send RT p50",
                    tcp.hop_p50_us.median,
                    o.hop_p50_us.median,
                    REFERENCE[2].1,
                ),
            ],
            with_nic: vec![
                ratio(
                    REFERENCE[0].0,
                    tcp.broker_cpu_us.median,
                    o.broker_cpu_us.median,
                    REFERENCE[0].1,
                ),
                ratio(
                    REFERENCE[1].0,
                    tcp.proxy_cpu_us.median,
                    o.proxy_cpu_us.median,
                    REFERENCE[1].1,
                ),
            ],
        })
        .collect()
}

/// The headline block printed first.
pub fn headline_text(results: &Results, heads: &[Headline]) -> String {
    let mut s = String::new();
    let runs = results.setup.runs;
    for h in heads {
        let _ = writeln!(
            s,
            "headline: {} vs tcp, SendMessage {} B at {:.0} msg/s offered, medians of {runs} run(s) [{}]",
            h.transport, results.setup.size, h.offered, h.label
        );
        let _ = writeln!(
            s,
            "  {:<34} {:>10} {:>10} {:>9}   reference (hardware RDMA vs TCP)",
            "", "tcp", h.transport, "change"
        );
        let units = ["µs host", "µs host", "µs mean", "µs median"];
        for (r, u) in h.ratios.iter().zip(units) {
            let _ = writeln!(
                s,
                "  {:<34} {:>10.1} {:>10.1} {:>+8.1} %   {:+.1} %   ({u})",
                r.what, r.tcp, r.other, r.change_pct, r.reference_pct
            );
        }
        for r in &h.with_nic {
            let _ = writeln!(
                s,
                "  {:<34} {:>10.1} {:>10.1} {:>+8.1} %   (simulated NIC's work charged to the host)",
                format!("{} incl. NIC", r.what),
                r.tcp,
                r.other,
                r.change_pct
            );
        }
    }
    s
}

/// The Markdown report.
pub fn markdown(results: &Results, rows: &[Row], heads: &[Headline]) -> String {
    let st = &results.setup;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# rdmq-bench headline{}\n",
        if st.smoke {
            " (smoke run: checks the machinery, not a result)"
        } else {
            ""
        }
    );
    let _ = writeln!(s, "- command: `{}`", st.command);
    let _ = writeln!(s, "- {}", st.machine);
    let _ = writeln!(s, "- placement: {}", st.placement);
    let _ = writeln!(s, "- programs: {}", st.programs);
    let _ = writeln!(
        s,
        "- load: gRPC SendMessage of {} B, open loop at fixed rates (latency from each message's due time), {:.1} s warm-up + {:.1} s window per point; {} run(s), transports interleaved; then ReceiveMessage (batches of 16) + AckMessage at a fixed rate",
        st.size, st.warmup_s, st.window_s, st.runs
    );
    let _ = writeln!(
        s,
        "- TCP saturation: {:.0} msg/s closed loop (64 in flight), {:.0} msg/s sustained open loop (the base of the fractions)",
        results.saturation.achieved, results.sustained
    );
    let _ = writeln!(s, "- syscalls counted by: {}", st.syscalls);
    let _ = writeln!(s, "- measuring took {:.0} s\n", results.measuring_seconds);
    if !heads.is_empty() {
        let _ = writeln!(
            s,
            "## Headline\n\n```\n{}```\n",
            headline_text(results, heads)
        );
    }
    let _ = writeln!(
        s,
        "## All points (median, with min–max over runs)\n\nCPU figures are µs per message from `/proc/<pid>/stat` (user+sys); *host* excludes the simulated NIC's work, which is the *NIC* column. Machine = all CPUs' busy time per message from `/proc/stat` (user+nice+system+irq+softirq: includes the load generator, `perf`, the runner and kernel work charged to no process); steal = time the hypervisor took from the vCPUs (not in machine). RT in µs: hop = proxy→broker inside the proxy's remoting client (SEND_MESSAGE_V2; POP_MESSAGE for receive), broker serve = the broker's own arrival-to-response time for that request; client = load generator from due time.\n"
    );
    let _ = writeln!(
        s,
        "| phase | offered/s | transport | achieved/s | ±5 % | broker host | broker NIC | proxy host | proxy NIC | loadgen | machine | softirq | steal | hop mean | hop p50 | hop p99 | broker serve mean | client p50 | client p99 | wake-ups/msg b / p | syscalls/msg b / p | errors | label |"
    );
    let _ = writeln!(
        s,
        "|---|---:|---|---:|:---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    );
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {:.0} | {} | {} | {} | {} | {:.1} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} / {:.2} | {:.1} / {:.1} | {} | {} |",
            r.phase,
            r.offered,
            r.transport,
            r.achieved.show(),
            if r.all_within_5pct { "yes" } else { "**no**" },
            r.broker_host_us.show(),
            r.broker_nic_us.median,
            r.proxy_host_us.show(),
            r.proxy_nic_us.median,
            r.loadgen_us.median,
            r.machine_us.median,
            r.softirq_us.median,
            r.steal_us.median,
            r.hop_mean_us.show(),
            r.hop_p50_us.median,
            r.hop_p99_us.median,
            r.serve_mean_us.median,
            r.client_p50_us.median,
            r.client_p99_us.median,
            r.broker_wakeups.median,
            r.proxy_wakeups.median,
            r.broker_syscalls.median,
            r.proxy_syscalls.median,
            r.errors,
            r.label,
        );
    }
    s
}

/// The rate check, one line.
pub fn rate_check(rows: &[Row]) -> String {
    let bad: Vec<String> = rows
        .iter()
        .filter(|r| !r.all_within_5pct)
        .map(|r| {
            format!(
                "{} {} {:.0}/s (achieved {:.0}/s)",
                r.transport, r.phase, r.offered, r.achieved.median
            )
        })
        .collect();
    if bad.is_empty() {
        format!(
            "rate check: every point achieved its offered rate within 5 % ({} points × runs)",
            rows.len()
        )
    } else {
        format!(
            "rate check: NOT within 5 % at {} — CPU per message there is not at equal load",
            bad.join(", ")
        )
    }
}

struct Series {
    name: String,
    color: &'static str,
    dashed: bool,
    points: Vec<(f64, f64)>,
}

fn line_chart(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> String {
    let (w, h, l, r, t, b) = (760.0, 440.0, 70.0, 210.0, 40.0, 50.0);
    let pts = series.iter().flat_map(|s| s.points.iter());
    let x_max = pts.clone().map(|p| p.0).fold(0.0, f64::max).max(1.0) * 1.05;
    let y_max = pts.map(|p| p.1).fold(0.0, f64::max).max(1e-6) * 1.1;
    let px = |x: f64| l + x / x_max * (w - l - r);
    let py = |y: f64| h - b - y / y_max * (h - t - b);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{l}\" y=\"22\" font-size=\"15\">{}</text>\n",
        xml(title)
    );
    for i in 0..=5 {
        let (xv, yv) = (x_max * i as f64 / 5.0, y_max * i as f64 / 5.0);
        let _ = writeln!(
            s,
            "<line x1=\"{l}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{yv:.0}</text><text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">{xv:.0}</text>",
            w - r,
            l - 6.0,
            py(yv) + 4.0,
            h - b + 18.0,
            y = py(yv),
            x = px(xv),
        );
    }
    let _ = writeln!(
        s,
        "<line x1=\"{l}\" x2=\"{l}\" y1=\"{t}\" y2=\"{}\" stroke=\"black\"/><line x1=\"{l}\" x2=\"{}\" y1=\"{}\" y2=\"{}\" stroke=\"black\"/>\n<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n<text transform=\"translate(18 {:.1}) rotate(-90)\" text-anchor=\"middle\">{}</text>",
        h - b,
        w - r,
        h - b,
        h - b,
        (l + w - r) / 2.0,
        h - 10.0,
        xml(x_label),
        (t + h - b) / 2.0,
        xml(y_label)
    );
    for (i, se) in series.iter().enumerate() {
        let dash = if se.dashed {
            " stroke-dasharray=\"6 4\""
        } else {
            ""
        };
        let path: Vec<String> = se
            .points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let _ = writeln!(
            s,
            "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\"{dash} points=\"{}\"/>",
            se.color,
            path.join(" ")
        );
        for &(x, y) in &se.points {
            let _ = writeln!(
                s,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{}\"/>",
                px(x),
                py(y),
                se.color
            );
        }
        let ly = t + 10.0 + i as f64 * 20.0;
        let _ = writeln!(
            s,
            "<line x1=\"{}\" x2=\"{}\" y1=\"{ly}\" y2=\"{ly}\" stroke=\"{}\" stroke-width=\"2\"{dash}/><text x=\"{}\" y=\"{}\">{}</text>",
            w - r + 10.0,
            w - r + 40.0,
            se.color,
            w - r + 46.0,
            ly + 4.0,
            xml(&se.name)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

const COLORS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];

/// CPU per message against offered load, and hop RT percentiles against offered load.
pub fn charts(rows: &[Row], transports: &[String]) -> (String, String) {
    let sends: Vec<&Row> = rows.iter().filter(|r| r.phase == "send").collect();
    let mut cpu = Vec::new();
    let mut rt = Vec::new();
    for (i, t) in transports.iter().enumerate() {
        let mine: Vec<&&Row> = sends.iter().filter(|r| &r.transport == t).collect();
        let color = COLORS[i % COLORS.len()];
        let pts = |f: &dyn Fn(&Row) -> f64| mine.iter().map(|r| (r.offered, f(r))).collect();
        cpu.push(Series {
            name: format!("broker, {t}"),
            color,
            dashed: false,
            points: pts(&|r| r.broker_host_us.median),
        });
        cpu.push(Series {
            name: format!("proxy, {t}"),
            color,
            dashed: true,
            points: pts(&|r| r.proxy_host_us.median),
        });
        rt.push(Series {
            name: format!("hop p50, {t}"),
            color,
            dashed: false,
            points: pts(&|r| r.hop_p50_us.median),
        });
        rt.push(Series {
            name: format!("hop p99, {t}"),
            color,
            dashed: true,
            points: pts(&|r| r.hop_p99_us.median),
        });
    }
    let labels = transports
        .iter()
        .map(|t| format!("{t}: {}", label(t)))
        .collect::<Vec<_>>()
        .join("; ");
    (
        line_chart(
            &format!("Host CPU per message vs offered load ({labels})"),
            "offered SendMessage rate (msg/s)",
            "CPU µs per message (simulated NIC excluded)",
            &cpu,
        ),
        line_chart(
            &format!("Proxy→broker send RT vs offered load ({labels})"),
            "offered SendMessage rate (msg/s)",
            "round trip µs",
            &rt,
        ),
    )
}

/// Writes `headline.json`, `headline.md`, `cpu.svg` and `rt.svg` under `dir`.
pub fn write_all(dir: &Path, results: &Results) -> Result<String, String> {
    let rows = rows(results);
    let heads = headlines(&rows);
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let json = serde_json::json!({
        "headline": heads,
        "rows": rows,
        "results": results,
        "reference": REFERENCE.iter().map(|(w, v)| serde_json::json!({"what": w, "change_pct": v})).collect::<Vec<_>>(),
    });
    let write = |name: &str, text: &str| {
        std::fs::write(dir.join(name), text)
            .map_err(|e| format!("{}: {e}", dir.join(name).display()))
    };
    write(
        "headline.json",
        &serde_json::to_string_pretty(&json).map_err(|e| e.to_string())?,
    )?;
    let md = markdown(results, &rows, &heads);
    write("headline.md", &md)?;
    let (cpu, rt) = charts(&rows, &results.setup.transports);
    write("cpu.svg", &cpu)?;
    write("rt.svg", &rt)?;
    Ok(format!("{md}\n{}\n", rate_check(&rows)))
}
