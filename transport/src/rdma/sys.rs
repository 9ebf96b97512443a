//! OS glue of the RDMA backend: registering a completion channel's descriptor with tokio's
//! reactor. Its one `unsafe` relies on the binding keeping the descriptor open.

#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// A completion channel's descriptor plus whatever keeps it open.
pub struct ChannelFd {
    fd: RawFd,
    _owner: Arc<dyn Send + Sync>,
}

impl std::fmt::Debug for ChannelFd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelFd").field("fd", &self.fd).finish()
    }
}

impl ChannelFd {
    /// `fd` must stay open as long as `owner` lives (bindings pass the channel object).
    pub fn new(fd: RawFd, owner: Arc<dyn Send + Sync>) -> Self {
        Self { fd, _owner: owner }
    }
}

impl AsRawFd for ChannelFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd
    }
}

/// Registers the channel for readability with the current tokio runtime.
pub fn register(channel: ChannelFd) -> std::io::Result<AsyncFd<ChannelFd>> {
    // SAFETY: `ChannelFd` owns (through `_owner`) the object that keeps `fd` open, and
    // `as_raw_fd` always returns the same descriptor, for the whole life of the `AsyncFd`.
    unsafe { AsyncFd::register_with_interest(channel, Interest::READABLE) }.map_err(|e| e.into())
}
