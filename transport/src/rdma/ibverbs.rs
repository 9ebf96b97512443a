//! [`Verbs`] over real libibverbs through `sideway` (RDMA NICs, SoftRoCE). libibverbs is loaded
//! at run time, so one binary runs everywhere: "no kernel support" (`ENOSYS`) and "no
//! libibverbs" (`EOPNOTSUPP`) both mean "no device", never a crash. This is the binding's FFI
//! module: every `unsafe` of real verbs is here.

#![allow(unsafe_code)]

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use sideway::ibverbs::AccessFlags;
use sideway::ibverbs::address::{AddressHandleAttribute, Gid, GidType};
use sideway::ibverbs::completion::{
    CompletionChannel, CompletionQueue as _, GenericCompletionQueue, PollCompletionQueueError,
};
use sideway::ibverbs::device::{DeviceInfo, DeviceList};
use sideway::ibverbs::device_context::{DeviceContext, LinkLayer, Mtu, PortState};
use sideway::ibverbs::protection_domain::ProtectionDomain;
use sideway::ibverbs::queue_pair::{
    GenericQueuePair, PostSendGuard, QueuePair, QueuePairAttribute, QueuePairState,
    SendOperationFlags, SetInlineData, SetScatterGatherEntry, WorkRequestFlags,
};

use super::memory::Arena;
use super::sys::ChannelFd;
use super::transport::DeviceOpener;
use super::verbs::{
    Completion, CompletionKind, Payload, QpConfig, QpEndpoint, RecvRequest, Registration,
    RemoteAccess, SendOp, SendRequest, Verbs, VerbsError, VerbsQp, WcError,
};

const PORT: u8 = 1;

fn other(what: &str, e: impl std::fmt::Display) -> VerbsError {
    VerbsError::Other(format!("{what}: {e}"))
}

/// Opens real RDMA devices.
#[derive(Debug, Clone, Default)]
pub struct IbOpener;

impl DeviceOpener for IbOpener {
    type Verbs = IbVerbs;

    fn scheme(&self) -> &'static str {
        "rdma"
    }

    fn open(&self, device: Option<&str>) -> Result<IbVerbs, VerbsError> {
        IbVerbs::open(device)
    }
}

/// Names of the RDMA devices of this host (empty when there are none, or no libibverbs).
pub fn device_names() -> Vec<String> {
    match DeviceList::new() {
        Ok(list) => list.iter().map(|d| d.name()).collect(),
        Err(_) => Vec::new(),
    }
}

/// An opened RDMA device (port 1) with one protection domain.
pub struct IbVerbs {
    ctx: Arc<DeviceContext>,
    pd: Arc<ProtectionDomain>,
    name: String,
    gid: [u8; 16],
    gid_index: u8,
    lid: u16,
    mtu: Mtu,
}

impl std::fmt::Debug for IbVerbs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IbVerbs")
            .field("name", &self.name)
            .field("gid_index", &self.gid_index)
            .finish()
    }
}

impl IbVerbs {
    /// Opens `device` (the first one if `None`), choosing port 1 and a RoCE v2 IPv4 GID when
    /// there is one (else any non-link-local GID, else index 0).
    pub fn open(device: Option<&str>) -> Result<IbVerbs, VerbsError> {
        let list = DeviceList::new().map_err(|e| VerbsError::NoDevice(format!("{e:?}")))?;
        let dev = list
            .iter()
            .find(|d| device.is_none_or(|n| d.name() == n))
            .ok_or_else(|| {
                VerbsError::NoDevice(match device {
                    Some(n) => format!("no device named {n}"),
                    None => "no RDMA device present".into(),
                })
            })?;
        let name = dev.name();
        let ctx = dev
            .open()
            .map_err(|e| other("open device", format!("{e:?}")))?;
        let port = ctx
            .query_port(PORT)
            .map_err(|e| other("query port", format!("{e:?}")))?;
        if port.port_state() != PortState::Active {
            return Err(VerbsError::NoDevice(format!(
                "{name} port {PORT} is not active"
            )));
        }
        let gids = ctx
            .query_gid_table()
            .map_err(|e| other("query GID table", format!("{e:?}")))?;
        let ours = || gids.iter().filter(|g| g.port_num() == PORT as u32);
        let is_v4 =
            |g: &Gid| g.raw[..10].iter().all(|b| *b == 0) && g.raw[10] == 0xff && g.raw[11] == 0xff;
        let entry = ours()
            .find(|g| g.gid_type() == GidType::RoceV2 && is_v4(&g.gid()))
            .or_else(|| ours().find(|g| !g.gid().is_unicast_link_local() && !g.gid().is_zero()))
            .or_else(|| ours().next())
            .ok_or_else(|| VerbsError::NoDevice(format!("{name} has no GID on port {PORT}")))?;
        let pd = ctx
            .alloc_pd()
            .map_err(|e| other("alloc PD", format!("{e:?}")))?;
        let lid = if port.link_layer() == LinkLayer::InfiniBand {
            port.lid()
        } else {
            0
        };
        Ok(IbVerbs {
            gid: entry.gid().raw,
            gid_index: entry.gid_index() as u8,
            lid,
            mtu: port.active_mtu(),
            ctx,
            pd,
            name,
        })
    }
}

impl Verbs for IbVerbs {
    type Qp = IbQp;

    fn name(&self) -> String {
        self.name.clone()
    }

    fn gid(&self) -> [u8; 16] {
        self.gid
    }

    fn register(
        &self,
        arena: &Arc<Arena>,
        access: RemoteAccess,
    ) -> Result<Registration, VerbsError> {
        let mut flags = AccessFlags::LocalWrite;
        if matches!(access, RemoteAccess::Write | RemoteAccess::ReadWrite) {
            flags |= AccessFlags::RemoteWrite;
        }
        if matches!(access, RemoteAccess::Read | RemoteAccess::ReadWrite) {
            flags |= AccessFlags::RemoteRead;
        }
        // SAFETY: the arena is page-aligned memory that never moves; the registration handle
        // keeps an `Arc<Arena>` beside the region and drops the region first.
        let mr = unsafe { self.pd.reg_mr(arena.addr() as usize, arena.len(), flags) }
            .map_err(|e| other("register memory (check `ulimit -l`)", format!("{e:?}")))?;
        Ok(Registration {
            lkey: mr.lkey(),
            rkey: mr.rkey(),
            _handle: Box::new((mr, arena.clone())),
        })
    }

    fn create_qp(&self, c: &QpConfig) -> Result<IbQp, VerbsError> {
        let channel = if c.event_channel {
            let ch = self
                .ctx
                .create_comp_channel()
                .map_err(|e| other("create completion channel", format!("{e:?}")))?;
            ch.set_nonblocking(true)
                .map_err(|e| other("non-blocking channel", e))?;
            Some(ch)
        } else {
            None
        };
        let mut cqb = self.ctx.create_cq_builder();
        cqb.setup_cqe(c.cq_depth);
        if let Some(ch) = &channel {
            cqb.setup_comp_channel(ch, 0);
        }
        let build_cq = || -> Result<GenericCompletionQueue, VerbsError> {
            Ok(GenericCompletionQueue::from(
                cqb.build()
                    .map_err(|e| other("create CQ", format!("{e:?}")))?,
            ))
        };
        let (sq, rq) = (build_cq()?, build_cq()?);
        let mut qpb = self.pd.create_qp_builder();
        qpb.setup_max_send_wr(c.send_depth)
            .setup_max_recv_wr(c.recv_depth)
            .setup_max_send_sge(2)
            .setup_max_recv_sge(1)
            .setup_max_inline_data(c.max_inline)
            .setup_send_cq(sq.clone())
            .setup_recv_cq(rq.clone())
            .setup_send_ops_flags(
                SendOperationFlags::Send
                    | SendOperationFlags::SendWithImmediate
                    | SendOperationFlags::Write
                    | SendOperationFlags::WriteWithImmediate
                    | SendOperationFlags::Read,
            );
        // The extended QP (ibv_wr_* API) where the provider has it; the basic one otherwise.
        let mut qp: GenericQueuePair = match qpb.build_ex() {
            Ok(q) => q.into(),
            Err(_) => qpb
                .build()
                .map_err(|e| other("create QP", format!("{e:?}")))?
                .into(),
        };
        let mut access = AccessFlags::LocalWrite;
        if matches!(
            c.remote_access,
            RemoteAccess::Write | RemoteAccess::ReadWrite
        ) {
            access |= AccessFlags::RemoteWrite;
        }
        if matches!(
            c.remote_access,
            RemoteAccess::Read | RemoteAccess::ReadWrite
        ) {
            access |= AccessFlags::RemoteRead;
        }
        // INIT right away, so receives can be posted before the peer is known.
        let mut init = QueuePairAttribute::new();
        init.setup_state(QueuePairState::Init)
            .setup_pkey_index(0)
            .setup_port(PORT)
            .setup_access_flags(access);
        qp.modify(&init)
            .map_err(|e| other("QP to INIT", format!("{e:?}")))?;
        let psn = (std::process::id().wrapping_mul(2_654_435_761) ^ qp.qp_number()) & 0x00FF_FFFF;
        Ok(IbQp {
            qp,
            sq,
            rq,
            channel,
            config: c.clone(),
            gid: self.gid,
            gid_index: self.gid_index,
            lid: self.lid,
            mtu: self.mtu,
            psn,
        })
    }
}

/// A queue pair on a real device.
pub struct IbQp {
    qp: GenericQueuePair,
    sq: GenericCompletionQueue,
    rq: GenericCompletionQueue,
    channel: Option<Arc<CompletionChannel>>,
    config: QpConfig,
    gid: [u8; 16],
    gid_index: u8,
    lid: u16,
    mtu: Mtu,
    psn: u32,
}

impl std::fmt::Debug for IbQp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IbQp")
            .field("qpn", &self.qp.qp_number())
            .finish()
    }
}

// SAFETY: the QP and CQ handles are only used through `&mut self` (the driver holds them under
// a mutex); libibverbs objects may be used from any thread.
unsafe impl Send for IbQp {}

/// The IB encoding of a minimum RNR NAK delay (µs ×100 table of the spec), rounded up.
fn rnr_timer_code(d: Duration) -> u8 {
    const TABLE_US: [u32; 32] = [
        655_360, 10, 20, 30, 40, 60, 80, 120, 160, 240, 320, 480, 640, 960, 1280, 1920, 2560, 3840,
        5120, 7680, 10_240, 15_360, 20_480, 30_720, 40_960, 61_440, 81_920, 122_880, 163_840,
        245_760, 327_680, 491_520,
    ];
    let want = d.as_micros() as u32;
    (1..32).find(|&i| TABLE_US[i] >= want).unwrap_or(0) as u8
}

/// The IB encoding of a local ACK timeout: 4.096 µs × 2^t, rounded up.
fn timeout_code(d: Duration) -> u8 {
    let units = (d.as_nanos() / 4096).max(1);
    (u128::BITS - (units - 1).leading_zeros()).clamp(1, 31) as u8
}

fn wc_error(status: u32) -> WcError {
    match status {
        1 => WcError::LocalLength,
        4 => WcError::LocalProtection,
        5 => WcError::Flushed,
        9 => WcError::RemoteInvalidRequest,
        10 => WcError::RemoteAccess,
        11 => WcError::RemoteOperation,
        12 => WcError::RetryExceeded,
        13 => WcError::RnrRetryExceeded,
        _ => WcError::Other,
    }
}

impl VerbsQp for IbQp {
    fn endpoint(&self) -> QpEndpoint {
        QpEndpoint {
            gid: self.gid,
            qpn: self.qp.qp_number(),
            psn: self.psn,
            lid: self.lid,
        }
    }

    fn connect(&mut self, remote: &QpEndpoint) -> Result<(), VerbsError> {
        let c = &self.config;
        let mut rtr = QueuePairAttribute::new();
        rtr.setup_state(QueuePairState::ReadyToReceive)
            .setup_path_mtu(self.mtu)
            .setup_dest_qp_num(remote.qpn)
            .setup_rq_psn(remote.psn)
            .setup_max_dest_read_atomic(1)
            .setup_min_rnr_timer(rnr_timer_code(c.min_rnr_timer));
        let mut ah = AddressHandleAttribute::new();
        ah.setup_dest_lid(remote.lid)
            .setup_port(PORT)
            .setup_service_level(0)
            .setup_grh_src_gid_index(self.gid_index)
            .setup_grh_dest_gid(&Gid { raw: remote.gid })
            .setup_grh_hop_limit(64);
        rtr.setup_address_vector(&ah);
        self.qp
            .modify(&rtr)
            .map_err(|e| other("QP to RTR", format!("{e:?}")))?;
        let mut rts = QueuePairAttribute::new();
        rts.setup_state(QueuePairState::ReadyToSend)
            .setup_sq_psn(self.psn)
            .setup_timeout(timeout_code(c.timeout))
            .setup_retry_cnt(c.retry_cnt.min(7))
            .setup_rnr_retry(c.rnr_retry.min(7))
            .setup_max_read_atomic(1);
        self.qp
            .modify(&rts)
            .map_err(|e| other("QP to RTS", format!("{e:?}")))
    }

    unsafe fn post_send(&mut self, requests: &[SendRequest<'_>]) -> Result<(), VerbsError> {
        let mut guard = self.qp.start_post_send();
        for r in requests {
            let mut flags = WorkRequestFlags::none();
            if r.signaled {
                flags |= WorkRequestFlags::Signaled;
            }
            if r.solicited {
                flags |= WorkRequestFlags::Solicited;
            }
            if matches!(r.payload, Payload::Inline(_)) {
                flags |= WorkRequestFlags::Inline;
            }
            let wr = guard.construct_wr(r.wr_id, flags);
            let local = match r.op {
                SendOp::Send => wr.setup_send(),
                SendOp::SendImm(i) => wr.setup_send_imm(i.to_be()),
                SendOp::Write(b) => wr.setup_write(b.rkey, b.addr),
                SendOp::WriteImm(b, i) => wr.setup_write_imm(b.rkey, b.addr, i.to_be()),
                SendOp::Read(b) => wr.setup_read(b.rkey, b.addr),
            };
            match r.payload {
                Payload::Inline(data) => local.setup_inline_data(data),
                Payload::Sges(sges) => {
                    let list: Vec<_> = sges
                        .iter()
                        .map(|s| rdma_mummy_sys::ibv_sge {
                            addr: s.addr,
                            length: s.len,
                            lkey: s.lkey,
                        })
                        .collect();
                    // SAFETY: the caller guarantees (this function's contract) that every SGE
                    // lies in registered memory that outlives the request and is not written
                    // until its completion.
                    unsafe { local.setup_sge_list(&list) };
                }
            }
        }
        guard.post().map_err(|e| match e {
            sideway::ibverbs::queue_pair::PostSendError::NotEnoughResources(_) => {
                VerbsError::QueueFull("send")
            }
            other => VerbsError::Other(format!("post_send: {other:?}")),
        })
    }

    unsafe fn post_recv(&mut self, requests: &[RecvRequest]) -> Result<(), VerbsError> {
        let mut guard = self.qp.start_post_recv();
        for r in requests {
            let wr = guard.construct_wr(r.wr_id);
            // SAFETY: the caller guarantees (this function's contract) that the buffer lies in
            // registered memory that outlives the receive and is not accessed until it completes.
            unsafe {
                if r.sge.len == 0 {
                    wr.setup_sge_list(&[]);
                } else {
                    wr.setup_sge(r.sge.lkey, r.sge.addr, r.sge.len);
                }
            }
        }
        guard.post().map_err(|e| match e {
            sideway::ibverbs::queue_pair::PostRecvError::NotEnoughResources(_) => {
                VerbsError::QueueFull("receive")
            }
            other => VerbsError::Other(format!("post_recv: {other:?}")),
        })
    }

    fn poll(&mut self, out: &mut Vec<Completion>, max: usize) -> Result<usize, VerbsError> {
        let mut n = 0;
        for cq in [&self.rq, &self.sq] {
            if n >= max {
                break;
            }
            let poller = match cq.start_poll() {
                Ok(p) => p,
                Err(PollCompletionQueueError::CompletionQueueEmpty) => continue,
                Err(e) => return Err(VerbsError::Other(format!("poll CQ: {e}"))),
            };
            let on_recv_cq = std::ptr::eq(cq, &self.rq);
            for wc in poller {
                let status = wc.status();
                // Error completions carry no valid opcode: classify them by queue.
                let kind = match (status, wc.opcode()) {
                    (0, 1) => CompletionKind::Write,
                    (0, 2) => CompletionKind::Read,
                    (0, 129) => CompletionKind::RecvWriteImm,
                    _ if on_recv_cq => CompletionKind::Recv,
                    _ => CompletionKind::Send,
                };
                let is_recv = matches!(kind, CompletionKind::Recv | CompletionKind::RecvWriteImm);
                out.push(Completion {
                    wr_id: wc.wr_id(),
                    status: if status == 0 {
                        Ok(())
                    } else {
                        Err(wc_error(status))
                    },
                    kind,
                    byte_len: wc.byte_len(),
                    imm: (is_recv && status == 0).then(|| u32::from_be(wc.imm_data())),
                });
                n += 1;
            }
        }
        Ok(n)
    }

    fn arm(&mut self, recv_solicited_only: bool) -> Result<(), VerbsError> {
        // SAFETY: both CQs are live for the life of `self`.
        let (a, b) = unsafe {
            (
                rdma_mummy_sys::ibv_req_notify_cq(self.sq.cq().as_ptr(), 0),
                rdma_mummy_sys::ibv_req_notify_cq(
                    self.rq.cq().as_ptr(),
                    recv_solicited_only as i32,
                ),
            )
        };
        if a != 0 || b != 0 {
            return Err(VerbsError::Other(format!(
                "ibv_req_notify_cq failed ({a}, {b})"
            )));
        }
        Ok(())
    }

    fn channel(&self) -> Option<ChannelFd> {
        self.channel
            .as_ref()
            .map(|c| ChannelFd::new(c.as_raw_fd(), c.clone()))
    }

    fn take_events(&mut self) -> u64 {
        let Some(ch) = &self.channel else { return 0 };
        let mut n = 0u64;
        loop {
            let mut cq = std::ptr::null_mut();
            let mut ctx = std::ptr::null_mut();
            // SAFETY: the channel is live and non-blocking; on success libibverbs fills `cq`
            // with one of our CQs, whose event we acknowledge right away.
            let rc = unsafe {
                rdma_mummy_sys::ibv_get_cq_event(ch.comp_channel().as_ptr(), &mut cq, &mut ctx)
            };
            if rc != 0 || cq.is_null() {
                return n;
            }
            // SAFETY: `cq` came from the channel and is one of this QP's live CQs.
            unsafe { rdma_mummy_sys::ibv_ack_cq_events(cq, 1) };
            n += 1;
        }
    }

    fn set_error(&mut self) -> Result<(), VerbsError> {
        let mut attr = QueuePairAttribute::new();
        attr.setup_state(QueuePairState::Error);
        self.qp
            .modify(&attr)
            .map_err(|e| other("QP to ERR", format!("{e:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timer_encodings_round_up() {
        assert_eq!(rnr_timer_code(Duration::from_micros(200)), 9);
        assert_eq!(rnr_timer_code(Duration::from_millis(1)), 14);
        assert_eq!(rnr_timer_code(Duration::from_secs(10)), 0);
        assert_eq!(timeout_code(Duration::from_micros(4)), 1);
        assert_eq!(timeout_code(Duration::from_millis(20)), 13);
        assert_eq!(timeout_code(Duration::from_secs(100_000)), 31);
    }

    #[test]
    fn no_device_is_an_error_not_a_crash() {
        // On hosts without RDMA this must say "no device"; on hosts with one it opens.
        match IbVerbs::open(Some("surely-not-a-device")) {
            Err(VerbsError::NoDevice(_)) => {}
            other => panic!("{other:?}"),
        }
    }
}
