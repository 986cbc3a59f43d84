"""R² of study 1's out-of-fold predictions (pipelines/allen_spikecounts.toml) per stimulus type,
with and without the steep mouse Pvalb cell 614777438, read from the run's checkpoints.

    python scripts/study1_breakdown.py [pipelines/runs/allen_spikecounts]

Needs pyarrow and numpy only. R² = 1 - SS_res / SS_tot about the scored rows' own mean, as in
metrics.json; the GLIF baseline is scored on the `glif` stage's Long Square rows.
"""
import glob
import os
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

RUN = sys.argv[1] if len(sys.argv) > 1 else "pipelines/runs/allen_spikecounts"
PVALB = "614777438"


def table(stage):
    dirs = [d for d in glob.glob(os.path.join(RUN, stage, "*")) if os.path.exists(os.path.join(d, "manifest.json"))]
    assert dirs, f"{stage}: no checkpoint under {RUN}"
    newest = max(dirs, key=lambda d: os.path.getmtime(os.path.join(d, "manifest.json")))
    parts = sorted(glob.glob(os.path.join(newest, "*.parquet")))
    return pa.concat_tables([pq.read_table(p) for p in parts]).to_pydict()


def r2(y, p):
    y, p = np.asarray(y, float), np.asarray(p, float)
    if np.all(y == y[0]):
        return float("nan")  # every count equal (e.g. no spike in any subthreshold sweep): R² undefined
    return 1 - np.sum((y - p) ** 2) / np.sum((y - y.mean()) ** 2)


def report(stage, pred_col):
    t = table(stage)
    y = np.asarray(t["spike_count"], float)
    p = np.asarray(t[pred_col], float)
    ok = ~np.isnan(p)
    cell = np.asarray(t["recording_id"])
    name = np.asarray(t["stimulus_name"])
    for n in sorted(set(name[ok])):
        m = ok & (name == n)
        keep = m & (cell != PVALB)
        sse = np.sum((y[m] - p[m]) ** 2)
        share = np.nan if sse == 0 else np.sum((y[m & (cell == PVALB)] - p[m & (cell == PVALB)]) ** 2) / sse
        print(f"{stage:20s} {n:30s} rows {m.sum():4d}  R2 {r2(y[m], p[m]):7.3f}  without {PVALB} {r2(y[keep], p[keep]):7.3f}  ({PVALB}: {100 * share:4.1f}% of SSE)")


for stage, col in [("counts", "spike_count_predicted"), ("counts_long_square", "spike_count_predicted"), ("counts_fi", "spike_count_predicted"), ("glif", "glif_spike_count")]:
    try:
        report(stage, col)
    except (AssertionError, KeyError) as e:
        print(f"{stage}: {e!r}")
