"""Which dJ interval covers the exact dJ: every rule scored on the same paired draws.

    nice -n 10 python benchmarks/bench_pairs.py [--shapes "20x2 b2 g0.8" ...] [--seeds 2]
        [--updates 250] [--max-pairs 4096] [--jobs 2] [--keep DIR]

Per shape (benchmarks/bench_truth.SHAPES), ``--seeds`` runs of sampled TRPO (GAE) at the
default settings: at every update that moved the policy the paired evaluator draws rounds of
``eval.episodes`` (64) fresh pairs up to ``--max-pairs`` whatever differs (the run's own logged
columns are those of the default rule, computed on the first rounds), and every rule below is
computed on a prefix of the same rounds and scored against the exact dJ (``true/improvement``),
so the rules differ only in the statistic and the stopping point, never in the draw.

Rules (``RULES``): when to stop drawing rounds of 64 pairs (at least ``min_differing`` differ,
``max_pairs`` reached, or ``max_coinciding`` drawn with none differing) and whether an update
with no differing pair gets the interval of the no-difference bound
(``trpo_lab.intervals.no_difference_half_width``; else {0}); each replayed through the
evaluator's own ``paired_improvement``, interval mean +/- 1.96 SE. On the default rule's pairs,
three other intervals (``INTERVALS``): the t quantile on K - 1 degrees of freedom (K differing
pairs), Hall's (1992) skewness-corrected t (the monotone cubic transformation of the
studentised mean, the sample skewness of D), and a bootstrap-t (999 resamples).

Writes scores.csv (one row per run, moved update and rule) in ``--keep`` and prints the
coverage per shape with the mean pairs drawn.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import t as student_t

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_truth import SHAPES, coverage_config, fresh_coverage_run_dir, markdown  # noqa: E402

from trpo_lab import train as train_module  # noqa: E402
from trpo_lab.envs.tabular import garnet, horizon_for  # noqa: E402
from trpo_lab.intervals import (  # noqa: E402
    EXACT_TOLERANCE,
    Z_95,
    PairedImprovement,
    covered,
    paired_improvement,
    paired_return_bound,
)

ROUND = 64


def job(args: tuple[str, str, int, int, int, str]) -> str:
    """One run with the paired evaluator wrapped; writes pairs.npz beside metrics.csv."""
    shape, estimator, seed, updates, max_pairs, workdir = args
    run_dir, done = fresh_coverage_run_dir(workdir, shape, estimator, seed, "pairs.npz")
    if done:
        return str(run_dir)
    typed = coverage_config(shape, estimator, seed, updates, (f"eval.max_pairs={max_pairs}",))
    rows: list[np.ndarray] = []
    original = train_module.paired_improvement

    def paired_improvement(new, old, moved, min_differing, max_pairs_, draw, *rule):
        news, olds = [np.asarray(new, np.float64)], [np.asarray(old, np.float64)]
        if moved:
            for r in range(1, max_pairs_ // news[0].size):
                more_new, more_old = draw(r)
                news.append(np.asarray(more_new, np.float64))
                olds.append(np.asarray(more_old, np.float64))
        d = np.full(max_pairs_, np.nan)
        drawn = np.concatenate(news) - np.concatenate(olds)
        d[:drawn.size] = drawn
        rows.append(d)
        rounds = iter(zip(news[1:], olds[1:]))
        return original(news[0], olds[0], moved, min_differing, typed.eval.max_pairs,
                        lambda r: next(rounds), *rule)

    train_module.paired_improvement = paired_improvement
    try:
        train_module.Trainer(typed, run_dir).run()
    finally:
        train_module.paired_improvement = original
    np.savez_compressed(run_dir / "pairs.npz", d=np.stack(rows))
    return str(run_dir)


#: rules scored: name -> (eval.min_differing, eval.max_pairs, eval.max_coinciding_pairs,
#: whether the no-difference bound is used); "default" is the configuration's
DEFAULT = "default (64 / 4096, stop at 512 coinciding, bound)"
RULES = {
    DEFAULT: (64, 4096, 512, True),
    "64 / 4096, stop at 1024 coinciding, bound": (64, 4096, 1024, True),
    "64 / 4096, bound": (64, 4096, None, True),
    "64 / 4096": (64, 4096, None, False),
    "64 / 2048, bound": (64, 2048, None, True),
    "128 / 4096, bound": (128, 4096, None, True),
    "old default (64 / 1024)": (64, 1024, None, False),
    "64 / 1024, bound": (64, 1024, None, True),
    "64 fixed": (0, 64, None, False),
}


def hall_interval(d: np.ndarray, z: float = Z_95) -> tuple[float, float]:
    """Hall's skewness-corrected interval for the mean: g(T) = T + b T^2 + b^2 T^3 / 3 + b / 2,
    b = skew / (3 sqrt(n)), T the studentised mean, inverted at +/- z."""
    n, mean = d.size, d.mean()
    se = d.std(ddof=1) / np.sqrt(n)
    centred = d - mean
    skew = (centred**3).mean() / (centred**2).mean() ** 1.5 if se > 0 else 0.0
    b = skew / (3 * np.sqrt(n))
    if abs(b) < 1e-12:
        return mean - z * se, mean + z * se
    inverse = lambda q: (np.cbrt(1 + 3 * b * (q - b / 2)) - 1) / b  # noqa: E731
    return mean - se * inverse(z), mean - se * inverse(-z)


def bootstrap_t_interval(d: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    n, mean = d.size, d.mean()
    se = d.std(ddof=1) / np.sqrt(n)
    if se == 0:
        return mean, mean
    resampled = d[rng.integers(0, n, (999, n))]
    resampled_se = resampled.std(axis=1, ddof=1) / np.sqrt(n)
    t = (resampled.mean(axis=1) - mean) / np.where(resampled_se > 0, resampled_se, np.nan)
    low_q, high_q = np.nanpercentile(t, [2.5, 97.5])
    return mean - high_q * se, mean - low_q * se


def t_interval(d: np.ndarray) -> tuple[float, float]:
    n, mean = d.size, d.mean()
    se = d.std(ddof=1) / np.sqrt(n)
    q = student_t.ppf(0.975, max(int(np.count_nonzero(d)) - 1, 1))
    return mean - q * se, mean + q * se


#: other intervals on the default rule's pairs
INTERVALS = {"default pairs, t on K - 1 df": t_interval,
             "default pairs, Hall skewness-corrected": hall_interval,
             "default pairs, bootstrap-t": bootstrap_t_interval}


def replay(d: np.ndarray, rule: tuple[int, int, int | None, bool],
           bound: float) -> PairedImprovement:
    """The logged estimate a rule gives on the stored pair differences ``d`` (rounds of 64,
    NaN past what was drawn), through the evaluator's own :func:`paired_improvement`."""
    min_differing, max_pairs, max_coinciding, use_bound = rule
    drawn = d[np.isfinite(d)].reshape(-1, ROUND)
    return paired_improvement(drawn[0], np.zeros(ROUND), True, min_differing, max_pairs,
                              lambda r: (drawn[r], np.zeros(ROUND)), max_coinciding,
                              bound if use_bound else None)


def score(run_dirs: list[str]) -> pd.DataFrame:
    """One row per (run, moved update, rule): pairs drawn, differing, covered."""
    rng = np.random.default_rng(0)
    rows = []
    for run in run_dirs:
        metrics = pd.read_csv(Path(run) / "metrics.csv")
        d_all = np.load(Path(run) / "pairs.npz")["d"]
        truth = metrics["true/improvement"].to_numpy()
        moved = metrics["trpo/accepted"].to_numpy() == 1
        shape, estimator, seed = Path(run).name.rsplit("-", 2)
        shape = shape.replace("_", " ")
        states, actions, branching, gamma = SHAPES[shape]
        mdp = garnet(states, actions, branching, 100 + int(seed))
        bound = paired_return_bound(float(mdp.R.min()), float(mdp.R.max()), gamma,
                                    horizon_for(gamma))
        for i in np.flatnonzero(moved):
            row = {"shape": shape, "estimator": estimator, "seed": int(seed), "update": int(i)}
            for name, rule in RULES.items():
                est = replay(d_all[i], rule, bound)
                rows.append({**row, "rule": name, "pairs": est.pairs, "differing": est.differing,
                             "hit": bool(covered(est.mean, est.se, truth[i]))})
            default = replay(d_all[i], RULES[DEFAULT], bound)
            pairs = d_all[i][:default.pairs]
            for name, interval in INTERVALS.items():
                low, high = (bootstrap_t_interval(pairs, rng) if interval is bootstrap_t_interval
                             else interval(pairs)) if default.differing else (
                    default.mean - Z_95 * default.se, default.mean + Z_95 * default.se)
                rows.append({**row, "rule": name, "pairs": default.pairs,
                             "differing": default.differing,
                             "hit": bool(low - EXACT_TOLERANCE <= truth[i]
                                         <= high + EXACT_TOLERANCE)})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--estimators", nargs="+", default=["sampled"],
                        choices=["sampled", "exact"])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--updates", type=int, default=250)
    parser.add_argument("--max-pairs", type=int, default=4096)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--keep", type=Path)
    args = parser.parse_args()
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="bench_pairs_"))
    workdir.mkdir(parents=True, exist_ok=True)
    jobs = [(s, e, seed, args.updates, args.max_pairs, str(workdir))
            for s in args.shapes for e in args.estimators for seed in range(args.seeds)]
    with ProcessPoolExecutor(args.jobs) as pool:
        run_dirs = list(pool.map(job, jobs))
    scores = score(run_dirs)
    scores.to_csv(workdir / "scores.csv", index=False)
    for estimator, part in scores.groupby("estimator"):
        table = part.groupby(["rule", "shape"], sort=False).agg(
            moved=("hit", "size"), coverage=("hit", "mean"), pairs=("pairs", "mean"))
        print(f"\n{estimator} advantages: coverage of the exact dJ over moved updates "
              f"(mean pairs drawn)")
        rows = []
        for rule in [*RULES, *INTERVALS]:
            row = {"rule": rule}
            for shape in part["shape"].unique():
                moved, coverage, pairs = table.loc[(rule, shape)]
                row[f"{shape} ({int(moved)})"] = f"{coverage:.3f} ({pairs:.0f})"
            rows.append(row)
        print(markdown(rows))


if __name__ == "__main__":
    main()
