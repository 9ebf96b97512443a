//! The load generator: a process of its own (`rdmq-bench loadgen`, started by the headline
//! runner) that drives the proxy over gRPC like a RocketMQ 5 client — `SendMessage` at a fixed
//! offered rate, or `ReceiveMessage` + `AckMessage` batches — and reports on stdout:
//! `window-start` and `window-end` as the measured window opens and closes (the runner samples
//! the broker's and proxy's counters then), and finally `result <json>`.

use rdmq_transport::sync::Plain;
use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use rdmq_proxy::pb::messaging_service_client::MessagingServiceClient;
use rdmq_proxy::pb::{self, Code, receive_message_response::Content};
use serde::{Deserialize, Serialize};
use tonic::transport::Channel;

use super::pace::{self, Edge, Phases};

/// What the runner asks of one load generator.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadSpec {
    /// The proxy's gRPC `host:port`.
    pub target: String,
    /// `send` (open loop), `saturate` (closed loop sends) or `receive` (open loop batches).
    pub mode: String,
    /// Offered messages per second (open loop).
    pub rate: f64,
    /// Operations in flight (closed loop).
    pub concurrency: usize,
    /// Warm-up before the window (ms).
    pub warmup_ms: u64,
    /// The window (ms).
    pub window_ms: u64,
    /// Message body size (bytes).
    pub size: usize,
    /// Topic sent to and received from.
    pub topic: String,
    /// Consumer group of the receive phase.
    pub group: String,
    /// Messages per ReceiveMessage call.
    pub batch: i32,
    /// HTTP/2 connections to the proxy.
    pub connections: usize,
}

/// What one load generator measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadResult {
    /// Operations due in the window.
    pub due_in_window: u64,
    /// Messages completed in the window (sent and acknowledged, or received and acked).
    pub done_in_window: u64,
    /// Failed operations of the window.
    pub errors: u64,
    /// Operations started over 1 ms late.
    pub late_starts: u64,
    /// Operations never started (in-flight bound).
    pub not_started: u64,
    /// Operations unfinished after the drain.
    pub unfinished: u64,
    /// Client-side latency from due time, `Snapshot::encode` form (ns).
    pub latency: String,
    /// The first error seen, for the report.
    pub first_error: Option<String>,
}

fn resource(name: &str) -> Option<pb::Resource> {
    Some(pb::Resource {
        resource_namespace: String::new(),
        name: name.into(),
    })
}

/// A 1-message SendMessage request.
pub fn message(topic: &str, i: u64, body: &Bytes) -> pb::Message {
    pb::Message {
        topic: resource(topic),
        user_properties: Default::default(),
        system_properties: Some(pb::SystemProperties {
            tag: Some("bench".into()),
            message_id: format!("01BENCH{:010}{i:016}", std::process::id()),
            body_encoding: pb::Encoding::Identity as i32,
            message_type: pb::MessageType::Normal as i32,
            ..Default::default()
        }),
        body: body.clone(),
    }
}

fn request<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        "x-mq-client-id",
        "rdmq-bench-loadgen".parse().expect("ascii"),
    );
    r
}

async fn send(mut c: MessagingServiceClient<Channel>, m: pb::Message) -> Result<u64, String> {
    let resp = c
        .send_message(request(pb::SendMessageRequest { messages: vec![m] }))
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    match resp.status {
        Some(s) if s.code == Code::Ok as i32 => Ok(1),
        s => Err(format!("send failed: {s:?}")),
    }
}

/// One ReceiveMessage of up to `batch`, then one AckMessage of what came.
async fn receive_and_ack(
    mut c: MessagingServiceClient<Channel>,
    topic: String,
    group: String,
    batch: i32,
) -> Result<u64, String> {
    let req = pb::ReceiveMessageRequest {
        group: resource(&group),
        message_queue: Some(pb::MessageQueue {
            topic: resource(&topic),
            id: -1,
            permission: pb::Permission::ReadWrite as i32,
            broker: None,
            accept_message_types: vec![pb::MessageType::Normal as i32],
        }),
        filter_expression: Some(pb::FilterExpression {
            r#type: pb::FilterType::Tag as i32,
            expression: "*".into(),
        }),
        batch_size: batch,
        invisible_duration: Some(prost_types::Duration {
            seconds: 30,
            nanos: 0,
        }),
        auto_renew: false,
        long_polling_timeout: Some(prost_types::Duration {
            seconds: 1,
            nanos: 0,
        }),
        attempt_id: None,
    };
    let mut r = request(req);
    r.set_timeout(Duration::from_secs(3));
    let mut stream = c
        .receive_message(r)
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    let mut entries = Vec::new();
    while let Some(item) = stream.message().await.map_err(|e| e.to_string())? {
        match item.content {
            Some(Content::Message(m)) => {
                let sp = m.system_properties.unwrap_or_default();
                entries.push(pb::AckMessageEntry {
                    message_id: sp.message_id,
                    receipt_handle: sp.receipt_handle.unwrap_or_default(),
                    lite_topic: None,
                });
            }
            Some(Content::Status(s))
                if s.code != Code::Ok as i32 && s.code != Code::MessageNotFound as i32 =>
            {
                return Err(format!("receive failed: {s:?}"));
            }
            _ => {}
        }
    }
    if entries.is_empty() {
        return Ok(0);
    }
    let n = entries.len() as u64;
    let resp = c
        .ack_message(request(pb::AckMessageRequest {
            group: resource(&group),
            topic: resource(&topic),
            entries,
        }))
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    match resp.status {
        Some(s) if s.code == Code::Ok as i32 => Ok(n),
        s => Err(format!("ack failed: {s:?}")),
    }
}

async fn connect(spec: &LoadSpec) -> Result<Vec<MessagingServiceClient<Channel>>, String> {
    let mut out = Vec::new();
    for _ in 0..spec.connections.max(1) {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", spec.target))
            .map_err(|e| e.to_string())?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(3))
            .connect()
            .await
            .map_err(|e| format!("cannot reach the proxy at {}: {e}", spec.target))?;
        out.push(MessagingServiceClient::new(ch));
    }
    Ok(out)
}

fn edge_printer() -> impl FnMut(Edge) + Send + 'static {
    |edge| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "{}",
            match edge {
                Edge::Start => "window-start",
                Edge::End => "window-end",
            }
        );
        let _ = out.flush();
    }
}

/// Runs `spec` and returns what it measured.
pub async fn run(spec: LoadSpec) -> Result<LoadResult, String> {
    let clients = connect(&spec).await?;
    let phases = Phases {
        warmup: Duration::from_millis(spec.warmup_ms),
        window: Duration::from_millis(spec.window_ms),
        drain: Duration::from_secs(5),
    };
    let first_error = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
    let keep = {
        let first = first_error.clone();
        move |r: Result<u64, String>| {
            if let Err(e) = &r {
                first.lock().plain().get_or_insert(e.clone());
            }
            r
        }
    };
    let body = Bytes::from(vec![0x5a; spec.size]);
    let pick = move |i: u64| clients[i as usize % clients.len()].clone();
    let out = match spec.mode.as_str() {
        "send" => {
            let topic = spec.topic.clone();
            pace::open(spec.rate, phases, 20_000, edge_printer(), move |i| {
                let fut = send(pick(i), message(&topic, i, &body));
                let keep = keep.clone();
                async move { keep(fut.await) }
            })
            .await
        }
        "saturate" => {
            let topic = spec.topic.clone();
            pace::closed(spec.concurrency, phases, edge_printer(), move |i| {
                let fut = send(pick(i), message(&topic, i, &body));
                let keep = keep.clone();
                async move { keep(fut.await) }
            })
            .await
        }
        "receive" => {
            let (topic, group, batch) = (spec.topic.clone(), spec.group.clone(), spec.batch);
            let calls = spec.rate / f64::from(batch.max(1));
            pace::open(calls, phases, 256, edge_printer(), move |i| {
                let fut = receive_and_ack(pick(i), topic.clone(), group.clone(), batch);
                let keep = keep.clone();
                async move { keep(fut.await) }
            })
            .await
        }
        other => {
            return Err(format!(
                "unknown load mode `{other}` (send, saturate, receive)"
            ));
        }
    };
    let first_error = first_error.lock().plain().clone();
    Ok(LoadResult {
        due_in_window: out.due_in_window,
        done_in_window: out.done_in_window,
        errors: out.errors,
        late_starts: out.late_starts,
        not_started: out.not_started,
        unfinished: out.unfinished,
        latency: out.latency.encode(),
        first_error,
    })
}

/// `rdmq-bench loadgen <json spec>`: the process the runner starts.
pub fn main(args: &[String]) -> std::process::ExitCode {
    let spec: LoadSpec = match args.first().map(|a| serde_json::from_str(a)) {
        Some(Ok(s)) => s,
        Some(Err(e)) => {
            eprintln!("rdmq-bench loadgen: bad spec: {e}");
            return std::process::ExitCode::from(2);
        }
        None => {
            eprintln!("rdmq-bench loadgen: needs a JSON spec (started by `rdmq-bench headline`)");
            return std::process::ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("rdmq-bench loadgen: runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(spec)) {
        Ok(r) => {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(
                out,
                "result {}",
                serde_json::to_string(&r).expect("serialisable")
            );
            let _ = out.flush();
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("rdmq-bench loadgen: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
