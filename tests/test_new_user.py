"""A new user's first hour (issue 30): the summary's result, the cost of the truth announced,
the lines a run ends with, the local parallel launcher, custom envs and their edges."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest

from tests.conftest import clean_env, compose_typed, read_metrics, read_summary, run_cli
from trpo_lab import preflight
from trpo_lab.app import importable_from_cwd
from trpo_lab.jobs import end_lines, result_line

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["batch_steps=128", "critic.epochs=1", "eval.episodes=2", "eval.heldout_episodes=2"]

MYENVS = '''
import gymnasium as gym
import numpy as np
import pandas as pd
from gymnasium.envs.registration import register


class Pixels(gym.Env):
    """10-step episodes of uint8 image observations; reward 1 for action 1."""

    observation_space = gym.spaces.Box(0, 255, (6, 6, 1), np.uint8)
    action_space = gym.spaces.Discrete(2)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self.observation_space.sample(), {}

    def step(self, action):
        self.t += 1
        return self.observation_space.sample(), float(action), self.t >= 10, False, {}


def needs_box2d(**kwargs):
    raise gym.error.DependencyNotInstalled(
        'Box2D is not installed, you can install it by run `pip install swig` followed by '
        '`pip install "gymnasium[box2d]"`')


register("Pixels-v0", entry_point=Pixels, max_episode_steps=10)
register("NeedsBox2D-v0", entry_point="myenvs:needs_box2d")
'''


def trained(run_dir: Path, *overrides: str):
    """A Trainer after training with ``overrides`` (no W&B), and its summary."""
    from trpo_lab.train import Trainer

    run_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(compose_typed("logger=none", "progress=false", *overrides), run_dir)
    return trainer, trainer.run()


# ----------------------------------------------------------------------------- 1. the summary
def test_an_exact_garnet_run_reports_its_exact_J(tmp_path):
    from trpo_lab import exact

    trainer, summary = trained(tmp_path, "env=garnet", "policy=tabular", "algo.estimator=exact",
                               "total_steps=768", "batch_steps=256", "gamma=0.9")
    last = read_metrics(tmp_path).iloc[-1]
    assert summary["iterations"] == 3 and summary == read_summary(tmp_path)
    assert summary["final_true_J"] == last["true/J"] and summary["final_true_J_se"] == 0.0
    # true/J is J(pi) before the last update: J of the trained policy, evaluated here from
    # its table, is it plus the last update's exact dJ
    final = exact.evaluate(trainer.mdp, trainer._pi_table(), 0.9).J
    assert final == pytest.approx(summary["final_true_J"] + last["true/improvement"], abs=1e-9)
    assert final > summary["final_true_J"] > 0  # a garnet's rewards are positive; TRPO improves
    assert summary["final_return_mean"] is None  # estimator=exact: no training episodes
    assert result_line(summary, exact=True) == \
        f"trpo-lab: final J {last['true/J']:.2f} (exact; true/J of the last evaluated update)"


def test_final_true_J_is_the_last_evaluated_rows_with_its_se(tmp_path):
    _, summary = trained(tmp_path, "total_steps=512", *SMALL, "eval.every=2")
    metrics = read_metrics(tmp_path)
    assert metrics["true/J"].isna().tolist() == [False, True, False, True]  # rows 0 and 2
    assert summary["final_true_J"] == metrics["true/J"][2] > 0
    assert summary["final_true_J_se"] == metrics["true/J_se"][2] > 0
    returns = summary["final_return_mean"]
    assert returns == pytest.approx(metrics["rollout/return_mean"].iloc[-1]) and returns > 0


def test_a_probed_run_reports_the_metrics_J_not_a_landscape_point(tmp_path):
    _, summary = trained(tmp_path, "env=garnet", "policy=tabular", "total_steps=512",
                         "batch_steps=256", "eval.episodes=0", "eval.heldout_episodes=0",
                         "probe.every=1", "probe.batch_steps=[64]", "probe.batches=2",
                         "probe.alphas=[0.0,2.0]", "probe.random_directions=0")
    metrics = read_metrics(tmp_path)
    assert summary["final_true_J"] == metrics["true/J"].iloc[-1]
    probes = pd.read_csv(tmp_path / "probes.csv")
    assert summary["final_true_J"] not in set(probes.loc[probes["alpha"] == 2.0, "true"])


# ----------------------------------------------------------------------------- 2. the truth's cost
def test_the_truths_cost_on_long_episodes_is_announced_with_its_numbers():
    cfg = compose_typed("env=pendulum")
    per_update = 2 * cfg.eval.episodes + cfg.eval.heldout_episodes  # pi, pi', held-out
    assert (cfg.eval.episodes, cfg.eval.heldout_episodes, per_update) == (64, 64, 192)
    (pendulum,) = preflight.warnings(cfg)
    # 49 updates x 192 episodes x 200 steps against 49 x 2048 training steps: 18.75x
    assert 49 * 192 * 200 == 1881600
    assert "up to 1881600 env steps (49 evaluated updates x (2 x eval.episodes=64 + " \
           "eval.heldout_episodes=64) episodes x up to 200 steps), 19x the 100352 training " \
           "env steps" in pendulum
    assert "eval.every=2: 9.6x" in pendulum  # ceil(49 / 2) = 25 evaluated: 960,000 steps
    (acrobot,) = preflight.warnings(compose_typed("env=custom", "env.id=Acrobot-v1"))
    assert "up to 4704000 env steps" in acrobot and "47x the 100352" in acrobot
    assert "eval.every=5: 9.6x" in acrobot  # 10 x 192 x 500 = 960,000 (every 4: 12.4x)
    assert "on Acrobot-v1" in acrobot and "eval.heldout_episodes" in acrobot
    assert preflight.eval_every_within(compose_typed("env=custom", "env.id=Acrobot-v1"),
                                       500, preflight.EVAL_RUN_RATIO) == 5
    # within the ratio, or a numpy vector env (CartPole: 22x its steps in 10 of 20 s): quiet
    assert preflight.warnings(compose_typed("env=pendulum", "eval.every=2")) == []
    assert preflight.warnings(compose_typed("env=pendulum", "eval.episodes=16",
                                            "eval.min_differing=16")) == []  # 9.4x
    assert preflight.warnings(compose_typed()) == []
    assert preflight.eval_run_steps(compose_typed(), 500) == 49 * 192 * 500
    # adaptive pairs: rounds of eval.episodes until eval.min_differing pairs differ
    assert preflight.eval_pairs(compose_typed("eval.episodes=2")) == 64
    assert preflight.eval_pairs(compose_typed("eval.episodes=5")) == 65  # 13 rounds
    assert preflight.eval_pairs(compose_typed("eval.episodes=2", "eval.max_pairs=9")) == 8
    assert preflight.eval_pairs(compose_typed("eval.episodes=2", "eval.min_differing=0")) == 2
    (adaptive,) = preflight.warnings(compose_typed("env=pendulum", "eval.episodes=2",
                                                   "eval.heldout_episodes=0"))
    assert "up to 1254400 env steps (49 evaluated updates x (2 x at least 64 pairs " \
           "(eval.episodes=2 in rounds until eval.min_differing=64 differ, at most " \
           "eval.max_pairs=4096) + eval.heldout_episodes=0) episodes" in adaptive  # 49*128*200
    assert "eval.min_differing or eval.heldout_episodes" in adaptive


def test_the_warning_is_printed_by_a_run(tmp_path):
    result = run_cli(["env=pendulum", "total_steps=256", "batch_steps=128", "critic.epochs=1",
                      "eval.episodes=8", "eval.heldout_episodes=0", "eval.min_differing=0",
                      "logger=none",
                      f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # 2 updates x 16 episodes x 200 steps = 6400 against 256: 25x; eval.every=2: 1 x 3200, 12x
    assert "trpo-lab: warning: the evaluation (true J and dJ, held-out dL) may cost far more " \
           "than training: up to 6400 env steps" in result.stderr
    assert "25x the 256 training env steps" in result.stderr
    assert "eval.every=2: 12.5x" in result.stderr


# ----------------------------------------------------------------------------- 3. the last lines
def test_a_run_ends_saying_how_it_did_and_where_its_figures_come_from(tmp_path):
    from analysis.figures import main as figures

    run_dir = tmp_path / "run"
    result = run_cli(["total_steps=128", *SMALL, "eval.final_episodes=2", "logger=none",
                      f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary, row = read_summary(run_dir), read_metrics(run_dir).iloc[-1]
    assert summary["final_true_J"] == row["true/J"] and summary["final_true_J_se"] == \
        row["true/J_se"]
    assert result.stdout.splitlines() == [
        f"trpo-lab: run directory {run_dir}",
        "trpo-lab: training 1 update x 128 steps = 128 env steps",  # printed, not rounded
        f"trpo-lab: completed after 1 update (128 env steps); results in {run_dir}",
        f"trpo-lab: final return {row['rollout/return_mean']:.2f} (mean of the last batch's "
        f"episodes); J {row['true/J']:.2f} (+/- {row['true/J_se']:.2g} SE; true/J of the last "
        f"evaluated update); deterministic return {summary['final_eval_return']:.2f} "
        f"(2 episodes)",
        f"trpo-lab: figures: python -m analysis.figures {run_dir} --out {run_dir / 'figures'}",
    ]
    assert sorted(p.name for p in run_dir.iterdir()) == [
        ".hydra", ".trpo-lab.lock", "checkpoint.pt", "metrics.csv", "summary.json"]  # no app.log
    assert figures([str(run_dir), "--out", str(run_dir / "figures"), "--reps", "50"]) == 0
    assert (run_dir / "figures" / "summary.csv").exists()


def test_end_lines_count_updates_and_skip_what_was_not_measured(tmp_path):
    class Run:
        run_dir, wandb, mdp = tmp_path, None, None

    summary = {"status": "interrupted", "iterations": 0, "env_steps": 0,
               "final_return_mean": None, "final_true_J": None, "final_eval_return": None}
    assert end_lines(Run, summary) == [
        f"trpo-lab: interrupted after 0 updates (0 env steps); results in {tmp_path}"]
    summary.update(iterations=2, env_steps=256, final_return_mean=-1234.5678,
                   final_true_J=-97.125, final_true_J_se=3.14159)
    assert end_lines(Run, summary)[1:] == [
        "trpo-lab: final return -1234.57 (mean of the last batch's episodes); J -97.12 "
        "(+/- 3.1 SE; true/J of the last evaluated update)",
        f"trpo-lab: figures: python -m analysis.figures {tmp_path} --out {tmp_path}/figures"]


# ----------------------------------------------------------------------------- 4. the launcher
def test_multirun_uses_the_local_parallel_launcher_and_named_sweeps_keep_theirs():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from trpo_lab.app import CONF_DIR, SWEEPS_DIR
    from trpo_lab.config import register_configs

    register_configs()
    joblib = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"

    def launcher(name: str, *overrides: str):  # a named sweep: --config-dir sweeps
        GlobalHydra.instance().clear()
        primary, other = (CONF_DIR, SWEEPS_DIR) if name == "config" else (SWEEPS_DIR, CONF_DIR)
        overrides = (*overrides, f"hydra.searchpath=[file://{other}]")
        with initialize_config_dir(config_dir=str(primary), version_base="1.3"):
            cfg = compose(config_name=name, overrides=list(overrides), return_hydra_config=True)
        return cfg.hydra.launcher, cfg.hydra.runtime.choices["hydra/launcher"], \
            cfg.hydra.runtime.choices["hydra/job_logging"]

    default, choice, logging = launcher("config")
    assert (default._target_, default.n_jobs, choice, logging) == (
        joblib, -1, "local_parallel", "stdout")  # one job per core; no app.log
    for name in ("baselines", "delta", "gae", "penalty"):
        named, choice, _ = launcher(name)
        assert (named._target_, named.n_jobs, choice) == (joblib, 2, "joblib"), name
    batched, choice, _ = launcher("config", "hydra/launcher=batched")
    assert choice == "batched" and batched.max_group == 64
    basic, choice, _ = launcher("config", "hydra/launcher=basic")
    assert choice == "basic" and basic._target_.endswith("BasicLauncher")


def test_a_multirun_runs_its_jobs_in_parallel_worker_processes(tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = run_cli(["-m", "seed=0,1", "total_steps=128", *SMALL, "logger=none",
                      f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"trpo-lab sweep {sweep_dir}: 2 completed" in result.stdout
    # each directory's lock holds the pid of the process that trained there: the jobs ran in
    # workers, not in the sweep's process, and on two or more cores in two of them
    sweep_pid, *job_pids = (int((d / ".trpo-lab.lock").read_text()) for d in
                            (sweep_dir, sweep_dir / "0", sweep_dir / "1"))
    assert sweep_pid not in job_pids
    assert len(set(job_pids)) == min(os.cpu_count() or 1, 2)
    assert [read_summary(sweep_dir / str(k))["seed"] for k in (0, 1)] == [0, 1]
    assert not list(sweep_dir.rglob("*.log"))


# ----------------------------------------------------------------------------- 5. custom envs
def console_script() -> Path:
    script = Path(sys.executable).with_name("trpo-lab")
    if not script.exists():
        pytest.skip("the trpo-lab console script is not installed beside this python")
    return script


def test_the_current_directory_goes_last_on_sys_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    before = list(sys.path)
    importable_from_cwd()
    assert sys.path == [*before, str(tmp_path)]
    importable_from_cwd()
    assert sys.path == [*before, str(tmp_path)]  # once


def test_a_module_env_in_the_working_directory_works_from_the_console_script(tmp_path):
    (tmp_path / "myenvs.py").write_text(MYENVS)
    run_dir = tmp_path / "run"
    args = [str(console_script()), "env=custom", "env.id=myenvs:Pixels-v0", "total_steps=128",
            *SMALL, "logger=none", f"hydra.run.dir={run_dir}"]
    env = clean_env({"PYTHONPATH": ""})
    result = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=180, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    summary = read_summary(run_dir)
    assert summary["env"] == "myenvs:Pixels-v0" and summary["final_return_mean"] > 0
    # uint8 images into the MLP: told once, and recorded
    (warning,) = [line for line in result.stderr.splitlines() if "uint8 images" in line]
    assert warning == summary["warnings"][0].join(["trpo-lab: warning: ", ""])
    assert "shape (6, 6, 1)" in warning and "36 inputs" in warning and "policy=cnn" in warning

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    refused = subprocess.run(args[:-1], cwd=elsewhere, env=env, capture_output=True,
                             text=True, timeout=180, stdin=subprocess.DEVNULL)
    assert refused.returncode == 2
    assert refused.stderr.splitlines() == [
        "trpo-lab: error: invalid value env.id='myenvs:Pixels-v0': cannot import module "
        "'myenvs' of module:EnvId (No module named 'myenvs'); it is looked for on sys.path, "
        "which holds the current directory (trpo-lab adds it last): run from the directory "
        "that holds myenvs.py, or set PYTHONPATH=DIR"]
    assert list(elsewhere.iterdir()) == []  # a refused run leaves nothing


def test_an_env_with_a_missing_dependency_is_refused_in_one_line_with_its_pip_hint(tmp_path):
    (tmp_path / "myenvs.py").write_text(MYENVS)
    result = run_cli(["env=custom", "env.id=myenvs:NeedsBox2D-v0", "logger=none"], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "trpo-lab: error: invalid value env.id='myenvs:NeedsBox2D-v0': needs a package that is "
        "not installed: Box2D is not installed, you can install it by run `pip install swig` "
        "followed by `pip install \"gymnasium[box2d]\"`"]
    assert not (tmp_path / "outputs").exists()  # a refused run leaves nothing


def test_car_racing_without_box2d_is_refused_in_one_line(tmp_path):
    if importlib.util.find_spec("Box2D") is not None:
        pytest.skip("Box2D is installed here")
    result = run_cli(["env=custom", "env.id=CarRacing-v3", "logger=none"], cwd=tmp_path)
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("trpo-lab: error: invalid value env.id='CarRacing-v3': needs a "
                           "package that is not installed: Box2D is not installed")
    assert 'pip install "gymnasium[box2d]"' in line


def test_image_observations_into_a_flattening_policy_warn():
    image = gym.spaces.Box(0, 255, (84, 84, 3), np.uint8)
    (warning,) = preflight.observation_warnings(image, "mlp", normalize_obs=False)
    assert f"flattened to {84 * 84 * 3} inputs" in warning and "policy=cnn" in warning
    assert "env.normalize_obs=true" in warning
    assert len(preflight.observation_warnings(image, "linear", False)) == 1
    assert preflight.observation_warnings(image, "mlp", normalize_obs=True) == []
    assert preflight.observation_warnings(image, "cnn", False) == []
    minatar = gym.spaces.Box(0, 1, (10, 10, 4), bool)  # 0/1 already
    assert preflight.observation_warnings(minatar, "mlp", False) == []
    vector = gym.spaces.Box(0, 255, (8,), np.uint8)  # not an image
    assert preflight.observation_warnings(vector, "mlp", False) == []
    assert preflight.observation_warnings(gym.spaces.Box(-1, 1, (4, 4), np.float32), "mlp",
                                          False) == []


# ----------------------------------------------------------------------------- 6. figures
def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIELAB (D65) of sRGB colours in [0, 1], the closed-form conversion."""
    rgb = np.asarray(rgb, dtype=float)
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz_matrix = np.array([[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750],
                           [0.0193339, 0.1191920, 0.9503041]])
    xyz = linear @ xyz_matrix.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]),
                     200 * (f[..., 1] - f[..., 2])], axis=-1)


def test_srgb_to_lab_closed_form():
    np.testing.assert_allclose(srgb_to_lab(np.array([1.0, 1.0, 1.0])), [100, 0, 0], atol=0.01)
    np.testing.assert_allclose(srgb_to_lab(np.array([0.0, 0.0, 0.0])), [0, 0, 0], atol=1e-9)
    # sRGB red: L* 53.24, a* 80.09, b* 67.20 (the standard's published values)
    np.testing.assert_allclose(srgb_to_lab(np.array([1.0, 0.0, 0.0])), [53.24, 80.09, 67.20],
                               atol=0.05)


def _sweep(tmp_path: Path, cfgs: list) -> pd.DataFrame:
    from analysis import load
    from tests.test_analysis import write_sweep

    return load.load_runs(write_sweep(tmp_path, cfgs, n=6))


@pytest.fixture
def algo_sweep(tmp_path: Path) -> pd.DataFrame:
    """An algorithm sweep: the five algorithms at their default settings, two seeds each."""
    from tests.test_analysis import make_cfg

    cfgs = [make_cfg("trpo", seed=s) for s in (0, 1)]
    cfgs += [make_cfg("trpo", seed=s, line_search=False) for s in (0, 1)]
    cfgs += [make_cfg(a, seed=s) for a in ("vpg", "kl_penalty", "ppo") for s in (0, 1)]
    return _sweep(tmp_path / "algos", cfgs)


DELTAS = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3)


@pytest.fixture
def delta_sweep(tmp_path: Path) -> pd.DataFrame:
    """The delta sweep's shape: TRPO over six deltas, two seeds, on an exact garnet."""
    from tests.test_analysis import make_cfg

    return _sweep(tmp_path / "delta",
                  [make_cfg("trpo", seed=s, delta=d) for d in DELTAS for s in (0, 1)])


def test_predicted_vs_true_of_an_algorithm_sweep_colours_by_algorithm(algo_sweep):
    import matplotlib.pyplot as plt

    from analysis import plots

    fig = plots.plot_predicted_vs_true(algo_sweep, reps=50)
    titles = [ax.get_title().split(",")[0] for ax in fig.axes]
    assert titles == ["trpo", "npg", "vpg", "kl_penalty", "ppo"]
    for ax, algo in zip(fig.axes, titles, strict=True):
        (points,) = [c for c in ax.collections if c.get_label() == algo]
        np.testing.assert_allclose(points.get_facecolor()[0, :3], plots.ALGO_COLORS[algo])
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == [*titles, "y = x"]
    plt.close(fig)


def test_predicted_vs_true_of_a_delta_sweep_tells_neighbouring_deltas_apart(delta_sweep):
    import matplotlib.pyplot as plt

    from analysis import plots

    fig = plots.plot_predicted_vs_true(delta_sweep, reps=50)
    (ax,) = fig.axes
    scatters = [c for c in ax.collections if c.get_label().startswith("delta=")]
    assert [c.get_label() for c in scatters] == [f"delta={d:g}" for d in DELTAS]
    rgba = np.array([c.get_facecolor()[0] for c in scatters])
    assert np.allclose(rgba[:, 3], plots.SETTING_ALPHA)
    seen = rgba[:, 3:] * rgba[:, :3] + (1 - rgba[:, 3:])  # as drawn on white
    lab = srgb_to_lab(seen)
    assert np.all(np.diff(lab[:, 0]) > 0)  # sequential: lighter with every delta
    assert np.linalg.norm(np.diff(lab, axis=0), axis=1).min() >= 28  # viridis 0-0.85, 0.7: 20
    shapes = [c.get_paths()[0].vertices.round(3).tobytes() for c in scatters]
    assert all(a != b for a, b in zip(shapes, shapes[1:], strict=False))  # neighbours' markers
    plt.close(fig)


def _overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_no_axis_label_runs_into_a_caption_legend_or_title(tmp_path, delta_sweep):
    from analysis.figures import FIGURES, Options, Skipped, plots

    made = []
    with plots.paper_style():
        for name, build in FIGURES.items():
            try:
                fig = build(delta_sweep, Options(reps=50))
            except Skipped:
                continue
            made.append(name)
            fig.canvas.draw()
            renderer = fig.canvas.get_renderer()
            others = [fig._suptitle, *fig.legends, *(ax.title for ax in fig.axes)]
            boxes = [o.get_window_extent(renderer) for o in others if o is not None]
            for ax in fig.axes:
                for text in (ax.yaxis.label, ax.xaxis.label):
                    box = text.get_window_extent(renderer)
                    assert not any(_overlaps(box, other) for other in boxes), \
                        (name, text.get_text())
            plots.plt.close(fig)
    assert {"improvement_vs_delta", "trust_region", "monotonic_improvement",
            "line_search"} <= set(made)
    # the former label of improvement_vs_delta, as long as the panel and more, did
    with plots.paper_style():
        fig = FIGURES["improvement_vs_delta"](delta_sweep, Options(reps=50))
        fig.axes[0].set_ylabel("predicted dL (in-sample), median per run, as it was")
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        label = fig.axes[0].yaxis.label.get_window_extent(renderer)
        assert _overlaps(label, fig._suptitle.get_window_extent(renderer)) or \
            _overlaps(label, fig.axes[0].title.get_window_extent(renderer))
        plots.plt.close(fig)


def test_step_size_figures_of_an_algorithm_sweep_are_skipped_saying_why(tmp_path, algo_sweep,
                                                                         delta_sweep):
    from analysis.figures import make_figures

    results = {r.name: r for r in make_figures(algo_sweep, tmp_path / "algos")}
    for name in ("trust_region", "monotonic_improvement", "line_search",
                 "improvement_vs_delta"):
        assert not results[name].made, name
        assert "2 delta" in results[name].reason or ">= 2 values of delta" in \
            results[name].reason
    assert "one value each" in results["trust_region"].reason
    assert results["predicted_vs_true"].made and results["learning_curves"].made

    import matplotlib.pyplot as plt

    from analysis import plots

    fig = plots.plot_trust_region(delta_sweep)
    for ax in fig.axes:
        lines = {ln.get_label(): ln for ln in ax.get_lines()}
        np.testing.assert_allclose(lines["trpo"].get_xdata(), DELTAS)  # a curve, not a point
        if "y = δ" in lines:  # the constraint line lies within the panel's y range
            low, high = ax.get_ylim()
            assert low <= min(DELTAS) and max(DELTAS) <= high
    plt.close(fig)
