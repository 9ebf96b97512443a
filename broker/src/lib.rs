//! rdmq-broker: the storage broker. It owns the message store (segmented commit log with
//! CRC-checked frames, consume queues, key index, checkpoint-based crash recovery, retention)
//! and the remoting handlers that serve producers, consumers and the proxy over any
//! [`Transport`](rdmq_transport::Transport).

pub mod config;
pub mod filter;
pub mod handlers;
/// The stored-message record and properties (owned by `rdmq-protocol`, shared with the proxy).
pub use rdmq_protocol::message;
mod poison;
pub mod pop;
pub mod register;
pub mod serve;
pub mod store;
pub mod sys;
pub mod timer;
