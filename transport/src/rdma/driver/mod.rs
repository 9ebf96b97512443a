//! The tokio driver of an RDMA link: it feeds completions and timers to the [`Core`], posts the
//! work requests the core asks for, lends received slots to the application as `Bytes`, and
//! exposes the link as [`LinkTx`](crate::link::LinkTx) / [`LinkRx`](crate::link::LinkRx).
//!
//! The data path runs to completion in the application's own tasks, with no hand-off:
//! - `tx.rs`: the sending task encodes the frame into a registered send slot and posts the
//!   work request itself;
//! - `rx.rs`: the reading task polls the completion queues itself and takes the frame from the
//!   slot it landed in; with nothing there it spins for a bounded time (busy-poll mode) or arms
//!   the queues and sleeps on the completion channel (event mode), which the NIC signals only
//!   for solicited completions (the last message of a burst);
//! - `background.rs`: slow paths only — timers (keepalive, liveness, a lazy credit return),
//!   slot returns while the peer is short of credits, and the bootstrap socket's liveness;
//! - `state.rs`: the link's state below the core and one round of progress
//!   ([`Core`] in, work requests out), shared by all of the above under one short lock;
//! - `nic.rs`: where registered memory is handed to the device and taken back — the driver's
//!   only `unsafe`, resting on the core's bookkeeping.
//!
//! [`Core`]: super::core::Core

mod background;
mod nic;
mod rx;
mod state;
mod tx;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use super::core::Core;
use super::memory::SlotRegion;
use super::sys::{ChannelFd, register};
use super::verbs::{Registration, VerbsQp};
use crate::counters::LinkCounters;

pub use rx::RdmaRx;
pub use tx::{RdmaBuf, RdmaTx, SlotBuf};

use state::Shared;

/// How completions are waited for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollMode {
    /// Arm the completion queues and sleep on the completion channel.
    Event,
    /// Poll continuously while traffic flows; after `spin` without any, arm and sleep.
    BusyPoll {
        /// How long to keep spinning after the last activity.
        spin: Duration,
    },
}

/// Everything one link owns below the core.
pub(crate) struct LinkParts<Q: VerbsQp> {
    pub qp: Q,
    pub send: Arc<SlotRegion>,
    pub recv: Arc<SlotRegion>,
    pub lkey: u32,
    pub registration: Registration,
    pub core: Core,
    pub mode: PollMode,
    pub max_frame: usize,
    pub max_held: usize,
    pub max_unread_bytes: usize,
    pub bootstrap: TcpStream,
}

/// An established RDMA link, before it is split into halves.
pub struct RdmaConn<Q: VerbsQp> {
    shared: Arc<Shared<Q>>,
    channel: Option<ChannelFd>,
    bootstrap: TcpStream,
}

impl<Q: VerbsQp> std::fmt::Debug for RdmaConn<Q> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RdmaConn").finish_non_exhaustive()
    }
}

impl<Q: VerbsQp> RdmaConn<Q> {
    /// Wraps resources whose QP is connected and whose receives may be posted now.
    pub(crate) fn new(parts: LinkParts<Q>, counters: Arc<LinkCounters>) -> Self {
        let channel = parts.qp.channel();
        let bootstrap = parts.bootstrap;
        let shared = Shared::new(
            parts.qp,
            parts.core,
            state::Settings {
                send: parts.send,
                recv: parts.recv,
                lkey: parts.lkey,
                registration: parts.registration,
                mode: parts.mode,
                max_frame: parts.max_frame,
                max_held: parts.max_held,
                max_unread_bytes: parts.max_unread_bytes,
            },
            counters,
        );
        Self {
            shared,
            channel,
            bootstrap,
        }
    }

    /// The bootstrap socket (for the last handshake messages).
    pub(crate) fn bootstrap_mut(&mut self) -> &mut TcpStream {
        &mut self.bootstrap
    }

    /// Registers the completion channel with the runtime and starts the background task and
    /// the bootstrap watcher; returns the halves.
    pub(crate) fn split(self) -> (RdmaTx<Q>, RdmaRx<Q>) {
        match self.channel.map(register).transpose() {
            Ok(Some(fd)) => self.shared.set_channel(fd),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "completion channel not usable; polling on timers")
            }
        }
        tokio::spawn(background::run(self.shared.clone()));
        tokio::spawn(background::watch_bootstrap(
            self.shared.clone(),
            self.bootstrap,
        ));
        (RdmaTx::new(self.shared.clone()), RdmaRx::new(self.shared))
    }
}
