//! The sans-IO core of an RDMA link: how remoting frames become work requests and how
//! completions become frames, with no I/O, no clock and no `unsafe` (the quinn-proto model).
//!
//! - **Slots.** Both sides post `recv_slots` receive buffers of `slot_size` bytes. A frame that
//!   fits a slot travels as one SEND_WITH_IMM from one of our send slots into one of theirs; a
//!   larger frame travels as consecutive chunks (`Chunk` … `LastChunk`) and is reassembled.
//! - **Credits.** We may only send while the peer has a receive posted for us: `peer_credits`
//!   starts at the peer's `recv_slots` and each message spends one. Receivers return re-posted
//!   slots in the immediate of whatever they send next; an explicit `CreditUpdate` goes out
//!   only when the peer runs short (below a quarter of the window, [`Core::credits_low`]),
//!   once `ack_threshold` are owed, or after `ack_delay` of having nothing to send. Data
//!   keeps `credit_reserve` credits back so control messages can always be sent, and slots
//!   consumed by control messages are returned lazily, so updates never ping-pong.
//! - **Completions.** Only every `signal_every`-th send is signaled (sooner when slots run
//!   low); one completion frees every earlier send slot. `solicited` is set on the last
//!   message of a burst so an event-mode peer wakes once per burst.
//! - **Liveness.** A `Keepalive` goes out after `keepalive` of silence; no message from the peer
//!   for `dead_after` fails the link. `Goodbye` ends a graceful close.
//! - **Generations.** Work request ids carry the link generation; completions of an earlier
//!   generation (a previous queue pair on the same memory) are ignored.
//!
//! Inputs: [`Core::handle_completion`], [`Core::handle_timeout`], [`Core::send`],
//! [`Core::release_recv`], [`Core::close`]. Outputs: [`Core::poll_recv_posts`],
//! [`Core::poll_transmit`], [`Core::poll_event`], [`Core::poll_timeout`]. Time is the
//! caller's monotonic nanoseconds.

pub mod handshake;
pub mod imm;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;

use bytes::Bytes;

use self::imm::{Control, Imm, Kind, MAX_CREDITS};
use super::verbs::{Completion, CompletionKind, WcError};

const TAG_SEND: u64 = 1;
const TAG_RECV: u64 = 2;

fn wr_id(generation: u16, tag: u64, value: u32) -> u64 {
    ((generation as u64) << 48) | (tag << 40) | value as u64
}

fn wr_parts(id: u64) -> (u16, u64, u32) {
    ((id >> 48) as u16, (id >> 40) & 0xFF, id as u32)
}

/// `a` is at or before `b` in 32-bit sequence space.
fn seq_le(a: u32, b: u32) -> bool {
    b.wrapping_sub(a) < 1 << 31
}

/// Tuning of a link; both sides must agree on `slot_size`.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// Bytes per slot (the largest message).
    pub slot_size: u32,
    /// Send slots (registered staging buffers).
    pub send_slots: u32,
    /// Receive slots posted for the peer.
    pub recv_slots: u32,
    /// Send queue depth; at least `send_slots` plus room for control messages.
    pub send_depth: u32,
    /// Signal one send completion per this many sends.
    pub signal_every: u32,
    /// Credits data may not use (kept for control messages).
    pub credit_reserve: u32,
    /// Owed credits that trigger an immediate explicit update.
    pub ack_threshold: u32,
    /// Longest wait before owed credits are returned explicitly while the peer still has
    /// plenty (ns); when it runs short ([`Core::credits_low`]) they go at once.
    pub ack_delay: u64,
    /// Silence after which a keepalive is sent (ns).
    pub keepalive: u64,
    /// Silence from the peer after which the link fails (ns).
    pub dead_after: u64,
    /// Bytes of large frames queued before senders wait.
    pub max_queued_bytes: u64,
}

impl Default for CoreConfig {
    fn default() -> Self {
        Self {
            slot_size: 8192,
            send_slots: 256,
            recv_slots: 256,
            send_depth: 320,
            signal_every: 16,
            credit_reserve: 4,
            ack_threshold: 128,
            ack_delay: 5_000_000,
            keepalive: 1_000_000_000,
            dead_after: 3_000_000_000,
            max_queued_bytes: 64 << 20,
        }
    }
}

/// What the peer announced in the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// Its receive slots (our initial credits).
    pub recv_slots: u32,
    /// Its slot size.
    pub slot_size: u32,
}

/// A frame handed to the core for sending.
#[derive(Debug, Clone)]
pub enum Outgoing {
    /// Already encoded in send slot `slot` (`len` bytes): sent as one message, no copy.
    Slot {
        /// Send slot index.
        slot: u32,
        /// Frame length.
        len: u32,
    },
    /// A frame larger than a slot, sent in chunks copied into send slots as they free up.
    Large(Bytes),
}

/// A send work request to post.
#[derive(Debug, Clone)]
pub struct SendWork {
    /// Work request id.
    pub wr_id: u64,
    /// Send slot holding the data (`None` for control messages, which carry none).
    pub slot: Option<u32>,
    /// Bytes to send from the slot.
    pub len: u32,
    /// Immediate value (host order).
    pub imm: u32,
    /// Request a completion.
    pub signaled: bool,
    /// Ask the peer for a solicited event.
    pub solicited: bool,
    /// Bytes the driver must copy into the slot before posting (chunks of large frames).
    pub copy_from: Option<Bytes>,
}

/// A receive work request to post.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecvWork {
    /// Work request id.
    pub wr_id: u64,
    /// Receive slot index.
    pub slot: u32,
}

/// Something the driver must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A whole frame is in receive slot `slot`. Lend it to the application (or copy it out if
    /// the application holds too many), then call [`Core::release_recv`]. Until then its credit
    /// is not returned: a reader that stops reading stops the peer.
    Frame {
        /// Receive slot.
        slot: u32,
        /// Frame length.
        len: u32,
    },
    /// A chunk of a large frame: append it to the frame being assembled, then release the slot.
    Chunk {
        /// Receive slot.
        slot: u32,
        /// Chunk length.
        len: u32,
        /// This chunk completes the frame.
        last: bool,
    },
    /// The peer closed gracefully: no more frames will arrive.
    PeerClosed,
    /// Our graceful close finished (everything sent and acknowledged).
    Closed,
    /// The link failed.
    Failed(CoreError),
}

/// Why a link failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoreError {
    /// A work request completed with an error.
    #[error("{kind:?} work request failed: {status:?}")]
    Completion {
        /// Error status.
        status: WcError,
        /// What failed.
        kind: CompletionKind,
    },
    /// Nothing came from the peer for too long.
    #[error("no message from the peer for {0} ms")]
    KeepaliveTimeout(u64),
    /// The peer broke the protocol.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The completion queue overflowed.
    #[error("completion queue overflowed")]
    CqOverflow,
    /// The bootstrap connection closed.
    #[error("bootstrap connection closed")]
    BootstrapClosed,
}

/// Counters of one link.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CoreStats {
    /// Whole frames sent.
    pub frames_sent: u64,
    /// Chunks of large frames sent.
    pub chunks_sent: u64,
    /// Explicit credit updates sent.
    pub credit_updates_sent: u64,
    /// Keepalives sent.
    pub keepalives_sent: u64,
    /// Whole frames received.
    pub frames_received: u64,
    /// Completions of an older generation ignored.
    pub stale_completions: u64,
    /// Sends that waited for credits (queue non-empty, credits exhausted).
    pub credit_stalls: u64,
    /// Lowest credit count seen after a send.
    pub min_peer_credits: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    Closing,
    Closed,
    Failed,
}

#[derive(Debug)]
enum Queued {
    Slot { slot: u32, len: u32 },
    Large { data: Bytes, offset: usize },
}

/// The connection state machine. See the module documentation.
#[derive(Debug)]
pub struct Core {
    cfg: CoreConfig,
    peer: Peer,
    generation: u16,
    state: State,
    now: u64,
    // sending
    free_send: Vec<u32>,
    queue: VecDeque<Queued>,
    queued_bytes: u64,
    inflight: VecDeque<(u32, Option<u32>)>,
    sq_outstanding: u32,
    next_send_seq: u32,
    unsignaled_run: u32,
    unsolicited_run: u32,
    tx_msg_seq: u16,
    peer_credits: u32,
    goodbye_seq: Option<u32>,
    keepalive_due: bool,
    last_sent: u64,
    // receiving
    to_post: Vec<u32>,
    posted_recv: u32,
    lent: u32,
    unreported: u32,
    urgent: u32,
    ack_needed: bool,
    ack_deadline: Option<u64>,
    rx_msg_seq: u16,
    last_received: u64,
    peer_closed: bool,
    events: VecDeque<Event>,
    stats: CoreStats,
}

impl Core {
    /// A link of `generation` to `peer`, at time `now`. Every receive slot is queued for the
    /// first [`Core::poll_recv_posts`]; every send slot is free.
    pub fn new(cfg: CoreConfig, peer: Peer, generation: u16, now: u64) -> Core {
        assert!(
            cfg.send_depth > cfg.send_slots,
            "send depth must leave room for control messages"
        );
        assert!(cfg.recv_slots <= MAX_CREDITS && peer.recv_slots <= MAX_CREDITS);
        assert!(
            cfg.slot_size == peer.slot_size,
            "slot sizes are negotiated equal"
        );
        Core {
            free_send: (0..cfg.send_slots).rev().collect(),
            to_post: (0..cfg.recv_slots).collect(),
            peer_credits: peer.recv_slots,
            stats: CoreStats {
                min_peer_credits: peer.recv_slots,
                ..CoreStats::default()
            },
            cfg,
            peer,
            generation,
            state: State::Running,
            now,
            queue: VecDeque::new(),
            queued_bytes: 0,
            inflight: VecDeque::new(),
            sq_outstanding: 0,
            next_send_seq: 0,
            unsignaled_run: 0,
            unsolicited_run: 0,
            tx_msg_seq: 0,
            goodbye_seq: None,
            keepalive_due: false,
            last_sent: now,
            posted_recv: 0,
            lent: 0,
            unreported: 0,
            urgent: 0,
            ack_needed: false,
            ack_deadline: None,
            rx_msg_seq: 0,
            last_received: now,
            peer_closed: false,
            events: VecDeque::new(),
        }
    }

    /// The link generation.
    pub fn generation(&self) -> u16 {
        self.generation
    }

    /// The configuration.
    pub fn config(&self) -> &CoreConfig {
        &self.cfg
    }

    /// True until a close starts or the link fails.
    pub fn is_running(&self) -> bool {
        self.state == State::Running
    }

    /// True once the link failed or finished closing.
    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Closed | State::Failed)
    }

    /// Credits left towards the peer.
    pub fn peer_credits(&self) -> u32 {
        self.peer_credits
    }

    /// Receives currently posted.
    pub fn posted_recv(&self) -> u32 {
        self.posted_recv
    }

    /// Receive slots lent to the application.
    pub fn lent(&self) -> u32 {
        self.lent
    }

    /// Counters.
    pub fn stats(&self) -> &CoreStats {
        &self.stats
    }

    /// Free send slots.
    pub fn free_send_slots(&self) -> usize {
        self.free_send.len()
    }

    /// Frames waiting for credits or send-queue room.
    pub fn queued_frames(&self) -> usize {
        self.queue.len()
    }

    /// True if [`Core::poll_recv_posts`] or [`Core::poll_transmit`] may produce work, or events
    /// wait: a driver with no completions and nothing due can skip its round.
    pub fn has_work(&self) -> bool {
        !self.to_post.is_empty()
            || !self.events.is_empty()
            || self.ack_needed
            || self.keepalive_due
            || (!self.queue.is_empty() && !self.is_finished())
            || (self.state == State::Closing && self.goodbye_seq.is_none())
    }

    // ----- application side -----------------------------------------------------------------

    /// Takes a free send slot to encode a frame into.
    pub fn alloc_send_slot(&mut self) -> Option<u32> {
        if self.state != State::Running {
            return None;
        }
        self.free_send.pop()
    }

    /// Returns a send slot that was allocated but not sent.
    pub fn free_send_slot(&mut self, slot: u32) {
        self.free_send.push(slot);
    }

    /// True if a large frame of `len` bytes may be queued now.
    pub fn can_queue_large(&self, len: usize) -> bool {
        self.state == State::Running
            && (self.queued_bytes == 0
                || self.queued_bytes + len as u64 <= self.cfg.max_queued_bytes)
    }

    /// Queues a frame. Fails once the link is closing or failed (a slot is then freed).
    pub fn send(&mut self, frame: Outgoing) -> Result<(), Outgoing> {
        if self.state != State::Running {
            if let Outgoing::Slot { slot, .. } = frame {
                self.free_send.push(slot);
            }
            return Err(frame);
        }
        match frame {
            Outgoing::Slot { slot, len } => {
                assert!(len <= self.cfg.slot_size, "frame larger than its slot");
                self.queue.push_back(Queued::Slot { slot, len });
            }
            Outgoing::Large(data) => {
                self.queued_bytes += data.len() as u64;
                self.queue.push_back(Queued::Large { data, offset: 0 });
            }
        }
        Ok(())
    }

    /// The application is done with a received slot: it is re-posted and its credit returned.
    pub fn release_recv(&mut self, slot: u32) {
        assert!(self.lent > 0, "release of slot {slot} that was not lent");
        self.lent -= 1;
        self.repost(slot, true);
    }

    /// Graceful close: frames already queued are sent, then `Goodbye`.
    pub fn close(&mut self) {
        if self.state == State::Running {
            self.state = State::Closing;
        }
    }

    fn upgrade_flush_failure(&mut self, error: CoreError) {
        for e in self.events.iter_mut() {
            if let Event::Failed(CoreError::Completion {
                status: WcError::Flushed,
                ..
            }) = e
            {
                *e = Event::Failed(error);
                return;
            }
        }
    }

    /// Fails the link for a reason the driver detected.
    pub fn fail(&mut self, error: CoreError) {
        if !self.is_finished() {
            self.state = State::Failed;
            self.events.push_back(Event::Failed(error));
        }
    }

    // ----- driver side ----------------------------------------------------------------------

    /// Processes one completion.
    pub fn handle_completion(&mut self, c: &Completion, now: u64) {
        self.now = now;
        let (generation, tag, value) = wr_parts(c.wr_id);
        if generation != self.generation {
            self.stats.stale_completions += 1;
            return;
        }
        if let Err(status) = c.status {
            if tag == TAG_RECV {
                self.posted_recv = self.posted_recv.saturating_sub(1);
            }
            // Flushes follow the failure (or our own teardown) that caused them. A flush is never
            // the root cause: if the real error arrives in the same batch (it may sit on the
            // other completion queue), it replaces the flush as the reported failure.
            let error = CoreError::Completion {
                status,
                kind: c.kind,
            };
            if self.state == State::Running {
                self.fail(error);
            } else if status != WcError::Flushed {
                self.upgrade_flush_failure(error);
            }
            return;
        }
        match tag {
            TAG_SEND => self.on_send_done(value),
            TAG_RECV => self.on_recv(value, c),
            _ => self.fail(CoreError::Protocol(format!(
                "unknown work request id {:#x}",
                c.wr_id
            ))),
        }
    }

    fn on_send_done(&mut self, seq: u32) {
        while let Some(&(s, slot)) = self.inflight.front() {
            if !seq_le(s, seq) {
                break;
            }
            self.inflight.pop_front();
            self.sq_outstanding -= 1;
            if let Some(slot) = slot {
                self.free_send.push(slot);
            }
            if self.goodbye_seq == Some(s) && self.state == State::Closing {
                self.state = State::Closed;
                self.events.push_back(Event::Closed);
            }
        }
    }

    fn on_recv(&mut self, slot: u32, c: &Completion) {
        self.posted_recv -= 1;
        if self.state == State::Failed {
            return;
        }
        if self.urgent > 0 && self.credits_low() {
            self.ack_needed = true;
        }
        let Some(raw) = c.imm else {
            return self.fail(CoreError::Protocol("message without immediate data".into()));
        };
        let imm = Imm::decode(raw);
        if self.peer_credits + imm.credits > self.peer.recv_slots {
            return self.fail(CoreError::Protocol(format!(
                "peer returned {} credits with {} outstanding of {}",
                imm.credits, self.peer_credits, self.peer.recv_slots
            )));
        }
        self.peer_credits += imm.credits;
        self.last_received = self.now;
        match imm.kind {
            Kind::Frame | Kind::Chunk | Kind::LastChunk => {
                if imm.seq != self.rx_msg_seq {
                    return self.fail(CoreError::Protocol(format!(
                        "message sequence {} where {} was expected",
                        imm.seq, self.rx_msg_seq
                    )));
                }
                self.rx_msg_seq = self.rx_msg_seq.wrapping_add(1);
                if c.byte_len > self.cfg.slot_size {
                    return self.fail(CoreError::Protocol("message longer than a slot".into()));
                }
                self.lent += 1;
                let event = match imm.kind {
                    Kind::Frame => {
                        self.stats.frames_received += 1;
                        Event::Frame {
                            slot,
                            len: c.byte_len,
                        }
                    }
                    kind => Event::Chunk {
                        slot,
                        len: c.byte_len,
                        last: kind == Kind::LastChunk,
                    },
                };
                self.events.push_back(event);
            }
            Kind::Control(Control::CreditUpdate) | Kind::Control(Control::Keepalive) => {
                self.repost(slot, false);
            }
            Kind::Control(Control::Goodbye) => {
                self.repost(slot, false);
                if !self.peer_closed {
                    self.peer_closed = true;
                    self.events.push_back(Event::PeerClosed);
                }
            }
            Kind::Control(Control::Unknown(t)) => {
                self.fail(CoreError::Protocol(format!("unknown control message {t}")));
            }
        }
    }

    fn repost(&mut self, slot: u32, urgent: bool) {
        self.to_post.push(slot);
        self.unreported += 1;
        if urgent {
            self.urgent += 1;
            if self.urgent >= self.cfg.ack_threshold || self.credits_low() {
                self.ack_needed = true;
            } else if self.ack_deadline.is_none() {
                self.ack_deadline = Some(self.now + self.cfg.ack_delay);
            }
        }
    }

    /// Credits the peer knows it has: receives posted (or about to be) minus those not yet
    /// reported to it.
    fn peer_view(&self) -> u32 {
        (self.posted_recv + self.to_post.len() as u32).saturating_sub(self.unreported)
    }

    /// True when the peer is running short of credits: released receive slots should then be
    /// reported promptly (an explicit update), not wait for a frame to carry them. Above this
    /// mark returned credits ride on the next frame, so request/response traffic sends no
    /// credit updates at all.
    pub fn credits_low(&self) -> bool {
        let mark = (self.cfg.recv_slots / 4)
            .max(self.cfg.credit_reserve * 2)
            .min(self.cfg.recv_slots);
        self.peer_view() < mark
    }

    /// Handles timers due at `now`.
    pub fn handle_timeout(&mut self, now: u64) {
        self.now = now;
        if self.is_finished() {
            return;
        }
        if self.ack_deadline.is_some_and(|d| d <= now) {
            self.ack_deadline = None;
            if self.urgent > 0 {
                self.ack_needed = true;
            }
        }
        if now.saturating_sub(self.last_sent) >= self.cfg.keepalive {
            self.keepalive_due = true;
        }
        let silent = now.saturating_sub(self.last_received);
        if silent >= self.cfg.dead_after {
            self.fail(CoreError::KeepaliveTimeout(silent / 1_000_000));
        }
    }

    /// The next instant [`Core::handle_timeout`] must run, if any.
    pub fn poll_timeout(&self) -> Option<u64> {
        if self.is_finished() {
            return None;
        }
        let mut t = self.last_received + self.cfg.dead_after;
        if !self.keepalive_due {
            t = t.min(self.last_sent + self.cfg.keepalive);
        }
        if let Some(d) = self.ack_deadline {
            t = t.min(d);
        }
        Some(t)
    }

    /// Receive slots to (re-)post.
    pub fn poll_recv_posts(&mut self, out: &mut Vec<RecvWork>) {
        if self.state == State::Failed {
            self.to_post.clear();
            return;
        }
        for slot in self.to_post.drain(..) {
            out.push(RecvWork {
                wr_id: wr_id(self.generation, TAG_RECV, slot),
                slot,
            });
            self.posted_recv += 1;
        }
    }

    /// Sends that can go now (credits, send-queue room and slots permitting). Post the receives
    /// of [`Core::poll_recv_posts`] first: the credits these sends return refer to them.
    pub fn poll_transmit(&mut self, now: u64, out: &mut Vec<SendWork>) {
        self.now = now;
        if !matches!(self.state, State::Running | State::Closing) {
            return;
        }
        while self.sq_outstanding < self.cfg.send_depth {
            if let Some(control) = self.due_control() {
                if self.peer_credits == 0 {
                    break;
                }
                match control {
                    Control::CreditUpdate => {
                        self.ack_needed = false;
                        self.stats.credit_updates_sent += 1;
                    }
                    Control::Keepalive => {
                        self.keepalive_due = false;
                        self.stats.keepalives_sent += 1;
                    }
                    _ => {}
                }
                let seq = self.emit(Kind::Control(control), None, 0, None, true, out);
                if control == Control::Goodbye {
                    self.goodbye_seq = Some(seq);
                }
                continue;
            }
            if self.queue.is_empty() {
                break;
            }
            if self.peer_credits <= self.cfg.credit_reserve {
                self.stats.credit_stalls += 1;
                break;
            }
            match self.queue.front_mut().expect("not empty") {
                Queued::Slot { slot, len } => {
                    let (slot, len) = (*slot, *len);
                    self.queue.pop_front();
                    self.stats.frames_sent += 1;
                    let last = self.queue.is_empty();
                    self.emit(Kind::Frame, Some(slot), len, None, last, out);
                }
                Queued::Large { data, offset } => {
                    let Some(slot) = self.free_send.pop() else {
                        break;
                    };
                    let start = *offset;
                    let end = (start + self.cfg.slot_size as usize).min(data.len());
                    let chunk = data.slice(start..end);
                    let done = end == data.len();
                    *offset = end;
                    if done {
                        self.queued_bytes -= data.len() as u64;
                        self.queue.pop_front();
                    }
                    self.stats.chunks_sent += 1;
                    let kind = if done { Kind::LastChunk } else { Kind::Chunk };
                    let last = done && self.queue.is_empty();
                    let len = chunk.len() as u32;
                    self.emit(kind, Some(slot), len, Some(chunk), last, out);
                }
            }
        }
    }

    fn due_control(&self) -> Option<Control> {
        if self.ack_needed {
            return Some(Control::CreditUpdate);
        }
        if self.keepalive_due && self.state == State::Running {
            return Some(Control::Keepalive);
        }
        if self.state == State::Closing && self.queue.is_empty() && self.goodbye_seq.is_none() {
            return Some(Control::Goodbye);
        }
        None
    }

    fn emit(
        &mut self,
        kind: Kind,
        slot: Option<u32>,
        len: u32,
        copy_from: Option<Bytes>,
        end_of_burst: bool,
        out: &mut Vec<SendWork>,
    ) -> u32 {
        let credits = self.unreported.min(MAX_CREDITS);
        self.unreported -= credits;
        if self.unreported == 0 {
            self.urgent = 0;
            self.ack_needed = false;
            self.ack_deadline = None;
        }
        let msg_seq = match kind {
            Kind::Control(_) => 0,
            _ => {
                let s = self.tx_msg_seq;
                self.tx_msg_seq = s.wrapping_add(1);
                s
            }
        };
        debug_assert!(self.peer_credits > 0, "sending without credit");
        self.peer_credits -= 1;
        self.stats.min_peer_credits = self.stats.min_peer_credits.min(self.peer_credits);
        let seq = self.next_send_seq;
        self.next_send_seq = seq.wrapping_add(1);
        self.unsignaled_run += 1;
        let n = self.cfg.signal_every;
        // Control messages are rare: signalling them lets an idle link free the send slots of
        // its last, unsignaled burst.
        let signaled = self.unsignaled_run >= n
            || (self.free_send.len() as u32) < n
            || self.sq_outstanding + 1 + n >= self.cfg.send_depth
            || matches!(kind, Kind::Control(_));
        if signaled {
            self.unsignaled_run = 0;
        }
        let solicited = match kind {
            Kind::Control(Control::Keepalive) => false,
            Kind::Control(_) => true,
            _ => {
                self.unsolicited_run += 1;
                end_of_burst || self.unsolicited_run >= n
            }
        };
        if solicited {
            self.unsolicited_run = 0;
        }
        self.inflight.push_back((seq, slot));
        self.sq_outstanding += 1;
        self.last_sent = self.now;
        self.keepalive_due = false;
        out.push(SendWork {
            wr_id: wr_id(self.generation, TAG_SEND, seq),
            slot,
            len,
            imm: Imm {
                kind,
                credits,
                seq: msg_seq,
            }
            .encode(),
            signaled,
            solicited,
            copy_from,
        });
        seq
    }

    /// The next event for the driver.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }
}
