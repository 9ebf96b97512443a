//! Crash safety of the real broker process: a child `rdmq-broker` in SYNC mode takes a stream
//! of pipelined sends over TCP and is killed with SIGKILL at random moments, again and again.
//! After every restart each acknowledged message must be readable, byte-identical (body and
//! properties) at the queue offset it was acknowledged with, and every stored message must be
//! complete: nothing unacknowledged may be half-present.
//!
//! `RDMQ_CRASH_SEED` replays a run; `RDMQ_CRASH_ROUNDS` changes the number of kills.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{BrokerProcess, TempDir};
use rdmq_broker::message::{self, Properties, StoredMessage};
use rdmq_transport::protocol::{request_code as rc, response_code as code};
use rdmq_transport::remoting::{Client, ClientConfig};
use rdmq_transport::tcp::TcpTransport;
use rdmq_transport::{Endpoint, RemotingCommand};

const TOPIC: &str = "crash";
const QUEUES: i32 = 4;
const SENDERS: u64 = 6;

fn start_broker(dir: &std::path::Path) -> (BrokerProcess, Endpoint) {
    let b = BrokerProcess::spawn(
        dir,
        &[
            "--flush",
            "sync",
            "--segment-size",
            "1M",
            "--max-body",
            "64K",
            "--topic",
            &format!("{TOPIC}:{QUEUES}"),
            "--auto-create-topics",
            "false",
        ],
    );
    let ep = b.endpoint.clone();
    (b, ep)
}

/// xorshift64*: reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn body_of(id: u64) -> Vec<u8> {
    let mut r = Rng(id.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let len = 1 + (r.next() % 6000) as usize;
    (0..len).map(|_| r.next() as u8).collect()
}

fn props_of(id: u64) -> String {
    format!(
        "KEYS\u{1}id-{id}\u{2}TAGS\u{1}t{}\u{2}crash-check\u{1}{}",
        id % 3,
        id.wrapping_mul(7)
    )
}

fn id_of(m: &StoredMessage) -> u64 {
    let p = Properties::parse(&m.properties).expect("stored properties parse");
    p.get("KEYS")
        .and_then(|k| k.strip_prefix("id-"))
        .and_then(|k| k.parse().ok())
        .unwrap_or_else(|| panic!("stored message without an id: {:?}", m.properties))
}

#[derive(Debug, Clone)]
struct Ack {
    queue: i32,
    queue_offset: i64,
    msg_id: String,
}

fn send(id: u64) -> RemotingCommand {
    RemotingCommand::request(rc::SEND_MESSAGE_V2)
        .with_field("a", "crash-producer")
        .with_field("b", TOPIC)
        .with_field("c", "TBW102")
        .with_field("d", QUEUES.to_string())
        .with_field("e", (id % QUEUES as u64).to_string())
        .with_field("f", "0")
        .with_field("g", "1")
        .with_field("h", "0")
        .with_field("i", props_of(id))
        .with_field("j", "0")
        .with_body(Bytes::from(body_of(id)))
}

/// Sends distinct ids until the broker stops answering; records what was acknowledged.
async fn sender(
    client: Client<TcpTransport>,
    ep: Endpoint,
    first_id: u64,
    acked: Arc<Mutex<HashMap<u64, Ack>>>,
) -> u64 {
    let mut id = first_id;
    loop {
        match client
            .invoke(&ep, send(id), Some(Duration::from_secs(5)))
            .await
        {
            Ok(r) if r.code == code::SUCCESS => {
                let ack = Ack {
                    queue: r.field("queueId").unwrap().parse().unwrap(),
                    queue_offset: r.field("queueOffset").unwrap().parse().unwrap(),
                    msg_id: r.field("msgId").unwrap().to_owned(),
                };
                acked.lock().unwrap().insert(id, ack);
            }
            Ok(r) => panic!("send {id} refused: {} {:?}", r.code, r.remark),
            // The broker died: this id is unacknowledged (it may or may not be stored).
            Err(_) => return id,
        }
        id += 1;
    }
}

/// Every message in every queue, checked to be whole and consistent.
async fn read_all(client: &Client<TcpTransport>, ep: &Endpoint) -> HashMap<u64, StoredMessage> {
    let mut all = HashMap::new();
    for q in 0..QUEUES {
        let max = client
            .invoke(
                ep,
                RemotingCommand::request(rc::GET_MAX_OFFSET)
                    .with_field("topic", TOPIC)
                    .with_field("queueId", q.to_string()),
                None,
            )
            .await
            .unwrap();
        let max: i64 = max.field("offset").unwrap().parse().unwrap();
        let mut offset = 0;
        while offset < max {
            let pull = common::pull_request("crash-verifier", TOPIC, q, offset, 64);
            let r = client
                .invoke(ep, pull, Some(Duration::from_secs(10)))
                .await
                .unwrap();
            assert_eq!(r.code, code::SUCCESS, "pull {q}@{offset}: {:?}", r.remark);
            let msgs = message::decode_records(&r.body).expect("pulled records decode");
            assert!(!msgs.is_empty());
            for m in msgs {
                assert_eq!(m.queue_offset, offset, "queue {q} has a gap or reorder");
                assert_eq!(m.queue_id, q);
                let id = id_of(&m);
                // Whole: acknowledged or not, a stored message is exactly what was sent.
                assert_eq!(
                    m.properties,
                    props_of(id),
                    "message {id}: properties differ"
                );
                assert_eq!(&m.body[..], &body_of(id)[..], "message {id}: body differs");
                assert!(all.insert(id, m).is_none(), "message {id} stored twice");
                offset += 1;
            }
        }
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_repeated_sigkill() {
    let seed = std::env::var("RDMQ_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    let rounds: usize = std::env::var("RDMQ_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(24);
    eprintln!("crash test: seed {seed} (RDMQ_CRASH_SEED), {rounds} kills");
    let mut rng = Rng(seed);
    let dir = TempDir::new();
    let acked: Arc<Mutex<HashMap<u64, Ack>>> = Arc::default();
    let started = Instant::now();
    for round in 0..=rounds {
        let (mut broker, ep) = start_broker(dir.path());
        let client = Client::new(TcpTransport::default(), ClientConfig::default());
        // Verify everything acknowledged so far, after the previous kill.
        let stored = read_all(&client, &ep).await;
        let acks = acked.lock().unwrap().clone();
        for (id, ack) in &acks {
            let m = stored.get(id).unwrap_or_else(|| {
                let in_queue = stored.values().filter(|m| m.queue_id == ack.queue).count();
                let max_phys = stored.values().map(|m| m.physical_offset).max();
                panic!(
                    "round {round}: acknowledged message {id} lost (seed {seed}): acked at queue {} offset {} phys {:?}; the queue now holds {in_queue}, highest stored phys {max_phys:?}",
                    ack.queue,
                    ack.queue_offset,
                    message::parse_offset_msg_id(&ack.msg_id)
                )
            });
            assert_eq!(
                (m.queue_id, m.queue_offset),
                (ack.queue, ack.queue_offset),
                "message {id} moved"
            );
            assert_eq!(
                message::parse_offset_msg_id(&ack.msg_id),
                Some(m.physical_offset),
                "message {id}: id no longer names its record"
            );
        }
        let unacked_stored = stored.len() - acks.len();
        if round == rounds {
            // Spot-check lookups by the acknowledged id through VIEW_MESSAGE_BY_ID.
            for (id, ack) in acks.iter().take(50) {
                let offset = message::parse_offset_msg_id(&ack.msg_id).unwrap();
                let r = client
                    .invoke(
                        &ep,
                        RemotingCommand::request(rc::VIEW_MESSAGE_BY_ID)
                            .with_field("offset", offset.to_string()),
                        None,
                    )
                    .await
                    .unwrap();
                assert_eq!(r.code, code::SUCCESS);
                assert_eq!(message::decode_record(&r.body).unwrap(), stored[id]);
            }
            client.close(Duration::from_millis(200)).await;
            eprintln!(
                "crash test: {rounds} kills in {:.1} s, {} acknowledged messages all intact, {unacked_stored} unacknowledged but whole",
                started.elapsed().as_secs_f64(),
                acks.len()
            );
            assert!(
                acks.len() > rounds * 10,
                "too few sends acknowledged to mean anything"
            );
            return;
        }
        // Stream sends and kill at a random moment (sometimes right away, during recovery
        // work or the first group commits).
        let senders: Vec<_> = (0..SENDERS)
            .map(|s| {
                let first = (round as u64 * SENDERS + s) << 32;
                tokio::spawn(sender(client.clone(), ep.clone(), first, acked.clone()))
            })
            .collect();
        let delay = match rng.next() % 8 {
            0 => rng.next() % 20,
            _ => 50 + rng.next() % 500,
        };
        tokio::time::sleep(Duration::from_millis(delay)).await;
        broker.kill();
        for s in senders {
            tokio::time::timeout(Duration::from_secs(10), s)
                .await
                .expect("a sender hung after the kill")
                .unwrap();
        }
        client.close(Duration::from_millis(100)).await;
    }
}
