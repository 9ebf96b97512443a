//! Compatibility fixture for rdmq-broker: crates.io `rocketmq-client-rust` 1.0.0 produces a set of
//! messages (one by one, then one batch) and consumes them back with its lite pull consumer.
//!
//!   rdmq-compat-rust-remoting <broker host:port> <topic> <count> <run-id>
//!
//! The broker address is given as the name server; the client asks it for the route and sends to
//! the address found there. Output, one line per event, for the Rust test to check:
//!   SENT <i> <queueId> <queueOffset> <msgId>
//!   RECEIVED <i> <queueId> <queueOffset> <tag> <rdmq-check property> <body as hex>
//!   DONE <received count>
//! Message i has body compat_body(run, "rust", i), tag "t<i mod 3>", key "<run>-rust-<i>" and the
//! user property rdmq-check = "<run>/<i>". The last quarter of the messages goes as one batch.
#![recursion_limit = "256"]

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use cheetah_string::CheetahString;
use rocketmq_client_rust::{
    ClientRuntime, ClientRuntimeConfig, DefaultLitePullConsumer, DefaultMQProducer,
};
use rocketmq_model::common::consumer::consume_from_where::ConsumeFromWhere;
use rocketmq_model::common::message::MessageTrait;
use rocketmq_model::common::message::message_single::Message;
use rocketmq_runtime::{RuntimeConfig, RuntimeOwner};

/// The body of message `i`: the same formula as in broker/tests/remoting_clients.rs.
fn compat_body(run: &str, i: usize) -> Vec<u8> {
    let mut body = format!("{run}/rust/{i}/").into_bytes();
    body.extend((0..(i * 97) % 3000).map(|j| ((i * 7 + j) % 256) as u8));
    body
}

fn message(topic: &str, run: &str, i: usize) -> Message {
    Message::builder()
        .topic(topic)
        .tags(format!("t{}", i % 3))
        .key(format!("{run}-rust-{i}"))
        .body_slice(&compat_body(run, i))
        .raw_property("rdmq-check", format!("{run}/{i}"))
        .expect("rdmq-check is not a reserved property")
        .build_unchecked()
}

type Failure = Box<dyn std::error::Error>;

async fn produce(
    runtime: &std::sync::Arc<ClientRuntime>,
    addr: &str,
    topic: &str,
    count: usize,
    run: &str,
) -> Result<(), Failure> {
    let mut producer = DefaultMQProducer::builder(runtime.clone())
        .producer_group(format!("rdmq_compat_producer_{run}"))
        .name_server_addr(addr.to_owned())
        .build();
    producer.start().await?;
    let singles = count - count / 4;
    for i in 0..singles {
        let r = producer
            .send_with_timeout(message(topic, run, i), 5000)
            .await?
            .ok_or("send returned no result")?;
        let q = r
            .message_queue
            .as_ref()
            .ok_or("send result without a queue")?;
        let id = r.msg_id.as_ref().map(|s| s.to_string()).unwrap_or_default();
        println!("SENT {i} {} {} {id}", q.queue_id(), r.queue_offset);
    }
    if singles < count {
        let batch: Vec<Message> = (singles..count).map(|i| message(topic, run, i)).collect();
        let r = producer.send_batch_with_timeout(batch, 5000).await?;
        let q = r
            .message_queue
            .as_ref()
            .ok_or("batch result without a queue")?;
        let ids = r.msg_id.as_ref().map(|s| s.to_string()).unwrap_or_default();
        for (n, i) in (singles..count).enumerate() {
            let id = ids.split(',').nth(n).unwrap_or("");
            println!(
                "SENT {i} {} {} {id}",
                q.queue_id(),
                r.queue_offset + n as u64
            );
        }
    }
    producer.shutdown().await;
    Ok(())
}

async fn consume(
    runtime: &std::sync::Arc<ClientRuntime>,
    addr: &str,
    topic: &str,
    count: usize,
    run: &str,
) -> Result<usize, Failure> {
    let consumer = DefaultLitePullConsumer::builder(runtime.clone())
        .consumer_group(format!("rdmq_compat_consumer_{run}"))
        .name_server_addr(addr.to_owned())
        .consume_from_where(ConsumeFromWhere::ConsumeFromFirstOffset)
        .auto_commit(true)
        .build()?;
    consumer.start().await?;
    consumer.subscribe(topic).await?;
    let check_key = CheetahString::from_static_str("rdmq-check");
    let prefix = format!("{run}/");
    let mut seen = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(45);
    while seen.len() < count && Instant::now() < deadline {
        for m in consumer.poll_with_timeout(1000).await {
            let Some(check) = m.user_property(&check_key) else {
                continue;
            };
            let Some(i) = check
                .as_str()
                .strip_prefix(&prefix)
                .and_then(|s| s.parse::<usize>().ok())
            else {
                continue;
            };
            let hex: String = m
                .body()
                .unwrap_or_default()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            let tag = m.tags().map(|t| t.to_string()).unwrap_or_default();
            println!(
                "RECEIVED {i} {} {} {tag} {check} {hex}",
                m.queue_id(),
                m.queue_offset()
            );
            seen.insert(i);
        }
    }
    consumer.shutdown().await;
    Ok(seen.len())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, topic, count, run] = args.as_slice() else {
        eprintln!("usage: rdmq-compat-rust-remoting <host:port> <topic> <count> <run-id>");
        return ExitCode::from(2);
    };
    let count: usize = count.parse().expect("count is a number");
    // Plumbing the 1.0.0 client requires: a runtime owner, telemetry, a client runtime.
    let owner = RuntimeOwner::plan(RuntimeConfig {
        thread_name: "rdmq-compat".into(),
        ..Default::default()
    })
    .expect("runtime config")
    .build()
    .expect("runtime");
    let telemetry = rocketmq_observability::install_global(&Default::default()).expect("telemetry");
    let runtime = ClientRuntime::try_new(
        owner.root_context().component("client"),
        ClientRuntimeConfig::default(),
        telemetry.handle(),
    )
    .expect("client runtime");
    let outcome = async {
        produce(&runtime, addr, topic, count, run).await?;
        consume(&runtime, addr, topic, count, run).await
    }
    .await;
    let _ = runtime.shutdown().await;
    let _ = owner.shutdown_tasks().await;
    let _ = owner.shutdown_background();
    let _ = telemetry.shutdown();
    match outcome {
        Ok(n) => {
            println!("DONE {n}");
            if n == count {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("FAILED {e}");
            ExitCode::FAILURE
        }
    }
}
