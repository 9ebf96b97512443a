//! rdma-sim: a userspace RDMA verbs simulator, so that RDMA transports run and are tested on
//! machines without an RDMA device.
//!
//! # Model
//! A [`Fabric`] holds simulated devices and a reliable-connected (RC) transport between their
//! queue pairs. Verbs calls (`post_send`, `post_recv`, `poll`, `req_notify`, `modify`) act on
//! it; the simulated NIC turns send work requests into packets, delivers them to the peer QP,
//! places payloads **directly into the peer's registered memory**, consumes receive work
//! requests, acknowledges, and produces work completions. Devices of different processes talk
//! over abstract Unix sockets named after their GIDs; connection bootstrap data (GID, QP
//! number, rkey, address) is exchanged by the application, as with real verbs.
//!
//! # Faithful
//! - The RC QP state machine (RESET → INIT → RTR → RTS, ERR; illegal transitions refused),
//!   queue depths (`ENOMEM`-style errors past `max_send_wr` / `max_recv_wr`), SGE limits and
//!   `max_inline_data`.
//! - SEND, SEND_WITH_IMM, RDMA_WRITE, RDMA_WRITE_WITH_IMM (consumes a receive; `byte_len` is
//!   the written length) and RDMA_READ; scatter/gather lists; inline data copied at post time
//!   while SGE memory is read when the NIC transmits (and again on retransmission).
//! - Signaled and unsignaled sends: an unsignaled request's slot is freed only when a later
//!   signaled request completes; error completions are always generated.
//! - Protection: lkey/rkey, bounds, protection domain and access-flag checks give
//!   `LOC_PROT_ERR`, `LOC_LEN_ERR`, `REM_ACCESS_ERR`, `REM_INV_REQ_ERR` and move the QP to ERR.
//! - Receiver-not-ready: a SEND (or WRITE_WITH_IMM) with no receive posted is NAKed, retried
//!   after the responder's `min_rnr_timer` up to `rnr_retry` times (7 = forever), then fails
//!   with `RNR_RETRY_EXC_ERR`.
//! - Loss: PSNs, cumulative acks, go-back-N retransmission after `timeout`, `retry_cnt`, then
//!   `RETRY_EXC_ERR`. A QP in ERR flushes every outstanding request with `WR_FLUSH_ERR`.
//! - RC ordering; completion ordering per CQ.
//! - Completion queues of fixed capacity: overflow puts the CQ and its QPs in error (polling it
//!   fails from then on) and raises an asynchronous event. Completion channels are eventfds (pollable, usable with tokio);
//!   `req_notify(solicited_only)` arms exactly one notification.
//! - Immediate data is carried as an opaque 32-bit value; like real verbs, the API takes and
//!   returns it raw (use `to_be`/`from_be` on both ends).
//!
//! # Not modelled
//! - No wire timing: no bandwidth, latency, MTU segmentation or congestion control. Messages
//!   travel whole; "fast" here means "without a kernel crossing", not "like hardware".
//! - No UD/UC/XRC transports, shared receive queues, atomics, memory windows, on-demand
//!   paging, or multiple ports/GID tables. No address handles or path MTU negotiation.
//! - Posting to a QP in ERR fails (as some providers do) instead of completing with a flush.
//! - A remote access violation moves both QPs to ERR.
//! - Arming a CQ never fires for completions queued before the arm: poll again after arming.
//!
//! # Modes and accounting
//! In **inline** mode the NIC's work runs in the thread whose verbs call created it (timed as
//! NIC wall time, [`NicStats::inline_time`]), timers run on one sleeping thread, and the
//! cross-process wire runs on reader/writer threads whose CPU time is
//! [`NicStats::thread_cpu_time`]. Nothing spins: an idle fabric costs no CPU, which suits
//! 2-core machines. In **deterministic** mode a test steps the network explicitly with virtual
//! time ([`Fabric::step`], [`Fabric::advance`]).
//!
//! Fault injection with a seeded RNG: packet loss and link down ([`Fabric::set_drop_rate`],
//! [`Fabric::set_link_up`]), delayed completions ([`Fabric::set_completion_delay`]), QP → ERR
//! ([`QueuePair::modify`]), CQ overflow (a small CQ).

mod error;
mod fault;
mod memory;
mod nic;
mod sys;
mod verbs;
mod wr;

pub use error::VerbsError;
pub use fault::Faults;
pub use nic::{Fabric, FabricConfig, NetStats, NicStats, QpAddress};
pub use verbs::{
    AsyncEvent, CompletionChannel, CompletionQueue, Context, DEVICE_ATTR, Device, DeviceAttr, Gid,
    MemoryRegion, OwnedRegion, ProtectionDomain, QpAttr, QpCaps, QpInitAttr, QpState, QueuePair,
    ReadyCounter, devices,
};
pub use wr::{Access, Opcode, RecvWr, RemoteAddr, SendWr, Sge, WcOpcode, WcStatus, WorkCompletion};
