//! Shared measurement code of the rdmq benchmarks: latency histograms, the machine label that
//! goes with every number, and transport round-trip and pipelined-throughput runs over any
//! [`Transport`](rdmq_transport::Transport), and the broker's store under concurrent appends.

pub mod affinity;
pub mod report;
pub mod sim;
pub mod store;
pub mod transport;
