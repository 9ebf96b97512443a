//! Fuzzes the proxy's message conversion both ways. Arbitrary bytes are decoded as a gRPC
//! `SendMessageRequest` (protobuf) and every message converted for the broker: no input may
//! panic, and what is accepted must be what the broker parses back (properties within the
//! limit, parseable, carrying the message id). The codec's field-count scan sees the same
//! bytes first. The same bytes are also read as a broker's PULL/POP body of stored records and
//! converted for a consumer.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use prost::Message as _;
use rdmq_protocol::message::{self, Properties};
use rdmq_proxy::convert::{Limits, delivered, outgoing};
use rdmq_proxy::pb;

const LIMITS: Limits = Limits {
    max_body: 4 << 20,
    max_properties: 16 << 10,
    max_delay_ms: 40 * 24 * 3600 * 1000,
};

fuzz_target!(|data: &[u8]| {
    // The codec's wire scan runs on every request before prost does.
    let _ = rdmq_proxy::grpc::codec::too_many_fields(data, 1);
    if let Ok(req) = pb::SendMessageRequest::decode(data) {
        let now = 1_700_000_000_000;
        for m in &req.messages {
            let topic = m.topic.as_ref().map(|t| t.name.as_str()).unwrap_or("");
            if let Ok(out) = outgoing(m, topic, &LIMITS, now) {
                assert!(out.properties.len() <= LIMITS.max_properties);
                let p = Properties::parse(&out.properties).expect("accepted properties parse");
                let id = m.system_properties.as_ref().map(|s| s.message_id.as_str());
                assert_eq!(p.get(message::prop::UNIQ_KEY), id);
            }
        }
    }
    if let Ok(records) = message::decode_records(&Bytes::copy_from_slice(data)) {
        for r in &records {
            let _ = delivered(r, 30_000);
        }
    }
});
