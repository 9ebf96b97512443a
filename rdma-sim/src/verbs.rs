//! The verbs-shaped API: devices, contexts, protection domains, memory regions, completion
//! channels and queues, and RC queue pairs.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use crate::error::VerbsError;
use crate::memory::Buffer;
use crate::nic::{CqShared, CqState, Fabric, MrEntry, QpAddress};
use crate::sys::EventFd;
use crate::wr::{Access, RecvWr, SendWr, WorkCompletion};

/// A device address, shaped like a 16-byte GID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Gid(pub [u8; 16]);

impl std::fmt::Display for Gid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, pair) in self.0.chunks(2).enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{:02x}{:02x}", pair[0], pair[1])?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Gid {
    type Err = VerbsError;
    /// Parses the `Display` form (eight colon-separated groups of four hex digits).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || VerbsError::InvalidArgument(format!("bad GID `{s}`"));
        let groups: Vec<&str> = s.split(':').collect();
        if groups.len() != 8 {
            return Err(bad());
        }
        let mut out = [0u8; 16];
        for (i, g) in groups.iter().enumerate() {
            let v = u16::from_str_radix(g, 16).map_err(|_| bad())?;
            out[2 * i..2 * i + 2].copy_from_slice(&v.to_be_bytes());
        }
        Ok(Gid(out))
    }
}

/// Limits a device advertises (`ibv_device_attr`, the parts rdma-sim enforces).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceAttr {
    /// Deepest send or receive queue.
    pub max_qp_wr: u32,
    /// Most SGEs per work request.
    pub max_sge: u32,
    /// Largest completion queue.
    pub max_cqe: u32,
    /// Largest inline send.
    pub max_inline_data: u32,
}

/// The limits of every simulated device.
pub const DEVICE_ATTR: DeviceAttr = DeviceAttr {
    max_qp_wr: 16384,
    max_sge: 32,
    max_cqe: 1 << 20,
    max_inline_data: 256,
};

/// Asynchronous events (`ibv_get_async_event`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsyncEvent {
    /// A completion queue overflowed; it and every QP using it are in error.
    CqOverflow {
        /// The CQ's id.
        cq: u32,
    },
}

/// The devices of the process-wide fabric ([`Fabric::global`]).
pub fn devices() -> Vec<Device> {
    Fabric::global().devices()
}

impl Fabric {
    /// This fabric's devices.
    pub fn devices(self: &Arc<Self>) -> Vec<Device> {
        let n = self.lock().0.devices.len();
        (0..n)
            .map(|index| Device {
                fabric: self.clone(),
                index,
            })
            .collect()
    }
}

/// A simulated RDMA device.
#[derive(Debug, Clone)]
pub struct Device {
    fabric: Arc<Fabric>,
    index: usize,
}

impl Device {
    /// Its name (`sim0`, `sim1`, …).
    pub fn name(&self) -> String {
        self.fabric.lock().0.devices[self.index].name.clone()
    }

    /// Its address.
    pub fn gid(&self) -> Gid {
        self.fabric.lock().0.devices[self.index].gid
    }

    /// The fabric it belongs to.
    pub fn fabric(&self) -> &Arc<Fabric> {
        &self.fabric
    }

    /// Opens a context (`ibv_open_device`).
    pub fn open(&self) -> Result<Context, VerbsError> {
        Ok(Context {
            fabric: self.fabric.clone(),
            dev: self.index,
        })
    }
}

/// An open device (`ibv_context`).
#[derive(Debug, Clone)]
pub struct Context {
    fabric: Arc<Fabric>,
    dev: usize,
}

impl Context {
    /// The device address.
    pub fn gid(&self) -> Gid {
        self.fabric.lock().0.devices[self.dev].gid
    }

    /// The device limits.
    pub fn device_attr(&self) -> DeviceAttr {
        DEVICE_ATTR
    }

    /// The fabric of this device.
    pub fn fabric(&self) -> &Arc<Fabric> {
        &self.fabric
    }

    /// Allocates a protection domain.
    pub fn alloc_pd(&self) -> ProtectionDomain {
        let id = {
            let mut cell = self.fabric.lock();
            let id = cell.0.fresh_id();
            cell.0.pds.insert(id, self.dev);
            id
        };
        ProtectionDomain {
            fabric: self.fabric.clone(),
            dev: self.dev,
            id,
        }
    }

    /// Creates a completion channel: a pollable file descriptor that becomes readable when an
    /// armed CQ attached to it gets a completion.
    pub fn create_comp_channel(&self) -> Result<CompletionChannel, VerbsError> {
        Ok(CompletionChannel {
            efd: Arc::new(EventFd::new()?),
        })
    }

    /// Creates a completion queue with room for `capacity` completions.
    pub fn create_cq(
        &self,
        capacity: usize,
        channel: Option<&CompletionChannel>,
    ) -> Result<CompletionQueue, VerbsError> {
        if capacity == 0 || capacity > DEVICE_ATTR.max_cqe as usize {
            return Err(VerbsError::InvalidArgument(format!(
                "CQ capacity {capacity} outside 1..={}",
                DEVICE_ATTR.max_cqe
            )));
        }
        let shared = Arc::new(CqShared::default());
        let id = {
            let mut cell = self.fabric.lock();
            let id = cell.0.fresh_id();
            cell.0.cqs.insert(
                id,
                CqState {
                    dev: self.dev,
                    cap: capacity,
                    entries: Default::default(),
                    armed: None,
                    channel: channel.map(|c| c.efd.clone()),
                    overflowed: false,
                    deliver_after: 0,
                    shared: shared.clone(),
                },
            );
            id
        };
        Ok(CompletionQueue {
            fabric: self.fabric.clone(),
            dev: self.dev,
            id,
            shared,
        })
    }

    /// The next asynchronous event, if any.
    pub fn poll_async_event(&self) -> Option<AsyncEvent> {
        self.fabric.lock().0.devices[self.dev]
            .async_events
            .pop_front()
    }
}

/// A protection domain: memory regions and queue pairs of one domain only work together.
#[derive(Debug)]
pub struct ProtectionDomain {
    fabric: Arc<Fabric>,
    dev: usize,
    id: u32,
}

impl Drop for ProtectionDomain {
    fn drop(&mut self) {
        self.fabric.lock().0.pds.remove(&self.id);
    }
}

impl ProtectionDomain {
    /// Registers `len` bytes at `addr` (`ibv_reg_mr`).
    ///
    /// # Safety
    /// The memory must stay allocated and valid for reads (and for writes, if `access` grants
    /// any write right) until the returned region is dropped. While registered, the NIC may
    /// read or write it at any time the protocol allows; the application must not rely on the
    /// contents of bytes a posted operation is writing until its completion.
    #[allow(unsafe_code)]
    pub unsafe fn register(
        &self,
        addr: *mut u8,
        len: usize,
        access: Access,
    ) -> Result<MemoryRegion, VerbsError> {
        // SAFETY: the caller upholds this function's contract, which is `register_inner`'s.
        unsafe { self.register_inner(addr, len, access, None) }
    }

    /// Registers `len` bytes at `addr` that are a `MAP_SHARED` mapping of the memfd `fd` at
    /// `offset`. The region keeps a duplicate of the descriptor, so a peer process can map the
    /// same memory: QPs of this PD connected to another process then use the shared-memory data
    /// path (direct placement) instead of the socket wire, as long as every region of the PD
    /// has a memfd.
    ///
    /// # Safety
    /// As [`ProtectionDomain::register`]; in addition `addr..addr+len` must be exactly the
    /// bytes `offset..offset+len` of `fd` (else the peer writes elsewhere than the NIC would).
    #[allow(unsafe_code)]
    pub unsafe fn register_memfd(
        &self,
        addr: *mut u8,
        len: usize,
        fd: BorrowedFd<'_>,
        offset: u64,
        access: Access,
    ) -> Result<MemoryRegion, VerbsError> {
        let fd = Arc::new(fd.try_clone_to_owned()?);
        // SAFETY: the caller upholds this function's contract, which includes `register`'s.
        unsafe { self.register_inner(addr, len, access, Some((fd, offset))) }
    }

    #[allow(unsafe_code)]
    unsafe fn register_inner(
        &self,
        addr: *mut u8,
        len: usize,
        access: Access,
        memfd: Option<(Arc<OwnedFd>, u64)>,
    ) -> Result<MemoryRegion, VerbsError> {
        if addr.is_null() && len > 0 {
            return Err(VerbsError::InvalidArgument("null address".into()));
        }
        if (addr as usize).checked_add(len).is_none() {
            return Err(VerbsError::InvalidArgument(
                "range wraps the address space".into(),
            ));
        }
        let (lkey, rkey) = {
            let mut cell = self.fabric.lock();
            let lkey = cell.0.fresh_key();
            cell.0.mrs.insert(
                lkey,
                MrEntry {
                    dev: self.dev,
                    pd: self.id,
                    addr: addr as usize as u64,
                    len: len as u64,
                    access,
                    rkey: 0,
                    memfd,
                },
            );
            let rkey = cell.0.fresh_key();
            if let Some(mr) = cell.0.mrs.get_mut(&lkey) {
                mr.rkey = rkey;
            }
            cell.0.rkeys.insert(rkey, lkey);
            (lkey, rkey)
        };
        Ok(MemoryRegion {
            fabric: self.fabric.clone(),
            addr: addr as usize as u64,
            len,
            lkey,
            rkey,
        })
    }

    /// Allocates zeroed, page-aligned memory and registers it. On a fabric that attaches to
    /// other processes over shared memory the memory is a memfd mapping (so a peer can map it).
    pub fn alloc_region(&self, len: usize, access: Access) -> Result<OwnedRegion, VerbsError> {
        let buf = if self.fabric.shm_enabled() {
            Buffer::shared(len).unwrap_or_else(|_| Buffer::new(len))
        } else {
            Buffer::new(len)
        };
        // The buffer is owned by the returned value and dropped after the registration.
        let mr = self.register_buffer(&buf, access)?;
        Ok(OwnedRegion { mr, buf })
    }

    #[allow(unsafe_code)]
    fn register_buffer(&self, buf: &Buffer, access: Access) -> Result<MemoryRegion, VerbsError> {
        // SAFETY: `OwnedRegion` keeps the buffer alive and declares `mr` before `buf`, so the
        // registration is dropped before the memory is freed; a memfd buffer's descriptor and
        // offset describe exactly its mapping.
        unsafe {
            self.register_inner(
                buf.addr() as usize as *mut u8,
                buf.len(),
                access,
                buf.memfd(),
            )
        }
    }

    /// Creates an RC queue pair in the RESET state.
    pub fn create_qp(&self, attr: QpInitAttr<'_>) -> Result<QueuePair, VerbsError> {
        let c = attr.caps;
        let lim = DEVICE_ATTR;
        if c.max_send_wr == 0 || c.max_send_wr > lim.max_qp_wr || c.max_recv_wr > lim.max_qp_wr {
            return Err(VerbsError::InvalidArgument(format!(
                "queue depths must be in 1..={}",
                lim.max_qp_wr
            )));
        }
        if c.max_send_sge > lim.max_sge || c.max_recv_sge > lim.max_sge {
            return Err(VerbsError::InvalidArgument(format!(
                "at most {} SGEs",
                lim.max_sge
            )));
        }
        if c.max_inline_data > lim.max_inline_data {
            return Err(VerbsError::InvalidArgument(format!(
                "max_inline_data above {}",
                lim.max_inline_data
            )));
        }
        if attr.send_cq.dev != self.dev || attr.recv_cq.dev != self.dev {
            return Err(VerbsError::WrongOwner);
        }
        let qpn =
            self.fabric
                .lock()
                .0
                .create_qp(self.dev, self.id, attr.send_cq.id, attr.recv_cq.id, c);
        Ok(QueuePair {
            fabric: self.fabric.clone(),
            qpn,
            dev: self.dev,
        })
    }
}

/// A registered memory region; dropping it deregisters.
#[derive(Debug)]
pub struct MemoryRegion {
    fabric: Arc<Fabric>,
    addr: u64,
    len: usize,
    lkey: u32,
    rkey: u32,
}

impl MemoryRegion {
    /// Local key, for SGEs.
    pub fn lkey(&self) -> u32 {
        self.lkey
    }
    /// Remote key, for peers' RDMA WRITE / READ.
    pub fn rkey(&self) -> u32 {
        self.rkey
    }
    /// Start address.
    pub fn addr(&self) -> u64 {
        self.addr
    }
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }
    /// True for an empty region.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for MemoryRegion {
    fn drop(&mut self) {
        let mut cell = self.fabric.lock();
        cell.0.mrs.remove(&self.lkey);
        cell.0.rkeys.remove(&self.rkey);
    }
}

/// Memory allocated and registered by the simulator.
#[derive(Debug)]
pub struct OwnedRegion {
    // Field order matters: the registration is dropped before the buffer.
    mr: MemoryRegion,
    buf: Buffer,
}

impl OwnedRegion {
    /// The registration.
    pub fn mr(&self) -> &MemoryRegion {
        &self.mr
    }
    /// Copies bytes out of the region.
    pub fn read(&self, offset: usize, out: &mut [u8]) {
        self.buf.read(offset, out)
    }
    /// Copies bytes into the region.
    pub fn write(&self, offset: usize, data: &[u8]) {
        self.buf.write(offset, data)
    }
    /// An SGE over `len` bytes at `offset`.
    pub fn sge(&self, offset: usize, len: u32) -> crate::Sge {
        crate::Sge {
            addr: self.mr.addr + offset as u64,
            length: len,
            lkey: self.mr.lkey,
        }
    }
}

/// A completion channel (`ibv_comp_channel`) backed by an eventfd, usable with epoll or tokio.
#[derive(Debug)]
pub struct CompletionChannel {
    efd: Arc<EventFd>,
}

impl CompletionChannel {
    /// Consumes pending notifications (`ibv_get_cq_event` + `ibv_ack_cq_events`); returns how
    /// many arrived, 0 if none (never blocks).
    pub fn get_events(&self) -> u64 {
        self.efd.drain()
    }

    /// Blocks until a notification is pending or `timeout` passes (`poll(2)` on the
    /// descriptor); true if one is pending. Does not consume it.
    pub fn wait(&self, timeout: Duration) -> bool {
        self.efd.wait(timeout)
    }
}

impl AsRawFd for CompletionChannel {
    fn as_raw_fd(&self) -> RawFd {
        self.efd.raw_fd()
    }
}

/// A completion queue.
#[derive(Debug)]
pub struct CompletionQueue {
    fabric: Arc<Fabric>,
    dev: usize,
    id: u32,
    shared: Arc<CqShared>,
}

/// The lock-free "completions ready" hint of a CQ ([`CompletionQueue::ready_counter`]), for
/// pollers on other threads. Counts completions queued by this process's engine and those
/// published in the CQ's shared ring (also by the peer process).
#[derive(Debug, Clone)]
pub struct ReadyCounter(Arc<CqShared>);

impl ReadyCounter {
    /// Completions ready to poll (may be momentarily stale).
    pub fn get(&self) -> usize {
        self.0.ready()
    }
}

impl Drop for CompletionQueue {
    fn drop(&mut self) {
        self.fabric.lock().0.cqs.remove(&self.id);
    }
}

impl CompletionQueue {
    /// Moves up to `out.len()` completions into `out` (`ibv_poll_cq`). Fails with
    /// [`VerbsError::CqOverflow`] once the CQ has overflowed (it is then in error).
    pub fn poll(&self, out: &mut [WorkCompletion]) -> Result<usize, VerbsError> {
        let queued = self.shared.ready.load(std::sync::atomic::Ordering::Acquire);
        let Some(ring) = self.shared.ring.get() else {
            // An empty queue is answered without the fabric lock.
            if queued == 0 {
                return Ok(0);
            }
            return self.fabric.with_state(|st, _, _| st.poll_cq(self.id, out));
        };
        // Attached: completions queued before the ring existed come first, then the ring,
        // which is read without the fabric lock.
        let mut n = 0;
        if queued > 0 {
            n = self
                .fabric
                .with_state(|st, _, _| st.poll_cq(self.id, out))?;
        }
        if ring.overflowed() {
            self.fabric.shm_cq_overflowed(self.id);
            return Err(VerbsError::CqOverflow);
        }
        Ok(n + ring.pop(&mut out[n..]))
    }

    /// Completions ready to poll (a lock-free hint; may be momentarily stale).
    pub fn ready_hint(&self) -> usize {
        self.shared.ready()
    }

    /// The counter behind [`CompletionQueue::ready_hint`], for pollers on other threads.
    pub fn ready_counter(&self) -> ReadyCounter {
        ReadyCounter(self.shared.clone())
    }

    /// Arms one notification (`ibv_req_notify_cq`): the next completion (or, with
    /// `solicited_only`, the next solicited or failed one) makes the channel readable.
    /// Poll once more after arming: a completion may have arrived just before.
    pub fn req_notify(&self, solicited_only: bool) -> Result<(), VerbsError> {
        self.fabric.count_arm();
        if let Some(ring) = self.shared.ring.get() {
            // Shared ring: arming is one store into the ring's header, as on hardware.
            ring.arm(solicited_only);
            return Ok(());
        }
        self.fabric.lock().0.arm_cq(self.id, solicited_only)
    }

    /// The CQ's id (as reported in async events).
    pub fn id(&self) -> u32 {
        self.id
    }
}

/// Queue pair states of the RC state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QpState {
    /// Just created or reset: nothing may be posted.
    Reset,
    /// Initialised: receives may be posted.
    Init,
    /// Ready to receive.
    Rtr,
    /// Ready to send.
    Rts,
    /// Error: everything outstanding was flushed.
    Err,
}

/// Queue depths and limits of a QP (`ibv_qp_cap`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QpCaps {
    /// Send queue depth.
    pub max_send_wr: u32,
    /// Receive queue depth.
    pub max_recv_wr: u32,
    /// SGEs per send.
    pub max_send_sge: u32,
    /// SGEs per receive.
    pub max_recv_sge: u32,
    /// Largest inline send.
    pub max_inline_data: u32,
}

impl Default for QpCaps {
    fn default() -> Self {
        Self {
            max_send_wr: 128,
            max_recv_wr: 128,
            max_send_sge: 4,
            max_recv_sge: 4,
            max_inline_data: 64,
        }
    }
}

/// What a new QP is attached to.
#[derive(Debug, Clone, Copy)]
pub struct QpInitAttr<'a> {
    /// Completions of sends.
    pub send_cq: &'a CompletionQueue,
    /// Completions of receives.
    pub recv_cq: &'a CompletionQueue,
    /// Limits.
    pub caps: QpCaps,
}

/// Attributes applied by [`QueuePair::modify`]; each transition reads the fields it needs.
#[derive(Debug, Clone, Copy)]
pub struct QpAttr {
    /// INIT: remote access rights granted to the peer.
    pub access: Access,
    /// RTR: the peer QP.
    pub remote: Option<QpAddress>,
    /// RTR: first expected PSN from the peer.
    pub rq_psn: u32,
    /// RTR: how long a requester must wait after this side answers RNR.
    pub min_rnr_timer: Duration,
    /// RTS: first PSN this side sends.
    pub sq_psn: u32,
    /// RTS: retransmission timeout.
    pub timeout: Duration,
    /// RTS: retransmissions before `RETRY_EXC_ERR` (0–7).
    pub retry_cnt: u8,
    /// RTS: RNR retries before `RNR_RETRY_EXC_ERR` (0–6; 7 = forever).
    pub rnr_retry: u8,
}

impl Default for QpAttr {
    fn default() -> Self {
        Self {
            access: Access::NONE,
            remote: None,
            rq_psn: 0,
            min_rnr_timer: Duration::from_micros(100),
            sq_psn: 0,
            timeout: Duration::from_millis(20),
            retry_cnt: 7,
            rnr_retry: 7,
        }
    }
}

/// A reliable-connected queue pair.
#[derive(Debug)]
pub struct QueuePair {
    fabric: Arc<Fabric>,
    qpn: u32,
    dev: usize,
}

impl Drop for QueuePair {
    fn drop(&mut self) {
        self.fabric.lock().0.qps.remove(&self.qpn);
    }
}

impl QueuePair {
    /// The QP number.
    pub fn qp_num(&self) -> u32 {
        self.qpn
    }

    /// Device address and QP number: what the peer needs to connect.
    pub fn address(&self) -> QpAddress {
        QpAddress {
            gid: self.fabric.lock().0.devices[self.dev].gid,
            qpn: self.qpn,
        }
    }

    /// Current state.
    pub fn state(&self) -> QpState {
        self.fabric
            .lock()
            .0
            .qps
            .get(&self.qpn)
            .map(|q| q.state)
            .unwrap_or(QpState::Err)
    }

    /// Moves to `to` (`ibv_modify_qp`); illegal transitions are refused. Moving to `Err`
    /// flushes every outstanding work request.
    pub fn modify(&self, to: QpState, attr: &QpAttr) -> Result<(), VerbsError> {
        if to == QpState::Rtr
            && let Some(remote) = attr.remote
        {
            // Towards another process: attach over shared memory first if both sides can.
            self.fabric.shm_connect(self.qpn, remote);
        }
        self.fabric
            .with_state(|st, now, fx| st.modify_qp(self.qpn, to, attr, now, fx))
    }

    /// Convenience: RESET → INIT → RTR → RTS towards `remote`.
    pub fn connect(&self, remote: QpAddress, attr: &QpAttr) -> Result<(), VerbsError> {
        let attr = QpAttr {
            remote: Some(remote),
            ..*attr
        };
        self.modify(QpState::Init, &attr)?;
        self.modify(QpState::Rtr, &attr)?;
        self.modify(QpState::Rts, &attr)
    }

    /// Posts send work requests (`ibv_post_send`): all or none.
    pub fn post_send(&self, wrs: &[SendWr<'_>]) -> Result<(), VerbsError> {
        self.fabric
            .with_state(|st, now, fx| st.post_send(self.qpn, wrs, now, fx))
    }

    /// Posts receive work requests (`ibv_post_recv`): all or none.
    pub fn post_recv(&self, wrs: &[RecvWr<'_>]) -> Result<(), VerbsError> {
        self.fabric
            .with_state(|st, _, _| st.post_recv(self.qpn, wrs))
    }
}
