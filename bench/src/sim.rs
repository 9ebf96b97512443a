//! rdma-sim on its own: SEND ping-pong round trips and one-way message rates between two queue
//! pairs, in one process (both ends in one thread, busy polling) and across two processes (event
//! mode), with the simulated NIC's share of the CPU. Numbers are "simulated NIC": rdma-sim has
//! no wire timing model.

use std::io::{BufRead, Write};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rdma_sim::{
    Access, CompletionChannel, CompletionQueue, Fabric, FabricConfig, Gid, NicStats, Opcode,
    OwnedRegion, ProtectionDomain, QpAddress, QpAttr, QpCaps, QpInitAttr, QueuePair, RecvWr,
    SendWr, WcOpcode, WcStatus, WorkCompletion,
};

use crate::report::{latency_histogram, process_cpu_time};

const RECV_SLOTS: u64 = 256;
const SLOT: usize = 8192;

/// One end: a QP with one CQ, receive slots and a send buffer.
#[allow(missing_debug_implementations)]
pub struct End {
    _pd: ProtectionDomain,
    channel: CompletionChannel,
    cq: CompletionQueue,
    qp: QueuePair,
    mem: OwnedRegion,
    wcs: Vec<WorkCompletion>,
}

fn blank() -> WorkCompletion {
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

impl End {
    fn open(device: &rdma_sim::Device) -> End {
        let ctx = device.open().expect("open");
        let pd = ctx.alloc_pd();
        let channel = ctx.create_comp_channel().expect("channel");
        let cq = ctx.create_cq(4096, Some(&channel)).expect("cq");
        let caps = QpCaps {
            max_send_wr: 1024,
            max_recv_wr: RECV_SLOTS as u32,
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
            .expect("qp");
        let mem = pd
            .alloc_region((RECV_SLOTS as usize + 1) * SLOT, Access::LOCAL_WRITE)
            .expect("mr");
        End {
            _pd: pd,
            channel,
            cq,
            qp,
            mem,
            wcs: vec![blank(); 64],
        }
    }

    fn connect(&self, remote: QpAddress) {
        self.qp
            .connect(remote, &QpAttr::default())
            .expect("connect");
        let sges: Vec<_> = (0..RECV_SLOTS)
            .map(|i| [self.mem.sge(SLOT * (i as usize + 1), SLOT as u32)])
            .collect();
        let wrs: Vec<_> = (0..RECV_SLOTS)
            .map(|i| RecvWr {
                wr_id: i,
                sges: &sges[i as usize],
            })
            .collect();
        self.qp.post_recv(&wrs).expect("post_recv");
    }

    fn repost(&self, slot: u64) {
        let sge = [self.mem.sge(SLOT * (slot as usize + 1), SLOT as u32)];
        self.qp
            .post_recv(&[RecvWr {
                wr_id: slot,
                sges: &sge,
            }])
            .expect("repost");
    }

    fn send(&self, size: usize, imm: u32, signaled: bool) {
        let sge = [self.mem.sge(0, size as u32)];
        let wr = SendWr {
            wr_id: imm as u64,
            opcode: Opcode::SendWithImm,
            sges: &sge,
            inline: None,
            imm: Some(imm.to_be()),
            signaled,
            solicited: true,
            remote: None,
        };
        self.qp.post_send(&[wr]).expect("post_send");
    }

    /// Polls once; returns the receives (slot, imm) and re-posts them.
    fn poll_recvs(&mut self, out: &mut Vec<u32>) {
        let n = self.cq.poll(&mut self.wcs).expect("poll");
        for wc in &self.wcs[..n] {
            assert_eq!(wc.status, WcStatus::Success, "{wc:?}");
            if wc.opcode == WcOpcode::Recv {
                out.push(u32::from_be(wc.imm.unwrap_or(0)));
                self.repost(wc.wr_id);
            }
        }
    }

    /// Blocks (event mode) until at least one receive arrives.
    fn wait_recvs(&mut self, out: &mut Vec<u32>) {
        loop {
            self.poll_recvs(out);
            if !out.is_empty() {
                return;
            }
            self.cq.req_notify(false).expect("arm");
            self.poll_recvs(out);
            if !out.is_empty() {
                return;
            }
            self.channel.wait(Duration::from_millis(100));
            self.channel.get_events();
        }
    }
}

/// Results of one configuration.
#[derive(Debug)]
pub struct SimResult {
    /// Round-trip times (ns).
    pub rtt: Histogram<u64>,
    /// One-way messages per second with a window of outstanding sends.
    pub rate: f64,
    /// Process CPU time over the whole run.
    pub cpu: Duration,
    /// Simulated-NIC work over the run (this process).
    pub nic: Duration,
}

fn nic_total(f: &Arc<Fabric>) -> NicStats {
    f.stats()
}

/// Both QPs in this thread, busy polling.
pub fn in_process(size: usize, iterations: u64) -> SimResult {
    let fabric = Fabric::new(FabricConfig::default());
    let devs = fabric.devices();
    let (mut a, mut b) = (End::open(&devs[0]), End::open(&devs[1]));
    a.connect(b.qp.address());
    b.connect(a.qp.address());
    let (cpu0, nic0) = (process_cpu_time(), nic_total(&fabric).total());
    let mut rtt = latency_histogram();
    let mut got = Vec::new();
    for i in 0..iterations + iterations / 10 {
        let started = Instant::now();
        a.send(size, i as u32, i % 64 == 63);
        got.clear();
        while got.is_empty() {
            b.poll_recvs(&mut got);
        }
        b.send(size, i as u32, i % 64 == 63);
        got.clear();
        while got.is_empty() {
            a.poll_recvs(&mut got);
        }
        if i >= iterations / 10 {
            rtt.saturating_record(started.elapsed().as_nanos() as u64);
        }
    }
    // One-way rate: a window of 128 outstanding sends.
    let started = Instant::now();
    let (mut sent, mut received) = (0u64, 0u64);
    while received < iterations {
        while sent < iterations && sent - received < 128 {
            a.send(size, sent as u32, sent % 64 == 63);
            sent += 1;
        }
        got.clear();
        b.poll_recvs(&mut got);
        received += got.len() as u64;
        a.poll_recvs(&mut got);
    }
    let rate = iterations as f64 / started.elapsed().as_secs_f64();
    SimResult {
        rtt,
        rate,
        cpu: process_cpu_time() - cpu0,
        nic: nic_total(&fabric).total() - nic0,
    }
}

fn addr_line(end: &End) -> String {
    let a = end.qp.address();
    format!("ADDR {} {}\n", a.gid, a.qpn)
}

fn parse_addr(line: &str) -> QpAddress {
    let f: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(f.first(), Some(&"ADDR"), "bad bootstrap line {line:?}");
    QpAddress {
        gid: Gid::from_str(f[1]).expect("gid"),
        qpn: f[2].parse().expect("qpn"),
    }
}

/// The child side of [`cross_process`]: echoes every message until it receives `u32::MAX`.
pub fn peer_main() {
    let mut end = End::open(&rdma_sim::devices()[0]);
    print!("{}", addr_line(&end));
    std::io::stdout().flush().expect("stdout");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).expect("stdin");
    end.connect(parse_addr(&line));
    let mut got = Vec::new();
    let mut n = 0u64;
    loop {
        got.clear();
        end.wait_recvs(&mut got);
        for &imm in &got {
            if imm == u32::MAX {
                return;
            }
            // Echo: the same size is irrelevant for the requester's RTT; 64 B replies.
            end.send(64, imm, n % 64 == 63);
            n += 1;
        }
    }
}

/// This process against a child process (`exe sim-peer`), both in event mode; over rdma-sim's
/// shared-memory data path (`shm`), or over its socket wire.
pub fn cross_process(
    exe: &std::path::Path,
    size: usize,
    iterations: u64,
    shm: bool,
) -> std::io::Result<SimResult> {
    Fabric::global().set_shm_enabled(shm);
    let mut child: Child = Command::new(exe)
        .arg("sim-peer")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line)?;
    let fabric = Fabric::global();
    let mut end = End::open(&rdma_sim::devices()[0]);
    end.connect(parse_addr(&line));
    child
        .stdin
        .as_mut()
        .expect("stdin")
        .write_all(addr_line(&end).as_bytes())?;
    let (cpu0, nic0) = (process_cpu_time(), nic_total(&fabric).total());
    let mut rtt = latency_histogram();
    let mut got = Vec::new();
    for i in 0..iterations + iterations / 10 {
        let started = Instant::now();
        end.send(size, i as u32, i % 64 == 63);
        got.clear();
        end.wait_recvs(&mut got);
        if i >= iterations / 10 {
            rtt.saturating_record(started.elapsed().as_nanos() as u64);
        }
    }
    let started = Instant::now();
    let (mut sent, mut echoed) = (0u64, 0u64);
    while echoed < iterations {
        while sent < iterations && sent - echoed < 128 {
            end.send(size, sent as u32, sent % 64 == 63);
            sent += 1;
        }
        got.clear();
        end.wait_recvs(&mut got);
        echoed += got.len() as u64;
    }
    let rate = iterations as f64 / started.elapsed().as_secs_f64();
    let result = SimResult {
        rtt,
        rate,
        cpu: process_cpu_time() - cpu0,
        nic: nic_total(&fabric).total() - nic0,
    };
    end.send(8, u32::MAX, true);
    let _ = child.wait();
    Ok(result)
}
