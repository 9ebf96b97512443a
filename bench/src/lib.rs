//! Shared measurement code of the rdmq benchmarks: latency histograms, the machine label that
//! goes with every number, and transport round-trip and pipelined-throughput runs over any
//! [`Transport`](rdmq_transport::Transport), the broker's store under concurrent appends, pop consumption and timers, sends end to end through the proxy, and the headline runner (separate broker, proxy and load
//! generator processes).

pub mod affinity;
pub mod alloc_count;
pub mod crossproc;
pub mod e2e;
pub mod headline;
pub mod hostile;
pub mod pop;
pub mod report;
pub mod scale;
pub mod sim;
pub mod store;
pub mod transport;
pub mod wakefloor;
