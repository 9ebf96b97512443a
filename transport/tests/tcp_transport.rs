//! The TCP backend: the shared conformance suite, plus what only a byte stream can show
//! (malformed and oversize frames from a raw socket, a peer process killed mid-frame, write
//! coalescing, reconnect backoff).

mod conformance;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdmq_transport::codec::RemotingCommand;
use rdmq_transport::protocol::response_code;
use rdmq_transport::remoting::{Client, ClientConfig};
use rdmq_transport::tcp::{TcpConfig, TcpTransport};
use rdmq_transport::{Connection, ConnectionConfig, Endpoint, Listener, Transport, TransportError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Clone, Copy)]
struct Tcp;

impl conformance::Harness for Tcp {
    type T = TcpTransport;
    fn transport(&self) -> TcpTransport {
        TcpTransport::default()
    }
    fn bounded_transport(&self, bytes: usize) -> TcpTransport {
        TcpTransport::new(TcpConfig {
            max_inflight_bytes: bytes,
            ..TcpConfig::default()
        })
    }
    fn send_bound(&self, bytes: usize) -> u64 {
        bytes as u64
    }
    fn endpoint(&self) -> Endpoint {
        Endpoint::tcp("127.0.0.1", 0)
    }
}

conformance_tests!(Tcp);

/// Bytes a raw socket reads until the server closes it; fails if it stays open for 2 s.
async fn read_until_closed(s: &mut tokio::net::TcpStream) {
    let mut sink = vec![0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut sink)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(_)) => continue,
            Err(_) => panic!("server kept a connection with a malformed frame open"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversize_frames_close_only_their_connection() {
    let server = conformance::serve(&Tcp, conformance::router()).await;
    let ep = server.local_endpoint().clone();
    let good = conformance::connect(&Tcp, &TcpTransport::default(), &ep).await;
    let bad_frames: Vec<Vec<u8>> = vec![
        vec![0, 0, 0, 2, 0, 0],                         // length below minimum
        vec![0x7f, 0xff, 0xff, 0xff],                   // oversize
        vec![0, 0, 0, 8, 9, 0, 0, 2, b'{', b'}', 0, 0], // unknown serialize type
        vec![0, 0, 0, 8, 0, 0, 0, 2, b'{', b'x', 0, 0], // invalid JSON
        vec![0, 0, 0, 6, 0, 0, 0, 9, 0, 0],             // header longer than frame
    ];
    for frame in bad_frames {
        let mut raw = tokio::net::TcpStream::connect(ep.authority())
            .await
            .unwrap();
        raw.write_all(&frame).await.unwrap();
        read_until_closed(&mut raw).await;
        // Other connections, old and new, are still served.
        let resp = good
            .call(
                RemotingCommand::request(conformance::ECHO).with_body(&b"alive"[..]),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert_eq!(&resp.body[..], b"alive");
        let fresh = conformance::connect(&Tcp, &TcpTransport::default(), &ep).await;
        fresh
            .call(
                RemotingCommand::request(conformance::ECHO),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
    }
}

/// Child side of `peer_killed_mid_frame`: answers the first request with half a frame, then
/// waits to be killed.
#[test]
fn child_half_frame_peer() {
    let Ok(addr) = std::env::var("RDMQ_TEST_HALF_FRAME_PEER") else {
        return;
    };
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut rest = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut rest).unwrap();
    let reply = RemotingCommand::response(0, None).with_body(vec![1u8; 1000]);
    let bytes = reply.encode_to_vec().unwrap();
    s.write_all(&bytes[..bytes.len() / 2]).unwrap();
    s.flush().unwrap();
    println!("HALF-FRAME-SENT");
    std::thread::sleep(Duration::from_secs(600));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_killed_mid_frame_fails_all_pending_calls_within_1s() {
    let t = TcpTransport::default();
    let mut listener = t.bind(&Endpoint::tcp("127.0.0.1", 0)).await.unwrap();
    let addr = listener.local_endpoint().authority();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "child_half_frame_peer",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("RDMQ_TEST_HALF_FRAME_PEER", &addr)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let link = listener.accept().await.unwrap();
    let (conn, _incoming) = Connection::new(link, ConnectionConfig::default());
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let conn = conn.clone();
        calls.spawn(async move {
            conn.call(RemotingCommand::request(10), Duration::from_secs(60))
                .await
        });
    }
    // Wait until the child has written half a response.
    let mut stdout = child.stdout.take().unwrap();
    let marker = tokio::task::spawn_blocking(move || {
        let mut out = String::new();
        let mut buf = [0u8; 256];
        while !out.contains("HALF-FRAME-SENT") {
            let n = stdout.read(&mut buf).unwrap();
            assert!(n > 0, "child exited early: {out}");
            out.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    tokio::time::timeout(Duration::from_secs(30), marker)
        .await
        .unwrap()
        .unwrap();
    let killed = Instant::now();
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    while let Some(r) = calls.join_next().await {
        let err = r.unwrap().unwrap_err();
        assert!(matches!(err, TransportError::ConnectionLost(_)), "{err}");
    }
    assert!(
        killed.elapsed() < Duration::from_secs(1),
        "took {:?}",
        killed.elapsed()
    );
}

#[tokio::test(flavor = "current_thread")]
async fn queued_frames_leave_in_few_vectored_writes() {
    let server = conformance::serve(&Tcp, conformance::router()).await;
    let conn = conformance::connect(&Tcp, &TcpTransport::default(), server.local_endpoint()).await;
    let before = conn.counters().snapshot();
    // Queue 1,000 frames without yielding to the writer task.
    for i in 0..1000u32 {
        let mut cmd =
            RemotingCommand::request(conformance::SINK).with_body(i.to_be_bytes().to_vec());
        cmd.mark_oneway();
        conn.oneway(cmd).await.unwrap();
    }
    let resp = conn
        .call(
            RemotingCommand::request(conformance::ECHO),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(resp.code, response_code::SUCCESS);
    let d = conn.counters().snapshot() - before;
    assert_eq!(d.frames_sent, 1001);
    assert!(
        d.send_calls * 10 <= d.frames_sent,
        "{} writes for {} frames: no coalescing",
        d.send_calls,
        d.frames_sent
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_are_sent_without_copy_small_ones_with_one() {
    let server = conformance::serve(&Tcp, conformance::router()).await;
    let conn = conformance::connect(&Tcp, &TcpTransport::default(), server.local_endpoint()).await;
    let before = conn.counters().snapshot();
    conn.call(
        RemotingCommand::request(conformance::ECHO).with_body(vec![1u8; 1 << 20]),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let d = conn.counters().snapshot() - before;
    assert_eq!(d.payload_copies, 0);
    conn.call(
        RemotingCommand::request(conformance::ECHO).with_body(vec![1u8; 1024]),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let d = conn.counters().snapshot() - before;
    assert_eq!((d.payload_copies, d.copied_bytes), (1, 1024));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_reconnects_with_backoff() {
    // A port with nobody listening.
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = probe.local_addr().unwrap().port();
    drop(probe);
    let ep = Endpoint::tcp("127.0.0.1", port);
    let client = Client::new(
        TcpTransport::default(),
        ClientConfig {
            backoff_initial: Duration::from_millis(200),
            ..ClientConfig::default()
        },
    );
    let req = || RemotingCommand::request(conformance::ECHO).with_body(Bytes::from_static(b"hi"));
    assert!(matches!(
        client.invoke(&ep, req(), None).await,
        Err(TransportError::Connect { .. })
    ));
    // Within the backoff window the client fails fast instead of dialling.
    match client.invoke(&ep, req(), None).await {
        Err(TransportError::Unavailable { retry_in, .. }) => {
            assert!(retry_in <= Duration::from_millis(200))
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    // Once a server is up and the backoff has passed, calls succeed.
    let server = rdmq_transport::remoting::Server::new(
        TcpTransport::default(),
        conformance::router(),
        Default::default(),
    )
    .bind(&ep)
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    let resp = client.invoke(&ep, req(), None).await.unwrap();
    assert_eq!(&resp.body[..], b"hi");
    // The server goes away: the pooled connection breaks and is re-dialled once it is back.
    server.shutdown(Duration::from_secs(1)).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(client.invoke(&ep, req(), None).await.is_err());
    let _server = rdmq_transport::remoting::Server::new(
        TcpTransport::default(),
        conformance::router(),
        Default::default(),
    )
    .bind(&ep)
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match client.invoke(&ep, req(), None).await {
            Ok(resp) => {
                assert_eq!(&resp.body[..], b"hi");
                break;
            }
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("never reconnected: {e}"),
        }
    }
}

/// How long a raw socket stays open before the server closes it (bounded by `within`).
async fn open_for(s: &mut tokio::net::TcpStream, within: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    let mut sink = [0u8; 64];
    loop {
        let left = within.saturating_sub(t0.elapsed());
        match tokio::time::timeout(left, s.read(&mut sink)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(t0.elapsed()),
            Ok(Ok(_)) => continue,
            Err(_) => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_caps_idle_and_partial_frame_timeouts_spare_good_clients() {
    use rdmq_transport::remoting::{Server, ServerConfig};
    let transport = TcpTransport::new(TcpConfig {
        frame_timeout: Some(Duration::from_millis(300)),
        ..TcpConfig::default()
    });
    let server = Server::new(
        transport,
        conformance::router(),
        ServerConfig {
            max_connections: 4,
            max_connections_per_client: 3,
            idle_timeout: Some(Duration::from_millis(600)),
            ..ServerConfig::default()
        },
    )
    .bind(&Endpoint::tcp("127.0.0.1", 0))
    .await
    .unwrap();
    let ep = server.local_endpoint().clone();
    let echo = |c: Connection<_>| async move {
        c.call(
            RemotingCommand::request(conformance::ECHO).with_body(&b"alive"[..]),
            Duration::from_secs(5),
        )
        .await
        .map(|r| r.body)
    };
    // A good client keeps calling throughout (more often than the idle timeout).
    let good = conformance::connect(&Tcp, &TcpTransport::default(), &ep).await;
    let keep = good.clone();
    let busy = tokio::spawn(async move {
        for _ in 0..30 {
            assert_eq!(&echo(keep.clone()).await.unwrap()[..], b"alive");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });

    // Per-client cap: this address has 1 connection; two more are admitted, the next closed.
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(
            tokio::net::TcpStream::connect(ep.authority())
                .await
                .unwrap(),
        );
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut over = tokio::net::TcpStream::connect(ep.authority())
        .await
        .unwrap();
    let closed = open_for(&mut over, Duration::from_millis(500)).await;
    assert!(
        closed.is_some(),
        "a connection over the per-client cap stayed open"
    );
    assert_eq!(server.connections(), 3);

    // Slowloris: a frame trickled a byte at a time is cut at the frame timeout.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut slow = tokio::net::TcpStream::connect(ep.authority())
        .await
        .unwrap();
    let t0 = Instant::now();
    let trickle = async {
        for b in [0u8, 0, 0, 64, 0, 0, 0, 10] {
            if slow.write_all(&[b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    trickle.await;
    let closed = open_for(&mut slow, Duration::from_secs(2)).await;
    assert!(closed.is_some(), "a trickled frame kept its connection");
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());

    // Idle: a connection that never sends anything is closed after the idle timeout.
    let mut idle = held.pop().unwrap();
    let closed = open_for(&mut idle, Duration::from_secs(3)).await;
    assert!(closed.is_some(), "an idle connection stayed open");

    busy.await.unwrap();
    // The good client survived all of it, and new clients are admitted again.
    assert_eq!(&echo(good.clone()).await.unwrap()[..], b"alive");
    let fresh = conformance::connect(&Tcp, &TcpTransport::default(), &ep).await;
    assert_eq!(&echo(fresh).await.unwrap()[..], b"alive");
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_idle_past_the_eviction_time_is_replaced_not_reused() {
    // Servers drop idle connections (rdmq's after 120 s); a client that stops reusing them
    // well before never sends a call on a connection the server is closing.
    let server = conformance::serve(&Tcp, conformance::router()).await;
    let ep = server.local_endpoint().clone();
    let client = Client::new(
        TcpTransport::default(),
        ClientConfig {
            idle_evict: Some(Duration::from_millis(300)),
            ..ClientConfig::default()
        },
    );
    let echo = || RemotingCommand::request(conformance::ECHO).with_body(&b"x"[..]);
    let first = client.connection(&ep).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        first.same(&client.connection(&ep).await.unwrap()),
        "reused while fresh"
    );
    tokio::time::sleep(Duration::from_millis(350)).await;
    let second = client.connection(&ep).await.unwrap();
    assert!(!first.same(&second), "reused after 350 ms idle");
    assert_eq!(
        &client.invoke(&ep, echo(), None).await.unwrap().body[..],
        b"x"
    );
    // The replaced connection was closed, not leaked.
    let deadline = Instant::now() + Duration::from_secs(3);
    while first.is_open() {
        assert!(
            Instant::now() < deadline,
            "the evicted connection stayed open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_with_a_hundred_thousand_header_fields_is_refused_and_others_are_served() {
    use rdmq_transport::remoting::MAX_REQUEST_FIELDS;
    let server = conformance::serve(&Tcp, conformance::router()).await;
    let ep = server.local_endpoint().clone();
    let hostile = conformance::connect(&Tcp, &TcpTransport::default(), &ep).await;
    let other = conformance::connect(&Tcp, &TcpTransport::default(), &ep).await;
    let with_fields = |n: usize| {
        let mut c = RemotingCommand::request(conformance::ECHO).with_body(&b"x"[..]);
        c.ext_fields = Some((0..n).map(|i| (format!("k{i}"), "v")).collect());
        c
    };
    let t0 = Instant::now();
    let r = hostile
        .call(with_fields(100_000), Duration::from_secs(10))
        .await
        .unwrap();
    eprintln!("100 000-field request answered in {:?}", t0.elapsed());
    assert_eq!(r.code, response_code::INVALID_PARAMETER);
    let remark = r.remark.unwrap_or_default();
    assert!(remark.contains("exceeds"), "{remark}");
    // Under the header-size limit but over the field limit: refused after a (linear) parse.
    let r = hostile
        .call(with_fields(4 * MAX_REQUEST_FIELDS), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(r.code, response_code::INVALID_PARAMETER);
    let remark = r.remark.unwrap_or_default();
    assert!(remark.contains("4096 fields"), "{remark}");
    // The most allowed is served; the other client and the same connection keep working.
    let r = hostile
        .call(with_fields(MAX_REQUEST_FIELDS), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(&r.body[..], b"x");
    let r = other
        .call(
            RemotingCommand::request(conformance::ECHO).with_body(&b"y"[..]),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(&r.body[..], b"y");
}
