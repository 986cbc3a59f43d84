#!/usr/bin/env python3
"""Compares every checkpoint of two run-directory trees, row for row and value for value.

Usage: compare_checkpoints.py BEFORE_RUNS AFTER_RUNS

For each committed checkpoint under BEFORE_RUNS (`<pipeline>/<stage>/<fingerprint>/manifest.json`)
the same folder must exist under AFTER_RUNS (same fingerprint: same kind, config, code version and
inputs) with the same rows, schema (names, types, unit metadata) and values (NaN equal to NaN), in the same order.
Prints one line per checkpoint and exits 1 if any differs or is missing. pyarrow reads the parts,
so the comparison does not use neurostream's own reader.
"""
import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def checkpoints(root: Path):
    for manifest in sorted(root.rglob("manifest.json")):
        d = manifest.parent
        if any(part.startswith(".") for part in d.relative_to(root).parts):
            continue  # temporary or trash folders of interrupted runs
        yield d.relative_to(root), json.loads(manifest.read_text())


def table(d: Path, manifest) -> pa.Table:
    parts = [pq.read_table(d / p["file"]) for p in manifest["parts"]]
    if not parts:
        return None
    return pa.concat_tables(parts)


def same_value(x, y) -> bool:
    """Equal, with NaN equal to NaN (pyarrow's `equals` treats NaN as unequal to itself)."""
    if isinstance(x, float) and isinstance(y, float) and x != x and y != y:
        return True
    if isinstance(x, list) and isinstance(y, list):
        return len(x) == len(y) and all(same_value(u, v) for u, v in zip(x, y))
    return x == y


def schema_metadata_change(a: pa.Table, b: pa.Table) -> str:
    """The schema-level metadata keys one side has and the other lacks or differs in (field
    metadata, which holds the units, is part of `same_table`)."""
    ma, mb = a.schema.metadata or {}, b.schema.metadata or {}
    keys = sorted(k.decode() for k in set(ma) | set(mb) if ma.get(k) != mb.get(k) and k != b"ARROW:schema")
    return ", ".join(keys)


def same_table(a: pa.Table, b: pa.Table) -> bool:
    """Same columns, types, field metadata (units) and values; schema-level metadata aside."""
    if a.schema != b.schema or a.num_rows != b.num_rows:
        return False
    if any(not f.equals(b.schema.field(f.name), check_metadata=True) for f in a.schema):
        return False
    for name in a.column_names:
        if not a[name].equals(b[name]):
            x, y = a[name].to_pylist(), b[name].to_pylist()
            if not all(same_value(u, v) for u, v in zip(x, y)):
                return False
    return True


def first_difference(a: pa.Table, b: pa.Table) -> str:
    if a.schema != b.schema:
        return f"schema differs:\n    {a.schema}\n    vs\n    {b.schema}"
    if a.num_rows != b.num_rows:
        return f"rows {a.num_rows} vs {b.num_rows}"
    for name in a.column_names:
        if not a[name].equals(b[name]):
            x, y = a[name].to_pylist(), b[name].to_pylist()
            i = next((i for i in range(len(x)) if not same_value(x[i], y[i])), None)
            if i is not None:
                return f"column `{name}` differs first at row {i}: {x[i]!r} vs {y[i]!r}"
    return "field metadata differs"


def main() -> int:
    before, after = Path(sys.argv[1]), Path(sys.argv[2])
    bad = 0
    n = 0
    for rel, m in checkpoints(before):
        n += 1
        other = after / rel
        label = f"{rel}  ({m['kind']}, {m['rows']} rows)"
        if not (other / "manifest.json").is_file():
            print(f"MISSING  {label}: no checkpoint with this fingerprint after the change")
            bad += 1
            continue
        m2 = json.loads((other / "manifest.json").read_text())
        a, b = table(before / rel, m), table(other, m2)
        if m["rows"] != m2["rows"] or m["schema"] != m2["schema"]:
            print(f"DIFFERS  {label}: manifest rows {m['rows']} vs {m2['rows']} or schema differs")
            bad += 1
        elif a is None and b is None:
            print(f"equal    {label} (no part files: a sink's manifest)")
        elif a is None or b is None or not same_table(a, b):
            print(f"DIFFERS  {label}: {first_difference(a, b) if a is not None and b is not None else 'parts missing'}")
            bad += 1
        elif schema_metadata_change(a, b):
            print(f"equal    {label}; schema metadata changed: {schema_metadata_change(a, b)}")
        else:
            print(f"equal    {label}")
    extra = [rel for rel, _ in checkpoints(after) if not (before / rel / "manifest.json").is_file()]
    for rel in extra:
        print(f"NEW      {rel}: a checkpoint only the changed code wrote (a fingerprint changed)")
    print(f"{n - bad} of {n} checkpoints equal; {len(extra)} new")
    return 1 if bad or extra or n == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
