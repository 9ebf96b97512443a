//! The RocketMQ 5 gRPC types and the `MessagingService` server and client, generated at build
//! time from `proto/apache/rocketmq/v2/*.proto`.

#![allow(
    missing_docs,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic
)]

tonic::include_proto!("apache.rocketmq.v2");
