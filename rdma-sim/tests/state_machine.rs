//! The RC queue pair state machine and the limits enforced at post time.

use rdma_sim::{
    Access, Fabric, FabricConfig, Opcode, QpAttr, QpCaps, QpInitAttr, QpState, RecvWr, SendWr,
    VerbsError,
};

fn send(wr_id: u64) -> SendWr<'static> {
    SendWr {
        wr_id,
        opcode: Opcode::Send,
        sges: &[],
        inline: None,
        imm: None,
        signaled: true,
        solicited: false,
        remote: None,
    }
}

#[test]
fn transitions_follow_the_rc_state_machine() {
    let fabric = Fabric::new(FabricConfig::default());
    let ctx = fabric.devices()[0].open().unwrap();
    let pd = ctx.alloc_pd();
    let cq = ctx.create_cq(16, None).unwrap();
    let qp = pd
        .create_qp(QpInitAttr {
            send_cq: &cq,
            recv_cq: &cq,
            caps: QpCaps::default(),
        })
        .unwrap();
    let peer = ctx.alloc_pd();
    let other = peer
        .create_qp(QpInitAttr {
            send_cq: &cq,
            recv_cq: &cq,
            caps: QpCaps::default(),
        })
        .unwrap();
    let attr = QpAttr {
        remote: Some(other.address()),
        ..QpAttr::default()
    };
    assert_eq!(qp.state(), QpState::Reset);
    // Nothing may be posted in RESET.
    assert!(matches!(
        qp.post_send(&[send(1)]),
        Err(VerbsError::InvalidState(QpState::Reset))
    ));
    assert!(
        qp.post_recv(&[RecvWr {
            wr_id: 1,
            sges: &[]
        }])
        .is_err()
    );
    for (from_state, to) in [
        (QpState::Reset, QpState::Rtr),
        (QpState::Reset, QpState::Rts),
    ] {
        assert!(
            matches!(qp.modify(to, &attr), Err(VerbsError::IllegalTransition { from, .. }) if from == from_state),
            "{from_state:?} -> {to:?} accepted"
        );
    }
    qp.modify(QpState::Init, &attr).unwrap();
    qp.post_recv(&[RecvWr {
        wr_id: 1,
        sges: &[],
    }])
    .unwrap();
    assert!(matches!(
        qp.post_send(&[send(1)]),
        Err(VerbsError::InvalidState(QpState::Init))
    ));
    assert!(
        qp.modify(QpState::Rts, &attr).is_err(),
        "INIT -> RTS must be refused"
    );
    // RTR needs the peer's address.
    assert!(qp.modify(QpState::Rtr, &QpAttr::default()).is_err());
    qp.modify(QpState::Rtr, &attr).unwrap();
    assert!(matches!(
        qp.post_send(&[send(1)]),
        Err(VerbsError::InvalidState(QpState::Rtr))
    ));
    qp.modify(QpState::Rts, &attr).unwrap();
    qp.modify(QpState::Rts, &attr).unwrap();
    assert!(
        qp.modify(QpState::Init, &attr).is_err(),
        "RTS -> INIT must be refused"
    );
    qp.modify(QpState::Err, &attr).unwrap();
    assert!(matches!(
        qp.post_send(&[send(1)]),
        Err(VerbsError::QpInError)
    ));
    assert!(
        qp.modify(QpState::Rts, &attr).is_err(),
        "ERR -> RTS must be refused"
    );
    qp.modify(QpState::Reset, &attr).unwrap();
    qp.modify(QpState::Init, &attr).unwrap();
    assert_eq!(qp.state(), QpState::Init);
}

#[test]
fn queue_depth_sge_and_inline_limits_are_enforced() {
    let fabric = Fabric::new(FabricConfig::default());
    let devs = fabric.devices();
    let (ca, cb) = (devs[0].open().unwrap(), devs[1].open().unwrap());
    let (pa, pb) = (ca.alloc_pd(), cb.alloc_pd());
    let (qa_cq, qb_cq) = (
        ca.create_cq(64, None).unwrap(),
        cb.create_cq(64, None).unwrap(),
    );
    let caps = QpCaps {
        max_send_wr: 4,
        max_recv_wr: 2,
        max_send_sge: 1,
        max_recv_sge: 1,
        max_inline_data: 16,
    };
    let a = pa
        .create_qp(QpInitAttr {
            send_cq: &qa_cq,
            recv_cq: &qa_cq,
            caps,
        })
        .unwrap();
    let b = pb
        .create_qp(QpInitAttr {
            send_cq: &qb_cq,
            recv_cq: &qb_cq,
            caps,
        })
        .unwrap();
    let attr = QpAttr {
        access: Access::REMOTE_WRITE,
        ..QpAttr::default()
    };
    a.connect(b.address(), &attr).unwrap();
    b.connect(a.address(), &attr).unwrap();
    // Receive queue depth 2.
    b.post_recv(&[
        RecvWr {
            wr_id: 1,
            sges: &[],
        },
        RecvWr {
            wr_id: 2,
            sges: &[],
        },
    ])
    .unwrap();
    assert!(matches!(
        b.post_recv(&[RecvWr {
            wr_id: 3,
            sges: &[]
        }]),
        Err(VerbsError::RecvQueueFull { depth: 2 })
    ));
    // Inline limit 16.
    let big = [0u8; 17];
    let mut wr = send(1);
    wr.inline = Some(&big);
    assert!(matches!(
        a.post_send(&[wr]),
        Err(VerbsError::InlineTooLarge { len: 17, max: 16 })
    ));
    // SGE limit 1.
    let region = pa.alloc_region(64, Access::LOCAL_WRITE).unwrap();
    let sges = [region.sge(0, 8), region.sge(8, 8)];
    let mut wr = send(1);
    wr.sges = &sges;
    assert!(matches!(
        a.post_send(&[wr]),
        Err(VerbsError::TooManySges { count: 2, max: 1 })
    ));
    // Opcode consistency.
    let mut wr = send(1);
    wr.opcode = Opcode::RdmaWrite;
    assert!(matches!(
        a.post_send(&[wr]),
        Err(VerbsError::InvalidArgument(_))
    ));
    let mut wr = send(1);
    wr.opcode = Opcode::SendWithImm;
    assert!(matches!(
        a.post_send(&[wr]),
        Err(VerbsError::InvalidArgument(_))
    ));
    // Send queue depth 4: a batch of 5 is refused whole.
    let five: Vec<_> = (0..5).map(send).collect();
    assert!(matches!(
        a.post_send(&five),
        Err(VerbsError::SendQueueFull { depth: 4, .. })
    ));
}

#[test]
fn registration_checks_and_keys() {
    let fabric = Fabric::new(FabricConfig::default());
    let ctx = fabric.devices()[0].open().unwrap();
    let pd = ctx.alloc_pd();
    let a = pd
        .alloc_region(4096, Access::LOCAL_WRITE | Access::REMOTE_WRITE)
        .unwrap();
    let b = pd.alloc_region(4096, Access::LOCAL_WRITE).unwrap();
    assert_ne!(
        a.mr().lkey(),
        a.mr().rkey(),
        "an lkey must not double as the rkey"
    );
    assert_ne!(a.mr().lkey(), b.mr().lkey());
    assert_eq!(a.mr().len(), 4096);
    assert!(ctx.create_cq(0, None).is_err());
    let cq = ctx.create_cq(4, None).unwrap();
    let caps = QpCaps {
        max_send_wr: 100_000,
        ..QpCaps::default()
    };
    assert!(
        pd.create_qp(QpInitAttr {
            send_cq: &cq,
            recv_cq: &cq,
            caps
        })
        .is_err()
    );
}
