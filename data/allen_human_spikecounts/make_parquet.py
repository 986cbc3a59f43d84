"""Converts the Allen human MTG spike-count table to Parquet with units (needs pyarrow).

Input: ../shared/data/allen_human_spikecounts/mtg_spikecount_dataset.csv (25,197 sweeps of 353 cells).
The stimulus amplitude is stored there multiplied by an extra 1e12 (see that folder's README.txt);
it is divided by 1e12 here and stored in pA. Usage: python3 make_parquet.py [CSV]
"""
import csv, sys
import pyarrow as pa, pyarrow.parquet as pq

src = sys.argv[1] if len(sys.argv) > 1 else "../../../shared/data/allen_human_spikecounts/mtg_spikecount_dataset.csv"
rows = list(csv.DictReader(open(src)))
schema = pa.schema([
    pa.field("recording_id", pa.string(), nullable=False),
    pa.field("sweep", pa.int64(), nullable=False),
    pa.field("stimulus_amplitude", pa.float64(), metadata={"unit": "pA"}),
    pa.field("spike_count", pa.int64()),
])
t = pa.table({
    "recording_id": [r["specimen_id"] for r in rows],
    "sweep": [int(r["sweep_number"]) for r in rows],
    "stimulus_amplitude": [float(r["stimulus_amplitude_pA"]) / 1e12 for r in rows],
    "spike_count": [int(float(r["num_spikes"])) for r in rows],
}, schema=schema)
pq.write_table(t, "mtg_spikecounts.parquet", compression="zstd")
print(t.num_rows, "rows")
