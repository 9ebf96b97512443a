#!/usr/bin/env bash
# The rdmq test command. On a fresh Debian machine it installs what is missing, then runs the
# whole suite: formatting, lints, and every test of the workspace.
#
#   scripts/test.sh            # everything
#   RDMQ_SKIP_LINT=1 scripts/test.sh   # tests only
#   RDMQ_SKIP_COMPAT=1 / RDMQ_SKIP_SOFTROCE=1   # without the real-client or SoftRoCE stages
set -euo pipefail

cd "$(dirname "$0")/.."
root=$(pwd)

# Every stage line carries the seconds since the start: the ledger of what each stage costs.
log() { printf '\n== [%4ds] %s\n' "$SECONDS" "$*"; }

# --- what a fresh machine lacks -------------------------------------------------------------
apt_missing=()
need_apt() {
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || apt_missing+=("$p")
  done
}
# gcc/make for crates with C parts; pkg-config for -sys crates; cmake and libclang to build the
# libibverbs binding (sideway: libibverbs itself is loaded at run time, not needed to build).
need_apt build-essential pkg-config ca-certificates cmake libclang-dev
if [ ${#apt_missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${apt_missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${apt_missing[@]}"
fi

command -v cargo >/dev/null || { echo "cargo not found: install Rust 1.95 with rustup" >&2; exit 1; }

# --- formatting and lints -------------------------------------------------------------------
if [ -z "${RDMQ_SKIP_LINT:-}" ]; then
  log "cargo fmt --check"
  cargo fmt --all -- --check
  log "cargo clippy --all-targets -- -D warnings"
  cargo clippy --workspace --all-targets --quiet -- -D warnings
  log "cargo clippy -p rdmq-proxy --no-default-features (the stateless proxy build)"
  cargo clippy -p rdmq-proxy --no-default-features --all-targets --quiet -- -D warnings
fi

# --- real clients for the compatibility tests ------------------------------------------------
# Installed from PyPI, npm and crates.io; once installed, a missing client fails its test
# instead of skipping it. Remoting clients (broker tests) and gRPC clients (proxy tests).
if [ -z "${RDMQ_SKIP_COMPAT:-}" ]; then
  log "real RocketMQ remoting clients (scripts/compat-clients.sh)"
  scripts/compat-clients.sh
  log "real RocketMQ gRPC clients (scripts/compat-grpc-clients.sh)"
  scripts/compat-grpc-clients.sh
  export RDMQ_REQUIRE_COMPAT=1
fi

# --- host test suite ------------------------------------------------------------------------
log "cargo test (workspace)"
cargo test --workspace

# --- the main job's smoke: rdmq-bench headline with separate processes -------------------------
# Broker, proxy and load generator as three processes over TCP and rdma-sim, every phase at low
# rates for a second each (about 15 s); fails if any operation fails. Not a result.
log "headline smoke (rdmq-bench headline --smoke)"
cargo run -q -p rdmq-bench -- headline --smoke --out "${CARGO_TARGET_DIR:-target}/headline-smoke"

# --- the store at scale: 5 M messages over 1,000 topics x 8 queues on a broker process ---------
# RSS growth per million after warm-up, sampled reads and lookups, a 5,000-topic burst, 10,000
# idle long polls (about 90 s; about 2.5 GB of disk, removed after). The 50 M run is
# scripts/scale-long.sh.
log "store scale gate (rdmq-bench scale --gate)"
cargo run -q -p rdmq-bench -- scale --gate --dir "${CARGO_TARGET_DIR:-target}/scale-gate"

# --- the stateless proxy: no embedded broker, no rdma-sim, no ibverbs --------------------------
# Its dependency tree must hold neither the broker (store) nor the simulator, and it must serve
# clients against a separately started rdmq-broker (tests/standalone.rs). This replaces
# target/debug/rdmq-proxy with the minimal build, so it runs after the suites that use it.
log "stateless proxy build (cargo test -p rdmq-proxy --no-default-features)"
if cargo tree -p rdmq-proxy --no-default-features -e normal --prefix none | grep -E '^(rdmq-broker|rdma-sim|sideway) '; then
  echo "the proxy without default features still depends on the crates above" >&2
  exit 1
fi
cargo test -q -p rdmq-proxy --no-default-features

# --- SoftRoCE stage: real kernel verbs --------------------------------------------------------
# Natively where the kernel has rdma_rxe; otherwise in a qemu guest booting Debian's kernel.
# The binaries are built here; only they run there. Bounded to 10 minutes.
if [ -z "${RDMQ_SKIP_SOFTROCE:-}" ]; then
  log "SoftRoCE stage"
  test_bin=$(cargo test -p rdmq-transport --test rdma_hw --no-run 2>&1 | grep -o '[^ (]*/deps/rdma_hw-[0-9a-f]*' | head -1)
  broker_bin=$(cargo test -p rdmq-broker --test handlers --no-run 2>&1 | grep -o '[^ (]*/deps/handlers-[0-9a-f]*' | head -1)
  cargo build -q -p rdmq-bench
  bench_bin=${CARGO_TARGET_DIR:-target}/debug/rdmq-bench
  [ -n "$test_bin" ] && [ -n "$broker_bin" ] || { echo "could not build the device test binaries" >&2; exit 1; }
  if scripts/softroce-up.sh >/dev/null 2>&1; then
    log "rdma_rxe available natively"
    timeout 600 scripts/softroce-stage.sh "$test_bin" "$bench_bin" "$broker_bin"
  else
    timeout 660 scripts/softroce-vm.sh --timeout 600 -- scripts/softroce-stage.sh "$test_bin" "$bench_bin" "$broker_bin"
  fi
fi

log "all tests passed"
