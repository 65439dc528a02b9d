"""Side-by-side throughput benchmark (issue 8): trpo-lab TRPO against sb3-contrib TRPO.

    python benchmarks/bench_speed.py [--envs cartpole pendulum hopper] [--seeds 3] \
        [--steps 100000] [--hopper-steps 50000] [--no-wandb-row] [--out DIR]

Needs the ``bench`` extra (``pip install -e ".[bench]"``: sb3-contrib, stable-baselines3,
psutil) and, for Hopper-v5, the ``mujoco`` extra.

Every run is its own fresh subprocess (this script with the hidden ``--child`` option) with one
torch thread (``torch.set_num_threads(1)`` for sb3, trpo-lab's default ``torch_threads=1``).
Runs go one at a time, seeds outermost, and alternate which implementation goes first, so a
change in machine load hits both sides alike. Both sides get their hyperparameters from one
:class:`Setting` per env, so they cannot drift apart.

Measured per run, inside the child unless said otherwise:

- env steps/s = env steps / wall time of learning: sb3 ``model.learn()``; trpo-lab the
  training loop (``summary.json["wall_s"]``, start-up and imports excluded, the final
  checkpoint included). The parent also times process start to exit (``process wall``).
- rollout / update share of that wall time. sb3: ``collect_rollouts`` vs ``train`` (wrapped
  methods; ``collect_rollouts`` includes the value calls and GAE). trpo-lab: ``Collector.collect``
  plus ``build_batch`` (values, GAE, old log-probs: what sb3 does inside its rollout) vs the rest
  of ``Trainer.step``. One ``perf_counter`` pair per call: the runs are not slowed.
- peak RSS: ``ru_maxrss`` of the training process at exit (the goal's figure), and the peak
  of the summed RSS of the process tree polled by the parent every 0.2 s (includes W&B's
  service process when W&B is on).
- final return: mean undiscounted return of the last 10 training episodes (sb3: its Monitor's
  ``ep_info_buffer``; trpo-lab: the episode returns that ``Collector.collect`` reports).

Step counts are rounded up to whole updates, as sb3's ``learn()`` does (100k on CartPole-v1:
100,352 steps on both sides). Both initialise orthogonally (gain sqrt 2, heads 0.01 and 1)
and accept a line-search step only if the KL stays within the bound and the surrogate improves.
What differs: sb3's VecNormalize updates the observation and return statistics every step and
scales each reward by that step's statistics (trpo-lab: statistics updated after each batch,
with the same values; one reward scale per batch) and sb3 accepts KL < target_kl (trpo-lab: <=
delta). sb3's KL of a diagonal Gaussian is the mean over action dimensions (the paper's KL, a
sum, divided by the number of dimensions d), and so is its Fisher matrix: its target_kl and
cg_damping on Hopper-v5 (d = 3) are trpo-lab's algo.delta and algo.cg_damping times 3, which
the mapping applies (``Setting.kl_dims``); without it sb3's steps on Hopper are sqrt 3 longer
(measured: KL after the step 0.020 vs 0.0066 from the same batch). Departures from the rl-
baselines3-zoo entries, on both sides: Pendulum-v1 without gSDE and with 20 critic epochs of
minibatch 512 (zoo: gSDE, 15 epochs of 128). Hopper-v5 is the zoo's MuJoCo entry as it is (one
env, ``normalize: true``: observations and rewards).

MB means 10^6 bytes. The per-env tables and the goals table go to stdout; with ``--out DIR``
also to ``DIR/bench_speed.md`` and, one row per run / per goal, ``DIR/bench_speed_runs.csv`` and
``DIR/bench_speed_goals.csv``. Exit code 1 if a run failed, else 0 (goals are reported, not
enforced).
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve()
LAST_EPISODES = 10  # final return = mean of the last 10 training episodes
POLL_S = 0.2  # parent's RSS polling interval
CHILD_TIMEOUT_S = 1800
MB = 1e6
IMPLS = {"ours": "trpo-lab", "sb3": "sb3-contrib"}
WANDB_LABEL = "trpo-lab, W&B offline"


# ------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Setting:
    """One env's hyperparameters, written once and mapped onto both implementations."""

    name: str  # trpo-lab's env config group option
    env_id: str
    n_envs: int
    n_steps: int  # per env and update (sb3 n_steps); trpo-lab batch_steps = n_envs * n_steps
    critic_batch: int  # sb3 batch_size (critic minibatch); trpo-lab critic.minibatches = batch/it
    critic_epochs: int  # sb3 n_critic_updates; trpo-lab critic.epochs
    gamma: float
    gae_lambda: float
    cg_damping: float
    cg_iters: int  # sb3 cg_max_steps
    max_kl: float = 0.01  # sb3 target_kl; trpo-lab algo.delta = kl_dims * max_kl
    backtrack_iters: int = 10  # sb3 line_search_max_iter
    backtrack_coef: float = 0.8  # sb3 line_search_shrinking_factor
    critic_lr: float = 1e-3  # sb3 learning_rate (critic only in TRPO)
    normalize_obs: bool = False  # sb3 VecNormalize(norm_obs=True)
    normalize_reward: bool = False  # sb3 VecNormalize(norm_reward=True)
    hidden: tuple[int, ...] = (64, 64)  # tanh, separate actor and critic on both sides
    # sb3-contrib's KL of a diagonal Gaussian is the mean over action dimensions of the
    # per-dimension KL (``kl_divergence(...).mean()`` over a [batch, dims] tensor), i.e. the
    # paper's KL / dims; so is its Fisher matrix. Its (target_kl, cg_damping) on a d-dim Box
    # are exactly trpo-lab's (d * target_kl, d * cg_damping): same direction, same step.
    kl_dims: int = 1

    @property
    def batch_steps(self) -> int:
        return self.n_envs * self.n_steps

    @property
    def critic_minibatches(self) -> int:
        return self.batch_steps // self.critic_batch


SETTINGS: dict[str, Setting] = {
    # rl-baselines3-zoo hyperparams/trpo.yml, CartPole-v1
    "cartpole": Setting("cartpole", "CartPole-v1", n_envs=2, n_steps=512, critic_batch=512,
                        critic_epochs=20, gamma=0.99, gae_lambda=0.98, cg_damping=1e-3,
                        cg_iters=15),
    # zoo-like Pendulum-v1 without gSDE (both sides: state-independent Gaussian)
    "pendulum": Setting("pendulum", "Pendulum-v1", n_envs=2, n_steps=1024, critic_batch=512,
                        critic_epochs=20, gamma=0.9, gae_lambda=0.95, cg_damping=0.1,
                        cg_iters=15),
    # zoo MuJoCo defaults (its Hopper entry: one env, VecNormalize of observations and rewards)
    "hopper": Setting("hopper", "Hopper-v5", n_envs=1, n_steps=1024, critic_batch=128,
                      critic_epochs=20, gamma=0.99, gae_lambda=0.95, cg_damping=0.1,
                      cg_iters=25, normalize_obs=True, normalize_reward=True, kl_dims=3),
}


def ours_overrides(s: Setting, seed: int, steps: int, run_dir: Path, wandb: bool) -> list[str]:
    """trpo-lab Hydra overrides for a Setting (every mapped key spelled out)."""
    hidden = "[" + ",".join(str(h) for h in s.hidden) + "]"
    logger = ["logger=wandb", "logger.mode=offline"] if wandb else ["logger=none"]
    return [
        "algo=trpo", f"env={s.name}", "policy=mlp", *logger,
        f"seed={seed}", f"total_steps={steps}", f"batch_steps={s.batch_steps}",
        f"num_envs={s.n_envs}", f"gamma={s.gamma}", f"gae_lambda={s.gae_lambda}",
        "normalize_advantages=true", f"env.normalize_obs={str(s.normalize_obs).lower()}",
        f"env.normalize_reward={str(s.normalize_reward).lower()}",
        f"algo.delta={s.kl_dims * s.max_kl:g}", f"algo.cg_iters={s.cg_iters}",
        f"algo.cg_damping={s.kl_dims * s.cg_damping:g}",
        f"algo.backtrack_iters={s.backtrack_iters}",
        f"algo.backtrack_coef={s.backtrack_coef}", "algo.line_search=true",
        f"policy.hidden_sizes={hidden}", "policy.activation=tanh", "policy.init_log_std=0.0",
        f"critic.hidden_sizes={hidden}", f"critic.lr={s.critic_lr}",
        f"critic.epochs={s.critic_epochs}", f"critic.minibatches={s.critic_minibatches}",
        "torch_threads=1", "eval.episodes=0", "progress=false", "checkpoint.every=0",
        f"hydra.run.dir={run_dir}",
    ]


def sb3_kwargs(s: Setting, seed: int) -> dict[str, Any]:
    """sb3-contrib TRPO keyword arguments for a Setting (defaults spelled out too)."""
    return dict(
        n_steps=s.n_steps, batch_size=s.critic_batch, gamma=s.gamma, gae_lambda=s.gae_lambda,
        cg_max_steps=s.cg_iters, cg_damping=s.cg_damping,
        line_search_shrinking_factor=s.backtrack_coef, line_search_max_iter=s.backtrack_iters,
        n_critic_updates=s.critic_epochs, learning_rate=s.critic_lr, use_sde=False,
        normalize_advantage=True, target_kl=s.max_kl, sub_sampling_factor=1, seed=seed,
        device="cpu", verbose=0)


# ------------------------------------------------------------------------- child side
def _timed(owner: Any, name: str, clock: dict[str, float], key: str,
           on_result: Callable[[Any], None] | None = None) -> None:
    """Replace ``owner.name`` by a wrapper that adds its wall time to ``clock[key]``."""
    original = getattr(owner, name)

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            result = original(*args, **kwargs)
        finally:
            clock[key] += time.perf_counter() - start
        if on_result is not None:
            on_result(result)
        return result

    setattr(owner, name, wrapper)


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB  # Linux: KiB


def _final_return(returns: Sequence[float]) -> float:
    tail = list(returns)[-LAST_EPISODES:]
    return statistics.fmean(tail) if tail else math.nan


def child_ours(spec: dict[str, Any]) -> dict[str, Any]:
    """One trpo-lab run through its real entry point, with timing wrappers."""
    from trpo_lab import app, pipeline, train

    setting = SETTINGS[spec["env"]]
    run_dir = Path(spec["run_dir"])
    clock = dict(collect=0.0, build_batch=0.0, step=0.0, record=0.0, checkpoint=0.0)
    returns: list[float] = []
    # the pipeline's phases (a lone run is a group of one): the rollout, the batch, one update
    _timed(pipeline, "collect_runs", clock, "collect",
           on_result=lambda datas: returns.extend(datas[0].stats.returns))
    _timed(pipeline, "build_batches", clock, "build_batch")
    _timed(pipeline.Pipeline, "update", clock, "step")
    _timed(train.Trainer, "record", clock, "record")  # inside an update: the row and files
    _timed(train.Trainer, "checkpoint", clock, "checkpoint")
    sys.argv = ["trpo-lab", *ours_overrides(setting, spec["seed"], spec["steps"], run_dir,
                                            spec["wandb"])]
    app.main()
    summary = json.loads((run_dir / train.SUMMARY).read_text())
    if summary.get("status") != "completed":
        raise RuntimeError(f"trpo-lab run ended with status {summary.get('status')}: "
                           f"{summary.get('error')}")
    rollout_s = clock["collect"] + clock["build_batch"]
    return dict(env_steps=summary["env_steps"], learn_s=summary["wall_s"], rollout_s=rollout_s,
                update_s=clock["step"] - rollout_s - clock["record"],
                checkpoint_s=clock["checkpoint"],
                final_return=_final_return(returns), episodes=len(returns))


def child_sb3(spec: dict[str, Any]) -> dict[str, Any]:
    """One sb3-contrib TRPO run, learn() timed, collect_rollouts and train wrapped."""
    import torch

    torch.set_num_threads(1)
    from sb3_contrib import TRPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    s = SETTINGS[spec["env"]]
    env = make_vec_env(s.env_id, n_envs=s.n_envs, seed=spec["seed"])
    if s.normalize_obs or s.normalize_reward:
        env = VecNormalize(env, norm_obs=s.normalize_obs, norm_reward=s.normalize_reward,
                           gamma=s.gamma)
    policy_kwargs = dict(net_arch=dict(pi=list(s.hidden), vf=list(s.hidden)),
                         activation_fn=torch.nn.Tanh)
    model = TRPO("MlpPolicy", env, policy_kwargs=policy_kwargs, **sb3_kwargs(s, spec["seed"]))
    clock = dict(rollout=0.0, update=0.0)
    _timed(model, "collect_rollouts", clock, "rollout")
    _timed(model, "train", clock, "update")
    start = time.perf_counter()
    model.learn(total_timesteps=spec["steps"])
    learn_s = time.perf_counter() - start
    returns = [float(info["r"]) for info in model.ep_info_buffer]
    env.close()
    return dict(env_steps=int(model.num_timesteps), learn_s=learn_s,
                rollout_s=clock["rollout"], update_s=clock["update"], checkpoint_s=0.0,
                final_return=_final_return(returns), episodes=len(returns))


def child_main(spec_json: str, result_path: Path) -> int:
    spec = json.loads(spec_json)
    result = child_ours(spec) if spec["impl"] == "ours" else child_sb3(spec)
    result["peak_rss_mb"] = _peak_rss_mb()
    result_path.write_text(json.dumps(result))
    return 0


# ------------------------------------------------------------------------- parent side
@dataclass
class Run:
    impl: str  # "ours" or "sb3"
    env: str
    seed: int
    steps: int
    wandb: bool = False
    status: str = "pending"
    error: str = ""
    env_steps: int = 0
    learn_s: float = math.nan
    process_s: float = math.nan
    rollout_s: float = math.nan
    update_s: float = math.nan
    checkpoint_s: float = math.nan
    peak_rss_mb: float = math.nan
    tree_peak_mb: float = math.nan
    final_return: float = math.nan
    episodes: int = 0  # training episodes seen (sb3: those in its ep_info_buffer, <= 100)

    @property
    def label(self) -> str:
        return WANDB_LABEL if self.wandb else IMPLS[self.impl]

    @property
    def sps(self) -> float:
        return self.env_steps / self.learn_s if self.learn_s > 0 else math.nan


def tree_rss_mb(process: Any) -> float:
    """Summed RSS of a psutil process and its descendants (processes that vanish count 0)."""
    import psutil

    total = 0
    try:
        members = [process, *process.children(recursive=True)]
    except psutil.Error:
        return 0.0
    for member in members:
        try:
            total += member.memory_info().rss
        except psutil.Error:
            continue
    return total / MB


def launch(run: Run, work: Path) -> None:
    """Run one child process; fill ``run`` from its result file and the parent's timing."""
    import psutil

    run_dir = work / f"{run.env}-{run.impl}{'-wandb' if run.wandb else ''}-seed{run.seed}"
    run_dir.mkdir(parents=True)
    result_path, log_path = run_dir / "result.json", run_dir / "child.log"
    spec = dict(impl=run.impl, env=run.env, seed=run.seed, steps=run.steps, wandb=run.wandb,
                run_dir=str(run_dir / "run"))
    command = [sys.executable, str(SCRIPT), "--child", json.dumps(spec),
               "--result", str(result_path)]
    peak = 0.0
    with log_path.open("w") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        watched = psutil.Process(proc.pid)
        while proc.poll() is None:
            peak = max(peak, tree_rss_mb(watched))
            if time.perf_counter() - start > CHILD_TIMEOUT_S:
                proc.kill()
            time.sleep(POLL_S)
        run.process_s = time.perf_counter() - start
    run.tree_peak_mb = peak
    if proc.returncode != 0 or not result_path.exists():
        run.status = "failed"
        tail = log_path.read_text().strip().splitlines()[-15:]
        run.error = f"exit code {proc.returncode}: " + " | ".join(tail)
        return
    result = json.loads(result_path.read_text())
    for key in ("env_steps", "learn_s", "rollout_s", "update_s", "checkpoint_s", "peak_rss_mb",
                "final_return", "episodes"):
        setattr(run, key, result[key])
    run.status = "completed"


def effective_steps(requested: int, setting: Setting) -> int:
    """Round up to whole updates, as sb3's ``learn()`` does, and give trpo-lab the same
    number, so both sides do exactly the same env steps (100k on CartPole: 100,352)."""
    return -(-requested // setting.batch_steps) * setting.batch_steps


def plan(envs: Sequence[str], seeds: int, steps: dict[str, int], wandb_row: bool,
         first_seed: int = 0) -> list[Run]:
    """Seeds outermost; in each (seed, env) pair the first implementation alternates."""
    runs = []
    for seed in range(first_seed, first_seed + seeds):
        order = ("ours", "sb3") if seed % 2 == 0 else ("sb3", "ours")
        for env in envs:
            runs += [Run(impl, env, seed, steps[env]) for impl in order]
            if env == "cartpole" and wandb_row:
                runs.append(Run("ours", env, seed, steps[env], wandb=True))
    return runs


# ------------------------------------------------------------------------- reporting
def median(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.median(finite) if finite else math.nan


def fmt(value: float, digits: int = 0) -> str:
    return "-" if not math.isfinite(value) else f"{value:,.{digits}f}"


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


ENV_HEADER = ("implementation", "runs", "env steps/s median", "min", "max", "learn wall s",
              "process wall s", "rollout %", "update %", "peak RSS MB", "tree peak MB",
              f"final return (last {LAST_EPISODES} ep.), median [min, max]")


def group_row(label: str, runs: Sequence[Run]) -> list[str]:
    done = [r for r in runs if r.status == "completed"]
    sps = [r.sps for r in done]
    share = [(r.rollout_s / r.learn_s, r.update_s / r.learn_s) for r in done]
    returns = [r.final_return for r in done]
    spread = f"[{fmt(min(returns), 1)}, {fmt(max(returns), 1)}]" if returns else ""
    return [
        label, f"{len(done)}/{len(runs)}", fmt(median(sps)), fmt(min(sps, default=math.nan)),
        fmt(max(sps, default=math.nan)), fmt(median([r.learn_s for r in done]), 1),
        fmt(median([r.process_s for r in done]), 1),
        fmt(100 * median([s[0] for s in share])), fmt(100 * median([s[1] for s in share])),
        fmt(median([r.peak_rss_mb for r in done])), fmt(median([r.tree_peak_mb for r in done])),
        f"{fmt(median(returns), 1)} {spread}".strip(),
    ]


def groups(runs: Sequence[Run], env: str) -> dict[str, list[Run]]:
    out: dict[str, list[Run]] = {}
    for run in runs:
        if run.env == env:
            out.setdefault(run.label, []).append(run)
    return out


def ratio(runs: Sequence[Run], env: str) -> float:
    by_label = groups(runs, env)
    ours = median([r.sps for r in by_label.get(IMPLS["ours"], []) if r.status == "completed"])
    theirs = median([r.sps for r in by_label.get(IMPLS["sb3"], []) if r.status == "completed"])
    return ours / theirs if theirs > 0 else math.nan


def env_table(runs: Sequence[Run], env: str) -> str:
    s = SETTINGS[env]
    steps = runs[0].steps if runs else 0
    rows = [group_row(label, group) for label, group in groups(runs, env).items()]
    title = (f"### {s.env_id}: {steps:,} env steps, n_envs {s.n_envs} x n_steps {s.n_steps}, "
             f"critic {s.critic_epochs} x {s.critic_minibatches} minibatches of "
             f"{s.critic_batch}, gamma {s.gamma}, lambda {s.gae_lambda}, "
             f"cg {s.cg_iters} / damping {s.cg_damping:g}, max KL {s.max_kl}"
             + (f" (sb3's KL averages {s.kl_dims} action dims: trpo-lab delta "
                f"{s.kl_dims * s.max_kl:g}, damping {s.kl_dims * s.cg_damping:g})"
                if s.kl_dims > 1 else "") + ", "
             f"obs norm {'on' if s.normalize_obs else 'off'}, "
             f"reward norm {'on' if s.normalize_reward else 'off'}")
    return (f"{title}\n\n{markdown(ENV_HEADER, rows)}\n\n"
            f"ratio trpo-lab / sb3-contrib (median env steps/s): {fmt(ratio(runs, env), 2)}x\n")


@dataclass(frozen=True)
class GoalRow:
    goal: str
    target: str
    measured: str
    passed: bool | None  # None: not run

    def cells(self) -> list[str]:
        verdict = "not run" if self.passed is None else ("pass" if self.passed else "FAIL")
        return [self.goal, self.target, self.measured, verdict]


SPEED_GOALS = {"cartpole": 4.0, "pendulum": 4.0, "hopper": 2.0}
RSS_GOAL_MB = 450.0


def speed_goal(runs: Sequence[Run], env: str) -> GoalRow:
    name = f"{SETTINGS[env].env_id} env steps/s, trpo-lab / sb3-contrib"
    value = ratio(runs, env)
    target = SPEED_GOALS[env]
    if not math.isfinite(value):
        return GoalRow(name, f">= {target:g}x", "-", None)
    return GoalRow(name, f">= {target:g}x", f"{value:.2f}x", value >= target)


def rss_goal(runs: Sequence[Run]) -> GoalRow:
    name = "peak RSS of a CartPole run, W&B offline (training process)"
    done = [r for r in runs if r.wandb and r.status == "completed"]
    if not done:
        return GoalRow(name, f"<= {RSS_GOAL_MB:g} MB", "-", None)
    peak = max(r.peak_rss_mb for r in done)
    tree = max(r.tree_peak_mb for r in done)
    return GoalRow(name, f"<= {RSS_GOAL_MB:g} MB",
                   f"{peak:.0f} MB (max of {len(done)}; with W&B service: {tree:.0f} MB)",
                   peak <= RSS_GOAL_MB)


def return_goal(runs: Sequence[Run], env: str, tolerance: float) -> GoalRow:
    """Medians within ``tolerance``; the measured cell adds the one-sided Mann-Whitney p-value
    of "trpo-lab's final returns are lower" (with 3 seeds a side it cannot go below 0.05: a
    few seeds tell speed, not learning; use --seeds 10 or more for the returns)."""
    from scipy.stats import mannwhitneyu

    name = f"{SETTINGS[env].env_id} final return, trpo-lab vs sb3-contrib (medians)"
    by_label = groups(runs, env)
    ours_all = [r.final_return for r in by_label.get(IMPLS["ours"], [])
                if r.status == "completed" and math.isfinite(r.final_return)]
    theirs_all = [r.final_return for r in by_label.get(IMPLS["sb3"], [])
                  if r.status == "completed" and math.isfinite(r.final_return)]
    target = f">= sb3 - {tolerance:.0%} of abs(sb3)"
    if not (ours_all and theirs_all):
        return GoalRow(name, target, "-", None)
    ours, theirs = median(ours_all), median(theirs_all)
    p_lower = float(mannwhitneyu(ours_all, theirs_all, alternative="less").pvalue)
    return GoalRow(name, target,
                   f"{ours:.1f} vs {theirs:.1f} ({len(ours_all)} vs {len(theirs_all)} seeds; "
                   f"one-sided Mann-Whitney p = {p_lower:.2f})",
                   ours >= theirs - tolerance * abs(theirs))


def goals(runs: Sequence[Run], envs: Sequence[str], tolerance: float) -> list[GoalRow]:
    rows = [speed_goal(runs, env) for env in SETTINGS if env in envs]
    rows.append(rss_goal(runs))
    rows += [return_goal(runs, env, tolerance) for env in SETTINGS if env in envs]
    return rows


def version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_line(load_before: tuple[float, float, float]) -> str:
    load_after = os.getloadavg()
    packages = ", ".join(f"{p} {version(p)}" for p in (
        "trpo-lab", "sb3-contrib", "stable-baselines3", "torch", "gymnasium", "mujoco"))
    return (f"Machine: {platform.node()}, {os.cpu_count()} CPUs, {platform.machine()}, "
            f"Python {platform.python_version()}; {packages}. Load average (1/5/15 min) at "
            f"start {', '.join(f'{x:.2f}' for x in load_before)}, at end "
            f"{', '.join(f'{x:.2f}' for x in load_after)}.")


def write_outputs(out: Path, report: str, runs: Sequence[Run], goal_rows: Sequence[GoalRow]
                  ) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_speed.md").write_text(report)
    names = [*asdict(runs[0]), "label", "env_steps_per_s"]
    with (out / "bench_speed_runs.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(names)
        for run in runs:
            values = {**asdict(run), "label": run.label, "env_steps_per_s": run.sps}
            writer.writerow([values[n] for n in names])
    with (out / "bench_speed_goals.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["goal", "target", "measured", "result"])
        writer.writerows(g.cells() for g in goal_rows)


# ------------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--envs", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--seeds", type=int, default=3, help="seeds per env and side")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="seeds first_seed .. first_seed + seeds - 1 (default 0)")
    parser.add_argument("--steps", type=int, default=100_000,
                        help="env steps per CartPole/Pendulum run (rounded up to whole updates)")
    parser.add_argument("--hopper-steps", type=int, default=50_000,
                        help="env steps per Hopper run (rounded up to whole updates)")
    parser.add_argument("--no-wandb-row", action="store_true",
                        help="skip the extra CartPole trpo-lab runs with W&B offline")
    parser.add_argument("--return-tolerance", type=float, default=0.05,
                        help="final return 'not worse': ours >= theirs - tol * |theirs|")
    parser.add_argument("--out", type=Path, help="write bench_speed.md and csv files here")
    parser.add_argument("--keep-runs", action="store_true",
                        help="keep the temporary run directories (logs, metrics, W&B files)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def progress(index: int, total: int, run: Run) -> None:
    state = (f"{run.sps:,.0f} steps/s, return {run.final_return:.1f}"
             if run.status == "completed" else run.error)
    print(f"[{index}/{total}] {run.env} {run.label} seed {run.seed}: {state}", file=sys.stderr,
          flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args.child, args.result)
    load_before = os.getloadavg()
    steps = {env: effective_steps(args.hopper_steps if env == "hopper" else args.steps,
                                  SETTINGS[env]) for env in args.envs}
    runs = plan(args.envs, args.seeds, steps, not args.no_wandb_row, args.first_seed)
    work = Path(tempfile.mkdtemp(prefix="bench_speed_"))
    try:
        for index, run in enumerate(runs, 1):
            launch(run, work)
            progress(index, len(runs), run)
    finally:
        if args.keep_runs:
            print(f"run directories kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    goal_rows = goals(runs, args.envs, args.return_tolerance)
    sections = [env_table([r for r in runs if r.env == env], env) for env in args.envs]
    goal_table = markdown(("goal", "target", "measured", "result"),
                          [g.cells() for g in goal_rows])
    report = "\n".join([*sections, "### Goals (issue 8)\n", goal_table, "",
                        machine_line(load_before), ""])
    print(report)
    if args.out:
        write_outputs(args.out, report, runs, goal_rows)
    failed = [r for r in runs if r.status != "completed"]
    for run in failed:
        print(f"FAILED {run.env} {run.label} seed {run.seed}: {run.error}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
