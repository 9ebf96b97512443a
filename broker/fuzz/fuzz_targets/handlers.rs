//! Fuzzes the broker's request handlers: arbitrary bytes become a request (one of the served
//! codes, extFields from a list of the keys the handlers read, any values, any body) and are
//! dispatched to a real broker (store on disk, pop and timer services) in this process. No
//! input may panic; long polls are cut at 50 ms. The frame decoder has its own target
//! (`transport/fuzz`).
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use rdmq_broker::handlers::{Broker, BrokerInfo, router};
use rdmq_broker::store::{Store, StoreConfig};
use rdmq_transport::codec::RemotingCommand;
use rdmq_transport::remoting::{Request, Router};

struct World {
    rt: tokio::runtime::Runtime,
    router: Router,
    _broker: Arc<Broker>,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("rdmq-fuzz-broker-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let broker = rt.block_on(async {
            let cfg = StoreConfig {
                segment_size: 8 << 20,
                min_free_bytes: 0,
                ..StoreConfig::new(&dir)
            };
            Broker::start(Store::open(cfg).unwrap(), BrokerInfo::default()).unwrap()
        });
        World {
            rt,
            router: router(broker.clone()),
            _broker: broker,
        }
    })
}

/// Every request code the broker serves.
const CODES: &[i32] = {
    use rdmq_transport::protocol::request_code as c;
    &[
        c::SEND_MESSAGE,
        c::SEND_MESSAGE_V2,
        c::SEND_BATCH_MESSAGE,
        c::CONSUMER_SEND_MSG_BACK,
        c::PULL_MESSAGE,
        c::LITE_PULL_MESSAGE,
        c::POP_MESSAGE,
        c::ACK_MESSAGE,
        c::BATCH_ACK_MESSAGE,
        c::CHANGE_MESSAGE_INVISIBLETIME,
        c::QUERY_CONSUMER_OFFSET,
        c::UPDATE_CONSUMER_OFFSET,
        c::GET_MAX_OFFSET,
        c::GET_MIN_OFFSET,
        c::SEARCH_OFFSET_BY_TIMESTAMP,
        c::VIEW_MESSAGE_BY_ID,
        c::GET_ROUTEINFO_BY_TOPIC,
        c::GET_CONSUMER_LIST_BY_GROUP,
        c::HEART_BEAT,
        c::UNREGISTER_CLIENT,
        c::UPDATE_AND_CREATE_TOPIC,
        c::UPDATE_AND_CREATE_SUBSCRIPTIONGROUP,
    ]
};

/// The fields the handlers read, so that short inputs reach past "missing field".
const KEYS: &[&str] = &[
    "topic",
    "queueId",
    "consumerGroup",
    "producerGroup",
    "a",
    "b",
    "c",
    "d",
    "e",
    "f",
    "g",
    "h",
    "i",
    "j",
    "k",
    "l",
    "m",
    "n",
    "properties",
    "bornTimestamp",
    "flag",
    "sysFlag",
    "queueOffset",
    "maxMsgNums",
    "invisibleTime",
    "pollTime",
    "bornTime",
    "initMode",
    "expType",
    "exp",
    "order",
    "extraInfo",
    "offset",
    "commitOffset",
    "suspendTimeoutMillis",
    "subscription",
    "timestamp",
    "msgId",
    "reconsumeTimes",
    "maxReconsumeTimes",
    "delayLevel",
    "originMsgId",
    "originTopic",
    "readQueueNums",
    "writeQueueNums",
    "perm",
    "clientID",
    "groupName",
    "retryMaxTimes",
];

/// Input: a code selector byte, then `key-selector value NUL` fields until a 0xFF byte,
/// then the body. Values are arbitrary bytes made UTF-8 lossily.
fn command(data: &[u8]) -> Option<RemotingCommand> {
    let (&pick, mut rest) = data.split_first()?;
    let mut cmd = RemotingCommand::request(CODES[pick as usize % CODES.len()]);
    while let Some((&k, tail)) = rest.split_first() {
        if k == 0xFF {
            rest = tail;
            break;
        }
        let end = tail.iter().position(|b| *b == 0).unwrap_or(tail.len());
        let value = String::from_utf8_lossy(&tail[..end]).into_owned();
        cmd = cmd.with_field(KEYS[k as usize % KEYS.len()], value);
        rest = tail.get(end + 1..).unwrap_or(&[]);
    }
    Some(cmd.with_body(Bytes::copy_from_slice(rest)))
}

fuzz_target!(|data: &[u8]| {
    let Some(cmd) = command(data) else { return };
    let w = world();
    let request = Request {
        command: cmd,
        peer: "127.0.0.1:1".into(),
        transport: "fuzz",
    };
    w.rt.block_on(async {
        let _ = tokio::time::timeout(Duration::from_millis(50), w.router.dispatch(request)).await;
    });
});
