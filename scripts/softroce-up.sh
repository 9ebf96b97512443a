#!/usr/bin/env bash
# Brings up SoftRoCE on a host whose kernel has rdma_rxe: loads the module, adds rxe0 on a
# network device (first argument, default: the device of the default route, else lo), and
# checks that libibverbs sees it. Idempotent.
#
#   scripts/softroce-up.sh [NETDEV]
set -euo pipefail
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
if ! command -v rdma >/dev/null || ! command -v ibv_devices >/dev/null; then
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    iproute2 rdma-core ibverbs-utils ibverbs-providers libibverbs1 >/dev/null
fi
if ! $SUDO modprobe rdma_rxe 2>/dev/null && [ ! -d /sys/module/rdma_rxe ]; then
  echo "softroce-up: this kernel has no rdma_rxe (use scripts/softroce-vm.sh)" >&2
  exit 1
fi
dev=${1:-$(ip route show default 2>/dev/null | awk '{print $5; exit}')}
dev=${dev:-lo}
if ! rdma link show rxe0 >/dev/null 2>&1; then
  $SUDO rdma link add rxe0 type rxe netdev "$dev"
fi
ibv_devices | grep -q rxe0 || { echo "softroce-up: rxe0 not visible to libibverbs" >&2; exit 1; }
echo "rxe0 is up on $dev"
