#!/usr/bin/env bash
# Installs the official RocketMQ 5 gRPC clients the proxy compatibility tests drive, from their
# registries:
#   PyPI      rocketmq-python-client==5.1.2  -> proxy/compat/python/.venv
#   npm       rocketmq-client-nodejs 1.0.8   -> proxy/compat/node/node_modules
#   crates.io rocketmq =5.0.0                -> target/compat/debug/rdmq-compat-rust-grpc
# Python venv/pip and Node.js/npm come from Debian when missing. Idempotent: a second run only
# checks. The Rust fixture is a stand-alone cargo project (its own lock file); the first build
# takes about 5 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_install() {
  echo "== installing $* from Debian"
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "$@"
}

need=()
command -v python3 >/dev/null || need+=(python3 python3-venv python3-pip)
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
[ "${#need[@]}" -eq 0 ] || apt_install "${need[@]}"

echo "== PyPI rocketmq-python-client (proxy/compat/python/.venv)"
venv=proxy/compat/python/.venv
if [ ! -x "$venv/bin/pip" ]; then
  rm -rf "$venv"
  # Debian's python3 cannot create a venv (no ensurepip) until python3-venv is installed.
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    rm -rf "$venv"
    apt_install python3-venv python3-pip
    python3 -m venv "$venv"
  fi
fi
if ! "$venv/bin/python" -c '
import sys, importlib.metadata as md
sys.exit(md.version("rocketmq-python-client") != "5.1.2")' 2>/dev/null; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r proxy/compat/python/requirements.txt
fi

echo "== npm rocketmq-client-nodejs (proxy/compat/node)"
(cd proxy/compat/node && npm ci --no-audit --no-fund --loglevel=error)

echo "== crates.io rocketmq (proxy/compat/rust)"
CARGO_TARGET_DIR="$PWD/target/compat" CARGO_PROFILE_DEV_DEBUG=0 cargo build --locked --quiet \
  --manifest-path proxy/compat/rust/Cargo.toml
