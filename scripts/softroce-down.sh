#!/usr/bin/env bash
# Removes the rxe0 device added by softroce-up.sh. Idempotent.
set -euo pipefail
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
if rdma link show rxe0 >/dev/null 2>&1; then
  $SUDO rdma link delete rxe0
fi
echo "rxe0 is down"
