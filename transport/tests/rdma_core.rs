//! Deterministic tests of the sans-IO RDMA core: two `Core`s wired to queue pairs on a
//! deterministic rdma-sim fabric, stepped by the test with virtual time (quinn-proto's `Pair`
//! is the model). Every failure case must end in a typed error within bounded virtual time,
//! with no slot leaked.

#![allow(unsafe_code)]
// The harness plays the driver: its `unsafe` blocks are the driver's (`driver/nic.rs`), with
// the same reasons — slots named by the core's events have completed, receive slots are
// posted only while no view of them exists, send slots are rewritten only once the core
// freed them.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use rdma_sim::Fabric;
use rdmq_transport::rdma::core::{Core, CoreConfig, CoreError, Event, Outgoing, Peer};
use rdmq_transport::rdma::memory::{Arena, SlotRegion};
use rdmq_transport::rdma::post::{PostBuffers, RecvPost};
use rdmq_transport::rdma::sim::SimVerbs;
use rdmq_transport::rdma::verbs::{
    Completion, QpConfig, Registration, RemoteAccess, Verbs, VerbsQp, WcError,
};

const SLOT: u32 = 1024;

struct Side {
    core: Core,
    qp: <SimVerbs as Verbs>::Qp,
    send: Arc<SlotRegion>,
    recv: Arc<SlotRegion>,
    _reg: Registration,
    lkey: u32,
    post: PostBuffers,
    /// Frames received, in order (copied out; slots released per `hold`).
    received: Vec<Vec<u8>>,
    /// Slots lent and not yet released (simulating an application holding buffers).
    held: VecDeque<u32>,
    /// Release received slots at once.
    release: bool,
    /// Re-post receives the core asks for (false injects "receiver not ready").
    repost: bool,
    assembling: Vec<u8>,
    failed: Option<CoreError>,
    peer_closed: bool,
    closed: bool,
}

fn cfg() -> CoreConfig {
    CoreConfig {
        slot_size: SLOT,
        send_slots: 16,
        recv_slots: 16,
        send_depth: 24,
        signal_every: 4,
        credit_reserve: 2,
        ack_threshold: 8,
        ack_delay: 20_000,
        keepalive: 5_000_000,
        dead_after: 15_000_000,
        max_queued_bytes: 1 << 20,
    }
}

fn side(v: &SimVerbs, cfg: &CoreConfig, qp_cfg: &QpConfig) -> (Side, [u8; 16], u32) {
    let arena = Arena::new((SLOT * (cfg.send_slots + cfg.recv_slots)) as usize);
    let reg = v.register(&arena, RemoteAccess::None).unwrap();
    let send = SlotRegion::new(arena.clone(), 0, SLOT as usize, cfg.send_slots as usize);
    let recv = SlotRegion::new(
        arena,
        (SLOT * cfg.send_slots) as usize,
        SLOT as usize,
        cfg.recv_slots as usize,
    );
    let qp = v.create_qp(qp_cfg).unwrap();
    let ep = qp.endpoint();
    let lkey = reg.lkey;
    let core = Core::new(
        cfg.clone(),
        Peer {
            recv_slots: cfg.recv_slots,
            slot_size: SLOT,
        },
        1,
        0,
    );
    (
        Side {
            core,
            qp,
            send,
            recv,
            _reg: reg,
            lkey,
            post: PostBuffers::default(),
            received: Vec::new(),
            held: VecDeque::new(),
            release: true,
            repost: true,
            assembling: Vec::new(),
            failed: None,
            peer_closed: false,
            closed: false,
        },
        ep.gid,
        ep.qpn,
    )
}

struct Pair {
    fabric: Arc<Fabric>,
    a: Side,
    b: Side,
}

impl Pair {
    fn new(seed: u64) -> Pair {
        Self::with(
            seed,
            cfg(),
            QpConfig {
                cq_depth: 256,
                rnr_retry: 3,
                ..QpConfig::default()
            },
        )
    }

    fn with(seed: u64, cfg: CoreConfig, qp_cfg: QpConfig) -> Pair {
        let fabric = Fabric::deterministic(seed, 2);
        let devs = fabric.devices();
        let va = SimVerbs::open(&devs[0]).unwrap();
        let vb = SimVerbs::open(&devs[1]).unwrap();
        let qp_cfg = QpConfig {
            send_depth: cfg.send_depth,
            recv_depth: cfg.recv_slots,
            event_channel: false,
            remote_access: RemoteAccess::None,
            ..qp_cfg
        };
        let (mut a, ga, qa) = side(&va, &cfg, &qp_cfg);
        let (mut b, gb, qb) = side(&vb, &cfg, &qp_cfg);
        let ep = |gid, qpn| rdmq_transport::rdma::verbs::QpEndpoint {
            gid,
            qpn,
            psn: 0,
            lid: 0,
        };
        a.qp.connect(&ep(gb, qb)).unwrap();
        b.qp.connect(&ep(ga, qa)).unwrap();
        let mut p = Pair { fabric, a, b };
        // Every receive is posted before traffic starts (the driver does so before the
        // handshake completes).
        p.settle();
        p
    }

    fn now(&self) -> u64 {
        self.fabric.now().as_nanos() as u64
    }

    /// One round on both sides, then the network until idle; returns whether anything moved.
    fn round(&mut self) -> bool {
        let now = self.now();
        let mut moved = step_side(&mut self.a, now);
        moved |= step_side(&mut self.b, now);
        moved |= self.fabric.run_due() > 0;
        moved
    }

    /// Rounds until nothing moves; then lets virtual time run to the next core timer.
    fn settle(&mut self) {
        for _ in 0..10_000 {
            if !self.round() {
                return;
            }
        }
        panic!("the pair never settled");
    }

    /// Advances virtual time by `d`, running timers (core and NIC) on the way.
    fn advance(&mut self, d: Duration) {
        let end = self.now() + d.as_nanos() as u64;
        while self.now() < end {
            self.settle();
            let next_core = [self.a.core.poll_timeout(), self.b.core.poll_timeout()]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(u64::MAX);
            let next_nic = self
                .fabric
                .next_event_at()
                .map(|t| t.as_nanos() as u64)
                .unwrap_or(u64::MAX);
            let target = next_core.min(next_nic).min(end).max(self.now() + 1);
            self.fabric
                .advance(Duration::from_nanos(target - self.now()));
            let now = self.now();
            for s in [&mut self.a, &mut self.b] {
                if s.core.poll_timeout().is_some_and(|t| t <= now) {
                    s.core.handle_timeout(now);
                }
            }
        }
        self.settle();
    }

    fn send(&mut self, from_a: bool, data: &[u8]) {
        let s = if from_a { &mut self.a } else { &mut self.b };
        send_frame(s, data);
    }
}

fn send_frame(s: &mut Side, data: &[u8]) {
    if data.len() <= SLOT as usize {
        let idx = s.core.alloc_send_slot().expect("free send slot");
        // SAFETY: see the note at the top.
        let mut slot = unsafe { s.send.checkout(idx) };
        slot.as_mut_slice()[..data.len()].copy_from_slice(data);
        drop(slot);
        s.core
            .send(Outgoing::Slot {
                slot: idx,
                len: data.len() as u32,
            })
            .unwrap();
    } else {
        s.core
            .send(Outgoing::Large(bytes::Bytes::copy_from_slice(data)))
            .unwrap();
    }
}

fn step_side(s: &mut Side, now: u64) -> bool {
    let mut moved = false;
    let mut wcs: Vec<Completion> = Vec::new();
    match s.qp.poll(&mut wcs, 64) {
        Ok(_) => {}
        Err(_) => s.core.fail(CoreError::CqOverflow),
    }
    for c in &wcs {
        s.core.handle_completion(c, now);
        moved = true;
    }
    while let Some(ev) = s.core.poll_event() {
        moved = true;
        match ev {
            Event::Frame { slot, len } => {
                // SAFETY: see the note at the top.
                let view = unsafe { s.recv.checkout(slot) };
                s.received.push(view.as_slice()[..len as usize].to_vec());
                drop(view);
                if s.release {
                    s.core.release_recv(slot);
                } else {
                    s.held.push_back(slot);
                }
            }
            Event::Chunk { slot, len, last } => {
                // SAFETY: see the note at the top.
                let view = unsafe { s.recv.checkout(slot) };
                s.assembling
                    .extend_from_slice(&view.as_slice()[..len as usize]);
                drop(view);
                s.core.release_recv(slot);
                if last {
                    s.received.push(std::mem::take(&mut s.assembling));
                }
            }
            Event::PeerClosed => s.peer_closed = true,
            Event::Closed => s.closed = true,
            Event::Failed(e) => s.failed = Some(e),
        }
    }
    let mut recvs = Vec::new();
    s.core.poll_recv_posts(&mut recvs);
    if !recvs.is_empty() && s.repost {
        let reqs = s.post.recv(RecvPost::new(&recvs, &s.recv, s.lkey));
        // SAFETY: see the note at the top.
        if unsafe { s.qp.post_recv(reqs) }.is_err() {
            s.core.fail(CoreError::Protocol("post_recv".into()));
        }
        moved = true;
    }
    let mut sends = Vec::new();
    s.core.poll_transmit(now, &mut sends);
    if !sends.is_empty() {
        for w in &sends {
            if let (Some(idx), Some(data)) = (w.slot, &w.copy_from) {
                // SAFETY: see the note at the top.
                let mut slot = unsafe { s.send.checkout(idx) };
                slot.as_mut_slice()[..data.len()].copy_from_slice(data);
            }
        }
        let qp = &mut s.qp;
        let posted = s
            .post
            // SAFETY: see the note at the top.
            .send(&sends, &s.send, s.lkey, |reqs| unsafe {
                qp.post_send(reqs)
            });
        if posted.is_err() {
            s.core.fail(CoreError::Protocol("post_send".into()));
        }
        moved = true;
    }
    moved
}

fn frame(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i * 131 + j) as u8).collect()
}

#[test]
fn frames_and_large_frames_arrive_in_order_and_slots_come_back() {
    let mut p = Pair::new(1);
    let sizes = [0usize, 1, 100, 1024, 1025, 5000, 20_000, 3];
    for (i, len) in sizes.iter().enumerate() {
        p.send(true, &frame(i, *len));
        p.settle();
    }
    let expect: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, l)| frame(i, *l))
        .collect();
    assert_eq!(p.b.received, expect);
    p.advance(Duration::from_millis(1));
    // Every send slot is free again once completions are in, every receive re-posted.
    assert_eq!(p.a.core.free_send_slots(), 16);
    assert_eq!(p.b.core.posted_recv(), 16);
    assert_eq!(p.b.core.lent(), 0);
    assert!(p.a.failed.is_none() && p.b.failed.is_none());
    assert_eq!(p.fabric.stats().net.rnr_naks, 0);
}

#[test]
fn a_slow_consumer_stops_the_sender_without_rnr_and_resumes() {
    let mut p = Pair::new(2);
    p.b.release = false;
    let mut sent = 0;
    for i in 0..40 {
        if p.a.core.free_send_slots() == 0 {
            break;
        }
        p.send(true, &frame(i, 64));
        sent += 1;
        p.settle();
    }
    p.advance(Duration::from_millis(2));
    // B holds every slot it lent: A ran out of credit (minus the reserve) and queues the rest,
    // until its send slots run out too.
    assert_eq!(p.b.received.len(), 16 - 2);
    assert_eq!(p.a.core.free_send_slots(), 0);
    assert!(p.a.core.peer_credits() <= 2);
    assert!(p.a.core.queued_frames() > 0);
    assert_eq!(p.fabric.stats().net.rnr_naks, 0, "credits must prevent RNR");
    // The consumer catches up: the backlog drains.
    p.b.release = true;
    while let Some(slot) = p.b.held.pop_front() {
        p.b.core.release_recv(slot);
    }
    p.advance(Duration::from_millis(2));
    assert_eq!(p.a.core.queued_frames(), 0);
    assert_eq!(p.b.received.len(), sent);
    assert!(p.a.failed.is_none());
}

#[test]
fn send_pool_exhaustion_is_backpressure_not_an_error() {
    let mut p = Pair::new(3);
    let mut slots = Vec::new();
    while let Some(s) = p.a.core.alloc_send_slot() {
        slots.push(s);
    }
    assert_eq!(slots.len(), 16);
    assert!(p.a.core.alloc_send_slot().is_none());
    for s in slots {
        p.a.core.send(Outgoing::Slot { slot: s, len: 8 }).unwrap();
    }
    // Past one keepalive interval: the idle link's signaled keepalive frees the unsignaled tail.
    p.advance(Duration::from_millis(10));
    assert_eq!(p.b.received.len(), 16);
    assert_eq!(p.a.core.free_send_slots(), 16, "no slot leaked");
}

#[test]
fn peer_death_ends_in_typed_errors_on_both_sides_in_bounded_time() {
    let mut p = Pair::new(4);
    p.send(true, b"hello");
    p.settle();
    let gid_b = p.fabric.devices()[1].gid();
    p.fabric.set_link_up(gid_b, false);
    p.send(true, b"lost");
    p.advance(Duration::from_millis(200));
    // A's send exhausts its retries (or A hears nothing for too long); B times out.
    assert!(
        matches!(
            p.a.failed,
            Some(CoreError::Completion {
                status: WcError::RetryExceeded,
                ..
            }) | Some(CoreError::KeepaliveTimeout(_))
        ),
        "{:?}",
        p.a.failed
    );
    assert!(
        matches!(p.b.failed, Some(CoreError::KeepaliveTimeout(_))),
        "{:?}",
        p.b.failed
    );
    assert!(p.a.core.is_finished() && p.b.core.is_finished());
    assert!(p.now() <= 200_000_000);
}

#[test]
fn qp_forced_to_error_fails_the_link() {
    let mut p = Pair::new(5);
    p.send(true, b"x");
    p.settle();
    p.b.qp.set_error().unwrap();
    p.settle();
    assert!(
        matches!(
            p.b.failed,
            Some(CoreError::Completion {
                status: WcError::Flushed,
                ..
            })
        ),
        "{:?}",
        p.b.failed
    );
    // A discovers it the next time it sends.
    p.send(true, b"y");
    p.advance(Duration::from_millis(300));
    assert!(p.a.failed.is_some(), "A never noticed");
}

#[test]
fn injected_receiver_not_ready_is_a_typed_error() {
    let mut p = Pair::new(6);
    // B stops re-posting receives while its core believes they are posted.
    p.b.repost = false;
    for i in 0..20 {
        if p.a.core.is_running() && p.a.core.free_send_slots() > 0 {
            p.send(true, &frame(i, 16));
        }
        p.advance(Duration::from_micros(500));
    }
    p.advance(Duration::from_millis(100));
    assert!(
        matches!(
            p.a.failed,
            Some(CoreError::Completion {
                status: WcError::RnrRetryExceeded,
                ..
            })
        ),
        "{:?}",
        p.a.failed
    );
}

#[test]
fn cq_overflow_is_a_typed_error() {
    let mut p = Pair::with(
        7,
        cfg(),
        QpConfig {
            cq_depth: 4,
            ..QpConfig::default()
        },
    );
    p.b.release = false;
    for i in 0..10 {
        if p.a.core.free_send_slots() > 0 {
            p.send(true, &frame(i, 16));
        }
    }
    // Nobody polls B for a while: its receive CQ (4 entries) overflows.
    for _ in 0..50 {
        let now = p.now();
        step_side(&mut p.a, now);
        p.fabric.run_due();
    }
    p.settle();
    assert_eq!(p.b.failed, Some(CoreError::CqOverflow));
}

#[test]
fn idle_links_exchange_keepalives_and_credit_updates() {
    let mut p = Pair::new(8);
    p.send(true, b"one");
    p.advance(Duration::from_millis(30));
    let (a, b) = (p.a.core.stats(), p.b.core.stats());
    assert!(
        a.keepalives_sent > 0 && b.keepalives_sent > 0,
        "{a:?} {b:?}"
    );
    assert!(
        b.credit_updates_sent + b.keepalives_sent > 0,
        "B must return A's credit when idle: {b:?}"
    );
    // Data credit is back; at most the slots of in-flight control messages are outstanding.
    assert!(
        p.a.core.peer_credits() >= 16 - 2,
        "{}",
        p.a.core.peer_credits()
    );
    assert!(p.a.failed.is_none() && p.b.failed.is_none());
}

#[test]
fn graceful_close_delivers_everything_then_goodbye() {
    let mut p = Pair::new(9);
    for i in 0..5 {
        p.send(true, &frame(i, 200));
    }
    p.a.core.close();
    p.advance(Duration::from_millis(5));
    assert_eq!(p.b.received.len(), 5);
    assert!(p.b.peer_closed && p.a.closed);
    assert!(
        p.a.core
            .send(Outgoing::Large(bytes::Bytes::from_static(b"late")))
            .is_err()
    );
}

#[test]
fn stale_generation_completions_are_ignored() {
    let mut core = Core::new(
        cfg(),
        Peer {
            recv_slots: 16,
            slot_size: SLOT,
        },
        7,
        0,
    );
    let stale = Completion {
        wr_id: (6u64 << 48) | (2 << 40) | 3,
        status: Err(WcError::Flushed),
        kind: rdmq_transport::rdma::verbs::CompletionKind::Recv,
        byte_len: 0,
        imm: None,
    };
    core.handle_completion(&stale, 0);
    assert!(core.is_running());
    assert_eq!(core.stats().stale_completions, 1);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Random traffic in both directions with random consumer stalls: credits stay within the
    /// peer's receive queue, no RNR ever happens, every frame arrives in order.
    #[test]
    fn credits_never_overrun_the_peer(
        seed in 0u64..1000,
        ops in proptest::collection::vec((any::<bool>(), 0usize..3000, any::<bool>(), 0u8..4), 1..80),
    ) {
        let mut p = Pair::new(seed);
        let mut sent: [Vec<Vec<u8>>; 2] = [Vec::new(), Vec::new()];
        for (i, (from_a, len, stall, pause)) in ops.into_iter().enumerate() {
            let s = if from_a { &mut p.a } else { &mut p.b };
            let room = if len <= SLOT as usize { s.core.free_send_slots() > 0 } else { s.core.can_queue_large(len) };
            if room {
                let data = frame(i, len);
                send_frame(s, &data);
                sent[from_a as usize].push(data);
            }
            let r = if from_a { &mut p.b } else { &mut p.a };
            r.release = !stall;
            if !stall {
                while let Some(slot) = r.held.pop_front() {
                    r.core.release_recv(slot);
                }
            }
            p.advance(Duration::from_micros(pause as u64 * 40));
            prop_assert!(p.a.core.peer_credits() <= 16 && p.b.core.peer_credits() <= 16);
        }
        for s in [&mut p.a, &mut p.b] {
            s.release = true;
            while let Some(slot) = s.held.pop_front() {
                s.core.release_recv(slot);
            }
        }
        p.advance(Duration::from_millis(5));
        prop_assert_eq!(p.fabric.stats().net.rnr_naks, 0);
        prop_assert!(p.a.failed.is_none() && p.b.failed.is_none());
        prop_assert_eq!(&p.b.received, &sent[1]);
        prop_assert_eq!(&p.a.received, &sent[0]);
    }
}
