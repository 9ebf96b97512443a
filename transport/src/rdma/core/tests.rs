//! The sans-IO core on its own: two cores joined by a perfect in-memory wire (each send
//! consumes the peer's oldest posted receive, signaled sends complete at once), driven by hand
//! with a virtual clock. A send with no receive posted on the other side is a credit bug and
//! fails the test.

use std::collections::VecDeque;

use bytes::Bytes;

use super::*;
use crate::rdma::verbs::{Completion, CompletionKind};

const MS: u64 = 1_000_000;

struct Side {
    core: Core,
    posted: VecDeque<RecvWork>,
    events: Vec<Event>,
}

struct Pair {
    a: Side,
    b: Side,
    now: u64,
}

fn cfg(slots: u32) -> CoreConfig {
    CoreConfig {
        slot_size: 256,
        send_slots: slots,
        recv_slots: slots,
        send_depth: slots + 8,
        credit_reserve: 1,
        ack_threshold: slots / 2,
        ..CoreConfig::default()
    }
}

impl Pair {
    fn new(slots: u32) -> Pair {
        let peer = Peer {
            recv_slots: slots,
            slot_size: 256,
        };
        let side = |g| Side {
            core: Core::new(cfg(slots), peer, g, 0),
            posted: VecDeque::new(),
            events: Vec::new(),
        };
        let mut p = Pair {
            a: side(1),
            b: side(2),
            now: 0,
        };
        p.post_recvs();
        p
    }

    fn post_recvs(&mut self) {
        for s in [&mut self.a, &mut self.b] {
            let mut out = Vec::new();
            s.core.poll_recv_posts(&mut out);
            s.posted.extend(out);
        }
    }

    /// Moves everything sendable across until nothing moves; returns the sends made by A.
    fn run(&mut self) -> usize {
        let mut a_sent = 0;
        loop {
            self.post_recvs();
            let mut moved = false;
            for from_a in [true, false] {
                let (tx, rx) = if from_a {
                    (&mut self.a, &mut self.b)
                } else {
                    (&mut self.b, &mut self.a)
                };
                let mut work = Vec::new();
                tx.core.poll_transmit(self.now, &mut work);
                for w in work {
                    moved = true;
                    a_sent += usize::from(from_a);
                    let recv = rx
                        .posted
                        .pop_front()
                        .expect("a send found no posted receive: credits overran the peer");
                    rx.core.handle_completion(
                        &Completion {
                            wr_id: recv.wr_id,
                            status: Ok(()),
                            kind: CompletionKind::Recv,
                            byte_len: w.len,
                            imm: Some(w.imm),
                        },
                        self.now,
                    );
                    if w.signaled {
                        tx.core.handle_completion(
                            &Completion {
                                wr_id: w.wr_id,
                                status: Ok(()),
                                kind: CompletionKind::Send,
                                byte_len: 0,
                                imm: None,
                            },
                            self.now,
                        );
                    }
                }
            }
            for s in [&mut self.a, &mut self.b] {
                while let Some(e) = s.core.poll_event() {
                    s.events.push(e);
                }
            }
            if !moved {
                return a_sent;
            }
        }
    }

    fn advance(&mut self, ns: u64) {
        self.now += ns;
        self.a.core.handle_timeout(self.now);
        self.b.core.handle_timeout(self.now);
    }
}

fn send_slot(core: &mut Core, len: u32) {
    let slot = core.alloc_send_slot().expect("a free send slot");
    core.send(Outgoing::Slot { slot, len }).expect("running");
}

/// B's frames, releasing each slot as the application would after reading it.
fn take_frames(side: &mut Side) -> Vec<u32> {
    let mut lens = Vec::new();
    for e in std::mem::take(&mut side.events) {
        if let Event::Frame { slot, len } = e {
            side.core.release_recv(slot);
            lens.push(len);
        }
    }
    lens
}

#[test]
fn frames_beyond_the_peers_credits_wait_until_it_reads() {
    let mut p = Pair::new(8);
    for i in 0..8 {
        send_slot(&mut p.a.core, 10 + i);
    }
    p.run();
    // 8 receive slots, one credit reserved for control messages: 7 frames go, 1 waits.
    let held: Vec<Event> = std::mem::take(&mut p.b.events);
    assert_eq!(held.len(), 7, "{held:?}");
    assert_eq!(p.a.core.queued_frames(), 1);
    // B has not released anything: A must not send more whatever happens.
    p.advance(10 * MS);
    p.run();
    assert!(p.b.events.is_empty());
    for e in held {
        if let Event::Frame { slot, .. } = e {
            p.b.core.release_recv(slot);
        }
    }
    p.advance(MS);
    p.run();
    assert_eq!(
        take_frames(&mut p.b),
        vec![17],
        "the held frame follows once credits return"
    );
    assert_eq!(p.a.core.queued_frames(), 0);
}

#[test]
fn an_allocated_slot_given_back_unsent_is_free_again() {
    let mut p = Pair::new(4);
    let before = p.a.core.free_send_slots();
    let slot = p.a.core.alloc_send_slot().unwrap();
    assert_eq!(p.a.core.free_send_slots(), before - 1);
    p.a.core.free_send_slot(slot);
    assert_eq!(p.a.core.free_send_slots(), before);
}

#[test]
fn a_large_frame_crosses_in_slot_sized_chunks() {
    let mut p = Pair::new(8);
    let body = Bytes::from(vec![3u8; 1000]);
    assert!(p.a.core.can_queue_large(body.len()));
    p.a.core.send(Outgoing::Large(body)).unwrap();
    // Chunks need the driver to copy; here only the lengths and order are checked.
    let mut chunks = Vec::new();
    for _ in 0..10 {
        p.run();
        for e in std::mem::take(&mut p.b.events) {
            if let Event::Chunk { slot, len, last } = e {
                p.b.core.release_recv(slot);
                chunks.push((len, last));
            }
        }
        p.advance(MS);
    }
    let total: u32 = chunks.iter().map(|c| c.0).sum();
    assert_eq!(total, 1000, "{chunks:?}");
    assert!(chunks.iter().all(|c| c.0 <= 256));
    assert_eq!(chunks.iter().filter(|c| c.1).count(), 1, "{chunks:?}");
    assert!(chunks.last().unwrap().1, "the last chunk says so");
}

#[test]
fn an_idle_link_sends_keepalives_and_a_silent_peer_fails_it() {
    let mut p = Pair::new(4);
    let keepalive = p.a.core.config().keepalive;
    p.advance(keepalive);
    let sent = p.run();
    assert!(sent >= 1, "a keepalive after {keepalive} ns of silence");
    assert!(p.a.core.is_running() && p.b.core.is_running());
    // Now B goes silent: A hears nothing for dead_after.
    let dead = p.a.core.config().dead_after;
    p.now += dead + 1;
    p.a.core.handle_timeout(p.now);
    let mut failed = false;
    while let Some(e) = p.a.core.poll_event() {
        failed |= matches!(e, Event::Failed(CoreError::KeepaliveTimeout(_)));
    }
    assert!(failed);
    assert!(!p.a.core.is_running());
    assert_eq!(
        p.a.core.alloc_send_slot(),
        None,
        "a failed link lends no slots"
    );
}

#[test]
fn a_graceful_close_reaches_the_peer_and_finishes() {
    let mut p = Pair::new(4);
    send_slot(&mut p.a.core, 5);
    p.a.core.close();
    let mut b_frames = Vec::new();
    for _ in 0..5 {
        p.run();
        for e in std::mem::take(&mut p.b.events) {
            match e {
                Event::Frame { slot, len } => {
                    p.b.core.release_recv(slot);
                    b_frames.push(len);
                }
                other => b_frames.push(match other {
                    Event::PeerClosed => u32::MAX,
                    _ => panic!("unexpected event at B: {other:?}"),
                }),
            }
        }
        p.advance(MS);
    }
    assert_eq!(b_frames, vec![5, u32::MAX], "the frame, then the close");
    assert!(
        p.a.events.iter().any(|e| matches!(e, Event::Closed)),
        "A's close finished: {:?}",
        p.a.events
    );
    assert!(!p.a.events.iter().any(|e| matches!(e, Event::Failed(_))));
    assert!(p.a.core.is_finished());
    assert_eq!(
        p.a.core.alloc_send_slot(),
        None,
        "a closed link lends no slots"
    );
}

#[test]
fn completions_of_an_older_generation_are_ignored_and_errors_fail_the_link() {
    let mut p = Pair::new(4);
    let stale = Completion {
        wr_id: 0,
        status: Ok(()),
        kind: CompletionKind::Recv,
        byte_len: 4,
        imm: Some(0),
    };
    p.a.core.handle_completion(&stale, 0);
    assert_eq!(p.a.core.stats().stale_completions, 1);
    assert!(p.a.core.is_running());
    let recv = p.a.posted.pop_front().unwrap();
    p.a.core.handle_completion(
        &Completion {
            wr_id: recv.wr_id,
            status: Err(WcError::RemoteAccess),
            kind: CompletionKind::Recv,
            byte_len: 0,
            imm: None,
        },
        0,
    );
    assert!(!p.a.core.is_running());
    assert!(matches!(
        p.a.core.poll_event(),
        Some(Event::Failed(CoreError::Completion { .. }))
    ));
}

#[test]
fn credits_ride_on_frames_until_the_peer_runs_short() {
    let mut p = Pair::new(32);
    // A few frames from A, read and released by B: A still has most of its credits, so B owes
    // them but sends no explicit update (they would ride on B's next frame).
    for i in 0..3 {
        send_slot(&mut p.a.core, 10 + i);
    }
    p.run();
    assert_eq!(take_frames(&mut p.b).len(), 3);
    p.run();
    assert!(!p.b.core.credits_low());
    assert_eq!(
        p.b.core.stats().credit_updates_sent,
        0,
        "no update while A has plenty"
    );
    // A frame from B carries them back.
    send_slot(&mut p.b.core, 5);
    p.run();
    assert_eq!(take_frames(&mut p.a).len(), 1);
    assert_eq!(
        p.a.core.peer_credits(),
        32,
        "B's frame returned all three credits"
    );
    assert_eq!(p.b.core.stats().credit_updates_sent, 0);
    // Now A sends until B's view of A's credits drops below a quarter of the window: the
    // released slots are reported at once, without waiting for a frame or the lazy timer.
    for i in 0..26 {
        send_slot(&mut p.a.core, 20 + i);
    }
    p.run();
    assert!(p.b.core.credits_low(), "A holds 6 of 32 credits");
    // One slot released (far below `ack_threshold`) is reported at once.
    let mut frames = std::mem::take(&mut p.b.events)
        .into_iter()
        .filter_map(|e| match e {
            Event::Frame { slot, .. } => Some(slot),
            _ => None,
        });
    let first = frames.next().expect("a frame");
    let before = p.a.core.peer_credits();
    p.b.core.release_recv(first);
    p.run();
    assert_eq!(
        p.b.core.stats().credit_updates_sent,
        1,
        "B must report a released slot while A runs short"
    );
    assert_eq!(p.a.core.peer_credits(), before + 1);
    for slot in frames {
        p.b.core.release_recv(slot);
    }
    p.run();
    assert!(!p.b.core.credits_low());
}
