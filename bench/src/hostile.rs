//! `rdmq-bench hostile`: the CPU one request costs when it carries the most header fields or
//! user properties allowed, and when it carries far more (100,000) and is refused. Thread CPU
//! time (`getrusage(RUSAGE_THREAD)`, microsecond resolution) over many repetitions, so the
//! figures are the work itself, not 10 ms scheduler ticks. *measured*.

use bytes::Bytes;
use rdmq_proxy::convert::{Limits, MAX_USER_PROPERTIES, outgoing};
use rdmq_proxy::pb;
use rdmq_transport::codec::RemotingCommand;
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
        let us = cpu_us(5, || {
            let c = RemotingCommand::decode_frame(frame.clone()).expect("decodes");
            assert!(c.ext_fields.is_some_and(|f| f.len() == n));
        });
        let verdict = if n > MAX_REQUEST_FIELDS {
            "refused"
        } else {
            "served"
        };
        println!(
            "remoting header, {n:>6} fields ({:>7} B): decode {us:>9.1} µs  ({verdict})",
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
    println!("(the proxy's protobuf decoding of a request comes before these and is not included)");
    Ok(())
}
