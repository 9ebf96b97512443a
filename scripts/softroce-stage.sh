#!/usr/bin/env bash
# The SoftRoCE stage, run where an RDMA device exists (the qemu guest of softroce-vm.sh, or a
# host after softroce-up.sh): the device test suites, then a smoke bench of TCP vs rdma
# round trips for 1 KiB bodies and a headline smoke (broker, proxy and load generator as separate
# processes over tcp, rdma-sim and rdma), in the same boot.
#
#   scripts/softroce-stage.sh TEST_BINARY BENCH_BINARY [BROKER_TEST_BINARY]
#
# With the broker's handler test binary, also runs the broker's handlers end to end over
# rdma:// (send and pull of 64 KiB messages through a real queue pair).
set -uo pipefail
test_bin=$1
bench_bin=$2
broker_bin=${3:-}
echo "== RDMA devices: $(ibv_devices 2>/dev/null | tail -n +3 | awk '{print $1}' | xargs)"
export RDMQ_RDMA_DEVICE=${RDMQ_RDMA_DEVICE:-rxe0}
echo "== device test suites on $RDMQ_RDMA_DEVICE (serially: rxe drops completions under concurrency)"
"$test_bin" --test-threads=1
tests=$?
if [ -n "$broker_bin" ]; then
  echo "== broker handlers over rdma:// on $RDMQ_RDMA_DEVICE"
  "$broker_bin" real_rdma --test-threads=1 --nocapture || tests=1
fi
echo "== smoke bench (label: emulated under qemu, not a performance result)"
"$bench_bin" transport --only tcp,rdma --sizes 1024 --iterations 200
bench=$?
echo "== headline smoke over tcp, rdma-sim and rdma (label: emulated; checks the machinery, not a result)"
# Emulated CPUs run ~100x slower than the host: a low rate so messages complete in the window.
"$bench_bin" headline --smoke --only tcp,rdma-sim,rdma --rates 20 --fractions 0 --receive-rate 20 \
  --window-ms 2000 --out target/headline-softroce
headline=$?
[ $tests -eq 0 ] && [ $bench -eq 0 ] && [ $headline -eq 0 ]
