//! A store written by the previous release (`tests/fixtures/store-v1`: one consume-queue
//! file per queue, `index/keys`, a JSON pop snapshot) opens with today's code and serves every
//! message byte for byte, by queue offset, key and message id; consumer offsets and pop state
//! carry over; the converted store opens again.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use rdmq_broker::filter::TagFilter;
use rdmq_broker::handlers::{Broker, BrokerInfo};
use rdmq_broker::message::{self, HostAddr, NewMessage, Properties};
use rdmq_broker::pop::{InitialOffset, PopRequest};
use rdmq_broker::store::{FlushMode, Store, StoreConfig};

mod common;

/// The generator's bodies (see the fixture's README).
fn body(topic: &str, i: usize) -> Vec<u8> {
    let len = 200 + (i * 37) % 1300;
    (0..len)
        .map(|j| (i * 31 + j * 7 + topic.len()) as u8)
        .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

fn open(dir: &Path) -> std::sync::Arc<Broker> {
    let mut cfg = StoreConfig::new(dir);
    cfg.min_free_bytes = 0;
    cfg.flush = FlushMode::Sync;
    cfg.segment_size = 128 << 10;
    let store = Store::open(cfg).unwrap();
    let mut info = BrokerInfo::default();
    info.pop.initial = InitialOffset::First;
    Broker::start(store, info).unwrap()
}

/// Every message of the fixture, by queue offset, key and id.
fn check_messages(store: &Store) {
    for (topic, n, queues) in [("FixA", 300usize, 4usize), ("FixB", 40, 2)] {
        for q in 0..queues {
            assert_eq!(
                store.offsets(topic, q as i32),
                (0, (n / queues) as i64),
                "{topic}:{q}"
            );
            let cq = store.queue(topic, q as i32).unwrap();
            for (off, e) in cq.entries_from(0, n) {
                let i = q + off as usize * queues;
                let m = message::decode_record(&store.read_entry(&e).unwrap()).unwrap();
                assert_eq!(m.body, body(topic, i), "{topic}:{q}@{off}");
                assert_eq!(m.queue_offset, off);
                let props = Properties::parse(&m.properties).unwrap();
                assert_eq!(
                    props.get("UNIQ_KEY"),
                    Some(format!("{topic}ID{i:08}").as_str())
                );
            }
        }
        for i in [0, 1, n / 2, n - 1] {
            for key in [format!("{topic}-key{i}"), format!("{topic}ID{i:08}")] {
                let found: Vec<_> = store
                    .lookup(&key)
                    .into_iter()
                    .filter_map(|o| store.read_frame(o).ok())
                    .map(|r| message::decode_record(&r).unwrap())
                    .filter(|m| m.topic == topic && m.body == body(topic, i))
                    .collect();
                assert_eq!(found.len(), 1, "lookup {key}");
            }
        }
        // Revived retry copies (the pop state's expired deliveries) carry the same keys: count
        // this topic's records.
        let shared: Vec<_> = store
            .lookup(&format!("shared-{topic}"))
            .into_iter()
            .filter_map(|o| store.read_frame(o).ok())
            .filter(|r| message::decode_record(r).is_ok_and(|m| m.topic == topic))
            .collect();
        assert_eq!(
            shared.len(),
            n,
            "every {topic} message carries the shared key"
        );
    }
    for q in 0..4 {
        assert_eq!(
            store.committed_offset("GPull", "FixA", q),
            Some(10 + q as i64)
        );
    }
}

fn uniq(record: &Bytes) -> String {
    let m = message::decode_record(record).unwrap();
    Properties::parse(&m.properties)
        .unwrap()
        .get("UNIQ_KEY")
        .unwrap()
        .to_owned()
}

#[test]
fn a_store_of_the_previous_release_opens_and_serves_every_message() {
    let dir = common::TempDir::new();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-v1");
    copy_dir(&fixture, dir.path());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let broker = open(dir.path());
    // Converted to today's layout.
    assert!(dir.path().join("consumequeue/FixA/0").is_dir());
    assert!(!dir.path().join("index/keys").exists());
    check_messages(&broker.store);
    // Pop state: offsets 0..3 of FixB:0 were acked, 4..9 were in flight (their invisible
    // time is long over): every other FixB message is delivered, the acked ones never.
    let acked: HashSet<String> = (0..4).map(|off| format!("FixBID{:08}", off * 2)).collect();
    let mut seen = HashSet::new();
    rt.block_on(async {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while seen.len() < 36 && std::time::Instant::now() < deadline {
            let r = broker
                .pop
                .pop(&PopRequest {
                    group: "GPop".into(),
                    topic: "FixB".into(),
                    queue: -1,
                    max: 32,
                    invisible_ms: 60_000,
                    poll: Duration::from_millis(300),
                    filter: TagFilter::parse("*"),
                    fifo: false,
                })
                .await
                .unwrap();
            for p in &r.messages {
                let id = uniq(&p.record);
                assert!(!acked.contains(&id), "acked message {id} delivered again");
                seen.insert(id);
                broker.pop.ack("GPop", &p.handle.to_string()).await.unwrap();
            }
        }
    });
    assert_eq!(seen.len(), 36, "every unacked FixB message is delivered");
    // New messages after the upgrade land behind the old ones.
    rt.block_on(async {
        broker
            .store
            .put(&[NewMessage {
                topic: "FixA".into(),
                queue_id: 0,
                flag: 0,
                sys_flag: 0,
                born_timestamp: 1,
                born_host: HostAddr::parse("10.1.2.3:4567"),
                reconsume_times: 0,
                properties: "UNIQ_KEY\u{1}after-upgrade\u{2}".into(),
                body: Bytes::from_static(b"new"),
            }])
            .await
            .unwrap();
    });
    broker.shutdown();
    drop(broker);
    // The converted store opens again with the same content.
    let broker = open(dir.path());
    assert_eq!(broker.store.offsets("FixA", 0), (0, 76));
    assert_eq!(broker.store.lookup("after-upgrade").len(), 1);
    assert_eq!(broker.store.offsets("FixA", 1), (0, 75));
    broker.shutdown();
}
