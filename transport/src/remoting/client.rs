//! The remoting client: a small pool of connections per endpoint, dialled lazily, re-dialled
//! with exponential backoff after failures.

use crate::sync::Plain;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::time::Instant;

use crate::codec::RemotingCommand;
use crate::connection::{Connection, ConnectionConfig};
use crate::endpoint::Endpoint;
use crate::error::TransportError;
use crate::link::{Link, Transport};
use crate::metrics::{self, Histogram, Kind, Sample};

/// Client tuning.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Connections per endpoint; calls are spread round-robin.
    pub connections_per_endpoint: usize,
    /// Timeout of [`Client::invoke`] when the caller gives none.
    pub call_timeout: Duration,
    /// First wait after a failed dial.
    pub backoff_initial: Duration,
    /// Longest wait between dials.
    pub backoff_max: Duration,
    /// Per-connection settings.
    pub connection: ConnectionConfig,
    /// Where call round-trip times are recorded, if anywhere; a client with metrics also
    /// reports its links (backend, fallback reason, credit waits) to the global registry.
    pub metrics: Option<Arc<CallMetrics>>,
    /// A pooled connection unused this long, with no call in flight, is closed and dialled
    /// afresh instead of reused: servers close idle connections (rdmq and RocketMQ brokers
    /// after 120 s), and a call sent just as the server closes would be lost. `None` reuses
    /// connections however long they were idle.
    pub idle_evict: Option<Duration>,
}

/// Round-trip times of a client's calls by request code, in the global metrics registry:
/// `rdmq_remoting_call_seconds{client,code}` (time from `invoke` to its response, connection
/// lookup included) and `rdmq_remoting_call_failures_total{client}` (calls with no response).
#[derive(Debug)]
pub struct CallMetrics {
    client: &'static str,
    by_code: Vec<(i32, Arc<Histogram>)>,
    other: Arc<Histogram>,
    failed: Arc<AtomicU64>,
}

impl CallMetrics {
    /// Registers a histogram for each named request code and one for all others, labelled
    /// `client`.
    pub fn register(client: &'static str, codes: &[(i32, &'static str)]) -> Arc<Self> {
        Self::build(
            (
                "rdmq_remoting_call_seconds",
                "Round-trip time of remoting calls, by request code",
            ),
            (
                "rdmq_remoting_call_failures_total",
                "Remoting calls that got no response (timeout, link failure)",
            ),
            ("client", client),
            codes,
        )
    }

    /// The server side: `rdmq_remoting_serve_seconds{server,code}`, from a request's arrival
    /// to its response being handed to the link (queueing for a handler permit included).
    pub fn server(server: &'static str, codes: &[(i32, &'static str)]) -> Arc<Self> {
        Self::build(
            (
                "rdmq_remoting_serve_seconds",
                "Time from a request's arrival to its response, by request code",
            ),
            (
                "rdmq_remoting_serve_failures_total",
                "Responses that could not be sent (link gone)",
            ),
            ("server", server),
            codes,
        )
    }

    fn build(
        (metric, help): (&'static str, &'static str),
        (fail_metric, fail_help): (&'static str, &'static str),
        (key, who): (&'static str, &'static str),
        codes: &[(i32, &'static str)],
    ) -> Arc<Self> {
        let reg = metrics::global();
        let hist = |code: &str| {
            reg.histogram(metric, help, vec![(key, who.into()), ("code", code.into())])
        };
        Arc::new(Self {
            client: who,
            by_code: codes.iter().map(|&(c, name)| (c, hist(name))).collect(),
            other: hist("other"),
            failed: reg.counter(fail_metric, fail_help, vec![(key, who.into())]),
        })
    }

    /// Records one call of request `code` that took `elapsed`.
    #[inline]
    pub fn record(&self, code: i32, elapsed: Duration) {
        let h = self
            .by_code
            .iter()
            .find(|(c, _)| *c == code)
            .map_or(&self.other, |(_, h)| h);
        h.record(elapsed);
    }

    /// Counts one call that got no response.
    pub fn record_failure(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            connections_per_endpoint: 1,
            call_timeout: Duration::from_secs(3),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            connection: ConnectionConfig::default(),
            metrics: None,
            idle_evict: Some(Duration::from_secs(60)),
        }
    }
}

type TxOf<T> = <<T as Transport>::Link as Link>::Tx;

/// A remoting client over the transport `T`. Cheap to clone.
#[derive(Debug)]
pub struct Client<T: Transport> {
    inner: Arc<Inner<T>>,
}

impl<T: Transport> Clone for Client<T> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

#[derive(Debug)]
struct Inner<T: Transport> {
    transport: T,
    config: ClientConfig,
    pools: Mutex<HashMap<Endpoint, Arc<Pool<T>>>>,
}

#[derive(Debug)]
struct Pool<T: Transport> {
    slots: Vec<Slot<T>>,
    next: AtomicUsize,
}

#[derive(Debug)]
struct Slot<T: Transport> {
    conn: Mutex<Option<Connection<TxOf<T>>>>,
    dial: tokio::sync::Mutex<Backoff>,
    /// When the connection was last handed out.
    last_used: Mutex<Instant>,
}

#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
    next_attempt: Option<Instant>,
    last_error: String,
}

impl<T: Transport> Slot<T> {
    fn live(&self) -> Option<Connection<TxOf<T>>> {
        let guard = self.conn.lock().plain();
        guard.as_ref().filter(|c| c.is_open()).cloned()
    }

    /// The live connection for a call now, unless it sat idle past `evict` (then it is closed
    /// in the background and the caller dials).
    fn take_for_call(&self, evict: Option<Duration>) -> Option<Connection<TxOf<T>>> {
        let now = Instant::now();
        let idle = now - std::mem::replace(&mut *self.last_used.lock().plain(), now);
        let conn = self.live()?;
        if evict.is_some_and(|e| idle >= e) && conn.pending_calls() == 0 {
            let mut guard = self.conn.lock().plain();
            if guard.as_ref().is_some_and(|c| c.same(&conn)) {
                *guard = None;
            }
            drop(guard);
            tracing::debug!(idle = ?idle, peer = %conn.info().peer, "idle pooled connection replaced");
            tokio::spawn(async move { conn.close(Duration::from_secs(1)).await });
            return None;
        }
        Some(conn)
    }
}

impl<T: Transport> Client<T> {
    /// A client dialling with `transport`.
    pub fn new(transport: T, config: ClientConfig) -> Self {
        let inner = Arc::new(Inner {
            transport,
            config,
            pools: Mutex::new(HashMap::new()),
        });
        if let Some(m) = &inner.config.metrics {
            let client = m.client;
            let weak = Arc::downgrade(&inner);
            metrics::global().collect(Box::new(move |out| collect_links(&weak, client, out)));
        }
        Self { inner }
    }

    /// The tuning.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    fn pool(&self, endpoint: &Endpoint) -> Arc<Pool<T>> {
        let mut pools = self.inner.pools.lock().plain();
        pools
            .entry(endpoint.clone())
            .or_insert_with(|| {
                let n = self.inner.config.connections_per_endpoint.max(1);
                Arc::new(Pool {
                    slots: (0..n)
                        .map(|_| Slot {
                            conn: Mutex::new(None),
                            dial: tokio::sync::Mutex::new(Backoff::default()),
                            last_used: Mutex::new(Instant::now()),
                        })
                        .collect(),
                    next: AtomicUsize::new(0),
                })
            })
            .clone()
    }

    /// A live connection to `endpoint`, dialling if needed. While a recent dial failure's
    /// backoff runs, fails fast with [`TransportError::Unavailable`].
    pub async fn connection(
        &self,
        endpoint: &Endpoint,
    ) -> Result<Connection<TxOf<T>>, TransportError> {
        let pool = self.pool(endpoint);
        let i = pool.next.fetch_add(1, Ordering::Relaxed) % pool.slots.len();
        let slot = &pool.slots[i];
        if let Some(c) = slot.take_for_call(self.inner.config.idle_evict) {
            return Ok(c);
        }
        let mut backoff = slot.dial.lock().await;
        if let Some(c) = slot.live() {
            return Ok(c);
        }
        let now = Instant::now();
        if let Some(at) = backoff.next_attempt.filter(|at| *at > now) {
            return Err(TransportError::Unavailable {
                endpoint: endpoint.to_string(),
                last_error: backoff.last_error.clone(),
                retry_in: at - now,
            });
        }
        match self.inner.transport.connect(endpoint).await {
            Ok(link) => {
                let (conn, incoming) = Connection::new(link, self.inner.config.connection.clone());
                // Requests from the broker side are not served by this client.
                drop(incoming);
                let info = conn.info();
                tracing::info!(
                    endpoint = %endpoint,
                    transport = info.transport,
                    reason = %info.reason,
                    local = %info.local,
                    "connected"
                );
                *backoff = Backoff::default();
                *slot.conn.lock().plain() = Some(conn.clone());
                Ok(conn)
            }
            Err(e) => {
                let cfg = &self.inner.config;
                let delay = cfg
                    .backoff_initial
                    .saturating_mul(1u32 << backoff.failures.min(16))
                    .min(cfg.backoff_max);
                backoff.failures += 1;
                backoff.next_attempt = Some(now + delay);
                backoff.last_error = e.to_string();
                tracing::warn!(endpoint = %endpoint, error = %e, retry_in = ?delay, "connect failed");
                Err(e)
            }
        }
    }

    /// Sends `request` to `endpoint` and waits for the response (`timeout` or the configured
    /// call timeout).
    pub async fn invoke(
        &self,
        endpoint: &Endpoint,
        request: RemotingCommand,
        timeout: Option<Duration>,
    ) -> Result<RemotingCommand, TransportError> {
        let timeout = timeout.unwrap_or(self.inner.config.call_timeout);
        let started = std::time::Instant::now();
        let code = request.code;
        let result = async {
            let conn = tokio::time::timeout(timeout, self.connection(endpoint))
                .await
                .map_err(|_| TransportError::Timeout(timeout))??;
            conn.call(request, timeout).await
        }
        .await;
        if let Some(m) = &self.inner.config.metrics {
            match &result {
                Ok(_) => m.record(code, started.elapsed()),
                Err(_) => m.record_failure(),
            }
        }
        result
    }

    /// Sends a one-way request to `endpoint`.
    pub async fn invoke_oneway(
        &self,
        endpoint: &Endpoint,
        request: RemotingCommand,
    ) -> Result<(), TransportError> {
        self.connection(endpoint).await?.oneway(request).await
    }

    /// Closes every connection gracefully.
    pub async fn close(&self, grace: Duration) {
        let pools: Vec<_> = {
            let mut pools = self.inner.pools.lock().plain();
            pools.drain().map(|(_, p)| p).collect()
        };
        for pool in pools {
            for slot in &pool.slots {
                let conn = slot.conn.lock().plain().take();
                if let Some(c) = conn {
                    c.close(grace).await;
                }
            }
        }
    }
}

/// Scrape-time facts of a client's live links; `false` once the client is gone.
fn collect_links<T: Transport>(
    inner: &Weak<Inner<T>>,
    client: &'static str,
    out: &mut Vec<Sample>,
) -> bool {
    let Some(inner) = inner.upgrade() else {
        return false;
    };
    let pools: Vec<(Endpoint, Arc<Pool<T>>)> = inner
        .pools
        .lock()
        .plain()
        .iter()
        .map(|(e, p)| (e.clone(), p.clone()))
        .collect();
    for (endpoint, pool) in pools {
        for (i, slot) in pool.slots.iter().enumerate() {
            let Some(conn) = slot.live() else { continue };
            let info = conn.info();
            let c = info.counters.snapshot();
            let base = || {
                vec![
                    ("client", client.to_owned()),
                    ("endpoint", endpoint.to_string()),
                    ("slot", i.to_string()),
                ]
            };
            let mut labels = base();
            labels.push(("transport", info.transport.to_owned()));
            labels.push(("reason", info.reason.clone()));
            out.push(Sample {
                name: "rdmq_link_info",
                help: "A live link: its backend and why that backend carries it",
                kind: Kind::Gauge,
                labels,
                value: 1.0,
            });
            for (name, help, v) in [
                (
                    "rdmq_link_frames_sent_total",
                    "Frames sent on the link",
                    c.frames_sent,
                ),
                (
                    "rdmq_link_frames_received_total",
                    "Frames received on the link",
                    c.frames_received,
                ),
                (
                    "rdmq_link_send_calls_total",
                    "Send-side kernel crossings (syscalls for TCP, doorbells for RDMA)",
                    c.send_calls,
                ),
                (
                    "rdmq_link_credit_waits_total",
                    "Sends that waited for send credits or a free send slot",
                    c.credit_waits,
                ),
            ] {
                out.push(Sample {
                    name,
                    help,
                    kind: Kind::Counter,
                    labels: base(),
                    value: v as f64,
                });
            }
        }
    }
    true
}
