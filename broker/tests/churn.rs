//! Connection churn against a broker process: memory that connections used comes back once
//! they are gone (glibc keeps freed memory in its arenas unless told to give it back).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{BrokerProcess, TempDir};
use rdmq_transport::RemotingCommand;
use rdmq_transport::protocol::request_code as rc;

/// `VmRSS` and `RssAnon` of `pid`, in KiB.
fn rss(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
            .unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("RssAnon:"))
}

/// Most sockets this process may hold at once, leaving room for everything else.
fn socket_budget() -> usize {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(1024);
    soft.saturating_sub(200)
}

/// Opens `n` connections, sends a route query on each and reads the answer, closes them all.
fn cycle(port: u16, n: usize) {
    let frame = RemotingCommand::request(rc::GET_ROUTEINFO_BY_TOPIC)
        .with_field("topic", "churn")
        .encode_to_vec()
        .unwrap();
    // One at a time (answered before the next is opened, so the listen backlog never
    // overflows into SYN retries), all held open until the cycle ends.
    let mut socks = Vec::with_capacity(n);
    let mut buf = [0u8; 4096];
    for _ in 0..n {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(&frame).unwrap();
        assert!(s.read(&mut buf).unwrap() > 0, "answered");
        socks.push(s);
    }
}

#[test]
fn memory_returns_after_ten_cycles_of_two_thousand_connections() {
    let dir = TempDir::new();
    let broker = BrokerProcess::spawn(
        dir.path(),
        &[
            "--segment-size",
            "8M",
            "--topic",
            "churn:4",
            "--max-connections-per-client",
            "100000",
        ],
    );
    let port = broker.endpoint.port;
    let n = socket_budget().min(2000);
    if n < 2000 {
        eprintln!("open-file limit allows {n} connections per cycle, not 2000");
    }
    // Warm-up: what the first connections allocate for good (runtime, registries).
    cycle(port, 100);
    std::thread::sleep(Duration::from_secs(2));
    let (before, before_anon) = rss(broker.pid());
    let mut peak = 0;
    for _ in 0..10 {
        cycle(port, n);
        peak = peak.max(rss(broker.pid()).0);
    }
    // The freed memory is handed back a second after the closes.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (after, after_anon) = loop {
        let now = rss(broker.pid());
        if now.0 * 10 <= before * 12 || Instant::now() > deadline {
            break now;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!(
        "RSS before {before} KiB (anon {before_anon}), peak {peak} KiB, after {after} KiB \
         (anon {after_anon})"
    );
    assert!(
        after * 10 <= before * 12,
        "RSS {after} KiB after the churn, {before} KiB before (peak {peak} KiB)"
    );
}
