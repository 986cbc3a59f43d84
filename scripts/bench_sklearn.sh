#!/usr/bin/env bash
# Our classifiers (linfa / smartcore through neurostream::train) against scikit-learn on the same
# Parquet data sets (../shared/ref/peers/sklearn_*.parquet), one thread each, same session:
# fit CPU time (median of 3) and test accuracy on a 75/25 stratified split.
#   PEERS_VENV_DIR=... bash scripts/bench_sklearn.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PEERS="${PEERS_DIR:-../shared/peers}"
REF="${PEERS_REF_DIR:-../shared/ref/peers}"
export PEERS_VENV_DIR="${PEERS_VENV_DIR:-$HOME/.cache/neurostream-peers}"
OUT=target/bench-sklearn
mkdir -p "$OUT"
"$PEERS/setup.sh" "$PEERS_VENV_DIR" venv
"$PEERS/run.sh" sklearn --models logreg,rf,svc --kmeans none --out "$OUT/peer.json"
cargo run --release --example bench_vs_sklearn -- "$REF/sklearn_binary_80_20.parquet" "$REF/sklearn_five_class.parquet" | tee "$OUT/ours.tsv"
python3 - "$OUT" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
peer = json.load(open(out / "peer.json"))["result"]["runs"]
print("dataset        model   ours_cpu_s  sklearn_cpu_s  ours/theirs  acc_ours  acc_sklearn")
for line in open(out / "ours.tsv").read().splitlines()[1:]:
    ds, model, cpu, _wall, acc = line.split("\t")
    key = ds.replace("sklearn_", "") + "/" + model
    p = peer[key]
    pc = p["timing"]["median_cpu_s"]
    print(f"{ds:14} {model:7} {float(cpu):10.3f} {pc:14.4f} {float(cpu) / pc:12.1f} {float(acc):9.4f} {p['accuracy']:12.4f}")
PY
