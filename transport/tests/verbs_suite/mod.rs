//! The verbs conformance suite: data-path and error-path behaviour the RDMA backend relies on,
//! written against the `Verbs` trait so the same cases run on rdma-sim and on real verbs
//! (SoftRoCE or a NIC). A binding's test file implements [`VerbsHarness`] and expands
//! [`verbs_tests!`].

#![allow(unsafe_code)]
// The suite drives the verbs boundary directly: every `unsafe` below is a post or a slot
// access whose contract holds because each case touches arena bytes only while no request
// naming them is outstanding (it waits for the completions first), and the arena outlives
// the queue pairs.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdmq_transport::rdma::memory::{Arena, SlotRegion};
use rdmq_transport::rdma::verbs::{
    Completion, CompletionKind, Payload, QpConfig, RecvRequest, Registration, RemoteAccess,
    RemoteBuf, SendOp, SendRequest, Sge, Verbs, VerbsError, VerbsQp, WcError,
};

/// What a binding provides.
pub trait VerbsHarness {
    /// The binding.
    type V: Verbs;
    /// Two opened devices (or one device twice) whose QPs can reach each other.
    fn pair(&self) -> (Self::V, Self::V);
    /// Scale for timeouts (emulated devices are slow).
    fn time_scale(&self) -> u32 {
        1
    }
    /// True if the binding implements the strict, portable reading of behaviours that real
    /// providers leave open: posting to an errored QP fails, unsignaled send slots stay taken
    /// until a later signaled send completes, a CQ holds exactly its requested size and an
    /// overflow fails the next poll. rdma-sim does (so code tested on it is safe everywhere);
    /// real providers may be laxer (rxe frees unsignaled slots, rounds CQ sizes up, and reports
    /// overflow only as an asynchronous event).
    fn strict(&self) -> bool {
        true
    }
}

pub const ARENA: usize = 64 * 1024;
const PAGE: usize = 4096;

/// One side: device, memory, queue pair.
pub struct Side<V: Verbs> {
    pub verbs: V,
    pub arena: Arc<Arena>,
    /// The arena as 4 KiB pages: the test's only way to its bytes (checked out while touched).
    pub pages: Arc<SlotRegion>,
    pub reg: Registration,
    pub qp: V::Qp,
}

impl<V: Verbs> Side<V> {
    /// Copies `data` to arena offset `offset` (across pages as needed).
    pub fn write(&self, offset: usize, data: &[u8]) {
        let mut done = 0;
        while done < data.len() {
            let (page, at) = ((offset + done) / PAGE, (offset + done) % PAGE);
            let n = (PAGE - at).min(data.len() - done);
            // SAFETY: see the module note.
            let mut slot = unsafe { self.pages.checkout(page as u32) };
            slot.as_mut_slice()[at..at + n].copy_from_slice(&data[done..done + n]);
            done += n;
        }
    }

    /// Copies arena bytes at `offset` into `out`.
    pub fn read(&self, offset: usize, out: &mut [u8]) {
        let mut done = 0;
        while done < out.len() {
            let (page, at) = ((offset + done) / PAGE, (offset + done) % PAGE);
            let n = (PAGE - at).min(out.len() - done);
            // SAFETY: see the module note.
            let slot = unsafe { self.pages.checkout(page as u32) };
            out[done..done + n].copy_from_slice(&slot.as_slice()[at..at + n]);
            done += n;
        }
    }

    pub fn sge(&self, offset: usize, len: u32) -> Sge {
        Sge {
            addr: self.arena.addr() + offset as u64,
            len,
            lkey: self.reg.lkey,
        }
    }

    pub fn remote(&self, offset: usize) -> RemoteBuf {
        RemoteBuf {
            addr: self.arena.addr() + offset as u64,
            rkey: self.reg.rkey,
        }
    }

    pub fn post_recvs(&mut self, ids: std::ops::Range<u64>, offset: usize, len: u32) {
        let reqs: Vec<_> = ids
            .map(|id| RecvRequest {
                wr_id: id,
                sge: self.sge(offset, len),
            })
            .collect();
        // SAFETY: see the module note.
        unsafe { self.qp.post_recv(&reqs) }.expect("post_recv");
    }

    /// Posts `reqs` with one doorbell.
    pub fn post(&mut self, reqs: &[SendRequest<'_>]) -> Result<(), VerbsError> {
        // SAFETY: see the module note.
        unsafe { self.qp.post_send(reqs) }
    }

    pub fn send(
        &mut self,
        wr_id: u64,
        op: SendOp,
        payload: Payload<'_>,
        signaled: bool,
    ) -> Result<(), VerbsError> {
        // SAFETY: see the module note.
        unsafe {
            self.qp.post_send(&[SendRequest {
                wr_id,
                op,
                payload,
                signaled,
                solicited: false,
            }])
        }
    }

    /// Polls until `n` completions arrived or `timeout` passed.
    pub fn wait(&mut self, n: usize, timeout: Duration) -> Vec<Completion> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < n && Instant::now() < deadline {
            let want = n - out.len();
            match self.qp.poll(&mut out, want) {
                Ok(0) => std::thread::sleep(Duration::from_micros(50)),
                Ok(_) => {}
                Err(e) => panic!("poll failed: {e}"),
            }
        }
        out
    }

    /// Asserts nothing more completes within `d`.
    pub fn expect_quiet(&mut self, d: Duration) {
        let extra = self.wait(1, d);
        assert!(extra.is_empty(), "unexpected completion {extra:?}");
    }
}

/// Set by a harness whose binding needs memfd-backed arenas (rdma-sim's shared-memory path).
pub static SHARED_ARENAS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn connect<V: Verbs>(a: V, b: V, ca: &QpConfig, cb: &QpConfig) -> (Side<V>, Side<V>) {
    let mk = |v: V, cfg: &QpConfig| {
        let arena = if SHARED_ARENAS.load(std::sync::atomic::Ordering::Relaxed) {
            Arena::shared(ARENA).expect("memfd arena")
        } else {
            Arena::new(ARENA)
        };
        let reg = v
            .register(&arena, RemoteAccess::ReadWrite)
            .expect("register");
        let qp = v.create_qp(cfg).expect("create_qp");
        let pages = SlotRegion::new(arena.clone(), 0, PAGE, ARENA / PAGE);
        Side {
            verbs: v,
            pages,
            arena,
            reg,
            qp,
        }
    };
    let mut a = mk(a, ca);
    let mut b = mk(b, cb);
    let (ea, eb) = (a.qp.endpoint(), b.qp.endpoint());
    a.qp.connect(&eb).expect("connect a");
    b.qp.connect(&ea).expect("connect b");
    (a, b)
}

fn pair<H: VerbsHarness>(h: &H, cfg: &QpConfig) -> (Side<H::V>, Side<H::V>) {
    let (a, b) = h.pair();
    connect(a, b, cfg, cfg)
}

fn secs<H: VerbsHarness>(h: &H, s: u64) -> Duration {
    Duration::from_secs(s * h.time_scale() as u64)
}

fn ok(c: &Completion, kind: CompletionKind) {
    assert_eq!(c.status, Ok(()), "{c:?}");
    assert_eq!(c.kind, kind, "{c:?}");
}

pub fn send_recv_ping_pong<H: VerbsHarness>(h: H) {
    let (mut a, mut b) = pair(&h, &QpConfig::default());
    for round in 0..100u64 {
        a.post_recvs(round..round + 1, 4096, 1024);
        b.post_recvs(round..round + 1, 4096, 1024);
        let ping = format!("ping {round}");
        a.write(0, ping.as_bytes());
        a.send(
            round,
            SendOp::Send,
            Payload::Sges(&[a.sge(0, ping.len() as u32)]),
            true,
        )
        .unwrap();
        let got = b.wait(1, secs(&h, 5));
        ok(&got[0], CompletionKind::Recv);
        assert_eq!(got[0].byte_len as usize, ping.len());
        let mut buf = vec![0u8; ping.len()];
        b.read(4096, &mut buf);
        assert_eq!(buf, ping.as_bytes());
        let pong = format!("pong {round}");
        b.write(0, pong.as_bytes());
        b.send(
            round,
            SendOp::Send,
            Payload::Sges(&[b.sge(0, pong.len() as u32)]),
            true,
        )
        .unwrap();
        let mut got = a.wait(2, secs(&h, 5));
        got.sort_by_key(|c| c.kind as u8);
        assert_eq!(got.len(), 2, "{got:?}");
        let recv = got.iter().find(|c| c.kind == CompletionKind::Recv).unwrap();
        ok(recv, CompletionKind::Recv);
        let sent = got.iter().find(|c| c.kind == CompletionKind::Send).unwrap();
        ok(sent, CompletionKind::Send);
        let mut buf = vec![0u8; pong.len()];
        a.read(4096, &mut buf);
        assert_eq!(buf, pong.as_bytes());
        b.wait(1, secs(&h, 5)); // b's send completion
    }
}

pub fn send_with_imm<H: VerbsHarness>(h: H) {
    let (mut a, mut b) = pair(&h, &QpConfig::default());
    b.post_recvs(7..8, 0, 64);
    a.write(0, b"imm!");
    a.send(
        1,
        SendOp::SendImm(0xDEAD_BEEF),
        Payload::Sges(&[a.sge(0, 4)]),
        false,
    )
    .unwrap();
    let got = b.wait(1, secs(&h, 5));
    ok(&got[0], CompletionKind::Recv);
    assert_eq!(
        (got[0].wr_id, got[0].byte_len, got[0].imm),
        (7, 4, Some(0xDEAD_BEEF))
    );
    a.expect_quiet(Duration::from_millis(50)); // unsignaled success: no completion
}

pub fn write_with_imm_into_ring<H: VerbsHarness>(h: H) {
    let (mut a, mut b) = pair(&h, &QpConfig::default());
    const SLOTS: usize = 16;
    const SIZE: usize = 100;
    for i in 0..64u32 {
        b.post_recvs(i as u64..i as u64 + 1, 0, 0);
        let msg: Vec<u8> = (0..SIZE).map(|j| (i as usize * 7 + j) as u8).collect();
        a.write(0, &msg);
        let slot = (i as usize % SLOTS) * 128;
        a.send(
            i as u64,
            SendOp::WriteImm(b.remote(8192 + slot), i),
            Payload::Sges(&[a.sge(0, SIZE as u32)]),
            true,
        )
        .unwrap();
        let sent = a.wait(1, secs(&h, 5));
        ok(&sent[0], CompletionKind::Write);
        let got = b.wait(1, secs(&h, 5));
        ok(&got[0], CompletionKind::RecvWriteImm);
        assert_eq!((got[0].imm, got[0].byte_len), (Some(i), SIZE as u32));
        let mut buf = vec![0u8; SIZE];
        b.read(8192 + slot, &mut buf);
        assert_eq!(buf, msg, "ring slot {slot} corrupted at message {i}");
    }
}

pub fn rdma_read<H: VerbsHarness>(h: H) {
    let cfg = QpConfig {
        remote_access: RemoteAccess::ReadWrite,
        ..QpConfig::default()
    };
    let (mut a, b) = pair(&h, &cfg);
    let pattern: Vec<u8> = (0..4096).map(|i| (i * 13 % 251) as u8).collect();
    b.write(16384, &pattern);
    a.send(
        9,
        SendOp::Read(b.remote(16384)),
        Payload::Sges(&[a.sge(32768, 4096)]),
        true,
    )
    .unwrap();
    let got = a.wait(1, secs(&h, 5));
    ok(&got[0], CompletionKind::Read);
    assert_eq!(got[0].byte_len, 4096);
    let mut buf = vec![0u8; 4096];
    a.read(32768, &mut buf);
    assert_eq!(buf, pattern);
}

pub fn inline_send_reuses_buffer_at_once<H: VerbsHarness>(h: H) {
    let (mut a, mut b) = pair(&h, &QpConfig::default());
    b.post_recvs(0..1, 0, 256);
    let mut data = *b"inline data, copied at post time";
    a.send(1, SendOp::Send, Payload::Inline(&data), true)
        .unwrap();
    data.fill(b'X');
    let got = b.wait(1, secs(&h, 5));
    ok(&got[0], CompletionKind::Recv);
    let mut buf = vec![0u8; data.len()];
    b.read(0, &mut buf);
    assert_eq!(&buf, b"inline data, copied at post time");
    let too_big = vec![0u8; 4096];
    assert!(
        a.send(2, SendOp::Send, Payload::Inline(&too_big), true)
            .is_err()
    );
}

pub fn unsignaled_sends_hold_slots_until_a_signaled_one_completes<H: VerbsHarness>(h: H) {
    let cfg = QpConfig {
        send_depth: 8,
        ..QpConfig::default()
    };
    let (mut a, mut b) = pair(&h, &cfg);
    b.post_recvs(0..200, 0, 0);
    // Signaled every 4th: 100 sends produce exactly 25 completions, and waiting for one
    // whenever the queue is full always frees room.
    let mut completions = Vec::new();
    for i in 0..100u64 {
        let signaled = i % 4 == 3;
        loop {
            match a.send(i, SendOp::Send, Payload::Sges(&[]), signaled) {
                Ok(()) => break,
                Err(VerbsError::QueueFull(_)) => {
                    let c = a.wait(1, secs(&h, 5));
                    assert_eq!(c.len(), 1, "send queue never drained");
                    completions.extend(c);
                }
                Err(e) => panic!("{e}"),
            }
        }
    }
    let rest = 25 - completions.len();
    completions.extend(a.wait(rest, secs(&h, 5)));
    a.expect_quiet(Duration::from_millis(50));
    assert_eq!(completions.len(), 25);
    for c in &completions {
        ok(c, CompletionKind::Send);
        assert_eq!(c.wr_id % 4, 3, "an unsignaled send completed: {c:?}");
    }
    assert_eq!(b.wait(100, secs(&h, 5)).len(), 100);
    if !h.strict() {
        return;
    }
    // Only unsignaled sends: their slots are never freed, the queue fills and stays full.
    let (mut a, mut b) = pair(&h, &cfg);
    b.post_recvs(0..16, 0, 0);
    for i in 0..8 {
        a.send(i, SendOp::Send, Payload::Sges(&[]), false).unwrap();
    }
    assert_eq!(b.wait(8, secs(&h, 5)).len(), 8);
    assert!(matches!(
        a.send(8, SendOp::Send, Payload::Sges(&[]), true),
        Err(VerbsError::QueueFull(_))
    ));
}

pub fn rnr_then_success_after_late_recv<H: VerbsHarness>(h: H) {
    let cfg = QpConfig {
        rnr_retry: 7,
        min_rnr_timer: Duration::from_millis(1),
        ..QpConfig::default()
    };
    let (mut a, mut b) = pair(&h, &cfg);
    a.write(0, b"late");
    a.send(1, SendOp::Send, Payload::Sges(&[a.sge(0, 4)]), true)
        .unwrap();
    std::thread::sleep(Duration::from_millis(30));
    a.expect_quiet(Duration::from_millis(1));
    b.post_recvs(5..6, 0, 64);
    let got = b.wait(1, secs(&h, 5));
    ok(&got[0], CompletionKind::Recv);
    assert_eq!(got[0].byte_len, 4);
    let sent = a.wait(1, secs(&h, 5));
    ok(&sent[0], CompletionKind::Send);
}

pub fn rnr_retry_exceeded<H: VerbsHarness>(h: H) {
    let cfg = QpConfig {
        rnr_retry: 2,
        min_rnr_timer: Duration::from_millis(1),
        ..QpConfig::default()
    };
    let (mut a, _b) = pair(&h, &cfg);
    let req = |wr_id| SendRequest {
        wr_id,
        op: SendOp::Send,
        payload: Payload::Sges(&[]),
        signaled: true,
        solicited: false,
    };
    a.post(&[req(1), req(2)]).unwrap();
    let got = a.wait(2, secs(&h, 5));
    assert_eq!(got[0].status, Err(WcError::RnrRetryExceeded), "{got:?}");
    assert_eq!(got[1].status, Err(WcError::Flushed), "{got:?}");
    // The QP is in error: a new request either fails to post or is flushed.
    match a.send(3, SendOp::Send, Payload::Sges(&[]), true) {
        Err(_) => {}
        Ok(()) => {
            assert!(
                !h.strict(),
                "posting to an errored QP must fail on strict bindings"
            );
            let got = a.wait(1, secs(&h, 5));
            assert_eq!(got[0].status, Err(WcError::Flushed), "{got:?}");
        }
    }
}

pub fn rkey_violation<H: VerbsHarness>(h: H) {
    let (mut a, b) = pair(&h, &QpConfig::default());
    let mut bad = b.remote(0);
    bad.rkey ^= 0x5A5A;
    let sge = [a.sge(0, 16)];
    let req = |wr_id, remote| SendRequest {
        wr_id,
        op: SendOp::Write(remote),
        payload: Payload::Sges(&sge),
        signaled: true,
        solicited: false,
    };
    // One doorbell, so the second request is queued before the first fails.
    a.post(&[req(1, bad), req(2, b.remote(0))]).unwrap();
    let got = a.wait(2, secs(&h, 5));
    assert_eq!(got[0].status, Err(WcError::RemoteAccess), "{got:?}");
    assert_eq!(got[1].status, Err(WcError::Flushed), "{got:?}");
}

pub fn bounds_violations<H: VerbsHarness>(h: H) {
    // Remote: past the end of the peer's registration.
    let (mut a, b) = pair(&h, &QpConfig::default());
    a.send(
        1,
        SendOp::Write(b.remote(ARENA - 8)),
        Payload::Sges(&[a.sge(0, 64)]),
        true,
    )
    .unwrap();
    let got = a.wait(1, secs(&h, 5));
    assert_eq!(got[0].status, Err(WcError::RemoteAccess), "{got:?}");
    // Local: an SGE past the end of our own registration.
    let (mut a, mut b) = pair(&h, &QpConfig::default());
    b.post_recvs(0..1, 0, 1024);
    a.send(
        1,
        SendOp::Send,
        Payload::Sges(&[a.sge(ARENA - 8, 64)]),
        true,
    )
    .unwrap();
    let got = a.wait(1, secs(&h, 5));
    assert_eq!(got[0].status, Err(WcError::LocalProtection), "{got:?}");
}

pub fn error_state_flushes_everything<H: VerbsHarness>(h: H) {
    let (_a, mut b) = pair(&h, &QpConfig::default());
    b.post_recvs(0..5, 0, 64);
    b.qp.set_error().unwrap();
    let got = b.wait(5, secs(&h, 5));
    assert_eq!(got.len(), 5);
    for (i, c) in got.iter().enumerate() {
        assert_eq!(
            (c.wr_id, c.status, c.kind),
            (i as u64, Err(WcError::Flushed), CompletionKind::Recv)
        );
    }
    if h.strict() {
        assert!(b.send(9, SendOp::Send, Payload::Sges(&[]), true).is_err());
    }
}

pub fn cq_overflow_is_reported<H: VerbsHarness>(h: H) {
    if !h.strict() {
        eprintln!("skipped: this provider reports CQ overflow as an asynchronous event");
        return;
    }
    let cfg = QpConfig {
        cq_depth: 4,
        ..QpConfig::default()
    };
    let (mut a, mut b) = pair(&h, &cfg);
    b.post_recvs(0..8, 0, 64);
    for i in 0..8 {
        // Signaled so the requester's own CQ stays small; recv CQ gets 8 > 4.
        let _ = a.send(i, SendOp::Send, Payload::Sges(&[]), i == 3 || i == 7);
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(50));
    let deadline = Instant::now() + secs(&h, 5);
    let mut out = Vec::new();
    let err = loop {
        match b.qp.poll(&mut out, 16) {
            Err(e) => break Some(e),
            Ok(0) if Instant::now() > deadline => break None,
            Ok(_) => {}
        }
    };
    assert_eq!(
        err,
        Some(VerbsError::CqOverflow),
        "completions seen: {out:?}"
    );
    assert!(out.len() <= 4);
}

pub fn event_channel_notifies_once_per_arm<H: VerbsHarness>(h: H) {
    let (mut a, mut b) = pair(&h, &QpConfig::default());
    assert!(b.qp.channel().is_some());
    b.post_recvs(0..4, 0, 64);
    b.qp.arm(true).unwrap();
    // Not solicited: no notification on a solicited-only receive CQ.
    a.post(&[SendRequest {
        wr_id: 1,
        op: SendOp::Send,
        payload: Payload::Sges(&[]),
        signaled: false,
        solicited: false,
    }])
    .unwrap();
    assert_eq!(b.wait(1, secs(&h, 5)).len(), 1);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(b.qp.take_events(), 0);
    // Solicited: exactly one notification per arm.
    a.post(&[SendRequest {
        wr_id: 2,
        op: SendOp::Send,
        payload: Payload::Sges(&[]),
        signaled: false,
        solicited: true,
    }])
    .unwrap();
    let deadline = Instant::now() + secs(&h, 5);
    while b.qp.take_events() == 0 {
        assert!(Instant::now() < deadline, "no event");
        std::thread::sleep(Duration::from_micros(100));
    }
    a.post(&[SendRequest {
        wr_id: 3,
        op: SendOp::Send,
        payload: Payload::Sges(&[]),
        signaled: false,
        solicited: true,
    }])
    .unwrap();
    assert_eq!(b.wait(2, secs(&h, 5)).len(), 2);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(b.qp.take_events(), 0, "notified without re-arming");
}

/// Expands one `#[test]` per case.
#[macro_export]
macro_rules! verbs_tests {
    (skip_unless $cond:expr, $why:expr, $harness:expr) => {
        $crate::verbs_tests!(@skippable $cond, $why, $harness;
            send_recv_ping_pong,
            send_with_imm,
            write_with_imm_into_ring,
            rdma_read,
            inline_send_reuses_buffer_at_once,
            unsignaled_sends_hold_slots_until_a_signaled_one_completes,
            rnr_then_success_after_late_recv,
            rnr_retry_exceeded,
            rkey_violation,
            bounds_violations,
            error_state_flushes_everything,
            cq_overflow_is_reported,
            event_channel_notifies_once_per_arm
        );
    };
    (@skippable $cond:expr, $why:expr, $harness:expr; $($case:ident),*) => {
        $(
            #[test]
            fn $case() {
                if !$cond {
                    eprintln!("skipped {}: {}", stringify!($case), $why);
                    return;
                }
                verbs_suite::$case($harness);
            }
        )*
    };
    ($harness:expr) => {
        $crate::verbs_tests!(@case $harness;
            send_recv_ping_pong,
            send_with_imm,
            write_with_imm_into_ring,
            rdma_read,
            inline_send_reuses_buffer_at_once,
            unsignaled_sends_hold_slots_until_a_signaled_one_completes,
            rnr_then_success_after_late_recv,
            rnr_retry_exceeded,
            rkey_violation,
            bounds_violations,
            error_state_flushes_everything,
            cq_overflow_is_reported,
            event_channel_notifies_once_per_arm
        );
    };
    (@case $harness:expr; $($case:ident),*) => {
        $(
            #[test]
            fn $case() {
                verbs_suite::$case($harness);
            }
        )*
    };
}
