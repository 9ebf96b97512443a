#!/usr/bin/env bash
# The store's long run (not part of the test command): 50 M messages of 128 B over 1,000 topics
# x 8 queues on a release broker process, then a clean restart and a SIGKILL restart, with the
# same correctness samples. Targets: RssAnon <= 300 MiB at the end, start <= 5 s after a clean
# stop and <= 15 s after SIGKILL. Needs about 20 GB free under DIR (checked first).
#
#   scripts/scale-long.sh [DIR] [extra rdmq-bench scale flags]
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-target/scale-long}
shift || true
cargo build -q --release -p rdmq-bench
exec "${CARGO_TARGET_DIR:-target}/release/rdmq-bench" scale --messages 50000000 --restart --gate \
  --max-rss-mib 300 --dir "$dir" "$@"
