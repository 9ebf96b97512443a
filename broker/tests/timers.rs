//! Timed and delayed messages: delay levels, absolute and relative delivery times, far-future
//! timers kept out of memory, refused times, and a million pending timers across SIGKILL that
//! all fire once, never early and within a second of their time.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{BrokerProcess, Harness, TempDir};
use rdmq_broker::handlers::BrokerInfo;
use rdmq_broker::message::{self, Properties, StoredMessage};
use rdmq_broker::store::now_ms;
use rdmq_transport::protocol::{request_code as rc, response_code as code};
use rdmq_transport::remoting::{Client, ClientConfig};
use rdmq_transport::tcp::TcpTransport;
use rdmq_transport::{Endpoint, RemotingCommand};

fn props(pairs: &[(&str, String)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}\u{1}{v}"))
        .collect::<Vec<_>>()
        .join("\u{2}")
}

fn send(topic: &str, properties: &str, body: &[u8]) -> RemotingCommand {
    RemotingCommand::request(rc::SEND_MESSAGE_V2)
        .with_field("a", "pg")
        .with_field("b", topic)
        .with_field("e", "0")
        .with_field("i", properties)
        .with_body(Bytes::copy_from_slice(body))
}

/// Everything in `topic` queue 0 from `offset` on.
async fn pull_all<T: rdmq_transport::Transport>(
    client: &Client<T>,
    ep: &Endpoint,
    topic: &str,
    queues: i32,
) -> Vec<StoredMessage> {
    let mut out = Vec::new();
    for q in 0..queues {
        let mut offset = 0;
        loop {
            let r = client
                .invoke(
                    ep,
                    common::pull_request("checker", topic, q, offset, 1024),
                    Some(Duration::from_secs(30)),
                )
                .await
                .unwrap();
            if r.code != code::SUCCESS {
                break;
            }
            let ms = message::decode_records(&r.body).unwrap();
            offset = r.field("nextBeginOffset").unwrap().parse().unwrap();
            out.extend(ms);
        }
    }
    out
}

fn due_of(m: &StoredMessage) -> i64 {
    Properties::parse(&m.properties)
        .unwrap()
        .get("TIMER_DELIVER_MS")
        .expect("fired copies keep their delivery time")
        .parse()
        .unwrap()
}

#[tokio::test]
async fn delay_levels_and_delivery_times_fire_on_time() {
    let h = Harness::start("tcp://127.0.0.1:0", BrokerInfo::default(), |_| {}).await;
    let create = RemotingCommand::request(rc::UPDATE_AND_CREATE_TOPIC)
        .with_field("topic", "later")
        .with_field("readQueueNums", "1")
        .with_field("writeQueueNums", "1");
    h.call(create).await;
    let now = now_ms();
    let cases = [
        (
            "level1",
            props(&[("DELAY", "1".into()), ("UNIQ_KEY", "ID-LEVEL1".into())]),
        ),
        (
            "abs",
            props(&[("__STARTDELIVERTIME", (now + 1_500).to_string())]),
        ),
        ("rel", props(&[("TIMER_DELAY_MS", "700".into())])),
        ("now", props(&[("DELAY", "0".into())])),
    ];
    for (body, p) in &cases {
        assert_eq!(
            h.call(send("later", p, body.as_bytes())).await.code,
            code::SUCCESS
        );
    }
    // Only the undelayed one is visible at once.
    let early = pull_all(&h.client, &h.endpoint, "later", 1).await;
    assert_eq!(early.len(), 1);
    assert_eq!(&early[0].body[..], b"now");
    tokio::time::sleep(Duration::from_millis(2_600)).await;
    let all = pull_all(&h.client, &h.endpoint, "later", 1).await;
    assert_eq!(all.len(), 4);
    for m in &all[1..] {
        let late = m.store_timestamp - due_of(m);
        assert!(
            (0..=1_000).contains(&late),
            "{:?} fired {late} ms off",
            m.body
        );
    }
    let level1 = all.iter().find(|m| &m.body[..] == b"level1").unwrap();
    let p = Properties::parse(&level1.properties).unwrap();
    assert_eq!(
        p.get("UNIQ_KEY"),
        Some("ID-LEVEL1"),
        "the message id survives the timer"
    );
    assert_eq!(p.get("REAL_TOPIC"), None);
    h.stop().await;
}

#[tokio::test]
async fn far_future_timers_stay_on_disk_and_bad_times_are_refused() {
    let h = Harness::start("tcp://127.0.0.1:0", BrokerInfo::default(), |_| {}).await;
    let in_memory_before = h.broker.timers.stats().in_memory;
    let three_days = now_ms() + 3 * 24 * 3600 * 1000;
    let r = h
        .call(send(
            "far",
            &props(&[("__STARTDELIVERTIME", three_days.to_string())]),
            b"later",
        ))
        .await;
    assert_eq!(r.code, code::SUCCESS, "{:?}", r.remark);
    let deadline = Instant::now() + Duration::from_secs(5);
    while h.broker.timers.stats().filed < 1 {
        assert!(Instant::now() < deadline, "timer never filed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        h.broker.timers.stats().in_memory,
        in_memory_before,
        "a timer days ahead is held in memory"
    );
    let bucket = h
        .broker
        .store
        .config()
        .dir
        .join("timer")
        .join(format!("{}.bkt", three_days / 60_000));
    assert_eq!(
        std::fs::metadata(&bucket).unwrap().len(),
        20,
        "one 20-byte entry on disk"
    );
    for (what, p) in [
        (
            "beyond the maximum delay",
            props(&[(
                "__STARTDELIVERTIME",
                (now_ms() + 400 * 24 * 3600 * 1000).to_string(),
            )]),
        ),
        ("not a number", props(&[("DELAY", "soon".into())])),
        (
            "relative garbage",
            props(&[("TIMER_DELAY_SEC", "1e3".into())]),
        ),
    ] {
        let r = h.call(send("far", &p, b"x")).await;
        assert_eq!(r.code, code::MESSAGE_ILLEGAL, "{what}: {:?}", r.remark);
    }
    h.stop().await;
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_pending_timers_survive_sigkill_and_fire_within_a_second() {
    let count = env_num("RDMQ_TIMER_COUNT", 1_000_000) as usize;
    let spread_ms = env_num("RDMQ_TIMER_SPREAD_MS", 40_000) as i64;
    let dir = TempDir::new();
    let args = [
        "--flush",
        "async",
        "--segment-size",
        "256M",
        "--topic",
        "due:4",
    ];
    let mut b = BrokerProcess::spawn(dir.path(), &args);
    let client = Client::new(
        TcpTransport::default(),
        ClientConfig {
            connections_per_endpoint: 2,
            ..ClientConfig::default()
        },
    );
    // Schedule them all: due from 30 s after the start, spread over `spread_ms`. Scheduling
    // (5-11 s on 2 cores) and the restart (about 11 s: the timer wheel re-reads every record
    // past its last saved cursor) both come out of that margin; a timer due before the broker
    // is back necessarily fires late.
    let t_send = Instant::now();
    let first_due = now_ms() + 30_000;
    let batches: Vec<Vec<usize>> = (0..count)
        .collect::<Vec<_>>()
        .chunks(1000)
        .map(|c| c.to_vec())
        .collect();
    let mut pending = Vec::new();
    for ids in batches {
        let entries: Vec<(i32, Bytes, String)> = ids
            .iter()
            .map(|i| {
                let due = first_due + (*i as i64 * spread_ms) / count as i64;
                (
                    0,
                    Bytes::from(i.to_le_bytes().to_vec()),
                    format!("__STARTDELIVERTIME\u{1}{due}"),
                )
            })
            .collect();
        let req = RemotingCommand::request(rc::SEND_BATCH_MESSAGE)
            .with_field("a", "pg")
            .with_field("b", "due")
            .with_field("e", (ids[0] % 4).to_string())
            .with_body(message::encode_batch(&entries));
        let (c, ep) = (client.clone(), b.endpoint.clone());
        pending.push(tokio::spawn(async move {
            c.invoke(&ep, req, Some(Duration::from_secs(30))).await
        }));
        if pending.len() >= 8 {
            let r = pending.remove(0).await.unwrap().unwrap();
            assert_eq!(r.code, code::SUCCESS, "{:?}", r.remark);
        }
    }
    for p in pending {
        let r = p.await.unwrap().unwrap();
        assert_eq!(r.code, code::SUCCESS, "{:?}", r.remark);
    }
    let sent_in = t_send.elapsed();
    assert!(
        now_ms() < first_due - 3_000,
        "scheduling took too long ({sent_in:?}) for the test's margins"
    );
    // Kill with everything pending, restart.
    b.kill();
    client.close(Duration::from_millis(100)).await;
    let t_restart = Instant::now();
    let b = BrokerProcess::spawn(dir.path(), &args);
    let restarted_in = t_restart.elapsed();
    let client = Client::new(TcpTransport::default(), ClientConfig::default());
    // Wait for the last one, then read everything back.
    let wait = (first_due + spread_ms + 2_000 - now_ms()).max(0) as u64;
    tokio::time::sleep(Duration::from_millis(wait)).await;
    let fired = pull_all(&client, &b.endpoint, "due", 4).await;
    let mut ids = HashSet::with_capacity(count);
    let mut lateness: Vec<i64> = Vec::with_capacity(fired.len());
    for m in &fired {
        let id = usize::from_le_bytes(m.body[..8].try_into().unwrap());
        assert!(ids.insert(id), "timer {id} fired twice");
        lateness.push(m.store_timestamp - due_of(m));
    }
    lateness.sort_unstable();
    let pct = |p: f64| lateness[((lateness.len() - 1) as f64 * p) as usize];
    eprintln!(
        "{count} timers: scheduled in {sent_in:?}, restart after SIGKILL {restarted_in:?}, fired {} — lateness min {} ms p50 {} ms p99 {} ms max {} ms",
        fired.len(),
        lateness[0],
        pct(0.5),
        pct(0.99),
        lateness[lateness.len() - 1]
    );
    assert_eq!(fired.len(), count, "timers lost");
    assert!(lateness[0] >= 0, "a timer fired {} ms early", -lateness[0]);
    assert!(
        lateness[lateness.len() - 1] <= 1_000,
        "a timer fired {} ms late",
        lateness[lateness.len() - 1]
    );
    client.close(Duration::from_millis(100)).await;
}
