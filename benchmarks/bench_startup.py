"""Start-up benchmark (issue 8): process start to the first update of a default run, and imports.

    python benchmarks/bench_startup.py [--repeats 5] [--import-repeats 3] [--default-only] \
        [--module trpo_lab.train] [--out DIR] [--keep-runs]

A default run is ``python -m trpo_lab total_steps=2048 batch_steps=2048 logger.mode=offline
hydra.run.dir=TMP``: the default config (TRPO on CartPole-v1, W&B logger, 4 evaluation episodes
per update), one update, W&B pinned to offline so that a configured API key cannot make it go
online. The console script ``trpo-lab`` runs the same code (a pyenv shim would add its own
start-up, so the interpreter is called directly). For comparison the same run with
``logger=none`` (skip with ``--default-only``); the two alternate, ``--repeats`` rounds.

Per run, with t0 taken just before the process is started (milestones are file mtimes, read
once the first metrics row appears; the parent polls every 5 ms):

- to first update done: t0 to the write of the first row of ``metrics.csv``. This is the
  goal's figure (<= 3 s). It splits into: t0 to Hydra's job start (``.hydra/config.yaml``
  written: interpreter, ``trpo_lab.app`` and Hydra imports, config composition); job start to
  the training loop's start (torch and gymnasium imports, env, policy, W&B init); and the first
  update itself, the row's ``time/wall_s`` (rollout, update, evaluation episodes).
- process wall: t0 to exit (adds the final checkpoint and W&B's finish).

Then ``python -X importtime -c "import MODULE"`` (``--import-repeats`` times, medians): the
total, the self time summed per top-level package (disjoint, sums to the total) and, for torch,
gymnasium, wandb, hydra, omegaconf, numpy, scipy and scipy.linalg, the cumulative time at their
first import (nested, so these overlap). Packages the module does not import at import time
(deferred) are timed by a second ``-X importtime -c "import MODULE; import PKG"``: their extra
cost on top. ``-X importtime`` itself adds some overhead; compare its figures with each other.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

GOAL_S = 3.0
POLL_S = 0.005
RUN_TIMEOUT_S = 300
FOCUS = ("torch", "gymnasium", "wandb", "hydra", "omegaconf", "numpy", "scipy", "scipy.linalg")
TOP_PACKAGES = 10
DEFAULT_RUN = ("total_steps=2048", "batch_steps=2048", "logger.mode=offline")
VARIANTS = {  # label: overrides on top of DEFAULT_RUN; the first is the goal's run
    "default (W&B offline)": (),
    "logger=none": ("logger=none",),
}
NAN = float("nan")


# ------------------------------------------------------------------------- first update
@dataclass
class StartupRun:
    variant: str
    to_first_update_s: float = NAN  # process start to the first metrics row
    to_job_s: float = NAN  # process start to Hydra's job start (.hydra/config.yaml written)
    first_update_s: float = NAN  # the first row's time/wall_s: the training loop's own clock
    process_s: float = NAN  # process start to exit
    returncode: int | None = None

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and math.isfinite(self.to_first_update_s)

    @property
    def setup_s(self) -> float:
        """Hydra job start to the training loop's start: imports, env, policy, W&B init."""
        return self.to_first_update_s - self.first_update_s - self.to_job_s


def metrics_rows(path: Path) -> list[str]:
    try:
        text = path.read_text()
    except OSError:
        return []
    return [line for line in text.splitlines()[1:] if line]


def first_row_wall(path: Path) -> float:
    """``time/wall_s`` of the first row of metrics.csv."""
    with path.open(newline="") as handle:
        row = next(csv.DictReader(handle))
    return float(row["time/wall_s"])


def time_run(run_dir: Path, variant: str) -> StartupRun:
    """Start one run; watch its metrics.csv for the first row; file mtimes give milestones."""
    metrics = run_dir / "metrics.csv"
    command = [sys.executable, "-m", "trpo_lab", *DEFAULT_RUN, *VARIANTS[variant],
               f"hydra.run.dir={run_dir}"]
    result = StartupRun(variant)
    with (run_dir.parent / f"{run_dir.name}.log").open("w") as log:
        t0 = time.time()
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        while proc.poll() is None and not metrics_rows(metrics):
            if time.time() - t0 > RUN_TIMEOUT_S:
                proc.kill()
            time.sleep(POLL_S)
        if metrics_rows(metrics):
            result.to_first_update_s = metrics.stat().st_mtime - t0
            result.first_update_s = first_row_wall(metrics)
            result.to_job_s = (run_dir / ".hydra" / "config.yaml").stat().st_mtime - t0
        result.returncode = proc.wait(timeout=RUN_TIMEOUT_S)
        result.process_s = time.time() - t0
    return result


# ------------------------------------------------------------------------- imports
@dataclass(frozen=True)
class ImportLine:
    self_us: int
    cumulative_us: int
    depth: int
    module: str


def parse_importtime(stderr: str) -> list[ImportLine]:
    """Lines of ``-X importtime`` output (the header and any other stderr skipped)."""
    lines = []
    for raw in stderr.splitlines():
        if not raw.startswith("import time:") or "imported package" in raw:
            continue
        self_part, cumulative_part, name = raw[len("import time:"):].split("|", 2)
        depth = (len(name) - len(name.lstrip(" ")) - 1) // 2
        lines.append(ImportLine(int(self_part), int(cumulative_part), depth, name.strip()))
    return lines


def module_block(lines: Sequence[ImportLine], module: str) -> list[ImportLine]:
    """The lines of one top-level import (it and everything it pulled in), without the
    interpreter's own start-up imports (site, encodings) before it."""
    end = next(i for i, line in enumerate(lines) if line.depth == 0 and line.module == module)
    start = end
    while start > 0 and lines[start - 1].depth > 0:
        start -= 1
    return list(lines[start:end + 1])


def importtime(code: str) -> list[ImportLine]:
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", code],
                          capture_output=True, text=True, check=True)
    return parse_importtime(proc.stderr)


def first_cumulative(lines: Sequence[ImportLine], package: str) -> float | None:
    """Cumulative ms of the package's top module, None if it was not imported."""
    for line in lines:
        if line.module == package:
            return line.cumulative_us / 1000
    return None


def self_by_package(lines: Sequence[ImportLine]) -> dict[str, float]:
    totals: dict[str, float] = defaultdict(float)
    for line in lines:
        totals[line.module.split(".")[0]] += line.self_us / 1000
    return dict(totals)


@dataclass
class ImportProfile:
    total_ms: float
    by_package: dict[str, float]  # median self ms per top-level package
    first_import: dict[str, float | None]  # median cumulative ms at first import
    deferred: dict[str, float]  # extra ms of focus packages the module does not import


def profile_imports(module: str, repeats: int) -> ImportProfile:
    runs = [module_block(importtime(f"import {module}"), module) for _ in range(repeats)]
    total = statistics.median(r[-1].cumulative_us / 1000 for r in runs)
    packages = {p for r in runs for p in self_by_package(r)}
    by_package = {p: statistics.median(self_by_package(r).get(p, 0.0) for r in runs)
                  for p in packages}
    first: dict[str, float | None] = {}
    deferred: dict[str, float] = {}
    for package in FOCUS:
        values = [v for r in runs if (v := first_cumulative(r, package)) is not None]
        first[package] = statistics.median(values) if values else None
        if not values:
            extra = [importtime(f"import {module}; import {package}") for _ in range(repeats)]
            found = [v for r in extra if (v := first_cumulative(r, package)) is not None]
            if found:
                deferred[package] = statistics.median(found)
    return ImportProfile(total, by_package, first, deferred)


# ------------------------------------------------------------------------- report
def markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def spread(values: Sequence[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.2f} [{min(values):.2f}, {max(values):.2f}]"


STARTUP_ROWS = (  # label, StartupRun attribute
    ("process start to first update done (first metrics row)", "to_first_update_s"),
    ("- start to Hydra job start (interpreter, trpo_lab.app + Hydra imports, config)",
     "to_job_s"),
    ("- job start to training loop (torch/gymnasium imports, env, policy, W&B init)",
     "setup_s"),
    ("- the first update itself (rollout, update, eval episodes)", "first_update_s"),
    ("process start to exit (adds final checkpoint, W&B finish)", "process_s"),
)


def startup_table(runs: Sequence[StartupRun]) -> str:
    header = ["s, median [min, max]"]
    columns = []
    for variant in VARIANTS:
        ok = [r for r in runs if r.variant == variant and r.ok]
        tried = sum(1 for r in runs if r.variant == variant)
        if tried:
            header.append(f"{variant} ({len(ok)}/{tried} runs)")
            columns.append(ok)
    rows = [[label, *(spread([getattr(r, key) for r in ok]) for ok in columns)]
            for label, key in STARTUP_ROWS]
    return markdown(header, rows)


def import_table(module: str, profile: ImportProfile) -> str:
    rows = [[f"`import {module}` total (cumulative)", f"{profile.total_ms:.0f}", "100"]]
    top = sorted(profile.by_package.items(), key=lambda item: -item[1])[:TOP_PACKAGES]
    rows += [[f"{name} (self, all its modules)", f"{ms:.0f}",
              f"{100 * ms / profile.total_ms:.0f}"] for name, ms in top]
    for package in FOCUS:
        first = profile.first_import[package]
        if first is not None:
            rows.append([f"{package}: cumulative at first import", f"{first:.0f}",
                         f"{100 * first / profile.total_ms:.0f}"])
        elif package in profile.deferred:
            rows.append([f"{package}: deferred (not imported); extra if imported later",
                         f"{profile.deferred[package]:.0f}", "-"])
        else:
            rows.append([f"{package}: not imported, not installed", "-", "-"])
    return markdown(("import", "ms (median)", "% of total"), rows)


def goal_table(runs: Sequence[StartupRun]) -> str:
    goal_variant = next(iter(VARIANTS))
    ok = [r.to_first_update_s for r in runs if r.variant == goal_variant and r.ok]
    label = f"process start to first update, default run (median of {len(ok)})"
    measured, verdict = "-", "FAIL (no successful run)"
    if ok:
        value = statistics.median(ok)
        measured, verdict = f"{value:.2f} s", "pass" if value <= GOAL_S else "FAIL"
    return markdown(("goal", "target", "measured", "result"),
                    [[label, f"<= {GOAL_S:g} s", measured, verdict]])


def machine_line(load_before: tuple[float, float, float]) -> str:
    after = os.getloadavg()
    return (f"Machine: {platform.node()}, {os.cpu_count()} CPUs, Python "
            f"{platform.python_version()}. Load average (1/5/15 min) at start "
            f"{', '.join(f'{x:.2f}' for x in load_before)}, at end "
            f"{', '.join(f'{x:.2f}' for x in after)}.")


def write_csv(path: Path, runs: Sequence[StartupRun]) -> None:
    keys = ["to_first_update_s", "to_job_s", "setup_s", "first_update_s", "process_s"]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["variant", "returncode", *keys])
        for r in runs:
            writer.writerow([r.variant, r.returncode, *(getattr(r, k) for k in keys)])


# ------------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="default runs to time")
    parser.add_argument("--import-repeats", type=int, default=3,
                        help="-X importtime runs per measured import")
    parser.add_argument("--module", default="trpo_lab.train", help="module to profile")
    parser.add_argument("--out", type=Path, help="write bench_startup.md and .csv here")
    parser.add_argument("--default-only", action="store_true",
                        help="skip the logger=none comparison runs")
    parser.add_argument("--keep-runs", action="store_true",
                        help="keep the temporary run directories")
    return parser.parse_args(argv)


def time_runs(repeats: int, variants: Sequence[str], work: Path) -> list[StartupRun]:
    """``repeats`` rounds, each variant once per round (alternating, so load drift is shared)."""
    runs = []
    for index in range(repeats):
        for number, variant in enumerate(variants):
            run = time_run(work / f"run{index}-{number}", variant)
            runs.append(run)
            print(f"[{index + 1}/{repeats}] {variant}: first update after "
                  f"{run.to_first_update_s:.2f} s (exit code {run.returncode})",
                  file=sys.stderr, flush=True)
    return runs


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    load_before = os.getloadavg()
    variants = list(VARIANTS)[:1] if args.default_only else list(VARIANTS)
    work = Path(tempfile.mkdtemp(prefix="bench_startup_"))
    try:
        runs = time_runs(args.repeats, variants, work)
    finally:
        if args.keep_runs:
            print(f"run directories kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    profile = profile_imports(args.module, args.import_repeats)
    command = " ".join(["python -m trpo_lab", *DEFAULT_RUN])
    report = "\n".join([
        f"### Start-up: `{command}`, {args.repeats} runs per column\n", startup_table(runs), "",
        f"### Imports: `python -X importtime -c \"import {args.module}\"` "
        f"(median of {args.import_repeats})\n", import_table(args.module, profile), "",
        "### Goal (issue 8)\n", goal_table(runs), "", machine_line(load_before), ""])
    print(report)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench_startup.md").write_text(report)
        write_csv(args.out / "bench_startup.csv", runs)
    return 0 if all(r.returncode == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
