//! The official RocketMQ 5 gRPC clients, installed from their registries, against rdmq-proxy
//! with an embedded broker reached over TCP and over rdma-sim: PyPI
//! `rocketmq-python-client` 5.1.2, npm `rocketmq-client-nodejs` 1.0.8 and crates.io `rocketmq`
//! 5.0.0. Each produces messages with a tag, two keys and user properties (bodies of 1 B,
//! 1 KiB, 64 KiB and 1 MiB), then receives them with its SimpleConsumer and acks; then two
//! more are received without an ack and must come back after the invisible time.
//!
//! The fixtures live in `proxy/compat/` and are installed by `scripts/compat-grpc-clients.sh`
//! (the test command runs it). Without them the tests print why and pass, unless
//! `RDMQ_REQUIRE_COMPAT=1` (set by the test command), which turns a missing client into a
//! failure.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{TempDir, args, body, start};
use sha2::{Digest, Sha256};

const SIZES: [usize; 4] = [1, 1024, 65_536, 1 << 20];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// How to run one client fixture.
struct Fixture {
    name: &'static str,
    program: PathBuf,
    prefix_args: Vec<String>,
}

fn fixture(name: &'static str) -> Option<Fixture> {
    let root = repo_root();
    let (program, prefix_args, installed) = match name {
        "python" => {
            let py = root.join("proxy/compat/python/.venv/bin/python");
            let ok = py.exists();
            (
                py,
                vec![
                    root.join("proxy/compat/python/client.py")
                        .display()
                        .to_string(),
                ],
                ok,
            )
        }
        "node" => (
            PathBuf::from("node"),
            vec![
                root.join("proxy/compat/node/client.js")
                    .display()
                    .to_string(),
            ],
            root.join("proxy/compat/node/node_modules/rocketmq-client-nodejs")
                .exists(),
        ),
        "rust" => {
            let bin = root.join("target/compat/debug/rdmq-compat-rust-grpc");
            let ok = bin.exists();
            (bin, Vec::new(), ok)
        }
        _ => unreachable!(),
    };
    if installed {
        return Some(Fixture {
            name,
            program,
            prefix_args,
        });
    }
    if std::env::var("RDMQ_REQUIRE_COMPAT").is_ok_and(|v| v == "1") {
        panic!("the {name} gRPC client is not installed; run scripts/compat-grpc-clients.sh");
    }
    eprintln!("skipped: the {name} gRPC client is not installed (scripts/compat-grpc-clients.sh)");
    None
}

impl Fixture {
    /// Runs the fixture with `args` off the runtime; returns its stdout lines.
    async fn run(&self, args: Vec<String>) -> Vec<String> {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.prefix_args).args(&args);
        cmd.env("HOME", std::env::temp_dir().join("rdmq-compat-home"));
        let name = self.name;
        let out = tokio::task::spawn_blocking(move || cmd.output())
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("cannot run the {name} client: {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{name} client {args:?} failed ({}):\nstdout:\n{stdout}\nstderr (tail):\n{}",
            out.status,
            tail(&String::from_utf8_lossy(&out.stderr), 40)
        );
        stdout.lines().map(str::to_owned).collect()
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn sha256_hex(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

#[derive(Debug)]
struct Received {
    id: String,
    tag: Option<String>,
    keys: Vec<String>,
    props: BTreeMap<String, String>,
    size: usize,
    sha256: String,
    attempt: Option<i64>,
    topic: String,
}

fn parse_received(lines: &[String]) -> Vec<Received> {
    let mut out = Vec::new();
    let mut total = None;
    for l in lines {
        if let Some(j) = l.strip_prefix("RECEIVED ") {
            let v: serde_json::Value = serde_json::from_str(j).expect("RECEIVED line is JSON");
            out.push(Received {
                id: v["id"].as_str().unwrap().to_owned(),
                tag: v["tag"].as_str().map(str::to_owned),
                keys: v["keys"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|k| k.as_str().unwrap().to_owned())
                    .collect(),
                props: v["props"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                    .collect(),
                size: v["size"].as_u64().unwrap() as usize,
                sha256: v["sha256"].as_str().unwrap().to_owned(),
                attempt: v["attempt"].as_i64(),
                topic: v["topic"].as_str().unwrap_or("").to_owned(),
            });
        } else if let Some(n) = l.strip_prefix("TOTAL ") {
            total = n.trim().parse::<usize>().ok();
        }
    }
    assert_eq!(total, Some(out.len()), "TOTAL matches the RECEIVED lines");
    out
}

fn parse_sent(lines: &[String]) -> BTreeMap<usize, String> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("SENT "))
        .map(|l| {
            let (i, id) = l.split_once(' ').expect("SENT <i> <id>");
            (i.parse().unwrap(), id.trim().to_owned())
        })
        .collect()
}

/// Checks what a consumer saw against what `prefix` produced with `sizes`.
fn check(
    got: &[Received],
    sent: &BTreeMap<usize, String>,
    sizes: &[usize],
    prefix: &str,
    topic: &str,
    attempt: i64,
) {
    assert_eq!(got.len(), sent.len(), "every message received once");
    let ids: BTreeSet<&str> = got.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids.len(), got.len(), "no duplicates");
    for (i, id) in sent {
        let r = got
            .iter()
            .find(|r| r.id.eq_ignore_ascii_case(id))
            .unwrap_or_else(|| panic!("message {i} ({id}) was not received"));
        let expected = body(*i, sizes[*i]);
        assert_eq!(r.size, expected.len(), "body size of message {i}");
        assert_eq!(
            r.sha256,
            sha256_hex(&expected),
            "body of message {i} byte-identical"
        );
        assert_eq!(r.tag.as_deref(), Some(format!("tag-{prefix}").as_str()));
        let mut keys = vec![format!("alt-{prefix}-{i}"), format!("key-{prefix}-{i}")];
        keys.sort();
        assert_eq!(r.keys, keys, "keys of message {i}");
        let props: BTreeMap<String, String> = [
            ("index", i.to_string()),
            ("prefix", prefix.to_owned()),
            ("unicode", "h\u{e9}llo \u{2603}".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        assert_eq!(r.props, props, "user properties of message {i}");
        assert_eq!(r.topic, topic);
        if let Some(a) = r.attempt {
            assert_eq!(a, attempt, "delivery attempt of message {i}");
        }
    }
}

fn csv(sizes: &[usize]) -> String {
    sizes
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

async fn client_roundtrip(name: &'static str, broker_url: &str) {
    let Some(fx) = fixture(name) else {
        return;
    };
    let dir = TempDir::new(&format!("compat-{name}"));
    let topic = format!("compat-{name}");
    let proxy = start(&args(&dir, broker_url, &[&format!("{topic}:4")])).await;
    let endpoint = proxy.grpc_addr().to_string();
    let s = |v: &str| v.to_owned();

    // Produce 1 B .. 1 MiB, receive and ack.
    let prefix = format!("{name}a");
    let sent = parse_sent(
        &fx.run(vec![
            s("produce"),
            endpoint.clone(),
            topic.clone(),
            csv(&SIZES),
            prefix.clone(),
        ])
        .await,
    );
    assert_eq!(sent.len(), SIZES.len(), "every send acknowledged");
    let got = parse_received(
        &fx.run(vec![
            s("consume"),
            endpoint.clone(),
            topic.clone(),
            format!("g-{name}"),
            SIZES.len().to_string(),
            s("ack"),
            s("30"),
        ])
        .await,
    );
    check(&got, &sent, &SIZES, &prefix, &topic, 1);

    // Two more, received without an ack: they come back after the invisible time (2 s),
    // with delivery attempt 2, and are acked then.
    let small = [10usize, 2000];
    let prefix = format!("{name}b");
    let sent = parse_sent(
        &fx.run(vec![
            s("produce"),
            endpoint.clone(),
            topic.clone(),
            csv(&small),
            prefix.clone(),
        ])
        .await,
    );
    let first = parse_received(
        &fx.run(vec![
            s("consume"),
            endpoint.clone(),
            topic.clone(),
            format!("g-{name}"),
            s("2"),
            s("noack"),
            s("2"),
        ])
        .await,
    );
    check(&first, &sent, &small, &prefix, &topic, 1);
    let again = parse_received(
        &fx.run(vec![
            s("consume"),
            endpoint.clone(),
            topic.clone(),
            format!("g-{name}"),
            s("2"),
            s("ack"),
            s("30"),
        ])
        .await,
    );
    check(&again, &sent, &small, &prefix, &topic, 2);
    proxy.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_over_tcp() {
    client_roundtrip("python", "tcp://127.0.0.1:0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_over_rdma_sim() {
    client_roundtrip("python", "rdma-sim://127.0.0.1:0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_client_over_tcp() {
    client_roundtrip("node", "tcp://127.0.0.1:0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_client_over_rdma_sim() {
    client_roundtrip("node", "rdma-sim://127.0.0.1:0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_client_over_tcp() {
    client_roundtrip("rust", "tcp://127.0.0.1:0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_client_over_rdma_sim() {
    client_roundtrip("rust", "rdma-sim://127.0.0.1:0").await;
}
