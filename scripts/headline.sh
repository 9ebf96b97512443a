#!/usr/bin/env bash
# The main job: rdmq-bench headline, the reference deployment's three numbers (broker CPU,
# proxy CPU and proxy→broker send RT, RDMA vs TCP) with rdmq-broker and rdmq-proxy as separate
# processes. On a fresh Debian machine it first installs what the build lacks (cmake and libclang
# for the libibverbs binding, a C toolchain), then builds the three binaries in release mode and
# runs the bench against them. Flags go to `rdmq-bench headline` (see --help there).
#
#   scripts/headline.sh                 # the full measurement (about 4 minutes of measuring)
#   scripts/headline.sh --smoke         # a few seconds: checks the machinery, not a result
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
for p in build-essential pkg-config cmake libclang-dev; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing Debian packages the build needs: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "cargo not found: install Rust 1.95 with rustup" >&2; exit 1; }

start=$(date +%s)
cargo build --release -p rdmq-bench -p rdmq-broker -p rdmq-proxy
echo "== build took $(( $(date +%s) - start )) s (not part of the measurement)"
target=${CARGO_TARGET_DIR:-target}
exec "$target/release/rdmq-bench" headline --bin-dir "$target/release" "$@"
