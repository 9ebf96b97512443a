//! Process metrics: a registry of counters, gauges and [`Histogram`]s, rendered in the
//! Prometheus text format by a small HTTP endpoint ([`http::serve`]).
//!
//! Hot paths touch only atomics they were handed at registration; rendering locks the registry.
//! Facts that live elsewhere (a link's backend, the simulated NIC's work) are read at scrape time
//! by collectors. `GET /metrics` is the Prometheus exposition (histograms as summaries);
//! `GET /metrics/hdr` gives every histogram's buckets ([`Snapshot::encode`]) so a benchmark can
//! take exact-to-bucket percentiles of one window.

pub mod histogram;
pub mod http;

use crate::sync::Plain;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};

pub use histogram::{Histogram, Snapshot};

/// Label pairs of one series.
pub type Labels = Vec<(&'static str, String)>;

/// What a series is, for the `# TYPE` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
}

/// One value produced by a collector at scrape time.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Metric name.
    pub name: &'static str,
    /// Help text.
    pub help: &'static str,
    /// Counter or gauge.
    pub kind: Kind,
    /// Labels.
    pub labels: Labels,
    /// Value.
    pub value: f64,
}

/// Produces samples at scrape time; returns `false` once what it reads is gone (it is then
/// dropped from the registry).
pub type Collector = Box<dyn Fn(&mut Vec<Sample>) -> bool + Send + Sync>;

enum Value {
    Counter(Arc<AtomicU64>),
    Histogram(Arc<Histogram>),
}

struct Series {
    name: &'static str,
    help: &'static str,
    labels: Labels,
    value: Value,
}

/// The metrics of one process.
#[derive(Default)]
pub struct Registry {
    series: Mutex<Vec<Series>>,
    collectors: Mutex<Vec<Collector>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

/// The process-wide registry.
pub fn global() -> &'static Registry {
    static GLOBAL: OnceLock<Registry> = OnceLock::new();
    GLOBAL.get_or_init(Registry::default)
}

impl Registry {
    fn lock_series(&self) -> std::sync::MutexGuard<'_, Vec<Series>> {
        self.series.lock().plain()
    }

    /// The counter `name{labels}`, created on first use (the same one on later calls).
    pub fn counter(
        &self,
        name: &'static str,
        help: &'static str,
        labels: Labels,
    ) -> Arc<AtomicU64> {
        let mut series = self.lock_series();
        for s in series.iter() {
            if let (true, Value::Counter(c)) = (s.name == name && s.labels == labels, &s.value) {
                return c.clone();
            }
        }
        let c = Arc::new(AtomicU64::new(0));
        series.push(Series {
            name,
            help,
            labels,
            value: Value::Counter(c.clone()),
        });
        c
    }

    /// The histogram `name{labels}` of durations (rendered in seconds), created on first use.
    pub fn histogram(
        &self,
        name: &'static str,
        help: &'static str,
        labels: Labels,
    ) -> Arc<Histogram> {
        let mut series = self.lock_series();
        for s in series.iter() {
            if let (true, Value::Histogram(h)) = (s.name == name && s.labels == labels, &s.value) {
                return h.clone();
            }
        }
        let h = Arc::new(Histogram::default());
        series.push(Series {
            name,
            help,
            labels,
            value: Value::Histogram(h.clone()),
        });
        h
    }

    /// Adds a collector run at every scrape.
    pub fn collect(&self, collector: Collector) {
        self.collectors.lock().plain().push(collector);
    }

    fn collected(&self) -> Vec<Sample> {
        let mut out = Vec::new();
        self.collectors.lock().plain().retain(|c| c(&mut out));
        out
    }

    /// The Prometheus text exposition (version 0.0.4) of everything registered.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut lines: Vec<(&'static str, &'static str, &'static str, String)> = Vec::new();
        for s in self.lock_series().iter() {
            match &s.value {
                Value::Counter(c) => lines.push((
                    s.name,
                    s.help,
                    "counter",
                    format!(
                        "{}{} {}\n",
                        s.name,
                        labels(&s.labels, None),
                        c.load(Relaxed)
                    ),
                )),
                Value::Histogram(h) => {
                    let snap = h.snapshot();
                    let mut text = String::new();
                    for q in ["0.5", "0.9", "0.99", "0.999"] {
                        let v = snap.quantile_ns(q.parse().unwrap_or(0.5)) as f64 / 1e9;
                        let _ = writeln!(text, "{}{} {v}", s.name, labels(&s.labels, Some(q)));
                    }
                    let l = labels(&s.labels, None);
                    let _ = writeln!(text, "{}_sum{l} {}", s.name, snap.sum_ns() as f64 / 1e9);
                    let _ = writeln!(text, "{}_count{l} {}", s.name, snap.count());
                    lines.push((s.name, s.help, "summary", text));
                }
            }
        }
        for s in self.collected() {
            let kind = match s.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
            };
            lines.push((
                s.name,
                s.help,
                kind,
                format!("{}{} {}\n", s.name, labels(&s.labels, None), s.value),
            ));
        }
        // Group each name's series under one HELP/TYPE header.
        lines.sort_by(|a, b| a.0.cmp(b.0));
        let mut last = "";
        for (name, help, kind, text) in lines {
            if name != last {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
                last = name;
            }
            out.push_str(&text);
        }
        out
    }

    /// Every histogram as `name{labels} <snapshot>` lines (see [`Snapshot::encode`]).
    pub fn render_hdr(&self) -> String {
        let mut out = String::new();
        for s in self.lock_series().iter() {
            if let Value::Histogram(h) = &s.value {
                let _ = writeln!(
                    out,
                    "{}{} {}",
                    s.name,
                    labels(&s.labels, None),
                    h.snapshot().encode()
                );
            }
        }
        out
    }
}

/// `{a="x",b="y"}` with values escaped, plus a `quantile` label when given.
fn labels(pairs: &[(&'static str, String)], quantile: Option<&str>) -> String {
    if pairs.is_empty() && quantile.is_none() {
        return String::new();
    }
    let mut s = String::from("{");
    let mut first = true;
    let all = pairs
        .iter()
        .map(|(k, v)| (*k, v.as_str()))
        .chain(quantile.map(|q| ("quantile", q)));
    for (k, v) in all {
        if !first {
            s.push(',');
        }
        first = false;
        let escaped = v
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n");
        let _ = write!(s, "{k}=\"{escaped}\"");
    }
    s.push('}');
    s
}

/// Parses [`Registry::render_hdr`]'s output: `(series, snapshot)` per line.
pub fn parse_hdr(text: &str) -> Vec<(String, Snapshot)> {
    text.lines()
        .filter_map(|l| {
            // The series name ends at the first space outside a quoted label value.
            let mut quoted = false;
            let mut escaped = false;
            let end = l.char_indices().find(|&(_, c)| {
                let hit = c == ' ' && !quoted;
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == '"' {
                    quoted = !quoted;
                }
                hit
            })?;
            Some((l[..end.0].to_owned(), Snapshot::parse(&l[end.0 + 1..])?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text_and_hdr_round_trips() {
        let r = Registry::default();
        let c = r.counter("t_calls_total", "calls", vec![("code", "A\"b".into())]);
        c.fetch_add(3, Relaxed);
        assert!(Arc::ptr_eq(
            &c,
            &r.counter("t_calls_total", "calls", vec![("code", "A\"b".into())])
        ));
        let h = r.histogram("t_rt_seconds", "rt", vec![("code", "SEND".into())]);
        for _ in 0..4 {
            h.record_ns(2_000_000);
        }
        let alive = Arc::new(());
        let weak = Arc::downgrade(&alive);
        r.collect(Box::new(move |out| {
            if weak.upgrade().is_none() {
                return false;
            }
            out.push(Sample {
                name: "t_links",
                help: "links",
                kind: Kind::Gauge,
                labels: vec![("transport", "tcp".into())],
                value: 1.0,
            });
            true
        }));
        let text = r.render();
        assert!(text.contains("# TYPE t_calls_total counter\nt_calls_total{code=\"A\\\"b\"} 3\n"));
        assert!(
            text.contains("t_rt_seconds_count{code=\"SEND\"} 4\n"),
            "{text}"
        );
        assert!(text.contains("t_rt_seconds{code=\"SEND\",quantile=\"0.99\"} 0.00200"));
        assert!(text.contains("# TYPE t_links gauge\nt_links{transport=\"tcp\"} 1\n"));
        drop(alive);
        assert!(!r.render().contains("t_links"), "dead collector dropped");
        let parsed = parse_hdr(&r.render_hdr());
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].0, "t_rt_seconds{code=\"SEND\"}");
        assert_eq!(parsed[0].1, h.snapshot());
    }
}
