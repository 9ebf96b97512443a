//! The verbs conformance suite on rdma-sim (an isolated in-process fabric per test).

mod verbs_suite;

use rdma_sim::{Fabric, FabricConfig};
use rdmq_transport::rdma::sim::SimVerbs;

struct Sim;

impl verbs_suite::VerbsHarness for Sim {
    type V = SimVerbs;
    fn pair(&self) -> (SimVerbs, SimVerbs) {
        let fabric = Fabric::new(FabricConfig::default());
        let devs = fabric.devices();
        (
            SimVerbs::open(&devs[0]).unwrap(),
            SimVerbs::open(&devs[1]).unwrap(),
        )
    }
}

verbs_tests!(Sim);
