"""The default run (``trpo-lab``, no overrides) against variants of it: one table.

    python benchmarks/bench_default.py [--seeds 10] [--jobs 2] [--out DIR] \
        [--variant NAME "k=v k=v ..."] ...

Every run is a subprocess ``python -m trpo_lab <variant's overrides> seed=K logger=none
progress=false hydra.run.dir=DIR/runs/<hash>/seed<K>``, at most ``--jobs`` at a time, with the
run's own evaluation on (the default run's ``eval.episodes`` and ``eval.heldout_episodes``), so
the table shows both how well the run learns and what its truth measurement resolves. A rerun
with the same variants and --out reuses completed runs (trpo-lab skips a completed run
directory).

Without ``--variant`` the variants are VARIANTS: the default (rewards scaled for the critic on
CartPole, its step length from the undamped s^T F s, fix (c) of the truth issue in 77df736);
main's old default (``env.normalize_reward=false``); the default with the step length from
before 77df736 (``algo.step_length=damped``: s^T (F + damping I) s); and the default with
``batch_steps=4096``. With ``--variant`` only the named ones run ("" = no
overrides).

Per variant, over seeds:

- final return per seed: the median of ``rollout/return_mean`` over the last 5 updates (the
  undiscounted return of the training episodes that ended in each of those batches);
- solved: seeds with final return >= 475;
- backtracks / update: mean ``trpo/backtracks`` over all updates of all seeds;
- resolved: the fraction of evaluated updates with |true/improvement| > 1.96
  true/improvement_se (all seeds pooled), and the median of |dJ| / SE over them (an update
  whose 64 paired episodes all coincide has dJ = SE = 0: it counts as unresolved, and its
  ratio counts as 0);
- wall s: the training loop's seconds (``summary.json`` ``wall_s``), median over seeds;
- p: a one-sided Mann-Whitney U test (scipy) that the variant's final returns are larger
  than those of the reference variant (``--reference``; default: the default, or the first
  ``--variant``).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from scipy.stats import mannwhitneyu

SOLVED = 475.0
LAST_ROWS = 5
Z_RESOLVED = 1.96

# name -> overrides. The default learns its critic in scaled rewards (env.normalize_reward=true in
# conf/env/cartpole.yaml, issue 22); main's old default did not, and solved 4 of 10 seeds. The
# step length before the truth issue's fix (c) in 77df736 was measured with the damped matrix.
# The last row is the measured alternative with the most resolved updates that still solves
# 10 of 10: half as many, larger batches (fewer updates after the run solves).
VARIANTS: dict[str, tuple[str, ...]] = {
    "default (critic on scaled rewards)": (),
    "main's old default (unscaled rewards)": ("env.normalize_reward=false",),
    "default, damped s^T F s (before 77df736)": ("algo.step_length=damped",),
    "default, batch 4096 (25 updates)": ("batch_steps=4096",),
}
REFERENCE = "default (critic on scaled rewards)"


@dataclass
class Run:
    variant: str
    seed: int
    run_dir: Path
    overrides: tuple[str, ...]
    status: str = "failed"
    final: float = math.nan
    updates: int = 0
    backtracks: list[float] = field(default_factory=list)
    z: list[float] = field(default_factory=list)  # |dJ| / SE per evaluated update
    resolved: list[bool] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)  # each evaluated update's row (update index)
    equal: list[bool] = field(default_factory=list)  # dJ = SE = 0: all paired episodes equal
    solved_at: int | None = None  # first_solved() of rollout/return_mean
    wall_s: float = math.nan


def floats(rows: list[dict[str, str]], key: str) -> list[float]:
    return [float(r[key]) if r.get(key) not in ("", None) else math.nan for r in rows]


def final_return(returns: Sequence[float]) -> float:
    """The median of the last LAST_ROWS finite rollout/return_mean values."""
    tail = [x for x in returns if math.isfinite(x)][-LAST_ROWS:]
    return statistics.median(tail) if tail else math.nan


def first_solved(returns: Sequence[float]) -> int | None:
    """The first update t whose trailing median of LAST_ROWS rollout/return_mean values (updates
    t - LAST_ROWS + 1 .. t, all finite) is >= SOLVED, as final_return() of a run stopped after
    update t; None if no update is."""
    for t in range(LAST_ROWS - 1, len(returns)):
        window = returns[t - LAST_ROWS + 1:t + 1]
        if all(math.isfinite(x) for x in window) and statistics.median(window) >= SOLVED:
            return t
    return None


def truth(dj: Sequence[float], se: Sequence[float]
          ) -> tuple[list[float], list[bool], list[int], list[bool]]:
    """Per evaluated update (row with finite dJ and SE): |dJ| / SE (0 where dJ = SE = 0),
    whether |dJ| > 1.96 SE, its row, and whether dJ = SE = 0 (every paired episode equal)."""
    z, resolved, rows, equal = [], [], [], []
    for row, (d, s) in enumerate(zip(dj, se)):
        if not (math.isfinite(d) and math.isfinite(s)):
            continue
        resolved.append(abs(d) > Z_RESOLVED * s)
        z.append(abs(d) / s if s > 0 else (math.inf if d else 0.0))
        rows.append(row)
        equal.append(d == 0.0 and s == 0.0)
    return z, resolved, rows, equal


def resolution(runs: Sequence[Run], before_solved: bool = False, skip_equal: bool = False
               ) -> tuple[float, float, int]:
    """Pooled over runs: the fraction of evaluated updates with |dJ| > 1.96 SE, the median of
    |dJ| / SE and how many updates there are; with before_solved, only the updates before each
    run's first_solved() update (all of a run that never solves); with skip_equal, without
    the updates whose paired episodes all coincide (dJ = SE = 0). NaN where there are none."""
    z, resolved = [], []
    for run in runs:
        cut = math.inf if (run.solved_at is None or not before_solved) else run.solved_at
        keep = [i for i, row in enumerate(run.rows)
                if row < cut and not (skip_equal and run.equal[i])]
        z += [run.z[i] for i in keep]
        resolved += [run.resolved[i] for i in keep]
    if not resolved:
        return math.nan, math.nan, 0
    return sum(resolved) / len(resolved), statistics.median(z), len(resolved)


def execute(run: Run) -> Run:
    run.run_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    cmd = [sys.executable, "-m", "trpo_lab", *run.overrides, f"seed={run.seed}", "logger=none",
           "progress=false", f"hydra.run.dir={run.run_dir}"]
    with (run.run_dir / "bench.log").open("w") as log:
        subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, check=False)
    return read_run(run)


def read_run(run: Run) -> Run:
    """Fill in a run's figures from its run directory's summary.json and metrics.csv."""
    try:
        summary = json.loads((run.run_dir / "summary.json").read_text())
        with (run.run_dir / "metrics.csv").open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, ValueError):
        return run
    run.status = summary.get("status", "failed")
    run.wall_s = float(summary.get("wall_s") or math.nan)
    run.updates = len(rows)
    returns = floats(rows, "rollout/return_mean")
    run.final = final_return(returns)
    run.solved_at = first_solved(returns)
    run.backtracks = floats(rows, "trpo/backtracks")
    dj, se = floats(rows, "true/improvement"), floats(rows, "true/improvement_se")
    run.z, run.resolved, run.rows, run.equal = truth(dj, se)
    return run


def fmt(x: float, digits: int = 1) -> str:
    return "nan" if math.isnan(x) else f"{x:.{digits}f}"


def table(variants: dict[str, tuple[str, ...]], runs: Sequence[Run], reference: str) -> str:
    lines = [f"Default-run benchmark ({os.cpu_count()} CPUs): final return = median "
             f"rollout/return_mean of the last {LAST_ROWS} updates; solved = final >= "
             f"{SOLVED:g}; resolved = |dJ| > {Z_RESOLVED} SE; first solved = the first update "
             f"whose median rollout/return_mean over it and the {LAST_ROWS - 1} before is >= "
             f"{SOLVED:g} (- = none); before solved = the evaluated updates before it (all of "
             f"a run that never solves); all pairs equal = evaluated updates with dJ = SE = 0, "
             f"left out of the column after it; "
             f"p = one-sided Mann-Whitney, final returns greater than those of "
             f"\"{reference}\".", "",
             "| variant | overrides | final return per seed | median | solved | "
             "backtracks / update | resolved | median abs dJ / SE | first solved per seed | "
             "resolved before solved | median abs dJ / SE before solved | all pairs equal | "
             "resolved, all pairs equal left out | "
             "wall s | p |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | "
             "---: | ---: | ---: |"]
    def finals_of(name: str) -> list[float]:
        return [r.final for r in sorted((r for r in runs if r.variant == name),
                                        key=lambda r: r.seed)]

    base = finals_of(reference)
    for name, overrides in variants.items():
        group = sorted((r for r in runs if r.variant == name), key=lambda r: r.seed)
        finals = finals_of(name)
        backtracks = [b for r in group for b in r.backtracks if math.isfinite(b)]
        frac, median_z, evaluated = resolution(group)
        frac_before, median_z_before, _ = resolution(group, before_solved=True)
        frac_moved, _, _ = resolution(group, skip_equal=True)
        walls = [r.wall_s for r in group if math.isfinite(r.wall_s)]
        solved = sum(1 for x in finals if x >= SOLVED)
        if name == reference:
            p = "-"
        else:
            ok = all(math.isfinite(x) for x in finals + base)
            p = f"{mannwhitneyu(finals, base, alternative='greater').pvalue:.3f}" if ok \
                else "nan"
        lines.append(
            f"| {name} | `{' '.join(overrides) or '(none)'}` | "
            f"{', '.join(fmt(x, 0) for x in finals)} | {fmt(statistics.median(finals), 0)} | "
            f"{solved}/{len(finals)} | "
            f"{fmt(statistics.fmean(backtracks) if backtracks else math.nan, 2)} | "
            f"{fmt(frac, 2)} | {fmt(median_z, 2)} | "
            f"{', '.join('-' if r.solved_at is None else str(r.solved_at) for r in group)} | "
            f"{fmt(frac_before, 2)} | {fmt(median_z_before, 2)} | "
            f"{sum(sum(r.equal) for r in group)}/{evaluated} | {fmt(frac_moved, 2)} | "
            f"{fmt(statistics.median(walls) if walls else math.nan)} | {p} |")
    failed = [r for r in runs if r.status != "completed"]
    if failed:
        lines += ["", "Not completed:"] + [f"- {r.variant} seed {r.seed}: {r.status} "
                                           f"({r.run_dir / 'bench.log'})" for r in failed]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10, help="seeds 0 .. N-1 (default 10)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (default 2)")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench_default"))
    parser.add_argument("--variant", nargs=2, action="append", metavar=("NAME", "OVERRIDES"),
                        help="a variant: its name and its overrides in one argument "
                             "(\"\" = the default); repeatable; replaces VARIANTS")
    parser.add_argument("--reference", help="the variant the p column compares with")
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.jobs < 1:
        parser.error("--seeds and --jobs must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    variants = ({name: tuple(text.split()) for name, text in args.variant} if args.variant
                else VARIANTS)
    reference = args.reference or (next(iter(variants)) if args.variant else REFERENCE)
    if reference not in variants:
        print(f"bench_default: --reference {reference!r} is not a variant "
              f"({', '.join(variants)})", file=sys.stderr)
        return 2
    out = args.out.absolute()
    runs = []
    for name, overrides in variants.items():
        digest = hashlib.sha1(" ".join(overrides).encode()).hexdigest()[:8]
        runs += [Run(name, seed, out / "runs" / digest / f"seed{seed}", overrides)
                 for seed in range(args.seeds)]
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for run in pool.map(execute, runs):
            print(f"{run.variant} seed {run.seed}: {run.status}, final {fmt(run.final)}, "
                  f"{fmt(run.wall_s)} s", file=sys.stderr, flush=True)
    report = table(variants, runs, reference) + (f"\n{len(runs)} runs, {args.jobs} at a time: "
                                      f"{time.perf_counter() - start:.0f} s wall.\n")
    print(report)
    (out / "default.md").write_text(report)
    return 0 if all(r.status == "completed" for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
