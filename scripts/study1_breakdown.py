"""R² of study 1's out-of-fold predictions (pipelines/allen_spikecounts.toml) per stimulus type,
with and without the steep mouse Pvalb cell 614777438, read from the run's checkpoints; then
the f-I model with a stricter threshold, the one the cell's own GLIF model shows on its Long
Square sweeps, in place of the Noise 1 amplitude.

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


# A stricter threshold than the Noise 1 amplitude (which Allen scales to the cell's rheobase):
# the smallest positive Long Square amplitude at which the cell's own GLIF model spikes (the
# `glif` stage's simulated count, no recorded count), with the same ridge (alpha 1, standardized)
# on knots of amplitude / that threshold times the mean Noise count. A cell whose model never
# spikes gets no drive.
def ridge_loco(X, y, cells, alpha=1.0):
    pred = np.zeros_like(y)
    for c in sorted(set(cells)):
        te = cells == c
        mu, sd = X[~te].mean(0), X[~te].std(0)
        sd[sd == 0] = 1
        z = (X[~te] - mu) / sd
        w = np.linalg.solve(z.T @ z + alpha * np.eye(X.shape[1]), z.T @ (y[~te] - y[~te].mean()))
        pred[te] = y[~te].mean() + ((X[te] - mu) / sd) @ w
    return pred


t = table("fi_basis")
y = np.asarray(t["spike_count"], float)
cells = np.asarray(t["recording_id"])
amp = np.asarray(t["stimulus_amplitude"], float)
glif = np.asarray([np.nan if v is None else v for v in t["glif_spike_count"]], float)
noise = np.asarray(t["noise_spikes"], float)
th = {c: np.min(amp[(cells == c) & (glif > 0) & (amp > 0)], initial=np.inf) for c in set(cells)}
x = amp / np.array([th[c] for c in cells])
keep = cells != PVALB
print(f"GLIF-simulated threshold of {PVALB}: {th[PVALB]:.0f} pA (the recorded cell first spikes at 530 pA)")
for knots in ([0.8, 0.9, 1.0, 1.1, 1.2, 1.4], [0.6, 0.8, 1.0, 1.2, 1.4, 1.6]):
    X = np.column_stack([np.maximum(x - k, 0) * noise for k in knots])
    for extra, label in ((None, ""), (glif, " + GLIF count")):
        Xe = X if extra is None else np.column_stack([X, np.nan_to_num(extra)])
        p = ridge_loco(Xe, y, cells)
        print(f"knots {knots} on amplitude / GLIF threshold{label}: R2 {r2(y, p):.3f}  without {PVALB} {r2(y[keep], p[keep]):.3f}")
