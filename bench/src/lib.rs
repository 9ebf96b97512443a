//! Shared measurement code of the rdmq benchmarks: latency histograms, the machine label that
//! goes with every number, and transport round-trip and pipelined-throughput runs over any
//! [`Transport`](rdmq_transport::Transport), the broker's store under concurrent appends, and pop consumption and timers.

pub mod affinity;
pub mod pop;
pub mod report;
pub mod sim;
pub mod store;
pub mod transport;
