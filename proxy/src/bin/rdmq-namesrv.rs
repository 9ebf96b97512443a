//! `rdmq-namesrv`: see [`rdmq_proxy::namesrv`].

fn main() -> std::process::ExitCode {
    rdmq_proxy::namesrv::namesrv_main(std::env::args().skip(1).collect())
}
