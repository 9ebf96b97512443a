//! Pop consumption through the real server and client: receive and ack, redelivery after the
//! invisible time with the attempt counted, change-invisible, dead-lettering, FIFO order with
//! concurrent consumers, broker-side tag filters, bad input, and pop state across SIGKILL.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{BrokerProcess, Harness, TempDir};
use rdmq_broker::handlers::BrokerInfo;
use rdmq_broker::message::{self, Properties, StoredMessage};
use rdmq_transport::protocol::{request_code as rc, response_code as code};
use rdmq_transport::remoting::{Client, ClientConfig};
use rdmq_transport::tcp::TcpTransport;
use rdmq_transport::{Endpoint, RemotingCommand};

fn props(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}\u{1}{v}"))
        .collect::<Vec<_>>()
        .join("\u{2}")
}

fn create_topic(topic: &str, queues: u32) -> RemotingCommand {
    RemotingCommand::request(rc::UPDATE_AND_CREATE_TOPIC)
        .with_field("topic", topic)
        .with_field("readQueueNums", queues.to_string())
        .with_field("writeQueueNums", queues.to_string())
}

fn send(topic: &str, queue: i32, properties: &str, body: &[u8]) -> RemotingCommand {
    RemotingCommand::request(rc::SEND_MESSAGE_V2)
        .with_field("a", "pg")
        .with_field("b", topic)
        .with_field("e", queue.to_string())
        .with_field("i", properties)
        .with_body(Bytes::copy_from_slice(body))
}

#[derive(Clone)]
struct PopArgs<'a> {
    group: &'a str,
    topic: &'a str,
    max: i64,
    invisible_ms: i64,
    poll_ms: i64,
    exp: &'a str,
    order: bool,
}

impl<'a> PopArgs<'a> {
    fn new(group: &'a str, topic: &'a str) -> Self {
        Self {
            group,
            topic,
            max: 32,
            invisible_ms: 5_000,
            poll_ms: 0,
            exp: "*",
            order: false,
        }
    }

    fn request(&self) -> RemotingCommand {
        RemotingCommand::request(rc::POP_MESSAGE)
            .with_field("consumerGroup", self.group)
            .with_field("topic", self.topic)
            .with_field("queueId", "-1")
            .with_field("maxMsgNums", self.max.to_string())
            .with_field("invisibleTime", self.invisible_ms.to_string())
            .with_field("pollTime", self.poll_ms.to_string())
            .with_field("bornTime", "0")
            .with_field("initMode", "0")
            .with_field("expType", "TAG")
            .with_field("exp", self.exp)
            .with_field("order", self.order.to_string())
            .with_field("rdmqHandles", "1")
    }

    /// The request as RocketMQ clients and proxies send it (no rdmqHandles field).
    fn foreign_request(&self) -> RemotingCommand {
        let mut r = self.request();
        r.ext_fields.as_mut().unwrap().remove("rdmqHandles");
        r
    }
}

/// A popped message and its receipt handle.
struct Got {
    m: StoredMessage,
    handle: String,
}

impl Got {
    fn prop(&self, k: &str) -> Option<String> {
        Properties::parse(&self.m.properties)
            .unwrap()
            .get(k)
            .map(str::to_owned)
    }
}

fn popped(r: &RemotingCommand) -> Vec<Got> {
    if r.code != code::SUCCESS {
        assert!(
            r.code == code::POLLING_TIMEOUT || r.code == code::PULL_NOT_FOUND,
            "pop failed: {} {:?}",
            r.code,
            r.remark
        );
        return Vec::new();
    }
    message::decode_records(&r.body)
        .unwrap()
        .into_iter()
        .map(|m| {
            let handle = Properties::parse(&m.properties)
                .unwrap()
                .get("POP_CK")
                .expect("popped record carries its handle")
                .to_owned();
            Got { m, handle }
        })
        .collect()
}

fn ack(group: &str, topic: &str, handle: &str) -> RemotingCommand {
    RemotingCommand::request(rc::ACK_MESSAGE)
        .with_field("consumerGroup", group)
        .with_field("topic", topic)
        .with_field("extraInfo", handle)
}

fn change(group: &str, topic: &str, handle: &str, invisible_ms: i64) -> RemotingCommand {
    ack(group, topic, handle)
        .with_field("invisibleTime", invisible_ms.to_string())
        .tap_code(rc::CHANGE_MESSAGE_INVISIBLETIME)
}

trait TapCode {
    fn tap_code(self, code: i32) -> Self;
}

impl TapCode for RemotingCommand {
    fn tap_code(mut self, code: i32) -> Self {
        self.code = code;
        self
    }
}

async fn pop_until(h: &Harness, args: &PopArgs<'_>, want: usize, within: Duration) -> Vec<Got> {
    let deadline = Instant::now() + within;
    let mut all = Vec::new();
    while all.len() < want && Instant::now() < deadline {
        let mut a = args.clone();
        a.poll_ms = 1_000;
        all.extend(popped(&h.call(a.request()).await));
    }
    all
}

async fn broker() -> Harness {
    Harness::start("tcp://127.0.0.1:0", BrokerInfo::default(), |_| {}).await
}

#[tokio::test]
async fn receive_then_ack_and_nothing_comes_back() {
    let h = broker().await;
    h.call(create_topic("orders", 2)).await;
    for i in 0..6 {
        let r = h
            .call(send(
                "orders",
                i % 2,
                &props(&[("TAGS", "t"), ("KEYS", &format!("k{i}"))]),
                format!("m{i}").as_bytes(),
            ))
            .await;
        assert_eq!(r.code, code::SUCCESS);
    }
    let got = popped(&h.call(PopArgs::new("g1", "orders").request()).await);
    assert_eq!(got.len(), 6);
    let mut bodies: Vec<_> = got
        .iter()
        .map(|g| String::from_utf8(g.m.body.to_vec()).unwrap())
        .collect();
    bodies.sort();
    assert_eq!(bodies, ["m0", "m1", "m2", "m3", "m4", "m5"]);
    assert!(
        got.iter()
            .all(|g| g.m.reconsume_times == 0 && g.m.topic == "orders")
    );
    // While invisible, nothing more to pop.
    assert!(popped(&h.call(PopArgs::new("g1", "orders").request()).await).is_empty());
    for g in &got {
        let r = h.call(ack("g1", "orders", &g.handle)).await;
        assert_eq!(r.code, code::SUCCESS, "{:?}", r.remark);
    }
    // Acked twice: refused, clearly.
    let r = h.call(ack("g1", "orders", &got[0].handle)).await;
    assert_eq!(r.code, code::NO_MESSAGE);
    assert!(r.remark.unwrap().contains("already acked"));
    // Another group sees everything independently.
    assert_eq!(
        popped(&h.call(PopArgs::new("g2", "orders").request()).await).len(),
        6
    );
    h.stop().await;
}

#[tokio::test]
async fn unacked_messages_come_back_with_attempt_two() {
    let h = broker().await;
    h.call(create_topic("redo", 1)).await;
    let p = props(&[
        ("TAGS", "x"),
        ("UNIQ_KEY", "AC1100000001000000000000000000AA"),
    ]);
    h.call(send("redo", 0, &p, b"payload")).await;
    let mut args = PopArgs::new("g", "redo");
    args.invisible_ms = 400;
    let first = popped(&h.call(args.request()).await);
    assert_eq!(first.len(), 1);
    // No ack: after the invisible time it is delivered again, attempt 2.
    let t0 = Instant::now();
    let again = pop_until(&h, &args, 1, Duration::from_secs(5)).await;
    assert_eq!(again.len(), 1, "not redelivered");
    assert!(t0.elapsed() >= Duration::from_millis(250));
    let g = &again[0];
    assert_eq!(g.m.reconsume_times, 1, "delivery attempt 2");
    assert_eq!(
        g.m.topic, "redo",
        "retry copies are shown under their topic"
    );
    assert_eq!(&g.m.body[..], b"payload");
    assert_eq!(
        g.prop("UNIQ_KEY").as_deref(),
        Some("AC1100000001000000000000000000AA")
    );
    assert_eq!(g.prop("RETRY_TOPIC").as_deref(), Some("redo"));
    // The first handle is dead; the new one acks.
    let r = h.call(ack("g", "redo", &first[0].handle)).await;
    assert_eq!(r.code, code::NO_MESSAGE, "{:?}", r.remark);
    assert_eq!(
        h.call(ack("g", "redo", &g.handle)).await.code,
        code::SUCCESS
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(popped(&h.call(args.request()).await).is_empty());
    h.stop().await;
}

#[tokio::test]
async fn change_invisible_extends_and_retires_the_old_handle() {
    let h = broker().await;
    h.call(create_topic("slow", 1)).await;
    h.call(send("slow", 0, "", b"work")).await;
    let mut args = PopArgs::new("g", "slow");
    args.invisible_ms = 500;
    let got = popped(&h.call(args.request()).await);
    let r = h.call(change("g", "slow", &got[0].handle, 3_000)).await;
    assert_eq!(r.code, code::SUCCESS, "{:?}", r.remark);
    let new_handle = r.field("receiptHandle").unwrap().to_owned();
    assert_ne!(new_handle, got[0].handle);
    // Old handle: refused for ack and for another change.
    assert_eq!(
        h.call(ack("g", "slow", &got[0].handle)).await.code,
        code::NO_MESSAGE
    );
    assert_eq!(
        h.call(change("g", "slow", &got[0].handle, 100)).await.code,
        code::NO_MESSAGE
    );
    // Past the original invisible time it is still hidden.
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(popped(&h.call(args.request()).await).is_empty());
    assert_eq!(
        h.call(ack("g", "slow", &new_handle)).await.code,
        code::SUCCESS
    );
    h.stop().await;
}

#[tokio::test]
async fn max_attempts_move_the_message_to_the_dead_letter_topic() {
    let h = broker().await;
    h.call(create_topic("poison", 1)).await;
    let group = RemotingCommand::request(rc::UPDATE_AND_CREATE_SUBSCRIPTIONGROUP)
        .with_body(br#"{"groupName":"fragile","retryMaxTimes":2}"#.to_vec());
    assert_eq!(h.call(group).await.code, code::SUCCESS);
    h.call(send("poison", 0, &props(&[("KEYS", "bad")]), b"boom"))
        .await;
    let mut args = PopArgs::new("fragile", "poison");
    args.invisible_ms = 300;
    assert_eq!(
        popped(&h.call(args.request()).await)[0].m.reconsume_times,
        0
    );
    let second = pop_until(&h, &args, 1, Duration::from_secs(5)).await;
    assert_eq!(second[0].m.reconsume_times, 1);
    // The second delivery also times out: attempts exhausted, dead-lettered.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        pop_until(&h, &args, 1, Duration::from_millis(1500))
            .await
            .is_empty()
    );
    let dlq = h
        .call(common::pull_request("inspector", "%DLQ%fragile", 0, 0, 8))
        .await;
    assert_eq!(dlq.code, code::SUCCESS, "{:?}", dlq.remark);
    let dead = message::decode_records(&dlq.body).unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(&dead[0].body[..], b"boom");
    assert_eq!(dead[0].reconsume_times, 2);
    let p = Properties::parse(&dead[0].properties).unwrap();
    assert_eq!(p.get("RETRY_TOPIC"), Some("poison"));
    assert_eq!(p.get("KEYS"), Some("bad"));
    h.stop().await;
}

#[tokio::test]
async fn tag_filters_apply_at_the_broker() {
    let h = broker().await;
    h.call(create_topic("tags", 1)).await;
    for t in ["A", "B", "C", "B", "A"] {
        h.call(send("tags", 0, &props(&[("TAGS", t)]), t.as_bytes()))
            .await;
    }
    let mut args = PopArgs::new("picky", "tags");
    args.exp = "A || C";
    let got = popped(&h.call(args.request()).await);
    let tags: Vec<_> = got
        .iter()
        .map(|g| String::from_utf8(g.m.body.to_vec()).unwrap())
        .collect();
    assert_eq!(tags, ["A", "C", "A"]);
    // Filtered-out messages never reach this group, even with a wider filter later.
    args.exp = "*";
    assert!(popped(&h.call(args.request()).await).is_empty());
    h.stop().await;
}

#[tokio::test]
async fn bad_requests_get_clear_errors_and_the_broker_keeps_serving() {
    let h = Harness::start(
        "tcp://127.0.0.1:0",
        BrokerInfo {
            pop: rdmq_broker::pop::PopConfig {
                auto_create_groups: false,
                ..Default::default()
            },
            ..BrokerInfo::default()
        },
        |_| {},
    )
    .await;
    h.call(create_topic("t", 1)).await;
    h.call(send("t", 0, "", b"x")).await;
    let group = RemotingCommand::request(rc::UPDATE_AND_CREATE_SUBSCRIPTIONGROUP)
        .with_body(br#"{"groupName":"known"}"#.to_vec());
    assert_eq!(h.call(group).await.code, code::SUCCESS);
    let with = |f: &dyn Fn(&mut PopArgs)| {
        let mut a = PopArgs::new("known", "t");
        f(&mut a);
        a.request()
    };
    let cases: Vec<(&str, RemotingCommand, i32, &str)> = vec![
        (
            "unknown group",
            with(&|a| a.group = "stranger"),
            code::SUBSCRIPTION_GROUP_NOT_EXIST,
            "stranger",
        ),
        (
            "unknown topic",
            with(&|a| a.topic = "nope"),
            code::TOPIC_NOT_EXIST,
            "nope",
        ),
        (
            "zero invisible time",
            with(&|a| a.invisible_ms = 0),
            code::INVALID_PARAMETER,
            "invisibleTime",
        ),
        (
            "negative invisible time",
            with(&|a| a.invisible_ms = -5),
            code::INVALID_PARAMETER,
            "invisibleTime",
        ),
        (
            "batch size 0",
            with(&|a| a.max = 0),
            code::INVALID_PARAMETER,
            "maxMsgNums",
        ),
        (
            "huge batch",
            with(&|a| a.max = 100_000),
            code::INVALID_PARAMETER,
            "maxMsgNums",
        ),
        (
            "malformed handle",
            ack("known", "t", "not a handle"),
            code::INVALID_PARAMETER,
            "malformed",
        ),
        (
            "forged handle",
            ack(
                "known",
                "t",
                "1 1700000000000 60000 0123456789abcdef 0 0 broker-a t",
            ),
            code::NO_MESSAGE,
            "not in flight",
        ),
        (
            "another broker's handle",
            ack(
                "known",
                "t",
                "1 1700000000000 60000 0123456789abcdef 0 0 broker-z t",
            ),
            code::INVALID_PARAMETER,
            "broker-z",
        ),
        (
            "bad group body",
            RemotingCommand::request(rc::UPDATE_AND_CREATE_SUBSCRIPTIONGROUP)
                .with_body(b"{".to_vec()),
            code::INVALID_PARAMETER,
            "JSON",
        ),
    ];
    for (what, req, want, remark_has) in cases {
        let r = h.call(req).await;
        assert_eq!(r.code, want, "{what}: {:?}", r.remark);
        let remark = r.remark.unwrap_or_default();
        assert!(
            remark.contains(remark_has),
            "{what}: `{remark}` lacks `{remark_has}`"
        );
    }
    // Still serving: a good pop and ack.
    let got = popped(&h.call(PopArgs::new("known", "t").request()).await);
    assert_eq!(got.len(), 1);
    // An expired handle is refused as expired.
    let mut short = PopArgs::new("known", "t");
    short.invisible_ms = 1;
    h.call(send("t", 0, "", b"y")).await;
    let got2 = popped(&h.call(short.request()).await);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let r = h.call(ack("known", "t", &got2[0].handle)).await;
    assert!(r.code == code::NO_MESSAGE, "{:?}", r.remark);
    assert_eq!(
        h.call(ack("known", "t", &got[0].handle)).await.code,
        code::SUCCESS
    );
    h.stop().await;
}

#[tokio::test]
async fn hostile_or_maximal_group_names_get_clear_errors_or_work_and_redelivery_goes_on() {
    let h = broker().await;
    h.call(create_topic("t", 1)).await;
    // `%RETRY%` + group + `+` + `t` is at most 255 characters: a 246-character group works.
    let longest = "g".repeat(255 - "%RETRY%".len() - 1 - 1);
    // (group, what the refusal says, whether the name is bad on its own rather than with `t`)
    let refused: Vec<(String, &str, bool)> = vec![
        ("../../x".into(), "contains '.'", true),
        ("a b".into(), "contains ' '", true),
        (
            format!("{longest}g"),
            "retry topic would have 256 characters",
            false,
        ),
        ("g".repeat(300), "1 to 255 characters", true),
    ];
    for (group, remark_has, bad_alone) in &refused {
        let r = h.call(PopArgs::new(group, "t").request()).await;
        assert_eq!(r.code, code::INVALID_PARAMETER, "{group}: {:?}", r.remark);
        let remark = r.remark.unwrap_or_default();
        assert!(
            remark.contains(remark_has),
            "`{remark}` lacks `{remark_has}`"
        );
        let create = RemotingCommand::request(rc::UPDATE_AND_CREATE_SUBSCRIPTIONGROUP)
            .with_body(format!(r#"{{"groupName":"{group}"}}"#).into_bytes());
        let created = h.call(create).await.code == code::SUCCESS;
        assert_eq!(created, !bad_alone, "{group}: created {created}");
    }
    // The longest legal group and another one both get their unacked message again.
    h.call(send("t", 0, "", b"once")).await;
    for group in [longest.as_str(), "other"] {
        let mut args = PopArgs::new(group, "t");
        args.invisible_ms = 300;
        assert_eq!(popped(&h.call(args.request()).await).len(), 1, "{group}");
        let again = pop_until(&h, &args, 1, Duration::from_secs(5)).await;
        assert_eq!(again.len(), 1, "{group}: not redelivered");
        assert_eq!(again[0].m.reconsume_times, 1, "{group}");
        let r = h.call(ack(group, "t", &again[0].handle)).await;
        assert_eq!(r.code, code::SUCCESS, "{group}: {:?}", r.remark);
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_groups_stay_in_order_with_concurrent_consumers() {
    let h = broker().await;
    h.call(create_topic("fifo", 4)).await;
    const GROUPS: usize = 8;
    const PER_GROUP: usize = 25;
    for i in 0..PER_GROUP {
        for g in 0..GROUPS {
            let p = props(&[("__SHARDINGKEY", &format!("g{g}")), ("seq", &i.to_string())]);
            let r = h
                .call(send(
                    "fifo",
                    (g % 4) as i32,
                    &p,
                    format!("g{g}-{i}").as_bytes(),
                ))
                .await;
            assert_eq!(r.code, code::SUCCESS);
        }
    }
    // Per message group: what was acked, in order, and whether one is in flight.
    let acked: Arc<Mutex<HashMap<String, Vec<usize>>>> = Arc::default();
    let in_flight: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut consumers = Vec::new();
    for c in 0..4u64 {
        let (client, ep) = (h.client.clone(), h.endpoint.clone());
        let (acked, in_flight) = (acked.clone(), in_flight.clone());
        consumers.push(tokio::spawn(async move {
            let mut n = 0u64;
            let deadline = Instant::now() + Duration::from_secs(60);
            while acked.lock().unwrap().values().map(Vec::len).sum::<usize>() < GROUPS * PER_GROUP {
                assert!(Instant::now() < deadline, "FIFO consumption stalled");
                let mut a = PopArgs::new("ordered", "fifo");
                a.order = true;
                a.max = 4;
                a.invisible_ms = 700;
                a.poll_ms = 300;
                let r = client
                    .invoke(&ep, a.request(), Some(Duration::from_secs(5)))
                    .await
                    .unwrap();
                for g in popped(&r) {
                    let group = g.prop("__SHARDINGKEY").unwrap();
                    let seq: usize = g.prop("seq").unwrap().parse().unwrap();
                    assert!(
                        in_flight.lock().unwrap().insert(group.clone()),
                        "{group}: message {seq} delivered while an earlier one is in flight"
                    );
                    n += 1;
                    // Now and then a consumer "crashes" on a message: no ack.
                    if (n + c).is_multiple_of(13) {
                        in_flight.lock().unwrap().remove(&group);
                        continue;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    // Done with it: recorded before the ack leaves, since the broker may hand
                    // out the group's next message as soon as the ack arrives.
                    acked
                        .lock()
                        .unwrap()
                        .entry(group.clone())
                        .or_default()
                        .push(seq);
                    in_flight.lock().unwrap().remove(&group);
                    let r = client
                        .invoke(&ep, ack("ordered", "fifo", &g.handle), None)
                        .await
                        .unwrap();
                    assert_eq!(r.code, code::SUCCESS, "{:?}", r.remark);
                }
            }
        }));
    }
    for c in consumers {
        c.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    for g in 0..GROUPS {
        assert_eq!(
            acked[&format!("g{g}")],
            (0..PER_GROUP).collect::<Vec<_>>(),
            "group g{g} acked out of order or not exactly once"
        );
    }
    h.stop().await;
}

async fn call(
    client: &Client<TcpTransport>,
    ep: &Endpoint,
    req: RemotingCommand,
) -> RemotingCommand {
    client
        .invoke(ep, req, Some(Duration::from_secs(10)))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pop_state_survives_sigkill() {
    let dir = TempDir::new();
    let client = Client::new(TcpTransport::default(), ClientConfig::default());
    let mut b = BrokerProcess::spawn(
        dir.path(),
        &[
            "--flush",
            "sync",
            "--segment-size",
            "64M",
            "--topic",
            "kill:2",
        ],
    );
    for i in 0..20 {
        let r = call(
            &client,
            &b.endpoint,
            send(
                "kill",
                i % 2,
                &props(&[("KEYS", &format!("k{i}"))]),
                format!("m{i}").as_bytes(),
            ),
        )
        .await;
        assert_eq!(r.code, code::SUCCESS);
    }
    let mut args = PopArgs::new("survivor", "kill");
    args.max = 10;
    args.invisible_ms = 4_000;
    let got = popped(&call(&client, &b.endpoint, args.request()).await);
    assert_eq!(got.len(), 10);
    for g in &got[..5] {
        assert_eq!(
            call(&client, &b.endpoint, ack("survivor", "kill", &g.handle))
                .await
                .code,
            code::SUCCESS
        );
    }
    let popped_at = Instant::now();
    b.kill();
    client.close(Duration::from_millis(100)).await;
    let client = Client::new(TcpTransport::default(), ClientConfig::default());
    let b = BrokerProcess::spawn(dir.path(), &["--flush", "sync", "--segment-size", "64M"]);
    // Acks with handles from before the crash still work.
    for g in &got[5..8] {
        let r = call(&client, &b.endpoint, ack("survivor", "kill", &g.handle)).await;
        assert_eq!(r.code, code::SUCCESS, "{:?}", r.remark);
    }
    // The 10 never popped come out now; the 2 popped-but-unacked come back after their
    // invisible time (attempt 2); acked ones never do.
    let mut seen: BTreeMap<String, i32> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while seen.len() < 12 && Instant::now() < deadline {
        let mut a = args.clone();
        a.poll_ms = 1_000;
        a.max = 32;
        for g in popped(&call(&client, &b.endpoint, a.request()).await) {
            let body = String::from_utf8(g.m.body.to_vec()).unwrap();
            if g.m.reconsume_times > 0 {
                assert!(
                    popped_at.elapsed() >= Duration::from_millis(3_500),
                    "{body} redelivered before its invisible time"
                );
            }
            assert!(
                seen.insert(body.clone(), g.m.reconsume_times).is_none(),
                "{body} twice"
            );
            assert_eq!(
                call(&client, &b.endpoint, ack("survivor", "kill", &g.handle))
                    .await
                    .code,
                code::SUCCESS
            );
        }
    }
    let acked: HashSet<String> = got[..8]
        .iter()
        .map(|g| String::from_utf8(g.m.body.to_vec()).unwrap())
        .collect();
    for g in &got[8..] {
        let body = String::from_utf8(g.m.body.to_vec()).unwrap();
        assert_eq!(
            seen.get(&body),
            Some(&1),
            "{body}: popped before the crash, not acked → attempt 2"
        );
    }
    assert_eq!(seen.len(), 12, "{seen:?}");
    assert!(
        seen.keys().all(|b| !acked.contains(b)),
        "an acked message came back"
    );
    client.close(Duration::from_millis(100)).await;
}

/// What a RocketMQ remoting client or proxy does with a POP answer: it ignores `POP_CK` and
/// builds each message's `extraInfo` from the header's popTime, invisibleTime, reviveQid and
/// startOffsetInfo (`retryFlag queueId startOffset;…`), then acks with it.
fn rocketmq_handles(r: &RemotingCommand) -> Vec<(StoredMessage, String)> {
    let field = |k: &str| r.field(k).unwrap_or_else(|| panic!("POP answer lacks {k}"));
    let start: std::collections::HashMap<(String, String), String> = field("startOffsetInfo")
        .split(';')
        .map(|e| {
            let p: Vec<&str> = e.split(' ').collect();
            assert_eq!(p.len(), 3, "startOffsetInfo entry `{e}`");
            ((p[0].to_owned(), p[1].to_owned()), p[2].to_owned())
        })
        .collect();
    let offsets = field("msgOffsetInfo");
    message::decode_records(&r.body)
        .unwrap()
        .into_iter()
        .map(|m| {
            // A retry copy carries its extraInfo itself, as RocketMQ's brokers put it there.
            if let Some(ck) = Properties::parse(&m.properties).unwrap().get("POP_CK") {
                let e = rdmq_protocol::ExtraInfo::parse(ck).expect("POP_CK is an extraInfo");
                assert_ne!(e.retry, 0, "only retry copies carry POP_CK: {ck}");
                assert_eq!(e.pop_time.to_string(), field("popTime"));
                let ck = ck.to_owned();
                return (m, ck);
            }
            let flag = if m.topic.starts_with("%RETRY%") {
                "2"
            } else {
                "0"
            };
            let q = m.queue_id.to_string();
            assert!(
                offsets.split(';').any(|e| {
                    let p: Vec<&str> = e.split(' ').collect();
                    p[0] == flag
                        && p[1] == q
                        && p[2].split(',').any(|o| o == m.queue_offset.to_string())
                }),
                "msgOffsetInfo `{offsets}` lists {q}/{}",
                m.queue_offset
            );
            let ck = &start[&(flag.to_owned(), q.clone())];
            let extra = format!(
                "{ck} {} {} {} {flag} broker-a {q} {}",
                field("popTime"),
                field("invisibleTime"),
                field("reviveQid"),
                m.queue_offset
            );
            (m, extra)
        })
        .collect()
}

#[tokio::test]
async fn rocketmq_style_extra_info_handles_ack_and_change_like_our_own() {
    let h = broker().await;
    h.call(create_topic("foreign", 2)).await;
    for i in 0..4 {
        let r = h
            .call(send("foreign", i % 2, &props(&[("TAGS", "t")]), b"x"))
            .await;
        assert_eq!(r.code, code::SUCCESS);
    }
    // Asked as RocketMQ clients ask (no rdmqHandles field): records carry no POP_CK.
    let r = h
        .call(PopArgs::new("gf", "foreign").foreign_request())
        .await;
    assert_eq!(r.code, code::SUCCESS);
    let got = rocketmq_handles(&r);
    assert!(got.iter().all(|(m, _)| !m.properties.contains("POP_CK")));
    assert_eq!(got.len(), 4);
    // Ack two, each with the offset field RocketMQ's ACK header carries.
    for (m, extra) in &got[..2] {
        let r = h
            .call(ack("gf", "foreign", extra).with_field("offset", m.queue_offset.to_string()))
            .await;
        assert_eq!(r.code, code::SUCCESS, "{:?}", r.remark);
    }
    let again = h.call(ack("gf", "foreign", &got[0].1)).await;
    assert_eq!(
        again.code,
        code::NO_MESSAGE,
        "acked twice: {:?}",
        again.remark
    );
    // Change the third: the old extraInfo is superseded; one built from the answer works.
    let (m, extra) = &got[2];
    let r = h.call(change("gf", "foreign", extra, 60_000)).await;
    assert_eq!(r.code, code::SUCCESS, "{:?}", r.remark);
    let stale = h.call(ack("gf", "foreign", extra)).await;
    assert_eq!(stale.code, code::NO_MESSAGE, "{:?}", stale.remark);
    let renewed = format!(
        "{} {} {} 0 0 broker-a {} {}",
        m.queue_offset,
        r.field("popTime").unwrap(),
        r.field("invisibleTime").unwrap(),
        m.queue_id,
        m.queue_offset
    );
    let r = h.call(ack("gf", "foreign", &renewed)).await;
    assert_eq!(r.code, code::SUCCESS, "{:?}", r.remark);
    // Garbage is refused clearly; the fourth acks with its extraInfo and no offset field.
    let r = h.call(ack("gf", "foreign", "0 1 2 x")).await;
    assert_eq!(r.code, code::INVALID_PARAMETER);
    let r = h.call(ack("gf", "foreign", &got[3].1)).await;
    assert_eq!(r.code, code::SUCCESS, "{:?}", r.remark);
    h.stop().await;
}

#[tokio::test]
async fn rocketmq_style_redelivery_carries_its_extra_info_and_acks() {
    let h = broker().await;
    h.call(create_topic("fredo", 1)).await;
    h.call(send("fredo", 0, &props(&[("TAGS", "x")]), b"again"))
        .await;
    let mut args = PopArgs::new("gfr", "fredo");
    args.invisible_ms = 400;
    let plain = || args.foreign_request();
    let first = rocketmq_handles(&h.call(plain()).await);
    assert_eq!(first.len(), 1);
    // Not acked: redelivered from the retry topic, under the original topic, with a POP_CK
    // naming the retry queue (retry flag set).
    let deadline = Instant::now() + Duration::from_secs(5);
    let again = loop {
        let r = h.call(plain()).await;
        if r.code == code::SUCCESS {
            break rocketmq_handles(&r);
        }
        assert!(Instant::now() < deadline, "not redelivered within 5 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(again.len(), 1);
    let (m, extra) = &again[0];
    assert_eq!(m.topic, "fredo");
    assert_eq!(m.reconsume_times, 1);
    let e = rdmq_protocol::ExtraInfo::parse(extra).unwrap();
    assert_ne!(e.retry, 0, "{extra}");
    // RocketMQ clients ack a retry copy naming the retry topic their flag implies.
    let retry_topic = e.stored_topic("fredo", "gfr");
    let r = h.call(ack("gfr", &retry_topic, extra)).await;
    assert_eq!(r.code, code::SUCCESS, "{:?}", r.remark);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let r = h.call(plain()).await;
    assert_ne!(r.code, code::SUCCESS, "acked, yet delivered again");
    h.stop().await;
}

#[tokio::test]
async fn rocketmq_batch_ack_bodies_ack_by_bit_set() {
    let h = broker().await;
    h.call(create_topic("bat", 1)).await;
    for _ in 0..5 {
        let r = h.call(send("bat", 0, &props(&[("TAGS", "t")]), b"x")).await;
        assert_eq!(r.code, code::SUCCESS);
    }
    let r = h.call(PopArgs::new("gb", "bat").foreign_request()).await;
    let got = rocketmq_handles(&r);
    assert_eq!(got.len(), 5);
    let start = got[0].0.queue_offset;
    let pt: i64 = r.field("popTime").unwrap().parse().unwrap();
    let batch = |bits: serde_json::Value| {
        RemotingCommand::request(rc::BATCH_ACK_MESSAGE).with_body(
            serde_json::json!({"brokerName": "broker-a", "acks": [{
                "c": "gb", "t": "bat", "r": "0", "so": start, "q": 0, "rq": 0,
                "pt": pt, "it": 5000, "b": bits}]})
            .to_string()
            .into_bytes(),
        )
    };
    // Offsets start+0 and start+2 as bytes (rocketmq-rust), then start+1 as base64 (Java).
    let r = h
        .call(batch(serde_json::json!([0b101, 0, 0, 0, 0, 0, 0, 0])))
        .await;
    assert_eq!(r.code, code::SUCCESS, "{:?}", r.remark);
    let r = h.call(batch(serde_json::json!("Ag=="))).await;
    assert_eq!(r.code, code::SUCCESS, "{:?}", r.remark);
    for (i, (_, extra)) in got.iter().enumerate() {
        let r = h.call(ack("gb", "bat", extra)).await;
        let want = if i < 3 {
            code::NO_MESSAGE
        } else {
            code::SUCCESS
        };
        assert_eq!(r.code, want, "message {i}: {:?}", r.remark);
    }
    // Acking twice, or a malformed body, is refused with the reason.
    let r = h.call(batch(serde_json::json!([1]))).await;
    assert_eq!(r.code, code::NO_MESSAGE, "{:?}", r.remark);
    let r = h.call(batch(serde_json::json!(7))).await;
    assert_eq!(r.code, code::INVALID_PARAMETER);
    assert!(r.remark.unwrap().contains("bit set"));
    h.stop().await;
}
