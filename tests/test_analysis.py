"""Tests of the analysis package on synthetic run directories with known values."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402
from matplotlib.collections import LineCollection, PathCollection  # noqa: E402
from scipy import stats as sps  # noqa: E402

from analysis import figures, load, plots, stats, tables  # noqa: E402

METRICS = list(load.METRIC_COLUMNS)


# --------------------------------------------------------------------------------------------
# synthetic runs
# --------------------------------------------------------------------------------------------


def make_cfg(
    algo: str = "trpo",
    *,
    seed: int = 0,
    delta: float = 0.01,
    line_search: bool = True,
    beta: Any = 1.0,
    lr: float = 0.01,
    clip: float = 0.2,
    gamma: float = 0.99,
    lam: float = 0.95,
    env: str = "garnet",
    tabular: bool = True,
    estimator: str | None = None,
    group: str = "sweep-a",
    sampler: str = "single_path",
) -> dict[str, Any]:
    """A composed config shaped like the training app's ``.hydra/config.yaml``."""
    algos: dict[str, dict[str, Any]] = {
        "trpo": {
            "name": "trpo",
            "delta": delta,
            "line_search": line_search,
            "cg_iters": 10,
            "cg_damping": 0.1,
            "backtrack_iters": 10,
            "backtrack_coef": 0.8,
            "sampler": sampler,
        },
        "vpg": {"name": "vpg", "lr": lr},
        "kl_penalty": {"name": "kl_penalty", "beta": beta, "lr": lr, "epochs": 5},
        "ppo": {"name": "ppo", "clip": clip, "epochs": 5, "minibatches": 4, "lr": lr},
    }
    return {
        "seed": seed,
        "gamma": gamma,
        "gae_lambda": lam,
        "total_steps": 10240,
        "batch_steps": 1024,
        "num_envs": 1,
        "normalize_advantages": True,
        "algo": {**algos[algo], "estimator": estimator or ("exact" if tabular else "sampled")},
        "env": {"name": env, "id": f"{env}-v0", "tabular": tabular},
        "policy": {"name": "tabular" if tabular else "mlp"},
        "logger": {"name": "none", "group": group, "project": "trpo-test"},
    }


def make_rows(cfg: dict[str, Any], n: int = 10, base: float = 0.0) -> list[dict[str, float]]:
    """Deterministic metrics rows; the true improvement is 0.8 dL, except every 4th update
    which gets worse, so the TRPO bound (C = 5) always holds."""
    delta = float(cfg["algo"].get("delta", 0.01))
    tabular = cfg["env"]["tabular"]
    is_trpo = cfg["algo"]["name"] == "trpo"
    rows = []
    for i in range(1, n + 1):
        dl = 0.1 * math.sqrt(delta) * (1 + 0.05 * i)
        dj = -0.1 * dl if i % 4 == 0 else 0.8 * dl
        row = {
            "iteration": i,
            "env_steps": 1024 * i,
            "time/wall_s": 0.5 * i,
            "time/sps": 2048.0,
            "rollout/return_mean": base + i,
            "rollout/length_mean": 100.0,
            "rollout/episodes": 10,
            "kl/mean": 0.9 * delta,
            "kl/max": 2 * delta,
            "kl/reverse_mean": 0.9 * delta,
            "policy/max_ratio": 1.1 + delta,
            "policy/entropy": 0.5,
            "surrogate/linear": dl,
            "surrogate/improvement": dl,
            "true/J": 1.0 + i,
            "true/J_se": 0.0 if tabular else 0.01,
            "true/improvement": dj,
            "true/improvement_se": 0.0 if tabular else 0.01,
            "surrogate/improvement_heldout": 0.9 * dl,
            "surrogate/improvement_heldout_se": 0.002,
            "value/loss": 0.1,
            "value/explained_variance": 0.9,
        }
        if tabular:
            row |= {
                "bound/C": 5.0,
                "bound/eps": 0.1,
                "bound/trpo": dl - 5.0 * 2 * delta,
                "bound/cpo": dl - 1.0 * delta,
                "exact/surrogate_improvement": dl,
                "exact/pdl_residual": 1e-12,
            }
        if is_trpo and cfg["algo"].get("line_search", True):
            row |= {
                "trpo/backtracks": i % 3,
                "trpo/accepted": 0 if i % 5 == 0 else 1,
                "trpo/step_norm": 0.1,
            }
        rows.append(row)
    return rows


def write_run(
    path: Path,
    cfg: dict[str, Any],
    rows: list[dict[str, Any]] | None = None,
    *,
    status: str | None = "completed",
    job: int | None = None,
    columns: list[str] | None = None,
    tail: str = "",
) -> Path:
    """Write a run directory. ``status=None``: no summary.json. ``tail`` is appended to the CSV
    verbatim (e.g. a partial line)."""
    (path / ".hydra").mkdir(parents=True, exist_ok=True)
    (path / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    hydra = {
        "hydra": {
            "job": {
                "num": "???" if job is None else job,
                "id": "???" if job is None else f"{job}",
                "override_dirname": f"seed={cfg['seed']}",
            },
            "runtime": {"choices": {"algo": cfg["algo"]["name"], "env": cfg["env"]["name"]}},
        }
    }
    (path / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(hydra))
    (path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"seed={cfg['seed']}"]))
    if rows is not None:
        cols = columns or METRICS
        with (path / "metrics.csv").open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
            fh.write(tail)
    if status is not None:
        summary = {
            "status": status,
            "error": "RuntimeError: boom" if status == "failed" else None,
            "iterations": len(rows or []),
            "env_steps": 1024 * len(rows or []),
            "final_return_mean": rows[-1]["rollout/return_mean"] if rows else None,
            "wall_s": 1.5,
            "wandb_run_id": None,
        }
        (path / "summary.json").write_text(json.dumps(summary))
    return path


def write_sweep(root: Path, cfgs: list[dict[str, Any]], n: int = 10) -> Path:
    """A Hydra multirun layout: ``root/multirun.yaml`` and ``root/<job_num>/``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "multirun.yaml").write_text("hydra:\n  mode: MULTIRUN\n")
    for job, cfg in enumerate(cfgs):
        write_run(root / str(job), cfg, make_rows(cfg, n=n, base=10 * cfg["seed"]), job=job)
    return root


@pytest.fixture
def mixed_sweep(tmp_path: Path) -> Path:
    """Five jobs: trpo x2 seeds (completed), npg (failed), kl_penalty theory (killed: no
    summary, CSV cut mid-line), vpg (empty metrics.csv)."""
    root = tmp_path / "multirun" / "2026-01-01" / "10-00-00"
    root.mkdir(parents=True)
    (root / "multirun.yaml").write_text("hydra:\n  mode: MULTIRUN\n")
    for seed in (0, 1):
        cfg = make_cfg("trpo", seed=seed)
        write_run(root / str(seed), cfg, make_rows(cfg, n=3, base=10 * seed), job=seed)
    npg = make_cfg("trpo", line_search=False, seed=0)
    write_run(root / "2", npg, make_rows(npg, n=3), status="failed", job=2)
    klp = make_cfg("kl_penalty", beta="theory")
    write_run(root / "3", klp, make_rows(klp, n=2), status=None, job=3, tail="3,3072,1.5,20")
    (root / "4" / ".hydra").mkdir(parents=True)
    write_run(root / "4", make_cfg("vpg", tabular=False, env="cartpole"), [], job=4)
    (root / "4" / "metrics.csv").write_text("")
    return root


# --------------------------------------------------------------------------------------------
# stats
# --------------------------------------------------------------------------------------------


def test_iqm_closed_form() -> None:
    assert stats.iqm(np.arange(1, 9)) == pytest.approx(4.5)
    assert stats.iqm([1, 2, 3, 4, 5, 6, 7, 8, np.nan]) == pytest.approx(4.5)
    # 12 values: drop 3 at each end -> mean of 4..9 = 6.5, whatever the outliers are
    assert stats.iqm([-1e9, 1, 2, 4, 5, 6, 7, 8, 9, 10, 11, 1e9]) == pytest.approx(6.5)
    assert math.isnan(stats.iqm([]))
    x = np.random.default_rng(1).normal(size=(5, 17))
    np.testing.assert_allclose(stats.iqm(x, axis=1), sps.trim_mean(x, 0.25, axis=1))


def test_bootstrap_constant_sample_is_degenerate() -> None:
    table = pd.DataFrame({"v": [3.0] * 7, "env": list("aaabbbb")})
    assert stats.stratified_bootstrap_ci(table, "v", "env", reps=200) == (3.0, 3.0, 3.0)


def test_bootstrap_two_point_percentiles() -> None:
    # mean of 2 draws from {0, 1}: 0 w.p. 1/4, 1/2 w.p. 1/2, 1 w.p. 1/4
    table = pd.DataFrame({"v": [0.0, 1.0]})
    ci = stats.stratified_bootstrap_ci(table, "v", stat=np.mean, reps=4000, level=0.95)
    assert ci == (0.5, 0.0, 1.0)
    ci = stats.stratified_bootstrap_ci(table, "v", stat=np.mean, reps=4000, level=0.2)
    assert ci == (0.5, 0.5, 0.5)


def test_bootstrap_resamples_within_strata() -> None:
    # stratum a = {0, 1} (2 draws), stratum b = {5} (1 draw): pooled mean = (s_a + 5) / 3 with
    # s_a in {0, 1, 2} w.p. 1/4, 1/2, 1/4 -> 95 % interval [5/3, 7/3], 20 % interval [2, 2].
    table = pd.DataFrame({"v": [0.0, 1.0, 5.0], "env": ["a", "a", "b"]})
    ci = stats.stratified_bootstrap_ci(table, "v", "env", stat=np.mean, reps=4000)
    assert ci.estimate == pytest.approx(2.0)
    assert (ci.low, ci.high) == pytest.approx((5 / 3, 7 / 3))
    ci = stats.stratified_bootstrap_ci(table, "v", ["env"], stat=np.mean, reps=4000, level=0.2)
    assert (ci.low, ci.high) == pytest.approx((2.0, 2.0))
    # constant strata: every stratified resample has two 0s and two 10s, IQM always 5 ...
    two = pd.DataFrame({"v": [0.0, 0.0, 10.0, 10.0], "env": list("aabb")})
    assert stats.stratified_bootstrap_ci(two, "v", "env", reps=500) == (5.0, 5.0, 5.0)
    # ... while the unstratified bootstrap varies
    pooled = stats.stratified_bootstrap_ci(two, "v", None, reps=500)
    assert pooled.low < 5.0 < pooled.high


def test_bootstrap_is_seeded_and_ignores_nan() -> None:
    table = pd.DataFrame({"v": np.r_[np.random.default_rng(0).normal(size=30), np.nan]})
    a = stats.stratified_bootstrap_ci(table, "v", reps=300, seed=3)
    b = stats.stratified_bootstrap_ci(table, "v", reps=300, seed=3)
    assert a == b
    assert a.low < a.estimate < a.high
    assert a.estimate == pytest.approx(sps.trim_mean(table["v"].dropna(), 0.25))
    empty = stats.stratified_bootstrap_ci(pd.DataFrame({"v": [np.nan]}), "v")
    assert all(math.isnan(v) for v in empty)


def test_scatter_stats_exact_line() -> None:
    x = np.linspace(-1, 2, 25)
    st = stats.scatter_stats(x, 2 * x + 1, reps=300)
    assert st.n == 25
    assert (st.slope, st.slope_low, st.slope_high) == pytest.approx((2, 2, 2))
    assert st.intercept == pytest.approx(1.0)
    assert (st.rho, st.rho_low, st.rho_high) == pytest.approx((1, 1, 1))
    st = stats.scatter_stats(x, -(x**3), reps=300)
    assert st.rho == pytest.approx(-1.0)
    assert st.rho_high == pytest.approx(-1.0)
    assert math.isnan(stats.scatter_stats([1, 2], [1, 2]).rho)


def test_scatter_stats_matches_scipy() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=60)
    y = 0.5 * x + rng.normal(size=60)
    st = stats.scatter_stats(x, y, reps=500)
    assert st.rho == pytest.approx(sps.spearmanr(x, y).statistic)
    assert st.slope == pytest.approx(sps.linregress(x, y).slope)
    assert st.rho_low < st.rho < st.rho_high
    assert st.slope_low < st.slope < st.slope_high


def test_final_per_run_last_tenth() -> None:
    long = pd.DataFrame(
        {
            "run_dir": ["a"] * 20 + ["b"] * 5,
            "iteration": list(range(20)) + list(range(5)),
            "rollout/return_mean": list(range(20)) + [0, 1, 2, 3, 4],
            "algo": "trpo",
        }
    )
    long.loc[19, "rollout/return_mean"] = np.nan  # the NaN is ignored within the last 2
    finals = stats.final_per_run(long).set_index("run_dir")["final"]
    assert finals["a"] == pytest.approx(18.0)
    assert finals["b"] == pytest.approx(4.0)
    assert stats.final_per_run(long, frac=0.5).set_index("run_dir")["final"]["b"] == 3.0


def test_bound_violations_counts() -> None:
    df = pd.DataFrame({"true/improvement": [0.1, -0.2, 0.0, np.nan], "bound/trpo": [0, -0.1, 0, 1]})
    assert stats.bound_violations(df) == (1, 3)


# --------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------


def test_load_runs_sweep(mixed_sweep: Path) -> None:
    long = load.load_runs(mixed_sweep)
    assert len(long) == 3 + 3 + 3 + 2 + 0  # the cut-off 3rd row of the killed run is dropped
    assert list(long.columns) == list(load.RUN_COLUMNS) + METRICS
    per_run = long.groupby("job_num")["iteration"].count().to_dict()
    assert per_run == {0: 3, 1: 3, 2: 3, 3: 2}
    runs = long.drop_duplicates("run_dir").set_index("job_num")
    assert list(runs["algo"]) == ["trpo", "trpo", "npg", "kl_penalty"]
    assert list(runs["status"]) == ["completed", "completed", "failed", "incomplete"]
    assert runs.loc[2, "error"] == "RuntimeError: boom"
    assert list(runs["seed"]) == [0, 1, 0, 0]
    assert runs.loc[0, "delta"] == 0.01 and runs.loc[0, "setting"] == "delta=0.01"
    assert math.isnan(runs.loc[3, "beta"]) and runs.loc[3, "beta_label"] == "theory"
    assert runs.loc[3, "setting"] == "beta=theory" and math.isnan(runs.loc[3, "delta"])
    assert set(runs["sweep_dir"]) == {str(mixed_sweep.resolve())}
    assert set(runs["group"]) == {"sweep-a"}
    assert list(runs["job_id"]) == ["0", "1", "2", "3"]
    assert (runs["gamma"] == 0.99).all() and (runs["gae_lambda"] == 0.95).all()
    assert set(runs["env"]) == {"garnet"} and set(runs["estimator"]) == {"exact"}
    assert bool(runs.loc[0, "tabular"]) and bool(runs.loc[2, "line_search"]) is False
    # metric values survive and empty cells are NaN
    trpo0 = long[long["job_num"] == 0]
    assert list(trpo0["env_steps"]) == [1024, 2048, 3072]
    assert list(trpo0["trpo/accepted"]) == [1, 1, 1]
    assert long.loc[long["algo"] == "npg", "trpo/backtracks"].isna().all()
    assert long["mc/J"].isna().all()


def test_load_run_index_keeps_every_run(mixed_sweep: Path) -> None:
    index = load.load_run_index(mixed_sweep)
    assert len(index) == 5
    idx = index.set_index("job_num")
    assert list(idx["n_updates"]) == [3, 3, 3, 2, 0]
    assert idx.loc[4, "algo"] == "vpg" and idx.loc[4, "status"] == "completed"
    assert idx.loc[4, "lr"] == 0.01 and math.isnan(idx.loc[4, "delta"])
    assert not idx.loc[4, "tabular"]
    assert bool(idx.loc[3, "metrics_truncated"]) and not idx.loc[3, "has_summary"]
    assert idx.loc[0, "final_return_mean"] == 3.0 and idx.loc[0, "iterations"] == 3
    assert math.isnan(idx.loc[3, "final_return_mean"])


def test_load_single_run_and_parsing_details(tmp_path: Path) -> None:
    cfg = make_cfg("kl_penalty", beta=0.5, env="cartpole", tabular=False)
    cfg["logger"]["group"] = "${env.name}-${algo.name}"  # an interpolation, resolved on load
    rows = make_rows(cfg, n=2)
    rows[0]["trpo/accepted"] = "True"
    rows[1]["trpo/accepted"] = "False"
    rows[0]["guard/bad_updates"] = 7
    run = write_run(
        tmp_path / "outputs" / "2026-01-01" / "12-00-00",
        cfg,
        rows,
        columns=[*METRICS, "guard/bad_updates"],
    )
    long = load.load_runs(run)
    assert len(long) == 2
    assert list(long.columns[-2:]) == ["value/explained_variance", "guard/bad_updates"]
    assert list(long["guard/bad_updates"].fillna(-1)) == [7, -1]
    assert list(long["trpo/accepted"]) == [1.0, 0.0]
    row = long.iloc[0]
    assert row["beta"] == 0.5 and row["beta_label"] == "0.5" and row["setting"] == "beta=0.5"
    assert row["group"] == "cartpole-kl_penalty"
    # in a sweep without logger.group, the group is derived from the sweep directory
    cfg["logger"]["group"] = None
    sweep = tmp_path / "multirun" / "2026-02-03" / "04-05-06"
    write_sweep(sweep, [cfg], n=1)
    assert set(load.load_runs(sweep)["group"]) == {"sweep-2026-02-03_04-05-06"}
    assert pd.isna(row["sweep_dir"]) and pd.isna(row["job_num"]) and pd.isna(row["job_id"])
    # searching from far above finds it too; a missing path is an error
    assert load.find_run_dirs(tmp_path / "outputs") == [run.resolve()]
    assert len(load.find_run_dirs(tmp_path)) == 2
    with pytest.raises(FileNotFoundError):
        load.load_runs(tmp_path / "nope")


def test_parse_metrics_csv_edge_cases() -> None:
    table, cut = load.parse_metrics_csv("iteration,env_steps\n1,10\n2,20\n3,3")
    assert list(table["iteration"]) == [1, 2] and cut
    table, cut = load.parse_metrics_csv("iteration,env_steps\n1,10\niteration,env_steps\n2,20\n")
    assert list(table["env_steps"]) == [10, 20] and not cut
    table, cut = load.parse_metrics_csv("iteration,env_st")
    assert table.empty and cut
    assert load.parse_metrics_csv("")[0].empty


def test_config_columns_labels() -> None:
    cols = load.config_columns(make_cfg("trpo", line_search=False, delta=0.02))
    assert cols["algo"] == "npg" and cols["setting"] == "delta=0.02"
    cols = load.config_columns(make_cfg("ppo", clip=0.3))
    assert cols["algo"] == "ppo" and cols["clip"] == 0.3 and math.isnan(cols["delta"])
    assert cols["setting_value"] == 0.3
    # the vine sampler gets its own label (figures and tables tell the samplers apart)
    cols = load.config_columns(make_cfg("trpo", sampler="vine", delta=0.02))
    assert cols["algo"] == "trpo vine" and cols["setting"] == "delta=0.02"
    cols = load.config_columns(make_cfg("trpo", line_search=False, sampler="vine"))
    assert cols["algo"] == "npg vine"
    assert load.config_columns(make_cfg("trpo", sampler="single_path"))["algo"] == "trpo"
    # the algo/env/policy names fall back to Hydra's config-group choices
    hydra = {"hydra": {"runtime": {"choices": {"algo": "vpg", "env": "chain", "policy": "mlp"}}}}
    cols = load.config_columns({"seed": 3}, hydra)
    assert (cols["algo"], cols["env"], cols["policy"], cols["seed"]) == ("vpg", "chain", "mlp", 3)


# --------------------------------------------------------------------------------------------
# W&B conversion
# --------------------------------------------------------------------------------------------


def fake_history() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "_step": [1, 0, 2],
            "_runtime": [2.0, 1.0, 3.0],
            "iteration": [2, 1, 3],
            "env_steps": [2048, 1024, 3072],
            "rollout/return_mean": [20.0, 10.0, 30.0],
            "kl/mean": [0.009, 0.008, np.nan],
            "figures/x": [{"_type": "image-file"}, None, None],
        }
    )


def test_wandb_run_to_tables() -> None:
    config = {
        "_wandb": {"cli_version": "0.31.0"},
        "seed": {"value": 4, "desc": None},
        "gamma": 0.9,
        "algo/name": "trpo",
        "algo/line_search": False,
        "algo.delta": 0.05,
        "env": {"name": "cartpole", "tabular": False},
        "logger": {"group": None},
    }
    index, long = load.wandb_run_to_tables(
        config, fake_history(), "crashed", run_id="abc", run_path="ent/proj/abc", group="grp"
    )
    assert len(long) == 3
    assert list(long.columns[: len(load.RUN_COLUMNS)]) == list(load.RUN_COLUMNS)
    assert list(long["iteration"]) == [1, 2, 3]
    assert list(long["rollout/return_mean"]) == [10.0, 20.0, 30.0]
    assert "figures/x" not in long.columns and "_runtime" not in long.columns
    row = long.iloc[0]
    assert (row["algo"], row["seed"], row["gamma"], row["delta"]) == ("npg", 4, 0.9, 0.05)
    assert (row["env"], row["status"], row["group"]) == ("cartpole", "incomplete", "grp")
    assert row["run_dir"] == "wandb:ent/proj/abc"
    assert index.loc[0, "final_return_mean"] == 30.0 and index.loc[0, "n_updates"] == 3
    _, done = load.wandb_run_to_tables(config, fake_history(), "finished", run_id="a")
    assert set(done["status"]) == {"completed"}
    _, failed = load.wandb_run_to_tables(
        config, fake_history(), "finished", run_id="a", summary={"status": "failed"}
    )
    assert set(failed["status"]) == {"failed"}
    empty_index, empty = load.wandb_run_to_tables(config, pd.DataFrame(), "failed", run_id="e")
    assert len(empty) == 0 and empty_index.loc[0, "status"] == "failed"


def test_load_wandb_with_fake_api() -> None:
    class FakeRun:
        def __init__(self, rid: str, algo: str) -> None:
            self.id, self.path, self.group, self.state = rid, ["e", "p", rid], "g", "finished"
            self.config = {"algo": {"name": algo}, "seed": 0}
            self.summary = {"status": "completed"}

        def scan_history(self) -> list[dict[str, Any]]:
            return fake_history().to_dict("records")

    class FakeApi:
        def runs(self, path: str, filters: dict[str, Any] | None = None) -> list[FakeRun]:
            assert path == "e/p" and filters == {"group": "g"}
            return [FakeRun("r1", "trpo"), FakeRun("r2", "vpg")]

    long = load.load_wandb("e/p", "g", api=FakeApi())
    assert len(long) == 6
    assert long.groupby("algo")["iteration"].max().to_dict() == {"trpo": 3, "vpg": 3}


# --------------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------------


@pytest.fixture
def full_long(tmp_path: Path) -> pd.DataFrame:
    """trpo (two deltas), npg, vpg and kl_penalty on garnet; two seeds each."""
    cfgs = [make_cfg("trpo", seed=s, delta=d) for d in (0.01, 0.04) for s in (0, 1)]
    cfgs += [make_cfg("trpo", seed=s, line_search=False) for s in (0, 1)]
    cfgs += [make_cfg("vpg", seed=s, env="cartpole", tabular=False) for s in (0, 1)]
    cfgs += [make_cfg("kl_penalty", seed=s, beta="theory") for s in (0, 1)]
    return load.load_runs(write_sweep(tmp_path / "sweep", cfgs))


@pytest.fixture(autouse=True)
def _close_figures() -> Any:
    yield
    plt.close("all")


def test_algo_colors_fixed() -> None:
    cb = plots.sns.color_palette("colorblind")
    assert plots.algo_color("trpo") == cb[0] and plots.algo_color("ppo") == cb[4]
    assert len(set(plots.ALGO_COLORS.values())) == 5


def test_learning_curves_iqm_and_band(tmp_path: Path) -> None:
    cfgs = [make_cfg("trpo", seed=s) for s in (0, 1)] + [make_cfg("vpg", seed=s) for s in (0, 1)]
    long = load.load_runs(write_sweep(tmp_path / "s", cfgs, n=10))
    ax = plots.plot_learning_curves(long, num_points=19, reps=200)
    lines = ax.get_lines()
    assert [ln.get_label() for ln in lines] == ["trpo", "vpg"]
    assert len(ax.collections) == 2  # one band per algorithm
    assert lines[0].get_color() == plots.ALGO_COLORS["trpo"]
    grid = lines[0].get_xdata()
    np.testing.assert_allclose(grid, np.linspace(1024, 10240, 19))
    # returns: seed 0 -> i, seed 1 -> 10 + i with i = steps/1024; IQM of 2 = their mean
    np.testing.assert_allclose(lines[0].get_ydata(), grid / 1024 + 5)
    band = ax.collections[0].get_paths()[0].vertices
    assert band[:, 1].min() == pytest.approx(1.0) and band[:, 1].max() == pytest.approx(20.0)


def test_learning_curves_split_by_setting(full_long: pd.DataFrame) -> None:
    ax = plots.plot_learning_curves(full_long, num_points=5, reps=50)
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    assert list(lines) == ["trpo, delta=0.01", "trpo, delta=0.04", "npg", "vpg", "kl_penalty"]
    a, b = lines["trpo, delta=0.01"], lines["trpo, delta=0.04"]
    assert a.get_color() == b.get_color() == plots.ALGO_COLORS["trpo"]
    assert (a.get_linestyle(), b.get_linestyle()) == ("-", "--")
    assert len(ax.collections) == 5
    ax = plots.plot_learning_curves(full_long, ax=plt.subplots()[1], style=None, reps=50)
    assert [ln.get_label() for ln in ax.get_lines()] == ["trpo", "npg", "vpg", "kl_penalty"]


def _points_under(artist: Any, ax: Any) -> int:
    """How many scatter points of ``ax`` lie under ``artist``'s drawn extent."""
    ax.figure.canvas.draw()
    box = artist.get_window_extent()
    n = 0
    for coll in ax.collections:
        pts = coll.get_offset_transform().transform(coll.get_offsets())
        n += (
            int(box.contains_points(pts).sum())
            if hasattr(box, "contains_points")
            else sum(box.contains(x, y) for x, y in pts)
        )
    return n


def test_predicted_vs_true_panels_and_stats(full_long: pd.DataFrame) -> None:
    fig = plots.plot_predicted_vs_true(full_long, reps=200)
    # only the panels with data, no hidden ones: 4 panels in 2 x 2
    assert [ax.get_title() for ax in fig.axes] == [
        "trpo, exact, γ=0.99",
        "npg, exact, γ=0.99",
        "vpg, Monte Carlo, γ=0.99",
        "kl_penalty, exact, γ=0.99",
    ]
    assert all(ax.get_visible() for ax in fig.axes)
    assert fig.axes[0].get_subplotspec().get_geometry()[:2] == (2, 2)
    trpo = fig.axes[0]
    offsets = [len(c.get_offsets()) for c in trpo.collections]
    assert offsets == [20, 20]  # one scatter per delta, 2 seeds x 10 updates
    assert [c.get_label() for c in trpo.collections] == ["delta=0.01", "delta=0.04"]
    # a setting has one colour in every panel (npg runs delta=0.01 too)
    npg = fig.axes[1]
    np.testing.assert_allclose(
        npg.collections[0].get_facecolor(), trpo.collections[0].get_facecolor()
    )
    (diag,) = trpo.get_lines()
    np.testing.assert_allclose(diag.get_xdata(), diag.get_ydata())
    text = trpo.texts[0].get_text()
    assert "n = 40" in text
    # per delta dJ = 0.8 dL except every 4th update; Spearman from the data itself
    d = full_long[full_long["algo"] == "trpo"]
    rho = sps.spearmanr(d["surrogate/improvement"], d["true/improvement"]).statistic
    assert f"ρ = {rho:.2f}" in text
    # one legend, below all panels: settings in order, then the reference line
    assert all(ax.get_legend() is None for ax in fig.axes)
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == [
        "δ=0.01",
        "δ=0.04",
        "lr=0.01",
        "β=theory",
        "y = x",
    ]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    lowest = min(ax.get_tightbbox(renderer).y0 for ax in fig.axes)
    assert legend.get_window_extent(renderer).y1 <= lowest
    # the statistics hide no point
    for ax in fig.axes:
        assert _points_under(ax.texts[0], ax) == 0
    # an exact line gives slope 2.00 [2.00, 2.00]
    line = full_long[full_long["algo"] == "vpg"].copy()
    line["true/improvement"] = 2 * line["surrogate/improvement"]
    ax = plots.scatter_panel(line, reps=100)
    assert "slope = 2.00 [2.00, 2.00]" in ax.texts[0].get_text()
    assert "ρ = 1.00 [1.00, 1.00]" in ax.texts[0].get_text()


@pytest.fixture
def two_env_long(tmp_path: Path) -> pd.DataFrame:
    """The shape of the quick ``delta`` sweep: trpo over two deltas x two seeds on an exact
    garnet with gamma 0.9 and on CartPole (Monte Carlo) with gamma 0.99."""
    cfgs = [make_cfg("trpo", seed=s, delta=d, gamma=0.9) for d in (0.01, 0.04) for s in (0, 1)]
    cfgs += [
        make_cfg("trpo", seed=s, delta=d, env="cartpole", tabular=False)
        for d in (0.01, 0.04)
        for s in (0, 1)
    ]
    return load.load_runs(write_sweep(tmp_path / "two-env", cfgs))


def test_predicted_vs_true_only_non_empty_panels(two_env_long: pd.DataFrame) -> None:
    fig = plots.plot_predicted_vs_true(two_env_long, reps=100)
    # exact at gamma 0.9 and Monte Carlo at gamma 0.99: 2 panels side by side, not 2 x 2
    assert [ax.get_title() for ax in fig.axes] == [
        "trpo, exact, γ=0.9",
        "trpo, Monte Carlo, γ=0.99",
    ]
    assert fig.axes[0].get_subplotspec().get_geometry()[:2] == (1, 2)
    for ax in fig.axes:
        points = [c for c in ax.collections if isinstance(c, PathCollection)]
        assert [len(c.get_offsets()) for c in points] == [20, 20]
        assert "n = 40" in ax.texts[0].get_text()
        assert ax.get_legend() is None
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["δ=0.01", "δ=0.04", "y = x"]


def test_predicted_vs_true_draws_the_heldout_prediction_with_error_bars(
        two_env_long: pd.DataFrame) -> None:
    """Monte Carlo panels: x = the held-out dL (0.9 dL in the fixture) with +-SE bars on both
    axes; exact panels: the exact dL, no bars; in_sample: x = surrogate/improvement."""
    exact_ax, mc_ax = plots.plot_predicted_vs_true(two_env_long, reps=100).axes
    mc = two_env_long[two_env_long["env"] == "cartpole"]
    xs = np.sort(np.concatenate([c.get_offsets()[:, 0] for c in mc_ax.collections
                                 if isinstance(c, PathCollection)]))
    np.testing.assert_allclose(xs, np.sort(0.9 * mc["surrogate/improvement"].to_numpy()))
    bars = [c for c in mc_ax.collections if isinstance(c, LineCollection)]
    widths = {round(float(np.ptp(seg[:, axis])), 6) for c in bars for seg in c.get_segments()
              for axis in (0, 1) if np.ptp(seg[:, axis]) > 0}
    assert widths == {0.004, 0.02}  # 2 x SE(dL) = 0.004 and 2 x SE(dJ) = 0.02
    assert not [c for c in exact_ax.collections if isinstance(c, LineCollection)]
    assert mc_ax.get_xlabel() == "predicted dL (held-out)"
    in_sample = plots.plot_predicted_vs_true(two_env_long, reps=100, prediction="in_sample")
    xs = np.sort(np.concatenate([c.get_offsets()[:, 0] for c in in_sample.axes[1].collections
                                 if isinstance(c, PathCollection)]))
    np.testing.assert_allclose(xs, np.sort(mc["surrogate/improvement"].to_numpy()))


def test_surrogate_error_draws_the_monte_carlo_noise_floor(two_env_long: pd.DataFrame) -> None:
    """The floor is 1.96 sqrt(SE(dJ)^2 + SE(dL held-out)^2) = 1.96 sqrt(0.01^2 + 0.002^2) on
    CartPole; none on the exact garnet (both values exact)."""
    mc = two_env_long[two_env_long["env"] == "cartpole"]
    ax = plots.plot_surrogate_error(mc)
    (floor,) = [line for line in ax.get_lines() if line.get_label().startswith("MC noise")]
    assert floor.get_ydata()[0] == pytest.approx(1.96 * np.hypot(0.01, 0.002))
    ax = plots.plot_surrogate_error(two_env_long[two_env_long["env"] != "cartpole"])
    assert not [line for line in ax.get_lines() if line.get_label().startswith("MC noise")]


def test_estimate_kind_follows_the_estimator() -> None:
    df = pd.DataFrame(
        {
            "tabular": [True, True, False, True],
            "estimator": ["exact", "sampled", "sampled", None],
        }
    )
    assert list(plots.estimate_kind(df)) == ["exact", "Monte Carlo", "Monte Carlo", "exact"]


def test_surrogate_error_and_bound_curve(full_long: pd.DataFrame) -> None:
    ax = plots.plot_surrogate_error(full_long)
    counts = {c.get_label(): len(c.get_offsets()) for c in ax.collections}
    assert counts == {"trpo": 40, "npg": 20, "vpg": 20, "kl_penalty": 20}
    bound, ref = ax.get_lines()
    np.testing.assert_allclose(bound.get_ydata() / bound.get_xdata(), 5.0)  # C = 5
    slope = np.diff(np.log(ref.get_ydata())) / np.diff(np.log(ref.get_xdata()))
    np.testing.assert_allclose(slope, 1.0)
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    # on tabular runs the exact dL is used when logged
    shifted = full_long.assign(
        **{"exact/surrogate_improvement": full_long["true/improvement"] + 1e-3}
    )
    ax = plots.plot_surrogate_error(shifted, ax=plt.subplots()[1])
    trpo = ax.collections[0]
    np.testing.assert_allclose(trpo.get_offsets()[:, 1], 1e-3)
    ax = plots.plot_surrogate_error(shifted, ax=plt.subplots()[1], prefer_exact=False)
    assert ax.collections[0].get_offsets()[:, 1].max() > 1e-2


def test_surrogate_error_one_panel_per_env(two_env_long: pd.DataFrame) -> None:
    fig = plots.plot_surrogate_error_panels(two_env_long)
    garnet, cartpole = fig.axes
    assert [garnet.get_title(), cartpole.get_title()] == ["garnet, exact", "cartpole, Monte Carlo"]
    for ax in fig.axes:
        # 2 deltas x 2 seeds x 10 updates, coloured by algorithm
        assert {c.get_label(): len(c.get_offsets()) for c in ax.collections} == {"trpo": 40}
        assert ax.collections[0].get_facecolor()[0][:3] == pytest.approx(plots.ALGO_COLORS["trpo"])
        assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    # the bound's C * KLmax only where bound/C was logged (the tabular garnet), over its KL
    # and the Monte Carlo noise floor only where the estimates are Monte Carlo (CartPole)
    assert [ln.get_label() for ln in cartpole.get_lines()] == ["slope 1",
                                                               "MC noise floor (1.96 SE)"]
    bound, ref = garnet.get_lines()
    assert bound.get_label() == "C·KLmax (TRPO bound)"
    np.testing.assert_allclose(bound.get_ydata() / bound.get_xdata(), 5.0)
    assert (bound.get_xdata().min(), bound.get_xdata().max()) == pytest.approx((0.02, 0.08))
    slope = np.diff(np.log(ref.get_ydata())) / np.diff(np.log(ref.get_xdata()))
    np.testing.assert_allclose(slope, 1.0)
    # each panel's points are in its own env's units: garnet |dJ - dL| = 0.2 dL or 1.1 dL
    g = two_env_long[two_env_long["env"] == "garnet"]
    err = (g["true/improvement"] - g["exact/surrogate_improvement"]).abs()
    np.testing.assert_allclose(
        np.sort(garnet.collections[0].get_offsets()[:, 1]), np.sort(err.to_numpy())
    )
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == [
        "trpo",
        "C·KLmax (TRPO bound)",
        "slope 1",
        "MC noise floor (1.96 SE)",
    ]


def test_improvement_vs_delta(full_long: pd.DataFrame) -> None:
    ax = plots.plot_improvement_vs_delta(full_long)
    assert [c.get_label() for c in ax.get_lines()] == ["trpo", "npg", "slope 1/2"]
    trpo = ax.get_lines()[0]
    np.testing.assert_allclose(trpo.get_xdata(), [0.01, 0.04])
    # per-run median dL = 0.1 sqrt(delta) (1 + 0.05 * 5.5)
    np.testing.assert_allclose(trpo.get_ydata(), 0.1 * np.sqrt([0.01, 0.04]) * 1.275)
    ref = ax.get_lines()[-1]
    slope = np.diff(np.log(ref.get_ydata())) / np.diff(np.log(ref.get_xdata()))
    np.testing.assert_allclose(slope, 0.5)
    assert [len(c.get_offsets()) for c in ax.collections] == [4, 2]


def test_trust_region(full_long: pd.DataFrame) -> None:
    fig = plots.plot_trust_region(full_long)
    kl_mean, kl_max, ratio = fig.axes
    assert [ln.get_label() for ln in kl_mean.get_lines()] == ["trpo", "npg", "y = δ"]
    np.testing.assert_allclose(kl_mean.get_lines()[0].get_ydata(), [0.009, 0.036])
    np.testing.assert_allclose(kl_max.get_lines()[0].get_ydata(), [0.02, 0.08])
    np.testing.assert_allclose(ratio.get_lines()[0].get_ydata(), [1.11, 1.14])
    assert len(ratio.get_lines()) == 2  # no y = delta line for the ratio
    assert [len(c.get_offsets()) for c in kl_mean.collections] == [4, 2]


def test_trust_region_row_per_env(two_env_long: pd.DataFrame) -> None:
    fig = plots.plot_trust_region(two_env_long)
    assert len(fig.axes) == 6  # 2 envs x 3 metrics
    assert [ax.get_title() for ax in fig.axes] == ["garnet, exact"] * 3 + [
        "cartpole, Monte Carlo"
    ] * 3
    assert [ax.get_ylabel() for ax in fig.axes[:3]] == [
        "mean KL(old‖new)", "max KL(old‖new)", "max ratio π'/π"]
    for ax in fig.axes:
        assert [len(c.get_offsets()) for c in ax.collections] == [4]  # 2 deltas x 2 seeds
        np.testing.assert_allclose(ax.get_lines()[0].get_xdata(), [0.01, 0.04])
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["trpo", "y = δ"]


def test_monotonic_and_vacuity(full_long: pd.DataFrame) -> None:
    ax = plots.plot_monotonic(full_long)
    # updates 4 and 8 of 10 have dJ < 0
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), [0.2, 0.2])
    assert [len(c.get_offsets()) for c in ax.collections] == [4, 2]
    ax = plots.plot_bound_vacuity(full_long)
    assert ax.texts[0].get_text() == "bound violations: 0 / 60"  # trpo + npg exact updates
    # vacuity = C KLmax / dL = 10 delta / (0.1 sqrt(delta) (1 + 0.05 i)), median over i
    i = np.arange(1, 11)
    expect = [np.median(10 * d / (0.1 * np.sqrt(d) * (1 + 0.05 * i))) for d in (0.01, 0.04)]
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), expect)
    broken = full_long.copy()
    broken.loc[broken.index[0], "true/improvement"] = -1.0
    ax = plots.plot_bound_vacuity(broken)
    assert ax.texts[0].get_text() == "bound violations: 1 / 60"
    assert _points_under(ax.texts[0], ax) == 0


@pytest.fixture
def penalty_long(tmp_path: Path) -> pd.DataFrame:
    """The shape of the quick ``penalty`` sweep: kl_penalty over beta in (0.3, 1, theory) x two
    seeds, exact and sampled on a garnet; ``penalty/beta`` logged (theory: C = 250 + i exact,
    1500 + i sampled at update i)."""
    root = tmp_path / "penalty"
    root.mkdir()
    (root / "multirun.yaml").write_text("x: 1\n")
    job = 0
    for est in ("exact", "sampled"):
        for beta in (0.3, 1, "theory"):
            for seed in (0, 1):
                cfg = make_cfg("kl_penalty", seed=seed, beta=beta, gamma=0.9, estimator=est)
                rows = make_rows(cfg, n=10)
                for i, row in enumerate(rows, start=1):
                    c = 250 if est == "exact" else 1500
                    row["penalty/beta"] = c + i if beta == "theory" else beta
                cols = METRICS  # penalty/beta is the KL penalty's registered column
                write_run(root / str(job), cfg, rows, job=job, columns=cols)
                job += 1
    return load.load_runs(root)


def test_penalty_beta_axis_with_theory(penalty_long: pd.DataFrame) -> None:
    exact = penalty_long[penalty_long["estimator"] == "exact"]
    # theory runs sit at the median beta they logged: 250 + median(1..10)
    x = plots.step_values(exact, "beta")
    assert set(x[exact["beta_label"] == "theory"]) == {255.5}
    assert set(x[exact["beta_label"] == "0.3"]) == {0.3}
    ax = plots.plot_monotonic(exact, x="beta")
    np.testing.assert_allclose(ax.get_lines()[0].get_xdata(), [0.3, 1.0, 255.5])
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), [0.2, 0.2, 0.2])
    assert ax.get_xlabel() == "KL penalty β"
    ax.figure.canvas.draw()
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == ["0.3", "1", "theory\n≈256"]
    # the CLI: one panel per estimate kind, beta on x
    fig = figures.fig_bound_vacuity(penalty_long, figures.Options())
    assert [a.get_title() for a in fig.axes] == ["garnet, exact", "garnet, Monte Carlo"]
    for a in fig.axes:
        assert a.texts[0].get_text() == "bound violations: 0 / 60"  # 3 betas x 2 seeds x 10
        assert [len(c.get_offsets()) for c in a.collections] == [6]
    np.testing.assert_allclose(fig.axes[1].get_lines()[0].get_xdata(), [0.3, 1.0, 1505.5])
    fig = figures.fig_monotonic(penalty_long, figures.Options())
    assert len(fig.axes) == 2
    fig = plots.plot_trust_region(penalty_long)
    assert len(fig.axes) == 6  # exact and sampled rows x 3 metrics
    assert all(ln.get_label() != "y = δ" for a in fig.axes for ln in a.get_lines())
    with pytest.raises(figures.Skipped):  # no delta anywhere
        figures.fig_improvement_vs_delta(penalty_long, figures.Options())


def test_gae_heatmap_values(tmp_path: Path) -> None:
    cfgs = [
        make_cfg("trpo", seed=s, gamma=g, lam=lam)
        for g in (0.9, 0.99)
        for lam in (0.9, 0.97)
        for s in (0, 1)
    ]
    for c in cfgs:  # cells differ: base return 100 gamma + 10 lambda (+10 for seed 1)
        c["_base"] = 100 * c["gamma"] + 10 * c["gae_lambda"]
    root = tmp_path / "gae"
    root.mkdir()
    (root / "multirun.yaml").write_text("x: 1\n")
    for job, c in enumerate(cfgs):
        base = c.pop("_base") + 10 * c["seed"]
        write_run(root / str(job), c, make_rows(c, n=10, base=base), job=job)
    long = load.load_runs(root)
    ax = plots.plot_gae_heatmap(long)
    values = np.asarray(ax.collections[0].get_array()).reshape(2, 2)
    # final = return of the last update (10% of 10) = base + 10; IQM over 2 seeds = mean (+5)
    expect = [[100 * g + 10 * lam + 15 for lam in (0.9, 0.97)] for g in (0.9, 0.99)]
    np.testing.assert_allclose(values, expect)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0.9", "0.99"]


def test_log_axis_labels_thin_out_when_crowded() -> None:
    deltas = [0.001, 0.003, 0.01, 0.03, 0.1, 0.3]
    labels = {}
    for width in (2.0, 6.0):
        fig, ax = plt.subplots(figsize=(width, 2))
        ax.plot(deltas, deltas)
        plots._log_axis(ax, "x", deltas)
        fig.canvas.draw()
        labels[width] = [t.get_text() for t in ax.get_xticklabels()]
        assert list(ax.get_xticks()) == deltas  # a tick at every value either way
    assert labels[2.0] == ["0.001", "", "0.01", "", "0.1", ""]
    assert labels[6.0] == ["0.001", "0.003", "0.01", "0.03", "0.1", "0.3"]


def test_corner_text_avoids_data() -> None:
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.scatter([0.05, 0.1, 0.1], [0.9, 0.95, 1.0])  # top left
    ax.scatter([0.9, 1.0], [0.0, 0.05])  # bottom right
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    txt = plots.corner_text(ax, "some statistics\nover two lines")
    assert (txt.get_ha(), txt.get_va()) == ("right", "top")  # the free corner
    assert _points_under(txt, ax) == 0
    # no free corner: the limit is pushed out until the data clear the text
    fig, ax = plt.subplots(figsize=(3, 2))
    grid = np.linspace(0, 1, 11)
    ax.scatter(*[a.ravel() for a in np.meshgrid(grid, grid)])
    txt = plots.corner_text(ax, "a\nb\nc", corners=("upper left",))
    assert ax.get_ylim()[1] > 1.1
    assert _points_under(txt, ax) == 0


def test_line_search(full_long: pd.DataFrame) -> None:
    fig = plots.plot_line_search(full_long)
    backtracks, accepted = fig.axes
    (line,) = backtracks.get_lines()  # npg has no line search
    assert line.get_label() == "trpo"
    np.testing.assert_allclose(line.get_ydata(), [np.mean(np.arange(1, 11) % 3)] * 2)
    np.testing.assert_allclose(accepted.get_lines()[0].get_ydata(), [0.8, 0.8])
    # no line search trouble at all: the counts' axis starts at 0, not at -0.04
    calm = full_long.assign(**{"trpo/backtracks": full_long["trpo/backtracks"] * 0})
    ax = plots.plot_line_search_metric(calm, "trpo/backtracks")
    assert -0.05 <= ax.get_ylim()[0] < 0 and ax.get_ylim()[1] == 1.0


def test_line_search_row_per_env(two_env_long: pd.DataFrame) -> None:
    fig = plots.plot_line_search(two_env_long)
    assert [ax.get_title() for ax in fig.axes] == ["garnet, exact"] * 2 + [
        "cartpole, Monte Carlo"
    ] * 2
    assert [ax.get_ylabel() for ax in fig.axes] == ["backtracks per update", "acceptance rate"] * 2
    for ax in fig.axes:
        assert [len(c.get_offsets()) for c in ax.collections] == [4]


def test_learning_curves_one_algorithm_coloured_by_setting(two_env_long: pd.DataFrame) -> None:
    garnet = two_env_long[two_env_long["env"] == "garnet"]
    ax = plots.plot_learning_curves(garnet, num_points=5, reps=50)
    a, b = ax.get_lines()
    assert [a.get_label(), b.get_label()] == ["trpo, delta=0.01", "trpo, delta=0.04"]
    assert a.get_linestyle() == b.get_linestyle() == "-"
    assert a.get_color() != b.get_color()
    # the CLI: one panel per env and kind, exact J on the tabular env, one legend below
    fig = figures.fig_learning_curves(two_env_long, figures.Options(reps=50))
    assert [x.get_title() for x in fig.axes] == ["garnet, exact", "cartpole, Monte Carlo"]
    assert [x.get_ylabel() for x in fig.axes] == ["J (IQM)", "return (IQM)"]
    assert [len(x.get_lines()) for x in fig.axes] == [2, 2]
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["trpo, δ=0.01", "trpo, δ=0.04"]


# --------------------------------------------------------------------------------------------
# summary table
# --------------------------------------------------------------------------------------------


def test_summary_table_numbers(mixed_sweep: Path) -> None:
    index, long = load.load_all(mixed_sweep)
    table = tables.summary_table(long, index, reps=200)
    assert list(table.columns) == list(tables.SUMMARY_COLUMNS)
    assert list(table["algo"]) == ["trpo", "npg", "vpg", "kl_penalty"]
    t = table.set_index("algo")
    assert t.loc["trpo", "n_runs"] == 2 and t.loc["trpo", "n_updates"] == 6
    assert t.loc["npg", "n_failed"] == 1 and t.loc["kl_penalty", "n_incomplete"] == 1
    assert t.loc["vpg", "n_runs"] == 1 and t.loc["vpg", "n_updates"] == 0
    assert math.isnan(t.loc["vpg", "final_return_iqm"])
    # final = last update's return (3 and 13); IQM of 2 values = mean; CI within the values
    assert t.loc["trpo", "final_return_iqm"] == pytest.approx(8.0)
    assert t.loc["trpo", "final_return_ci_low"] == pytest.approx(3.0)
    assert t.loc["trpo", "final_return_ci_high"] == pytest.approx(13.0)
    assert t.loc["trpo", "kl_mean"] == pytest.approx(0.009)
    assert t.loc["trpo", "dj_dl_median"] == pytest.approx(0.8)
    assert t.loc["trpo", "frac_improving"] == pytest.approx(1.0)
    assert t.loc["trpo", "setting"] == "delta=0.01"
    md = tables.summary_markdown(table)
    assert md.count("\n") == 2 + 4
    row = "| trpo | garnet | exact | delta=0.01 | 0.99 | 0.95 | 2 | 0 | 0 | 6 | 8 [3, 13], n=2 |"
    assert row in md


def test_summary_table_separates_estimators(penalty_long: pd.DataFrame) -> None:
    table = tables.summary_table(penalty_long, reps=50)
    assert len(table) == 6  # 3 betas x (exact, sampled)
    assert list(table["estimator"]) == ["exact"] * 3 + ["sampled"] * 3
    assert list(table["setting"]) == ["beta=0.3", "beta=1", "beta=theory"] * 2
    assert list(table["n_runs"]) == [2] * 6


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------


@pytest.fixture
def cli_sweep(tmp_path: Path) -> Path:
    """A sweep that supports every figure: trpo on a gamma x lambda grid and two deltas,
    npg, vpg (Monte Carlo) and kl_penalty; 6 updates per run."""
    cfgs = [
        make_cfg("trpo", seed=s, gamma=g, lam=lam)
        for g in (0.9, 0.99)
        for lam in (0.9, 0.95)
        for s in (0, 1)
    ]
    cfgs += [make_cfg("trpo", seed=s, delta=0.04) for s in (0, 1)]
    cfgs += [make_cfg("trpo", line_search=False), make_cfg("kl_penalty", beta="theory")]
    cfgs += [make_cfg("vpg", seed=s, env="cartpole", tabular=False) for s in (0, 1)]
    return write_sweep(tmp_path / "multirun" / "d" / "t", cfgs, n=6)


def test_cli_makes_every_figure(cli_sweep: Path, tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "figs"
    assert figures.main([str(cli_sweep), "--out", str(out), "--reps", "50"]) == 0
    printed = capsys.readouterr().out
    for name in figures.FIGURES:
        assert f"{name}: made ({name}.pdf, {name}.png)" in printed
        assert (out / f"{name}.pdf").stat().st_size > 0
        assert (out / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    for name in figures.PROBE_FIGURES:  # this sweep ran without probes
        assert f"{name}: skipped, no probes.csv in any run (run with probe.every=K)" in printed
    assert printed.count("skipped") == len(figures.PROBE_FIGURES)
    assert "loaded 14 runs (14 completed), 84 updates" in printed
    summary = pd.read_csv(out / "summary.csv")
    # trpo delta=0.01 on 4 (gamma, lambda) cells, trpo delta=0.04, npg, kl_penalty, vpg
    assert len(summary) == 8
    trpo = summary[(summary["algo"] == "trpo") & (summary["setting"] == "delta=0.01")]
    assert list(trpo["gamma"]) == [0.9, 0.9, 0.99, 0.99]
    assert list(trpo["gae_lambda"]) == [0.9, 0.95, 0.9, 0.95]
    assert list(trpo["n_runs"]) == [2, 2, 2, 2]
    # final = mean of the last update (10% of 6 -> 1): 6 and 16 for seeds 0 and 1
    assert list(trpo["final_return_iqm"]) == [11.0] * 4
    text = (out / "summary.md").read_text()
    assert text.startswith(
        "| algorithm | env | estimator | setting | γ | GAE λ | runs | failed | incomplete | "
        "updates | final return, IQM [95% CI], n | final J, IQM | mean KL(old‖new), mean | "
        "dJ/dL, median | updates with dJ > 0, fraction |\n")


def test_cli_reports_skipped_figures(tmp_path: Path, capsys: Any) -> None:
    cfgs = [make_cfg("vpg", seed=s, env="cartpole", tabular=False) for s in (0, 1)]
    sweep = write_sweep(tmp_path / "vpg", cfgs, n=4)
    out = tmp_path / "figs"
    assert figures.main([str(sweep), "--out", str(out), "--reps", "20"]) == 0
    printed = capsys.readouterr().out
    assert "gae_heatmap: skipped, needs >= 2 gamma and >= 2 gae_lambda values" in printed
    assert "line_search: skipped, needs trpo runs with line search" in printed
    assert "trust_region: skipped" in printed and "bound_vacuity: skipped" in printed
    made = {p.stem for p in out.glob("*.pdf")}
    assert made == {"learning_curves", "predicted_vs_true", "surrogate_error"}
    assert len(pd.read_csv(out / "summary.csv")) == 1


def test_cli_png_width(tmp_path: Path, capsys: Any) -> None:
    cfgs = [make_cfg("vpg", seed=s, env="cartpole", tabular=False) for s in (0, 1)]
    sweep = write_sweep(tmp_path / "vpg", cfgs, n=4)
    out = tmp_path / "figs"
    args = [str(sweep), "--out", str(out), "--reps", "20", "--png-width", "400"]
    assert figures.main(args) == 0
    widths = {
        p.stem: int.from_bytes(p.read_bytes()[16:20], "big") for p in out.glob("*.png")
    }  # the PNG header's IHDR width
    assert set(widths) == {"learning_curves", "predicted_vs_true", "surrogate_error"}
    assert all(350 <= w <= 400 for w in widths.values()), widths


def test_cli_without_runs(tmp_path: Path, capsys: Any) -> None:
    assert figures.main([str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "no run directories" in capsys.readouterr().err
    assert figures.main([str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2


def test_wandb_api_key_detection(tmp_path: Path) -> None:
    netrc_file = tmp_path / "netrc"
    assert figures.wandb_api_key_configured({"WANDB_API_KEY": "k"})
    assert not figures.wandb_api_key_configured({"NETRC": str(netrc_file)})
    netrc_file.write_text("machine api.wandb.ai\n  login user\n  password secret\n")
    netrc_file.chmod(0o600)
    assert figures.wandb_api_key_configured({"NETRC": str(netrc_file)})


@pytest.mark.skipif(shutil.which("wandb") is None, reason="needs the wandb command")
def test_cli_wandb_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    for var in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    cfgs = [make_cfg("trpo", seed=s) for s in (0, 1)]
    sweep = write_sweep(tmp_path / "sw", cfgs, n=3)
    out = tmp_path / "figs"
    assert figures.main([str(sweep), "--out", str(out), "--reps", "20", "--wandb"]) == 0
    assert os.environ["WANDB_MODE"] == "offline"
    (run_dir,) = (out / "wandb").glob("offline-run-*")
    records = subprocess.run(
        ["wandb", "leet", "inspect", "--json", str(run_dir)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.splitlines()
    parsed = [json.loads(line) for line in records if line.strip()]
    (run,) = [r["run"] for r in parsed if r["type"] == "run"]
    assert run["job_type"] == "analysis" and run["run_group"] == "sweep-a"
    assert run["project"] == "trpo-test"
    logged: dict[str, Any] = {}
    for r in parsed:
        if r["type"] == "history":
            logged |= r["history"]["item"]
    assert logged["summary_table._type"] == "table-file"
    assert logged["summary_table.nrows"] == 1
    for name in ("learning_curves", "predicted_vs_true", "surrogate_error", "bound_vacuity"):
        assert logged[f"figures/{name}._type"] == "image-file"
    assert "figures/gae_heatmap._type" not in logged  # skipped: one gamma, one lambda
    assert "figures/trust_region._type" not in logged  # skipped: one delta


def test_module_entry_point_help() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "analysis.figures", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert res.returncode == 0 and "--wandb" in res.stdout


@pytest.mark.skipif(shutil.which("trpo-lab") is None, reason="needs the trpo-lab command")
def test_real_tiny_sweep_end_to_end(tmp_path: Path, capsys: Any) -> None:
    sweep = tmp_path / "sweep"
    cmd = [
        "trpo-lab",
        "-m",
        "algo=trpo,vpg",
        "seed=0,1",
        "total_steps=2048",
        "batch_steps=1024",
        "logger=none",
        "eval.episodes=2",
        f"hydra.sweep.dir={sweep}",
    ]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    index, long = load.load_all(sweep)
    assert sorted(zip(index["algo"], index["seed"], strict=True)) == [
        ("trpo", 0),
        ("trpo", 1),
        ("vpg", 0),
        ("vpg", 1),
    ]
    assert set(index["status"]) == {"completed"} and list(index["n_updates"]) == [2] * 4
    assert long.groupby("run_dir")["env_steps"].max().tolist() == [2048] * 4
    assert long.loc[long["algo"] == "vpg", "trpo/backtracks"].isna().all()
    out = tmp_path / "figs"
    assert figures.main([str(sweep), "--out", str(out), "--reps", "50"]) == 0
    assert "learning_curves: made" in capsys.readouterr().out
    summary = pd.read_csv(out / "summary.csv")
    assert sorted(summary["algo"]) == ["trpo", "vpg"]
    assert list(summary["n_runs"]) == [2, 2] and list(summary["n_updates"]) == [4, 4]
    # logger.group is unset: the group is the one the app gives the sweep's W&B runs
    assert set(index["group"]) == {f"sweep-{sweep.parent.name}_{sweep.name}"}
    assert summary["final_return_iqm"].notna().all()
