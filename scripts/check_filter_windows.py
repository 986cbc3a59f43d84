"""Checks pipelines/filter_windows.toml's output against scipy, window by window.

Run the pipeline first (from pipelines/: `neurostream run filter_windows.toml`), then, from the
repository root:

    python scripts/check_filter_windows.py

It reads the recordings as pyABF read them (tests/fixtures/abf/*.pyabf.npy.zst, zstd on PATH),
applies scipy's sosfiltfilt(butter(4, 2 kHz, output="sos")) to the membrane potential,
resample_poly(1, 4, padtype="mean") to both traces (through float32, as the stages store them),
cuts 0.25 s windows every 0.125 s and prints the largest difference from the pipeline's windows.
Needs numpy, scipy, pyarrow.
"""
import io
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
from scipy import signal

RATE, OUT_RATE, LENGTH_S, STEP_S = 20_000.0, 5_000.0, 0.25, 0.125
table = pq.read_table("pipelines/runs/filter_windows/windows.parquet").to_pandas()
sos = signal.butter(4, 2 * 2000.0 / RATE, output="sos")
length, step = round(LENGTH_S * OUT_RATE), round(STEP_S * OUT_RATE)
worst, checked = 0.0, 0
# data/abf holds 171116sh_0018 only; the pipeline also runs on a folder holding both recordings.
for stem in sorted(set(table.file)):
    raw = subprocess.run(["zstd", "-d", "-c", f"tests/fixtures/abf/{stem}.pyabf.npy.zst"], capture_output=True, check=True).stdout
    sweeps = np.load(io.BytesIO(raw))
    rows_of_file = table[table.file == stem]
    for s in range(sweeps.shape[0]):
        v = signal.sosfiltfilt(sos, sweeps[s, 1].astype(np.float64)).astype(np.float32)
        v = signal.resample_poly(v.astype(np.float64), 1, 4, padtype="mean").astype(np.float32)
        c = signal.resample_poly(sweeps[s, 0].astype(np.float64), 1, 4, padtype="mean").astype(np.float32)
        rows = rows_of_file[rows_of_file.sweep == s].sort_values("window")
        expected = (len(v) - length) // step + 1
        if len(rows) != expected:
            sys.exit(f"{stem} sweep {s}: {len(rows)} windows, expected {expected}")
        for _, row in rows.iterrows():
            i0 = int(row.window) * step
            if abs(row.window_start_s - i0 / OUT_RATE) > 1e-12:
                sys.exit(f"{stem} sweep {s} window {row.window}: starts at {row.window_start_s} s")
            worst = max(worst, float(np.abs(np.asarray(row.response) - v[i0:i0 + length]).max()))
            worst = max(worst, float(np.abs(np.asarray(row.stimulus) - c[i0:i0 + length]).max()))
            checked += 1
print(f"{checked} windows of {len(table)} checked; largest difference from scipy: {worst:.3g} (mV or pA)")
