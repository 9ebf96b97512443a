//! Work requests and work completions, shaped like libibverbs' `ibv_send_wr`, `ibv_recv_wr` and
//! `ibv_wc`.

/// Memory access rights of a region or of a queue pair's remote access (`IBV_ACCESS_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Access(u8);

impl Access {
    /// The NIC may write the memory locally (receives, read responses).
    pub const LOCAL_WRITE: Access = Access(1);
    /// Peers may RDMA WRITE into the memory.
    pub const REMOTE_WRITE: Access = Access(2);
    /// Peers may RDMA READ the memory.
    pub const REMOTE_READ: Access = Access(4);
    /// No rights beyond local read.
    pub const NONE: Access = Access(0);

    pub(crate) fn bits(self) -> u8 {
        self.0
    }

    pub(crate) fn from_bits(b: u8) -> Access {
        Access(b & 7)
    }

    /// True if every right in `other` is present.
    pub fn contains(self, other: Access) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for Access {
    type Output = Access;
    fn bitor(self, rhs: Access) -> Access {
        Access(self.0 | rhs.0)
    }
}

/// A scatter/gather element: `length` bytes at virtual address `addr` of the region `lkey`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sge {
    /// Virtual address in the registering process.
    pub addr: u64,
    /// Bytes.
    pub length: u32,
    /// Local key of the region containing the range.
    pub lkey: u32,
}

/// Send-queue operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    /// Two-sided send; consumes a receive at the peer.
    Send,
    /// Send with 32-bit immediate data.
    SendWithImm,
    /// One-sided write into the peer's memory.
    RdmaWrite,
    /// Write plus immediate data; consumes a receive at the peer.
    RdmaWriteWithImm,
    /// One-sided read of the peer's memory into the local SGEs.
    RdmaRead,
}

/// Remote target of a one-sided operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteAddr {
    /// Virtual address in the peer process.
    pub addr: u64,
    /// Remote key of the peer's region.
    pub rkey: u32,
}

/// One send work request.
#[derive(Debug, Clone, Copy)]
pub struct SendWr<'a> {
    /// Returned in the completion.
    pub wr_id: u64,
    /// Operation.
    pub opcode: Opcode,
    /// Local data (sources, or destinations for a read); ignored when `inline` is set.
    pub sges: &'a [Sge],
    /// Data copied into the work request at post time (`IBV_SEND_INLINE`): the buffer may be
    /// reused as soon as `post_send` returns, and needs no registration.
    pub inline: Option<&'a [u8]>,
    /// Immediate data, as the raw big-endian `__be32` the wire carries.
    pub imm: Option<u32>,
    /// Produce a completion on success (`IBV_SEND_SIGNALED`). Errors always complete.
    pub signaled: bool,
    /// Ask the peer to raise a solicited event (`IBV_SEND_SOLICITED`).
    pub solicited: bool,
    /// Target of RDMA WRITE / READ.
    pub remote: Option<RemoteAddr>,
}

/// One receive work request.
#[derive(Debug, Clone, Copy)]
pub struct RecvWr<'a> {
    /// Returned in the completion.
    pub wr_id: u64,
    /// Where an incoming SEND lands.
    pub sges: &'a [Sge],
}

/// Completion status (`ibv_wc_status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WcStatus {
    /// Success.
    Success,
    /// A receive was too small for the incoming message.
    LocLenErr,
    /// Internal QP consistency error.
    LocQpOpErr,
    /// A local SGE failed the key, bounds or access check.
    LocProtErr,
    /// Flushed because the QP entered the error state.
    WrFlushErr,
    /// The peer rejected the request as invalid (e.g. its receive was too small).
    RemInvReqErr,
    /// The peer's rkey, bounds or access check failed.
    RemAccessErr,
    /// The peer could not complete the operation.
    RemOpErr,
    /// No acknowledgement after `retry_cnt` retransmissions.
    RetryExcErr,
    /// The peer had no receive posted after `rnr_retry` retries.
    RnrRetryExcErr,
}

/// What a completion completes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WcOpcode {
    /// A SEND or SEND_WITH_IMM.
    Send,
    /// An RDMA WRITE or WRITE_WITH_IMM.
    RdmaWrite,
    /// An RDMA READ.
    RdmaRead,
    /// A receive consumed by a SEND.
    Recv,
    /// A receive consumed by an RDMA WRITE_WITH_IMM.
    RecvRdmaWithImm,
}

/// A work completion (`ibv_wc`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkCompletion {
    /// The work request's id.
    pub wr_id: u64,
    /// Outcome.
    pub status: WcStatus,
    /// Operation (meaningful on success; flushed receives report `Recv`).
    pub opcode: WcOpcode,
    /// Bytes received (receives and reads); excludes the immediate.
    pub byte_len: u32,
    /// Immediate data, raw big-endian.
    pub imm: Option<u32>,
    /// Local QP number.
    pub qp_num: u32,
    /// For receives, the sender's QP number.
    pub src_qp: u32,
    /// For receives, whether the sender set the solicited flag.
    pub solicited: bool,
}

impl WorkCompletion {
    pub(crate) fn empty() -> Self {
        Self {
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
}
