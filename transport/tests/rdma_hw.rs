//! The RDMA backend on real verbs (a NIC or SoftRoCE): the verbs conformance suite and the
//! transport conformance suite, unchanged, plus a deliberately broken operation that must be
//! reported as the device reports it. Device tests skip, with the reason printed, unless a
//! device is present (`RDMQ_RDMA_DEVICE` names one, or libibverbs lists one). The fallback test
//! runs everywhere.

#![cfg(feature = "ibverbs")]

mod conformance;
mod verbs_suite;

use std::time::Duration;

use rdmq_transport::codec::RemotingCommand;
use rdmq_transport::rdma::ibverbs::{IbOpener, IbVerbs, device_names};
use rdmq_transport::rdma::verbs::{Payload, QpConfig, SendOp, WcError};
use rdmq_transport::rdma::{RdmaConfig, RdmaTransport};
use rdmq_transport::tcp::TcpTransport;
use rdmq_transport::{AnyTransport, Connection, ConnectionConfig, Endpoint, Scheme, Transport};

fn device() -> Option<String> {
    std::env::var("RDMQ_RDMA_DEVICE")
        .ok()
        .filter(|d| !d.is_empty())
        .or_else(|| device_names().into_iter().next())
}

fn have_device() -> bool {
    device().is_some()
}

const NO_DEVICE: &str = "no RDMA device (set RDMQ_RDMA_DEVICE, or run scripts/softroce-vm.sh)";

struct Hw;

impl verbs_suite::VerbsHarness for Hw {
    type V = IbVerbs;
    fn pair(&self) -> (IbVerbs, IbVerbs) {
        let d = device().expect("device");
        (
            IbVerbs::open(Some(&d)).unwrap(),
            IbVerbs::open(Some(&d)).unwrap(),
        )
    }
    fn time_scale(&self) -> u32 {
        20
    }
    fn strict(&self) -> bool {
        false
    }
}

mod verbs {
    use super::*;
    verbs_tests!(skip_unless have_device(), NO_DEVICE, Hw);
}

impl conformance::Harness for Hw {
    type T = RdmaTransport<IbOpener>;
    fn transport(&self) -> Self::T {
        RdmaTransport::new(
            IbOpener,
            TcpTransport::default(),
            RdmaConfig {
                device: device(),
                fallback_to_tcp: false,
                ..RdmaConfig::default()
            },
        )
    }
    fn bounded_transport(&self, bytes: usize) -> Self::T {
        let mut cfg = RdmaConfig {
            device: device(),
            fallback_to_tcp: false,
            ..RdmaConfig::default()
        };
        let slots = (bytes as u32 / cfg.core.slot_size).max(8);
        cfg.core.send_slots = slots;
        cfg.core.send_depth = slots + 64;
        cfg.core.max_queued_bytes = bytes as u64;
        RdmaTransport::new(IbOpener, TcpTransport::default(), cfg)
    }
    fn send_bound(&self, bytes: usize) -> u64 {
        (bytes as u64 / 8192).max(8) * 8192 + bytes as u64
    }
    fn endpoint(&self) -> Endpoint {
        Endpoint {
            scheme: Scheme::Rdma,
            ..Endpoint::tcp("127.0.0.1", 0)
        }
    }
    /// Emulated rxe under qemu's TCG runs about 100x slower than the host: 10,000 calls in
    /// flight overran the 30 s call timeout there (this suite also runs on real devices).
    fn concurrent_calls(&self) -> usize {
        2_000
    }
}

mod transport {
    use super::*;
    conformance_tests!(skip_unless have_device(), NO_DEVICE, Hw);
}

/// A write with a wrong rkey must come back as the device's REM_ACCESS_ERR completion: proof
/// that the stage really executes verbs.
#[test]
fn a_wrong_rkey_is_caught_by_the_device() {
    if !have_device() {
        eprintln!("skipped: {NO_DEVICE}");
        return;
    }
    let (a, b) = verbs_suite::VerbsHarness::pair(&Hw);
    let (mut a, b) = verbs_suite::connect(a, b, &QpConfig::default(), &QpConfig::default());
    let mut bad = b.remote(0);
    bad.rkey = bad.rkey.wrapping_add(0x100);
    a.send(1, SendOp::Write(bad), Payload::Sges(&[a.sge(0, 64)]), true)
        .unwrap();
    let got = a.wait(1, Duration::from_secs(30));
    assert_eq!(got.len(), 1, "no completion");
    assert_eq!(got[0].status, Err(WcError::RemoteAccess), "{:?}", got[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rdma_endpoints_fall_back_to_tcp_without_a_device() {
    let any = AnyTransport::default();
    let server = rdmq_transport::remoting::Server::new(
        any.clone(),
        conformance::router(),
        Default::default(),
    )
    .bind(&"rdma://127.0.0.1:0".parse().unwrap())
    .await
    .unwrap();
    let link = any.connect(server.local_endpoint()).await.unwrap();
    let conn = Connection::new(link, ConnectionConfig::default()).0;
    let info = conn.info().clone();
    if have_device() {
        assert_eq!(info.transport, "rdma", "{}", info.reason);
    } else {
        assert_eq!(info.transport, "tcp");
        assert!(
            info.reason.contains("no usable RDMA device"),
            "{}",
            info.reason
        );
    }
    eprintln!("rdma:// link: {} ({})", info.transport, info.reason);
    let resp = conn
        .call(
            RemotingCommand::request(conformance::ECHO).with_body(&b"hw"[..]),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(&resp.body[..], b"hw");
}
