"""Many runs, one process: ``hydra/launcher=batched`` against joblib, group scaling, memory.

    python benchmarks/bench_batched.py [--sweeps 2] [--seeds 10] [--steps 100000]
                                       [--scaling 1,2,5,10,20,50] [--skip-sweeps]

1. Sweep wall time: ``trpo-lab -m seed=0..9`` with bench_speed.py's CartPole-v1 settings
   (rl-baselines3-zoo's TRPO hyperparameters, 100k steps, no W&B, held-out batch on), once with
   ``hydra/launcher=joblib hydra.launcher.n_jobs=2`` and once with ``hydra/launcher=batched
   hydra.launcher.n_jobs=2`` (two groups of 5, one per core), alternating, ``--sweeps`` times
   each; the median sweep wall time of each and the ratio. sb3-contrib is not installed here:
   its figure is the anchor (ANCHORS.md: 23.1 s per 100k-step CartPole run, 10 seeds one after
   another = 231 s).
2. Scaling: aggregate env steps/s of one group of R runs (one process, one core) on CartPole
   (bench_speed's settings), Pendulum (bench_speed's settings) and the exact garnet
   (sweeps/setting/garnet_exact.yaml: exact batches, so no rollout), for R in
   ``--scaling``: a warm-up update, then ``--updates`` timed updates of every run.
3. Peak RSS of the 10-run CartPole group: a fresh process that builds the group and trains it
   for the same updates (``ru_maxrss`` of that child: imports, 10 runs' envs, buffers, models).

Long measurements: run by hand, on a quiet machine; the numbers go in the README.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_speed  # noqa: E402

LAUNCHERS = {
    "joblib, 2 workers": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
    "batched, 2 workers": ["hydra/launcher=batched", "hydra.launcher.n_jobs=2"],
}
SB3_ANCHOR_S = 23.1  # sb3-contrib TRPO, CartPole-v1, zoo settings, 100k steps (ANCHORS.md)


def sweep_overrides(steps: int) -> list[str]:
    setting = bench_speed.SETTINGS["cartpole"]
    out = bench_speed.ours_overrides(setting, 0, steps, Path("unused"), False)
    return [o for o in out if not o.startswith(("seed=", "hydra.run.dir="))]


def run_sweep(launcher: list[str], seeds: int, steps: int, sweep_dir: Path) -> float:
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "trpo_lab", "-m", f"seed=range({seeds})", *sweep_overrides(steps),
         *launcher, f"hydra.sweep.dir={sweep_dir}"], capture_output=True, text=True,
        stdin=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    summaries = [json.loads(p.read_text()) for p in sweep_dir.glob("*/summary.json")]
    if result.returncode != 0 or len(summaries) != seeds or any(
            s["status"] != "completed" for s in summaries):
        raise RuntimeError(f"sweep {sweep_dir} failed:\n{result.stderr[-2000:]}")
    return wall


def final_returns(sweep_dir: Path) -> list[float]:
    return [json.loads(p.read_text())["final_return_mean"]
            for p in sorted(sweep_dir.glob("*/summary.json"))]


def group_overrides(env: str, seed: int) -> list[str]:
    if env == "garnet":
        # sweeps/setting/garnet_exact.yaml, spelled out
        return ["env=garnet", "policy=tabular", "gamma=0.9", "batch_steps=256",
                "algo.estimator=exact", f"seed={seed}", "logger=none", "progress=false",
                "eval.episodes=0", "checkpoint.every=0"]
    setting = bench_speed.SETTINGS[env]
    out = bench_speed.ours_overrides(setting, seed, 10**6, Path("unused"), False)
    return [o for o in out if not o.startswith("hydra.run.dir=")]


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from trpo_lab.app import CONF_DIR
    from trpo_lab.config import register_configs, to_typed, validate

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=overrides)
    typed = to_typed(cfg)
    validate(typed)
    return typed


def group_sps(env: str, runs: int, updates: int, root: Path,
              extra: tuple[str, ...] = ()) -> float:
    """Aggregate env steps/s of a group of ``runs`` runs over ``updates`` updates (after one
    warm-up update), through the update pipeline (one run alone: a group of one). ``extra``: more
    overrides (bench_networks.py: ``policy.backend=...``)."""
    from trpo_lab.pipeline import Pipeline
    from trpo_lab.train import Trainer

    trainers = []
    for seed in range(runs):
        run_dir = root / f"{env}-{runs}-{seed}"
        run_dir.mkdir(parents=True)
        overrides = group_overrides(env, seed)
        cfg = compose([*overrides, *extra])
        trainers.append(Trainer(cfg, run_dir, in_group=runs > 1))
    group = Pipeline(trainers)  # a lone run: a group of one, as Trainer.run trains it
    group.start()
    active, results = list(range(runs)), {}

    def update() -> None:
        nonlocal active
        active = group.update(active, results)
        if len(active) != runs:
            raise RuntimeError(f"a run failed: {results}")

    update()  # warm-up
    start = time.perf_counter()
    for _ in range(updates):
        update()
    wall = time.perf_counter() - start
    return runs * updates * trainers[0].cfg.batch_steps / wall


def peak_rss_mb(runs: int, updates: int) -> float:
    # the child reports its own high-water mark: RUSAGE_CHILDREN would be the largest of every
    # child this benchmark waited for, the sweeps' processes included
    code = (f"import sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); "
            f"import bench_batched as b, tempfile, pathlib, resource; "
            f"d = pathlib.Path(tempfile.mkdtemp()); "
            f"b.group_sps('cartpole', {runs}, {updates}, d); "
            f"print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         cwd=ROOT, text=True)
    return int(out.stdout.split()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweeps", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--scaling", default="1,2,5,10,20,50")
    parser.add_argument("--envs", default="cartpole,pendulum,garnet")
    parser.add_argument("--updates", type=int, default=3)
    parser.add_argument("--skip-sweeps", action="store_true")
    args = parser.parse_args()
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_sweeps:
            walls: dict[str, list[float]] = {name: [] for name in LAUNCHERS}
            returns: dict[str, list[float]] = {name: [] for name in LAUNCHERS}
            for repeat in range(args.sweeps):
                for name, launcher in LAUNCHERS.items():
                    sweep_dir = Path(tmp) / f"{repeat}-{name.split(',')[0]}"
                    walls[name].append(run_sweep(launcher, args.seeds, args.steps, sweep_dir))
                    returns[name] += final_returns(sweep_dir)
                    print(f"{name}: {walls[name][-1]:.1f} s", file=sys.stderr, flush=True)
            joblib = statistics.median(walls["joblib, 2 workers"])
            batched = statistics.median(walls["batched, 2 workers"])
            lines += [
                f"Sweep: {args.seeds} seeds of CartPole-v1, {args.steps} steps, bench_speed "
                f"settings, median of {args.sweeps} sweeps per launcher (alternating).", "",
                "| launcher | sweep wall s (median) | all | median final return |",
                "| --- | --- | --- | --- |"]
            for name in LAUNCHERS:
                lines.append(f"| {name} | {statistics.median(walls[name]):.1f} | "
                             f"{', '.join(f'{w:.1f}' for w in walls[name])} | "
                             f"{statistics.median(returns[name]):.1f} |")
            lines.append(f"| sb3-contrib, one after another (anchor, not re-measured) | "
                         f"{SB3_ANCHOR_S * args.seeds:.0f} | | |")
            lines += ["", f"batched vs joblib: {joblib / batched:.2f}x (goal >= 3x); batched vs "
                      f"sb3-contrib sequential: {SB3_ANCHOR_S * args.seeds / batched:.1f}x "
                      f"(goal >= 20x)", ""]
        sizes = [int(s) for s in args.scaling.split(",")]
        envs = args.envs.split(",")
        table: dict[str, dict[int, float]] = {env: {} for env in envs}
        for env in envs:
            for runs in sizes:
                table[env][runs] = group_sps(env, runs, args.updates, Path(tmp) / "scaling")
                print(f"{env} R={runs}: {table[env][runs]:.0f} steps/s", file=sys.stderr,
                      flush=True)
        lines += [f"Scaling: aggregate env steps/s of one group (one process, one core), "
                  f"{args.updates} updates after a warm-up.", "",
                  "| env | " + " | ".join(f"R={r}" for r in sizes) + " |",
                  "| --- | " + " | ".join("---" for _ in sizes) + " |"]
        for env in envs:
            base = table[env][sizes[0]]
            lines.append(f"| {env} | " + " | ".join(
                f"{table[env][r]:.0f} ({table[env][r] / base:.2f}x)" for r in sizes) + " |")
        rss = peak_rss_mb(10, args.updates)
        lines += ["", f"Peak RSS of the 10-run CartPole group (one process): {rss:.0f} MB "
                  f"(goal <= 800 MB)"]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
