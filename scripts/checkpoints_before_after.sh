#!/usr/bin/env bash
# Runs every shipped pipeline (or those named) with two neurostream binaries on copies of
# pipelines/ and data/, then compares every checkpoint of the two runs with pyarrow
# (scripts/compare_checkpoints.py): same fingerprints, rows, schemas and values.
#
#   bash scripts/checkpoints_before_after.sh BEFORE_BINARY AFTER_BINARY [pipeline.toml ...]
#
# A binary of an older commit: `git worktree add /tmp/base <rev> && cargo build --manifest-path
# /tmp/base/Cargo.toml` (any profile; the outputs do not depend on it).
set -euo pipefail
cd "$(dirname "$0")/.."
before_bin=$(realpath "$1"); after_bin=$(realpath "$2"); shift 2
names=("$@")
if [ ${#names[@]} -eq 0 ]; then names=($(cd pipelines && ls *.toml)); fi
root=$(mktemp -d)
for side in before after; do
  mkdir -p "$root/$side"
  cp -r pipelines data "$root/$side/"
  rm -rf "$root/$side/pipelines/runs"
  bin=$before_bin; [ "$side" = after ] && bin=$after_bin
  for name in "${names[@]}"; do
    start=$(date +%s.%N)
    "$bin" --quiet run "$root/$side/pipelines/$name" || echo "($side: $name exited $?)"
    echo "$side $name $(echo "$(date +%s.%N) - $start" | bc) s"
  done
done
python3 scripts/compare_checkpoints.py "$root/before/pipelines/runs" "$root/after/pipelines/runs"
