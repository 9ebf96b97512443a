//! rdmq-transport: the RocketMQ remoting codec, the pluggable [`Transport`] trait with its TCP
//! backend, and the generic remoting [`Client`](remoting::Client) and
//! [`Server`](remoting::Server).
//!
//! Layers, bottom up:
//! - [`codec`]: `RemotingCommand` ⇄ bytes (JSON and binary headers, framing). No I/O.
//! - [`link`]: what a backend implements — framed links with buffer-first sending.
//! - [`tcp`]: the TCP backend. [`any`] dispatches on the endpoint scheme.
//! - [`connection`]: calls multiplexed by opaque over any link.
//! - [`remoting`]: Client (pools, backoff) and Server (dispatch by code).
//! - [`metrics`]: the process's counters and histograms and their Prometheus endpoint.
//! - `process` (feature `process`): the binaries' logging, runtime, signals and metrics start.

pub mod any;
pub mod codec;
pub mod connection;
pub mod counters;
pub mod endpoint;
pub mod error;
pub mod heap;
pub mod link;
pub mod metrics;
#[cfg(feature = "process")]
pub mod process;
pub mod protocol;
pub mod rdma;
pub mod remoting;
mod signal;
pub mod sync;
pub mod tcp;

pub use any::AnyTransport;
pub use codec::RemotingCommand;
pub use connection::{Connection, ConnectionConfig, IncomingRequest, IncomingRequests, Responder};
pub use counters::{CounterSnapshot, LinkCounters};
pub use endpoint::{Endpoint, Scheme};
pub use error::TransportError;
pub use link::{FrameBuf, Link, LinkInfo, LinkRx, LinkTx, Listener, Transport};
