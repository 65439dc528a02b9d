"""How well the Monte Carlo truth and the held-out prediction measure an update; prints tables.

    python benchmarks/bench_truth.py [--seeds 10] [--envs garnet cartpole pendulum]
        [--set eval.episodes=64 ...]

Per env, ``--seeds`` runs (in this process, one after another) of:

- garnet: ``sweeps/setting/garnet.yaml`` (50 states, 4 actions, gamma 0.9, tabular softmax
  policy, TRPO on sampled batches of 256 steps, 100 updates), where dJ and dL are also exact;
- cartpole: the default run (``trpo-lab``: TRPO, CartPole-v1, 100k steps);
- pendulum: ``env=pendulum`` with the settings of ``sweeps/setting/pendulum.yaml``, 100k steps.

Columns: updates evaluated; resolved = fraction of updates with |dJ| > 2 SE; median |dJ|/SE;
on the garnet, where the truth is exact: coverage of the exact dJ (and J) by the logged 95%
interval, the standard deviation of z = (mc - exact) / se, and the bias of the held-out and
in-sample dL estimates against the exact dL (mean difference +/- its standard error over
updates); Spearman correlations of the held-out and in-sample dL with dJ; the evaluation's share
of the training wall time (``time/eval_s`` summed over ``time/wall_s``).

    python benchmarks/bench_truth.py --coverage [--seeds 4] [--exact-seeds 2] [--updates 250]
        [--exact-updates 250] [--jobs 2]
        [--shapes "29x5 b3 g0.95" ...] [--keep DIR]

The per-shape coverage table (:data:`SHAPES`: the project's garnet and eight shapes nothing was
tuned on, gamma 0.8-0.99, branching 2-40): per shape ``--seeds`` runs (each its own MDP) of
sampled TRPO with GAE advantages and of exact-advantage TRPO (``algo.estimator=exact``), every
evaluation setting at its default; the fraction of updates whose logged 95% interval holds the
exact dJ (``mc/*`` against ``true/improvement``) and the exact dL (held-out against
``exact/surrogate_improvement``), over all updates and over those whose step was accepted,
with the two-sided binomial test of each moved-update coverage against 95% ("p" columns).
An exact-advantage run moves its policy only in its first few dozen updates (it converges and
the line search rejects every step after), so ``--exact-updates`` (default ``--updates``) can
cut those runs short and ``--exact-seeds`` buy the moved updates with more MDPs instead.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from hydra import compose, initialize_config_dir
from scipy.stats import binomtest, spearmanr

from trpo_lab.config import register_configs, to_typed, validate
from trpo_lab.intervals import covered
from trpo_lab.train import Trainer

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = {
    "garnet": ["+setting=garnet"],
    "cartpole": [],
    "pendulum": ["+setting=pendulum", "total_steps=100000"],
}


def run_seeds(env: str, seeds: int, extra: list[str], workdir: Path) -> pd.DataFrame:
    frames = []
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        for seed in range(seeds):
            overrides = [f"hydra.searchpath=[file://{ROOT / 'sweeps'}]", *SETTINGS[env],
                         "logger=none", "progress=false", f"seed={seed}", *extra]
            typed = to_typed(compose(config_name="config", overrides=overrides))
            validate(typed)
            run_dir = workdir / f"{env}-{seed}"
            run_dir.mkdir(parents=True)
            Trainer(typed, run_dir).run()
            frame = pd.read_csv(run_dir / "metrics.csv")
            frame["seed"] = seed
            frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def mean_se(x: pd.Series) -> str:
    x = x.dropna()
    return f"{x.mean():+.4f} +/- {x.std(ddof=1) / np.sqrt(len(x)):.4f}"


def truth_row(env: str, df: pd.DataFrame) -> dict[str, str]:
    exact = "exact/surrogate_improvement"
    tabular = exact in df and df[exact].notna().any()
    dj_key, se_key = ("mc/improvement", "mc/improvement_se") if tabular else (
        "true/improvement", "true/improvement_se")
    rows = df[df[dj_key].notna()]
    z = rows[dj_key].abs() / rows[se_key]
    share = df.groupby("seed").apply(
        lambda r: r["time/eval_s"].sum() / r["time/wall_s"].iloc[-1], include_groups=False)
    out = {
        "env": env, "runs": str(df["seed"].nunique()), "updates": str(len(rows)),
        "resolved (abs dJ > 2 SE)": f"{(z > 2).mean():.2f}",
        "median abs dJ / SE": f"{z.median():.2f}",
        "Spearman(dL held-out, dJ)": f"{spearmanr(rows['surrogate/improvement_heldout'], rows[dj_key]).statistic:.2f}",  # noqa: E501
        "Spearman(dL in-sample, dJ)": f"{spearmanr(rows['surrogate/improvement'], rows[dj_key]).statistic:.2f}",  # noqa: E501
        "eval share of wall": f"{share.median():.2f}",
    }
    if tabular:
        dz = (rows["mc/improvement"] - rows["true/improvement"]) / rows["mc/improvement_se"]
        jz = (rows["mc/J"] - rows["true/J"]) / rows["mc/J_se"]
        exact_dl = rows["exact/surrogate_improvement"]
        out.update({
            "dJ 95% coverage": f"{(dz.abs() <= 1.96).mean():.3f}",
            "J 95% coverage": f"{(jz.abs() <= 1.96).mean():.3f}",
            "sd of dJ z": f"{dz.std():.2f}",
            "held-out dL bias": mean_se(rows["surrogate/improvement_heldout"] - exact_dl),
            "in-sample dL bias": mean_se(rows["surrogate/improvement"] - exact_dl),
            "mean exact dL": f"{exact_dl.mean():.4f}",
        })
    return out


#: garnet shapes of the coverage table: name -> (states, actions, branching, gamma); the first
#: is the project's garnet, the others are shapes no test or sweep was tuned on
SHAPES = {
    "50x4 b5 g0.9": (50, 4, 5, 0.9),
    "29x5 b3 g0.95": (29, 5, 3, 0.95),
    "37x3 b4 g0.9": (37, 3, 4, 0.9),
    "20x2 b2 g0.8": (20, 2, 2, 0.8),
    "80x3 b8 g0.85": (80, 3, 8, 0.85),
    "60x6 b30 g0.95": (60, 6, 30, 0.95),
    "25x4 b2 g0.97": (25, 4, 2, 0.97),
    "25x3 b3 g0.99": (25, 3, 3, 0.99),
    "40x3 b40 g0.9": (40, 3, 40, 0.9),
}
#: the two advantage estimators the held-out dL is checked with
ESTIMATORS = ("sampled", "exact")


def coverage_overrides(shape: str, estimator: str, seed: int, updates: int) -> list[str]:
    """Sampled (GAE) or exact-advantage TRPO on a garnet shape, every evaluation setting at
    its default; each seed its own MDP (env.mdp_seed = 100 + seed)."""
    states, actions, branching, gamma = SHAPES[shape]
    return ["env=garnet", "policy=tabular", f"gamma={gamma}", f"env.num_states={states}",
            f"env.num_actions={actions}", f"env.branching={branching}",
            f"env.mdp_seed={100 + seed}", "batch_steps=256", f"total_steps={256 * updates}",
            f"algo.estimator={estimator}", "logger=none", "progress=false", f"seed={seed}",
            "checkpoint.every=0"]


def coverage_run_dir(workdir: str | Path, shape: str, estimator: str, seed: int) -> Path:
    """Where a coverage run of ``shape`` / ``estimator`` / ``seed`` writes, in ``workdir``."""
    return Path(workdir) / f"{shape.replace(' ', '_')}-{estimator}-{seed}"


def fresh_coverage_run_dir(workdir: str | Path, shape: str, estimator: str, seed: int,
                           done: str) -> tuple[Path, bool]:
    """The run's directory and whether an earlier call finished it (its file ``done``
    exists); otherwise the directory is emptied for a new run."""
    run_dir = coverage_run_dir(workdir, shape, estimator, seed)
    if (run_dir / done).exists():
        return run_dir, True
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    return run_dir, False


def coverage_config(shape: str, estimator: str, seed: int, updates: int,
                    extra: tuple[str, ...] = ()):
    """The typed, validated configuration of a coverage run (:func:`coverage_overrides`, then
    ``extra`` overrides)."""
    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        typed = to_typed(compose(config_name="config", overrides=[
            *coverage_overrides(shape, estimator, seed, updates), *extra]))
    validate(typed)
    return typed


def coverage_job(args: tuple[str, str, int, int, str]) -> str:
    """One coverage run (in a worker process); returns its metrics.csv path."""
    shape, estimator, seed, updates, workdir = args
    run_dir = coverage_run_dir(workdir, shape, estimator, seed)
    if (run_dir / "metrics.csv").exists() and \
            len(pd.read_csv(run_dir / "metrics.csv")) == updates:
        return str(run_dir / "metrics.csv")  # kept from an earlier call
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    Trainer(coverage_config(shape, estimator, seed, updates), run_dir).run()
    return str(run_dir / "metrics.csv")


def coverage_row(shape: str, runs: dict[str, pd.DataFrame]) -> dict[str, str]:
    """Coverage of the exact dJ and dL by the logged 95% intervals (mean +/- 1.96 SE, within
    the exact solver's rounding), over all updates and over the updates whose step was
    accepted (the others did not move the policy: dJ = 0 exactly, interval {0})."""
    out = {"shape": shape}

    def p_value(hit: pd.Series) -> str:
        return f"{binomtest(int(hit.sum()), len(hit), 0.95).pvalue:.2f}"

    for estimator, df in runs.items():
        moved = df["trpo/accepted"] == 1
        dj = covered(df["mc/improvement"], df["mc/improvement_se"], df["true/improvement"])
        dl = covered(df["surrogate/improvement_heldout"], df["surrogate/improvement_heldout_se"],
                     df["exact/surrogate_improvement"])
        if estimator == "sampled":
            out |= {"updates": str(len(df)), "moved": f"{moved.mean():.2f}",
                    "dJ cov": f"{dj.mean():.3f}", "dJ cov (moved)": f"{dj[moved].mean():.3f}",
                    "dJ p (moved)": p_value(dj[moved]),
                    "SE 0 (moved)": f"{(df['mc/improvement_se'][moved] == 0).mean():.3f}",
                    "mean pairs": f"{df['eval/pairs'].mean():.0f}",
                    "dL cov GAE": f"{dl.mean():.3f}",
                    "dL cov GAE (moved)": f"{dl[moved].mean():.3f}",
                    "dL GAE p (moved)": p_value(dl[moved])}
        else:
            out |= {"updates (exact A)": str(len(df)), "moved (exact A)": str(int(moved.sum())),
                    "dJ cov (exact A)": f"{dj.mean():.3f}",
                    "dL cov exact A": f"{dl.mean():.3f}",
                    "dL cov exact A (moved)": f"{dl[moved].mean():.3f}",
                    "dL exact A p (moved)": p_value(dl[moved])}
    return out


def coverage_table(seeds: int, exact_seeds: int, updates: int, shapes: list[str],
                   workdir: Path, jobs: int, exact_updates: int | None = None
                   ) -> list[dict[str, str]]:
    # seed by seed over the shapes (GAE runs first): every shape fills up at the same pace
    lengths = {"sampled": updates, "exact": updates if exact_updates is None else exact_updates}
    tasks = [(shape, estimator, seed, lengths[estimator], str(workdir)) for estimator in ESTIMATORS
             for seed in range(seeds if estimator == "sampled" else exact_seeds)
             for shape in shapes]
    with ProcessPoolExecutor(jobs) as pool:
        paths = list(pool.map(coverage_job, tasks))
    frames: dict[tuple[str, str], list[pd.DataFrame]] = {}
    for (shape, estimator, seed, _, _), path in zip(tasks, paths):
        frames.setdefault((shape, estimator), []).append(pd.read_csv(path).assign(seed=seed))
    return [coverage_row(shape, {e: pd.concat(frames[shape, e], ignore_index=True)
                                 for e in ESTIMATORS}) for shape in shapes]


def markdown(rows: list[dict[str, str]]) -> str:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row.get(c, "") for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--envs", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--set", nargs="*", default=[], help="extra overrides for every run")
    parser.add_argument("--keep", type=Path, help="keep the run directories here (with "
                        "--coverage, runs already there are reused)")
    parser.add_argument("--coverage", action="store_true",
                        help="the per-shape coverage table instead: --seeds runs of "
                             "--updates sampled and exact-advantage TRPO updates per shape")
    parser.add_argument("--updates", type=int, default=250)
    parser.add_argument("--exact-seeds", type=int, default=2,
                        help="runs with exact advantages per shape (--coverage)")
    parser.add_argument("--exact-updates", type=int, default=None,
                        help="updates per exact-advantage run (--coverage; default --updates)")
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    register_configs()
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="bench_truth-"))
    if args.coverage:
        try:
            rows = coverage_table(args.seeds, args.exact_seeds, args.updates, args.shapes,
                                  workdir, args.jobs, args.exact_updates)
        finally:
            if args.keep is None:
                shutil.rmtree(workdir, ignore_errors=True)
        exact_updates = args.updates if args.exact_updates is None else args.exact_updates
        print(f"{args.seeds} seeds x {args.updates} updates (GAE advantages) and "
              f"{args.exact_seeds} x {exact_updates} (exact advantages) "
              f"per shape, default evaluation settings; 95% "
              f"intervals, coverage of the exact value")
        print(markdown(rows))
        return
    rows = []
    try:
        for env in args.envs:
            df = run_seeds(env, args.seeds, args.set, workdir)
            rows.append(truth_row(env, df))
            print(markdown(rows[-1:]), flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(f"{args.seeds} seeds per env; overrides: {' '.join(args.set) or '(defaults)'}")
    print(markdown(rows))


if __name__ == "__main__":
    main()
