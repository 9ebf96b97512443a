//! Errors returned by verbs calls (the simulator's `errno`s).

/// A failed verbs call. Data-path failures are reported as work completions instead.
#[derive(Debug, thiserror::Error)]
pub enum VerbsError {
    /// The device name or index does not exist.
    #[error("no such device: {0}")]
    NoSuchDevice(String),
    /// An argument is out of range or inconsistent (`EINVAL`).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Posting beyond the send queue's depth (`ENOMEM`).
    #[error("send queue full ({outstanding} of {depth} work requests outstanding)")]
    SendQueueFull {
        /// Work requests holding a slot.
        outstanding: usize,
        /// Queue depth.
        depth: usize,
    },
    /// Posting beyond the receive queue's depth (`ENOMEM`).
    #[error("receive queue full ({depth} receives posted)")]
    RecvQueueFull {
        /// Queue depth.
        depth: usize,
    },
    /// Inline data longer than the QP's `max_inline_data`.
    #[error("inline data of {len} bytes exceeds max_inline_data {max}")]
    InlineTooLarge {
        /// Requested length.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// Too many scatter/gather elements.
    #[error("{count} SGEs exceed the limit of {max}")]
    TooManySges {
        /// Requested.
        count: usize,
        /// Limit.
        max: usize,
    },
    /// The QP's state does not allow the operation (posting before RTS, etc.).
    #[error("operation not allowed in QP state {0:?}")]
    InvalidState(crate::QpState),
    /// The QP is in the error state; reset it before use.
    #[error("queue pair is in the error state")]
    QpInError,
    /// A state transition the RC state machine does not allow.
    #[error("illegal QP transition {from:?} -> {to:?}")]
    IllegalTransition {
        /// Current state.
        from: crate::QpState,
        /// Requested state.
        to: crate::QpState,
    },
    /// The completion queue overflowed and is in error.
    #[error("completion queue overflowed")]
    CqOverflow,
    /// An object of another context or protection domain was used.
    #[error("object belongs to another device or protection domain")]
    WrongOwner,
    /// The operation is not available in this fabric mode.
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
    /// An OS call failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}
