#!/usr/bin/env python3
"""Study 3: per-parameter test R² of `pipelines/glif_inference.toml`, split by what the trace lets
one identify (stdlib only). Reads the pipeline's predictions (Noise 2 test sweeps):

    cargo run --release -- run pipelines/glif_inference.toml
    python3 scripts/glif_identifiability.py [runs/glif_inference/predictions.csv]

Subsets: `spiking` (the model fired on the test sweep) / `silent`; `fit` (features.membrane found
enough subthreshold sample pairs to fit R, C and El) / `no fit` (the config fires at every step the
spike cut allows, so the trace has no subthreshold dynamics). The last line is the grid config
nearest Allen's fitted cell 485513169 (C 1e-10, El 0, R 1.834e8, dt 5e-5, th_inf 0.0341).
"""
import csv
import sys

PARAMS = ["C", "El", "R_input", "dt", "th_inf"]


def r2(rows, p):
    if len(rows) < 2:
        return float("nan")
    y = [float(r[p]) for r in rows]
    f = [float(r[p + "_predicted"]) for r in rows]
    m = sum(y) / len(y)
    tot = sum((v - m) ** 2 for v in y)
    res = sum((v - w) ** 2 for v, w in zip(y, f))
    return 1 - res / tot if tot > 0 else float("nan")


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "runs/glif_inference/predictions.csv"
    rows = list(csv.DictReader(open(path)))
    subsets = {
        "all": rows,
        "spiking": [r for r in rows if int(r["model_spike_times_count"]) > 0],
        "silent": [r for r in rows if int(r["model_spike_times_count"]) == 0],
        "fit": [r for r in rows if int(r["membrane_fit_pairs"]) >= 10],
        "no fit": [r for r in rows if int(r["membrane_fit_pairs"]) < 10],
    }
    print(f"{'subset':<9} {'rows':>5} " + " ".join(f"{p:>8}" for p in PARAMS))
    for name, sub in subsets.items():
        print(f"{name:<9} {len(sub):>5} " + " ".join(f"{r2(sub, p):8.4f}" for p in PARAMS))
    # The study's scaled MSE: [C·1e9, El, R·1e-9, dt·1e5, th_inf].
    scale = {"C": 1e9, "El": 1.0, "R_input": 1e-9, "dt": 1e5, "th_inf": 1.0}
    mse = sum((scale[p] * (float(r[p]) - float(r[p + "_predicted"]))) ** 2 for r in rows for p in PARAMS) / (len(rows) * len(PARAMS))
    print(f"scaled MSE (study's scaling) {mse:.4f}")
    cell = {"C": 1e-10, "El": 0.0, "R_input": 1.834e8, "dt": 5e-5, "th_inf": 0.0341}
    for r in rows:
        if all(abs(float(r[p]) - v) <= 1e-6 * max(abs(v), 1e-12) for p, v in cell.items()):
            print("fitted cell's config: " + ", ".join(f"{p} {float(r[p + '_predicted']):.4g} ({float(r[p + '_predicted']) / v:.3f}x)" if v else f"{p} {float(r[p + '_predicted']):.4g}" for p, v in cell.items()) + f"; spikes {r['model_spike_times_count']}")


if __name__ == "__main__":
    main()
