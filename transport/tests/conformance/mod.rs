//! The transport conformance suite: behaviour every backend must show, written once against the
//! `Transport` trait. A backend's test file implements [`Harness`] and expands
//! [`conformance_tests!`].

#![allow(dead_code)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use rdmq_transport::codec::{DEFAULT_MAX_FRAME, RemotingCommand};
use rdmq_transport::protocol::response_code;
use rdmq_transport::remoting::{Request, Router, Server, ServerConfig, ServerHandle};
use rdmq_transport::{
    Connection, ConnectionConfig, Endpoint, Link, Listener, Transport, TransportError,
};
use tokio::sync::mpsc;

/// What a backend provides to the suite.
pub trait Harness: Send + Sync + 'static {
    /// The backend.
    type T: Transport;
    /// The backend with default settings.
    fn transport(&self) -> Self::T;
    /// The backend with its send-side memory bounded near `bytes`.
    fn bounded_transport(&self, bytes: usize) -> Self::T;
    /// The bound the backend promises for [`Harness::bounded_transport`].
    fn send_bound(&self, bytes: usize) -> u64;
    /// An endpoint to bind (port 0).
    fn endpoint(&self) -> Endpoint;
    /// Calls in flight at once in [`concurrent_calls`].
    fn concurrent_calls(&self) -> usize {
        10_000
    }
}

pub type Conn<H> = Connection<<<<H as Harness>::T as Transport>::Link as Link>::Tx>;

pub const ECHO: i32 = 1;
pub const SLOW: i32 = 2;
pub const NEVER: i32 = 3;
pub const SINK: i32 = 4;

/// Echoes the body and the `i` field back.
pub async fn echo(req: Request) -> RemotingCommand {
    let mut resp =
        RemotingCommand::response(response_code::SUCCESS, None).with_body(req.command.body.clone());
    if let Some(i) = req.command.field("i") {
        resp = resp.with_field("i", i);
    }
    resp
}

pub fn router() -> Router {
    Router::new()
        .route(ECHO, echo)
        .route(SLOW, |req: Request| async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            echo(req).await
        })
        .route(NEVER, |_req: Request| async move {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            RemotingCommand::response(response_code::SUCCESS, None)
        })
}

pub async fn serve<H: Harness>(h: &H, router: Router) -> ServerHandle {
    Server::new(h.transport(), router, ServerConfig::default())
        .bind(&h.endpoint())
        .await
        .expect("bind")
}

pub async fn connect<H: Harness>(_h: &H, t: &H::T, ep: &Endpoint) -> Conn<H> {
    let link = t.connect(ep).await.expect("connect");
    Connection::new(link, ConnectionConfig::default()).0
}

fn echo_request(i: usize, body: Bytes) -> RemotingCommand {
    RemotingCommand::request(ECHO)
        .with_field("i", i.to_string())
        .with_body(body)
}

pub async fn concurrent_calls<H: Harness>(h: H) {
    let server = serve(&h, router()).await;
    let conn = connect(&h, &h.transport(), server.local_endpoint()).await;
    let mut calls = tokio::task::JoinSet::new();
    let n = h.concurrent_calls();
    for i in 0..n {
        let conn = conn.clone();
        calls.spawn(async move {
            let body = Bytes::from(format!("body-{i}").into_bytes());
            let resp = conn
                .call(echo_request(i, body.clone()), Duration::from_secs(30))
                .await
                .expect("call");
            assert_eq!(resp.field("i"), Some(i.to_string().as_str()));
            assert_eq!(resp.body, body);
            i
        });
    }
    let mut seen = vec![false; n];
    while let Some(i) = calls.join_next().await {
        seen[i.unwrap()] = true;
    }
    assert!(seen.iter().all(|s| *s));
    assert_eq!(conn.pending_calls(), 0);
    let c = conn.counters().snapshot();
    assert!(
        c.frames_sent >= n as u64 && c.frames_received >= n as u64,
        "{c:?}"
    );
}

pub async fn bodies_up_to_max_frame<H: Harness>(h: H) {
    let server = serve(&h, router()).await;
    let conn = connect(&h, &h.transport(), server.local_endpoint()).await;
    let largest = DEFAULT_MAX_FRAME - 1024;
    for (i, size) in [0usize, 1, 127, 4096, 65_537, 1 << 20, largest]
        .into_iter()
        .enumerate()
    {
        let body = Bytes::from((0..size).map(|b| (b * 31 + i) as u8).collect::<Vec<_>>());
        let resp = conn
            .call(echo_request(i, body.clone()), Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("{size} bytes: {e}"));
        assert_eq!(resp.body.len(), size);
        assert!(resp.body == body, "body of {size} bytes corrupted");
    }
    // One byte over the maximum is refused locally with a typed error; the connection lives on.
    let too_big = Bytes::from(vec![0u8; DEFAULT_MAX_FRAME]);
    let err = conn
        .call(echo_request(99, too_big), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::Encode(_)), "{err}");
    let resp = conn
        .call(
            echo_request(100, Bytes::from_static(b"ok")),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(&resp.body[..], b"ok");
}

pub async fn oneway_in_order<H: Harness>(h: H) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let router = router().route(SINK, move |req: Request| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(req.command.body.clone());
            RemotingCommand::response(response_code::SUCCESS, None)
        }
    });
    let server = serve(&h, router).await;
    let conn = connect(&h, &h.transport(), server.local_endpoint()).await;
    for i in 0..200u32 {
        let mut cmd = RemotingCommand::request(SINK).with_body(i.to_be_bytes().to_vec());
        cmd.mark_oneway();
        conn.oneway(cmd).await.unwrap();
    }
    let mut got = Vec::new();
    while got.len() < 200 {
        let b = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("oneway delivered")
            .unwrap();
        got.push(u32::from_be_bytes(b[..].try_into().unwrap()));
    }
    // Handlers run concurrently, so completion order may differ; delivery is complete.
    got.sort();
    assert_eq!(got, (0..200).collect::<Vec<_>>());
    // One-way requests get no response: nothing is pending and a normal call still works.
    assert_eq!(conn.pending_calls(), 0);
    conn.call(echo_request(1, Bytes::new()), Duration::from_secs(5))
        .await
        .unwrap();
}

pub async fn graceful_close_drains_in_flight<H: Harness>(h: H) {
    let server = serve(&h, router()).await;
    let conn = connect(&h, &h.transport(), server.local_endpoint()).await;
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..20 {
        let conn = conn.clone();
        calls.spawn(async move {
            let mut req = echo_request(i, Bytes::from_static(b"slow"));
            req.code = SLOW;
            conn.call(req, Duration::from_secs(10)).await
        });
    }
    while conn.pending_calls() < 20 {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let started = Instant::now();
    conn.close(Duration::from_secs(5)).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    while let Some(r) = calls.join_next().await {
        let resp = r.unwrap().expect("in-flight call drained before close");
        assert_eq!(&resp.body[..], b"slow");
    }
    let err = conn
        .call(echo_request(0, Bytes::new()), Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::Closed), "{err}");
}

pub async fn server_shutdown_drains_in_flight<H: Harness>(h: H) {
    let server = serve(&h, router()).await;
    let ep = server.local_endpoint().clone();
    let conn = connect(&h, &h.transport(), &ep).await;
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..10 {
        let conn = conn.clone();
        calls.spawn(async move {
            let mut req = echo_request(i, Bytes::from_static(b"drain"));
            req.code = SLOW;
            conn.call(req, Duration::from_secs(10)).await
        });
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    server.shutdown(Duration::from_secs(5)).await;
    while let Some(r) = calls.join_next().await {
        r.unwrap().expect("in-flight request answered during drain");
    }
    // The connection ends after the drain, and nobody listens any more.
    let deadline = Instant::now() + Duration::from_secs(2);
    while conn.is_open() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!conn.is_open());
    assert!(h.transport().connect(&ep).await.is_err());
}

pub async fn peer_death_fails_pending_calls_promptly<H: Harness>(h: H) {
    let t = h.transport();
    let mut listener = t.bind(&h.endpoint()).await.unwrap();
    let ep = listener.local_endpoint();
    let accept = tokio::spawn(async move {
        let link = listener.accept().await.unwrap();
        let (conn, mut incoming) = Connection::new(link, ConnectionConfig::default());
        // Take requests but never answer; then die.
        for _ in 0..50 {
            let _ = incoming.next().await;
        }
        (conn, incoming)
    });
    let client = connect(&h, &t, &ep).await;
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..100 {
        let client = client.clone();
        calls.spawn(async move {
            client
                .call(echo_request(i, Bytes::new()), Duration::from_secs(30))
                .await
        });
    }
    let (server_conn, incoming) = accept.await.unwrap();
    let died = Instant::now();
    server_conn.abort();
    drop((server_conn, incoming));
    while let Some(r) = calls.join_next().await {
        let err = r.unwrap().unwrap_err();
        assert!(
            matches!(err, TransportError::ConnectionLost(_)),
            "expected ConnectionLost, got {err}"
        );
    }
    assert!(
        died.elapsed() < Duration::from_secs(1),
        "pending calls took {:?} to fail",
        died.elapsed()
    );
    assert!(!client.is_open());
}

pub async fn call_timeout_leaves_connection_usable<H: Harness>(h: H) {
    let server = serve(&h, router()).await;
    let conn = connect(&h, &h.transport(), server.local_endpoint()).await;
    let started = Instant::now();
    let err = conn
        .call(RemotingCommand::request(NEVER), Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::Timeout(_)), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(conn.pending_calls(), 0, "timed-out call must not leak");
    let resp = conn
        .call(
            echo_request(5, Bytes::from_static(b"x")),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(resp.field("i"), Some("5"));
}

pub async fn unknown_code_is_not_supported<H: Harness>(h: H) {
    let server = serve(&h, router()).await;
    let conn = connect(&h, &h.transport(), server.local_endpoint()).await;
    let resp = conn
        .call(RemotingCommand::request(4242), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(resp.code, response_code::REQUEST_CODE_NOT_SUPPORTED);
    assert!(resp.remark.unwrap().contains("4242"));
}

pub async fn slow_reader_bounds_sender_memory<H: Harness>(h: H) {
    const BOUND: usize = 1 << 20;
    let t = h.bounded_transport(BOUND);
    let mut listener = t.bind(&h.endpoint()).await.unwrap();
    let ep = listener.local_endpoint();
    let server = tokio::spawn(async move {
        let link = listener.accept().await.unwrap();
        // A tiny incoming queue that nobody drains: the reader stops reading.
        let cfg = ConnectionConfig {
            incoming_capacity: 2,
            ..ConnectionConfig::default()
        };
        let (conn, incoming) = Connection::new(link, cfg);
        tokio::time::sleep(Duration::from_secs(3600)).await;
        drop((conn, incoming));
    });
    let link = t.connect(&ep).await.unwrap();
    let (conn, _incoming) = Connection::new(link, ConnectionConfig::default());
    let body = Bytes::from(vec![0xAB; 64 * 1024]);
    let total = 4096; // 256 MiB offered in all
    let mut sent = 0;
    for _ in 0..total {
        let mut cmd = RemotingCommand::request(SINK).with_body(body.clone());
        cmd.mark_oneway();
        match tokio::time::timeout(Duration::from_millis(500), conn.oneway(cmd)).await {
            Ok(r) => {
                r.unwrap();
                sent += 1;
            }
            Err(_) => break,
        }
    }
    let c = conn.counters().snapshot();
    assert!(
        sent < total,
        "sender never blocked ({sent} frames of 64 KiB)"
    );
    assert!(
        c.queued_bytes_peak <= h.send_bound(BOUND),
        "queued {} bytes, bound {}",
        c.queued_bytes_peak,
        h.send_bound(BOUND)
    );
    server.abort();
}

/// Expands one `#[tokio::test]` per conformance case for a harness value.
#[macro_export]
macro_rules! conformance_tests {
    (skip_unless $cond:expr, $why:expr, $harness:expr) => {
        $crate::conformance_tests!(@skippable $cond, $why, $harness;
            concurrent_calls,
            bodies_up_to_max_frame,
            oneway_in_order,
            graceful_close_drains_in_flight,
            server_shutdown_drains_in_flight,
            peer_death_fails_pending_calls_promptly,
            call_timeout_leaves_connection_usable,
            unknown_code_is_not_supported,
            slow_reader_bounds_sender_memory
        );
    };
    (@skippable $cond:expr, $why:expr, $harness:expr; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                if !$cond {
                    eprintln!("skipped {}: {}", stringify!($case), $why);
                    return;
                }
                tokio::time::timeout(
                    std::time::Duration::from_secs(300),
                    conformance::$case($harness),
                )
                .await
                .expect(concat!(stringify!($case), " hung"));
            }
        )*
    };
    ($harness:expr) => {
        $crate::conformance_tests!(@case $harness;
            concurrent_calls,
            bodies_up_to_max_frame,
            oneway_in_order,
            graceful_close_drains_in_flight,
            server_shutdown_drains_in_flight,
            peer_death_fails_pending_calls_promptly,
            call_timeout_leaves_connection_usable,
            unknown_code_is_not_supported,
            slow_reader_bounds_sender_memory
        );
    };
    (@case $harness:expr; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                tokio::time::timeout(
                    std::time::Duration::from_secs(120),
                    conformance::$case($harness),
                )
                .await
                .expect(concat!(stringify!($case), " hung"));
            }
        )*
    };
}
