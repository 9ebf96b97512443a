//! A cluster as deployed, on loopback, every piece a process of its own: one `rdmq-namesrv`,
//! three `rdmq-broker`s registered with it, two `rdmq-proxy`s learning brokers and routes from
//! it. The official gRPC clients produce through one proxy and consume through the other; the
//! real remoting clients (ali-ons, rocketmq-client-rust) send and consume through a proxy's
//! remoting endpoint; a fourth broker started under load takes sends within 5 s; a drained
//! broker gets no new sends while it still serves. Pop, ack, batch ack and change of
//! invisible time through the remoting endpoint, as RocketMQ's remoting clients build their
//! handles (no official remoting client here pops: the requests are built by the test). The
//! admin tool against a running cluster.
//!
//! The broker is the `rdmq-broker` binary of this workspace's target directory
//! (`RDMQ_BROKER_BIN` overrides). The client fixtures are those of `tests/clients.rs` and
//! `broker/tests/remoting_clients.rs`; without them their steps print why and pass, unless
//! `RDMQ_REQUIRE_COMPAT=1`.

mod common;

use std::collections::BTreeSet;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{TempDir, body, code, message, req};
use rdmq_proxy::pb::messaging_service_client::MessagingServiceClient;
use rdmq_proxy::pb::{self, Code};
use rdmq_transport::protocol::{request_code as rc, response_code};
use rdmq_transport::remoting::{Client, ClientConfig};
use rdmq_transport::tcp::TcpTransport;
use rdmq_transport::{Endpoint, RemotingCommand};

const TOPIC: &str = "cluster-orders";
const QUEUES: i32 = 4;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn broker_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("RDMQ_BROKER_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().unwrap();
    let p = exe
        .parent()
        .and_then(|d| d.parent())
        .unwrap()
        .join("rdmq-broker");
    assert!(
        p.is_file(),
        "{} is missing: build it first (cargo build -p rdmq-broker) or set RDMQ_BROKER_BIN",
        p.display()
    );
    p
}

fn required(what: &str) -> bool {
    if std::env::var("RDMQ_REQUIRE_COMPAT").is_ok_and(|v| v == "1") {
        panic!("{what} is not installed; run the compat install scripts");
    }
    eprintln!("skipped: {what} is not installed");
    false
}

/// A child process, killed on drop, whose stderr goes to a log file.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    /// The `listening …` / `remoting …` lines it printed.
    lines: Vec<String>,
}

impl Proc {
    /// Spawns `cmd` and waits until it printed `n` lines starting with `listening`.
    fn spawn(name: &str, mut cmd: Command, dir: &Path, n: usize) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let mut lines = Vec::new();
        while lines.len() < n {
            match out.next() {
                Some(Ok(l)) if l.starts_with("listening ") => lines.push(l),
                Some(Ok(_)) => {}
                _ => panic!(
                    "{name} exited before serving:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                ),
            }
        }
        // Keep reading so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in out {});
        Proc {
            name: name.to_owned(),
            child,
            log,
            lines,
        }
    }

    fn url(&self, prefix: &str) -> String {
        self.lines
            .iter()
            .find_map(|l| {
                l.strip_prefix("listening ")
                    .filter(|u| u.starts_with(prefix))
            })
            .unwrap_or_else(|| panic!("{} printed no {prefix} endpoint", self.name))
            .to_owned()
    }

    fn term(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "SIGTERM {}", self.name);
    }

    fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn broker(dir: &TempDir, name: &str, ns: &str) -> Proc {
    let store = dir.0.join(name);
    let mut cmd = Command::new(broker_binary());
    cmd.args(["--listen", "tcp://127.0.0.1:0", "--store-dir"])
        .arg(&store)
        .args(["--broker-name", name, "--namesrv", ns])
        .args([
            "--topic",
            &format!(
                "{TOPIC}:{QUEUES},cluster-python:2,cluster-node:2,ClusterRemoting_ali:2,ClusterRemoting_rust:2"
            ),
        ])
        .args(["--segment-size", "64m", "--unregister-wait-ms", "4000"]);
    Proc::spawn(name, cmd, &dir.0, 1)
}

fn proxy(dir: &TempDir, name: &str, ns: &str) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rdmq-proxy"));
    cmd.args(["--listen", "127.0.0.1:0", "--namesrv", ns]);
    Proc::spawn(name, cmd, &dir.0, 2)
}

/// Messages stored on the broker at `url` for the topic (the sum of its queues' max offsets).
async fn stored(ours: &Client<TcpTransport>, url: &str) -> i64 {
    let ep: Endpoint = url.parse().unwrap();
    let mut total = 0;
    for q in 0..QUEUES {
        let r = ours
            .invoke(
                &ep,
                RemotingCommand::request(rc::GET_MAX_OFFSET)
                    .with_field("topic", TOPIC)
                    .with_field("queueId", q.to_string()),
                Some(Duration::from_secs(3)),
            )
            .await
            .unwrap();
        assert_eq!(r.code, response_code::SUCCESS, "{:?}", r.remark);
        total += r.field("offset").unwrap().parse::<i64>().unwrap();
    }
    total
}

/// Brokers in the name server's route of the topic.
async fn routed(ours: &Client<TcpTransport>, ns: &str) -> BTreeSet<String> {
    let ep: Endpoint = format!("tcp://{ns}").parse().unwrap();
    let r = ours
        .invoke(
            &ep,
            RemotingCommand::request(rc::GET_ROUTEINFO_BY_TOPIC).with_field("topic", TOPIC),
            Some(Duration::from_secs(3)),
        )
        .await
        .unwrap();
    if r.code != response_code::SUCCESS {
        return BTreeSet::new();
    }
    rdmq_protocol::route::TopicRoute::parse(&r.body)
        .unwrap()
        .brokers
        .into_iter()
        .map(|b| b.name)
        .collect()
}

/// Sends through both proxies, one message at a time each, until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Load {
    async fn start(proxies: &[String]) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for (p, addr) in proxies.iter().enumerate() {
            let mut c = MessagingServiceClient::connect(format!("http://{addr}"))
                .await
                .unwrap();
            let (stop, ok) = (stop.clone(), ok.clone());
            tasks.push(tokio::spawn(async move {
                let mut errors = Vec::new();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let id = format!("01CLUSTERLOAD{p}{i:016}");
                    let r = c
                        .send_message(req(
                            "cluster-load",
                            pb::SendMessageRequest {
                                messages: vec![message(TOPIC, &id, "load", body(i as usize, 256))],
                            },
                        ))
                        .await;
                    match r.map(|r| r.into_inner()) {
                        Ok(r) if code(&r.status) == Code::Ok => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        other => errors.push(format!("{other:?}")),
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                errors
            }));
        }
        Load { stop, ok, tasks }
    }

    async fn stop(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut errors = Vec::new();
        for t in self.tasks {
            errors.extend(t.await.unwrap());
        }
        (self.ok.load(Ordering::Relaxed), errors)
    }
}

/// The official Python or Node gRPC client: produce through one proxy, consume through the
/// other, every message back once.
async fn grpc_client_through_both_proxies(name: &str, produce_via: &str, consume_via: &str) {
    let root = repo_root();
    let (program, script) = match name {
        "python" => (
            root.join("proxy/compat/python/.venv/bin/python"),
            root.join("proxy/compat/python/client.py"),
        ),
        _ => (
            PathBuf::from("node"),
            root.join("proxy/compat/node/client.js"),
        ),
    };
    let installed = match name {
        "python" => program.exists(),
        _ => root
            .join("proxy/compat/node/node_modules/rocketmq-client-nodejs")
            .exists(),
    };
    if !installed && !required(&format!("the {name} gRPC client")) {
        return;
    }
    let run = |args: Vec<String>| {
        let mut cmd = Command::new(&program);
        cmd.arg(&script).args(args);
        async move {
            let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
                .await
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(
                out.status.success(),
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            stdout
        }
    };
    let s = |v: &str| v.to_owned();
    let topic = format!("cluster-{name}");
    let sizes = "10,1000,5000,20000,1,300";
    let sent = run(vec![
        s("produce"),
        s(produce_via),
        topic.clone(),
        s(sizes),
        format!("cluster{name}"),
    ])
    .await;
    let sent: BTreeSet<String> = sent
        .lines()
        .filter_map(|l| l.strip_prefix("SENT "))
        .map(|l| l.split_whitespace().nth(1).unwrap().to_ascii_uppercase())
        .collect();
    assert_eq!(sent.len(), 6, "{name}: every send acknowledged");
    let got = run(vec![
        s("consume"),
        s(consume_via),
        topic.clone(),
        format!("cluster-{name}"),
        s("6"),
        s("ack"),
        s("30"),
    ])
    .await;
    let got: BTreeSet<String> = got
        .lines()
        .filter_map(|l| l.strip_prefix("RECEIVED "))
        .map(|j| {
            let v: serde_json::Value = serde_json::from_str(j).unwrap();
            v["id"].as_str().unwrap().to_ascii_uppercase()
        })
        .collect();
    assert!(
        sent.is_subset(&got),
        "{name}: produced through one proxy, consumed through the other: sent {sent:?}, got {got:?}"
    );
}

/// A real remoting client with the proxy's remoting endpoint as its name server: every send
/// acknowledged, spread over the brokers' queues, and consumed back at the place it was put.
async fn remoting_client_through_the_proxy(name: &str, remoting: &str) {
    const COUNT: usize = 12;
    let root = repo_root();
    let (mut cmd, installed) = match name {
        "ali" => {
            let dir = root.join("broker/compat/ali-ons");
            let mut cmd = Command::new("node");
            cmd.current_dir(&dir).arg("roundtrip.js");
            (cmd, dir.join("node_modules/ali-ons/package.json").exists())
        }
        _ => {
            let bin = root.join("target/compat/debug/rdmq-compat-rust-remoting");
            let mut cmd = Command::new(&bin);
            cmd.env("RUST_LOG", "warn");
            (cmd, bin.exists())
        }
    };
    if !installed && !required(&format!("the {name} remoting client")) {
        return;
    }
    let topic = format!("ClusterRemoting_{name}");
    let run = format!("c{}", std::process::id());
    cmd.args([remoting, topic.as_str(), &COUNT.to_string(), run.as_str()]);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{name} through the proxy: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let mut sent = std::collections::BTreeMap::new();
    let mut received = std::collections::BTreeMap::new();
    let mut done = None;
    for line in stdout.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["SENT", i, q, off, ..] => {
                sent.insert(i.to_string(), (q.to_string(), off.to_string()));
            }
            ["RECEIVED", i, q, off, ..] => {
                received.insert(i.to_string(), (q.to_string(), off.to_string()));
            }
            ["DONE", n] => done = n.parse::<usize>().ok(),
            _ => {}
        }
    }
    assert_eq!(
        sent.len(),
        COUNT,
        "{name}: every send acknowledged\n{stdout}"
    );
    assert_eq!(done, Some(COUNT), "{name}: everything consumed back");
    for (i, place) in &sent {
        assert_eq!(received.get(i), Some(place), "{name}: message {i} moved");
    }
    let queues: BTreeSet<&String> = sent.values().map(|(q, _)| q).collect();
    assert!(
        queues.len() > 2,
        "{name}: sends spread over more than one broker's queues: {queues:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_server_cluster_serves_through_either_proxy_and_follows_membership() {
    let dir = TempDir::new("cluster");
    let ns = {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rdmq-namesrv"));
        cmd.args(["--listen", "127.0.0.1:0"]);
        Proc::spawn("namesrv", cmd, &dir.0, 1)
    };
    let ns_addr = ns.url("tcp://").trim_start_matches("tcp://").to_owned();
    let mut brokers: Vec<Proc> = ["broker-a", "broker-b", "broker-c"]
        .iter()
        .map(|n| broker(&dir, n, &ns_addr))
        .collect();
    let proxies = [
        proxy(&dir, "proxy-1", &ns_addr),
        proxy(&dir, "proxy-2", &ns_addr),
    ];
    let grpc: Vec<String> = proxies
        .iter()
        .map(|p| p.url("grpc://").trim_start_matches("grpc://").to_owned())
        .collect();
    let ours = Client::new(TcpTransport::default(), ClientConfig::default());
    let deadline = Instant::now() + Duration::from_secs(10);
    while routed(&ours, &ns_addr).await.len() < 3 {
        assert!(
            Instant::now() < deadline,
            "the brokers registered within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The official gRPC clients, through either proxy.
    grpc_client_through_both_proxies("python", &grpc[0], &grpc[1]).await;
    grpc_client_through_both_proxies("node", &grpc[1], &grpc[0]).await;

    // Real remoting clients, with a proxy's remoting endpoint as their name server.
    let remoting = proxies[0]
        .url("remoting://")
        .trim_start_matches("remoting://")
        .to_owned();
    remoting_client_through_the_proxy("ali", &remoting).await;
    remoting_client_through_the_proxy("rust", &remoting).await;

    // Under load through both proxies, a fourth broker joins.
    let load = Load::start(&grpc).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t0 = Instant::now();
    brokers.push(broker(&dir, "broker-d", &ns_addr));
    let d_url = brokers[3].url("tcp://");
    let joined = loop {
        if stored(&ours, &d_url).await > 0 {
            break t0.elapsed();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "broker-d took no send within 5 s of its start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!("measured: broker-d took its first send {joined:?} after it was started");

    // Drain broker-b: it unregisters, then serves 4 s more; after the proxies' 2 s route
    // refresh it gets nothing new, while the others keep taking the load.
    let b_url = brokers[1].url("tcp://");
    let others: Vec<String> = [0, 2, 3]
        .iter()
        .map(|&i| brokers[i].url("tcp://"))
        .collect();
    brokers[1].term();
    tokio::time::sleep(Duration::from_millis(2_600)).await;
    let b_then = stored(&ours, &b_url).await;
    let mut others_then = 0;
    for o in &others {
        others_then += stored(&ours, o).await;
    }
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let b_now = stored(&ours, &b_url).await;
    let mut others_now = 0;
    for o in &others {
        others_now += stored(&ours, o).await;
    }
    assert_eq!(
        b_now, b_then,
        "the drained broker took new sends after unregistering"
    );
    assert!(others_now > others_then, "the load went on elsewhere");
    let status = tokio::task::block_in_place(|| brokers[1].child.wait().unwrap());
    assert!(
        status.success(),
        "the drained broker stopped cleanly:\n{}",
        brokers[1].log_tail()
    );
    let (sent, errors) = load.stop().await;
    assert!(
        errors.is_empty(),
        "{} of {} sends failed, first: {:?}",
        errors.len(),
        sent as usize + errors.len(),
        errors.first()
    );
    println!("measured: {sent} sends through 2 proxies, none failed, across a join and a drain");
    ours.close(Duration::from_millis(200)).await;
    drop(proxies);
    drop(brokers);
    drop(ns);
}

/// Runs `rdmq-admin` with `args`; its exit code and stdout (stderr on failure).
/// SEND_MESSAGE_V2 of `body` to `topic`'s (virtual) queue `queue`, as remoting producers send it.
fn send_v2(topic: &str, queue: i32, properties: &str, body: String) -> RemotingCommand {
    RemotingCommand::request(rc::SEND_MESSAGE_V2)
        .with_field("a", "test-producer")
        .with_field("b", topic)
        .with_field("c", "TBW102")
        .with_field("d", "4")
        .with_field("e", queue.to_string())
        .with_field("f", "0")
        .with_field("g", rdmq_protocol::now_ms().to_string())
        .with_field("h", "0")
        .with_field("i", properties)
        .with_field("j", "0")
        .with_field("k", "false")
        .with_body(body.into_bytes())
}

/// A name server, `broker-a` and `broker-b`, and a proxy with its remoting endpoint.
struct SmallCluster {
    ns_addr: String,
    remoting: Endpoint,
    _procs: Vec<Proc>,
    _dir: TempDir,
}

impl SmallCluster {
    fn start(name: &str) -> SmallCluster {
        let dir = TempDir::new(name);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rdmq-namesrv"));
        cmd.args(["--listen", "127.0.0.1:0"]);
        let ns = Proc::spawn("namesrv", cmd, &dir.0, 1);
        let ns_addr = ns.url("tcp://").trim_start_matches("tcp://").to_owned();
        let mut procs = vec![ns];
        procs.extend(
            ["broker-a", "broker-b"]
                .iter()
                .map(|n| broker(&dir, n, &ns_addr)),
        );
        let proxy = proxy(&dir, "proxy", &ns_addr);
        let remoting: Endpoint = format!(
            "tcp://{}",
            proxy.url("remoting://").trim_start_matches("remoting://")
        )
        .parse()
        .unwrap();
        procs.push(proxy);
        SmallCluster {
            ns_addr,
            remoting,
            _procs: procs,
            _dir: dir,
        }
    }
}

fn admin(ns: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rdmq-admin"))
        .args(["--namesrv", ns])
        .args(args)
        .output()
        .unwrap();
    let code = out.status.code().unwrap_or(-1);
    let text = if code == 0 { out.stdout } else { out.stderr };
    (code, String::from_utf8_lossy(&text).into_owned())
}

fn admin_json(ns: &str, args: &[&str]) -> Vec<serde_json::Value> {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let (code, out) = admin(ns, &a);
    assert_eq!(code, 0, "rdmq-admin {args:?}: {out}");
    serde_json::from_str::<serde_json::Value>(&out)
        .unwrap_or_else(|e| panic!("rdmq-admin {args:?} printed no JSON ({e}): {out}"))
        .as_array()
        .unwrap()
        .clone()
}

fn sum(rows: &[serde_json::Value], col: &str) -> i64 {
    rows.iter().map(|r| r[col].as_i64().unwrap_or(0)).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rdmq_admin_operates_a_running_cluster() {
    let c = SmallCluster::start("admin");
    let (ns, remoting) = (&c.ns_addr, &c.remoting);

    let brokers = admin_json(ns, &["cluster", "list"]);
    let names: BTreeSet<&str> = brokers
        .iter()
        .map(|b| b["broker"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        BTreeSet::from(["broker-a", "broker-b"]),
        "{brokers:?}"
    );
    let (code, text) = admin(ns, &["cluster", "list"]);
    assert_eq!(code, 0);
    assert!(text.starts_with("CLUSTER"), "a table with a header: {text}");

    // Create a topic on both brokers; their registrations bring it to the name server.
    let created = admin_json(ns, &["topic", "create", "admin-t", "--queues", "3"]);
    assert_eq!(created.len(), 2);
    let deadline = Instant::now() + Duration::from_secs(5);
    let route = loop {
        let (code, out) = admin(ns, &["--json", "topic", "route", "admin-t"]);
        if code == 0 {
            let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
            if rows.len() == 2 {
                break rows;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the new topic was routed within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(route.iter().all(|r| r["write_queues"] == 3), "{route:?}");
    assert!(
        admin_json(ns, &["topic", "list"])
            .iter()
            .any(|t| t["topic"] == "admin-t")
    );

    // Six messages through the proxy's remoting endpoint, one per virtual queue.
    let ours = Client::new(TcpTransport::default(), ClientConfig::default());
    let mut ids = Vec::new();
    for q in 0..6 {
        let props = format!("KEYS\u{1}admin-key-{q}\u{2}TAGS\u{1}t\u{2}");
        let r = ours
            .invoke(
                remoting,
                send_v2("admin-t", q, &props, format!("admin body {q}")),
                Some(Duration::from_secs(5)),
            )
            .await
            .unwrap();
        assert_eq!(r.code, response_code::SUCCESS, "{:?}", r.remark);
        assert_eq!(
            r.field("queueId"),
            Some(q.to_string().as_str()),
            "virtual queue id back"
        );
        ids.push(r.field("msgId").unwrap().to_owned());
    }
    let status = admin_json(ns, &["topic", "status", "admin-t"]);
    assert_eq!(status.len(), 6, "3 queues on each of 2 brokers");
    assert_eq!(sum(&status, "max_offset"), 6, "{status:?}");

    // Messages by offset id and by key.
    let by_id = admin_json(ns, &["message", "id", &ids[4]]);
    assert_eq!(by_id.len(), 1);
    assert_eq!(by_id[0]["body"], "admin body 4");
    assert_eq!(
        by_id[0]["broker"], "broker-b",
        "virtual queue 4 is broker-b's queue 1"
    );
    let by_key = admin_json(ns, &["message", "key", "admin-t", "admin-key-2"]);
    assert_eq!(by_key.len(), 1);
    assert_eq!(by_key[0]["body"], "admin body 2");

    // Groups, progress and reset.
    assert_eq!(
        admin_json(ns, &["group", "create", "admin-g", "--max-attempts", "3"]).len(),
        2
    );
    let progress = admin_json(ns, &["consumer", "progress", "admin-g", "admin-t"]);
    assert_eq!(
        sum(&progress, "lag"),
        6,
        "nothing consumed yet: {progress:?}"
    );
    let reset = admin_json(
        ns,
        &["consumer", "reset", "admin-g", "admin-t", "--time", "now"],
    );
    assert_eq!(sum(&reset, "new_offset"), 6, "{reset:?}");
    let progress = admin_json(ns, &["consumer", "progress", "admin-g", "admin-t"]);
    assert_eq!(
        sum(&progress, "lag"),
        0,
        "reset to now skips everything: {progress:?}"
    );
    assert_eq!(admin_json(ns, &["group", "delete", "admin-g"]).len(), 2);
    let (code, err) = admin(ns, &["group", "delete", "admin-g"]);
    assert_eq!(code, 2);
    assert!(err.contains("does not exist"), "{err}");

    // Delete the topic: gone from the brokers and the name server.
    assert_eq!(admin_json(ns, &["topic", "delete", "admin-t"]).len(), 2);
    let (code, err) = admin(ns, &["topic", "route", "admin-t"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("does not exist"), "{err}");

    // Bad input says what is wrong.
    for (args, want_code, want) in [
        (vec!["topic", "create", "bad/name"], 2, "topic"),
        (vec!["topic", "create", "t", "--queues", "0"], 2, "--queues"),
        (
            vec!["topic", "status", "no-such-topic"],
            2,
            "does not exist",
        ),
        (
            vec!["consumer", "reset", "g", "t", "--time", "soon"],
            2,
            "time",
        ),
        (vec!["message", "id", "not-an-id"], 2, "--topic"),
        (vec!["frobnicate"], 2, "frobnicate"),
    ] {
        let (code, err) = admin(ns, &args);
        assert_eq!(code, want_code, "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    let (code, err) = admin("127.0.0.1:1", &["cluster", "list"]);
    assert_eq!(code, 1);
    assert!(err.contains("unreachable"), "{err}");
    let (code, err) = admin("nohost", &["cluster", "list"]);
    assert_eq!(code, 2);
    assert!(err.contains("HOST:PORT"), "{err}");
    ours.close(Duration::from_millis(100)).await;
}

/// What a RocketMQ remoting client does with a POP answer: a record's `POP_CK` (a retry copy)
/// is its handle; otherwise the handle is built from the header and the broker name the client
/// popped from, here the proxy's virtual broker.
fn rocketmq_popped(r: &RemotingCommand) -> Vec<(rdmq_protocol::message::StoredMessage, String)> {
    let field = |k: &str| r.field(k).unwrap_or_else(|| panic!("POP answer lacks {k}"));
    let starts: Vec<(String, String, String)> = field("startOffsetInfo")
        .split(';')
        .map(|e| {
            let p: Vec<&str> = e.split(' ').collect();
            (p[0].to_owned(), p[1].to_owned(), p[2].to_owned())
        })
        .collect();
    rdmq_protocol::message::decode_records(&r.body)
        .unwrap()
        .into_iter()
        .map(|m| {
            let props = rdmq_protocol::message::Properties::parse(&m.properties).unwrap();
            if let Some(ck) = props.get("POP_CK") {
                return (m.clone(), ck.to_owned());
            }
            let q = m.queue_id.to_string();
            let ck = &starts
                .iter()
                .find(|(f, sq, _)| f == "0" && *sq == q)
                .unwrap_or_else(|| panic!("startOffsetInfo lists queue {q}: {starts:?}"))
                .2;
            let extra = format!(
                "{ck} {} {} {} 0 rdmq-proxy {q} {}",
                field("popTime"),
                field("invisibleTime"),
                field("reviveQid"),
                m.queue_offset
            );
            (m, extra)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remoting_clients_pop_and_ack_through_the_proxy() {
    use rdmq_protocol::ExtraInfo;
    let c = SmallCluster::start("rpop");
    let (ns, remoting) = (&c.ns_addr, &c.remoting);
    assert_eq!(
        admin_json(ns, &["topic", "create", "pop-t", "--queues", "2"]).len(),
        2
    );
    assert_eq!(admin_json(ns, &["group", "create", "pop-g"]).len(), 2);
    let ours = Client::new(TcpTransport::default(), ClientConfig::default());
    let call = |c: RemotingCommand| {
        let ours = &ours;
        async move {
            ours.invoke(remoting, c, Some(Duration::from_secs(10)))
                .await
                .unwrap()
        }
    };
    // The route lists both brokers' queues once the name server has them: 4 virtual queues.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r =
            call(RemotingCommand::request(rc::GET_ROUTEINFO_BY_TOPIC).with_field("topic", "pop-t"))
                .await;
        if r.code == response_code::SUCCESS
            && rdmq_protocol::route::TopicRoute::parse(&r.body)
                .unwrap()
                .queues[0]
                .write_queues
                == 4
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pop-t not routed to both brokers"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for i in 0..8 {
        let r = call(send_v2(
            "pop-t",
            i % 4,
            "TAGS\u{1}t\u{2}",
            format!("pop body {i}"),
        ))
        .await;
        assert_eq!(r.code, response_code::SUCCESS, "{:?}", r.remark);
    }
    let pop = |invisible_ms: u64, poll_ms: u64| {
        RemotingCommand::request(rc::POP_MESSAGE)
            .with_field("consumerGroup", "pop-g")
            .with_field("topic", "pop-t")
            .with_field("queueId", "-1")
            .with_field("maxMsgNums", "32")
            .with_field("invisibleTime", invisible_ms.to_string())
            .with_field("pollTime", poll_ms.to_string())
            .with_field("bornTime", rdmq_protocol::now_ms().to_string())
            .with_field("initMode", "0")
            .with_field("expType", "TAG")
            .with_field("exp", "*")
            .with_field("order", "false")
    };
    // Pop everything, from both brokers, in virtual terms.
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.len() < 8 {
        assert!(Instant::now() < deadline, "popped {} of 8", got.len());
        let r = call(pop(4000, 300)).await;
        if r.code == response_code::SUCCESS {
            got.extend(rocketmq_popped(&r));
        }
    }
    let bodies: BTreeSet<String> = got
        .iter()
        .map(|(m, _)| String::from_utf8_lossy(&m.body).into_owned())
        .collect();
    assert_eq!(bodies.len(), 8, "each message once: {bodies:?}");
    let queues: BTreeSet<i32> = got.iter().map(|(m, _)| m.queue_id).collect();
    assert_eq!(queues, BTreeSet::from([0, 1, 2, 3]), "virtual queue ids");
    let ack = |topic: &str, q: i32, off: i64, extra: &str| {
        RemotingCommand::request(rc::ACK_MESSAGE)
            .with_field("consumerGroup", "pop-g")
            .with_field("topic", topic)
            .with_field("queueId", q.to_string())
            .with_field("offset", off.to_string())
            .with_field("extraInfo", extra)
    };
    got.sort_by_key(|(m, _)| (m.queue_id, m.queue_offset));
    // Ack four one by one (two per broker).
    for (m, extra) in [&got[0], &got[2], &got[4], &got[6]] {
        let r = call(ack("pop-t", m.queue_id, m.queue_offset, extra)).await;
        assert_eq!(r.code, response_code::SUCCESS, "{:?}", r.remark);
    }
    // Batch-ack one of each broker in RocketMQ's body: the proxy splits it.
    let entry = |(m, extra): &(rdmq_protocol::message::StoredMessage, String)| {
        let e = ExtraInfo::parse(extra).unwrap();
        serde_json::json!({"c": "pop-g", "t": "pop-t", "r": "0", "so": m.queue_offset,
            "q": m.queue_id, "rq": 0, "pt": e.pop_time, "it": e.invisible, "b": [1]})
    };
    let body =
        serde_json::json!({"brokerName": "rdmq-proxy", "acks": [entry(&got[1]), entry(&got[5])]});
    let r = call(
        RemotingCommand::request(rc::BATCH_ACK_MESSAGE).with_body(body.to_string().into_bytes()),
    )
    .await;
    assert_eq!(r.code, response_code::SUCCESS, "{:?}", r.remark);
    // Change one to 300 ms; leave the last to its 4 s.
    let (m, extra) = &got[3];
    let r = call(
        RemotingCommand::request(rc::CHANGE_MESSAGE_INVISIBLETIME)
            .with_field("consumerGroup", "pop-g")
            .with_field("topic", "pop-t")
            .with_field("queueId", m.queue_id.to_string())
            .with_field("offset", m.queue_offset.to_string())
            .with_field("extraInfo", extra)
            .with_field("invisibleTime", "300"),
    )
    .await;
    assert_eq!(r.code, response_code::SUCCESS, "{:?}", r.remark);
    // Acked handles are spent; bad handles and queues are refused with the reason.
    let r = call(ack(
        "pop-t",
        got[0].0.queue_id,
        got[0].0.queue_offset,
        &got[0].1,
    ))
    .await;
    assert_eq!(
        r.code,
        response_code::NO_MESSAGE,
        "acked twice: {:?}",
        r.remark
    );
    let r = call(ack("pop-t", 0, 0, "garbage")).await;
    assert_eq!(r.code, response_code::INVALID_PARAMETER, "{:?}", r.remark);
    let r = call(ack("pop-t", 99, 0, &got[7].1)).await;
    assert_eq!(r.code, response_code::INVALID_PARAMETER, "{:?}", r.remark);
    // The changed and the unacked message come back as retry copies, each acked as it
    // arrives; acked ones never come back.
    let want: BTreeSet<Vec<u8>> = [&got[3], &got[7]]
        .iter()
        .map(|(m, _)| m.body.to_vec())
        .collect();
    let mut back = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while back != want {
        assert!(Instant::now() < deadline, "redelivered {} of 2", back.len());
        let r = call(pop(4000, 500)).await;
        if r.code != response_code::SUCCESS {
            continue;
        }
        for (m, extra) in rocketmq_popped(&r) {
            assert!(
                want.contains(&m.body.to_vec()),
                "an acked message came back: {m:?}"
            );
            assert_eq!(m.topic, "pop-t", "retry copies under their topic");
            assert!(m.reconsume_times >= 1, "a redelivery: {m:?}");
            let e = ExtraInfo::parse(&extra).expect("a retry copy's POP_CK is an extraInfo");
            assert_ne!(e.retry, 0, "{extra}");
            assert_eq!(e.broker, "rdmq-proxy", "{extra}");
            let r = call(ack(
                &e.stored_topic("pop-t", "pop-g"),
                e.queue,
                e.offset,
                &extra,
            ))
            .await;
            assert_eq!(r.code, response_code::SUCCESS, "{extra}: {:?}", r.remark);
            back.insert(m.body.to_vec());
        }
    }
    // Past every invisible time nothing is left.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let r = call(pop(4000, 0)).await;
    assert_ne!(
        r.code,
        response_code::SUCCESS,
        "delivered after its ack: {:?}",
        rocketmq_popped(&r)
    );

    // An operator's reset moves a Pop group's cursor: back an hour, everything again.
    let reset = admin_json(
        ns,
        &["consumer", "reset", "pop-g", "pop-t", "--time", "-1h"],
    );
    assert_eq!(reset.len(), 4, "{reset:?}");
    assert_eq!(sum(&reset, "new_offset"), 0, "{reset:?}");
    let progress = admin_json(ns, &["consumer", "progress", "pop-g", "pop-t"]);
    assert_eq!(sum(&progress, "lag"), 8, "{progress:?}");
    let mut again = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while again.len() < 8 {
        assert!(
            Instant::now() < deadline,
            "popped {} of 8 after the reset",
            again.len()
        );
        let r = call(pop(60_000, 300)).await;
        if r.code == response_code::SUCCESS {
            for (m, _) in rocketmq_popped(&r) {
                assert!(
                    again.insert(m.body.to_vec()),
                    "twice after the reset: {m:?}"
                );
            }
        }
    }
    // A group reset before its first pop starts where the reset put it (here: the end).
    assert_eq!(admin_json(ns, &["group", "create", "pop-h"]).len(), 2);
    let reset = admin_json(
        ns,
        &["consumer", "reset", "pop-h", "pop-t", "--time", "now"],
    );
    assert_eq!(sum(&reset, "new_offset"), 8, "{reset:?}");
    let r = call(pop(60_000, 0).with_field("consumerGroup", "pop-h")).await;
    assert_ne!(
        r.code,
        response_code::SUCCESS,
        "popped below the reset: {:?}",
        rocketmq_popped(&r)
    );
    ours.close(Duration::from_millis(100)).await;
}
