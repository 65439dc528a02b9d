"""Sweep scaling on this machine: the same 8 quick jobs serially and with Hydra launchers.

    python benchmarks/bench_sweeps.py [--jobs 8] [--repeats 3] [--out DIR]

Runs ``trpo-lab -m seed=0..N-1`` (TRPO on CartPole, 32 updates of 1024 steps per job, about
2 s of training, no W&B, no evaluation episodes) with the basic launcher (serial, one process),
with joblib on 2 workers and with submitit_local (every job its own process), alternating, and
prints the median sweep wall time, the speed-up against the serial sweep, and per-job start-up
overhead: seconds from the job's start and from a fresh process's start to its first update
(``summary.json["startup"]``). Goals (issue 5): joblib on 2 workers >= 1.7x the serial sweep;
joblib start-up <= 3 s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

JOB = ["total_steps=32768", "batch_steps=1024", "num_envs=2", "logger=none", "eval.episodes=0",
       "progress=false"]
LAUNCHERS = {
    "basic (serial)": [],
    "joblib, 2 workers": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
    "submitit_local": ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"],
}
# processes that start cold (import torch etc.) per sweep: jobs beyond them reuse a process
COLD_PROCESSES = {"basic (serial)": 1, "joblib, 2 workers": 2, "submitit_local": None}


def cold_start(process_to_first: list[float], cold: int | None) -> float:
    """Process start to first update of a job in a fresh process (the slowest fresh one)."""
    values = sorted(process_to_first)
    return statistics.median(values) if cold is None else values[cold - 1]


def run_sweep(launcher: list[str], jobs: int, sweep_dir: Path) -> tuple[float, list[dict]]:
    seeds = ",".join(str(s) for s in range(jobs))
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "trpo_lab", "-m", f"seed={seeds}", *JOB, *launcher,
                    f"hydra.sweep.dir={sweep_dir}"], check=True, capture_output=True,
                   stdin=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    summaries = [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/summary.json"))]
    if len(summaries) != jobs or any(s["status"] != "completed" for s in summaries):
        raise RuntimeError(f"sweep in {sweep_dir} did not complete every job")
    return wall, summaries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    walls: dict[str, list[float]] = {name: [] for name in LAUNCHERS}
    job_startup: dict[str, list[float]] = {name: [] for name in LAUNCHERS}
    cold: dict[str, list[float]] = {name: [] for name in LAUNCHERS}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for name, launcher in LAUNCHERS.items():
                sweep_dir = Path(tmp) / f"{repeat}-{name.split()[0].strip(',')}"
                wall, summaries = run_sweep(launcher, args.jobs, sweep_dir)
                walls[name].append(wall)
                job_startup[name] += [s["startup"]["job_to_first_update_s"] for s in summaries]
                cold[name].append(cold_start(
                    [s["startup"]["process_to_first_update_s"] for s in summaries],
                    COLD_PROCESSES[name]))
    serial = statistics.median(walls["basic (serial)"])
    lines = [
        f"Sweep scaling: {args.jobs} jobs of `{' '.join(JOB)}`, median of {args.repeats} sweeps "
        "per launcher (alternating).",
        "",
        "| launcher | sweep wall s (median) | min | max | speed-up vs serial | job start to first "
        "update s (median, max) | fresh process start to first update s (median) |",
        "| --- | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for name in LAUNCHERS:
        med = statistics.median(walls[name])
        job = job_startup[name]
        lines.append(
            f"| {name} | {med:.1f} | {min(walls[name]):.1f} | {max(walls[name]):.1f} | "
            f"{serial / med:.2f}x | {statistics.median(job):.2f}, {max(job):.2f} | "
            f"{statistics.median(cold[name]):.2f} |")
    joblib = statistics.median(walls["joblib, 2 workers"])
    joblib_start = statistics.median(cold["joblib, 2 workers"]) + max(
        job_startup["joblib, 2 workers"])
    lines += [
        "",
        "| goal | target | measured | result |",
        "| --- | --- | --- | --- |",
        f"| joblib (2 workers) speed-up over serial | >= 1.7x | {serial / joblib:.2f}x | "
        f"{'pass' if serial / joblib >= 1.7 else 'FAIL'} |",
        f"| joblib per-job start-up (fresh worker start to first update + worst job overhead)"
        f" | <= 3 s | "
        f"{joblib_start:.2f} s | {'pass' if joblib_start <= 3 else 'FAIL'} |",
    ]
    report = "\n".join(lines)
    print(report)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench_sweeps.md").write_text(report + "\n")


if __name__ == "__main__":
    main()
