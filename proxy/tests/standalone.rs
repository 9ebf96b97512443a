//! The stateless proxy against a broker started on its own, as deployed: this test also runs
//! in the build without default features (no embedded broker, no rdma-sim, no ibverbs), where
//! the proxy links neither the store nor the simulator. The broker is the `rdmq-broker` binary
//! of this workspace's target directory (`RDMQ_BROKER_BIN` overrides).

mod common;

use std::io::BufRead;

use common::*;
use rdmq_proxy::config::ProxyConfig;
use rdmq_proxy::pb::Code;

fn broker_binary() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("RDMQ_BROKER_BIN") {
        return p.into();
    }
    // target/<profile>/deps/standalone-… → target/<profile>/rdmq-broker
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_clients_against_a_separately_started_broker() {
    let store = TempDir::new("standalone");
    let mut broker = std::process::Command::new(broker_binary())
        .args(["--listen", "tcp://127.0.0.1:0", "--store-dir"])
        .arg(&store.0)
        .args(["--topic", "orders:2", "--auto-create-topics", "false"])
        .args(["--segment-size", "64m"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(broker.stdout.take().unwrap()).lines();
    let url = loop {
        let line = lines
            .next()
            .expect("the broker printed its endpoint")
            .unwrap();
        if let Some(u) = line.strip_prefix("listening ") {
            break u.to_owned();
        }
    };
    let cfg =
        ProxyConfig::from_args(&["--listen", "127.0.0.1:0", "--broker", &url].map(String::from))
            .unwrap()
            .unwrap();
    let proxy = rdmq_proxy::RunningProxy::start(cfg).await.unwrap();
    let mut c = client(&proxy).await;
    let sent = send(
        &mut c,
        vec![message(
            "orders",
            "01STANDALONE000000000000000001",
            "T",
            body(7, 2048),
        )],
    )
    .await;
    assert_eq!(code(&sent.status), Code::Ok, "{sent:?}");
    let (status, msgs) = receive(&mut c, receive_request("orders", "g1", 16, 30_000, 2_000)).await;
    assert_eq!(status, Code::Ok);
    assert_eq!(msgs.len(), 1);
    assert_eq!(
        msgs[0].body,
        body(7, 2048),
        "the body comes back byte for byte"
    );
    let acked = ack(
        &mut c,
        "orders",
        "g1",
        &[(&sys(&msgs[0]).message_id, &handle(&msgs[0]))],
    )
    .await;
    assert_eq!(code(&acked.status), Code::Ok);
    proxy.shutdown().await.unwrap();
    let _ = broker.kill();
    let _ = broker.wait();
}
