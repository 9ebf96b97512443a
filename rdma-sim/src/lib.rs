//! rdma-sim: a userspace RDMA verbs simulator, so that RDMA transports run and are tested on
//! machines without an RDMA device.
//!
//! # Model
//! A [`Fabric`] holds simulated devices and a reliable-connected (RC) transport between their
//! queue pairs. Verbs calls (`post_send`, `post_recv`, `poll`, `req_notify`, `modify`) act on
//! it; the simulated NIC turns send work requests into packets, delivers them to the peer QP,
//! places payloads **directly into the peer's registered memory**, consumes receive work
//! requests, acknowledges, and produces work completions. Connection bootstrap data (GID, QP
//! number, rkey, address) is exchanged by the application, as with real verbs.
//!
//! # Across processes: shared memory with direct placement
//! Devices of a cross-process fabric ([`Fabric::global`]) are reachable from other processes.
//! When a QP moves to RTR towards a QP of another process, the two fabrics **attach** over a
//! control socket (an abstract Unix socket named after the device GID, `rdma-sim-ctl.<gid>`,
//! beside the packet wire's own socket so that neither stream format carries the other's
//! messages; one connection per attached QP pair, whose end is the liveness signal): each passes the memfds
//! of its PD's regions (with keys, addresses, lengths, access), of its QP's shared words and
//! receive ring, of its receive CQ's ring and its completion channel's eventfd, and maps the
//! peer's. Memory from [`ProtectionDomain::alloc_region`] is memfd-backed on such a fabric;
//! applications owning their memory register it with [`ProtectionDomain::register_memfd`].
//!
//! On an attached QP the NIC's work runs in the posting thread: a SEND takes the peer's next
//! posted receive from the peer's receive ring, checks its SGEs against the peer's region table,
//! copies the payload **directly into the peer's memory**, writes the receive completion into
//! the peer's CQ ring (a lock-free multi-producer ring in shared memory) and writes the peer's
//! eventfd **only if that CQ is armed**; WRITE goes through the peer's rkey table; READ copies
//! out of the peer's memory. Polling reads the local CQ ring without the fabric lock; arming is
//! one store. There is no kernel crossing and no thread hop on the data path in steady state:
//! the control socket carries only set-up, error notices (a remote error moves the peer QP to
//! ERR) and, by reaching its end without a "QP destroyed" notice, the peer process's death,
//! which moves the attached QP to ERR and flushes its outstanding work.
//!
//! Attaching needs every region of the QP's PD to have a memfd (at most 200 regions), no
//! injected faults, and an inline fabric; otherwise — or with `RDMA_SIM_WIRE=socket`, or if the
//! peer refuses — both sides use the **packet wire**: packets framed over per-GID abstract Unix
//! sockets by reader/writer threads (the engine of in-process fabrics, unchanged).
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
//!   with `RNR_RETRY_EXC_ERR`; later requests wait behind it (RC order). Across processes in
//!   shared-memory mode the same rule holds, the retry running on the fabric's timer thread.
//! - Loss: PSNs, cumulative acks, go-back-N retransmission after `timeout`, `retry_cnt`, then
//!   `RETRY_EXC_ERR`. A QP in ERR flushes every outstanding request with `WR_FLUSH_ERR`.
//! - RC ordering; completion ordering per CQ.
//! - Completion queues of fixed capacity: overflow puts the CQ and its QPs in error (polling it
//!   fails from then on) and raises an asynchronous event. Completion channels are eventfds (pollable, usable with tokio);
//!   `req_notify(solicited_only)` arms exactly one notification.
//! - Immediate data is carried as an opaque 32-bit value; like real verbs, the API takes and
//!   returns it raw (use `to_be`/`from_be` on both ends).
//!
//! - Across processes (shared-memory mode): the hardware's cost structure — the payload is
//!   copied once, straight into the peer's registered memory, the completion is one entry in
//!   the peer's CQ ring, and the only system call is the eventfd write of an armed CQ.
//!
//! # Not modelled
//! - No wire timing: no bandwidth, latency, MTU segmentation or congestion control. Messages
//!   travel whole; "fast" here means "without a kernel crossing", not "like hardware".
//! - Shared-memory mode has no wire at all: no packets, PSNs, acks or retransmissions; loss and
//!   link faults cannot be injected across processes (a fabric with faults set at attach time
//!   uses the packet wire; faults set later do not apply to attached QPs). A send completes
//!   when its placement is done, in `post_send`, rather than when an ack returns.
//! - Regions registered after a QP attached are not visible to the peer of that QP (its keys
//!   fail the remote checks); register before connecting. Each attach passes (and the peer
//!   maps) every region of the PD, so many links on one PD map each other's regions many times
//!   (address space only: the pages are shared).
//! - A peer QP that is not yet RTR is treated as a lost packet (retried after `timeout`, up to
//!   `retry_cnt`); one in ERR or destroyed fails the request with `RETRY_EXC_ERR` at once,
//!   without waiting out the retries.
//! - The peer's death moves attached QPs to ERR (real RC would notice only on its next send);
//!   a peer that destroys its QP does not.
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
//! [`NicStats::thread_cpu_time`]. In shared-memory mode "NIC work" is exactly the payload copy
//! into (or, for READ, out of) the peer's memory plus the completion-entry writes, timed around
//! those operations alone ([`NicStats::placement_time`], with [`NicStats::bytes_placed`],
//! [`NicStats::cqes_written`] and [`NicStats::doorbells`], the eventfd writes this process
//! made); checks and bookkeeping around them are host work, like a driver's. (An RNR retry runs
//! on the timer thread, so its placement is also inside `thread_cpu_time`.) Nothing spins: an idle fabric costs no CPU, which suits
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
