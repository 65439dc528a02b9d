"""The network seam's benchmarks (issue 23): backends on the CartPole MLP, CNN vs MLP on MinAtar.

    python benchmarks/bench_networks.py [--part backends minatar] [--updates 4] \
        [--group 10] [--games breakout space_invaders] [--seeds 3] [--steps 40000]

1. backends: env steps/s of ``policy.backend=fast`` (the hand-written numpy path) and
   ``policy.backend=generic`` (torch.func) on bench_speed.py's CartPole-v1 settings, for a lone
   run and a ``--group``-run group (bench_batched.group_sps: a warm-up update, then
   ``--updates`` timed updates), alternating fast and generic twice; the median of each.
2. minatar: ``env=minatar env.game=G`` with ``policy=cnn`` against the flattened-MLP policy
   (``policy=mlp``, 64x64 on the 10x10xC grid as a vector) at equal env steps, ``--seeds``
   seeds each, every run a fresh ``trpo-lab`` process: final return (mean undiscounted return
   of the last batch's episodes), env steps/s (summary.json's wall_s) and peak RSS (the child's
   ru_maxrss); and the uniform-random policy's mean return over 200 episodes.

Prints markdown tables (the README's) and the machine's load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_batched  # noqa: E402

MINATAR = ["logger=none", "progress=false", "batch_steps=1024", "num_envs=4",
           "eval.episodes=0", "eval.heldout_episodes=0", "checkpoint.every=0"]
POLICIES = {"cnn": ["policy=cnn"], "mlp (flattened)": ["policy=mlp"]}


def backends(updates: int, group: int) -> str:
    rows = []
    for runs in (1, group):
        sps: dict[str, list[float]] = {"fast": [], "generic": []}
        for _ in range(2):
            for backend in ("fast", "generic"):
                with tempfile.TemporaryDirectory() as root:
                    sps[backend].append(bench_batched.group_sps(
                        "cartpole", runs, updates, Path(root), (f"policy.backend={backend}",)))
        fast, generic = statistics.median(sps["fast"]), statistics.median(sps["generic"])
        rows.append(f"| {runs} | {fast:,.0f} | {generic:,.0f} | {generic / fast:.2f} |")
    return "\n".join(["| runs | fast env steps/s | generic env steps/s | generic / fast |",
                      "| ---: | ---: | ---: | ---: |", *rows])


def random_return(game: str, episodes: int = 200) -> float:
    import gymnasium as gym
    import numpy as np

    from trpo_lab.config import MINATAR_GAMES, EnvConfig
    from trpo_lab.envs import env_factory

    env = env_factory(EnvConfig(name="minatar", id=MINATAR_GAMES[game], game=game), 0.99)()
    rng = np.random.default_rng(0)
    returns = []
    for k in range(episodes):
        env.reset(seed=k)
        total, done = 0.0, False
        while not done:
            _, reward, terminated, truncated, _ = env.step(int(rng.integers(env.action_space.n)))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    assert isinstance(env.action_space, gym.spaces.Discrete)
    return float(np.mean(returns))


def minatar_run(game: str, policy: list[str], seed: int, steps: int, run_dir: Path) -> dict:
    args = [sys.executable, "-m", "trpo_lab", "env=minatar", f"env.game={game}", *policy,
            *MINATAR, f"seed={seed}", f"total_steps={steps}", f"hydra.run.dir={run_dir}"]
    child = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             stdin=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise RuntimeError(f"{args} failed: {child.stderr.read().decode()[-2000:]}")
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"return": summary["final_return_mean"],
            "sps": summary["env_steps"] / summary["wall_s"], "rss_mb": usage.ru_maxrss / 1024}


def minatar(games: list[str], seeds: int, steps: int) -> str:
    rows = []
    with tempfile.TemporaryDirectory() as root:
        for game in games:
            random = random_return(game)
            for label, policy in POLICIES.items():
                slug = label.split()[0]
                runs = [minatar_run(game, policy, seed, steps, Path(root) / f"{game}-{slug}-{seed}")
                        for seed in range(seeds)]
                returns = ", ".join(f"{r['return']:.2f}" for r in runs)
                above = sum(r["return"] > random for r in runs)
                rows.append(
                    f"| {game} | {label} | {returns} | {above}/{seeds} | {random:.2f} | "
                    f"{statistics.median(r['sps'] for r in runs):,.0f} | "
                    f"{max(r['rss_mb'] for r in runs):.0f} |")
                print(rows[-1], flush=True)
    return "\n".join([f"{steps:,} env steps per run.", "",
                      "| game | policy | final return per seed | seeds above random | uniform "
                      "random | env steps/s (median) | peak RSS MB |",
                      "| --- | --- | --- | ---: | ---: | ---: | ---: |", *rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", nargs="+", choices=["backends", "minatar"],
                        default=["backends", "minatar"])
    parser.add_argument("--updates", type=int, default=4)
    parser.add_argument("--group", type=int, default=10)
    parser.add_argument("--games", nargs="+", default=["breakout", "space_invaders"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40_000)
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()}, {os.cpu_count()} cores", flush=True)
    if "backends" in args.part:
        print(backends(args.updates, args.group), flush=True)
    if "minatar" in args.part:
        print(minatar(args.games, args.seeds, args.steps), flush=True)
    print(f"load average after: {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    main()
