//! rdmq compatibility fixture: the official Apache RocketMQ 5 Rust gRPC client
//! (crates.io `rocketmq` 5.0.0). Plaintext, no credentials.
//!
//! ```text
//! rdmq-compat-rust-grpc produce <endpoint> <topic> <sizes> <prefix>
//! rdmq-compat-rust-grpc consume <endpoint> <topic> <group> <count> <ack|noack> <invisible_secs>
//! ```
//!
//! stdout carries only the contract lines (`SENT` / `RECEIVED` / `TOTAL`); the client logs to
//! stderr (slog terminal drain). Exit status: 0 success, 1 error (an `ERROR <text>` line on
//! stderr), 2 usage. A watchdog thread bounds the whole program so it never outlives the test.

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

use rocketmq::conf::{ClientOption, ProducerOption, SimpleConsumerOption};
use rocketmq::model::common::{FilterExpression, FilterType};
use rocketmq::model::message::{MessageBuilder, MessageView};
use rocketmq::{Producer, SimpleConsumer};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

/// Whole-program bound (the contract says 90 s).
const HARD_LIMIT: Duration = Duration::from_secs(85);
/// Give up receiving after this long.
const CONSUME_LIMIT: Duration = Duration::from_secs(60);
/// Long-polling duration. Quirk: this client also uses it as the gRPC deadline of
/// ReceiveMessage (no extra request-timeout margin), so the server must answer before it.
const AWAIT: Duration = Duration::from_secs(5);
/// Connect and per-request timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Bounds on single client calls (the crate sets no deadline on the Telemetry stream, so a
/// silent server would otherwise stall `start()` until the watchdog fires).
const START_LIMIT: Duration = Duration::from_secs(20);
const CALL_LIMIT: Duration = Duration::from_secs(15);
const BATCH: i32 = 16;
const UNICODE_VALUE: &str = "h\u{e9}llo \u{2603}"; // "héllo ☃"

const USAGE: &str = "usage: rdmq-compat-rust-grpc produce <endpoint> <topic> <sizes> <prefix>\n       \
                     rdmq-compat-rust-grpc consume <endpoint> <topic> <group> <count> <ack|noack> <invisible_secs>";

enum Command {
    Produce {
        endpoint: String,
        topic: String,
        sizes: Vec<usize>,
        prefix: String,
    },
    Consume {
        endpoint: String,
        topic: String,
        group: String,
        count: usize,
        ack: bool,
        invisible_secs: u64,
    },
}

fn out(line: &str) {
    let mut stdout = std::io::stdout().lock();
    // A closed stdout is not worth a panic; the test will notice the missing lines.
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}

fn die(text: &str, code: i32) -> ! {
    let _ = std::io::stdout().flush();
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    eprintln!("ERROR {one_line}");
    std::process::exit(code)
}

fn parse_num<T: std::str::FromStr>(s: &str, what: &str) -> Result<T, String> {
    s.trim()
        .parse::<T>()
        .map_err(|_| format!("{what} must be a non-negative integer, got '{s}'"))
}

fn parse(args: &[String]) -> Result<Command, String> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["produce", endpoint, topic, sizes, prefix] => {
            let sizes = sizes
                .split(',')
                .filter(|s| !s.trim().is_empty())
                .map(|s| parse_num::<usize>(s, "size"))
                .collect::<Result<Vec<_>, _>>()?;
            if sizes.is_empty() || sizes.contains(&0) {
                return Err("sizes must be a comma list of positive integers".into());
            }
            Ok(Command::Produce {
                endpoint: endpoint.to_string(),
                topic: topic.to_string(),
                sizes,
                prefix: prefix.to_string(),
            })
        }
        ["consume", endpoint, topic, group, count, mode, invisible] => {
            let ack = match *mode {
                "ack" => true,
                "noack" => false,
                other => return Err(format!("mode must be ack or noack, got '{other}'")),
            };
            let invisible_secs = parse_num::<u64>(invisible, "invisible_secs")?;
            if invisible_secs == 0 {
                return Err("invisible_secs must be > 0".into());
            }
            Ok(Command::Consume {
                endpoint: endpoint.to_string(),
                topic: topic.to_string(),
                group: group.to_string(),
                count: parse_num::<usize>(count, "count")?,
                ack,
                invisible_secs,
            })
        }
        _ => Err(args.join(" ")),
    }
}

fn client_option(endpoint: &str) -> ClientOption {
    let mut option = ClientOption::default();
    option.set_access_url(endpoint);
    option.set_enable_tls(false);
    option.set_timeout(REQUEST_TIMEOUT);
    option.set_long_polling_timeout(AWAIT);
    // No access key / secret key: the client sends no signature.
    option
}

/// Runs `fut` with a time bound and flattens both failure kinds into a message.
async fn bounded<T, E: std::fmt::Display>(
    limit: Duration,
    what: &str,
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: no answer within {} s", limit.as_secs())),
    }
}

fn body_for(i: usize, size: usize) -> Vec<u8> {
    (0..size).map(|j| ((j * 7 + i * 13) % 256) as u8).collect()
}

async fn produce(endpoint: &str, topic: &str, sizes: &[usize], prefix: &str) -> Result<(), String> {
    let mut option = ProducerOption::default();
    option.set_topics(vec![topic.to_string()]);
    let mut producer =
        Producer::new(option, client_option(endpoint)).map_err(|e| format!("new producer: {e}"))?;
    bounded(START_LIMIT, "start producer", producer.start()).await?;

    let mut result = Ok(());
    for (i, &size) in sizes.iter().enumerate() {
        let properties = HashMap::from([
            ("index".to_string(), i.to_string()),
            ("prefix".to_string(), prefix.to_string()),
            ("unicode".to_string(), UNICODE_VALUE.to_string()),
        ]);
        let message = match MessageBuilder::builder()
            .set_topic(topic)
            .set_body(body_for(i, size))
            .set_tag(format!("tag-{prefix}"))
            .set_keys(vec![
                format!("key-{prefix}-{i}"),
                format!("alt-{prefix}-{i}"),
            ])
            .set_properties(properties)
            .build()
        {
            Ok(m) => m,
            Err(e) => {
                result = Err(format!("build message {i}: {e}"));
                break;
            }
        };
        match bounded(
            CALL_LIMIT,
            &format!("send message {i}"),
            producer.send(message),
        )
        .await
        {
            Ok(receipt) => out(&format!("SENT {i} {}", receipt.message_id())),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    // Sends NotifyClientTermination to the access endpoint.
    if let Err(e) = bounded(CALL_LIMIT, "shutdown", producer.shutdown()).await {
        eprintln!("{e}");
    }
    result
}

fn describe(m: &MessageView) -> Value {
    let mut keys: Vec<&str> = m.keys().iter().map(String::as_str).collect();
    keys.sort_unstable();
    let props: Map<String, Value> = m
        .properties()
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let body = m.body();
    // The crate maps an unset SystemProperties.delivery_attempt to 0.
    let attempt = match m.delivery_attempt() {
        0 => Value::Null,
        n => json!(n),
    };
    json!({
        "id": m.message_id(),
        "tag": m.tag().filter(|t| !t.is_empty()),
        "keys": keys,
        "props": props,
        "size": body.len(),
        "sha256": hex::encode(Sha256::digest(body)),
        "attempt": attempt,
        "topic": m.topic(),
    })
}

async fn consume(
    endpoint: &str,
    topic: &str,
    group: &str,
    count: usize,
    ack: bool,
    invisible_secs: u64,
) -> Result<usize, String> {
    let mut option = SimpleConsumerOption::default();
    option.set_consumer_group(group);
    option.set_topics(vec![topic.to_string()]);
    let mut consumer = SimpleConsumer::new(option, client_option(endpoint))
        .map_err(|e| format!("new simple consumer: {e}"))?;
    bounded(START_LIMIT, "start simple consumer", consumer.start()).await?;

    let filter = FilterExpression::new(FilterType::Tag, "*");
    let deadline = Instant::now() + CONSUME_LIMIT;
    let mut got = 0usize;
    let mut result = Ok(());
    'outer: while got < count {
        if Instant::now() >= deadline {
            result = Err(format!(
                "received {got} of {count} messages within {} s",
                CONSUME_LIMIT.as_secs()
            ));
            break;
        }
        let receive =
            consumer.receive_with(topic, &filter, BATCH, Duration::from_secs(invisible_secs));
        let messages = match bounded(AWAIT + CALL_LIMIT, "receive", receive).await {
            Ok(messages) => messages,
            Err(e) => {
                result = Err(format!("after {got} messages: {e}"));
                break;
            }
        };
        for m in messages {
            out(&format!("RECEIVED {}", describe(&m)));
            got += 1;
            if ack {
                let what = format!("ack {}", m.message_id());
                if let Err(e) = bounded(CALL_LIMIT, &what, consumer.ack(&m)).await {
                    result = Err(format!("after {got} messages: {e}"));
                    break 'outer;
                }
            }
        }
    }
    // Sends NotifyClientTermination (with the group) to the access endpoint.
    if let Err(e) = bounded(CALL_LIMIT, "shutdown", consumer.shutdown()).await {
        eprintln!("{e}");
    }
    result.map(|()| got)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match parse(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{USAGE}");
            die(&format!("bad arguments: {e}"), 2);
        }
    };

    // Watchdog on a plain thread: fires even if the async runtime is wedged.
    std::thread::spawn(|| {
        std::thread::sleep(HARD_LIMIT);
        die(
            &format!(
                "timeout: program ran longer than {} s",
                HARD_LIMIT.as_secs()
            ),
            1,
        );
    });

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => die(&format!("tokio runtime: {e}"), 1),
    };

    let code = runtime.block_on(async {
        match command {
            Command::Produce {
                endpoint,
                topic,
                sizes,
                prefix,
            } => match produce(&endpoint, &topic, &sizes, &prefix).await {
                Ok(()) => 0,
                Err(e) => die(&format!("produce failed: {e}"), 1),
            },
            Command::Consume {
                endpoint,
                topic,
                group,
                count,
                ack,
                invisible_secs,
            } => match consume(&endpoint, &topic, &group, count, ack, invisible_secs).await {
                Ok(got) => {
                    out(&format!("TOTAL {got}"));
                    0
                }
                Err(e) => die(&format!("consume failed: {e}"), 1),
            },
        }
    });
    // Give the async log drain a moment, then leave without waiting for background tasks.
    std::thread::sleep(Duration::from_millis(50));
    std::process::exit(code);
}
