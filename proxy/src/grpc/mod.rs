//! The RocketMQ 5 gRPC front end: `apache.rocketmq.v2.MessagingService` on tonic, each call
//! translated to remoting operations on the brokers ([`crate::cluster`]).

mod ack;
pub mod codec;
pub mod metadata;
mod receive;
mod renew;
mod route;
mod send;
pub mod service;
pub mod settings;
mod telemetry;

pub use service::{MessagingProxy, ServiceConfig};
