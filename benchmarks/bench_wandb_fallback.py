"""W&B without a reachable server (issue 14): what each ``logger.mode`` costs over ``logger=none``.

    python benchmarks/bench_wandb_fallback.py [--repeats 5] [--base-url URL] [--total-steps N]

Runs ``python -m trpo_lab total_steps=N batch_steps=1024 eval.episodes=2 progress=false`` as
one fresh process per run, one at a time, the variants alternating, ``--repeats`` rounds:

- ``logger=none``: the reference;
- ``logger.mode=offline``, no API key: W&B's own cost (import, service start, the offline file);
- ``logger.mode=auto`` and ``logger.mode=online`` with a fake ``WANDB_API_KEY`` and a W&B server
  that cannot be reached: the fallback to offline (no 60 s wait for W&B's init timeout).

The unreachable server is ``--base-url`` (default: https://api.wandb.ai, which is what a user
without network meets; give e.g. ``http://127.0.0.1:9`` on a machine with network, or a
black-holed address to see the connect timeout, ``logger.connect_timeout``, 1 s). Prints the
median process wall time per variant and its difference from ``logger=none``, and checks the
issue's goal: every mode at most 3 s over ``logger=none``. Exit code 1 if it is missed.
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
from collections.abc import Sequence
from pathlib import Path

GOAL_S = 3.0
FAKE_KEY = "0123456789abcdef0123456789abcdef01234567"
VARIANTS: dict[str, tuple[tuple[str, ...], bool]] = {  # label: (overrides, with the fake key)
    "logger=none": (("logger=none",), False),
    "offline, no API key": (("logger.mode=offline",), False),
    "auto, fake API key": (("logger.mode=auto",), True),
    "online, fake API key": (("logger.mode=online",), True),
}


def environment(with_key: bool, base_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("WANDB_") and k not in ("HTTPS_PROXY", "https_proxy")}
    if with_key:
        env |= {"WANDB_API_KEY": FAKE_KEY, "WANDB_BASE_URL": base_url}
    return env


def time_run(run_dir: Path, label: str, base_url: str, total_steps: int) -> tuple[float, str]:
    """Process wall seconds of one run and the W&B mode its summary.json records."""
    overrides, with_key = VARIANTS[label]
    command = [sys.executable, "-m", "trpo_lab", f"total_steps={total_steps}",
               "batch_steps=1024", "eval.episodes=2", "progress=false", *overrides,
               f"hydra.run.dir={run_dir}"]
    start = time.perf_counter()
    subprocess.run(command, env=environment(with_key, base_url), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                   timeout=600)
    wall = time.perf_counter() - start
    mode = json.loads((run_dir / "summary.json").read_text()).get("wandb_mode")
    return wall, str(mode)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--base-url", default="https://api.wandb.ai")
    parser.add_argument("--total-steps", type=int, default=8192)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    walls: dict[str, list[float]] = {label: [] for label in VARIANTS}
    modes: dict[str, set[str]] = {label: set() for label in VARIANTS}
    with tempfile.TemporaryDirectory() as work:
        for index in range(args.repeats):
            order = list(VARIANTS) if index % 2 == 0 else list(reversed(VARIANTS))
            for label in order:
                slug = "".join(c if c.isalnum() else "-" for c in label)
                run_dir = Path(work) / f"{index}-{slug}"
                wall, mode = time_run(run_dir, label, args.base_url, args.total_steps)
                walls[label].append(wall)
                modes[label].add(mode)
                print(f"[{index + 1}/{args.repeats}] {label}: {wall:.2f} s (W&B {mode})",
                      file=sys.stderr)
    reference = statistics.median(walls["logger=none"])
    print(f"*{args.total_steps} env steps per run, W&B server {args.base_url} (unreachable), "
          f"median of {args.repeats} fresh processes per variant, alternating*\n")
    print("| variant | W&B mode used | process wall s (median) | min | max | over logger=none s "
          "| goal <= 3 s |")
    print("| --- | --- | ---: | ---: | ---: | ---: | --- |")
    missed = False
    for label, values in walls.items():
        median = statistics.median(values)
        over = median - reference
        ok = label == "logger=none" or over <= GOAL_S
        missed |= not ok
        print(f"| {label} | {', '.join(sorted(modes[label]))} | {median:.2f} | {min(values):.2f} "
              f"| {max(values):.2f} | {over:+.2f} | {'pass' if ok else 'FAIL'} |")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
