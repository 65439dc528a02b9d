"""The TRPO paper's sweeps (paper-locomotion, paper-games): their grids, their Slurm grouping, a
CI-sized subset of their quick variants through the batched and the joblib launcher, and
analysis.paper's tables and figures recomputed from the runs' own CSVs and summaries."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from analysis import paper
from tests.conftest import run_cli
from trpo_lab.app import CONF_DIR, SWEEPS_DIR, named_sweeps
from trpo_lab.config import register_configs

pytest.importorskip("mujoco")
pytest.importorskip("minatar")

TRUNK = 512  # +scale=quick: 4 updates of 512 steps
VINE_STATES = 4  # the subset's rollout set: the vine's curve overlaps single path's steps


def hydra_of(name: str, tmp_path: Path, *overrides: str) -> dict:
    result = run_cli(["--config-dir", str(SWEEPS_DIR), "--config-name", name, *overrides,
                      "--cfg", "hydra"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)["hydra"]


def test_the_paper_sweeps_have_their_documented_grids(tmp_path):
    loco = hydra_of("paper-locomotion", tmp_path)["sweeper"]["params"]
    assert loco == {"+setting": "swimmer,hopper,walker2d",
                    "+method": "trpo,trpo_vine,npg,kl_penalty", "seed": "range(5)"}
    games = hydra_of("paper-games", tmp_path)["sweeper"]["params"]
    assert games == {"+setting": "minatar",
                     "+game": "breakout,space_invaders,asterix,freeway,seaquest",
                     "algo.sampler": "single_path,vine", "seed": "range(3)"}
    listed = named_sweeps()  # trpo-lab-sweep --list
    assert listed["paper-locomotion"].startswith("The TRPO paper's Figure 4")
    assert listed["paper-games"].startswith("The TRPO paper's Table 1")


def job_config(name: str, tmp_path: Path, *overrides: str) -> dict:
    result = run_cli(["--config-dir", str(SWEEPS_DIR), "--config-name", name, *overrides,
                      "hydra.mode=RUN", "--cfg", "job"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_a_paper_job_has_the_papers_delta_and_gamma_and_the_stated_budget(tmp_path):
    vine = job_config("paper-locomotion", tmp_path, "+setting=walker2d", "+method=trpo_vine")
    assert (vine["env"]["id"], vine["algo"]["sampler"], vine["algo"]["delta"], vine["gamma"],
            vine["total_steps"], vine["batch_steps"]) == ("Walker2d-v5", "vine", 0.01, 0.99,
                                                         1_000_000, 1024)
    assert vine["algo"]["vine"] | {} == {"states": 32, "actions": 4, "proposal": "policy",
                                         "horizon": 16, "common_random_numbers": True}
    penalty = job_config("paper-locomotion", tmp_path, "+setting=swimmer", "+method=kl_penalty")
    assert (penalty["algo"]["name"], penalty["env"]["id"]) == ("kl_penalty", "Swimmer-v5")
    atari = job_config("paper-games", tmp_path, "+setting=atari", "+game=atari_seaquest")
    assert (atari["env"]["name"], atari["env"]["id"], atari["env"]["kwargs"]) == (
        "custom", "ALE/Seaquest-v5", {"obs_type": "grayscale"})
    assert (atari["policy"]["name"], atari["policy"]["hidden_sizes"], atari["total_steps"]) == (
        "cnn", [20], 100_000)


def test_paper_locomotion_groups_its_seeds_for_slurm_group_runs():
    from hydra_plugins.trpo_lab_launchers.slurm_launcher import SlurmLauncher

    def composed(*overrides: str):
        register_configs()
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(SWEEPS_DIR), version_base="1.3"):
            return compose(config_name="paper-locomotion", return_hydra_config=True,
                           overrides=[f"hydra.searchpath=[file://{CONF_DIR}]",
                                      "hydra/launcher=slurm", "hydra.launcher.partition=cpu",
                                      "hydra.launcher.group_runs=true", *overrides])

    config = composed()
    launcher = SlurmLauncher(**{k: v for k, v in config.hydra.launcher.items()
                                if k != "_target_"})
    launcher.config = config
    launcher.hydra_context = SimpleNamespace(config_loader=SimpleNamespace(
        load_sweep_config=lambda _config, overrides: composed(*overrides)))
    jobs = [[f"+setting={s}", f"+method={m}", f"seed={k}"]
            for s in ("swimmer", "hopper", "walker2d")
            for m in ("trpo", "trpo_vine", "npg", "kl_penalty") for k in range(5)]
    # the 5 seeds of every (task, method) train together: 12 array elements for 60 jobs
    assert launcher._elements(jobs, 0) == [list(range(i, i + 5)) for i in range(0, 60, 5)]


# --------------------------------------------------------------------------------------------
# the quick variants, a CI-sized subset: Hopper (batched launcher) and Breakout (joblib)
# --------------------------------------------------------------------------------------------


def sweep(name: str) -> list[str]:  # trpo-lab-sweep NAME
    return ["--config-dir", str(SWEEPS_DIR), "--config-name", name]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper")
    common = ["+scale=quick", "logger=none", f"algo.vine.states={VINE_STATES}"]
    loco = run_cli([*sweep("paper-locomotion"), *common, "+setting=hopper",
                    "+method=trpo,trpo_vine", "seed=0,1", "hydra/launcher=batched",
                    f"hydra.sweep.dir={root / 'loco'}"],
                   cwd=root, timeout=600)
    assert loco.returncode == 0, loco.stderr[-3000:]
    assert "4 completed" in loco.stdout
    games = run_cli([*sweep("paper-games"), *common, "+game=breakout", "seed=0",
                     f"hydra.sweep.dir={root / 'games'}"], cwd=root, timeout=600)
    assert games.returncode == 0, games.stderr[-3000:]
    assert "2 completed" in games.stdout
    out = root / "paper"
    assert paper.main([str(root / "loco"), str(root / "games"), "--out", str(out),
                       "--reps", "2000"]) == 0
    jobs = []
    for job in sorted(root.glob("*/[0-9]*")):
        cfg = yaml.safe_load((job / ".hydra" / "config.yaml").read_text())
        jobs.append(SimpleNamespace(
            dir=job, sampler=cfg["algo"]["sampler"], seed=cfg["seed"],
            task="hopper" if cfg["env"]["name"] == "hopper" else "MinAtar/Breakout-v1",
            metrics=pd.read_csv(job / "metrics.csv"),
            summary=json.loads((job / "summary.json").read_text())))
    return SimpleNamespace(jobs=jobs, out=out)


def test_every_quick_run_has_its_rows_and_env_steps(runs):
    assert sorted((j.task, j.sampler, j.seed) for j in runs.jobs) == [
        ("MinAtar/Breakout-v1", "single_path", 0), ("MinAtar/Breakout-v1", "vine", 0),
        ("hopper", "single_path", 0), ("hopper", "single_path", 1), ("hopper", "vine", 0),
        ("hopper", "vine", 1)]
    for job in runs.jobs:
        m = job.metrics
        assert len(m) == 4 and job.summary["status"] == "completed"
        assert m["true/improvement"].notna().all()  # +scale=quick: every update evaluated
        assert math.isfinite(job.summary["final_eval_return"])  # eval.final_episodes=10
        per_update = np.diff(np.r_[0, m["env_steps"].to_numpy()])
        if job.sampler == "single_path":
            assert per_update.tolist() == [TRUNK] * 4
        else:  # trunk + branches: N states x K actions (Breakout: all 3) x at most H = 16
            actions = 4 if job.task == "hopper" else 3
            branch = per_update - TRUNK
            assert ((branch > 0) & (branch <= VINE_STATES * actions * 16)).all(), branch


def iqm_and_bootstrap_of_two(values: list[float]) -> tuple[float, float, float]:
    # two runs: the IQM is their mean; the bootstrap's 2.5% and 97.5% points are the two
    # values themselves (a replicate draws both copies of one with probability 1/2)
    return float(np.mean(values)), min(values), max(values)


def test_the_final_return_table_is_computed_from_the_summaries_and_csvs(runs):
    table = pd.read_csv(runs.out / "final_returns.csv")
    assert sorted(zip(table["env"], table["method"])) == [
        ("MinAtar/Breakout-v1", "trpo"), ("MinAtar/Breakout-v1", "trpo vine"),
        ("hopper", "trpo"), ("hopper", "trpo vine")]
    md = (runs.out / "final_returns.md").read_text()
    for row in table.itertuples(index=False):
        jobs = [j for j in runs.jobs if j.task == row.env
                and (j.sampler == "vine") == (row.method == "trpo vine")]
        assert row.n_runs == row.eval_n == row.train_n == len(jobs)
        assert row.env_steps_median == np.median([j.metrics["env_steps"].iloc[-1]
                                                  for j in jobs])
        evals = [j.summary["final_eval_return"] for j in jobs]
        trains = [j.metrics["rollout/return_mean"].iloc[-1] for j in jobs]  # last 10% of 4
        for name, values in (("eval", evals), ("train", trains)):
            iqm, low, high = (iqm_and_bootstrap_of_two(values) if len(values) == 2
                              else (values[0],) * 3)
            got = (getattr(row, f"{name}_iqm"), getattr(row, f"{name}_ci_low"),
                   getattr(row, f"{name}_ci_high"))
            assert got == pytest.approx((iqm, low, high), rel=1e-12, abs=1e-12)
            assert f"{iqm:.3g} [{low:.3g}, {high:.3g}], n={len(values)}" in md


def exact_one_sided_p(x: list[float], y: list[float]) -> tuple[float, float]:
    """P(U >= u) and P(U <= u) for U = #{(i, j): x_i > y_j} (+ 1/2 per tie) over every
    assignment of the pooled values to the two groups: the exact Mann-Whitney test."""
    def u(a, b):
        return sum((ai > bj) + 0.5 * (ai == bj) for ai in a for bj in b)

    pooled, observed = x + y, u(x, y)
    us = [u([pooled[i] for i in idx], [pooled[i] for i in range(len(pooled)) if i not in idx])
          for idx in itertools.combinations(range(len(pooled)), len(x))]
    return (float(np.mean([v >= observed for v in us])),
            float(np.mean([v <= observed for v in us])))


def test_the_vine_test_compares_the_samplers_at_equal_env_steps(runs):
    table = pd.read_csv(runs.out / "vine_test.csv").set_index("env")
    assert set(table.index) == {"hopper", "MinAtar/Breakout-v1"}
    for task, row in table.iterrows():
        jobs = [j for j in runs.jobs if j.task == task]
        steps = min(j.metrics["env_steps"].iloc[-1] for j in jobs)
        assert steps == 4 * TRUNK  # single path's last update: the vine is past it
        assert (row["env_steps"], row["window_low"]) == (steps, pytest.approx(0.9 * steps))
        grid = np.linspace(0.9 * steps, steps, 21)
        value = {j.dir: float(np.interp(grid, j.metrics["env_steps"],
                                        j.metrics["rollout/return_mean"]).mean()) for j in jobs}
        single = [value[j.dir] for j in jobs if j.sampler == "single_path"]
        vine = [value[j.dir] for j in jobs if j.sampler == "vine"]
        assert (row["n_single_path"], row["n_vine"]) == (len(single), len(vine))
        assert row["single_path_median"] == pytest.approx(np.median(single), rel=1e-12)
        assert row["vine_median"] == pytest.approx(np.median(vine), rel=1e-12)
        p_vine, p_single = exact_one_sided_p(vine, single)
        assert (row["p_vine_greater"], row["p_single_path_greater"]) == pytest.approx(
            (p_vine, p_single), rel=1e-12)
    assert "p, vine > single path" in (runs.out / "vine_test.md").read_text()


def test_the_figures_are_drawn_from_the_runs(runs):
    for name in ("paper_curves", "hopper/predicted_vs_true", "hopper/trust_region",
                 "MinAtar_Breakout-v1/predicted_vs_true", "MinAtar_Breakout-v1/trust_region"):
        for ext in ("pdf", "png"):
            assert (runs.out / f"{name}.{ext}").stat().st_size > 1000, name


# --------------------------------------------------------------------------------------------
# the pure parts
# --------------------------------------------------------------------------------------------


def test_window_mean_of_a_line_is_its_midpoint_value_and_nan_outside_the_curve():
    x, y = np.array([0.0, 2.0, 5.0]), np.array([1.0, 5.0, 11.0])  # y = 2x + 1
    assert paper.window_mean(x, y, 2.0, 4.0) == pytest.approx(7.0)
    assert paper.window_mean(x[::-1], y[::-1], 0.0, 5.0) == pytest.approx(6.0)  # any order
    assert math.isnan(paper.window_mean(x, y, 4.0, 6.0))
    assert math.isnan(paper.window_mean(x + 1, y, 0.5, 2.0))


def test_methods_label_the_vine_apart_from_single_path():
    assert paper.method_label("trpo", "vine") == paper.TRPO_VINE == "trpo vine"
    assert paper.method_label("trpo", "single_path") == "trpo"
    assert paper.method_label("kl_penalty", None) == "kl_penalty"
    assert paper.method_label(None, "vine") is None
    runs = pd.DataFrame({"algo": ["trpo", "trpo", "npg"],
                         "sampler": ["vine", "single_path", "single_path"]})
    labelled = paper.with_methods(runs)
    assert labelled["algo"].tolist() == ["trpo vine", "trpo", "npg"]
    assert paper.with_methods(labelled)["algo"].tolist() == ["trpo vine", "trpo", "npg"]
    assert labelled["algo_name"].tolist() == ["trpo", "trpo", "npg"]
    assert paper.method_order(labelled) == ["trpo", "trpo vine", "npg"]


def test_a_bad_window_fraction_is_refused_in_one_line(tmp_path, capsys):
    assert paper.main([str(tmp_path), "--out", str(tmp_path / "o"), "--frac", "0"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: invalid value --frac=0.0: must be in (0, 1]")
