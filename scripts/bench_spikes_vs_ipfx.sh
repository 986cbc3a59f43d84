#!/usr/bin/env bash
# Spike detection speed: neurostream's detect_spikes against the IPFX and eFEL peers on the same
# 500,000-sample HH trace (50 kHz), measured in one session, interleaved (peer, ours, peer, ours),
# compared as median CPU-time ratios (ours / theirs; below 1 = we are faster), as
# ../shared/peers/README.md ("How to compare with the Rust side") prescribes.
#
#   scripts/bench_spikes_vs_ipfx.sh [OUT_DIR]          (default OUT_DIR: target/bench_spikes)
#
# Environment:
#   PEERS_DIR      the peers folder (default: ../shared/peers beside this repository)
#   PEERS_VENV_DIR the peers' venvs (made by $PEERS_DIR/setup.sh; run.sh's default otherwise)
#   TRACE          the trace (default: ../shared/ref/peers/hh_trace_50kHz.npz); our bench reads the
#                  same `v` from tests/fixtures/spikes/hh_v_50kHz.f64shuf.zst, so TRACE must be that file
#   BENCH_MANIFEST Cargo.toml whose `spikes` bench runs (default: this repository's)
#
# Ours: `cargo bench --bench spikes` (benches/spikes.rs) prints `neurostream-cpu median_cpu_s=...`,
# the median process CPU time of 31 single calls after a warm-up; the peers report the median
# `time.process_time()` of 5 single calls after 1 warm-up (their defaults). Both are single-threaded.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PEERS_DIR="${PEERS_DIR:-$REPO/../shared/peers}"
TRACE="${TRACE:-$REPO/../shared/ref/peers/hh_trace_50kHz.npz}"
BENCH_MANIFEST="${BENCH_MANIFEST:-$REPO/Cargo.toml}"
OUT="${1:-$REPO/target/bench_spikes}"
EXPECTED_SHA256=7047ad638899a20b1e3625233ee6af755ed97abd756f8a92917636cabdb8d2f1
mkdir -p "$OUT"

[ -f "$TRACE" ] || { echo "no trace at $TRACE (set TRACE)" >&2; exit 2; }
sha="$(sha256sum "$TRACE" | cut -d' ' -f1)"
[ "$sha" = "$EXPECTED_SHA256" ] || { echo "$TRACE: sha256 $sha is not the HH trace our fixture holds ($EXPECTED_SHA256)" >&2; exit 2; }

echo "building the Rust bench (release)..." >&2
cargo bench --manifest-path "$BENCH_MANIFEST" --bench spikes --no-run >&2

ours() {  # one run of our bench; prints median CPU seconds
  local log="$OUT/ours_$1.log"
  cargo bench --manifest-path "$BENCH_MANIFEST" --bench spikes -- --warm-up-time 1 --measurement-time 3 >"$log" 2>&1
  sed -n 's/^neurostream-cpu median_cpu_s=\([0-9.e+-]*\).*/\1/p' "$log"
}

echo "ipfx..." >&2
"$PEERS_DIR/run.sh" ipfx "$TRACE" --out "$OUT/ipfx.json"
o1="$(ours 1)"
echo "efel (default 0.1 ms interpolation)..." >&2
"$PEERS_DIR/run.sh" efel "$TRACE" --out "$OUT/efel.json"
o2="$(ours 2)"
echo "efel (native 0.02 ms step)..." >&2
"$PEERS_DIR/run.sh" efel "$TRACE" --interp-step 0.02 --out "$OUT/efel_native.json"
o3="$(ours 3)"
echo "ipfx (again)..." >&2
"$PEERS_DIR/run.sh" ipfx "$TRACE" --out "$OUT/ipfx_2.json"

python3 - "$OUT" "$o1" "$o2" "$o3" <<'PY'
import json, statistics, sys
out, ours = sys.argv[1], [float(x) for x in sys.argv[2:]]
ours_med = statistics.median(ours)
def load(name):
    with open(f"{out}/{name}.json") as f:
        return json.load(f)
rows = []
ipfx = [load("ipfx"), load("ipfx_2")]
ipfx_cpu = statistics.median([d["timing"]["median_cpu_s"] for d in ipfx])
n_ipfx = ipfx[0]["result"]["n_spikes"]
rows.append(("ipfx SpikeFeatureExtractor", ipfx_cpu, f"n_spikes {n_ipfx}"))
for name, label in [("efel", "eFEL 8 features, interp 0.1 ms"), ("efel_native", "eFEL 8 features, interp 0.02 ms")]:
    d = load(name)
    sc = d["result"]["features"].get("Spikecount") or d["result"]["features"].get("spike_count")
    rows.append((label, d["timing"]["median_cpu_s"], f"Spikecount {sc}"))
print(f"ours (neurostream detect_spikes): median CPU {ours_med*1e3:.3f} ms over runs {', '.join(f'{x*1e3:.3f}' for x in ours)} ms")
for label, cpu, note in rows:
    print(f"{label:34s} median CPU {cpu*1e3:8.3f} ms   ours/theirs {ours_med/cpu:.4f}   speed-up {cpu/ours_med:6.1f}x   ({note})")
print("load average at peer start:", ipfx[0]["env"].get("loadavg_at_start"))
PY
