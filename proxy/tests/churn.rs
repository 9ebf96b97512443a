//! Connection churn against a proxy process (gRPC port): the memory connections used comes
//! back once they are gone.

use std::io::{BufRead, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The HTTP/2 client preface and an empty SETTINGS frame: what a gRPC client sends first.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

struct Proxy(Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .expect("VmRSS")
}

/// Opens `n` connections (each sends the preface and reads the server's SETTINGS), then
/// closes them all.
fn cycle(port: u16, n: usize) {
    let mut socks = Vec::with_capacity(n);
    let mut buf = [0u8; 256];
    for _ in 0..n {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(PREFACE).unwrap();
        assert!(s.read(&mut buf).unwrap() > 0, "the server's SETTINGS");
        socks.push(s);
    }
}

/// Most sockets this process may hold at once, leaving room for everything else.
fn socket_budget() -> usize {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(1024)
        .saturating_sub(200)
}

#[test]
fn memory_returns_after_ten_cycles_of_two_thousand_grpc_connections() {
    let n = socket_budget().min(2000);
    if n < 2000 {
        eprintln!("open-file limit allows {n} connections per cycle, not 2000");
    }
    let dir = std::env::temp_dir().join(format!("rdmq-proxy-churn-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut child = Command::new(env!("CARGO_BIN_EXE_rdmq-proxy"))
        .args(["--listen", "127.0.0.1:0", "--embedded-broker"])
        .args([
            "--broker-listen",
            "tcp://127.0.0.1:0",
            "--segment-size",
            "64m",
        ])
        .args(["--max-connections-per-client", "100000", "--store-dir"])
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let proxy = Proxy(child);
    let mut lines = std::io::BufReader::new(out).lines();
    let grpc = loop {
        let line = lines.next().expect("endpoints printed").unwrap();
        if let Some(a) = line.strip_prefix("listening grpc://") {
            break a.to_owned();
        }
    };
    let port: u16 = grpc.rsplit_once(':').unwrap().1.parse().unwrap();
    let pid = proxy.0.id();
    cycle(port, 100);
    std::thread::sleep(Duration::from_secs(2));
    let before = rss_kib(pid);
    let mut peak = 0;
    for _ in 0..10 {
        cycle(port, n);
        peak = peak.max(rss_kib(pid));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let now = rss_kib(pid);
        if now * 10 <= before * 12 || Instant::now() > deadline {
            break now;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!("proxy RSS before {before} KiB, peak {peak} KiB, after {after} KiB");
    assert!(
        after * 10 <= before * 12,
        "RSS {after} KiB after the churn, {before} KiB before (peak {peak} KiB)"
    );
    drop(proxy);
    let _ = std::fs::remove_dir_all(&dir);
}
