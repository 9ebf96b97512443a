//! The transport's error type. Cloneable so that one connection failure can be delivered to
//! every call pending on it.

use std::sync::Arc;
use std::time::Duration;

use crate::codec::{DecodeError, EncodeError};

/// Everything that can go wrong below the remoting layer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    /// The endpoint string does not parse.
    #[error("invalid endpoint `{0}`: {1}")]
    InvalidEndpoint(String, String),
    /// The endpoint's backend is not available in this build or on this host.
    #[error("transport `{scheme}` is not available: {reason}")]
    Unsupported {
        /// The scheme asked for.
        scheme: &'static str,
        /// Why it cannot be used.
        reason: String,
    },
    /// Connecting failed.
    #[error("connecting to {endpoint} failed: {reason}")]
    Connect {
        /// Target.
        endpoint: String,
        /// OS or handshake error.
        reason: String,
    },
    /// Binding a listener failed.
    #[error("binding {endpoint} failed: {reason}")]
    Bind {
        /// Local endpoint.
        endpoint: String,
        /// OS error.
        reason: String,
    },
    /// The peer was recently unreachable; the client waits before dialling again.
    #[error("{endpoint} is unavailable (last error: {last_error}); next attempt in {retry_in:?}")]
    Unavailable {
        /// Target.
        endpoint: String,
        /// The error of the last attempt.
        last_error: String,
        /// Time until the next connection attempt.
        retry_in: Duration,
    },
    /// An I/O error on an established connection.
    #[error("I/O error: {0}")]
    Io(Arc<std::io::Error>),
    /// The peer sent a frame that cannot be decoded; the connection is closed.
    #[error("protocol error: {0}")]
    Protocol(#[from] DecodeError),
    /// A command could not be encoded.
    #[error("cannot encode command: {0}")]
    Encode(#[from] EncodeError),
    /// The connection was closed by this side (graceful close or abort).
    #[error("connection closed")]
    Closed,
    /// The connection broke; every call pending on it fails with this.
    #[error("connection lost: {0}")]
    ConnectionLost(String),
    /// No response within the call's timeout.
    #[error("no response within {0:?}")]
    Timeout(Duration),
    /// The peer left a frame incomplete for longer than the frame timeout.
    #[error("the peer left a frame incomplete ({bytes} bytes) for {after:?}")]
    Stalled {
        /// Bytes of the frame received.
        bytes: usize,
        /// The frame timeout.
        after: Duration,
    },
}

impl From<std::io::Error> for TransportError {
    fn from(e: std::io::Error) -> Self {
        TransportError::Io(Arc::new(e))
    }
}
