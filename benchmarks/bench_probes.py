"""What a probed update costs (probe.every): prints a table.

    python benchmarks/bench_probes.py [--updates 10] [--repeats 3] [--envs garnet cartpole]

Per env, ``--repeats`` pairs of runs in this process, alternated: ``--updates`` updates with
``probe.every=1`` (every update probed, default probe grids) and the same run with probes off
(the reference, in the same invocation). The settings are the probes sweep's
(``sweeps/probes.yaml``): garnet = ``+setting=garnet_exact`` (exact garnet, 50 states x 4
actions, gamma 0.9, 256 steps an update), cartpole = ``+setting=cartpole`` (2 envs x 512
steps an update, 65,536-step reference gradient).

Columns: seconds a probe takes (``time/probe_s``, median over all probed updates of all
repeats) and its split into landscape and gradient rows (landscape: the probe with
``probe.batch_steps=[]``; gradient: the remainder), probe env steps per probed update
(``probe/env_steps``), seconds of an unprobed update (median of the reference runs' per-update
wall time) and the ratio of a probed update's wall time to it.
"""

# ruff: noqa: E402  (the environment variable below must be set before numpy is imported)
from __future__ import annotations

import os

# one BLAS thread, as in the trpo-lab command (trpo_lab/__init__.py sets it, but this script
# imports numpy first): a multi-threaded OpenBLAS on small matrices runs several times slower
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from hydra import compose, initialize_config_dir

from trpo_lab.config import register_configs, to_typed, validate
from trpo_lab.train import Trainer

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = {"garnet": ["+setting=garnet_exact"], "cartpole": ["+setting=cartpole"]}


def train(env: str, updates: int, extra: list[str], run_dir: Path) -> pd.DataFrame:
    overrides = [f"hydra.searchpath=[file://{ROOT / 'sweeps'}]", *SETTINGS[env], "logger=none",
                 "progress=false", *extra]
    typed = to_typed(compose(config_name="config", overrides=overrides))
    typed.total_steps = updates * typed.batch_steps
    validate(typed)
    run_dir.mkdir(parents=True)
    Trainer(typed, run_dir).run()
    metrics = pd.read_csv(run_dir / "metrics.csv")
    metrics["update_s"] = metrics["time/wall_s"].diff().fillna(metrics["time/wall_s"])
    return metrics


def env_row(env: str, updates: int, repeats: int, workdir: Path) -> dict[str, str]:
    probed, landscape, reference = [], [], []
    for repeat in range(repeats):  # alternated, so that load changes hit both alike
        base = workdir / f"{env}-{repeat}"
        probed.append(train(env, updates, ["probe.every=1"], base / "probed"))
        landscape.append(train(env, updates, ["probe.every=1", "probe.batch_steps=[]"],
                               base / "landscape"))
        reference.append(train(env, updates, [], base / "reference"))
    probed_df, landscape_df = pd.concat(probed), pd.concat(landscape)
    reference_df = pd.concat(reference)
    probe_s = probed_df["time/probe_s"].median()
    land_s = landscape_df["time/probe_s"].median()
    steps = np.concatenate([np.diff(run["probe/env_steps"].to_numpy(), prepend=0)
                            for run in probed])
    unprobed = reference_df["update_s"].median()
    return {
        "env": env, "probed updates": str(len(probed_df)),
        "probe s (median)": f"{probe_s:.2f}",
        "landscape s": f"{land_s:.2f}", "gradient s": f"{probe_s - land_s:.2f}",
        "probe env steps / update": f"{int(np.median(steps)):,}",
        "unprobed update s": f"{unprobed:.3f}",
        "probed / unprobed update": f"{probed_df['update_s'].median() / unprobed:.1f}x",
    }


def markdown(rows: list[dict[str, str]]) -> str:
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r[c] for c in head) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--envs", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    args = parser.parse_args()
    register_configs()
    workdir = Path(tempfile.mkdtemp(prefix="bench_probes-"))
    try:
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            rows = [env_row(env, args.updates, args.repeats, workdir) for env in args.envs]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(markdown(rows))


if __name__ == "__main__":
    main()
