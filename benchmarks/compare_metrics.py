"""The default run of this checkout against another checkout's: the truth's columns bit for bit,
and the evaluation's share of the run's time.

    python benchmarks/compare_metrics.py --reference /work/main/.venv/bin/python [--seeds 0 1]
        [--out DIR] [overrides ...]

For each seed, ``trpo-lab seed=S logger=none progress=false`` (plus the overrides) runs once
with this checkout's interpreter and once with ``--reference`` (another checkout's venv), one
after the other. Every ``true/*``, ``mc/*``, ``eval/*`` and ``surrogate/*heldout*`` column of the
two metrics.csv must be identical (NaN equal to NaN); the script prints, per run, the wall time
of the training loop (summary.json's ``wall_s``), the summed ``time/eval_s``, its share, and the
evaluation's env steps per second (paired and held-out episodes over ``time/eval_s``), and exits
1 if any column differs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

COMPARED = ("true/", "mc/", "eval/")


def compared_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns
            if c.startswith(COMPARED) or (c.startswith("surrogate/") and "heldout" in c)]


def run(python: str, seed: int, run_dir: Path, overrides: list[str]) -> dict:
    """One run; its metrics and timings."""
    command = [python, "-m", "trpo_lab", f"seed={seed}", "logger=none", "progress=false",
               f"hydra.run.dir={run_dir}", *overrides]
    subprocess.run(command, check=True, capture_output=True, text=True)
    metrics = pd.read_csv(run_dir / "metrics.csv")
    summary = json.loads((run_dir / "summary.json").read_text())
    eval_s = float(metrics["time/eval_s"].sum())
    steps = float(metrics["eval/env_steps"].iloc[-1] + metrics["heldout/env_steps"].iloc[-1])
    return {"metrics": metrics, "wall_s": float(summary["wall_s"]), "eval_s": eval_s,
            "share": eval_s / float(summary["wall_s"]), "eval_sps": steps / eval_s}


def differing(a: pd.DataFrame, b: pd.DataFrame) -> list[str]:
    """The compared columns whose values are not identical (or that only one run has)."""
    columns_a, columns_b = compared_columns(a), compared_columns(b)
    out = sorted(set(columns_a) ^ set(columns_b))
    if len(a) != len(b):
        return ["(row count)", *out]
    for c in sorted(set(columns_a) & set(columns_b)):
        x, y = a[c].to_numpy(np.float64), b[c].to_numpy(np.float64)
        if not np.array_equal(x, y, equal_nan=True):
            out.append(c)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", required=True, help="the other checkout's python")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--out", type=Path, default=None, help="run directories (default: temp)")
    args, overrides = parser.parse_known_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="compare_metrics_"))
    failed = False
    print("| seed | checkout | wall_s | eval_s | eval share | eval env steps/s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for seed in args.seeds:
        runs = {}
        for name, python in (("reference", args.reference), ("this", sys.executable)):
            runs[name] = run(python, seed, out / f"{name}_{seed}", overrides)
            r = runs[name]
            print(f"| {seed} | {name} | {r['wall_s']:.1f} | {r['eval_s']:.1f} | "
                  f"{r['share']:.0%} | {r['eval_sps'] / 1e6:.2f} M |", flush=True)
        bad = differing(runs["reference"]["metrics"], runs["this"]["metrics"])
        columns = len(compared_columns(runs["this"]["metrics"]))
        print(f"seed {seed}: {columns} columns compared, "
              f"{'identical' if not bad else 'DIFFERENT: ' + ', '.join(bad)}", flush=True)
        failed |= bool(bad)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
