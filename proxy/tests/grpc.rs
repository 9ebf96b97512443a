//! The gRPC front end through our own generated client: routes, telemetry, send → receive →
//! ack with byte-identical bodies over each proxy→broker transport, redelivery, change of
//! invisible time, dead-lettering, bad input and a broker dying mid-stream.

mod common;

use std::time::{Duration, Instant};

use common::*;
use rdmq_proxy::pb::{self, Code};

async fn roundtrip(broker_url: &str) {
    let dir = TempDir::new("roundtrip");
    let proxy = start(&args(&dir, broker_url, &["orders:4"])).await;
    assert_eq!(
        proxy.brokers()[0].scheme.as_str(),
        broker_url.split("://").next().unwrap(),
        "the proxy reaches its broker over the configured transport"
    );
    let mut c = client(&proxy).await;

    let route = c
        .query_route(req(
            "test-client",
            pb::QueryRouteRequest {
                topic: resource("orders"),
                endpoints: Some(pb::Endpoints {
                    scheme: pb::AddressScheme::IPv4 as i32,
                    addresses: vec![pb::Address {
                        host: "127.0.0.1".into(),
                        port: proxy.grpc_addr().port() as i32,
                    }],
                }),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&route.status), Code::Ok);
    assert_eq!(route.message_queues.len(), 4);
    for q in &route.message_queues {
        let b = q.broker.as_ref().unwrap();
        assert_eq!(b.id, 0);
        assert_eq!(
            b.endpoints.as_ref().unwrap().addresses[0].port,
            proxy.grpc_addr().port() as i32,
            "routes point at the proxy"
        );
        assert_eq!(q.permission, pb::Permission::ReadWrite as i32);
        assert!(
            q.accept_message_types
                .contains(&(pb::MessageType::Normal as i32))
        );
    }

    let sizes = [1usize, 1024, 65_536, 1 << 20];
    let mut sent = Vec::new();
    for (i, &size) in sizes.iter().enumerate() {
        let id = format!("01ABCDEF{i:024}");
        let r = send(&mut c, vec![message("orders", &id, "TagA", body(i, size))]).await;
        assert_eq!(code(&r.status), Code::Ok, "{:?}", r.status);
        assert_eq!(r.entries[0].message_id, id);
        sent.push((id, body(i, size)));
    }
    // A batch of two in one request.
    let r = send(
        &mut c,
        vec![
            message("orders", "batch-1", "TagB", body(7, 10)),
            message("orders", "batch-2", "TagB", body(8, 20)),
        ],
    )
    .await;
    assert_eq!(code(&r.status), Code::Ok, "{:?}", r.status);
    assert_eq!(r.entries.len(), 2);
    assert_eq!(r.entries[1].offset, r.entries[0].offset + 1);
    sent.push(("batch-1".into(), body(7, 10)));
    sent.push(("batch-2".into(), body(8, 20)));

    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.len() < sent.len() && Instant::now() < deadline {
        let (status, msgs) =
            receive(&mut c, receive_request("orders", "g1", 32, 30_000, 2_000)).await;
        assert!(
            matches!(status, Code::Ok | Code::MessageNotFound),
            "{status:?}"
        );
        got.extend(msgs);
    }
    assert_eq!(got.len(), sent.len());
    for m in &got {
        let s = sys(m);
        let (_, expected) = sent
            .iter()
            .find(|(id, _)| *id == s.message_id)
            .expect("a sent id");
        assert_eq!(&m.body, expected, "body of {} byte-identical", s.message_id);
        assert_eq!(
            s.body_digest.as_ref().unwrap().checksum,
            format!("{:X}", md5::compute(expected))
        );
        assert_eq!(
            s.body_digest.as_ref().unwrap().r#type,
            pb::DigestType::Md5 as i32
        );
        assert_eq!(s.body_encoding, pb::Encoding::Identity as i32);
        assert_eq!(s.delivery_attempt, Some(1));
        assert_eq!(s.keys, vec![format!("key-{}", s.message_id)]);
        assert_eq!(
            m.user_properties.get("k"),
            Some(&format!("v-{}", s.message_id))
        );
        assert_eq!(
            m.user_properties.len(),
            1,
            "system properties are not user properties"
        );
        assert!(s.store_timestamp.is_some() && s.born_timestamp.is_some());
        assert!(s.queue_offset.is_some());
        assert_eq!(m.topic.as_ref().unwrap().name, "orders");
    }
    let handles: Vec<(String, String)> = got
        .iter()
        .map(|m| (sys(m).message_id.clone(), handle(m)))
        .collect();
    let pairs: Vec<(&str, &str)> = handles
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let r = ack(&mut c, "orders", "g1", &pairs).await;
    assert_eq!(code(&r.status), Code::Ok, "{:?}", r.status);
    assert!(r.entries.iter().all(|e| code(&e.status) == Code::Ok));
    // Acked twice: refused per entry.
    let r = ack(&mut c, "orders", "g1", &pairs[..1]).await;
    assert_eq!(code(&r.status), Code::InvalidReceiptHandle);
    let (status, msgs) = receive(&mut c, receive_request("orders", "g1", 32, 30_000, 500)).await;
    assert_eq!(status, Code::MessageNotFound);
    assert!(msgs.is_empty(), "nothing comes back after the acks");
    proxy.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_receive_ack_over_tcp() {
    roundtrip("tcp://127.0.0.1:0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_receive_ack_over_rdma_sim() {
    roundtrip("rdma-sim://127.0.0.1:0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivery_change_invisible_and_dead_letter() {
    let dir = TempDir::new("redeliver");
    let proxy = start(&args(&dir, "tcp://127.0.0.1:0", &["jobs:1"])).await;
    let mut c = client(&proxy).await;
    assert_eq!(
        code(
            &send(&mut c, vec![message("jobs", "m-1", "T", body(1, 100))])
                .await
                .status
        ),
        Code::Ok
    );
    // Received, not acked: back after the invisible time with attempt 2.
    let (_, first) = receive(&mut c, receive_request("jobs", "g", 1, 1_000, 2_000)).await;
    assert_eq!(first.len(), 1);
    let t0 = Instant::now();
    let mut again = Vec::new();
    while again.is_empty() && t0.elapsed() < Duration::from_secs(10) {
        again = receive(&mut c, receive_request("jobs", "g", 1, 30_000, 3_000))
            .await
            .1;
    }
    assert_eq!(again.len(), 1, "the unacked message came back");
    assert_eq!(sys(&again[0]).message_id, "m-1");
    assert_eq!(sys(&again[0]).delivery_attempt, Some(2));
    assert_eq!(again[0].body, body(1, 100));
    // The expired first handle is refused.
    let old = handle(&first[0]);
    assert_eq!(
        code(&ack(&mut c, "jobs", "g", &[("m-1", &old)]).await.status),
        Code::InvalidReceiptHandle
    );
    // Change invisible: a new handle; the previous one no longer acks.
    let h2 = handle(&again[0]);
    let changed = change_invisible(&mut c, "jobs", "g", "m-1", &h2, 60_000).await;
    assert_eq!(code(&changed.status), Code::Ok);
    assert_ne!(changed.receipt_handle, h2);
    assert_eq!(
        code(&ack(&mut c, "jobs", "g", &[("m-1", &h2)]).await.status),
        Code::InvalidReceiptHandle
    );
    // Forward to the dead-letter queue with the new handle: gone from the topic, in %DLQ%g.
    let fwd = c
        .forward_message_to_dead_letter_queue(req(
            "test-client",
            pb::ForwardMessageToDeadLetterQueueRequest {
                group: resource("g"),
                topic: resource("jobs"),
                receipt_handle: changed.receipt_handle.clone(),
                message_id: "m-1".into(),
                delivery_attempt: 2,
                max_delivery_attempts: 16,
                lite_topic: None,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&fwd.status), Code::Ok, "{:?}", fwd.status);
    let (_, dlq) = receive(
        &mut c,
        receive_request("%DLQ%g", "dlq-reader", 8, 30_000, 3_000),
    )
    .await;
    assert_eq!(dlq.len(), 1);
    assert_eq!(sys(&dlq[0]).message_id, "m-1");
    assert_eq!(dlq[0].body, body(1, 100));
    proxy.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_documented_codes_and_the_proxy_keeps_serving() {
    let dir = TempDir::new("bad");
    let proxy = start(&args(&dir, "tcp://127.0.0.1:0", &["t:2"])).await;
    let mut c = client(&proxy).await;

    let route = |topic: &str| pb::QueryRouteRequest {
        topic: resource(topic),
        endpoints: None,
    };
    let r = c
        .query_route(req("x", route("nope")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&r.status), Code::TopicNotFound);
    let r = c
        .query_route(req("", route("t")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&r.status), Code::ClientIdRequired);

    let mut cases: Vec<(pb::Message, Code)> = vec![
        (message("nope", "a", "T", body(0, 5)), Code::TopicNotFound),
        (
            message("t", "a", "T", bytes::Bytes::new()),
            Code::MessageBodyEmpty,
        ),
        (
            message("t", "a", "T", body(0, (4 << 20) + 1)),
            Code::MessageBodyTooLarge,
        ),
        (message("t", "", "T", body(0, 5)), Code::IllegalMessageId),
        (
            message("t", "a", "a|b", body(0, 5)),
            Code::IllegalMessageTag,
        ),
        (
            {
                let mut m = message("t", "a", "T", body(0, 5));
                m.user_properties.insert("UNIQ_KEY".into(), "x".into());
                m
            },
            Code::IllegalMessagePropertyKey,
        ),
        (
            {
                let mut m = message("t", "a", "T", body(0, 5));
                m.system_properties.as_mut().unwrap().delivery_timestamp =
                    Some(rdmq_proxy::convert::timestamp(
                        rdmq_protocol::now_ms() + 100 * 24 * 3600 * 1000,
                    ));
                m
            },
            Code::IllegalDeliveryTime,
        ),
    ];
    let with_properties = |n: usize| {
        let mut m = message("t", "a", "T", body(0, 5));
        m.user_properties = (0..n).map(|i| (format!("k{i}"), "v".into())).collect();
        m
    };
    cases.push((
        with_properties(rdmq_proxy::convert::MAX_USER_PROPERTIES + 1),
        Code::MessagePropertiesTooLarge,
    ));
    for (m, expected) in cases {
        let r = send(&mut c, vec![m]).await;
        assert_eq!(code(&r.status), expected, "{:?}", r.status);
        assert_eq!(code(&r.entries[0].status), expected);
        assert!(!r.status.unwrap().message.is_empty(), "a reason is given");
    }
    let r = c
        .send_message(req(
            "",
            pb::SendMessageRequest {
                messages: vec![message("t", "a", "T", body(0, 5))],
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&r.status), Code::ClientIdRequired);

    // Receive: batch size, invisible time, polling time.
    let (s, _) = receive(&mut c, receive_request("t", "g", 0, 10_000, 1_000)).await;
    assert_eq!(s, Code::BadRequest);
    let (s, _) = receive(&mut c, receive_request("t", "g", 1000, 10_000, 1_000)).await;
    assert_eq!(s, Code::BadRequest);
    let (s, _) = receive(&mut c, receive_request("t", "g", 1, 0, 1_000)).await;
    assert_eq!(s, Code::IllegalInvisibleTime);
    let (s, _) = receive(&mut c, receive_request("nope", "g", 1, 10_000, 1_000)).await;
    assert_eq!(s, Code::TopicNotFound);
    // Group names the brokers could not derive retry topics from are refused here already.
    let too_long = "g".repeat(251);
    let (s, _) = receive(
        &mut c,
        receive_request("t", &too_long[1..], 1, 10_000, 1_000),
    )
    .await;
    assert_eq!(
        s,
        Code::IllegalConsumerGroup,
        "a 250-character group has no retry topic for t"
    );
    for group in ["../../x", "a b", too_long.as_str()] {
        let (s, _) = receive(&mut c, receive_request("t", group, 1, 10_000, 1_000)).await;
        assert_eq!(s, Code::IllegalConsumerGroup, "{group}");
        let r = ack(&mut c, "t", group, &[("id", "garbage")]).await;
        assert_eq!(code(&r.status), Code::IllegalConsumerGroup, "{group}");
    }
    let (s, _) = receive(&mut c, receive_request("a/b", "g", 1, 10_000, 1_000)).await;
    assert_eq!(s, Code::IllegalTopic);
    {
        let mut r = req("test-client", receive_request("t", "g", 1, 10_000, 1_000));
        r.set_timeout(Duration::from_millis(300));
        let mut stream = c.receive_message(r).await.unwrap().into_inner();
        let first = stream.message().await.unwrap().unwrap();
        let Some(pb::receive_message_response::Content::Status(s)) = first.content else {
            panic!("a status first")
        };
        assert_eq!(s.code, Code::IllegalPollingTime as i32);
    }
    // The long poll ends before the caller's deadline.
    {
        let mut r = req("test-client", receive_request("t", "g", 1, 10_000, 20_000));
        r.set_timeout(Duration::from_secs(3));
        let t0 = Instant::now();
        let mut stream = c
            .receive_message(r)
            .await
            .expect("answered before the deadline")
            .into_inner();
        let first = stream.message().await.unwrap().unwrap();
        assert!(t0.elapsed() < Duration::from_secs(3));
        let Some(pb::receive_message_response::Content::Status(s)) = first.content else {
            panic!("a status first")
        };
        assert_eq!(s.code, Code::MessageNotFound as i32);
    }

    // Forged, malformed and foreign receipt handles.
    for h in [
        "garbage",
        "1 1 1 0000000000000000 0 0 broker-a t",
        "1 1 1 0000000000000000 0 0 other-broker t",
    ] {
        let r = ack(&mut c, "t", "g", &[("id", h)]).await;
        assert_eq!(code(&r.status), Code::InvalidReceiptHandle, "{h}");
    }
    let r = change_invisible(&mut c, "t", "g", "id", "garbage", -5).await;
    assert_eq!(code(&r.status), Code::IllegalInvisibleTime);

    // Unimplemented RPCs say so.
    let r = c
        .update_offset(req("test-client", pb::UpdateOffsetRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&r.status), Code::NotImplemented);

    // Telemetry: settings are answered merged; empty settings are refused.
    let settings = pb::TelemetryCommand {
        status: None,
        command: Some(pb::telemetry_command::Command::Settings(pb::Settings {
            client_type: Some(pb::ClientType::Producer as i32),
            pub_sub: Some(pb::settings::PubSub::Publishing(pb::Publishing {
                topics: vec![resource("t").unwrap()],
                max_body_size: 0,
                validate_message_type: true,
            })),
            ..Default::default()
        })),
    };
    let mut t = c
        .telemetry(req("tele", tokio_stream::iter([settings])))
        .await
        .unwrap()
        .into_inner();
    let reply = t.message().await.unwrap().unwrap();
    assert_eq!(code(&reply.status), Code::Ok);
    let Some(pb::telemetry_command::Command::Settings(s)) = reply.command else {
        panic!("settings reply")
    };
    let Some(pb::settings::PubSub::Publishing(p)) = s.pub_sub else {
        panic!("publishing kept")
    };
    assert_eq!(p.max_body_size, 4 << 20);
    let empty = pb::TelemetryCommand {
        status: None,
        command: Some(pb::telemetry_command::Command::Settings(
            pb::Settings::default(),
        )),
    };
    let mut t = c
        .telemetry(req("tele2", tokio_stream::iter([empty])))
        .await
        .unwrap()
        .into_inner();
    let err = t.message().await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    // 100,000 properties are refused by the codec before they are decoded.
    let err = c
        .send_message(req(
            "x",
            pb::SendMessageRequest {
                messages: vec![with_properties(100_000)],
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    assert!(err.message().contains("fields"), "{err}");
    // Still serving, and the most properties allowed go through.
    let r = send(&mut c, vec![message("t", "ok-1", "T", body(0, 5))]).await;
    assert_eq!(code(&r.status), Code::Ok);
    let r = send(
        &mut c,
        vec![with_properties(rdmq_proxy::convert::MAX_USER_PROPERTIES)],
    )
    .await;
    assert_eq!(code(&r.status), Code::Ok, "{:?}", r.status);
    proxy.shutdown().await.unwrap();
}

/// Starts a broker in a child process (an `rdmq-proxy --embedded-broker`, whose gRPC side
/// stays idle) and returns it with its broker endpoint.
fn broker_process(store: &TempDir, name: &str, topics: &[&str]) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_rdmq-proxy"));
    cmd.args(args(store, "tcp://127.0.0.1:0", topics))
        .args(["--broker-name", name])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let out = child.stdout.take().unwrap();
    let mut lines = std::io::BufReader::new(out).lines();
    let broker = loop {
        let line = lines.next().expect("child printed its endpoints").unwrap();
        if let Some(b) = line.strip_prefix("broker ") {
            break b.to_owned();
        }
    };
    (child, broker)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_mid_stream_fails_only_its_calls() {
    let dir_a = TempDir::new("brokerA");
    let dir_b = TempDir::new("brokerB");
    let (mut child, b_url) = broker_process(&dir_b, "broker-b", &["shared:2", "only-b:1"]);
    let mut a = args(&dir_a, "tcp://127.0.0.1:0", &["shared:2", "only-a:1"]);
    a.extend(["--broker".into(), b_url.clone()]);
    let proxy = start(&a).await;
    let mut c = client(&proxy).await;
    let r = c
        .query_route(req(
            "x",
            pb::QueryRouteRequest {
                topic: resource("shared"),
                endpoints: None,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.message_queues.len(), 4, "two brokers, two queues each");

    // A long poll parked on broker B when it dies.
    let mut c2 = client(&proxy).await;
    let parked = tokio::spawn(async move {
        let t0 = Instant::now();
        let r = receive(&mut c2, receive_request("only-b", "g", 1, 10_000, 10_000)).await;
        (r.0, t0.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    child.kill().unwrap();
    let _ = child.wait();
    let (status, took) = parked.await.unwrap();
    assert!(
        matches!(status, Code::InternalServerError | Code::ProxyTimeout),
        "the parked receive gets a clear status, got {status:?}"
    );
    assert!(
        took < Duration::from_secs(5),
        "promptly, not at the deadline: {took:?}"
    );

    // Sends to B's topic fail clearly; the shared topic fails over to A; A's topic works.
    let r = send(&mut c, vec![message("only-b", "b1", "T", body(0, 5))]).await;
    assert!(
        matches!(
            code(&r.status),
            Code::InternalServerError | Code::ProxyTimeout | Code::TopicNotFound
        ),
        "{:?}",
        r.status
    );
    for i in 0..4 {
        let r = send(
            &mut c,
            vec![message("shared", &format!("s{i}"), "T", body(i, 5))],
        )
        .await;
        assert_eq!(code(&r.status), Code::Ok, "{:?}", r.status);
    }
    let r = send(&mut c, vec![message("only-a", "a1", "T", body(0, 5))]).await;
    assert_eq!(code(&r.status), Code::Ok);
    // FIFO groups keep their queue: a group living on the dead broker is refused, not moved
    // to broker A (which would break its order); groups on A keep working.
    let (mut ok, mut refused) = (0, 0);
    for g in 0..20 {
        let mut m = message("shared", &format!("f{g}"), "T", body(g, 5));
        m.system_properties.as_mut().unwrap().message_group = Some(format!("group-{g}"));
        let r = send(&mut c, vec![m]).await;
        match code(&r.status) {
            Code::Ok => ok += 1,
            Code::InternalServerError => refused += 1,
            other => panic!("unexpected {other:?}: {:?}", r.status),
        }
    }
    assert!(
        ok > 0 && refused > 0,
        "groups on both brokers: {ok} sent, {refused} refused"
    );
    let (s, msgs) = receive(&mut c, receive_request("only-a", "g", 4, 10_000, 2_000)).await;
    assert_eq!(s, Code::Ok);
    assert_eq!(msgs.len(), 1);
    proxy.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_refused_with_too_many_requests_and_clients_come_and_go() {
    let dir = TempDir::new("overload");
    let mut a = args(&dir, "tcp://127.0.0.1:0", &["t:2"]);
    a.extend(["--max-in-flight".into(), "1".into()]);
    let proxy = start(&a).await;
    let mut c = client(&proxy).await;
    // One receive parked: the only slot is taken.
    let mut c2 = client(&proxy).await;
    let parked = tokio::spawn(async move {
        receive(&mut c2, receive_request("t", "g", 1, 10_000, 2_000))
            .await
            .0
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = send(&mut c, vec![message("t", "m1", "T", body(0, 5))]).await;
    assert_eq!(code(&r.status), Code::TooManyRequests, "{:?}", r.status);
    assert_eq!(parked.await.unwrap(), Code::MessageNotFound);
    // The slot is free again.
    let r = send(&mut c, vec![message("t", "m1", "T", body(0, 5))]).await;
    assert_eq!(code(&r.status), Code::Ok);

    // Push consumers' assignment: one queue per broker, any queue id.
    let r = c
        .query_assignment(req(
            "x",
            pb::QueryAssignmentRequest {
                topic: resource("t"),
                group: resource("g"),
                endpoints: None,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&r.status), Code::Ok);
    assert_eq!(r.assignments.len(), 1);
    assert_eq!(r.assignments[0].message_queue.as_ref().unwrap().id, -1);
    // Heartbeat and termination need a client id; settings are dropped on termination.
    let hb = c
        .heartbeat(req(
            "",
            pb::HeartbeatRequest {
                group: None,
                client_type: 1,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&hb.status), Code::ClientIdRequired);
    let settings = pb::TelemetryCommand {
        status: None,
        command: Some(pb::telemetry_command::Command::Settings(pb::Settings {
            pub_sub: Some(pb::settings::PubSub::Subscription(
                pb::Subscription::default(),
            )),
            ..Default::default()
        })),
    };
    // The telemetry stream stays open as long as the client lives.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(settings.clone()).await.unwrap();
    let mut t = c
        .telemetry(req(
            "leaving",
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
        .await
        .unwrap()
        .into_inner();
    t.message().await.unwrap().unwrap();
    assert_eq!(proxy.service().client_count(), 1);
    let bye = c
        .notify_client_termination(req(
            "leaving",
            pb::NotifyClientTerminationRequest {
                group: resource("g"),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&bye.status), Code::Ok);
    assert_eq!(proxy.service().client_count(), 0);
    drop(tx);
    // A client that vanishes without terminating is forgotten when its stream ends.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(settings).await.unwrap();
    let mut t = c
        .telemetry(req(
            "crashing",
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
        .await
        .unwrap()
        .into_inner();
    t.message().await.unwrap().unwrap();
    assert_eq!(proxy.service().client_count(), 1);
    drop(tx);
    let t0 = Instant::now();
    while proxy.service().client_count() != 0 && t0.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(proxy.service().client_count(), 0);
    proxy.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_answers_parked_long_polls_at_once() {
    let dir = TempDir::new("drain");
    let proxy = start(&args(&dir, "tcp://127.0.0.1:0", &["t:1"])).await;
    let mut c = client(&proxy).await;
    let parked = tokio::spawn(async move {
        let t0 = Instant::now();
        let r = receive(&mut c, receive_request("t", "g", 1, 10_000, 10_000))
            .await
            .0;
        (r, t0.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t0 = Instant::now();
    proxy.shutdown().await.unwrap();
    let (status, took) = parked.await.unwrap();
    assert_eq!(status, Code::MessageNotFound);
    assert!(
        took < Duration::from_secs(3),
        "answered at the drain, not after the 10 s poll: {took:?}"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "the drain itself is bounded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handles_stay_valid_across_proxies_because_the_proxy_is_stateless() {
    let dir_p = TempDir::new("stateless-p");
    let dir_b = TempDir::new("stateless-b");
    let (mut child, b_url) = broker_process(&dir_b, "broker-x", &["s:1"]);
    // Proxy 1 (with its own embedded broker, not holding the topic) delivers the message.
    let mut a = args(&dir_p, "tcp://127.0.0.1:0", &[]);
    a.extend(["--broker".into(), b_url.clone()]);
    let p1 = start(&a).await;
    let mut c = client(&p1).await;
    assert_eq!(
        code(
            &send(&mut c, vec![message("s", "m", "T", body(3, 33))])
                .await
                .status
        ),
        Code::Ok
    );
    let (_, got) = receive(&mut c, receive_request("s", "g", 1, 60_000, 3_000)).await;
    assert_eq!(got.len(), 1);
    let h = handle(&got[0]);
    p1.shutdown().await.unwrap();
    // Proxy 2, freshly started, has never seen broker-x: the ack still works.
    let p2 = start(&[
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--broker".into(),
        b_url,
    ])
    .await;
    let mut c = client(&p2).await;
    let r = ack(&mut c, "s", "g", &[("m", &h)]).await;
    assert_eq!(code(&r.status), Code::Ok, "{:?}", r.status);
    let (s, msgs) = receive(&mut c, receive_request("s", "g", 1, 60_000, 500)).await;
    assert_eq!(s, Code::MessageNotFound);
    assert!(msgs.is_empty());
    p2.shutdown().await.unwrap();
    child.kill().unwrap();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orderly_group_gets_fifo_delivery_through_grpc() {
    use rdmq_transport::remoting::{Client, ClientConfig};
    use rdmq_transport::{AnyTransport, RemotingCommand};
    let dir = TempDir::new("fifo");
    let proxy = start(&args(&dir, "tcp://127.0.0.1:0", &["fifo:1"])).await;
    // The group is made orderly on the broker (UPDATE_AND_CREATE_SUBSCRIPTIONGROUP).
    let admin = Client::new(AnyTransport::default(), ClientConfig::default());
    let resp = admin
        .invoke(
            &proxy.brokers()[0],
            RemotingCommand::request(200)
                .with_body(br#"{"groupName":"ordered","consumeMessageOrderly":true}"#.to_vec()),
            None,
        )
        .await
        .unwrap();
    assert_eq!(resp.code, 0, "{:?}", resp.remark);
    let mut c = client(&proxy).await;
    for (id, group) in [
        ("a1", "A"),
        ("a2", "A"),
        ("b1", "B"),
        ("a3", "A"),
        ("b2", "B"),
    ] {
        let mut m = message("fifo", id, "T", body(0, 8));
        m.system_properties.as_mut().unwrap().message_group = Some(group.into());
        m.system_properties.as_mut().unwrap().message_type = pb::MessageType::Fifo as i32;
        assert_eq!(code(&send(&mut c, vec![m]).await.status), Code::Ok);
    }
    let mut seen: Vec<String> = Vec::new();
    for _ in 0..10 {
        let (_, got) = receive(
            &mut c,
            receive_request("fifo", "ordered", 32, 30_000, 1_000),
        )
        .await;
        if got.is_empty() {
            break;
        }
        let groups: Vec<_> = got.iter().map(|m| sys(m).message_group.clone()).collect();
        let unique: std::collections::BTreeSet<_> = groups.iter().collect();
        assert_eq!(
            unique.len(),
            groups.len(),
            "one message per group per batch: {groups:?}"
        );
        assert!(
            got.iter()
                .all(|m| sys(m).message_type == pb::MessageType::Fifo as i32)
        );
        // While this batch is in flight, nothing else is handed out.
        let (_, other) = receive(&mut c, receive_request("fifo", "ordered", 32, 30_000, 300)).await;
        assert!(
            other.is_empty(),
            "queue locked while its messages are in flight"
        );
        let ids: Vec<String> = got.iter().map(|m| sys(m).message_id.clone()).collect();
        let hs: Vec<String> = got.iter().map(handle).collect();
        let pairs: Vec<(&str, &str)> = ids
            .iter()
            .map(String::as_str)
            .zip(hs.iter().map(String::as_str))
            .collect();
        assert_eq!(
            code(&ack(&mut c, "fifo", "ordered", &pairs).await.status),
            Code::Ok
        );
        seen.extend(ids);
    }
    let order = |g: char| -> Vec<&String> { seen.iter().filter(|s| s.starts_with(g)).collect() };
    assert_eq!(order('a'), ["a1", "a2", "a3"]);
    assert_eq!(order('b'), ["b1", "b2"]);
    proxy.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_topics_are_closed_and_abandoned_or_nacked_messages_return_at_once() {
    let dir = TempDir::new("system");
    let proxy = start(&args(&dir, "tcp://127.0.0.1:0", &["work:1"])).await;
    let mut c = client(&proxy).await;
    // The pop log (which would reveal receipt handles) and retry topics are off limits.
    for t in ["rmq_sys_POP_LOG", "%RETRY%g+work"] {
        let r = send(&mut c, vec![message(t, "x", "T", body(0, 5))]).await;
        assert_eq!(code(&r.status), Code::IllegalTopic, "{t}");
        let (s, _) = receive(&mut c, receive_request(t, "g", 1, 10_000, 100)).await;
        assert_eq!(s, Code::IllegalTopic, "{t}");
    }
    let r = send(&mut c, vec![message("%DLQ%g", "x", "T", body(0, 5))]).await;
    assert_eq!(
        code(&r.status),
        Code::IllegalTopic,
        "dead-letter topics are read-only"
    );

    // A receive the client abandons: what the broker popped for it is released at once.
    let mut c2 = client(&proxy).await;
    let abandoned = tokio::spawn(async move {
        receive(&mut c2, receive_request("work", "g", 1, 60_000, 5_000)).await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    abandoned.abort();
    let _ = abandoned.await;
    assert_eq!(
        code(
            &send(&mut c, vec![message("work", "w1", "T", body(0, 5))])
                .await
                .status
        ),
        Code::Ok
    );
    let t0 = Instant::now();
    let mut got = Vec::new();
    while got.is_empty() && t0.elapsed() < Duration::from_secs(10) {
        got = receive(&mut c, receive_request("work", "g", 1, 60_000, 2_000))
            .await
            .1;
    }
    assert_eq!(got.len(), 1, "not hidden for the abandoned call's 60 s");
    assert_eq!(sys(&got[0]).message_id, "w1");

    // A nack (invisible time 0) makes the message visible again now.
    let r = change_invisible(&mut c, "work", "g", "w1", &handle(&got[0]), 0).await;
    assert_eq!(code(&r.status), Code::Ok, "{:?}", r.status);
    let t0 = Instant::now();
    let mut again = Vec::new();
    while again.is_empty() && t0.elapsed() < Duration::from_secs(5) {
        again = receive(&mut c, receive_request("work", "g", 1, 60_000, 1_000))
            .await
            .1;
    }
    assert_eq!(again.len(), 1, "a nacked message comes back at once");
    assert_eq!(sys(&again[0]).message_id, "w1");
    proxy.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_renew_keeps_a_message_hidden_until_it_is_acked() {
    let dir = TempDir::new("renew");
    let proxy = start(&args(&dir, "tcp://127.0.0.1:0", &["renew:1"])).await;
    let mut c = client(&proxy).await;
    assert_eq!(
        code(
            &send(&mut c, vec![message("renew", "r1", "T", body(0, 9))])
                .await
                .status
        ),
        Code::Ok
    );
    let mut r = receive_request("renew", "g", 1, 2_000, 2_000);
    r.auto_renew = true;
    let (_, got) = receive(&mut c, r).await;
    assert_eq!(got.len(), 1);
    let original = handle(&got[0]);
    assert_eq!(proxy.service().renewing(), 1);
    // Well past the 2 s invisible time: renewed, so nobody else gets it.
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(5) {
        let (_, other) = receive(&mut c, receive_request("renew", "g", 1, 2_000, 500)).await;
        assert!(other.is_empty(), "a renewed message is not redelivered");
    }
    // The client acks with the handle it received; the proxy uses the renewed one.
    let r = ack(&mut c, "renew", "g", &[("r1", &original)]).await;
    assert_eq!(code(&r.status), Code::Ok, "{:?}", r.status);
    assert_eq!(proxy.service().renewing(), 0);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (s, other) = receive(&mut c, receive_request("renew", "g", 1, 2_000, 500)).await;
    assert_eq!(s, Code::MessageNotFound);
    assert!(other.is_empty(), "acked for good");
    proxy.shutdown().await.unwrap();
}

/// The metrics endpoint of a proxy process (its own registry): the hop's round-trip histogram
/// counts exactly the sends made, the link reports its backend, and the simulated NIC's work
/// appears once rdma-sim carries the hop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_endpoint_reports_hop_rt_links_and_nic_work() {
    use std::io::BufRead;
    let dir = TempDir::new("metrics");
    let mut a = args(&dir, "rdma-sim://127.0.0.1:0", &["orders:2"]);
    a.extend(["--metrics-listen".into(), "127.0.0.1:0".into()]);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_rdmq-proxy"))
        .args(&a)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut metrics, mut grpc) = (None, None);
    while metrics.is_none() || grpc.is_none() {
        let line = lines
            .next()
            .expect("the proxy printed its addresses")
            .unwrap();
        if let Some(m) = line.strip_prefix("metrics http://") {
            metrics = Some(
                m.trim_end_matches("/metrics")
                    .parse::<std::net::SocketAddr>()
                    .unwrap(),
            );
        } else if let Some(g) = line.strip_prefix("listening grpc://") {
            grpc = Some(g.to_owned());
        }
    }
    let (metrics, grpc) = (metrics.unwrap(), grpc.unwrap());
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut c = pb::messaging_service_client::MessagingServiceClient::new(channel);
    for i in 0..5 {
        let id = format!("01METRICS{i:023}");
        let r = send(&mut c, vec![message("orders", &id, "T", body(i, 1024))]).await;
        assert_eq!(code(&r.status), Code::Ok);
    }
    use rdmq_transport::metrics::http::get;
    let (status, text) = get(metrics, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    assert!(
        text.contains(
            "rdmq_remoting_call_seconds_count{client=\"proxy\",code=\"SEND_MESSAGE_V2\"} 5\n"
        ),
        "{text}"
    );
    assert!(text.contains("# TYPE rdmq_remoting_call_seconds summary"));
    let link = text
        .lines()
        .find(|l| l.starts_with("rdmq_link_info{client=\"proxy\""))
        .expect("a link line");
    assert!(link.contains("transport=\"rdma-sim\""), "{link}");
    let nic: f64 = text
        .lines()
        .find(|l| l.starts_with("rdma_sim_nic_seconds_total{part=\"inline\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .expect("simulated NIC work reported");
    assert!(nic > 0.0);
    let (_, hdr) = get(metrics, "/metrics/hdr").await.unwrap();
    let sends = rdmq_transport::metrics::parse_hdr(&hdr)
        .into_iter()
        .find(|(k, _)| k == "rdmq_remoting_call_seconds{client=\"proxy\",code=\"SEND_MESSAGE_V2\"}")
        .expect("send histogram")
        .1;
    assert_eq!(sends.count(), 5);
    assert!(sends.quantile_ns(0.5) > 0 && sends.quantile_ns(0.5) <= sends.quantile_ns(1.0));
    assert_eq!(get(metrics, "/other").await.unwrap().0, 404);
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_per_client_cap_are_closed_and_admitted_clients_keep_working() {
    use tokio::io::AsyncReadExt;
    let dir = TempDir::new("caps");
    let mut a = args(&dir, "tcp://127.0.0.1:0", &["t:2"]);
    a.extend(["--max-connections-per-client".into(), "3".into()]);
    let proxy = start(&a).await;
    let mut good = client(&proxy).await;
    let r = send(&mut good, vec![message("t", "c-1", "T", body(0, 5))]).await;
    assert_eq!(code(&r.status), Code::Ok);
    // Two more from this address fill the cap of three; the next is closed at once.
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(
            tokio::net::TcpStream::connect(proxy.grpc_addr())
                .await
                .unwrap(),
        );
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut over = tokio::net::TcpStream::connect(proxy.grpc_addr())
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(2), over.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "a connection over the cap stayed open: {read:?}"
    );
    // The admitted client is unaffected; once a slot frees, a new client gets in.
    let r = send(&mut good, vec![message("t", "c-2", "T", body(0, 5))]).await;
    assert_eq!(code(&r.status), Code::Ok);
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut fresh = client(&proxy).await;
    let r = send(&mut fresh, vec![message("t", "c-3", "T", body(0, 5))]).await;
    assert_eq!(code(&r.status), Code::Ok);
    drop((held, over));
    proxy.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_completes_the_http2_preface_is_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = TempDir::new("preface");
    let mut a = args(&dir, "tcp://127.0.0.1:0", &["t:2"]);
    a.extend(["--handshake-timeout-ms".into(), "300".into()]);
    let proxy = start(&a).await;
    let mut good = client(&proxy).await;
    let mut silent = tokio::net::TcpStream::connect(proxy.grpc_addr())
        .await
        .unwrap();
    let mut trickler = tokio::net::TcpStream::connect(proxy.grpc_addr())
        .await
        .unwrap();
    trickler.write_all(b"PRI * HTTP").await.unwrap();
    let t0 = Instant::now();
    for s in [&mut silent, &mut trickler] {
        // The server's own SETTINGS frame comes first; then the connection must end.
        let closed = tokio::time::timeout(Duration::from_secs(3), async {
            let mut buf = [0u8; 256];
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "a connection without the preface stayed open"
        );
    }
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    // A real client, idle past the handshake timeout, is not affected.
    let r = send(&mut good, vec![message("t", "p-1", "T", body(0, 5))]).await;
    assert_eq!(code(&r.status), Code::Ok);
    proxy.shutdown().await.unwrap();
}
