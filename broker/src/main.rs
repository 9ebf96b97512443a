//! `rdmq-broker`: binds the configured endpoints, recovers the store, serves remoting until
//! SIGTERM or Ctrl-C, then drains and flushes. The program is
//! [`rdmq_broker::serve::broker_main`] (benchmarks run the same code in a process of their own).

fn main() -> std::process::ExitCode {
    rdmq_broker::serve::broker_main(std::env::args().skip(1).collect())
}
