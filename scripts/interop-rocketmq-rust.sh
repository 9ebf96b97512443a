#!/usr/bin/env bash
# Interoperation with a RocketMQ stack nobody here wrote: rocketmq-rust 1.0.0 from crates.io
# (name server, broker, proxy). Too long for the test command (a cold install of the peer takes
# about 30 minutes on 2 cores); its output goes in the cluster issue's closing note.
#
#   scripts/interop-rocketmq-rust.sh            # install (cached) and run every step
#   RDMQ_INTEROP_CACHE=DIR                      # where the peer's binaries are kept (default ~/.cache/rdmq-interop)
#   scripts/interop-rocketmq-rust.sh --install-only
set -euo pipefail
cd "$(dirname "$0")/.."

cache=${RDMQ_INTEROP_CACHE:-$HOME/.cache/rdmq-interop}
peer_version=1.0.0
log() { printf '\n== [%4ds] %s\n' "$SECONDS" "$*"; }

install_peer() {
  # rocketmq-proxy's build script compiles its .proto files with protoc and the well-known
  # types (google/protobuf/*.proto).
  if ! command -v protoc >/dev/null || [ ! -f /usr/include/google/protobuf/timestamp.proto ]; then
    log "installing protobuf-compiler and libprotobuf-dev (rocketmq-proxy's build needs protoc)"
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends protobuf-compiler libprotobuf-dev
  fi
  local missing=()
  for pair in rocketmq-namesrv:rocketmq-namesrv-rust rocketmq-broker:rocketmq-broker-rust rocketmq-proxy:rocketmq-proxy-rust; do
    [ -x "$cache/bin/${pair#*:}" ] || missing+=("${pair%%:*}")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    log "peer binaries cached in $cache/bin"
    return
  fi
  log "installing ${missing[*]} $peer_version (cargo install --locked; cached in $cache)"
  for crate in "${missing[@]}"; do
    CARGO_TARGET_DIR="$cache/target" cargo install --locked --quiet --root "$cache" "$crate" --version "=$peer_version"
  done
  rm -rf "$cache/target"
}

install_peer
[ "${1:-}" = "--install-only" ] && exit 0
