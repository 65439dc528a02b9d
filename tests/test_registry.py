"""Algorithms as plug-ins (trpo_lab.registry): the built-ins' declarations compose the CSV
schema, analysis's list, the labels and the groupable keys; a new algorithm (one module and
one YAML, outside the package) trains alone and in a batched group without touching any other
file."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import load
from tests.conftest import run_cli
from trpo_lab import logging as run_logging
from trpo_lab.config import ALGO_SCHEMAS, KLPenaltyConfig, TRPOConfig
from trpo_lab.registry import (
    ALGORITHMS,
    CORE_COLUMNS,
    algo_order,
    algorithm_of,
    groupable_keys,
    metric_columns,
)

PLUGIN = '''
"""Sign ascent: theta += lr * sign(grad of the surrogate), a toy update rule as a plug-in."""

from dataclasses import dataclass

import torch

from trpo_lab.algos.common import surrogate
from trpo_lab.config import AlgoConfig, interval, param
from trpo_lab.numerics import flat_grad, flat_params, set_flat_params
from trpo_lab.registry import Algorithm, register


@dataclass
class SignConfig(AlgoConfig):
    name: str = "sign"
    lr: float = param(1e-3, interval(0, 1, lo_open=True), "Step per parameter, in (0, 1].")


class SignAscent:
    def __init__(self, policy, cfg):
        self.policy, self.cfg = policy, cfg

    def update(self, batch):
        params = self.policy.actor_parameters()
        grad = flat_grad(surrogate(self.policy, batch), params)
        set_flat_params(params, flat_params(params) + self.cfg.lr * torch.sign(grad))
        return {"sign/grad_norm": float(grad.norm())}

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def build(policy, cfg, gamma, generator):
    return SignAscent(policy, cfg)


register(Algorithm("sign", SignConfig, "sign_ascent:build", columns=("sign/grad_norm",),
                   groupable=("algo.lr",)))
'''

YAML = """\
defaults:
  - /sign_schema  # registered by the sign_ascent module
name: sign
lr: 0.002
"""


def test_builtin_declarations_compose_the_schema_labels_and_groupable_keys():
    assert list(ALGORITHMS) == ["trpo", "vpg", "kl_penalty", "ppo"]
    assert set(ALGORITHMS) == set(ALGO_SCHEMAS)
    columns = metric_columns()
    assert columns[:len(CORE_COLUMNS)] == list(CORE_COLUMNS)
    assert columns[len(CORE_COLUMNS):len(CORE_COLUMNS) + 5] == [
        "trpo/backtracks", "trpo/accepted", "trpo/step_norm", "trpo/surrogate_tested",
        "penalty/beta"]
    assert len(set(columns)) == len(columns)
    assert columns == run_logging.COLUMNS
    assert list(load.METRIC_COLUMNS) == metric_columns(supplementary=False)
    assert set(columns) - set(load.METRIC_COLUMNS) == {
        "guard/nonfinite", "guard/bad_updates", "probe/env_steps", "time/probe_s"}
    assert algo_order() == load.ALGO_ORDER == ("trpo", "npg", "vpg", "kl_penalty", "ppo")
    assert algorithm_of(TRPOConfig(line_search=False)).label_of(TRPOConfig(line_search=False)) \
        == "npg"
    assert algorithm_of(KLPenaltyConfig()).name == "kl_penalty"
    keys = groupable_keys()
    assert keys[:4] == ("seed", "gamma", "gae_lambda", "critic.lr")
    assert {"algo.delta", "algo.cg_damping", "algo.lr", "algo.beta", "algo.clip"} <= set(keys)
    assert "algo.cg_iters" not in keys and "algo.minibatches" not in keys  # shapes/loops


def write_plugin(root: Path) -> dict[str, str]:
    (root / "conf" / "algo").mkdir(parents=True)
    (root / "sign_ascent.py").write_text(textwrap.dedent(PLUGIN))
    (root / "conf" / "algo" / "sign.yaml").write_text(YAML)
    return {"PYTHONPATH": str(root), "TRPO_LAB_ALGORITHMS": "sign_ascent"}


TINY = ["env=cartpole", "logger=none", "total_steps=512", "batch_steps=256", "critic.epochs=1",
        "eval.episodes=4", "eval.heldout_episodes=2"]


def test_a_plugin_algorithm_trains_alone_and_in_a_batched_group(tmp_path):
    env = write_plugin(tmp_path / "plugin")
    search = f"hydra.searchpath=[file://{tmp_path / 'plugin' / 'conf'}]"
    result = run_cli([search, "algo=sign", *TINY, f"hydra.run.dir={tmp_path / 'run'}"],
                     cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "sign/grad_norm" in header
    assert header.index("sign/grad_norm") == header.index("penalty/beta") + 1
    assert len(metrics) == 2 and (metrics["sign/grad_norm"] > 0).all()
    assert (metrics["kl/mean"] > 0).all() and np.isfinite(metrics["true/improvement"]).all()
    assert metrics["trpo/accepted"].isna().all()  # another algorithm's column: empty
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (summary["status"], summary["algo"]) == ("completed", "sign")
    # its own keys are checked like any algorithm's
    bad = run_cli([search, "algo=sign", "algo.lr=2", *TINY, f"hydra.run.dir={tmp_path / 'x'}"],
                  cwd=tmp_path, env=env)
    assert bad.returncode == 2 and "algo.lr" in bad.stderr
    # a batched group of two seeds and two step sizes (algo.lr is groupable for it)
    sweep = run_cli(["-m", search, "algo=sign", "seed=0,1", "algo.lr=0.001,0.003", *TINY,
                     "hydra/launcher=batched", "hydra.launcher.n_jobs=1",
                     f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                    cwd=tmp_path, env=env)
    assert sweep.returncode == 0, sweep.stderr
    assert "4 jobs in 1 groups (4) and 0 alone" in sweep.stderr
    norms = []
    for job in range(4):
        rows = pd.read_csv(tmp_path / "sweep" / str(job) / "metrics.csv")
        assert len(rows) == 2 and (rows["sign/grad_norm"] > 0).all()
        norms.append(rows["sign/grad_norm"].iloc[1])
    assert len(set(norms)) == 4  # four different runs
