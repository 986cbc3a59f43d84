"""Study 1 (pipelines/allen_spikecounts.toml): the Long Square model variants measured with
scikit-learn before choosing the pipeline's `counts_fi`, leave one cell out on the 21 cells.
Prints R² over the 606 Long Square sweeps, and without the steep mouse Pvalb cell 614777438.

    /tmp/peers_venv/venv/bin/python scripts/study1_explore.py   # numpy, scikit-learn

Every cell-level feature comes from the cell's other sweep types (Noise 1/2, Short Square, Ramp)
or its GLIF model, never from a Long Square count of the cell. The last block is a diagnostic,
not a feature: it uses the Long Square counts to show how Allen's protocol ties the Noise
amplitude to the rheobase found on the cell's Long Square steps.
"""
import collections
import glob
import json
import os

import numpy as np
from sklearn.ensemble import GradientBoostingRegressor
from sklearn.linear_model import LinearRegression, Ridge
from sklearn.metrics import r2_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

ROOT = os.path.join(os.path.dirname(__file__), "..", "data")
files = sorted(glob.glob(os.path.join(ROOT, "allen_glif_cells/*/ephys_sweeps.json"))) + [os.path.join(ROOT, "glif_483101699/ephys_sweeps.json")]
rows, rheo_glif = [], {}
for f in files:
    sweeps = [s for s in json.load(open(f)) if s["stimulus_units"] in ("Amps", "pA")]
    rows += sweeps
    n = json.load(open(os.path.join(os.path.dirname(f), "neuron_config.json")))
    if "R_input" not in n:
        n = next(iter(n.values()))
    c = n["coeffs"]
    gain = 1.0
    if n["threshold_dynamics_method"]["name"] == "three_components_exact":
        p = n["threshold_dynamics_method"]["params"]
        ratio = p["a_voltage"] * c["a"] / (p["b_voltage"] * c["b"])
        gain = 1 / (1 - ratio) if ratio < 1 else np.inf
    # The model's rheobase th_inf/R (as GlifConfig::rough_rheobase_a), pA.
    rheo_glif[sweeps[0]["specimen_id"]] = n["th_inf"] * c["th_inf"] / (n["R_input"] / c["G"]) * gain * 1e12

by = collections.defaultdict(list)
for r in rows:
    by[(r["specimen_id"], r["stimulus_name"])].append(r)


def agg(cell, kind, col, stat, spiking=False):
    v = [r[col] or 0 for r in by.get((cell, kind), []) if not spiking or (r["num_spikes"] or 0) > 0]
    return getattr(np, stat)(v) if v else np.nan


ls = [r for r in rows if r["stimulus_name"] == "Long Square"]
y = np.array([r["num_spikes"] or 0 for r in ls], float)
g = np.array([r["specimen_id"] for r in ls])
cells = sorted(set(g))
amp = np.array([r["stimulus_absolute_amplitude"] for r in ls])
cell_feat = lambda kind, col, stat, spiking=False: np.array([agg(r["specimen_id"], kind, col, stat, spiking) for r in ls])
n1c, n2c = cell_feat("Noise 1", "num_spikes", "median"), cell_feat("Noise 2", "num_spikes", "median")
n1a = cell_feat("Noise 1", "stimulus_absolute_amplitude", "median")
ssth = cell_feat("Short Square", "stimulus_absolute_amplitude", "min", True)
ramp = cell_feat("Ramp", "num_spikes", "median")
rg = np.array([rheo_glif[c] for c in g])
x = amp / n1a
noise = (n1c + n2c) / 2


def loco(X, model, name):
    pred = np.zeros_like(y)
    for c in cells:
        te = g == c
        m = model().fit(X[~te], y[~te])
        pred[te] = m.predict(X[te])
    keep = g != 614777438
    print(f"{name:62s} R2 {r2_score(y, pred):7.3f}   without 614777438 {r2_score(y[keep], pred[keep]):6.3f}")


gbr = lambda: GradientBoostingRegressor(n_estimators=300, learning_rate=0.05, max_depth=3, min_samples_leaf=3, random_state=1)
ridge = lambda: make_pipeline(StandardScaler(), Ridge(alpha=1.0))
basis = lambda xx, knots, gain: np.column_stack([np.maximum(xx - t, 0) * gain for t in knots])
K6 = [0.2, 0.3, 0.4, 0.5, 0.6, 0.7]

print("-- trees (gradient boosting as in the pipeline)")
loco(np.c_[amp], gbr, "amplitude only")
loco(np.c_[amp, ssth, ramp], gbr, "amplitude, Short Square threshold, Ramp count")
loco(np.c_[amp, rg, amp / rg, n1c, n2c, ramp, ssth], gbr, "+ GLIF rheobase, drive over it, Noise 1/2 counts")
loco(np.c_[amp, n1c, n1a, n2c], gbr, "amplitude, Noise 1/2 counts, Noise 1 amplitude")
loco(np.c_[amp, n1a, x, n1c, n2c], gbr, "+ drive over Noise 1 amplitude")
print("-- linear in a rectified drive x = amplitude / Noise 1 amplitude")
for t in [0.3, 0.35, 0.4, 0.45, 0.5]:
    loco(np.c_[np.maximum(x - t, 0) * n1c], LinearRegression, f"OLS on max(x - {t}, 0) * Noise 1 count")
loco(np.c_[np.maximum(x - 0.4, 0)], LinearRegression, "OLS on max(x - 0.4, 0), no gain")
loco(np.c_[np.maximum(x - 0.4, 0) * ramp], LinearRegression, "OLS on max(x - 0.4, 0) * Ramp count")
print("-- knots learned: ridge (alpha 1, standardized) on a basis of knots")
loco(basis(x, K6, noise), ridge, "knots 0.2..0.7 x mean Noise count (the pipeline's counts_fi)")
loco(basis(x, K6, noise), LinearRegression, "same, OLS")
loco(basis(x, [0.3, 0.4, 0.5], noise), ridge, "knots 0.3, 0.4, 0.5")
loco(basis(x, [0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6], noise), ridge, "knots 0.25..0.6 by 0.05")
loco(basis(x, K6, n1c), ridge, "knots 0.2..0.7 x Noise 1 count only")
loco(np.c_[basis(x, K6, n1c), basis(x, K6, n2c)], ridge, "knots 0.2..0.7 x Noise 1 and Noise 2 counts apart")
print("-- the same without the Noise amplitude (drive over a threshold not set from Long Square)")
K_R = [0.5, 0.75, 1.0, 1.25, 1.5, 2.0]
loco(basis(amp / rg, K_R, noise), ridge, "knots on amplitude / GLIF rheobase, x mean Noise count")
loco(basis(amp / ssth, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6], noise), ridge, "knots on amplitude / Short Square threshold, x mean Noise count")
print("-- diagnostic (uses Long Square counts; not a feature): Noise 1 amplitude / Long Square rheobase")
ratio = []
for c in cells:
    sp = [r["stimulus_absolute_amplitude"] for r in by[(c, "Long Square")] if (r["num_spikes"] or 0) > 0 and r["stimulus_absolute_amplitude"] > 0]
    ratio.append(agg(c, "Noise 1", "stimulus_absolute_amplitude", "median") / min(sp))
print(f"median {np.median(ratio):.2f}, range {min(ratio):.2f}-{max(ratio):.2f} over {len(cells)} cells")
