//! Real remoting clients nobody on this team wrote, installed from their registries, against the
//! `rdmq-broker` binary: npm `ali-ons` 3.12.0 and crates.io `rocketmq-client-rust` 1.0.0. Each
//! asks the broker for the route (GET_ROUTEINFO_BY_TOPIC), sends to the address in it, and then
//! consumes with its own consumer; this test checks both what the client saw and, through its own
//! PULL, that the stored messages are the ones sent.
//!
//! The fixtures live in `broker/compat/` and are installed by `scripts/compat-clients.sh` (the
//! test command runs it). Without them the tests print why and pass, unless
//! `RDMQ_REQUIRE_COMPAT=1` (set by the test command), which turns a missing client into a failure.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{BrokerProcess, TempDir};
use rdmq_broker::message::{self, Properties};
use rdmq_transport::protocol::{request_code as rc, response_code as code};
use rdmq_transport::remoting::{Client, ClientConfig};
use rdmq_transport::tcp::TcpTransport;
use rdmq_transport::{Endpoint, RemotingCommand};

const COUNT: usize = 12;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// The body of message `i` sent by `client` (the fixtures compute the same).
fn compat_body(run: &str, client: &str, i: usize) -> Vec<u8> {
    let mut body = format!("{run}/{client}/{i}/").into_bytes();
    body.extend((0..(i * 97) % 3000).map(|j| ((i * 7 + j) % 256) as u8));
    body
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `None` (after saying why) when the fixture is not installed and not required.
fn require(found: bool, what: &str) -> Option<()> {
    if found {
        return Some(());
    }
    if std::env::var("RDMQ_REQUIRE_COMPAT").is_ok_and(|v| v == "1") {
        panic!("{what} is not installed; run scripts/compat-clients.sh");
    }
    eprintln!("skipped: {what} is not installed (scripts/compat-clients.sh installs it)");
    None
}

#[derive(Debug, Default)]
struct Sent {
    queue: i32,
    offset: i64,
    msg_id: String,
}

#[derive(Debug)]
struct Received {
    queue: i32,
    offset: i64,
    tag: String,
    check: String,
    body_hex: String,
}

/// Parses the fixture's `SENT` / `RECEIVED` / `DONE` lines.
fn parse(
    out: &str,
) -> (
    BTreeMap<usize, Sent>,
    BTreeMap<usize, Received>,
    Option<usize>,
) {
    let mut sent = BTreeMap::new();
    let mut received = BTreeMap::new();
    let mut done = None;
    for line in out.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["SENT", i, q, off, rest @ ..] => {
                sent.insert(
                    i.parse().unwrap(),
                    Sent {
                        queue: q.parse().unwrap(),
                        offset: off.parse().unwrap(),
                        msg_id: rest.first().unwrap_or(&"").to_string(),
                    },
                );
            }
            ["RECEIVED", i, q, off, tag, check, body_hex] => {
                received.insert(
                    i.parse().unwrap(),
                    Received {
                        queue: q.parse().unwrap(),
                        offset: off.parse().unwrap(),
                        tag: tag.to_string(),
                        check: check.to_string(),
                        body_hex: body_hex.to_string(),
                    },
                );
            }
            ["DONE", n] => done = n.parse().ok(),
            _ => {}
        }
    }
    (sent, received, done)
}

/// Runs a fixture against a fresh broker and checks everything it reports.
async fn round_trip(client: &str, mut cmd: Command) {
    let dir = TempDir::new();
    let broker = BrokerProcess::spawn(dir.path(), &["--flush", "sync", "--segment-size", "64M"]);
    let addr = broker.endpoint.authority();
    let run = format!("r{}", std::process::id());
    let topic = format!("Compat_{}", client.replace('-', "_"));
    cmd.args([
        addr.as_str(),
        topic.as_str(),
        &COUNT.to_string(),
        run.as_str(),
    ]);
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("run the client fixture"))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let tail = |s: &str| {
        s.lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        out.status.success(),
        "{client} fixture failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        tail(&stdout),
        tail(&stderr)
    );
    let (sent, received, done) = parse(&stdout);
    assert_eq!(
        sent.len(),
        COUNT,
        "{client}: not every send was acknowledged:\n{stdout}"
    );
    assert_eq!(
        done,
        Some(COUNT),
        "{client}: its consumer did not get everything back"
    );

    // What the client's own consumer got back: the bytes sent, at the acknowledged place.
    for (i, s) in &sent {
        let r = received
            .get(i)
            .unwrap_or_else(|| panic!("{client}: message {i} never consumed"));
        assert_eq!(
            (r.queue, r.offset),
            (s.queue, s.offset),
            "{client}: message {i} moved"
        );
        assert_eq!(
            r.body_hex,
            hex(&compat_body(&run, client, *i)),
            "{client}: message {i} body differs"
        );
        assert_eq!(r.tag, format!("t{}", i % 3));
        assert_eq!(r.check, format!("{run}/{i}"));
    }

    // And what the store holds, read with our own client.
    let ours = Client::new(TcpTransport::default(), ClientConfig::default());
    let ep: &Endpoint = &broker.endpoint;
    for (i, s) in &sent {
        let pull = common::pull_request("compat-verifier", &topic, s.queue, s.offset, 1);
        let r = ours
            .invoke(ep, pull, Some(Duration::from_secs(5)))
            .await
            .unwrap();
        assert_eq!(
            r.code,
            code::SUCCESS,
            "{client}: pull of message {i}: {:?}",
            r.remark
        );
        let m = message::decode_records(&r.body).unwrap().remove(0);
        assert_eq!(
            &m.body[..],
            &compat_body(&run, client, *i)[..],
            "{client}: stored body {i}"
        );
        let p = Properties::parse(&m.properties).unwrap();
        assert_eq!(p.get("TAGS"), Some(format!("t{}", i % 3).as_str()));
        assert_eq!(p.get("KEYS"), Some(format!("{run}-{client}-{i}").as_str()));
        assert_eq!(p.get("rdmq-check"), Some(format!("{run}/{i}").as_str()));
        // The id the client was given names this message: its UNIQ_KEY when it minted one,
        // else the broker's offset id.
        match p.get("UNIQ_KEY") {
            Some(uniq) => assert_eq!(uniq, s.msg_id, "{client}: message {i} id"),
            None => assert_eq!(
                message::parse_offset_msg_id(&s.msg_id),
                Some(m.physical_offset),
                "{client}: message {i} id `{}`",
                s.msg_id
            ),
        }
        // VIEW_MESSAGE_BY_ID at the id's offset returns the same record.
        let view = RemotingCommand::request(rc::VIEW_MESSAGE_BY_ID)
            .with_field("offset", m.physical_offset.to_string());
        let r = ours.invoke(ep, view, None).await.unwrap();
        assert_eq!(r.code, code::SUCCESS);
        assert_eq!(message::decode_record(&r.body).unwrap(), m);
    }
    ours.close(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn ali_ons_produces_and_consumes_through_the_broker() {
    let dir = repo_root().join("broker/compat/ali-ons");
    let installed = dir.join("node_modules/ali-ons/package.json").exists()
        && Command::new("node")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
    if require(
        installed,
        "npm ali-ons 3.12.0 (broker/compat/ali-ons) or node",
    )
    .is_none()
    {
        return;
    }
    let mut cmd = Command::new("node");
    cmd.current_dir(&dir).arg("roundtrip.js");
    round_trip("ali-ons", cmd).await;
}

#[tokio::test]
async fn rocketmq_client_rust_produces_and_consumes_through_the_broker() {
    let bin = std::env::var_os("RDMQ_COMPAT_RUST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/compat/debug/rdmq-compat-rust-remoting"));
    if require(
        bin.exists(),
        "crates.io rocketmq-client-rust 1.0.0 fixture (broker/compat/rust-remoting)",
    )
    .is_none()
    {
        return;
    }
    let mut cmd = Command::new(bin);
    cmd.env("RUST_LOG", "warn");
    round_trip("rust", cmd).await;
}
