//! The RDMA backend.
//!
//! - [`verbs`]: the device boundary (a small `Verbs` trait) and its work-request types.
//! - [`memory`]: the registered arena and its slots (the data path's only `unsafe`).
//! - [`sim`]: `Verbs` over rdma-sim.

pub mod memory;
pub mod sim;
pub mod verbs;
