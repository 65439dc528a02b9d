"""The README is true for a user on another machine: install, keys, rounding, named sweeps."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

from tests.conftest import compose_typed
from trpo_lab.config import Config, EvalConfig, LoggerConfig, ProbeConfig, planned_updates

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def table_row(first_cell: str) -> str:
    (row,) = [line for line in README.splitlines() if line.startswith(f"| {first_cell} |")]
    return row


def test_readme_says_how_to_get_the_cpu_build_of_torch_elsewhere():
    assert "pins the CPU build" not in README  # a version pin does not choose a build
    assert "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in README
    assert 'pip install -e ".[dev]"' in README
    pinned = re.search(r'"torch==([\d.]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    assert f"torch=={pinned} --index-url" in README


def test_readme_table_names_every_top_level_and_logger_key():
    hints = typing.get_type_hints(Config)
    scalars = [f.name for f in dataclasses.fields(Config)
               if not dataclasses.is_dataclass(hints[f.name]) and f.name != "algo"]
    top = table_row("top level")
    assert not [name for name in scalars if f"`{name}`" not in top]  # progress included
    assert not [f.name for f in dataclasses.fields(EvalConfig) if f"`eval.{f.name}`" not in top]
    assert not [f.name for f in dataclasses.fields(ProbeConfig) if f"`probe.{f.name}`" not in top]
    logger = table_row("`logger`")
    assert not [f.name for f in dataclasses.fields(LoggerConfig)
                if f.name != "name" and f"`logger.{f.name}" not in logger]


def test_readme_states_the_rounding_of_total_steps_the_app_does():
    cfg = compose_typed()
    updates = planned_updates(cfg)
    steps = updates * cfg.batch_steps
    assert steps - cfg.batch_steps < cfg.total_steps <= steps
    assert f"{updates} updates of {cfg.batch_steps} steps, {steps:,} steps" in README
    assert (f"training {updates} updates x {cfg.batch_steps} steps = {steps} env steps "
            f"(total_steps={cfg.total_steps} rounded up to whole batches)") in README
    assert f"completed after {updates} updates ({steps} env steps)" in README
    assert "ceil(total_steps / batch_steps)" in table_row("top level")
    assert "total_steps // batch_steps" not in README


def test_readme_runs_named_sweeps_with_the_packaged_command():
    names = sorted(p.stem for p in (ROOT / "sweeps").glob("*.yaml"))
    for name in names:
        assert f"trpo-lab-sweep {name}" in README, name
    assert "trpo-lab --config-dir sweeps --config-name NAME" in README  # the repository form
