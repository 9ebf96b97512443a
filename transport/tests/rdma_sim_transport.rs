//! The RDMA backend on rdma-sim: the shared conformance suite, unchanged, plus what only RDMA
//! shows (the link really is RDMA, zero-copy receive, no syscalls per message, fallback).

mod conformance;

use std::sync::Arc;
use std::time::Duration;

use rdma_sim::{Fabric, FabricConfig};
use rdmq_transport::codec::RemotingCommand;
use rdmq_transport::rdma::core::CoreConfig;
use rdmq_transport::rdma::sim::SimOpener;
use rdmq_transport::rdma::{PollMode, RdmaConfig, RdmaTransport};
use rdmq_transport::tcp::TcpTransport;
use rdmq_transport::{Endpoint, Scheme};

struct SimRdma {
    fabric: Arc<Fabric>,
    mode: PollMode,
}

impl SimRdma {
    fn event() -> Self {
        Self {
            fabric: Fabric::new(FabricConfig::default()),
            mode: PollMode::Event,
        }
    }
    fn busy() -> Self {
        Self {
            fabric: Fabric::new(FabricConfig::default()),
            mode: PollMode::BusyPoll {
                spin: Duration::from_millis(1),
            },
        }
    }
    fn with(&self, config: RdmaConfig) -> RdmaTransport<SimOpener> {
        RdmaTransport::new(
            SimOpener::with_fabric(self.fabric.clone()),
            TcpTransport::default(),
            RdmaConfig {
                mode: self.mode,
                fallback_to_tcp: false,
                ..config
            },
        )
    }
}

const SLOT: u32 = 8192;

impl conformance::Harness for SimRdma {
    type T = RdmaTransport<SimOpener>;
    fn transport(&self) -> Self::T {
        self.with(RdmaConfig::default())
    }
    fn bounded_transport(&self, bytes: usize) -> Self::T {
        let slots = (bytes as u32 / SLOT).max(8);
        self.with(RdmaConfig {
            core: CoreConfig {
                send_slots: slots,
                send_depth: slots + 64,
                max_queued_bytes: bytes as u64,
                ..CoreConfig::default()
            },
            ..RdmaConfig::default()
        })
    }
    fn send_bound(&self, bytes: usize) -> u64 {
        (bytes as u32 / SLOT).max(8) as u64 * SLOT as u64 + bytes as u64
    }
    fn endpoint(&self) -> Endpoint {
        Endpoint {
            scheme: Scheme::RdmaSim,
            ..Endpoint::tcp("127.0.0.1", 0)
        }
    }
}

mod event_mode {
    use super::*;
    conformance_tests!(SimRdma::event());
}

mod busy_poll_mode {
    use super::*;
    conformance_tests!(SimRdma::busy());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_are_rdma_and_say_why() {
    let h = SimRdma::event();
    let server = conformance::serve(&h, conformance::router()).await;
    let conn = conformance::connect(
        &h,
        &conformance::Harness::transport(&h),
        server.local_endpoint(),
    )
    .await;
    assert_eq!(conn.info().transport, "rdma-sim");
    assert!(
        conn.info().reason.contains("accepted"),
        "{}",
        conn.info().reason
    );
    let resp = conn
        .call(
            RemotingCommand::request(conformance::ECHO).with_body(&b"over rdma"[..]),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(&resp.body[..], b"over rdma");
    assert!(
        h.fabric.stats().net.packets > 0,
        "nothing crossed the simulated NIC"
    );
}
