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
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from hydra import compose, initialize_config_dir
from scipy.stats import spearmanr

from trpo_lab.config import register_configs, to_typed, validate
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
    parser.add_argument("--keep", type=Path, help="keep the run directories here")
    args = parser.parse_args()
    register_configs()
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="bench_truth-"))
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
