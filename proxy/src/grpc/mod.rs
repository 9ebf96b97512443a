//! The RocketMQ 5 gRPC front end: `apache.rocketmq.v2.MessagingService` on tonic, each call
//! translated to remoting operations on the brokers ([`crate::cluster`]).

pub mod metadata;
pub mod service;
pub mod settings;

pub use service::{MessagingProxy, ServiceConfig};
