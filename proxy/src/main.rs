//! `rdmq-proxy`: serves RocketMQ 5 gRPC and forwards to brokers until SIGTERM or Ctrl-C, then
//! drains. The program is [`rdmq_proxy::proxy_main`].

fn main() -> std::process::ExitCode {
    rdmq_proxy::proxy_main(std::env::args().skip(1).collect())
}
