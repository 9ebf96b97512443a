//! The broker's remoting handlers end to end: a real server on TCP (and rdma-sim), the
//! remoting client, a store on real files. Messages go in through SEND and come back
//! byte-identical through PULL and VIEW_MESSAGE_BY_ID; bad requests get typed refusals and
//! the broker keeps serving.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::Harness;
use rdmq_broker::handlers::BrokerInfo;
use rdmq_broker::message::{self, StoredMessage};
use rdmq_transport::RemotingCommand;
use rdmq_transport::protocol::{request_code as rc, response_code as code};

const SEP_NV: char = '\u{1}';
const SEP_P: char = '\u{2}';

fn props(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}{SEP_NV}{v}"))
        .collect::<Vec<_>>()
        .join(&SEP_P.to_string())
}

fn info() -> BrokerInfo {
    BrokerInfo {
        max_long_poll: Duration::from_secs(5),
        ..BrokerInfo::default()
    }
}

async fn tcp() -> Harness {
    Harness::start("tcp://127.0.0.1:0", info(), |_| {}).await
}

fn create_topic(topic: &str, queues: u32) -> RemotingCommand {
    RemotingCommand::request(rc::UPDATE_AND_CREATE_TOPIC)
        .with_field("topic", topic)
        .with_field("readQueueNums", queues.to_string())
        .with_field("writeQueueNums", queues.to_string())
        .with_field("perm", "6")
}

fn send_v2(topic: &str, queue: i32, properties: &str, body: &[u8]) -> RemotingCommand {
    RemotingCommand::request(rc::SEND_MESSAGE_V2)
        .with_field("a", "producer-group")
        .with_field("b", topic)
        .with_field("c", "TBW102")
        .with_field("d", "4")
        .with_field("e", queue.to_string())
        .with_field("f", "0")
        .with_field("g", "1700000000000")
        .with_field("h", "0")
        .with_field("i", properties)
        .with_field("j", "0")
        .with_field("k", "false")
        .with_body(Bytes::copy_from_slice(body))
}

fn pull(topic: &str, queue: i32, offset: i64, subscription: &str) -> RemotingCommand {
    common::pull_request("consumer-group", topic, queue, offset, 32)
        .with_field("subscription", subscription)
}

fn long_pull(topic: &str, queue: i32, offset: i64, suspend_ms: u64) -> RemotingCommand {
    let mut r = pull(topic, queue, offset, "*");
    r = r.with_field("sysFlag", "2");
    r = r.with_field("suspendTimeoutMillis", suspend_ms.to_string());
    r
}

fn num(r: &RemotingCommand, key: &str) -> i64 {
    r.field(key)
        .unwrap_or_else(|| panic!("response lacks `{key}`: {r:?}"))
        .parse()
        .unwrap()
}

fn records(r: &RemotingCommand) -> Vec<StoredMessage> {
    assert_eq!(r.code, code::SUCCESS, "pull failed: {:?}", r.remark);
    message::decode_records(&r.body).expect("pull body decodes")
}

#[tokio::test]
async fn send_then_pull_and_view_return_identical_messages() {
    let h = tcp().await;
    assert_eq!(h.call(create_topic("orders", 2)).await.code, code::SUCCESS);
    let mut sent = Vec::new();
    for i in 0..20 {
        let p = props(&[
            ("TAGS", if i % 2 == 0 { "even" } else { "odd" }),
            ("KEYS", &format!("order-{i}")),
            ("UNIQ_KEY", &format!("7F00000100002A9F0000000000{i:06}")),
            ("WAIT", "true"),
        ]);
        let body: Vec<u8> = (0..(100 + i * 37)).map(|b| (b * 7 + i) as u8).collect();
        let r = h.call(send_v2("orders", 1, &p, &body)).await;
        assert_eq!(r.code, code::SUCCESS, "{:?}", r.remark);
        assert_eq!(num(&r, "queueOffset"), i as i64);
        assert_eq!(r.field("queueId"), Some("1"));
        let id = r.field("msgId").unwrap().to_owned();
        assert_eq!(id.len(), 32, "offset message id: {id}");
        sent.push((p, body, id));
    }
    let got = records(&h.call(pull("orders", 1, 0, "*")).await);
    assert_eq!(got.len(), 20);
    for (i, (m, (p, body, id))) in got.iter().zip(&sent).enumerate() {
        assert_eq!(m.topic, "orders");
        assert_eq!(m.queue_id, 1);
        assert_eq!(m.queue_offset, i as i64);
        assert_eq!(m.properties, *p);
        assert_eq!(&m.body[..], &body[..]);
        assert_eq!(m.born_timestamp, 1_700_000_000_000);
        // The id names the commit-log offset; VIEW_MESSAGE_BY_ID returns the same record.
        let offset = message::parse_offset_msg_id(id).unwrap();
        assert_eq!(offset, m.physical_offset);
        let view = h
            .call(
                RemotingCommand::request(rc::VIEW_MESSAGE_BY_ID)
                    .with_field("offset", offset.to_string()),
            )
            .await;
        assert_eq!(view.code, code::SUCCESS);
        assert_eq!(message::decode_record(&view.body).unwrap(), *m);
    }
    // Queue 0 got nothing.
    let empty = h.call(pull("orders", 0, 0, "*")).await;
    assert_eq!(empty.code, code::PULL_NOT_FOUND);
    assert_eq!(num(&empty, "maxOffset"), 0);
    h.stop().await;
}

#[tokio::test]
async fn v1_header_names_and_batches_are_accepted() {
    let h = tcp().await;
    h.call(create_topic("events", 1)).await;
    let v1 = RemotingCommand::request(rc::SEND_MESSAGE)
        .with_field("producerGroup", "pg")
        .with_field("topic", "events")
        .with_field("defaultTopic", "TBW102")
        .with_field("defaultTopicQueueNums", "4")
        .with_field("queueId", "0")
        .with_field("sysFlag", "0")
        .with_field("bornTimestamp", "5")
        .with_field("flag", "3")
        .with_field("properties", props(&[("TAGS", "v1")]))
        .with_field("reconsumeTimes", "0")
        .with_body(Bytes::from_static(b"first"));
    let r = h.call(v1).await;
    assert_eq!(r.code, code::SUCCESS, "{:?}", r.remark);
    let batch: Vec<(i32, Bytes, String)> = (0..5)
        .map(|i| {
            (
                i,
                Bytes::from(format!("batch-{i}")),
                props(&[("KEYS", &format!("k{i}")), ("TAGS", "b")]),
            )
        })
        .collect();
    let req = RemotingCommand::request(rc::SEND_BATCH_MESSAGE)
        .with_field("a", "pg")
        .with_field("b", "events")
        .with_field("c", "TBW102")
        .with_field("d", "4")
        .with_field("e", "0")
        .with_field("f", "0")
        .with_field("g", "6")
        .with_field("h", "0")
        .with_field("i", "")
        .with_field("j", "0")
        .with_field("m", "true")
        .with_body(message::encode_batch(&batch));
    let r = h.call(req).await;
    assert_eq!(r.code, code::SUCCESS, "{:?}", r.remark);
    assert_eq!(num(&r, "queueOffset"), 1);
    assert_eq!(r.field("msgId").unwrap().split(',').count(), 5);
    let got = records(&h.call(pull("events", 0, 0, "*")).await);
    assert_eq!(got.len(), 6);
    assert_eq!(&got[0].body[..], b"first");
    assert_eq!(got[0].flag, 3);
    for (i, m) in got[1..].iter().enumerate() {
        assert_eq!(m.body, batch[i].1);
        assert_eq!(m.properties, batch[i].2);
        assert_eq!(m.flag, batch[i].0);
        assert_eq!(m.queue_offset, 1 + i as i64);
    }
    // The key index finds batch members.
    assert_eq!(h.broker.store.lookup("k3").len(), 1);
    h.stop().await;
}

#[tokio::test]
async fn tag_subscriptions_filter_and_skip_ahead() {
    let h = tcp().await;
    h.call(create_topic("tagged", 1)).await;
    for tag in ["A", "B", "A", "C", "B", "A"] {
        let r = h
            .call(send_v2(
                "tagged",
                0,
                &props(&[("TAGS", tag)]),
                tag.as_bytes(),
            ))
            .await;
        assert_eq!(r.code, code::SUCCESS);
    }
    let tags = |ms: &[StoredMessage]| -> Vec<String> {
        ms.iter()
            .map(|m| String::from_utf8(m.body.to_vec()).unwrap())
            .collect()
    };
    assert_eq!(
        tags(&records(&h.call(pull("tagged", 0, 0, "A")).await)),
        ["A", "A", "A"]
    );
    assert_eq!(
        tags(&records(&h.call(pull("tagged", 0, 0, "B || C")).await)),
        ["B", "C", "B"]
    );
    // Nothing matches: the consumer is moved past the filtered range.
    let r = h.call(pull("tagged", 0, 0, "Z")).await;
    assert_eq!(r.code, code::PULL_RETRY_IMMEDIATELY);
    assert_eq!(num(&r, "nextBeginOffset"), 6);
    // SQL92 is not supported, and says so.
    let mut sql = pull("tagged", 0, 0, "a > 1");
    sql = sql.with_field("expressionType", "SQL92");
    let r = h.call(sql).await;
    assert_eq!(r.code, code::SUBSCRIPTION_NOT_EXIST);
    assert!(r.remark.unwrap().contains("SQL92"));
    h.stop().await;
}

#[tokio::test]
async fn long_poll_wakes_on_arrival_and_times_out_when_idle() {
    let h = tcp().await;
    h.call(create_topic("lp", 1)).await;
    // Idle: answered PULL_NOT_FOUND after about the suspend time.
    let t0 = Instant::now();
    let r = h.call(long_pull("lp", 0, 0, 300)).await;
    assert_eq!(r.code, code::PULL_NOT_FOUND);
    assert!(
        t0.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t0.elapsed()
    );
    // A send during the poll completes it with the message.
    let client = h.client.clone();
    let ep = h.endpoint.clone();
    let poll = tokio::spawn(async move {
        client
            .invoke(
                &ep,
                long_pull("lp", 0, 0, 4000),
                Some(Duration::from_secs(10)),
            )
            .await
            .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t1 = Instant::now();
    assert_eq!(
        h.call(send_v2("lp", 0, "", b"wake")).await.code,
        code::SUCCESS
    );
    let r = poll.await.unwrap();
    assert!(
        t1.elapsed() < Duration::from_secs(3),
        "woke late: {:?}",
        t1.elapsed()
    );
    let got = records(&r);
    assert_eq!(&got[0].body[..], b"wake");
    assert_eq!(num(&r, "nextBeginOffset"), 1);
    // Offsets past the end are moved.
    let r = h.call(pull("lp", 0, 99, "*")).await;
    assert_eq!(r.code, code::PULL_OFFSET_MOVED);
    assert_eq!(num(&r, "nextBeginOffset"), 1);
    h.stop().await;
}

#[tokio::test]
async fn consumer_offsets_and_queue_bounds() {
    let h = tcp().await;
    h.call(create_topic("off", 2)).await;
    let before = rdmq_broker::store::now_ms();
    for i in 0..5 {
        h.call(send_v2("off", 1, "", format!("m{i}").as_bytes()))
            .await;
    }
    let q = |c: i32| {
        RemotingCommand::request(c)
            .with_field("consumerGroup", "g1")
            .with_field("topic", "off")
            .with_field("queueId", "1")
    };
    // A new group on a queue that still starts at 0 begins there.
    let r = h.call(q(rc::QUERY_CONSUMER_OFFSET)).await;
    assert_eq!((r.code, num(&r, "offset")), (code::SUCCESS, 0));
    let r = h
        .call(q(rc::UPDATE_CONSUMER_OFFSET).with_field("commitOffset", "3"))
        .await;
    assert_eq!(r.code, code::SUCCESS);
    let r = h.call(q(rc::QUERY_CONSUMER_OFFSET)).await;
    assert_eq!(num(&r, "offset"), 3);
    let r = h
        .call(q(rc::UPDATE_CONSUMER_OFFSET).with_field("commitOffset", "-4"))
        .await;
    assert_eq!(r.code, code::SYSTEM_ERROR);
    assert_eq!(num(&h.call(q(rc::GET_MAX_OFFSET)).await, "offset"), 5);
    assert_eq!(num(&h.call(q(rc::GET_MIN_OFFSET)).await, "offset"), 0);
    let r = h
        .call(
            q(rc::SEARCH_OFFSET_BY_TIMESTAMP)
                .with_field("timestamp", (before - 60_000).to_string()),
        )
        .await;
    assert_eq!((r.code, num(&r, "offset")), (code::SUCCESS, 0));
    let r = h
        .call(
            q(rc::SEARCH_OFFSET_BY_TIMESTAMP)
                .with_field("timestamp", (before + 3_600_000).to_string()),
        )
        .await;
    assert_eq!(num(&r, "offset"), 5);
    // Committing through PULL's commitOffset flag.
    let mut p = pull("off", 1, 3, "*");
    p = p.with_field("consumerGroup", "g1");
    p = p.with_field("sysFlag", "1");
    p = p.with_field("commitOffset", "4");
    assert_eq!(records(&h.call(p).await).len(), 2);
    assert_eq!(
        num(&h.call(q(rc::QUERY_CONSUMER_OFFSET)).await, "offset"),
        4
    );
    h.stop().await;
}

#[tokio::test]
async fn route_info_is_served_in_fastjson_dialect() {
    let h = tcp().await;
    h.call(create_topic("routed", 3)).await;
    let r = h
        .call(RemotingCommand::request(rc::GET_ROUTEINFO_BY_TOPIC).with_field("topic", "routed"))
        .await;
    assert_eq!(r.code, code::SUCCESS);
    let json = String::from_utf8(r.body.to_vec()).unwrap();
    assert!(
        json.contains("\"brokerAddrs\":{0:\"127.0.0.1:10911\"}"),
        "{json}"
    );
    assert!(json.contains("\"readQueueNums\":3"), "{json}");
    // Heartbeats and unregistration are recorded.
    let hb = RemotingCommand::request(rc::HEART_BEAT).with_body(
        br#"{"clientID":"c1@1","producerDataSet":[{"groupName":"pg"}],"consumerDataSet":[]}"#
            .to_vec(),
    );
    assert_eq!(h.call(hb).await.code, code::SUCCESS);
    assert!(h.broker.clients.lock().unwrap().contains_key("c1@1"));
    let un = RemotingCommand::request(rc::UNREGISTER_CLIENT).with_field("clientID", "c1@1");
    assert_eq!(h.call(un).await.code, code::SUCCESS);
    assert!(h.broker.clients.lock().unwrap().is_empty());
    let bad = RemotingCommand::request(rc::HEART_BEAT).with_body(b"{not json".to_vec());
    assert_eq!(h.call(bad).await.code, code::SYSTEM_ERROR);
    h.stop().await;
}

#[tokio::test]
async fn malformed_requests_get_typed_refusals_and_the_broker_keeps_serving() {
    let h = Harness::start(
        "tcp://127.0.0.1:0",
        BrokerInfo {
            auto_create_topics: false,
            ..info()
        },
        |c| c.max_body = 1024,
    )
    .await;
    h.call(create_topic("strict", 2)).await;
    let mut missing_topic = send_v2("strict", 0, "", b"x");
    missing_topic.ext_fields.as_mut().unwrap().remove("b");
    let mut bad_queue_num = send_v2("strict", 0, "", b"x");
    bad_queue_num = bad_queue_num.with_field("e", "zero");
    let cases: Vec<(&str, RemotingCommand, i32, &str)> = vec![
        ("missing topic", missing_topic, code::SYSTEM_ERROR, "topic"),
        (
            "queue id not a number",
            bad_queue_num,
            code::SYSTEM_ERROR,
            "queueId",
        ),
        (
            "queue out of range",
            send_v2("strict", 7, "", b"x"),
            code::SYSTEM_ERROR,
            "queueId 7",
        ),
        (
            "unknown topic",
            send_v2("nope", 0, "", b"x"),
            code::TOPIC_NOT_EXIST,
            "nope",
        ),
        (
            "properties without separator",
            send_v2("strict", 0, "TAGSnovalue", b"x"),
            code::MESSAGE_ILLEGAL,
            "properties",
        ),
        (
            "bad delay level",
            send_v2("strict", 0, &props(&[("DELAY", "soon")]), b"x"),
            code::MESSAGE_ILLEGAL,
            "DELAY",
        ),
        (
            "body over max",
            send_v2("strict", 0, "", &[0u8; 2048]),
            code::MESSAGE_ILLEGAL,
            "1024",
        ),
        (
            "batch body garbage",
            send_v2("strict", 0, "", b"\x00\x00\x00\x05abc").with_field("m", "true"),
            code::MESSAGE_ILLEGAL,
            "batch",
        ),
        (
            "invalid topic name",
            create_topic("bad/name", 1),
            code::SYSTEM_ERROR,
            "bad/name",
        ),
        (
            "pull unknown topic",
            pull("nope", 0, 0, "*"),
            code::TOPIC_NOT_EXIST,
            "nope",
        ),
        (
            "pull missing group",
            {
                let mut p = pull("strict", 0, 0, "*");
                p.ext_fields.as_mut().unwrap().remove("consumerGroup");
                p
            },
            code::SYSTEM_ERROR,
            "consumerGroup",
        ),
        (
            "view at garbage offset",
            RemotingCommand::request(rc::VIEW_MESSAGE_BY_ID).with_field("offset", "12345"),
            code::SYSTEM_ERROR,
            "message",
        ),
        (
            "route for unknown topic",
            RemotingCommand::request(rc::GET_ROUTEINFO_BY_TOPIC).with_field("topic", "nope"),
            code::TOPIC_NOT_EXIST,
            "nope",
        ),
        (
            "unknown request code",
            RemotingCommand::request(99_999),
            code::REQUEST_CODE_NOT_SUPPORTED,
            "",
        ),
    ];
    for (what, req, want, remark_has) in cases {
        let r = h.call(req).await;
        assert_eq!(r.code, want, "{what}: {:?}", r.remark);
        let remark = r.remark.unwrap_or_default();
        assert!(
            remark.contains(remark_has),
            "{what}: remark `{remark}` lacks `{remark_has}`"
        );
    }
    // Still serving, on the same connection, and nothing refused was stored.
    let r = h.call(send_v2("strict", 0, "", b"fine")).await;
    assert_eq!(r.code, code::SUCCESS);
    assert_eq!(num(&r, "queueOffset"), 0);
    assert_eq!(records(&h.call(pull("strict", 0, 0, "*")).await).len(), 1);
    h.stop().await;
}

#[tokio::test]
async fn the_same_handlers_serve_over_rdma_sim() {
    let h = Harness::start("rdma-sim://127.0.0.1:0", info(), |_| {}).await;
    h.call(create_topic("sim", 1)).await;
    let body: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
    let p = props(&[("TAGS", "t"), ("KEYS", "big")]);
    for _ in 0..3 {
        assert_eq!(
            h.call(send_v2("sim", 0, &p, &body)).await.code,
            code::SUCCESS
        );
    }
    let got = records(&h.call(pull("sim", 0, 0, "t")).await);
    assert_eq!(got.len(), 3);
    assert!(
        got.iter()
            .all(|m| m.body[..] == body[..] && m.properties == p)
    );
    h.stop().await;
}

/// An RDMA device to test on: `RDMQ_RDMA_DEVICE`, else the first one libibverbs lists.
fn rdma_device() -> Option<String> {
    std::env::var("RDMQ_RDMA_DEVICE")
        .ok()
        .filter(|d| !d.is_empty())
        .or_else(|| {
            rdmq_transport::rdma::ibverbs::device_names()
                .into_iter()
                .next()
        })
}

#[tokio::test]
async fn the_same_handlers_serve_over_real_rdma_when_a_device_is_present() {
    let Some(device) = rdma_device() else {
        eprintln!("skipped: no RDMA device (set RDMQ_RDMA_DEVICE, or run scripts/softroce-vm.sh)");
        return;
    };
    let h = Harness::start(
        &format!("rdma://127.0.0.1:0?device={device}"),
        info(),
        |_| {},
    )
    .await;
    let conn = h.client.connection(&h.endpoint).await.unwrap();
    assert_eq!(
        conn.info().transport,
        "rdma",
        "the link fell back: {}",
        conn.info().reason
    );
    h.call(create_topic("hw", 1)).await;
    let body: Vec<u8> = (0..64 * 1024).map(|i| (i % 253) as u8).collect();
    let p = props(&[("TAGS", "t"), ("KEYS", "hw")]);
    for _ in 0..3 {
        assert_eq!(
            h.call(send_v2("hw", 0, &p, &body)).await.code,
            code::SUCCESS
        );
    }
    let got = records(&h.call(pull("hw", 0, 0, "t")).await);
    assert_eq!(got.len(), 3);
    assert!(
        got.iter()
            .all(|m| m.body[..] == body[..] && m.properties == p)
    );
    h.stop().await;
}

fn topic_list(body: &str) -> RemotingCommand {
    RemotingCommand::request(rc::UPDATE_AND_CREATE_TOPIC_LIST).with_body(body.as_bytes().to_vec())
}

fn query(topic: &str, key: &str, unique: bool) -> RemotingCommand {
    RemotingCommand::request(rc::QUERY_MESSAGE)
        .with_field("topic", topic)
        .with_field("key", key)
        .with_field("maxNum", "32")
        .with_field("beginTimestamp", "0")
        .with_field("endTimestamp", "0")
        .with_field("_UNIQUE_KEY_QUERY", if unique { "true" } else { "false" })
}

#[tokio::test]
async fn topic_lists_are_all_or_nothing_and_queries_find_keys_and_ids() {
    let h = tcp().await;
    // One invalid name refuses the whole list: nothing is created.
    let r = h
        .call(topic_list(
            r#"{"topicConfigList":[{"topicName":"ok-1","readQueueNums":2,"writeQueueNums":2,"perm":6},{"topicName":"bad name","readQueueNums":2}]}"#,
        ))
        .await;
    assert_eq!(r.code, code::SYSTEM_ERROR, "{:?}", r.remark);
    assert!(h.broker.store.topic("ok-1").is_none());
    for bad in ["", "{}", r#"{"topicConfigList":[]}"#] {
        let r = h.call(topic_list(bad)).await;
        assert_eq!(r.code, code::SYSTEM_ERROR, "{bad}: {:?}", r.remark);
    }
    let list: Vec<String> = (0..500)
        .map(|i| {
            format!(r#"{{"topicName":"bulk-{i}","readQueueNums":3,"writeQueueNums":3,"perm":6}}"#)
        })
        .collect();
    let r = h
        .call(topic_list(&format!(
            r#"{{"topicConfigList":[{}]}}"#,
            list.join(",")
        )))
        .await;
    assert_eq!(r.code, code::SUCCESS, "{:?}", r.remark);
    assert_eq!(h.broker.store.topic("bulk-499").unwrap().queues(), 3);
    // Durable before the reply: the topic file holds all of them.
    let saved = std::fs::read_to_string(h.broker.store.config().dir.join("topics.json")).unwrap();
    assert!(saved.contains("\"bulk-0\"") && saved.contains("\"bulk-499\""));
    // QUERY_MESSAGE: by key, by client id, per topic; an unknown key is QUERY_NOT_FOUND.
    for (topic, i) in [("bulk-1", 1), ("bulk-2", 2), ("bulk-2", 3)] {
        let p = props(&[
            ("KEYS", &format!("order-{i} shared")),
            ("UNIQ_KEY", &format!("ID{i:04}")),
        ]);
        let r = h
            .call(send_v2(topic, 0, &p, format!("body {i}").as_bytes()))
            .await;
        assert_eq!(r.code, code::SUCCESS, "{:?}", r.remark);
    }
    let r = h.call(query("bulk-2", "order-3", false)).await;
    assert_eq!(r.code, code::SUCCESS, "{:?}", r.remark);
    assert_eq!(
        records(&r)
            .iter()
            .map(|m| m.body.clone())
            .collect::<Vec<_>>(),
        vec![Bytes::from_static(b"body 3")]
    );
    let r = h.call(query("bulk-2", "shared", false)).await;
    assert_eq!(records(&r).len(), 2, "both bulk-2 messages, not bulk-1's");
    let r = h.call(query("bulk-1", "ID0001", true)).await;
    assert_eq!(records(&r)[0].body, Bytes::from_static(b"body 1"));
    // A key is not a client id.
    let r = h.call(query("bulk-1", "order-1", true)).await;
    assert_eq!(r.code, code::QUERY_NOT_FOUND, "{:?}", r.remark);
    let r = h.call(query("bulk-1", "nobody", false)).await;
    assert_eq!(r.code, code::QUERY_NOT_FOUND);
}
