#!/usr/bin/env bash
# Installs the real RocketMQ clients the compatibility tests drive, from their registries:
#   npm       ali-ons 3.12.0                 -> broker/compat/ali-ons/node_modules
#   crates.io rocketmq-client-rust =1.0.0    -> target/compat/debug/rdmq-compat-rust-remoting
# Node.js comes from Debian when missing. Idempotent: a second run only checks.
# The Rust fixture is a stand-alone cargo project (its own lock file); the first build takes
# about 10 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "== installing Node.js and npm from Debian"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends nodejs npm
fi

echo "== npm ali-ons (broker/compat/ali-ons)"
(cd broker/compat/ali-ons && npm ci --no-audit --no-fund --loglevel=error)

echo "== crates.io rocketmq-client-rust (broker/compat/rust-remoting)"
CARGO_TARGET_DIR="$PWD/target/compat" CARGO_PROFILE_DEV_DEBUG=0 cargo build --locked --quiet \
  --manifest-path broker/compat/rust-remoting/Cargo.toml
