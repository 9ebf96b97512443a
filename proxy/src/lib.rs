//! rdmq-proxy will own the RocketMQ 5 gRPC endpoint and its translation to remoting calls on
//! brokers; it is filled by the proxy issue.
