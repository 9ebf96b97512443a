//! The RDMA backend.
//!
//! - [`verbs`]: the device boundary (a small `Verbs` trait) and its work-request types.
//! - [`memory`]: the registered arena and its slots (the data path's only `unsafe`).
//! - [`sim`]: `Verbs` over rdma-sim.

pub mod core;
pub mod driver;
pub mod memory;
pub mod sim;
pub mod sys;
pub mod transport;
pub mod verbs;

pub use driver::PollMode;
pub use transport::{DeviceOpener, RdmaConfig, RdmaLink, RdmaListener, RdmaTransport};
