//! `rdmq-admin`: see [`rdmq_proxy::admin`].

fn main() -> std::process::ExitCode {
    rdmq_proxy::admin::admin_main(std::env::args().skip(1).collect())
}
