#!/usr/bin/env bash
# Pipeline-core benchmarks, measured side by side in one session (docs/benchmarks.md):
#   1. actor graph vs the same operators in a plain loop (criterion, benches/runtime.rs);
#   2. checkpoint write of 10 M float32 samples (criterion) vs pyarrow's write_table of the same
#      table shape, zstd (../shared/peers, run before and after ours: peer, ours, peer).
# Usage: bash scripts/bench_core.sh   (PEERS_DIR and PEERS_VENV_DIR override the peer locations)
set -euo pipefail
cd "$(dirname "$0")/.."
PEERS="${PEERS_DIR:-../shared/peers}"
export PEERS_VENV_DIR="${PEERS_VENV_DIR:-$HOME/.cache/neurostream-peers}"
OUT=target/bench-core
mkdir -p "$OUT"
"$PEERS/setup.sh" "$PEERS_VENV_DIR" venv
peer() { "$PEERS/run.sh" parquet --rows 10000000 --compression zstd --modes table --out "$OUT/pyarrow_$1.json"; }
peer before
cargo bench --bench runtime -- --noplot
peer after
python3 - "$OUT" "${CARGO_TARGET_DIR:-target}" <<'PY'
import json, sys, statistics, pathlib
out = pathlib.Path(sys.argv[1])
crit = pathlib.Path(sys.argv[2]) / "criterion"
def median_s(group, name):
    est = json.load(open(crit / group / name / "new" / "estimates.json"))
    return est["median"]["point_estimate"] * 1e-9
graph = median_s("graph_vs_loop", "actor_graph")
loop = median_s("graph_vs_loop", "plain_loop")
ours = median_s("checkpoint_write", "10M_float32_zstd")
peers = []
for tag in ("before", "after"):
    run = json.load(open(out / f"pyarrow_{tag}.json"))["result"]["runs"]["zstd/table"]
    peers.append((run["write_timing"]["median_wall_s"], run["write_timing"]["median_cpu_s"]))
peer_wall = statistics.median(p[0] for p in peers)
peer_cpu = statistics.median(p[1] for p in peers)
print(f"actor graph {graph:.3f} s vs plain loop {loop:.3f} s: overhead {100 * (graph / loop - 1):+.1f}%")
print(f"checkpoint write 10M rows: ours {ours:.3f} s wall; pyarrow {peer_wall:.3f} s wall ({peer_cpu:.3f} s CPU)")
print(f"  throughput ratio ours/pyarrow (wall): {peer_wall / ours:.2f}x")
PY
