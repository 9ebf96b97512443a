//! Round-trip latency and pipelined throughput of one connection over any transport, with both
//! ends in the caller's runtime (run it on a current-thread runtime so no cross-CPU wake-up
//! enters the numbers).

use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use rdmq_transport::codec::RemotingCommand;
use rdmq_transport::protocol::response_code;
use rdmq_transport::remoting::{Request, Router, Server, ServerConfig, ServerHandle};
use rdmq_transport::{
    Connection, ConnectionConfig, CounterSnapshot, Endpoint, Link, Transport, TransportError,
};

use crate::report::latency_histogram;

/// Request code of the echo handler.
pub const ECHO: i32 = 1;

/// A connection of transport `T`.
pub type ConnOf<T> = Connection<<<T as Transport>::Link as Link>::Tx>;

/// Starts an echo server on `endpoint`.
pub async fn echo_server<T: Transport>(
    transport: &T,
    endpoint: &Endpoint,
) -> Result<ServerHandle, TransportError> {
    let router = Router::new().route(ECHO, |req: Request| async move {
        RemotingCommand::response(response_code::SUCCESS, None).with_body(req.command.body)
    });
    Server::new(transport.clone(), router, ServerConfig::default())
        .bind(endpoint)
        .await
}

/// Dials `endpoint`.
pub async fn dial<T: Transport>(
    transport: &T,
    endpoint: &Endpoint,
) -> Result<ConnOf<T>, TransportError> {
    let link = transport.connect(endpoint).await?;
    Ok(Connection::new(link, ConnectionConfig::default()).0)
}

/// A request shaped like a proxy→broker send: a dozen header fields and a body of `size` bytes.
pub fn send_like_request(size: usize) -> RemotingCommand {
    RemotingCommand::request(ECHO)
        .with_field("a", "ProducerGroup")
        .with_field("b", "BenchTopic")
        .with_field("c", "TBW102")
        .with_field("d", "4")
        .with_field("e", "1")
        .with_field("f", "0")
        .with_field("g", "1764156000000")
        .with_field("h", "0")
        .with_field("i", "UNIQ_KEY\u{1}0A0B0C0D0E0F10111213141516171819\u{2}")
        .with_field("j", "0")
        .with_field("k", "false")
        .with_field("m", "false")
        .with_body(Bytes::from(vec![0x5A; size]))
}

/// Result of a round-trip run.
#[derive(Debug)]
pub struct RttResult {
    /// Per-call round-trip times (ns).
    pub histogram: Histogram<u64>,
    /// Client-side counter deltas over the measured calls.
    pub counters: CounterSnapshot,
    /// Measured calls.
    pub iterations: u64,
}

/// Sequential calls (one outstanding): `warmup` unmeasured, then `iterations` measured.
pub async fn round_trips<T: Transport>(
    conn: &ConnOf<T>,
    size: usize,
    warmup: u64,
    iterations: u64,
) -> Result<RttResult, TransportError> {
    let request = send_like_request(size);
    for _ in 0..warmup {
        conn.call(request.clone(), Duration::from_secs(5)).await?;
    }
    let before = conn.counters().snapshot();
    let mut histogram = latency_histogram();
    for _ in 0..iterations {
        let start = Instant::now();
        conn.call(request.clone(), Duration::from_secs(5)).await?;
        histogram.saturating_record(start.elapsed().as_nanos() as u64);
    }
    Ok(RttResult {
        histogram,
        counters: conn.counters().snapshot() - before,
        iterations,
    })
}

/// Calls with `window` outstanding at a time for `iterations` calls; returns messages/s.
pub async fn pipelined<T: Transport>(
    conn: &ConnOf<T>,
    size: usize,
    window: usize,
    iterations: u64,
) -> Result<f64, TransportError> {
    let request = send_like_request(size);
    let mut inflight = tokio::task::JoinSet::new();
    let start = Instant::now();
    let mut issued = 0u64;
    let mut done = 0u64;
    while done < iterations {
        while issued < iterations && inflight.len() < window {
            let conn = conn.clone();
            let req = request.clone();
            inflight.spawn(async move { conn.call(req, Duration::from_secs(30)).await });
            issued += 1;
        }
        if let Some(r) = inflight.join_next().await {
            r.expect("call task")?;
            done += 1;
        }
    }
    Ok(iterations as f64 / start.elapsed().as_secs_f64())
}
