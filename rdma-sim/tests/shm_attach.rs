//! The shared-memory data path between two cross-process fabrics of one process (each is
//! "another process" to the other: different GIDs, attach over the control socket, memfd
//! mappings): error statuses, CQ overflow, unsignaled sends and solicited-only notification.

use std::sync::Arc;
use std::time::Duration;

use rdma_sim::{
    Access, AsyncEvent, CompletionChannel, CompletionQueue, Context, Fabric, FabricConfig, Opcode,
    OwnedRegion, ProtectionDomain, QpAttr, QpCaps, QpInitAttr, QpState, QueuePair, RecvWr, SendWr,
    VerbsError, WcOpcode, WcStatus, WorkCompletion,
};

struct End {
    fabric: Arc<Fabric>,
    ctx: Context,
    _pd: ProtectionDomain,
    channel: CompletionChannel,
    cq: CompletionQueue,
    qp: QueuePair,
    mem: OwnedRegion,
}

fn fabric() -> Arc<Fabric> {
    Fabric::new(FabricConfig {
        devices: 1,
        cross_process: true,
        ..FabricConfig::default()
    })
}

fn end(cq_depth: usize) -> End {
    let fabric = fabric();
    let ctx = fabric.devices()[0].open().unwrap();
    let pd = ctx.alloc_pd();
    let channel = ctx.create_comp_channel().unwrap();
    let cq = ctx.create_cq(cq_depth, Some(&channel)).unwrap();
    let qp = pd
        .create_qp(QpInitAttr {
            send_cq: &cq,
            recv_cq: &cq,
            caps: QpCaps::default(),
        })
        .unwrap();
    let mem = pd.alloc_region(4096, Access::LOCAL_WRITE).unwrap();
    End {
        fabric,
        ctx,
        _pd: pd,
        channel,
        cq,
        qp,
        mem,
    }
}

fn pair(cq_depth: usize) -> (End, End) {
    let (a, b) = (end(cq_depth), end(cq_depth));
    let attr = QpAttr::default();
    a.qp.connect(b.qp.address(), &attr).unwrap();
    b.qp.connect(a.qp.address(), &attr).unwrap();
    (a, b)
}

fn send(inline: &[u8], wr_id: u64, signaled: bool, solicited: bool) -> SendWr<'_> {
    SendWr {
        wr_id,
        opcode: Opcode::Send,
        sges: &[],
        inline: Some(inline),
        imm: None,
        signaled,
        solicited,
        remote: None,
    }
}

/// Posts zero-length receives with ids `ids` (enough for SENDs without payload).
fn post_empty_recvs(qp: &rdma_sim::QueuePair, ids: std::ops::Range<u64>) {
    let recvs: Vec<RecvWr<'_>> = ids
        .map(|i| RecvWr {
            wr_id: i,
            sges: &[],
        })
        .collect();
    qp.post_recv(&recvs).unwrap();
}

fn poll(cq: &CompletionQueue) -> Result<Vec<WorkCompletion>, VerbsError> {
    let mut wcs = vec![
        WorkCompletion {
            wr_id: 0,
            status: WcStatus::Success,
            opcode: WcOpcode::Send,
            byte_len: 0,
            imm: None,
            qp_num: 0,
            src_qp: 0,
            solicited: false,
        };
        64
    ];
    let n = cq.poll(&mut wcs)?;
    wcs.truncate(n);
    Ok(wcs)
}

#[test]
fn sends_are_placed_without_packets() {
    let (a, b) = pair(64);
    let sge = [b.mem.sge(0, 64)];
    b.qp.post_recv(&[RecvWr {
        wr_id: 5,
        sges: &sge,
    }])
    .unwrap();
    assert_eq!(b.cq.ready_hint(), 0);
    a.qp.post_send(&[send(b"placed", 1, true, false)]).unwrap();
    assert_eq!(b.cq.ready_hint(), 1, "the hint sees the peer's completion");
    assert!(b.cq.ready_counter().get() > 0);
    let wc = poll(&b.cq).unwrap();
    assert_eq!(
        (wc[0].wr_id, wc[0].status, wc[0].byte_len, wc[0].src_qp),
        (5, WcStatus::Success, 6, a.qp.qp_num())
    );
    let mut got = [0u8; 6];
    b.mem.read(0, &mut got);
    assert_eq!(&got, b"placed");
    assert_eq!(poll(&a.cq).unwrap()[0].wr_id, 1);
    let s = a.fabric.stats();
    assert_eq!(s.net.packets, 0);
    assert_eq!((s.placements, s.bytes_placed), (1, 6));
    assert!(s.total() >= s.placement_time);
}

#[test]
fn a_too_small_receive_fails_both_sides() {
    let (a, b) = pair(64);
    let sge = [b.mem.sge(0, 2)];
    b.qp.post_recv(&[RecvWr {
        wr_id: 5,
        sges: &sge,
    }])
    .unwrap();
    b.qp.post_recv(&[RecvWr {
        wr_id: 6,
        sges: &sge,
    }])
    .unwrap();
    a.qp.post_send(&[send(b"too long", 1, true, false)])
        .unwrap();
    assert_eq!(poll(&a.cq).unwrap()[0].status, WcStatus::RemInvReqErr);
    assert_eq!(a.qp.state(), QpState::Err);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut got = Vec::new();
    while got.len() < 2 && std::time::Instant::now() < deadline {
        got.extend(poll(&b.cq).unwrap());
        std::thread::sleep(Duration::from_millis(1));
    }
    let st: Vec<_> = got.iter().map(|w| (w.wr_id, w.status)).collect();
    assert_eq!(
        st,
        [(5, WcStatus::LocLenErr), (6, WcStatus::WrFlushErr)],
        "the receiver's QP went to ERR and flushed"
    );
    assert_eq!(b.qp.state(), QpState::Err);
}

#[test]
fn overflowing_the_peers_cq_puts_it_in_error() {
    let (a, b) = pair(2);
    post_empty_recvs(&b.qp, 0..4);
    for i in 0..3 {
        a.qp.post_send(&[send(b"", i, false, false)]).unwrap();
    }
    assert!(matches!(poll(&b.cq), Err(VerbsError::CqOverflow)));
    assert_eq!(
        b.ctx.poll_async_event(),
        Some(AsyncEvent::CqOverflow { cq: b.cq.id() })
    );
    assert_eq!(b.qp.state(), QpState::Err);
}

#[test]
fn unsignaled_sends_free_their_slots_with_the_next_signaled_one() {
    let (a, b) = pair(256);
    post_empty_recvs(&b.qp, 0..128);
    let wrs: Vec<SendWr<'_>> = (0..128).map(|i| send(b"", i, i == 127, false)).collect();
    a.qp.post_send(&wrs).unwrap();
    assert_eq!(poll(&a.cq).unwrap().len(), 1, "one signaled completion");
    post_empty_recvs(&b.qp, 0..1);
    a.qp.post_send(&[send(b"", 200, true, false)]).unwrap();
    assert_eq!(poll(&b.cq).unwrap().len(), 64);
}

#[test]
fn solicited_only_arming_rings_only_for_solicited_sends() {
    let (a, b) = pair(64);
    post_empty_recvs(&b.qp, 0..4);
    // Attached: the ring exists once connected; arm it for solicited completions only.
    b.cq.req_notify(true).unwrap();
    a.qp.post_send(&[send(b"", 1, false, false)]).unwrap();
    assert!(
        !b.channel.wait(Duration::from_millis(20)),
        "unsolicited: no doorbell"
    );
    a.qp.post_send(&[send(b"", 2, false, true)]).unwrap();
    assert!(
        b.channel.wait(Duration::from_millis(1000)),
        "solicited: doorbell"
    );
    assert_eq!(b.channel.get_events(), 1);
    a.qp.post_send(&[send(b"", 3, false, true)]).unwrap();
    assert!(
        !b.channel.wait(Duration::from_millis(20)),
        "one arm, one doorbell"
    );
    assert_eq!(a.fabric.stats().doorbells, 1);
    assert_eq!(poll(&b.cq).unwrap().len(), 3);
}
