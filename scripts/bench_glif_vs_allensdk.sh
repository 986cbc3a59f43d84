#!/usr/bin/env bash
# CPU time per GLIF config: neurostream's `simulate.glif` stage (real binary, one thread) against
# AllenSDK 2.16.2 `GlifNeuron.from_dict(cfg).run(stim)` (the peer harness), on the same configs
# and the same stimulus, for GLIF1, GLIF3 and GLIF5.
#
#   scripts/bench_glif_vs_allensdk.sh [OUT_DIR]
#
# Environment (defaults in brackets):
#   PEERS_DIR        the peer harness            [/work/shared/peers]
#   PEERS_REF_DIR    reference configs/stimulus  [/work/shared/ref/peers]
#   PEERS_VENV_DIR   where setup.sh puts venvs   [/tmp/peers_venv]
#   NEUROSTREAM_BIN  release binary              [target/release/neurostream]
#   N_CONFIGS        configs the peer runs       [100]
#   PEER_REPEATS     timed peer runs (median)    [3]
#   RUST_COPIES      the N configs are run this many times by the Rust side, to time more than
#                    process start-up; a 1-config run is subtracted as the fixed cost [20]
#   RUST_REPEATS     timed Rust runs (median)    [3]
#   REUSE_PEER=1     keep an existing OUT_DIR/peer_glifL.json instead of re-running the peer
#
# Per level: the peer jitters the reference config into N configs (--save-configs writes them),
# the Rust side runs exactly those (read back from that file) with record_voltage = false,
# RAYON_NUM_THREADS=1, and CPU = user + sys of the process (/usr/bin/time). Spike counts of
# both sides are compared config for config; the ratio only counts when they are equal.
# Output: OUT_DIR/peer_glifL.json (peer JSON), OUT_DIR/summary.txt (the table below).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PEERS="${PEERS_DIR:-/work/shared/peers}"
REF="${PEERS_REF_DIR:-/work/shared/ref/peers}"
export PEERS_VENV_DIR="${PEERS_VENV_DIR:-/tmp/peers_venv}"
BIN="${NEUROSTREAM_BIN:-$ROOT/target/release/neurostream}"
N="${N_CONFIGS:-100}"
PEER_REPEATS="${PEER_REPEATS:-3}"
COPIES="${RUST_COPIES:-20}"
RUST_REPEATS="${RUST_REPEATS:-3}"
OUT="$(mkdir -p "${1:-$ROOT/runs/bench_glif}" && cd "${1:-$ROOT/runs/bench_glif}" && pwd)"

[ -x "$BIN" ] || { echo "no release binary at $BIN (cargo build --release)" >&2; exit 2; }
"$PEERS/setup.sh" "$PEERS_VENV_DIR" venv-allen venv >&2
PY="$PEERS_VENV_DIR/venv/bin/python"   # numpy/pyarrow venv, for the bookkeeping below
STIM="$REF/glif_stimulus.npy"

# One pipeline: simulate.glif on CONFIGS_JSON (a list), the stimulus file, spikes only.
write_pipeline() {  # write_pipeline DIR CONFIGS_JSON
  cat > "$1/p.toml" <<EOF
[pipeline]
name = "bench"
[stages.sim]
kind = "simulate.glif"
neuron_config = "$2"
stimuli = [{ kind = "file", path = "$STIM", unit = "A" }]
record_voltage = false
record_stimulus = false
block_size = 4096
[stages.out]
kind = "sink.parquet"
inputs = ["sim"]
path = "out.parquet"
EOF
}

# Median CPU seconds (user + sys) of fresh runs (the run directory is removed so nothing is cached).
rust_cpu() {  # rust_cpu DIR
  local times=()
  for _ in $(seq "$RUST_REPEATS"); do
    rm -rf "$1/runs" "$1/out.parquet"
    RAYON_NUM_THREADS=1 /usr/bin/time -f "%U %S" -o "$1/time.txt" "$BIN" run "$1/p.toml" --quiet >/dev/null 2>&1
    times+=("$(awk '{print $1 + $2}' "$1/time.txt")")
  done
  printf '%s\n' "${times[@]}" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'
}

summary="$OUT/summary.txt"
{
  echo "# GLIF CPU time per config: neurostream simulate.glif (1 thread) vs AllenSDK 2.16.2"
  echo "# $(date -u +%FT%TZ) $(uname -m) $(nproc) cpus, load $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "# stimulus $(basename "$STIM") $(sha256sum "$STIM" | cut -c1-16), $N configs, rust copies $COPIES"
  printf '%-6s %14s %14s %10s %10s %s\n' level peer_s/config ours_s/config ours/theirs speedup counts
} > "$summary"

for L in 1 3 5; do
  d="$OUT/glif$L"; mkdir -p "$d"
  if [ "${REUSE_PEER:-0}" = 1 ] && [ -s "$OUT/peer_glif$L.json" ] && [ -s "$d/configs.json" ]; then
    echo "reusing $OUT/peer_glif$L.json (REUSE_PEER=1)" >&2
  else
    "$PEERS/run.sh" glif "$REF/glif${L}_neuron_config.json" "$STIM" --n-configs "$N" --seed 0 \
        --save-configs "$d/configs.json" --repeats "$PEER_REPEATS" --all-spike-times --out "$OUT/peer_glif$L.json"
  fi
  # The same configs, COPIES times, and the first config alone (fixed cost: start-up, I/O).
  "$PY" - "$d/configs.json" "$COPIES" "$d/many.json" "$d/one.json" <<'EOF'
import json, sys
cfgs = json.load(open(sys.argv[1]))
json.dump(cfgs * int(sys.argv[2]), open(sys.argv[3], 'w'))
json.dump(cfgs[:1], open(sys.argv[4], 'w'))
EOF
  mkdir -p "$d/many" "$d/one"
  write_pipeline "$d/many" "$d/many.json"
  write_pipeline "$d/one" "$d/one.json"
  cpu_many=$(rust_cpu "$d/many")
  cpu_one=$(rust_cpu "$d/one")
  # Same results: the first N spike counts of our output against the peer's.
  "$PY" - "$OUT/peer_glif$L.json" "$d/many/out.parquet" "$N" "$cpu_many" "$cpu_one" "$COPIES" "$L" >> "$summary" <<'EOF'
import json, sys
import pyarrow.parquet as pq
peer = json.load(open(sys.argv[1]))
n, cpu_many, cpu_one, copies, level = int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6]), sys.argv[7]
ours = pq.read_table(sys.argv[2], columns=['spike_count', 'status']).to_pydict()
theirs = peer['result']['spike_counts']
same = ours['spike_count'][:n] == theirs and all(s == 'ok' for s in ours['status'])
peer_per = peer['timing']['median_cpu_s'] / n
ours_per = max(cpu_many - cpu_one, 0.0) / (n * copies - 1)
print(f"GLIF{level:<2} {peer_per:14.4e} {ours_per:14.4e} {ours_per / peer_per:10.5f} {peer_per / ours_per:10.0f}x "
      f"{'identical' if same else 'DIFFERENT'} ({sum(theirs)} spikes; rust fixed cost {cpu_one:.3f} s, {n * copies} configs {cpu_many:.3f} s)")
EOF
done
cat "$summary"
