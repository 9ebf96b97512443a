//! Test harness: a proxy with an embedded broker on a temporary store, and a raw gRPC client
//! (our generated stubs) that sets the metadata real clients send.

#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use rdmq_proxy::RunningProxy;
use rdmq_proxy::config::ProxyConfig;
use rdmq_proxy::pb::messaging_service_client::MessagingServiceClient;
use rdmq_proxy::pb::{self, Code};
use tonic::transport::Channel;

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "rdmq-proxy-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Proxy flags for an embedded broker reached over `broker_url` with `topics`.
pub fn args(store: &TempDir, broker_url: &str, topics: &[&str]) -> Vec<String> {
    let mut a = vec![
        "--listen".to_owned(),
        "127.0.0.1:0".to_owned(),
        "--embedded-broker".to_owned(),
        "--broker-listen".to_owned(),
        broker_url.to_owned(),
        "--store-dir".to_owned(),
        store.0.display().to_string(),
        // Segments are reserved on disk up front: keep the tests' disk use small.
        "--segment-size".to_owned(),
        "64m".to_owned(),
    ];
    for t in topics {
        a.push("--topic".into());
        a.push((*t).into());
    }
    a
}

pub async fn start(args: &[String]) -> RunningProxy {
    let cfg = ProxyConfig::from_args(args).unwrap().unwrap();
    RunningProxy::start(cfg).await.unwrap()
}

pub async fn client(proxy: &RunningProxy) -> MessagingServiceClient<Channel> {
    MessagingServiceClient::connect(format!("http://{}", proxy.grpc_addr()))
        .await
        .unwrap()
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

/// A request with the client id header (and a deadline).
pub fn req<T>(client_id: &str, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if !client_id.is_empty() {
        r.metadata_mut()
            .insert("x-mq-client-id", client_id.parse().unwrap());
    }
    r.set_timeout(Duration::from_secs(15));
    r
}

pub fn resource(name: &str) -> Option<pb::Resource> {
    Some(pb::Resource {
        resource_namespace: String::new(),
        name: name.to_owned(),
    })
}

pub fn code(s: &Option<pb::Status>) -> Code {
    Code::try_from(s.as_ref().expect("status").code).unwrap_or(Code::Unspecified)
}

/// Body `i` of `size` bytes (the same pattern the client fixtures use).
pub fn body(i: usize, size: usize) -> Bytes {
    (0..size)
        .map(|j| ((j * 7 + i * 13) % 256) as u8)
        .collect::<Vec<u8>>()
        .into()
}

pub fn message(topic: &str, id: &str, tag: &str, body: Bytes) -> pb::Message {
    pb::Message {
        topic: resource(topic),
        user_properties: [("k".to_owned(), format!("v-{id}"))].into_iter().collect(),
        system_properties: Some(pb::SystemProperties {
            tag: Some(tag.to_owned()),
            keys: vec![format!("key-{id}")],
            message_id: id.to_owned(),
            body_encoding: pb::Encoding::Identity as i32,
            message_type: pb::MessageType::Normal as i32,
            ..Default::default()
        }),
        body,
    }
}

pub async fn send(
    c: &mut MessagingServiceClient<Channel>,
    msgs: Vec<pb::Message>,
) -> pb::SendMessageResponse {
    c.send_message(req(
        "test-client",
        pb::SendMessageRequest { messages: msgs },
    ))
    .await
    .unwrap()
    .into_inner()
}

pub fn receive_request(
    topic: &str,
    group: &str,
    batch: i32,
    invisible_ms: i64,
    poll_ms: i64,
) -> pb::ReceiveMessageRequest {
    pb::ReceiveMessageRequest {
        group: resource(group),
        message_queue: Some(pb::MessageQueue {
            topic: resource(topic),
            id: -1,
            ..Default::default()
        }),
        filter_expression: Some(pb::FilterExpression {
            r#type: pb::FilterType::Tag as i32,
            expression: "*".into(),
        }),
        batch_size: batch,
        invisible_duration: Some(rdmq_proxy::convert::duration(invisible_ms)),
        auto_renew: false,
        long_polling_timeout: Some(rdmq_proxy::convert::duration(poll_ms)),
        attempt_id: None,
    }
}

/// Receives once: the leading status and the messages.
pub async fn receive(
    c: &mut MessagingServiceClient<Channel>,
    r: pb::ReceiveMessageRequest,
) -> (Code, Vec<pb::Message>) {
    use pb::receive_message_response::Content;
    let mut stream = c
        .receive_message(req("test-client", r))
        .await
        .unwrap()
        .into_inner();
    let mut status = None;
    let mut msgs = Vec::new();
    let mut saw_timestamp = false;
    while let Some(item) = stream.message().await.unwrap() {
        match item.content.expect("content") {
            Content::Status(s) => {
                assert!(status.is_none(), "one status per stream");
                status = Some(Code::try_from(s.code).unwrap());
            }
            Content::Message(m) => {
                assert!(status.is_some(), "status comes before messages");
                msgs.push(m)
            }
            Content::DeliveryTimestamp(_) => saw_timestamp = true,
        }
    }
    assert!(saw_timestamp, "delivery_timestamp ends the stream");
    (status.expect("a status"), msgs)
}

pub async fn ack(
    c: &mut MessagingServiceClient<Channel>,
    topic: &str,
    group: &str,
    handles: &[(&str, &str)],
) -> pb::AckMessageResponse {
    c.ack_message(req(
        "test-client",
        pb::AckMessageRequest {
            group: resource(group),
            topic: resource(topic),
            entries: handles
                .iter()
                .map(|(id, h)| pb::AckMessageEntry {
                    message_id: (*id).to_owned(),
                    receipt_handle: (*h).to_owned(),
                    lite_topic: None,
                })
                .collect(),
        },
    ))
    .await
    .unwrap()
    .into_inner()
}

pub async fn change_invisible(
    c: &mut MessagingServiceClient<Channel>,
    topic: &str,
    group: &str,
    message_id: &str,
    handle: &str,
    invisible_ms: i64,
) -> pb::ChangeInvisibleDurationResponse {
    c.change_invisible_duration(req(
        "test-client",
        pb::ChangeInvisibleDurationRequest {
            group: resource(group),
            topic: resource(topic),
            receipt_handle: handle.to_owned(),
            invisible_duration: Some(rdmq_proxy::convert::duration(invisible_ms)),
            message_id: message_id.to_owned(),
            lite_topic: None,
            suspend: None,
        },
    ))
    .await
    .unwrap()
    .into_inner()
}

pub fn handle(m: &pb::Message) -> String {
    m.system_properties
        .as_ref()
        .and_then(|s| s.receipt_handle.clone())
        .expect("receipt handle")
}

pub fn sys(m: &pb::Message) -> &pb::SystemProperties {
    m.system_properties.as_ref().expect("system properties")
}
