"""The roofline of a TRPO update: per phase, its work, its time, the rate it reaches and the
machine's limit for the same shapes (issue 27); prints one markdown table per (env, runs).

    python benchmarks/bench_roofline.py [--envs cartpole pendulum] [--runs 1 5 10]
        [--updates 3] [--repeats 1] [--warmup 1] [--set key=value ...]
    python benchmarks/bench_roofline.py --evaluator RUN_DIR/checkpoint.pt [--runs 1 5 10]

Each configuration is ``--runs`` R runs of bench_speed.py's setting for the env (the
rl-baselines3-zoo hyperparameters, as bench_batched.py's groups; one torch thread) WITH the
truth on (``eval.episodes=64`` with the default adaptive rounds, ``eval.heldout_episodes=16``
as when issue 27 was filed): lone runs and groups through the one update pipeline
(``trpo_lab.pipeline.Pipeline``; a lone run is a group of one), in this process. After ``--warmup``
untimed updates, ``--updates`` timed updates, ``--repeats`` times, the configurations
alternating between repeats; each cell is the median over repeats.

Phases are timed by wrappers around the functions that do them (one pair of clock reads per
call, never per env step); a phase's time excludes the phases nested in it. Times are CPU
seconds of this process (``time.process_time``): on a shared machine they move far less than
wall time, and the limits below are measured the same way, in the same process, just before.

Work is counted from the shapes: matrix-product FLOPs (2 m k n per product) of the MLP
passes each phase makes (a forward pass; a gradient = a forward pass and twice its products; a
Fisher-vector product = 4 x the products of a forward pass on its rows, after one cached
forward pass for CG; a critic Adam step = a gradient), and the hidden units' tanh evaluations
of the forward passes as elementwise work; env steps for the rollout and for the
evaluator's episodes (paired and held-out rows, stepped in one loop with the policy calls).

Limits, measured here: the stacked float32 matrix product [R, rows, 64] x [R, 64, 64] (numpy,
what the hand-written derivatives call) in GFLOP/s and the sigmoid-form tanh of
``trpo_lab.mlp.tanh_`` on [R, rows, 64] in elements/s, at each phase's own R and rows; a
FLOP phase's limit time is flops / matmul rate + tanh elements / tanh rate, and "% of limit"
is that over the measured time. For env phases the limit is the env alone: gymnasium's
CartPoleVectorEnv stepped with random actions at the phase's number of columns (the rollout's
R x num_envs, the evaluator's R x 160), or one env stepped by itself where the code steps
single envs (Pendulum's rollout and evaluator, a CartPole rollout of fewer than 6 envs). The
evaluator's rate depends on the episodes' lengths: the lockstep loop runs to the longest
episode, so short, uneven episodes early in training reach less of the limit than the long
ones of a trained policy (``--warmup`` trains longer first). The per-run diagnostics and
"other" (begin/end of the update, metrics.csv) are timed but their work is not counted.

``--evaluator CHECKPOINT`` times the truth alone where it is expensive, on a trained policy's
long episodes: R default CartPole runs (64 paired + 16 held-out episodes each) with the actor
of a run's checkpoint (e.g. of ``trpo-lab seed=0 logger=none``), one ``run_samplers`` call per
repeat (median of >= 3), CPU time, env steps/s with the policy calls included.

Run it on a quiet machine for the README; it prints the load average beside each table.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402
from bench_batched import compose, group_overrides  # noqa: E402

TRUTH = ["eval.episodes=64", "eval.heldout_episodes=16"]
PHASES = ["rollout", "batch (values, GAE)", "gradient", "CG (FVPs)", "line search",
          "critic", "held-out batch", "paired evaluation", "per-run diagnostics", "other"]


def load_average() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


# ----------------------------------------------------------------------------- timing
class Clock:
    """Exclusive CPU time per phase: a stack of the wrapped calls in progress."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.stack: list[str] = []
        self.mark = 0.0
        self.counts: dict[str, float] = defaultdict(float)
        self.fvp_rows_per_run = 0

    def enter(self, phase: str) -> None:
        now = time.process_time()
        if self.stack:
            self.seconds[self.stack[-1]] += now - self.mark
        self.stack.append(phase)
        self.mark = now

    def leave(self) -> None:
        now = time.process_time()
        self.seconds[self.stack.pop()] += now - self.mark
        self.mark = now

    def wrap(self, owner, name: str, phase: str,
             on_call: Callable[..., None] | None = None,
             on_result: Callable[..., object] | None = None) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        def wrapper(*args, **kwargs):
            if on_call is not None:
                on_call(*args, **kwargs)
            self.enter(phase)
            try:
                result = original(*args, **kwargs)
            finally:
                self.leave()
            return on_result(result) if on_result is not None else result

        setattr(owner, name, wrapper)


def instrument(clock: Clock) -> None:
    """Wrap the functions of every phase, in the modules that call them."""
    from trpo_lab import batched, critic, evaluation, pipeline, rollout, train
    from trpo_lab.algos import trpo

    for module in (rollout, pipeline):
        clock.wrap(module, "collect_runs", "rollout")
        clock.wrap(module, "build_batches", "batch (values, GAE)")
    clock.wrap(train.Trainer, "take_batch", "gradient")  # its own part: the gradient of dL
    clock.wrap(trpo, "flat_grad", "gradient")
    clock.wrap(trpo, "trpo_update_runs", "line search")  # what CG and the gradient leave

    def count_products(fvp):
        def counted(v):
            clock.counts["fvp products"] += 1
            clock.counts["fvp rows"] += v.shape[0] * clock.fvp_rows_per_run
            return fvp(v)
        return counted

    def fvp_setup(actor, batch, damping):
        clock.fvp_rows_per_run = batch.obs.shape[1]
        clock.counts["fvp cache rows"] += batch.obs.shape[0] * batch.obs.shape[1]

    clock.wrap(trpo, "fisher_vector_product_runs", "CG (FVPs)", on_call=fvp_setup,
               on_result=count_products)
    clock.wrap(trpo, "conjugate_gradient_runs", "CG (FVPs)")

    def forward_rows(actor, flat, obs):
        clock.counts["line search rows"] += obs.shape[0] * obs.shape[1]

    clock.wrap(batched.StackedActor, "dist_params", "line search", on_call=forward_rows)
    for module in (critic, pipeline):
        clock.wrap(module, "critic_update_runs", "critic")
    for module in (evaluation, pipeline, train):  # train: the adaptive rounds of pairs
        clock.wrap(module, "run_samplers", "paired evaluation")
    clock.wrap(train.Trainer, "_evaluate", "held-out batch")
    clock.wrap(train.Trainer, "guard_update", "per-run diagnostics")


# ----------------------------------------------------------------------------- limits
def _cpu_rate(fn: Callable[[], object], work: float, min_s: float = 0.05) -> float:
    """work per CPU second of ``fn``: the best of 3 timings of enough calls."""
    fn()
    calls = 1
    while True:
        start = time.process_time()
        for _ in range(calls):
            fn()
        if time.process_time() - start >= min_s:
            break
        calls *= 2
    best = math.inf
    for _ in range(3):
        start = time.process_time()
        for _ in range(calls):
            fn()
        best = min(best, (time.process_time() - start) / calls)
    return work / best


@functools.cache
def matmul_rate(runs: int, rows: int, width: int = 64) -> float:
    """FLOP/s of numpy's stacked float32 product [R, rows, w] x [R, w, w]."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((runs, rows, width)).astype(np.float32)
    w = rng.standard_normal((runs, width, width)).astype(np.float32)
    return _cpu_rate(lambda: x @ w, 2.0 * runs * rows * width * width)


@functools.cache
def tanh_rate(runs: int, rows: int, width: int = 64) -> float:
    """Elements/s of trpo_lab.mlp.tanh_ (torch's sigmoid in place) on [R, rows, w]."""
    from trpo_lab.mlp import tanh_

    x = np.random.default_rng(0).standard_normal((runs, rows, width)).astype(np.float32) * 0.1
    return _cpu_rate(lambda: tanh_(x.copy()), runs * rows * width)


@functools.cache
def cartpole_rate(columns: int) -> float:
    """Env steps/s of gymnasium's CartPoleVectorEnv, random actions."""
    import gymnasium as gym

    env = gym.make_vec("CartPole-v1", columns, vectorization_mode="vector_entry_point")
    env.reset(seed=0)
    actions = np.random.default_rng(0).integers(0, 2, (64, columns))
    step = iter(range(10**12))
    rate = _cpu_rate(lambda: env.step(actions[next(step) % 64]), columns)
    env.close()
    return rate


@functools.cache
def single_env_rate(env_id: str) -> float:
    """Env steps/s of one env (gym.make) stepped by itself."""
    import gymnasium as gym

    env = gym.make(env_id)
    env.reset(seed=0)
    action = env.action_space.sample()

    def step():
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            env.reset()

    rate = _cpu_rate(step, 1)
    env.close()
    return rate


# ----------------------------------------------------------------------------- work
@dataclass
class Shapes:
    obs_dim: int
    actor_out: int
    actor_hidden: list[int]
    critic_hidden: list[int]

    @staticmethod
    def _flops(rows: float, sizes: list[int]) -> float:
        return sum(2.0 * rows * a * b for a, b in zip(sizes[:-1], sizes[1:]))

    def actor(self, rows: float) -> tuple[float, float]:
        """(matmul FLOPs, tanh elements) of one actor forward pass on ``rows`` states."""
        sizes = [self.obs_dim, *self.actor_hidden, self.actor_out]
        return self._flops(rows, sizes), rows * sum(self.actor_hidden)

    def critic(self, rows: float) -> tuple[float, float]:
        sizes = [self.obs_dim, *self.critic_hidden, 1]
        return self._flops(rows, sizes), rows * sum(self.critic_hidden)


def _add(*parts: tuple[float, float]) -> tuple[float, float]:
    return sum(p[0] for p in parts), sum(p[1] for p in parts)


def _times(k: float, part: tuple[float, float]) -> tuple[float, float]:
    return k * part[0], k * part[1]


@dataclass
class Measurement:
    seconds: dict[str, float] = field(default_factory=dict)  # per update
    counts: dict[str, float] = field(default_factory=dict)  # per update
    rollout_steps: float = 0.0
    eval_steps: float = 0.0
    heldout_steps: float = 0.0


def measure(env: str, runs: int, updates: int, warmup: int, extra: list[str],
            root: Path) -> Measurement:
    """Build ``runs`` runs, train ``warmup`` updates, time ``updates`` more."""
    from trpo_lab.pipeline import Pipeline
    from trpo_lab.train import Trainer

    trainers = []
    for seed in range(runs):
        run_dir = Path(tempfile.mkdtemp(dir=root))
        cfg = compose([*group_overrides(env, seed), *TRUTH, *extra])
        trainers.append(Trainer(cfg, run_dir, in_group=runs > 1))
    group = Pipeline(trainers)  # a lone run: a group of one, as Trainer.run trains it
    group.start()
    active: list[int] = list(range(runs))
    results: dict = {}

    def update() -> None:
        nonlocal active
        active = group.update(active, results)
        if len(active) != runs:
            raise RuntimeError(f"a run failed: {results}")

    for _ in range(warmup):
        update()
    clock = CLOCK
    clock.seconds.clear()
    clock.counts.clear()
    before = [(t.eval_env_steps, t.heldout_env_steps) for t in trainers]
    for _ in range(updates):
        clock.enter("other")
        try:
            update()
        finally:
            clock.leave()
    out = Measurement({k: v / updates for k, v in clock.seconds.items()},
                      {k: v / updates for k, v in clock.counts.items()})
    out.counts["fvp rows per run"] = clock.fvp_rows_per_run  # a shape, not a count
    out.rollout_steps = runs * trainers[0].cfg.batch_steps
    out.eval_steps = sum(t.eval_env_steps - b[0] for t, b in zip(trainers, before)) / updates
    out.heldout_steps = sum(t.heldout_env_steps - b[1]
                            for t, b in zip(trainers, before)) / updates
    for trainer in trainers:
        trainer._close("completed", None)
    return out


def work_and_limits(env: str, runs: int, m: Measurement, cfg) -> dict[str, tuple]:
    """phase -> (work, unit, limit seconds or None, limit label)."""
    obs_dim = {"cartpole": 4, "pendulum": 3}[env]
    out_dim = {"cartpole": 2, "pendulum": 1}[env]
    shapes = Shapes(obs_dim, out_dim, list(cfg.policy.hidden_sizes),
                    list(cfg.critic.hidden_sizes))
    B = cfg.batch_steps  # noqa: N806
    R = runs  # noqa: N806
    per_run_heldout = m.heldout_steps / R
    minibatch = B // cfg.critic.minibatches
    critic_steps = cfg.critic.epochs * cfg.critic.minibatches
    fvp_rows_per_run = int(m.counts.get("fvp rows per run") or B)
    fwd_a, fwd_c = shapes.actor, shapes.critic

    def mm_a(rows: float) -> tuple[float, float]:  # products only (a backward pass's)
        return fwd_a(rows)[0], 0.0

    def mm_c(rows: float) -> tuple[float, float]:
        return fwd_c(rows)[0], 0.0

    def grad_a(rows: float) -> tuple[float, float]:  # forward (with tanh) + 2 x products
        return _add(fwd_a(rows), _times(2, mm_a(rows)))

    work = {
        "batch (values, GAE)": (_times(R, _add(fwd_c(B + cfg.num_envs), fwd_a(B))), B),
        # the update's gradient (TRPO's g) and take_batch's gradient of dL
        "gradient": (_times(2 * R, grad_a(B)), B),
        # one cached forward pass, then J v and J^T u: 4 x the forward pass's products
        "CG (FVPs)": (_add(fwd_a(m.counts.get("fvp cache rows", 0.0)),
                           _times(4, mm_a(m.counts.get("fvp rows", 0.0)))),
                      fvp_rows_per_run),
        "line search": (fwd_a(m.counts.get("line search rows", 0.0)), B),
        "critic": (_times(R, _add(_times(critic_steps, _add(fwd_c(minibatch),
                                                            _times(2, mm_c(minibatch)))),
                                  fwd_c(B))), minibatch),
        # the critic on its steps, the old policy's forward pass and gradient, the new one's
        "held-out batch": (_times(R, _add(fwd_c(per_run_heldout), fwd_a(per_run_heldout),
                                          grad_a(per_run_heldout), fwd_a(per_run_heldout))),
                           max(int(per_run_heldout), 1)),
    }
    limits: dict[str, tuple] = {}
    for phase, ((flops, elems), rows) in work.items():
        seconds = flops / matmul_rate(R, rows) + elems / tanh_rate(R, rows)
        limits[phase] = (flops, "FLOP", seconds,
                         f"{matmul_rate(R, rows) / 1e9:.0f} GFLOP/s, "
                         f"{tanh_rate(R, rows) / 1e9:.2f} G tanh/s at [{R}, {rows}, 64]")
    columns_rollout = R * cfg.num_envs
    columns_eval = R * 2 * (cfg.eval.episodes + cfg.eval.heldout_episodes)
    if env == "cartpole":
        # a rollout of fewer than CartPoleSteps.MIN_ENVS envs steps them one by one
        single = columns_rollout < 6
        rollout_rate = single_env_rate("CartPole-v1") if single \
            else cartpole_rate(columns_rollout)
        eval_rate = cartpole_rate(columns_eval)
        labels = ("one CartPole-v1 env" if single else
                  f"CartPoleVectorEnv, {columns_rollout} envs",
                  f"CartPoleVectorEnv, {columns_eval} envs")
    else:
        rollout_rate = eval_rate = single_env_rate("Pendulum-v1")
        labels = ("one Pendulum-v1 env", "one Pendulum-v1 env")
    limits["rollout"] = (m.rollout_steps, "env steps", m.rollout_steps / rollout_rate,
                         f"{rollout_rate / 1e6:.2f} M steps/s ({labels[0]})")
    evaluated = m.eval_steps + m.heldout_steps
    limits["paired evaluation"] = (evaluated, "env steps", evaluated / eval_rate,
                                   f"{eval_rate / 1e6:.2f} M steps/s ({labels[1]})")
    return limits


def _si(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.2f} {unit}"
    return f"{x:.0f}"


def table(env: str, runs: int, ms: list[Measurement], cfg) -> str:
    seconds = {p: statistics.median(m.seconds.get(p, 0.0) for m in ms) for p in PHASES}
    merged = Measurement(seconds, {k: statistics.median(m.counts.get(k, 0.0) for m in ms)
                                   for k in ms[0].counts},
                         ms[0].rollout_steps, statistics.median(m.eval_steps for m in ms),
                         statistics.median(m.heldout_steps for m in ms))
    limits = work_and_limits(env, runs, merged, cfg)
    total = sum(seconds.values())
    lines = [f"**{env}, {'a lone run' if runs == 1 else f'a group of {runs} runs'}**: "
             f"{total * 1e3:.0f} CPU ms per update of every run "
             f"({merged.rollout_steps / total:,.0f} training env steps/s aggregate); "
             f"`{load_average()}`", "",
             "| phase | work per update | CPU ms | share | rate reached | machine limit "
             "(same shapes) | % of limit |", "|---|---|---|---|---|---|---|"]
    for phase in PHASES:
        s = seconds[phase]
        if phase in limits:
            work, unit, limit_s, label = limits[phase]
            rate = f"{_si(work / s)}{'FLOP' if unit == 'FLOP' else ' steps'}/s" if s > 0 else "-"
            pct = f"{100 * limit_s / s:.0f} %" if s > 0 else "-"
            lines.append(f"| {phase} | {_si(work)} {unit} | {s * 1e3:.1f} | "
                         f"{100 * s / total:.0f} % | {rate} | {label} | {pct} |")
        else:
            lines.append(f"| {phase} | (not counted) | {s * 1e3:.1f} | {100 * s / total:.0f} % "
                         f"| | | |")
    if merged.counts.get("fvp products"):
        lines.append("")
        lines.append(f"CG: {merged.counts['fvp products']:.0f} batched products per update "
                     f"on {merged.counts.get('fvp rows per run', 0):.0f} rows per run; "
                     f"line search: {merged.counts.get('line search rows', 0) / runs:.0f} "
                     f"forward rows per run; evaluator: {merged.eval_steps / runs:,.0f} paired "
                     f"+ {merged.heldout_steps / runs:,.0f} held-out env steps per run.")
    return "\n".join(lines)


CLOCK = Clock()


def evaluator_rate(checkpoint: Path, runs: int, repeats: int, root: Path) -> str:
    """The evaluator alone on a trained policy's episodes: ``runs`` default runs (CartPole,
    64 paired + 16 held-out episodes each) with the actor of ``checkpoint`` (a run's
    checkpoint.pt), one ``run_samplers`` call per repeat (key = repeat), CPU-timed."""
    import torch

    from trpo_lab.evaluation import SamplerRequest, run_samplers
    from trpo_lab.train import Trainer

    state = torch.load(checkpoint, weights_only=False, map_location="cpu")
    trainers = []
    for seed in range(runs):
        trainer = Trainer(compose(["logger=none", "progress=false", f"seed={seed}"]),
                          Path(tempfile.mkdtemp(dir=root)))
        trainer.policy.load_state_dict(state["policy"])
        trainers.append(trainer)
    times, steps = [], 0
    for key in range(repeats):
        requests = [SamplerRequest(t.sampler, [t.policy.numpy_actor()] * 2,
                                   t.collector.frozen_encoder(), (key,), True)
                    for t in trainers]
        start = time.process_time()
        episodes = run_samplers(requests)
        times.append(time.process_time() - start)
        steps = sum(int(e.lengths.sum()) for run in episodes for e in run)
    for trainer in trainers:
        trainer._close("completed", None)
    seconds = statistics.median(times)
    return (f"| {runs} | {steps:,} | {seconds * 1e3:.1f} | {steps / seconds / 1e6:.2f} M |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", nargs="+", default=["cartpole", "pendulum"],
                        choices=["cartpole", "pendulum"])
    parser.add_argument("--runs", nargs="+", type=int, default=[1, 5, 10])
    parser.add_argument("--updates", type=int, default=3, help="timed updates per repeat")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=1, help="untimed updates first")
    parser.add_argument("--set", nargs="*", default=[], help="extra overrides for every run")
    parser.add_argument("--evaluator", type=Path, metavar="CHECKPOINT",
                        help="instead: time the evaluator alone on the episodes of this run's "
                             "policy (a default CartPole run's checkpoint.pt), for each --runs")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    if args.evaluator is not None:
        print(f"`{load_average()}`\n\n| runs | env steps (paired + held-out, all runs) | "
              "CPU ms | env steps/s |\n|---|---|---|---|")
        with tempfile.TemporaryDirectory() as tmp:
            for runs in args.runs:
                print(evaluator_rate(args.evaluator, runs, max(args.repeats, 3), Path(tmp)),
                      flush=True)
        return
    instrument(CLOCK)
    configs = [(env, runs) for env in args.envs for runs in args.runs]
    found: dict[tuple[str, int], list[Measurement]] = {c: [] for c in configs}
    print(f"load before: `{load_average()}`", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for env, runs in configs:
                found[(env, runs)].append(measure(env, runs, args.updates, args.warmup,
                                                  args.set, Path(tmp)))
        for env, runs in configs:
            cfg = compose([*group_overrides(env, 0), *TRUTH, *args.set])
            print(table(env, runs, found[(env, runs)], cfg) + "\n", flush=True)


if __name__ == "__main__":
    main()
