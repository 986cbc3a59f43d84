#!/usr/bin/env python3
"""Print the measured study numbers straight from the pipelines' metrics.json files.

The results table of docs/studies.md (and the README's one number per study) quotes these
numbers; this script is how to check it (stdlib only):

    bash scripts/study_results.sh            # runs the study pipelines, then this script
    python3 scripts/study_results.py          # only reads pipelines/runs/*/artifacts/*/metrics.json

Every train.* stage writes `<run dir>/artifacts/<stage>/metrics.json` with, per target, the pooled
out-of-fold metrics (`pooled.values`) and, when the stage has `report_by`, one entry per group.
"""
import glob
import json
import os
import sys

KEYS = {
    "train.regress": ["r2", "mae", "pearson_r"],
    "train.classify": ["balanced_accuracy", "accuracy", "macro_f1", "majority_baseline_accuracy", "chance_accuracy"],
    "train.cluster": ["hungarian_accuracy", "nmi", "ari"],
}


def fmt(v):
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def groups(target):
    """Per-group breakdowns: any dict entry other than per_fold/pooled whose values hold `values`."""
    for key, val in target.items():
        if key in ("per_fold", "pooled", "classes") or not isinstance(val, dict):
            continue
        for name, g in val.items():
            if isinstance(g, dict) and "values" in g:
                yield key, name, g


def main(root):
    files = sorted(glob.glob(os.path.join(root, "*", "artifacts", "*", "metrics.json")))
    if not files:
        sys.exit(f"no metrics.json under {root}/*/artifacts/*/ (run the pipelines first)")
    print("| pipeline | stage | target | rows | metrics (pooled, out of fold) |")
    print("|---|---|---|---|---|")
    for f in files:
        m = json.load(open(f))
        pipeline = f.split(os.sep)[-4]
        keys = KEYS.get(m.get("kind"), [])
        for name, t in sorted(m.get("targets", {}).items()):
            pooled = t.get("pooled", {})
            vals = pooled.get("values", {})
            shown = ", ".join(f"{k} {fmt(vals[k])}" for k in keys if k in vals) or ", ".join(
                f"{k} {fmt(v)}" for k, v in sorted(vals.items()))
            print(f"| {pipeline} | {m.get('stage')} | {name} | {pooled.get('rows', m.get('rows_used'))} | {shown} |")
            for by, gname, g in groups(t):
                gv = g["values"]
                shown = ", ".join(f"{k} {fmt(gv[k])}" for k in keys if k in gv)
                print(f"| {pipeline} | {m.get('stage')} | {name} [{by} = {gname}] | {g.get('rows', '')} | {shown} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "pipelines", "runs"))
