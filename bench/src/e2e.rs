//! End to end through rdmq-proxy: a gRPC SendMessage from a client, translated by the proxy
//! into SEND_MESSAGE_V2 to an embedded broker over the configured transport (TCP or RDMA),
//! stored, acknowledged, answered. The same runs for every transport in one process, so the
//! ratios compare only the proxy→broker hop.

use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use rdmq_proxy::RunningProxy;
use rdmq_proxy::config::ProxyConfig;
use rdmq_proxy::pb::messaging_service_client::MessagingServiceClient;
use rdmq_proxy::pb::{self, Code};
use tonic::transport::Channel;

use crate::report::{latency_histogram, process_cpu_time};

/// One end-to-end run.
#[derive(Debug)]
pub struct E2eRun {
    /// Round-trip latency of one SendMessage, one in flight (ns).
    pub latency: Histogram<u64>,
    /// Messages per second with `concurrency` sends in flight.
    pub rate: f64,
    /// CPU time of the whole process per message in the concurrent phase (µs).
    pub cpu_per_message_us: f64,
}

fn message(i: u64, body: &Bytes) -> pb::Message {
    pb::Message {
        topic: Some(pb::Resource {
            resource_namespace: String::new(),
            name: "bench".into(),
        }),
        user_properties: Default::default(),
        system_properties: Some(pb::SystemProperties {
            tag: Some("bench".into()),
            message_id: format!("01BENCH{i:026}"),
            body_encoding: pb::Encoding::Identity as i32,
            message_type: pb::MessageType::Normal as i32,
            ..Default::default()
        }),
        body: body.clone(),
    }
}

async fn send_one(c: &mut MessagingServiceClient<Channel>, m: pb::Message) -> Result<(), String> {
    let mut r = tonic::Request::new(pb::SendMessageRequest { messages: vec![m] });
    r.metadata_mut()
        .insert("x-mq-client-id", "rdmq-bench".parse().expect("ascii"));
    let resp = c
        .send_message(r)
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    match resp.status {
        Some(s) if s.code == Code::Ok as i32 => Ok(()),
        s => Err(format!("send failed: {s:?}")),
    }
}

/// Starts a proxy with an embedded broker listening on `broker_url` (whose scheme picks the
/// proxy→broker transport), storing under `dir`.
pub async fn start(broker_url: &str, dir: &std::path::Path) -> Result<RunningProxy, String> {
    let args: Vec<String> = [
        "--listen",
        "127.0.0.1:0",
        "--embedded-broker",
        "--broker-listen",
        broker_url,
        "--store-dir",
        &dir.display().to_string(),
        "--topic",
        "bench:8",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let cfg = ProxyConfig::from_args(&args)
        .map_err(|e| e.to_string())?
        .ok_or("no configuration")?;
    RunningProxy::start(cfg).await.map_err(|e| e.to_string())
}

/// Sends `iterations` messages of `size` bytes one at a time, then `iterations` more with
/// `concurrency` in flight.
pub async fn run(
    proxy: &RunningProxy,
    size: usize,
    iterations: u64,
    concurrency: usize,
) -> Result<E2eRun, String> {
    let url = format!("http://{}", proxy.grpc_addr());
    let channel = tonic::transport::Endpoint::from_shared(url)
        .map_err(|e| e.to_string())?
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let mut c = MessagingServiceClient::new(channel);
    let body = Bytes::from(vec![0x5a; size]);
    for i in 0..(iterations / 10).max(10) {
        send_one(&mut c, message(i, &body)).await?;
    }
    let mut latency = latency_histogram();
    for i in 0..iterations {
        let t = Instant::now();
        send_one(&mut c, message(i, &body)).await?;
        latency.record(t.elapsed().as_nanos() as u64).ok();
    }
    let per = iterations / concurrency as u64;
    let cpu0 = process_cpu_time();
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let mut c = c.clone();
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per {
                send_one(&mut c, message(w as u64 * per + i, &body)).await?;
            }
            Ok::<_, String>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    let wall = t0.elapsed().max(Duration::from_micros(1));
    let cpu = process_cpu_time() - cpu0;
    let n = per * concurrency as u64;
    Ok(E2eRun {
        latency,
        rate: n as f64 / wall.as_secs_f64(),
        cpu_per_message_us: cpu.as_secs_f64() * 1e6 / n as f64,
    })
}
