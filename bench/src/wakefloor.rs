//! The wake-up floor of this machine, measured beside `transport --cross-process`: a one-byte
//! ping-pong over a Unix socket between two processes pinned as the echo test is, each side
//! blocking in `read` (no runtime, no protocol). Every event-mode round trip pays at least
//! two such wake-ups, whatever the transport; the figure shows how much of the event-mode RTT
//! and CPU per call no transport can remove here.

use std::io::{Read, Write};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::headline::procs::{Proc, ProcSample, ticks_per_second};

/// The floor's figures.
#[derive(Debug, Clone, Copy)]
pub struct Floor {
    /// Round-trip p50 (ns).
    pub p50_ns: u64,
    /// CPU µs per round trip at the paced rate: client, server.
    pub cpu: [f64; 2],
    /// Wake-ups per round trip at the paced rate: client, server.
    pub wakeups: [f64; 2],
}

/// The peer: `rdmq-bench wake-peer`. Prints `listening <name>`, answers each byte with one,
/// ends when the client hangs up.
pub fn peer_main() -> std::process::ExitCode {
    let name = format!("rdmq-bench-wake-{}", std::process::id());
    let served = (|| -> std::io::Result<()> {
        let listener = UnixListener::bind_addr(&SocketAddr::from_abstract_name(&name)?)?;
        println!("listening {name}");
        let (mut s, _) = listener.accept()?;
        let mut b = [0u8; 1];
        loop {
            if s.read(&mut b)? == 0 {
                return Ok(());
            }
            s.write_all(&b)?;
        }
    })();
    match served {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rdmq-bench wake-peer: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn ping(s: &mut UnixStream) -> Result<(), String> {
    let mut b = [7u8; 1];
    s.write_all(&b).map_err(|e| e.to_string())?;
    s.read_exact(&mut b).map_err(|e| e.to_string())
}

/// Measures the floor against a peer pinned to `server_cpu` (this thread is pinned already):
/// `iterations` timed ping-pongs, then `rate` per second for `window` for CPU and wake-ups.
pub fn measure(
    exe: &Path,
    server_cpu: Option<&[usize]>,
    iterations: u64,
    rate: u64,
    window: Duration,
) -> Result<Floor, String> {
    let log = std::env::temp_dir().join("rdmq-bench-wake-peer.log");
    let mut peer = Proc::spawn_interactive(
        "wake-peer",
        exe,
        &["wake-peer".to_owned()],
        server_cpu,
        &log,
    )?;
    let name = peer.expect("listening ", Duration::from_secs(20))?;
    let addr = SocketAddr::from_abstract_name(name.trim()).map_err(|e| e.to_string())?;
    let mut s = UnixStream::connect_addr(&addr).map_err(|e| format!("wake-peer: {e}"))?;
    for _ in 0..iterations / 10 {
        ping(&mut s)?;
    }
    let mut rtt = hdrhistogram::Histogram::<u64>::new(3).map_err(|e| e.to_string())?;
    for _ in 0..iterations {
        let t = Instant::now();
        ping(&mut s)?;
        let _ = rtt.record(t.elapsed().as_nanos() as u64);
    }
    let me = std::process::id();
    let (c0, p0) = (ProcSample::read(me)?, ProcSample::read(peer.pid())?);
    let period = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let started = Instant::now();
    let mut due = started;
    let mut calls = 0u64;
    while started.elapsed() < window {
        ping(&mut s)?;
        calls += 1;
        due += period;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    let (c, p) = (
        ProcSample::read(me)?.since(&c0),
        ProcSample::read(peer.pid())?.since(&p0),
    );
    drop(s);
    drop(peer);
    let tick_us = 1e6 / ticks_per_second();
    let per = |v: f64| v / calls.max(1) as f64;
    Ok(Floor {
        p50_ns: rtt.value_at_quantile(0.5),
        cpu: [
            per((c.utime + c.stime) as f64 * tick_us),
            per((p.utime + p.stime) as f64 * tick_us),
        ],
        wakeups: [per(c.voluntary as f64), per(p.voluntary as f64)],
    })
}
