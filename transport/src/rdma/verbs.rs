//! The device boundary: the small set of verbs the RDMA backend uses, implemented by real
//! libibverbs (through sideway) and by rdma-sim. Immediate data crosses this boundary in host
//! byte order; bindings convert to and from the wire's big-endian `__be32`.

use std::sync::Arc;
use std::time::Duration;

use super::memory::Arena;
use super::sys::ChannelFd;

/// Why a verbs call failed (not a data-path completion error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerbsError {
    /// No usable device: none present, no kernel support (`ENOSYS`), no libibverbs
    /// (`EOPNOTSUPP`), or the named device does not exist.
    #[error("no RDMA device: {0}")]
    NoDevice(String),
    /// The send or receive queue has no room (`ENOMEM`).
    #[error("{0} queue full")]
    QueueFull(&'static str),
    /// The queue pair is in the error state.
    #[error("queue pair in error state")]
    QpError,
    /// The completion queue overflowed.
    #[error("completion queue overflowed")]
    CqOverflow,
    /// Any other failure, with the binding's message.
    #[error("{0}")]
    Other(String),
}

/// Memory access granted to the peer on a registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteAccess {
    /// Local use only (send and receive buffers).
    None,
    /// The peer may RDMA WRITE into it.
    Write,
    /// The peer may RDMA READ it.
    Read,
    /// Both.
    ReadWrite,
}

/// Keys of a registered arena. Dropping it deregisters (before the arena is freed).
pub struct Registration {
    /// Local key.
    pub lkey: u32,
    /// Remote key.
    pub rkey: u32,
    /// Keeps the binding's handle (and through it the arena) alive.
    pub(crate) _handle: Box<dyn Send + Sync>,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("lkey", &self.lkey)
            .field("rkey", &self.rkey)
            .finish()
    }
}

/// A local buffer: `len` bytes at `addr` of the registration `lkey`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sge {
    /// Address.
    pub addr: u64,
    /// Length.
    pub len: u32,
    /// Local key.
    pub lkey: u32,
}

/// A peer buffer for one-sided operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteBuf {
    /// Address in the peer.
    pub addr: u64,
    /// The peer's remote key.
    pub rkey: u32,
}

/// What a send request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendOp {
    /// Two-sided send.
    Send,
    /// Send with immediate data.
    SendImm(u32),
    /// One-sided write.
    Write(RemoteBuf),
    /// Write with immediate data (consumes a receive at the peer).
    WriteImm(RemoteBuf, u32),
    /// One-sided read into the local buffers.
    Read(RemoteBuf),
}

/// The local data of a send request.
#[derive(Debug, Clone, Copy)]
pub enum Payload<'a> {
    /// Registered buffers, read by the NIC after posting.
    Sges(&'a [Sge]),
    /// Bytes copied into the request at post time.
    Inline(&'a [u8]),
}

/// A send work request.
#[derive(Debug, Clone, Copy)]
pub struct SendRequest<'a> {
    /// Echoed in the completion.
    pub wr_id: u64,
    /// Operation.
    pub op: SendOp,
    /// Data.
    pub payload: Payload<'a>,
    /// Produce a completion on success.
    pub signaled: bool,
    /// Raise a solicited event at the peer.
    pub solicited: bool,
}

/// A receive work request (one buffer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecvRequest {
    /// Echoed in the completion.
    pub wr_id: u64,
    /// Where a SEND lands (zero length for WRITE_WITH_IMM-only receives).
    pub sge: Sge,
}

/// What a completion completes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompletionKind {
    /// A send (any send opcode other than read/write).
    Send,
    /// An RDMA write.
    Write,
    /// An RDMA read.
    Read,
    /// A receive consumed by a SEND.
    Recv,
    /// A receive consumed by a WRITE_WITH_IMM.
    RecvWriteImm,
}

/// Completion error statuses (`ibv_wc_status`), the ones the backend distinguishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WcError {
    /// Local length error (receive too small).
    LocalLength,
    /// Local protection error (bad lkey or bounds).
    LocalProtection,
    /// Flushed: the QP entered the error state.
    Flushed,
    /// The peer found the request invalid.
    RemoteInvalidRequest,
    /// The peer's rkey, bounds or access check failed.
    RemoteAccess,
    /// The peer failed the operation.
    RemoteOperation,
    /// Transport retries exhausted (peer unreachable).
    RetryExceeded,
    /// Receiver-not-ready retries exhausted.
    RnrRetryExceeded,
    /// Anything else.
    Other,
}

/// A work completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// The request's id.
    pub wr_id: u64,
    /// `Ok` or the error status.
    pub status: Result<(), WcError>,
    /// What completed (send-side kinds for flushed sends, `Recv` for flushed receives).
    pub kind: CompletionKind,
    /// Bytes received or read.
    pub byte_len: u32,
    /// Immediate data, host byte order.
    pub imm: Option<u32>,
}

/// Address of a queue pair, exchanged during bootstrap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QpEndpoint {
    /// Device GID.
    pub gid: [u8; 16],
    /// Queue pair number.
    pub qpn: u32,
    /// First packet sequence number this side sends.
    pub psn: u32,
    /// Port LID (InfiniBand link layer; 0 on RoCE).
    pub lid: u16,
}

/// Settings of a new queue pair.
#[derive(Debug, Clone)]
pub struct QpConfig {
    /// Send queue depth.
    pub send_depth: u32,
    /// Receive queue depth.
    pub recv_depth: u32,
    /// Capacity of each of the two completion queues (send, receive).
    pub cq_depth: u32,
    /// Largest inline send to allow.
    pub max_inline: u32,
    /// Attach a completion channel for event mode.
    pub event_channel: bool,
    /// Peer's access to our memory.
    pub remote_access: RemoteAccess,
    /// Receiver-not-ready retries (7 = forever).
    pub rnr_retry: u8,
    /// How long a peer waits after we answer RNR.
    pub min_rnr_timer: Duration,
    /// Transport retries before the QP fails.
    pub retry_cnt: u8,
    /// Retransmission timeout.
    pub timeout: Duration,
}

impl Default for QpConfig {
    fn default() -> Self {
        Self {
            send_depth: 256,
            recv_depth: 256,
            cq_depth: 1024,
            max_inline: 64,
            event_channel: true,
            remote_access: RemoteAccess::Write,
            rnr_retry: 7,
            min_rnr_timer: Duration::from_micros(200),
            retry_cnt: 7,
            timeout: Duration::from_millis(20),
        }
    }
}

/// An open device with one protection domain.
pub trait Verbs: Send + Sync + std::fmt::Debug + 'static {
    /// Queue pairs of this device.
    type Qp: VerbsQp;

    /// Device name (`mlx5_0`, `rxe0`, `sim0`).
    fn name(&self) -> String;

    /// Device GID used for connections.
    fn gid(&self) -> [u8; 16];

    /// Registers `arena` (once per link, when it is set up; never on the data path).
    fn register(
        &self,
        arena: &Arc<Arena>,
        access: RemoteAccess,
    ) -> Result<Registration, VerbsError>;

    /// Creates an RC queue pair with a send CQ, a receive CQ and, if asked, a completion
    /// channel shared by both.
    fn create_qp(&self, config: &QpConfig) -> Result<Self::Qp, VerbsError>;
}

/// One RC queue pair and its completion queues.
pub trait VerbsQp: Send + std::fmt::Debug + 'static {
    /// What the peer needs to connect.
    fn endpoint(&self) -> QpEndpoint;

    /// Moves RESET → INIT → RTR → RTS towards `remote`.
    fn connect(&mut self, remote: &QpEndpoint) -> Result<(), VerbsError>;

    /// Posts send requests with one doorbell.
    ///
    /// # Safety
    /// Every SGE must lie in memory registered with this device that stays allocated until the
    /// request completes (or the QP is flushed), and nothing may write those bytes through a
    /// Rust reference until then: the device reads them at a time of its choosing. Inline
    /// payloads are copied at post time and carry no such duty.
    #[allow(unsafe_code)]
    unsafe fn post_send(&mut self, requests: &[SendRequest<'_>]) -> Result<(), VerbsError>;

    /// Posts receive requests with one doorbell.
    ///
    /// # Safety
    /// Every SGE must lie in memory registered with this device that stays allocated until the
    /// receive completes (or the QP is flushed), and no Rust reference to those bytes may be
    /// used until then: the device writes them when a message arrives.
    #[allow(unsafe_code)]
    unsafe fn post_recv(&mut self, requests: &[RecvRequest]) -> Result<(), VerbsError>;

    /// Moves up to `max` completions (receive CQ first, then send CQ) into `out`.
    fn poll(&mut self, out: &mut Vec<Completion>, max: usize) -> Result<usize, VerbsError>;

    /// A cheap hint that [`VerbsQp::poll`] may return something. Bindings where polling an
    /// empty queue is already one memory read keep the default (`true`).
    fn may_have_completions(&self) -> bool {
        true
    }

    /// A thread-safe version of [`VerbsQp::may_have_completions`] for pollers that do not hold
    /// the QP.
    fn completion_hint(&self) -> Arc<dyn Fn() -> bool + Send + Sync> {
        Arc::new(|| true)
    }

    /// Arms one notification on each CQ: the send CQ for any completion, the receive CQ for
    /// solicited (or failed) completions only if `recv_solicited_only`.
    fn arm(&mut self, recv_solicited_only: bool) -> Result<(), VerbsError>;

    /// The completion channel's descriptor (readable after a notification), if any, with what
    /// keeps it open.
    fn channel(&self) -> Option<ChannelFd>;

    /// Consumes (and acknowledges) pending channel events; returns how many.
    fn take_events(&mut self) -> u64;

    /// Moves the QP to the error state, flushing everything outstanding.
    fn set_error(&mut self) -> Result<(), VerbsError>;
}
