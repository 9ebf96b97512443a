//! [`Verbs`] over rdma-sim: the binding used on machines without an RDMA device. Its only
//! `unsafe` is handing an arena to the simulator's registration call (with the arena's memfd
//! when it has one, so that links to another process use rdma-sim's shared-memory data path).

use std::os::fd::AsRawFd;
use std::sync::Arc;

use rdma_sim as sim;

use super::memory::Arena;
use super::sys::ChannelFd;
use super::verbs::{
    Completion, CompletionKind, Payload, QpConfig, QpEndpoint, RecvRequest, Registration,
    RemoteAccess, SendOp, SendRequest, Verbs, VerbsError, VerbsQp, WcError,
};

fn map_err(e: sim::VerbsError) -> VerbsError {
    match e {
        sim::VerbsError::SendQueueFull { .. } => VerbsError::QueueFull("send"),
        sim::VerbsError::RecvQueueFull { .. } => VerbsError::QueueFull("receive"),
        sim::VerbsError::QpInError => VerbsError::QpError,
        sim::VerbsError::CqOverflow => VerbsError::CqOverflow,
        sim::VerbsError::NoSuchDevice(d) => VerbsError::NoDevice(d),
        other => VerbsError::Other(other.to_string()),
    }
}

/// Reports the process-wide simulated NIC's work to the metrics registry, once it exists:
/// `rdma_sim_nic_seconds_total{part="inline"}` (engine time inside application threads, already
/// part of the process's CPU time), `{part="threads"}` (CPU time of the simulator's own timer and
/// wire threads), `{part="placement"}` (direct placement into another process's memory over
/// shared memory: the payload copies and completion writes) and `rdma_sim_packets_total`. A real NIC does this work off the host's CPUs, so
/// benchmarks report it apart from host work.
pub fn register_nic_metrics() {
    use crate::metrics::{Kind, Sample};
    crate::metrics::global().collect(Box::new(|out| {
        if let Some(f) = sim::Fabric::global_if_started() {
            let st = f.stats();
            for (part, d) in [
                ("inline", st.inline_time),
                ("threads", st.thread_cpu_time),
                ("placement", st.placement_time),
            ] {
                out.push(Sample {
                    name: "rdma_sim_nic_seconds_total",
                    help: "Work done by the simulated NIC in this process",
                    kind: Kind::Counter,
                    labels: vec![("part", part.into())],
                    value: d.as_secs_f64(),
                });
            }
            out.push(Sample {
                name: "rdma_sim_packets_total",
                help: "Packets the simulated NIC sent",
                kind: Kind::Counter,
                labels: vec![],
                value: st.net.packets as f64,
            });
        }
        true
    }));
}

/// Opens rdma-sim devices: of the process-wide fabric (reachable from other processes), or of
/// a given fabric (isolated tests).
#[derive(Debug, Clone, Default)]
pub struct SimOpener {
    fabric: Option<Arc<sim::Fabric>>,
}

impl SimOpener {
    /// Devices of `fabric` instead of the process-wide one.
    pub fn with_fabric(fabric: Arc<sim::Fabric>) -> Self {
        Self {
            fabric: Some(fabric),
        }
    }
}

impl super::transport::DeviceOpener for SimOpener {
    type Verbs = SimVerbs;

    fn scheme(&self) -> &'static str {
        "rdma-sim"
    }

    fn open(&self, device: Option<&str>) -> Result<SimVerbs, VerbsError> {
        let devices = match &self.fabric {
            Some(f) => f.devices(),
            None => sim::devices(),
        };
        let dev = match device {
            None => devices.first(),
            Some(n) => devices.iter().find(|d| d.name() == n),
        }
        .ok_or_else(|| VerbsError::NoDevice(device.unwrap_or("(any)").to_owned()))?;
        SimVerbs::open(dev)
    }
}

/// An opened rdma-sim device with one protection domain.
#[derive(Debug)]
pub struct SimVerbs {
    ctx: sim::Context,
    pd: Arc<sim::ProtectionDomain>,
    name: String,
}

impl SimVerbs {
    /// Opens `device`.
    pub fn open(device: &sim::Device) -> Result<Self, VerbsError> {
        let ctx = device.open().map_err(map_err)?;
        let pd = Arc::new(ctx.alloc_pd());
        Ok(Self {
            ctx,
            pd,
            name: device.name(),
        })
    }

    /// Opens a device of the process-wide simulated fabric by name (the first if `None`).
    pub fn open_named(name: Option<&str>) -> Result<Self, VerbsError> {
        let devices = sim::devices();
        let dev = match name {
            None => devices.first(),
            Some(n) => devices.iter().find(|d| d.name() == n),
        }
        .ok_or_else(|| VerbsError::NoDevice(name.unwrap_or("(any)").to_owned()))?;
        Self::open(dev)
    }

    /// The simulated fabric (for statistics and fault injection).
    pub fn fabric(&self) -> &Arc<sim::Fabric> {
        self.ctx.fabric()
    }
}

#[allow(unsafe_code)]
fn register_arena(
    pd: &sim::ProtectionDomain,
    arena: &Arena,
    access: sim::Access,
) -> Result<sim::MemoryRegion, sim::VerbsError> {
    let addr = arena.addr() as usize as *mut u8;
    match arena.memfd() {
        // SAFETY: as below; a shared arena maps its whole memfd from offset 0, so the range is
        // exactly the descriptor's bytes `0..len` (what a peer process maps for direct
        // placement).
        Some(fd) => unsafe { pd.register_memfd(addr, arena.len(), fd, 0, access) },
        // SAFETY: the returned region is stored next to an `Arc<Arena>` in the registration
        // handle and dropped first, so the memory outlives the registration.
        None => unsafe { pd.register(addr, arena.len(), access) },
    }
}

impl Verbs for SimVerbs {
    type Qp = SimQp;

    fn name(&self) -> String {
        self.name.clone()
    }

    fn gid(&self) -> [u8; 16] {
        self.ctx.gid().0
    }

    fn register(
        &self,
        arena: &Arc<Arena>,
        access: RemoteAccess,
    ) -> Result<Registration, VerbsError> {
        let remote = match access {
            RemoteAccess::None => sim::Access::NONE,
            RemoteAccess::Write => sim::Access::REMOTE_WRITE,
            RemoteAccess::Read => sim::Access::REMOTE_READ,
            RemoteAccess::ReadWrite => sim::Access::REMOTE_WRITE | sim::Access::REMOTE_READ,
        };
        let mr =
            register_arena(&self.pd, arena, sim::Access::LOCAL_WRITE | remote).map_err(map_err)?;
        Ok(Registration {
            lkey: mr.lkey(),
            rkey: mr.rkey(),
            // Tuple fields drop in order: the registration before the arena.
            _handle: Box::new((mr, arena.clone())),
        })
    }

    fn create_qp(&self, config: &QpConfig) -> Result<SimQp, VerbsError> {
        let channel = if config.event_channel {
            Some(Arc::new(self.ctx.create_comp_channel().map_err(map_err)?))
        } else {
            None
        };
        let send_cq = self
            .ctx
            .create_cq(config.cq_depth as usize, channel.as_deref())
            .map_err(map_err)?;
        let recv_cq = self
            .ctx
            .create_cq(config.cq_depth as usize, channel.as_deref())
            .map_err(map_err)?;
        let qp = self
            .pd
            .create_qp(sim::QpInitAttr {
                send_cq: &send_cq,
                recv_cq: &recv_cq,
                caps: sim::QpCaps {
                    max_send_wr: config.send_depth,
                    max_recv_wr: config.recv_depth,
                    max_send_sge: 2,
                    max_recv_sge: 1,
                    max_inline_data: config.max_inline,
                },
            })
            .map_err(map_err)?;
        Ok(SimQp {
            qp,
            send_cq,
            recv_cq,
            channel,
            config: config.clone(),
            _pd: self.pd.clone(),
            wcs: vec![sim_wc_zero(); 64],
            sges: Vec::new(),
            send_wrs: Vec::new(),
            recv_wrs: Vec::new(),
        })
    }
}

fn sim_wc_zero() -> sim::WorkCompletion {
    sim::WorkCompletion {
        wr_id: 0,
        status: sim::WcStatus::Success,
        opcode: sim::WcOpcode::Send,
        byte_len: 0,
        imm: None,
        qp_num: 0,
        src_qp: 0,
        solicited: false,
    }
}

/// A queue pair on rdma-sim.
#[derive(Debug)]
pub struct SimQp {
    qp: sim::QueuePair,
    send_cq: sim::CompletionQueue,
    recv_cq: sim::CompletionQueue,
    channel: Option<Arc<sim::CompletionChannel>>,
    config: QpConfig,
    _pd: Arc<sim::ProtectionDomain>,
    wcs: Vec<sim::WorkCompletion>,
    sges: Vec<sim::Sge>,
    /// Work-request buffers reused across posts (no allocation per post).
    send_wrs: Vec<sim::SendWr<'static>>,
    recv_wrs: Vec<sim::RecvWr<'static>>,
}

// Empty vectors of another lifetime on the same allocation: the element types differ only in
// a lifetime, so the standard library collects in place.
fn recycle_send<'b>(mut v: Vec<sim::SendWr<'_>>) -> Vec<sim::SendWr<'b>> {
    v.clear();
    v.into_iter().map(|_| unreachable!("cleared")).collect()
}

fn recycle_recv<'b>(mut v: Vec<sim::RecvWr<'_>>) -> Vec<sim::RecvWr<'b>> {
    v.clear();
    v.into_iter().map(|_| unreachable!("cleared")).collect()
}

fn convert_wc(wc: &sim::WorkCompletion) -> Completion {
    let status = match wc.status {
        sim::WcStatus::Success => Ok(()),
        sim::WcStatus::LocLenErr => Err(WcError::LocalLength),
        sim::WcStatus::LocProtErr => Err(WcError::LocalProtection),
        sim::WcStatus::WrFlushErr => Err(WcError::Flushed),
        sim::WcStatus::RemInvReqErr => Err(WcError::RemoteInvalidRequest),
        sim::WcStatus::RemAccessErr => Err(WcError::RemoteAccess),
        sim::WcStatus::RemOpErr => Err(WcError::RemoteOperation),
        sim::WcStatus::RetryExcErr => Err(WcError::RetryExceeded),
        sim::WcStatus::RnrRetryExcErr => Err(WcError::RnrRetryExceeded),
        sim::WcStatus::LocQpOpErr => Err(WcError::Other),
    };
    let kind = match wc.opcode {
        sim::WcOpcode::Send => CompletionKind::Send,
        sim::WcOpcode::RdmaWrite => CompletionKind::Write,
        sim::WcOpcode::RdmaRead => CompletionKind::Read,
        sim::WcOpcode::Recv => CompletionKind::Recv,
        sim::WcOpcode::RecvRdmaWithImm => CompletionKind::RecvWriteImm,
    };
    Completion {
        wr_id: wc.wr_id,
        status,
        kind,
        byte_len: wc.byte_len,
        imm: wc.imm.map(u32::from_be),
    }
}

impl VerbsQp for SimQp {
    fn endpoint(&self) -> QpEndpoint {
        let a = self.qp.address();
        QpEndpoint {
            gid: a.gid.0,
            qpn: a.qpn,
            psn: 0,
            lid: 0,
        }
    }

    fn connect(&mut self, remote: &QpEndpoint) -> Result<(), VerbsError> {
        let c = &self.config;
        let access = match c.remote_access {
            RemoteAccess::None => sim::Access::NONE,
            RemoteAccess::Write => sim::Access::REMOTE_WRITE,
            RemoteAccess::Read => sim::Access::REMOTE_READ,
            RemoteAccess::ReadWrite => sim::Access::REMOTE_WRITE | sim::Access::REMOTE_READ,
        };
        let attr = sim::QpAttr {
            access,
            remote: None,
            rq_psn: remote.psn,
            min_rnr_timer: c.min_rnr_timer,
            sq_psn: 0,
            timeout: c.timeout,
            retry_cnt: c.retry_cnt,
            rnr_retry: c.rnr_retry,
        };
        let addr = sim::QpAddress {
            gid: sim::Gid(remote.gid),
            qpn: remote.qpn,
        };
        self.qp.connect(addr, &attr).map_err(map_err)
    }

    #[allow(unsafe_code)]
    unsafe fn post_send(&mut self, requests: &[SendRequest<'_>]) -> Result<(), VerbsError> {
        self.sges.clear();
        for r in requests {
            if let Payload::Sges(sges) = r.payload {
                self.sges.extend(sges.iter().map(|s| sim::Sge {
                    addr: s.addr,
                    length: s.len,
                    lkey: s.lkey,
                }));
            }
        }
        let mut at = 0;
        let mut wrs = recycle_send(std::mem::take(&mut self.send_wrs));
        for r in requests {
            let (sges, inline): (&[sim::Sge], _) = match r.payload {
                Payload::Sges(s) => {
                    let slice = &self.sges[at..at + s.len()];
                    at += s.len();
                    (slice, None)
                }
                Payload::Inline(data) => (&[], Some(data)),
            };
            let (opcode, imm, remote) = match r.op {
                SendOp::Send => (sim::Opcode::Send, None, None),
                SendOp::SendImm(i) => (sim::Opcode::SendWithImm, Some(i.to_be()), None),
                SendOp::Write(b) => (sim::Opcode::RdmaWrite, None, Some(b)),
                SendOp::WriteImm(b, i) => (sim::Opcode::RdmaWriteWithImm, Some(i.to_be()), Some(b)),
                SendOp::Read(b) => (sim::Opcode::RdmaRead, None, Some(b)),
            };
            wrs.push(sim::SendWr {
                wr_id: r.wr_id,
                opcode,
                sges,
                inline,
                imm,
                signaled: r.signaled,
                solicited: r.solicited,
                remote: remote.map(|b| sim::RemoteAddr {
                    addr: b.addr,
                    rkey: b.rkey,
                }),
            });
        }
        let r = self.qp.post_send(&wrs).map_err(map_err);
        self.send_wrs = recycle_send(wrs);
        r
    }

    #[allow(unsafe_code)]
    unsafe fn post_recv(&mut self, requests: &[RecvRequest]) -> Result<(), VerbsError> {
        self.sges.clear();
        self.sges.extend(requests.iter().map(|r| sim::Sge {
            addr: r.sge.addr,
            length: r.sge.len,
            lkey: r.sge.lkey,
        }));
        let mut wrs = recycle_recv(std::mem::take(&mut self.recv_wrs));
        wrs.extend(requests.iter().zip(&self.sges).map(|(r, s)| sim::RecvWr {
            wr_id: r.wr_id,
            sges: if s.length == 0 {
                &[]
            } else {
                std::slice::from_ref(s)
            },
        }));
        let r = self.qp.post_recv(&wrs).map_err(map_err);
        self.recv_wrs = recycle_recv(wrs);
        r
    }

    fn poll(&mut self, out: &mut Vec<Completion>, max: usize) -> Result<usize, VerbsError> {
        let mut total = 0;
        for cq in [&self.recv_cq, &self.send_cq] {
            while total < max {
                let want = (max - total).min(self.wcs.len());
                let n = cq.poll(&mut self.wcs[..want]).map_err(map_err)?;
                out.extend(self.wcs[..n].iter().map(convert_wc));
                total += n;
                if n < want {
                    break;
                }
            }
        }
        Ok(total)
    }

    fn may_have_completions(&self) -> bool {
        self.recv_cq.ready_hint() + self.send_cq.ready_hint() > 0
    }

    fn completion_hint(&self) -> Arc<dyn Fn() -> bool + Send + Sync> {
        let (r, s) = (self.recv_cq.ready_counter(), self.send_cq.ready_counter());
        Arc::new(move || r.get() + s.get() > 0)
    }

    fn arm(&mut self, recv_solicited_only: bool) -> Result<(), VerbsError> {
        self.send_cq.req_notify(false).map_err(map_err)?;
        self.recv_cq
            .req_notify(recv_solicited_only)
            .map_err(map_err)
    }

    fn channel(&self) -> Option<ChannelFd> {
        self.channel
            .as_ref()
            .map(|c| ChannelFd::new(c.as_raw_fd(), c.clone()))
    }

    fn take_events(&mut self) -> u64 {
        self.channel.as_ref().map(|c| c.get_events()).unwrap_or(0)
    }

    fn set_error(&mut self) -> Result<(), VerbsError> {
        self.qp
            .modify(sim::QpState::Err, &sim::QpAttr::default())
            .map_err(map_err)
    }
}
