//! `rdmq-bench hostile`: the CPU one request costs when it carries the most header fields or
//! user properties allowed, and when it carries far more (100,000) and is refused. Thread CPU
//! time (`getrusage(RUSAGE_THREAD)`, microsecond resolution) over many repetitions, so the
//! figures are the work itself, not 10 ms scheduler ticks. *measured*.

use bytes::Bytes;
use rdmq_proxy::convert::{Limits, MAX_USER_PROPERTIES, outgoing};
use rdmq_proxy::pb;
use rdmq_transport::codec::{DEFAULT_MAX_HEADER, RemotingCommand, peek_oversized};
use rdmq_transport::remoting::MAX_REQUEST_FIELDS;

use crate::affinity::thread_cpu_seconds as thread_cpu;

/// Median CPU µs of `f` over `reps` rounds (at least 20 ms of CPU per round).
fn cpu_us(reps: usize, mut f: impl FnMut()) -> f64 {
    let mut rounds = Vec::with_capacity(reps);
    for _ in 0..reps {
        let (start, mut n) = (thread_cpu(), 0u32);
        while thread_cpu() - start < 0.02 || n == 0 {
            f();
            n += 1;
        }
        rounds.push((thread_cpu() - start) / n as f64 * 1e6);
    }
    rounds.sort_by(|a, b| a.total_cmp(b));
    rounds[reps / 2]
}

fn frame_with_fields(n: usize) -> Bytes {
    let mut c = RemotingCommand::request(310).with_body(&b"x"[..]);
    c.ext_fields = Some((0..n).map(|i| (format!("k{i}"), "v")).collect());
    Bytes::from(c.encode_to_vec().expect("encodes"))
}

fn message_with_properties(n: usize) -> pb::Message {
    pb::Message {
        topic: Some(pb::Resource {
            resource_namespace: String::new(),
            name: "t".into(),
        }),
        user_properties: (0..n).map(|i| (format!("k{i}"), "v".into())).collect(),
        system_properties: Some(pb::SystemProperties {
            message_id: "id".into(),
            ..Default::default()
        }),
        body: Bytes::from_static(b"body"),
    }
}

/// Runs the measurements and prints one line each.
pub fn run() -> Result<(), String> {
    let limits = Limits {
        max_body: 4 << 20,
        max_properties: 16 << 10,
        max_delay_ms: 40 * 24 * 3600 * 1000,
    };
    println!(
        "# rdmq-bench hostile: CPU per request (thread CPU time, median of 5 rounds) [measured]"
    );
    for n in [MAX_REQUEST_FIELDS, 100_000] {
        let frame = frame_with_fields(n);
        // What the connection does with it: headers over the size limit are only scanned
        // for their opaque, the rest decoded.
        let big = peek_oversized(&frame, DEFAULT_MAX_HEADER).is_some();
        let us = cpu_us(5, || {
            if big {
                assert!(peek_oversized(&frame, DEFAULT_MAX_HEADER).is_some());
            } else {
                let c = RemotingCommand::decode_frame(frame.clone()).expect("decodes");
                assert!(c.ext_fields.is_some_and(|f| f.len() == n));
            }
        });
        let what = if big {
            "refused unparsed"
        } else {
            "decoded, served"
        };
        println!(
            "remoting header, {n:>6} fields ({:>7} B): {us:>9.1} µs  ({what})",
            frame.len()
        );
    }
    for n in [MAX_USER_PROPERTIES, 100_000] {
        let m = message_with_properties(n);
        let us = cpu_us(5, || {
            let r = outgoing(&m, "t", &limits, 0);
            assert_eq!(r.is_ok(), n <= MAX_USER_PROPERTIES);
        });
        let verdict = if n > MAX_USER_PROPERTIES {
            "refused"
        } else {
            "converted"
        };
        println!("gRPC message, {n:>6} user properties: convert {us:>9.1} µs  ({verdict})");
    }
    {
        use prost::Message as _;
        let req = pb::SendMessageRequest {
            messages: vec![message_with_properties(100_000)],
        };
        let bytes = Bytes::from(req.encode_to_vec());
        let us = cpu_us(5, || {
            let r = pb::SendMessageRequest::decode(bytes.clone()).expect("decodes");
            assert_eq!(r.messages.len(), 1);
        });
        let guard = cpu_us(5, || {
            assert!(rdmq_proxy::grpc::codec::too_many_fields(&bytes, 1).is_some());
        });
        println!(
            "gRPC SendMessageRequest with 100000 user properties ({} B): protobuf decode \
             {us:>9.1} µs; the codec's guard refuses it first in {guard:.1} µs",
            bytes.len()
        );
    }
    others_under_attack()?;
    proxy_under_attack()
}

/// The same through the proxy: a good gRPC client sending one message at a time at 500/s,
/// alone and while another client sends 20 messages/s with 100,000 user properties (refused).
/// The attacker runs in a thread of this process with its own runtime; building and encoding
/// its 100,000-entry maps costs this machine's shared cores too (a bias against the proxy).
fn proxy_under_attack() -> Result<(), String> {
    use rdmq_proxy::pb::messaging_service_client::MessagingServiceClient;
    use std::time::{Duration, Instant};
    const RATE: u64 = 500;
    const ATTACK_RATE: u64 = 20;
    let dir = std::env::temp_dir().join(format!("rdmq-bench-hostile-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let result = rt.block_on(async {
        let proxy = crate::e2e::start("tcp://127.0.0.1:0", &dir).await?;
        let url = format!("http://{}", proxy.grpc_addr());
        let connect = |url: String| async move {
            let ch = tonic::transport::Endpoint::from_shared(url)
                .map_err(|e| e.to_string())?
                .tcp_nodelay(true)
                .connect()
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(MessagingServiceClient::new(ch).max_encoding_message_size(64 << 20))
        };
        let request = |m: pb::Message| {
            let mut r = tonic::Request::new(pb::SendMessageRequest { messages: vec![m] });
            r.metadata_mut()
                .insert("x-mq-client-id", "hostile-bench".parse().expect("ascii"));
            r
        };
        let mut good = connect(url.clone()).await?;
        let mut seq = 0u64;
        let mut paced = async |secs: u64| {
            let mut h = hdrhistogram::Histogram::<u64>::new(3).expect("histogram");
            let start = Instant::now();
            let mut next = start;
            while start.elapsed() < Duration::from_secs(secs) {
                tokio::time::sleep_until(next.into()).await;
                seq += 1;
                let mut m = message_with_properties(1);
                m.topic.as_mut().expect("topic").name = "bench".into();
                m.system_properties.as_mut().expect("props").message_id = format!("GOOD{seq:028}");
                let t = Instant::now();
                let r = good
                    .send_message(request(m))
                    .await
                    .map_err(|e| e.to_string())?
                    .into_inner();
                if r.status.as_ref().map(|s| s.code) != Some(pb::Code::Ok as i32) {
                    return Err(format!("good send failed: {:?}", r.status));
                }
                let _ = h.record(t.elapsed().as_micros() as u64);
                next += Duration::from_micros(1_000_000 / RATE);
            }
            Ok::<_, String>(h)
        };
        let _warm = paced(1).await?;
        let alone = paced(3).await?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let refused = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let attack = {
            let (stop, refused, url) = (stop.clone(), refused.clone(), url.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async move {
                    // Pre-encoded once and sent as raw bytes, so the attacker's own cost is
                    // the sending, not building and encoding 100,000 map entries each time.
                    use prost::Message as _;
                    let mut m = message_with_properties(100_000);
                    m.topic.as_mut().expect("topic").name = "bench".into();
                    let raw =
                        Bytes::from(pb::SendMessageRequest { messages: vec![m] }.encode_to_vec());
                    let Ok(ep) = tonic::transport::Endpoint::from_shared(url) else {
                        return;
                    };
                    let Ok(ch) = ep.tcp_nodelay(true).connect().await else {
                        return;
                    };
                    let mut grpc = tonic::client::Grpc::new(ch).max_encoding_message_size(64 << 20);
                    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
                        "/apache.rocketmq.v2.MessagingService/SendMessage",
                    );
                    let start = Instant::now();
                    let mut sent = 0u32;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let due = start + Duration::from_millis(1000 / ATTACK_RATE) * sent;
                        tokio::time::sleep_until(due.into()).await;
                        sent += 1;
                        if grpc.ready().await.is_err() {
                            return;
                        }
                        let r = grpc
                            .unary(tonic::Request::new(raw.clone()), path.clone(), RawCodec)
                            .await;
                        if matches!(&r, Err(s) if s.code() == tonic::Code::InvalidArgument) {
                            refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                });
            })
        };
        let under = paced(3).await?;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = attack.join();
        report(
            &format!("good gRPC sender at {RATE}/s through the proxy"),
            &format!("{ATTACK_RATE} messages/s with 100,000 properties"),
            &alone,
            &under,
            refused.load(std::sync::atomic::Ordering::Relaxed),
        );
        proxy.shutdown().await.map_err(|e| e.to_string())?;
        Ok(())
    });
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// A good client's RTT at 1,000 calls/s on one remoting server, alone and while another
/// connection sends 100,000-field requests (1.3 MB headers, each refused) at 50/s. The attacker is a
/// thread of this process and shares the machine's two cores with the server and the good
/// client (a bias against the server: a remote attacker's sending would cost it nothing).
fn others_under_attack() -> Result<(), String> {
    use rdmq_transport::Endpoint;
    use rdmq_transport::remoting::{Client, ClientConfig, Request, Router, Server, ServerConfig};
    use rdmq_transport::tcp::TcpTransport;
    use std::time::{Duration, Instant};
    const ECHO: i32 = 999;
    const ATTACK_RATE: u64 = 50;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let router = Router::new().route(ECHO, |req: Request| async move {
            RemotingCommand::response(0, None).with_body(req.command.body)
        });
        let server = Server::new(TcpTransport::default(), router, ServerConfig::default())
            .bind(&Endpoint::tcp("127.0.0.1", 0))
            .await
            .map_err(|e| e.to_string())?;
        let ep = server.local_endpoint().clone();
        let good = Client::new(TcpTransport::default(), ClientConfig::default());
        let paced = |secs: u64| {
            let (good, ep) = (good.clone(), ep.clone());
            async move {
                let mut h = hdrhistogram::Histogram::<u64>::new(3).expect("histogram");
                let start = Instant::now();
                let mut next = start;
                while start.elapsed() < Duration::from_secs(secs) {
                    tokio::time::sleep_until(next.into()).await;
                    let t = Instant::now();
                    let req = RemotingCommand::request(ECHO).with_body(&b"ping"[..]);
                    good.invoke(&ep, req, Some(Duration::from_secs(5)))
                        .await
                        .map_err(|e| e.to_string())?;
                    let _ = h.record(t.elapsed().as_micros() as u64);
                    next += Duration::from_millis(1);
                }
                Ok::<_, String>(h)
            }
        };
        let alone = paced(3).await?;
        // The attacker: a thread of its own with a blocking socket, sending one pre-encoded
        // 100,000-field request after another and reading each answer.
        let mut hostile = RemotingCommand::request(ECHO);
        hostile.ext_fields = Some((0..100_000).map(|i| (format!("k{i}"), "v")).collect());
        let frame = hostile.encode_to_vec().map_err(|e| e.to_string())?;
        let refused = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let attack = {
            let (addr, refused, stop) = (ep.authority(), refused.clone(), stop.clone());
            std::thread::spawn(move || -> std::io::Result<()> {
                use std::io::{Read, Write};
                let mut s = std::net::TcpStream::connect(addr)?;
                let mut buf = vec![0u8; 64 << 10];
                let start = Instant::now();
                let mut sent = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    // Paced: the point is the server's work per hostile request, not how
                    // much loopback traffic two shared cores can carry.
                    let due = start + Duration::from_millis(1000 / ATTACK_RATE) * sent;
                    std::thread::sleep(due.saturating_duration_since(Instant::now()));
                    sent += 1;
                    s.write_all(&frame)?;
                    let n = s.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Ok(())
            })
        };
        let under = paced(3).await?;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = attack.join();
        report(
            "good client at 1000/s",
            &format!("{ATTACK_RATE} hostile requests/s (1.3 MB headers)"),
            &alone,
            &under,
            refused.load(std::sync::atomic::Ordering::Relaxed),
        );
        server.shutdown(Duration::from_secs(1)).await;
        Ok(())
    })
}

/// One line: the good client's RTT alone and under attack, and their p99 ratio.
fn report(
    who: &str,
    attack: &str,
    alone: &hdrhistogram::Histogram<u64>,
    under: &hdrhistogram::Histogram<u64>,
    refused: u64,
) {
    let q = |h: &hdrhistogram::Histogram<u64>, p: f64| h.value_at_quantile(p) as f64;
    println!(
        "{who}, RTT µs p50 / p99: alone {:.0} / {:.0}; while {attack} arrive {:.0} / {:.0} \
         (p99 {:.2}x; {refused} refused in 3 s)",
        q(alone, 0.5),
        q(alone, 0.99),
        q(under, 0.5),
        q(under, 0.99),
        q(under, 0.99) / q(alone, 0.99).max(1.0),
    );
}

/// Sends pre-encoded request bytes as they are; decodes SendMessage responses.
#[derive(Debug, Clone, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Bytes;
    type Decode = pb::SendMessageResponse;
    type Encoder = RawEncoder;
    type Decoder = tonic_prost::ProstDecoder<pb::SendMessageResponse>;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstDecoder::new(Default::default())
    }
}

#[derive(Debug, Clone, Default)]
struct RawEncoder;

impl tonic::codec::Encoder for RawEncoder {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Bytes,
        buf: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        buf.put_slice(&item);
        Ok(())
    }
}
