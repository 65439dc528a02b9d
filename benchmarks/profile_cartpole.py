"""Where one CartPole TRPO run spends its time (issue 8: "no avoidable hot spot above 10%").

    python benchmarks/profile_cartpole.py [--steps 100000] [--repeats 3] [--top 15] [--out DIR]

The run is bench_speed.py's CartPole-v1 setting (the rl-baselines3-zoo hyperparameters, the
same overrides, one torch thread, no W&B, no evaluation episodes), in this process. Two views:

1. Phases, from ``perf_counter`` wrappers (one pair per call, never per env step), as shares
   of the training loop's wall time; median over ``--repeats`` runs (seeds 0, 1, ...). Env
   stepping inside the rollout is not wrapped (that would add a call per step); the table shows
   instead the time the raw environment takes for the same number of steps with random actions
   (``env floor``), measured here, and the rollout's remainder (actor sampling, buffers,
   autoreset, bookkeeping).
2. Functions, from ``cProfile`` over one more run: the top ``--top`` by self time (the time
   in the function itself, its C calls included, callees excluded) as a share of the profiled
   loop. cProfile's per-call overhead inflates functions called once per env step, so this view
   ranks hot spots; the shares of view 1 are the real ones.

Avoidable means our code could drop the work or do it for less: the hyperparameters (20
critic epochs, 15 CG iterations, 100k env steps) fix the work itself. For the two phases that
are matrix products, the table gives a floor: the time of the same BLAS calls (the matrix
products of the critic's forward and backward pass; of each Fisher-vector product's J v and
J^T u), on random float32 arrays of the run's shapes, times the number of calls the run made.
The script prints both tables and flags every phase and function above 10%; the README records
the verdicts.
"""

from __future__ import annotations

import argparse
import cProfile
import math
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_speed import SETTINGS, _timed, effective_steps, markdown, ours_overrides  # noqa: E402

HOT_SPOT = 0.10
PHASES = {  # phase -> (owner path, attribute); nested phases are subtracted from their parent
    "rollout": ("trpo_lab.rollout:Collector", "collect"),
    "batch (values, GAE, old log-probs)": ("trpo_lab.train", "build_batch"),
    "policy update": ("trpo_lab.algos.trpo:TRPO", "update"),
    "conjugate gradient (FVPs)": ("trpo_lab.algos.trpo", "conjugate_gradient_runs"),
    "update diagnostics (KL, ratios, dL)": ("trpo_lab.train", "update_diagnostics"),
    "critic (Adam steps)": ("trpo_lab.critic:CriticTrainer", "update"),
    "metrics.csv": ("trpo_lab.logging:MetricsCSV", "write"),
    "checkpoint (end of run)": ("trpo_lab.train:Trainer", "checkpoint"),
}
PARENT = {"conjugate gradient (FVPs)": "policy update"}


def resolve(path: str):
    import importlib

    module, _, attr = path.partition(":")
    owner = importlib.import_module(module)
    return getattr(owner, attr) if attr else owner


def train(seed: int, steps: int, run_dir: Path) -> dict:
    """One run through trpo-lab's real entry point; its summary.json."""
    from trpo_lab import app
    from trpo_lab.train import read_summary

    sys.argv = ["trpo-lab", *ours_overrides(SETTINGS["cartpole"], seed, steps, run_dir,
                                            wandb=False)]
    app.main()
    summary = read_summary(run_dir)
    if summary is None or summary["status"] != "completed":
        raise RuntimeError(f"run in {run_dir} did not complete: {summary}")
    return summary


def env_floor_s(steps: int, seed: int) -> float:
    """Seconds the setting's CartPole-v1 envs take for ``steps`` steps in total with random
    actions, stepped as the Collector steps them (direct calls, same-step reset)."""
    import gymnasium as gym
    import numpy as np

    setting = SETTINGS["cartpole"]
    envs = [gym.make(setting.env_id) for _ in range(setting.n_envs)]
    for i, env in enumerate(envs):
        env.reset(seed=seed + i)
    actions = np.random.default_rng(seed).integers(
        0, 2, size=(steps // setting.n_envs, setting.n_envs))
    start = time.perf_counter()
    for row in actions:
        for env, action in zip(envs, row):
            _, _, terminated, truncated, _ = env.step(int(action))
            if terminated or truncated:
                env.reset()
    return time.perf_counter() - start


def matmul_seconds(products: list[tuple[tuple[int, int], tuple[int, int]]],
                   repeats: int = 300) -> float:
    """Median seconds of one pass over ``products`` (pairs of shapes, float32 numpy ``@``)."""
    import numpy as np

    rng = np.random.default_rng(0)
    pairs = [(rng.standard_normal(a, np.float32), rng.standard_normal(b, np.float32))
             for a, b in products]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for x, y in pairs:
            x @ y
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def backprop_products(widths: Sequence[int], batch: int) -> list:
    """The products of mlp.vjp for layer widths [in, h1, ..., out] on ``batch`` rows."""
    products = []
    for i in range(len(widths) - 2, -1, -1):
        products.append(((widths[i + 1], batch), (batch, widths[i])))  # dz^T h
        if i > 0:
            products.append(((batch, widths[i + 1]), (widths[i + 1], widths[i])))  # dz W
    return products


def forward_products(widths: Sequence[int], batch: int) -> list:
    return [((batch, widths[i]), (widths[i], widths[i + 1])) for i in range(len(widths) - 1)]


def jvp_products(widths: Sequence[int], batch: int) -> list:
    products = forward_products(widths, batch)  # h V^T per layer
    return products + forward_products(widths, batch)[1:]  # dh W^T from the second layer


def blas_floors(counts: dict[str, int]) -> dict[str, float]:
    """Seconds the run's critic steps and Fisher-vector products need in BLAS calls alone."""
    s = SETTINGS["cartpole"]
    critic = [4, *s.hidden, 1]
    actor = [4, *s.hidden, 2]
    critic_step = matmul_seconds(forward_products(critic, s.critic_batch)
                                 + backprop_products(critic, s.critic_batch))
    fvp = matmul_seconds(jvp_products(actor, s.batch_steps)
                         + backprop_products(actor, s.batch_steps))
    return {"critic (Adam steps)": counts["critic steps"] * critic_step,
            "natural step (gradient, CG, FVP)": counts["fvps"] * fvp}


def phase_shares(steps: int, seed: int, work: Path) -> dict[str, float]:
    clock = {name: 0.0 for name in PHASES}
    counts = {"critic steps": 0, "fvps": 0}
    for name, (owner, attr) in PHASES.items():
        _timed(resolve(owner), attr, clock, name)
    counted = {"critic steps": ("trpo_lab.critic", "stacked_vjp"),  # once per Adam step
               "fvps": ("trpo_lab.batched", "stacked_jvp")}  # J v: once per FVP
    for name, (owner, attr) in counted.items():
        _timed(resolve(owner), attr, {name: 0.0}, name,
               on_result=lambda _, name=name: counts.__setitem__(name, counts[name] + 1))
    try:
        summary = train(seed, steps, work / f"phases-{seed}")
    finally:
        for owner, attr in [*PHASES.values(), *counted.values()]:  # unwrap for the next run
            target = resolve(owner)
            setattr(target, attr, getattr(target, attr).__wrapped__)
    wall = summary["wall_s"]
    floors = blas_floors(counts)
    for child, parent in PARENT.items():
        clock[parent] -= clock[child]
    floor = env_floor_s(summary["env_steps"], seed)
    shares = {"env floor (raw env.step, random actions)": floor,
              "rollout without env floor": clock.pop("rollout") - floor}
    shares.update(clock)
    shares["other (loop, row assembly)"] = wall - sum(shares.values())
    shares = {name: seconds / wall for name, seconds in shares.items()}
    shares["wall s"] = wall
    shares["env steps/s"] = summary["env_steps"] / wall
    for name, seconds in floors.items():
        shares[f"floor:{name}"] = seconds / wall
    return shares


def function_profile(steps: int, seed: int, work: Path, top: int) -> list[tuple[str, float,
                                                                               int, float]]:
    from trpo_lab.train import Trainer

    profiler = cProfile.Profile()
    run = Trainer.run

    def profiled_run(self, *args, **kwargs):
        profiler.enable()
        try:
            return run(self, *args, **kwargs)
        finally:
            profiler.disable()

    Trainer.run = profiled_run
    try:
        train(seed, steps, work / "cprofile")
    finally:
        Trainer.run = run
    stats = pstats.Stats(profiler)
    total = stats.total_tt
    rows = []
    for (filename, line, name), (_, calls, self_s, _, _) in stats.stats.items():
        where = f"{Path(filename).name}:{line}({name})" if line else name
        rows.append((where, self_s, calls, self_s / total))
    rows.sort(key=lambda row: -row[1])
    return rows[:top]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--out", type=Path, help="also write profile_cartpole.md here")
    args = parser.parse_args(argv)
    steps = effective_steps(args.steps, SETTINGS["cartpole"])
    work = Path(tempfile.mkdtemp(prefix="profile_cartpole_"))
    runs = [phase_shares(steps, seed, work) for seed in range(args.repeats)]
    functions = function_profile(steps, 0, work, args.top)

    def flag(share: float) -> str:
        return "> 10%" if share > HOT_SPOT else ""

    phase_rows = []
    for name in runs[0]:
        if name in ("wall s", "env steps/s") or name.startswith("floor:"):
            continue
        share = statistics.median(r[name] for r in runs)
        floor = statistics.median(r[f"floor:{name}"] for r in runs) \
            if f"floor:{name}" in runs[0] else math.nan
        floor_cell = f"{100 * floor:.1f}" if math.isfinite(floor) else ""
        phase_rows.append([name, f"{100 * share:.1f}", floor_cell, flag(share)])
    wall = statistics.median(r["wall s"] for r in runs)
    sps = statistics.median(r["env steps/s"] for r in runs)
    function_rows = [[f"`{where}`", f"{self_s:.2f}", f"{calls:,}", f"{100 * share:.1f}",
                      flag(share)] for where, self_s, calls, share in functions]
    report = "\n".join([
        f"### CartPole-v1 TRPO, {steps:,} env steps (bench_speed settings), median of "
        f"{args.repeats} runs: {wall:.2f} s training loop, {sps:,.0f} env steps/s",
        "", markdown(("phase", "% of training wall time", "of which BLAS floor %", "above 10%"),
                     phase_rows), "",
        f"### Functions by self time (cProfile, one run, top {args.top})", "",
        markdown(("function", "self s", "calls", "% of profiled loop", "above 10%"),
                 function_rows), ""])
    print(report)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "profile_cartpole.md").write_text(report)
    return 0 if all(math.isfinite(r["wall s"]) for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
