//! The verbs conformance suite on rdma-sim's shared-memory data path: each test's two devices
//! belong to two cross-process fabrics (one process standing in for two processes), so their
//! QPs attach over memfd mappings and every operation runs by direct placement.

mod verbs_suite;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use rdma_sim::{Fabric, FabricConfig};
use rdmq_transport::rdma::sim::SimVerbs;

struct SimShm;

/// Every fabric the harness made, to check afterwards that no packet was sent.
static FABRICS: Mutex<Vec<Arc<Fabric>>> = Mutex::new(Vec::new());

impl verbs_suite::VerbsHarness for SimShm {
    type V = SimVerbs;
    fn pair(&self) -> (SimVerbs, SimVerbs) {
        verbs_suite::SHARED_ARENAS.store(true, Ordering::Relaxed);
        let open = || {
            let fabric = Fabric::new(FabricConfig {
                devices: 1,
                cross_process: true,
                ..FabricConfig::default()
            });
            assert!(fabric.shm_enabled());
            FABRICS.lock().unwrap().push(fabric.clone());
            SimVerbs::open(&fabric.devices()[0]).unwrap()
        };
        (open(), open())
    }
}

verbs_tests!(SimShm);

#[test]
fn the_suite_runs_on_shared_memory() {
    verbs_suite::send_recv_ping_pong(SimShm);
    let fabrics = FABRICS.lock().unwrap();
    let placements: u64 = fabrics.iter().map(|f| f.stats().placements).sum();
    assert!(placements > 0);
    for f in fabrics.iter() {
        assert_eq!(f.stats().net.packets, 0, "no packet engine traffic");
    }
}
