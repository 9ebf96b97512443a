//! The RDMA backend.
//!
//! - [`verbs`]: the device boundary (a small `Verbs` trait) and its work-request types.
//! - [`memory`]: the registered arena and its slots (the shared-memory `unsafe`); taking a slot
//!   and posting are `unsafe fn`s, called by the driver only in `driver/nic.rs`.
//! - [`sim`]: `Verbs` over rdma-sim; `ibverbs` (feature `ibverbs`, on by default): `Verbs`
//!   over real libibverbs through sideway.
//! - [`core`]: the sans-IO protocol core — where a frame becomes a work request.
//! - [`driver`]: the tokio driver of one link; [`transport`]: TCP bootstrap, handshake and
//!   fallback.

pub mod core;
pub mod driver;
#[cfg(feature = "ibverbs")]
pub mod ibverbs;
pub mod memory;
pub mod post;
#[cfg(feature = "sim")]
pub mod sim;
pub mod sys;
pub mod transport;
pub mod verbs;

pub use driver::PollMode;
pub use transport::{DeviceOpener, RdmaConfig, RdmaLink, RdmaListener, RdmaTransport};
