//! Two separately started processes talking through rdma-sim: the test binary re-runs itself
//! as two children; each opens a device of its own process-wide fabric, prints its bootstrap
//! data (GID, QP number, rkey, address), and the parent hands each child the other's line, as
//! an application exchanges QP information over TCP on real verbs.
//!
//! By default the two processes attach over shared memory (direct placement); children
//! started with `RDMA_SIM_WIRE=socket` use the packet wire instead. Each child prints its
//! fabric's counters on its DONE line (`packets=… placements=… doorbells=… arms=…`), so the
//! parent can check which data path ran.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use rdma_sim::{
    Access, CompletionChannel, CompletionQueue, Gid, Opcode, OwnedRegion, ProtectionDomain,
    QpAddress, QpAttr, QpCaps, QpInitAttr, QueuePair, RecvWr, RemoteAddr, SendWr, WcOpcode,
    WcStatus, WorkCompletion,
};

const SLOTS: usize = 1024;
const MSG: usize = 64;

// ----- child side ------------------------------------------------------------------------

struct Node {
    _pd: ProtectionDomain,
    channel: CompletionChannel,
    cq: CompletionQueue,
    qp: QueuePair,
    mem: OwnedRegion,
    wcs: Vec<WorkCompletion>,
}

fn empty_wc() -> WorkCompletion {
    WorkCompletion {
        wr_id: 0,
        status: WcStatus::Success,
        opcode: WcOpcode::Send,
        byte_len: 0,
        imm: None,
        qp_num: 0,
        src_qp: 0,
        solicited: false,
    }
}

impl Node {
    fn open() -> Node {
        let ctx = rdma_sim::devices()[0].open().unwrap();
        let pd = ctx.alloc_pd();
        let channel = ctx.create_comp_channel().unwrap();
        let cq = ctx.create_cq(8192, Some(&channel)).unwrap();
        let caps = QpCaps {
            max_send_wr: 2048,
            max_recv_wr: 2048,
            max_send_sge: 1,
            max_recv_sge: 1,
            max_inline_data: 64,
        };
        let qp = pd
            .create_qp(QpInitAttr {
                send_cq: &cq,
                recv_cq: &cq,
                caps,
            })
            .unwrap();
        let mem = pd
            .alloc_region(
                4 * SLOTS * MSG,
                Access::LOCAL_WRITE | Access::REMOTE_WRITE | Access::REMOTE_READ,
            )
            .unwrap();
        Node {
            _pd: pd,
            channel,
            cq,
            qp,
            mem,
            wcs: vec![empty_wc(); 256],
        }
    }

    /// Prints this side's bootstrap line and connects to the peer's, read from stdin.
    fn bootstrap(&self) -> (u32, u64) {
        let a = self.qp.address();
        println!(
            "ADDR {} {} {} {}",
            a.gid,
            a.qpn,
            self.mem.mr().rkey(),
            self.mem.mr().addr()
        );
        std::io::stdout().flush().unwrap();
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).unwrap();
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f[0], "ADDR", "bad bootstrap line {line:?}");
        let remote = QpAddress {
            gid: Gid::from_str(f[1]).unwrap(),
            qpn: f[2].parse().unwrap(),
        };
        let rnr_retry = std::env::var("RDMA_SIM_TEST_RNR")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(7);
        // Nothing is lost between two processes on one host: a retransmission timeout only
        // fires when a process is descheduled. 100 ms x 7 retries rides out the stalls of a
        // loaded 2-core machine (the default 20 ms gave up after 160 ms with a stalled peer).
        let attr = QpAttr {
            access: Access::REMOTE_WRITE | Access::REMOTE_READ,
            rnr_retry,
            timeout: std::time::Duration::from_millis(100),
            ..QpAttr::default()
        };
        self.qp.connect(remote, &attr).unwrap();
        (f[3].parse().unwrap(), f[4].parse().unwrap())
    }

    /// Completions available now, or after waiting on the channel (arm, re-poll, sleep); or,
    /// with `RDMA_SIM_TEST_BUSY` set, by busy polling (never arming).
    fn completions(&mut self) -> Vec<WorkCompletion> {
        if std::env::var_os("RDMA_SIM_TEST_BUSY").is_some() {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                assert!(Instant::now() < deadline, "no completion within 30 s");
                let n = self.cq.poll(&mut self.wcs).unwrap();
                if n > 0 {
                    return self.wcs[..n].to_vec();
                }
                std::hint::spin_loop();
            }
        }
        loop {
            let n = self.cq.poll(&mut self.wcs).unwrap();
            if n > 0 {
                return self.wcs[..n].to_vec();
            }
            self.cq.req_notify(false).unwrap();
            let n = self.cq.poll(&mut self.wcs).unwrap();
            if n > 0 {
                return self.wcs[..n].to_vec();
            }
            self.channel.wait(Duration::from_millis(50));
            self.channel.get_events();
        }
    }
}

fn message(seq: u64) -> [u8; MSG] {
    let mut m = [0u8; MSG];
    m[..8].copy_from_slice(&seq.to_le_bytes());
    for (j, b) in m[8..56].iter_mut().enumerate() {
        *b = (seq as usize * 31 + j) as u8;
    }
    let sum = fnv(&m[..56]);
    m[56..].copy_from_slice(&sum.to_le_bytes());
    m
}

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

fn recv(wr_id: u64) -> RecvWr<'static> {
    RecvWr { wr_id, sges: &[] }
}

/// Writes `n` checksummed messages into the peer's ring with WRITE_WITH_IMM, within the
/// credit the reader grants.
fn run_writer(n: u64) {
    let mut node = Node::open();
    let (rkey, raddr) = node.bootstrap();
    node.qp
        .post_recv(&(0..64).map(recv).collect::<Vec<_>>())
        .unwrap();
    let (mut sent, mut granted, mut acked) = (0u64, SLOTS as u64, 0u64);
    while acked < n {
        let mut batch = Vec::new();
        let mut sges = Vec::new();
        while sent < n && sent < granted && sent < acked + SLOTS as u64 - 64 && batch.len() < 32 {
            let slot = (sent as usize) % SLOTS;
            node.mem.write(slot * MSG, &message(sent));
            sges.push([node.mem.sge(slot * MSG, MSG as u32)]);
            batch.push(sent);
            sent += 1;
        }
        if !batch.is_empty() {
            let wrs: Vec<SendWr<'_>> = batch
                .iter()
                .zip(&sges)
                .map(|(seq, sge)| SendWr {
                    wr_id: *seq,
                    opcode: Opcode::RdmaWriteWithImm,
                    sges: sge,
                    inline: None,
                    imm: Some((*seq as u32).to_be()),
                    signaled: seq % 64 == 63 || *seq == n - 1,
                    solicited: false,
                    remote: Some(RemoteAddr {
                        addr: raddr + ((*seq as usize % SLOTS) * MSG) as u64,
                        rkey,
                    }),
                })
                .collect();
            node.qp.post_send(&wrs).unwrap();
            continue;
        }
        for wc in node.completions() {
            assert_eq!(wc.status, WcStatus::Success, "{wc:?}");
            match wc.opcode {
                WcOpcode::RdmaWrite => acked = wc.wr_id + 1,
                WcOpcode::Recv => {
                    granted = granted.max(u32::from_be(wc.imm.unwrap()) as u64 + SLOTS as u64);
                    node.qp.post_recv(&[recv(0)]).unwrap();
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    let s = node.qp.address();
    println!("DONE {sent} {} {}", s.qpn, stats_line());
}

/// This process's NIC counters, for the parent's checks.
fn stats_line() -> String {
    let s = rdma_sim::Fabric::global().stats();
    format!(
        "packets={} placements={} doorbells={} arms={} cqes={} rnr={} placement_us={}",
        s.net.packets,
        s.placements,
        s.doorbells,
        s.arms,
        s.cqes_written,
        s.net.rnr_naks,
        s.placement_time.as_micros()
    )
}

/// The value of `key=` on a DONE line.
fn stat(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
        .parse()
        .unwrap()
}

/// Sends one SEND right after connecting (before the peer posts receives) and reports how it
/// completed.
fn run_rnr_sender() {
    let mut node = Node::open();
    let _ = node.bootstrap();
    let started = Instant::now();
    let wr = SendWr {
        wr_id: 1,
        opcode: Opcode::Send,
        sges: &[],
        inline: Some(b"hello"),
        imm: None,
        signaled: true,
        solicited: false,
        remote: None,
    };
    node.qp.post_send(&[wr]).unwrap();
    let wc = loop {
        if let Some(wc) = node.completions().into_iter().find(|w| w.wr_id == 1) {
            break wc;
        }
    };
    println!(
        "DONE status={:?} ms={} {}",
        wc.status,
        started.elapsed().as_millis(),
        stats_line()
    );
}

/// Connects, waits, then posts a receive (late) and reports what arrived.
fn run_rnr_receiver() {
    let mut node = Node::open();
    let _ = node.bootstrap();
    std::thread::sleep(Duration::from_millis(300));
    let sge = [node.mem.sge(0, 64)];
    node.qp
        .post_recv(&[RecvWr {
            wr_id: 7,
            sges: &sge,
        }])
        .unwrap();
    let deadline = Instant::now() + Duration::from_millis(500);
    let mut got = "none".to_owned();
    while Instant::now() < deadline {
        let n = node.cq.poll(&mut node.wcs).unwrap();
        if n > 0 {
            got = format!("{:?}/{}", node.wcs[0].status, node.wcs[0].byte_len);
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    println!("DONE recv={got} {}", stats_line());
}

/// Posts receives and a SEND the peer never takes, says READY, then waits for the peer's death
/// to flush them.
fn run_survivor() {
    let mut node = Node::open();
    let _ = node.bootstrap();
    node.qp
        .post_recv(&(0..4).map(recv).collect::<Vec<_>>())
        .unwrap();
    let wr = SendWr {
        wr_id: 100,
        opcode: Opcode::Send,
        sges: &[],
        inline: Some(b"never taken"),
        imm: None,
        signaled: true,
        solicited: false,
        remote: None,
    };
    node.qp.post_send(&[wr]).unwrap();
    println!("READY");
    std::io::stdout().flush().unwrap();
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap(); // the parent killed the peer
    let started = Instant::now();
    let mut errors = 0;
    while errors < 5 && started.elapsed() < Duration::from_secs(10) {
        for wc in node.completions() {
            assert_ne!(wc.status, WcStatus::Success, "{wc:?}");
            errors += 1;
        }
    }
    println!("DONE errors={errors} ms={}", started.elapsed().as_millis());
}

/// READs the peer's pattern, then WRITEs with a bad rkey: REM_ACCESS_ERR here, and the peer
/// QP goes to ERR too.
fn run_one_sided() {
    let mut node = Node::open();
    let (rkey, raddr) = node.bootstrap();
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap(); // the peer wrote its pattern
    let dst = [node.mem.sge(0, MSG as u32)];
    let read = SendWr {
        wr_id: 1,
        opcode: Opcode::RdmaRead,
        sges: &dst,
        inline: None,
        imm: None,
        signaled: true,
        solicited: false,
        remote: Some(RemoteAddr { addr: raddr, rkey }),
    };
    node.qp.post_send(&[read]).unwrap();
    let wc = node.completions()[0];
    assert_eq!(
        (wc.wr_id, wc.status, wc.byte_len),
        (1, WcStatus::Success, MSG as u32)
    );
    let mut buf = [0u8; MSG];
    node.mem.read(0, &mut buf);
    assert_eq!(buf, message(42), "READ returned the peer's bytes");
    let bad = SendWr {
        wr_id: 2,
        opcode: Opcode::RdmaWrite,
        sges: &dst,
        inline: None,
        imm: None,
        signaled: true,
        solicited: false,
        remote: Some(RemoteAddr {
            addr: raddr,
            rkey: rkey ^ 0x100,
        }),
    };
    node.qp.post_send(&[bad]).unwrap();
    let wc = node.completions()[0];
    println!("DONE status={:?} {}", wc.status, stats_line());
}

/// Writes a pattern for the peer to READ, posts a receive, and reports how it completed once
/// the peer's bad WRITE moved this QP to ERR.
fn run_one_sided_target() {
    let mut node = Node::open();
    let _ = node.bootstrap();
    node.mem.write(0, &message(42));
    node.qp.post_recv(&[recv(9)]).unwrap();
    println!("WROTE");
    std::io::stdout().flush().unwrap();
    let wc = node.completions()[0];
    println!("DONE recv={:?}", wc.status);
}

/// Connects and says READY; then waits to be killed.
fn run_victim() {
    let node = Node::open();
    let _ = node.bootstrap();
    println!("READY");
    std::io::stdout().flush().unwrap();
    std::thread::sleep(Duration::from_secs(60));
}

/// Receives `n` messages, checks order and checksums, re-posts receives and grants credit.
fn run_reader(n: u64) {
    let mut node = Node::open();
    let _ = node.bootstrap();
    node.qp
        .post_recv(&(0..SLOTS as u64).map(recv).collect::<Vec<_>>())
        .unwrap();
    let mut expected = 0u64;
    let mut buf = [0u8; MSG];
    while expected < n {
        let wcs = node.completions();
        let mut repost = 0;
        for wc in wcs {
            assert_eq!(wc.status, WcStatus::Success, "{wc:?}");
            if wc.opcode == WcOpcode::Send {
                continue;
            }
            assert_eq!(wc.opcode, WcOpcode::RecvRdmaWithImm);
            let seq = u32::from_be(wc.imm.unwrap()) as u64;
            assert_eq!(seq, expected & 0xFFFF_FFFF, "out of order");
            node.mem.read((expected as usize % SLOTS) * MSG, &mut buf);
            assert_eq!(buf, message(expected), "message {expected} corrupted");
            expected += 1;
            repost += 1;
            if expected.is_multiple_of(256) || expected == n {
                let credit = SendWr {
                    wr_id: expected,
                    opcode: Opcode::SendWithImm,
                    sges: &[],
                    inline: None,
                    imm: Some((expected as u32).to_be()),
                    signaled: expected.is_multiple_of(4096),
                    solicited: false,
                    remote: None,
                };
                node.qp.post_send(&[credit]).unwrap();
            }
        }
        if repost > 0 {
            node.qp
                .post_recv(&(0..repost).map(recv).collect::<Vec<_>>())
                .unwrap();
        }
    }
    println!("DONE {expected} ok {}", stats_line());
}

/// Ping-pong of `n` SENDs; prints the median round trip.
fn run_ping(n: u64, first: bool) {
    let mut node = Node::open();
    let _ = node.bootstrap();
    node.qp
        .post_recv(&(0..64).map(recv).collect::<Vec<_>>())
        .unwrap();
    let mut rtts = Vec::new();
    for i in 0..n {
        let started = Instant::now();
        let ping = |node: &Node| {
            let wr = SendWr {
                wr_id: i,
                opcode: Opcode::SendWithImm,
                sges: &[],
                inline: None,
                imm: Some((i as u32).to_be()),
                signaled: false,
                solicited: true,
                remote: None,
            };
            node.qp.post_send(&[wr]).unwrap();
        };
        if first {
            ping(&node);
        }
        'wait: loop {
            for wc in node.completions() {
                assert_eq!(wc.status, WcStatus::Success);
                if wc.opcode == WcOpcode::Recv {
                    assert_eq!(u32::from_be(wc.imm.unwrap()), i as u32);
                    node.qp.post_recv(&[recv(i)]).unwrap();

                    break 'wait;
                }
            }
        }
        if !first {
            ping(&node);
        }
        rtts.push(started.elapsed());
    }
    rtts.sort();
    println!(
        "DONE {n} median_rtt_us={:.1} {}",
        rtts[rtts.len() / 2].as_secs_f64() * 1e6,
        stats_line()
    );
}

#[test]
fn child_process_entry() {
    let Ok(role) = std::env::var("RDMA_SIM_TEST_ROLE") else {
        return;
    };
    let n: u64 = std::env::var("RDMA_SIM_TEST_N").unwrap().parse().unwrap();
    match role.as_str() {
        "writer" => run_writer(n),
        "reader" => run_reader(n),
        "ping" => run_ping(n, true),
        "pong" => run_ping(n, false),
        "rnr-sender" => run_rnr_sender(),
        "rnr-receiver" => run_rnr_receiver(),
        "survivor" => run_survivor(),
        "victim" => run_victim(),
        "one-sided" => run_one_sided(),
        "one-sided-target" => run_one_sided_target(),
        other => panic!("unknown role {other}"),
    }
    // Stay up until the parent has both DONE lines: exiting closes the shared-memory control
    // link, which (like a peer's death) moves the other side's QP to ERR.
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
}

// ----- parent side -----------------------------------------------------------------------

fn spawn(
    role: &str,
    n: u64,
    env: &[(&str, &str)],
) -> (Child, BufReader<std::process::ChildStdout>) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .args([
            "child_process_entry",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("RDMA_SIM_TEST_ROLE", role)
        .env("RDMA_SIM_TEST_N", n.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    (child, out)
}

fn line_starting(out: &mut BufReader<std::process::ChildStdout>, prefix: &str) -> String {
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "child exited before printing {prefix}"
        );
        // libtest prints "test name ... " without a newline before the child's output.
        if let Some(at) = line.find(prefix) {
            return line[at..].to_owned();
        }
    }
}

type Out = BufReader<std::process::ChildStdout>;

/// Starts two children and exchanges their bootstrap lines.
fn start_pair(roles: (&str, &str), n: u64, env: &[(&str, &str)]) -> ((Child, Out), (Child, Out)) {
    let (mut a, mut a_out) = spawn(roles.0, n, env);
    let (mut b, mut b_out) = spawn(roles.1, n, env);
    let a_addr = line_starting(&mut a_out, "ADDR");
    let b_addr = line_starting(&mut b_out, "ADDR");
    a.stdin
        .as_mut()
        .unwrap()
        .write_all(b_addr.as_bytes())
        .unwrap();
    b.stdin
        .as_mut()
        .unwrap()
        .write_all(a_addr.as_bytes())
        .unwrap();
    ((a, a_out), (b, b_out))
}

/// Runs two children, exchanges their bootstrap lines, and returns their DONE lines.
fn run_pair(roles: (&str, &str), n: u64, limit: Duration) -> (String, String) {
    run_pair_env(roles, n, limit, &[])
}

fn run_pair_env(
    roles: (&str, &str),
    n: u64,
    limit: Duration,
    env: &[(&str, &str)],
) -> (String, String) {
    let ((mut a, mut a_out), (mut b, mut b_out)) = start_pair(roles, n, env);
    let started = Instant::now();
    let done = std::thread::spawn(move || {
        let lines = (
            line_starting(&mut a_out, "DONE"),
            line_starting(&mut b_out, "DONE"),
        );
        (lines, a_out, b_out)
    });
    while !done.is_finished() {
        if started.elapsed() > limit {
            let _ = a.kill();
            let _ = b.kill();
            panic!("cross-process run exceeded {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let Ok((lines, mut a_out, mut b_out)) = done.join() else {
        let _ = a.kill();
        let _ = b.kill();
        panic!("a child failed");
    };
    // Both are done: let them exit, and keep reading so they can print their summaries.
    for c in [&mut a, &mut b] {
        let _ = c.stdin.as_mut().unwrap().write_all(b"EXIT\n");
    }
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut a_out, &mut rest);
    let _ = std::io::Read::read_to_string(&mut b_out, &mut rest);
    assert!(a.wait().unwrap().success() && b.wait().unwrap().success());
    lines
}

/// Both sides ran on shared memory: placements, and not one packet on the wire.
fn assert_shm(line: &str) {
    assert_eq!(
        stat(line, "packets"),
        0,
        "no wire packets in shm mode: {line}"
    );
    assert!(stat(line, "placements") > 0, "direct placements: {line}");
}

#[test]
fn cross_process_ping_pong() {
    let (ping, pong) = run_pair(("ping", "pong"), 2000, Duration::from_secs(60));
    assert!(ping.starts_with("DONE 2000"), "{ping}");
    assert!(pong.starts_with("DONE 2000"), "{pong}");
    assert_shm(&ping);
    assert_shm(&pong);
    eprintln!("cross-process ping-pong (simulated NIC): {}", ping.trim());
}

fn median_rtt(line: &str) -> f64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("median_rtt_us="))
        .unwrap()
        .parse()
        .unwrap()
}

/// The number: busy-polled raw verbs ping-pong RTT across processes, shared memory vs the
/// socket wire, in the same run.
#[test]
fn cross_process_rtt_shared_memory_vs_socket_wire() {
    let busy = ("RDMA_SIM_TEST_BUSY", "1");
    let limit = Duration::from_secs(120);
    // 2000 round trips: the pings are unsignaled, so the send queue (2048) bounds the count.
    let (shm, _) = run_pair_env(("ping", "pong"), 2_000, limit, &[busy]);
    let (wire, _) = run_pair_env(
        ("ping", "pong"),
        2_000,
        limit,
        &[busy, ("RDMA_SIM_WIRE", "socket")],
    );
    assert_shm(&shm);
    assert!(
        stat(&wire, "packets") > 0 && stat(&wire, "placements") == 0,
        "{wire}"
    );
    eprintln!(
        "cross-process busy-poll ping-pong RTT p50: shared memory {:.1} us, socket wire {:.1} us",
        median_rtt(&shm),
        median_rtt(&wire)
    );
}

/// The completion channel is written only when the CQ is armed: busy polling (never armed)
/// costs no eventfd write at all; with arming, at most one write per arm.
#[test]
fn cross_process_doorbell_only_when_armed() {
    let limit = Duration::from_secs(60);
    let (busy, busy2) = run_pair_env(
        ("ping", "pong"),
        2000,
        limit,
        &[("RDMA_SIM_TEST_BUSY", "1")],
    );
    for l in [&busy, &busy2] {
        assert_shm(l);
        assert_eq!((stat(l, "arms"), stat(l, "doorbells")), (0, 0), "{l}");
    }
    let (ping, pong) = run_pair(("ping", "pong"), 2000, limit);
    let arms = stat(&ping, "arms") + stat(&pong, "arms");
    let bells = stat(&ping, "doorbells") + stat(&pong, "doorbells");
    assert!(
        bells <= arms,
        "a doorbell needs an arm: {bells} doorbells, {arms} arms"
    );
    assert!(
        bells > 0 && bells <= 2 * 2000,
        "{bells} doorbells for 4000 messages"
    );
    eprintln!("event-mode ping-pong: {bells} doorbells, {arms} arms for 4000 messages");
}

/// A SEND posted before the peer posts a receive is retried after the peer's RNR timer and
/// lands once a receive is posted; with `rnr_retry` 0 it fails with RNR_RETRY_EXC_ERR.
#[test]
fn cross_process_rnr_retry_then_success_or_exhaustion() {
    let limit = Duration::from_secs(30);
    let (sender, receiver) = run_pair(("rnr-sender", "rnr-receiver"), 1, limit);
    assert!(sender.starts_with("DONE status=Success"), "{sender}");
    assert!(stat(&sender, "rnr") > 0, "retried: {sender}");
    assert!(receiver.starts_with("DONE recv=Success/5"), "{receiver}");
    assert_shm(&sender);
    let (sender, receiver) = run_pair_env(
        ("rnr-sender", "rnr-receiver"),
        1,
        limit,
        &[("RDMA_SIM_TEST_RNR", "0")],
    );
    assert!(sender.starts_with("DONE status=RnrRetryExcErr"), "{sender}");
    assert!(receiver.starts_with("DONE recv=none"), "{receiver}");
}

/// RDMA READ of the peer's memory, and a remote access error that moves both QPs to ERR.
#[test]
fn cross_process_read_and_remote_access_error() {
    let ((mut a, mut a_out), (mut b, mut b_out)) =
        start_pair(("one-sided", "one-sided-target"), 1, &[]);
    line_starting(&mut b_out, "WROTE");
    a.stdin.as_mut().unwrap().write_all(b"GO\n").unwrap();
    let done_a = line_starting(&mut a_out, "DONE");
    let done_b = line_starting(&mut b_out, "DONE");
    for c in [&mut a, &mut b] {
        let _ = c.stdin.as_mut().unwrap().write_all(b"EXIT\n");
    }
    assert!(a.wait().unwrap().success() && b.wait().unwrap().success());
    assert!(done_a.starts_with("DONE status=RemAccessErr"), "{done_a}");
    assert_shm(&done_a);
    assert!(done_b.starts_with("DONE recv=WrFlushErr"), "{done_b}");
}

/// Killing one process moves the other's attached QP to ERR: its posted receives and its
/// waiting SEND complete in error within a bounded time.
#[test]
fn cross_process_peer_death_flushes_outstanding_work() {
    let ((mut s, mut s_out), (mut v, mut v_out)) = start_pair(("survivor", "victim"), 1, &[]);
    line_starting(&mut s_out, "READY");
    line_starting(&mut v_out, "READY");
    v.kill().unwrap();
    let _ = v.wait();
    s.stdin.as_mut().unwrap().write_all(b"GO\n").unwrap();
    let done = line_starting(&mut s_out, "DONE");
    let _ = s.stdin.as_mut().unwrap().write_all(b"EXIT\n");
    assert!(s.wait().unwrap().success());
    assert_eq!(stat(&done, "errors"), 5, "{done}");
    assert!(stat(&done, "ms") < 5000, "{done}");
}

#[test]
fn cross_process_million_writes_with_imm_arrive_intact() {
    let n = 1_000_000;
    let started = Instant::now();
    let (writer, reader) = run_pair(("writer", "reader"), n, Duration::from_secs(300));
    assert!(writer.starts_with(&format!("DONE {n}")), "{writer}");
    assert!(reader.starts_with(&format!("DONE {n} ok")), "{reader}");
    assert_shm(&writer);
    assert_shm(&reader);
    eprintln!(
        "1,000,000 WRITE_WITH_IMM across processes in {:?} (simulated NIC)",
        started.elapsed()
    );
}
