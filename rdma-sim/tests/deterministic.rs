//! Deterministic mode: the network moves only when the test steps it, with virtual time, so
//! loss, RNR and delayed completions are reproducible to the event.

use std::sync::Arc;
use std::time::Duration;

use rdma_sim::{
    Access, AsyncEvent, CompletionQueue, Context, Fabric, Opcode, OwnedRegion, ProtectionDomain,
    QpAttr, QpCaps, QpInitAttr, QpState, QueuePair, RecvWr, SendWr, WcOpcode, WcStatus,
    WorkCompletion,
};

struct End {
    ctx: Context,
    _pd: ProtectionDomain,
    cq: CompletionQueue,
    qp: QueuePair,
    mem: OwnedRegion,
}

fn pair(fabric: &Arc<Fabric>, attr: QpAttr, cq_cap: usize) -> (End, End) {
    let devs = fabric.devices();
    let mk = |i: usize| {
        let ctx = devs[i].open().unwrap();
        let pd = ctx.alloc_pd();
        let cq = ctx.create_cq(cq_cap, None).unwrap();
        let caps = QpCaps {
            max_send_wr: 512,
            max_recv_wr: 512,
            ..QpCaps::default()
        };
        let qp = pd
            .create_qp(QpInitAttr {
                send_cq: &cq,
                recv_cq: &cq,
                caps,
            })
            .unwrap();
        let mem = pd
            .alloc_region(1 << 16, Access::LOCAL_WRITE | Access::REMOTE_WRITE)
            .unwrap();
        End {
            ctx,
            _pd: pd,
            cq,
            qp,
            mem,
        }
    };
    let (a, b) = (mk(0), mk(1));
    let attr = QpAttr {
        access: Access::REMOTE_WRITE,
        ..attr
    };
    a.qp.connect(b.qp.address(), &attr).unwrap();
    b.qp.connect(a.qp.address(), &attr).unwrap();
    (a, b)
}

fn send_imm(wr_id: u64, imm: u32) -> SendWr<'static> {
    SendWr {
        wr_id,
        opcode: Opcode::SendWithImm,
        sges: &[],
        inline: None,
        imm: Some(imm.to_be()),
        signaled: true,
        solicited: false,
        remote: None,
    }
}

fn drain(cq: &CompletionQueue) -> Vec<WorkCompletion> {
    let mut out = Vec::new();
    let mut buf = [WorkCompletion {
        wr_id: 0,
        status: WcStatus::Success,
        opcode: WcOpcode::Send,
        byte_len: 0,
        imm: None,
        qp_num: 0,
        src_qp: 0,
        solicited: false,
    }; 64];
    loop {
        let n = cq.poll(&mut buf).unwrap();
        out.extend_from_slice(&buf[..n]);
        if n < buf.len() {
            return out;
        }
    }
}

fn recvs(n: u64) -> Vec<RecvWr<'static>> {
    (0..n).map(|wr_id| RecvWr { wr_id, sges: &[] }).collect()
}

#[test]
fn nothing_moves_until_stepped() {
    let fabric = Fabric::deterministic(1, 2);
    let (a, b) = pair(&fabric, QpAttr::default(), 64);
    b.qp.post_recv(&recvs(1)).unwrap();
    a.qp.post_send(&[send_imm(1, 42)]).unwrap();
    assert!(drain(&a.cq).is_empty() && drain(&b.cq).is_empty());
    assert!(fabric.pending_events() > 0);
    assert!(fabric.run_until_idle(100) > 0);
    let got = drain(&b.cq);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].imm.map(u32::from_be), Some(42));
    assert_eq!(drain(&a.cq)[0].status, WcStatus::Success);
    assert_eq!(fabric.stats().net.retransmissions, 0);
    assert_eq!(fabric.stats().net.packets, 2, "one request, one ack");
}

#[test]
fn rnr_backs_off_in_virtual_time_until_a_receive_is_posted() {
    let fabric = Fabric::deterministic(2, 2);
    let attr = QpAttr {
        min_rnr_timer: Duration::from_millis(10),
        rnr_retry: 7,
        ..QpAttr::default()
    };
    let (a, b) = pair(&fabric, attr, 64);
    a.qp.post_send(&[send_imm(1, 7)]).unwrap();
    fabric.advance(Duration::from_millis(35));
    assert!(drain(&a.cq).is_empty() && drain(&b.cq).is_empty());
    assert!(fabric.stats().net.rnr_naks >= 3, "{:?}", fabric.stats());
    b.qp.post_recv(&recvs(1)).unwrap();
    fabric.advance(Duration::from_millis(10));
    assert_eq!(drain(&b.cq).len(), 1);
    assert_eq!(drain(&a.cq)[0].status, WcStatus::Success);
}

#[test]
fn lost_packets_exhaust_retries() {
    let fabric = Fabric::deterministic(3, 2);
    let attr = QpAttr {
        timeout: Duration::from_millis(10),
        retry_cnt: 3,
        ..QpAttr::default()
    };
    let (a, b) = pair(&fabric, attr, 64);
    b.qp.post_recv(&recvs(2)).unwrap();
    fabric.set_drop_rate(1.0);
    a.qp.post_send(&[send_imm(1, 1), send_imm(2, 2)]).unwrap();
    fabric.run_until_idle(1000);
    let got = drain(&a.cq);
    assert_eq!(
        got.iter().map(|c| c.status).collect::<Vec<_>>(),
        vec![WcStatus::RetryExcErr, WcStatus::WrFlushErr]
    );
    assert_eq!(a.qp.state(), QpState::Err);
    assert_eq!(fabric.stats().net.retransmissions, 3);
    assert_eq!(
        fabric.now(),
        Duration::from_millis(40),
        "initial timeout plus three retries"
    );
    assert!(drain(&b.cq).is_empty());
}

#[test]
fn a_lossy_link_still_delivers_everything_in_order() {
    let fabric = Fabric::deterministic(4, 2);
    let attr = QpAttr {
        timeout: Duration::from_millis(5),
        retry_cnt: 7,
        ..QpAttr::default()
    };
    let (a, b) = pair(&fabric, attr, 1024);
    b.qp.post_recv(&recvs(300)).unwrap();
    fabric.set_drop_rate(0.2);
    for chunk in 0..3u32 {
        let wrs: Vec<_> = (0..100)
            .map(|i| send_imm((chunk * 100 + i) as u64, chunk * 100 + i))
            .collect();
        a.qp.post_send(&wrs).unwrap();
        fabric.run_until_idle(100_000);
        drain(&a.cq);
    }
    let got: Vec<u32> = drain(&b.cq)
        .iter()
        .map(|c| c.imm.map(u32::from_be).unwrap())
        .collect();
    assert_eq!(got, (0..300).collect::<Vec<_>>());
    let s = fabric.stats().net;
    assert!(s.dropped > 0 && s.retransmissions > 0, "{s:?}");
}

#[test]
fn link_down_then_up_recovers_before_retries_run_out() {
    let fabric = Fabric::deterministic(5, 2);
    let attr = QpAttr {
        timeout: Duration::from_millis(10),
        retry_cnt: 5,
        ..QpAttr::default()
    };
    let (a, b) = pair(&fabric, attr, 64);
    b.qp.post_recv(&recvs(1)).unwrap();
    let gid = fabric.devices()[1].gid();
    fabric.set_link_up(gid, false);
    a.qp.post_send(&[send_imm(1, 9)]).unwrap();
    fabric.advance(Duration::from_millis(25));
    assert!(drain(&b.cq).is_empty());
    fabric.set_link_up(gid, true);
    fabric.advance(Duration::from_millis(20));
    assert_eq!(drain(&b.cq).len(), 1);
    assert_eq!(drain(&a.cq)[0].status, WcStatus::Success);
}

#[test]
fn delayed_completions_arrive_later_and_in_order() {
    let fabric = Fabric::deterministic(6, 2);
    let (a, b) = pair(&fabric, QpAttr::default(), 64);
    fabric.set_completion_delay(Some((Duration::from_millis(1), Duration::from_millis(5))));
    b.qp.post_recv(&recvs(10)).unwrap();
    let wrs: Vec<_> = (0..10).map(|i| send_imm(i, i as u32)).collect();
    a.qp.post_send(&wrs).unwrap();
    // Deliver the packets only (everything due at time 0): no completion is visible yet.
    while fabric.next_event_at() == Some(Duration::ZERO) {
        fabric.step();
    }
    assert!(drain(&a.cq).is_empty() && drain(&b.cq).is_empty());
    fabric.advance(Duration::from_millis(10));
    let got: Vec<u32> = drain(&b.cq)
        .iter()
        .map(|c| c.imm.map(u32::from_be).unwrap())
        .collect();
    assert_eq!(got, (0..10).collect::<Vec<_>>());
}

#[test]
fn the_same_seed_gives_the_same_history() {
    let run = |seed: u64| {
        let fabric = Fabric::deterministic(seed, 2);
        let attr = QpAttr {
            timeout: Duration::from_millis(3),
            ..QpAttr::default()
        };
        let (a, b) = pair(&fabric, attr, 1024);
        b.qp.post_recv(&recvs(200)).unwrap();
        fabric.set_drop_rate(0.3);
        let wrs: Vec<_> = (0..200).map(|i| send_imm(i, i as u32)).collect();
        a.qp.post_send(&wrs).unwrap();
        fabric.run_until_idle(1_000_000);
        (
            fabric.stats().net,
            fabric.now(),
            drain(&a.cq).len(),
            drain(&b.cq).len(),
        )
    };
    let first = run(77);
    assert_eq!(first, run(77));
    assert_eq!(first.3, 200);
    assert_ne!(
        first.0,
        run(78).0,
        "a different seed should lose different packets"
    );
}

#[test]
fn cq_overflow_raises_an_async_event_and_fails_the_qp() {
    let fabric = Fabric::deterministic(7, 2);
    let (a, b) = pair(&fabric, QpAttr::default(), 4);
    b.qp.post_recv(&recvs(8)).unwrap();
    let wrs: Vec<_> = (0..8)
        .map(|i| SendWr {
            signaled: false,
            ..send_imm(i, 0)
        })
        .collect();
    a.qp.post_send(&wrs).unwrap();
    fabric.run_until_idle(10_000);
    assert_eq!(
        b.ctx.poll_async_event(),
        Some(AsyncEvent::CqOverflow { cq: b.cq.id() })
    );
    assert_eq!(b.qp.state(), QpState::Err);
    assert!(
        b.cq.poll(&mut [send_imm_wc(); 1]).is_err(),
        "an overflowed CQ is in error"
    );
    let _ = (&a.mem, &b.mem);
}

fn send_imm_wc() -> WorkCompletion {
    WorkCompletion {
        wr_id: 0,
        status: WcStatus::Success,
        opcode: WcOpcode::Send,
        byte_len: 0,
        imm: None,
        qp_num: 0,
        src_qp: 0,
        solicited: false,
    }
}
