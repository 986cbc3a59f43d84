#!/usr/bin/env bash
# Runs every study pipeline with the release binary, then prints the numbers the results table of
# docs/studies.md (and the README's one per study) quotes, read from each train stage's
# metrics.json (scripts/study_results.py).
#   bash scripts/study_results.sh            # all study pipelines (~15 min on 2 cores; dic_train is most of it)
#   bash scripts/study_results.sh ei_units   # only the named pipelines
# Checkpoints are reused: a pipeline whose stages did not change reruns in seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --bin neurostream
PIPELINES=("$@")
if [ ${#PIPELINES[@]} -eq 0 ]; then
  PIPELINES=(allen_spikecounts natimg_decode natimg_decode_nosignal glif_inference ei_units dic_train dic_population)
fi
for p in "${PIPELINES[@]}"; do
  echo "== $p"
  /usr/bin/time -f "   $p: %e s wall, %M KB peak RSS" target/release/neurostream --quiet run "pipelines/$p.toml"
done
python3 scripts/study_results.py pipelines/runs
