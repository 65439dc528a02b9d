"""Algorithms as plug-ins: one registry where each algorithm declares its config schema, its
metric columns, the keys in which the runs of a batched group may differ, and how it updates
one run and many runs.

An :class:`Algorithm` names its code by dotted path (``package.module:attribute``), imported
when a run is built: the registry itself imports no torch, so the command line, the launchers
and analysis read it at no cost. The CSV schema is :func:`metric_columns` (the core columns and
every algorithm's, in registration order); analysis reads the same list; the algorithm labels
in their canonical order are :func:`algo_order`.

A new algorithm is a module that calls :func:`register` and a YAML file in an ``algo`` config
group (README, "Adding an algorithm"). Modules outside this package are imported at start from
the comma-separated ``TRPO_LAB_ALGORITHMS`` environment variable (:func:`load_plugins`), before
Hydra composes the configuration.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from trpo_lab.config import (
    ALGO_SCHEMAS,
    AlgoConfig,
    KLPenaltyConfig,
    PPOConfig,
    TRPOConfig,
    VPGConfig,
)

#: Columns every run writes (DESIGN.md's metric table), whatever its algorithm; an
#: algorithm's own columns follow them (:func:`metric_columns`).
CORE_COLUMNS: tuple[str, ...] = (
    "iteration", "env_steps", "time/wall_s", "time/sps", "time/eval_s", "heldout/env_steps",
    "eval/env_steps", "eval/pairs", "eval/pairs_differing",
    "rollout/return_mean", "rollout/length_mean", "rollout/episodes",
    "kl/mean", "kl/max", "kl/reverse_mean", "policy/max_ratio", "policy/entropy",
    "surrogate/linear", "surrogate/improvement",
    "surrogate/improvement_heldout", "surrogate/improvement_heldout_se", "surrogate/linear_heldout",
    "true/J", "true/J_se", "true/improvement", "true/improvement_se",
    "bound/trpo", "bound/cpo", "bound/C", "bound/eps",
    "exact/surrogate_improvement", "exact/pdl_residual",
    "mc/J", "mc/J_se", "mc/improvement", "mc/improvement_se",
)
#: Core columns after the algorithms': the critic's ...
CRITIC_COLUMNS: tuple[str, ...] = ("value/loss", "value/explained_variance")
#: ... and, beyond DESIGN.md's table, the numerical guard's and the probes' (probe.every > 0).
SUPPLEMENTARY_COLUMNS: tuple[str, ...] = (
    "guard/nonfinite", "guard/bad_updates", "probe/env_steps", "time/probe_s")
#: Keys in which the runs of a group may differ whatever the algorithm (none changes a shape).
CORE_GROUPABLE: tuple[str, ...] = ("seed", "gamma", "gae_lambda", "critic.lr")


@dataclass(frozen=True)
class Algorithm:
    """One algorithm's declaration.

    - ``name``: ``algo.name``; its YAML names the schema stored as ``/<name>_schema``.
    - ``schema``: its config dataclass (a subclass of :class:`~trpo_lab.config.AlgoConfig`),
      every field a :func:`~trpo_lab.config.param` with range and advice.
    - ``build``: ``"module:function"``, ``function(policy, cfg, gamma, generator)`` returns an
      object with ``update(batch) -> dict`` (its metric cells), ``state_dict()`` and
      ``load_state_dict(state)``.
    - ``columns``: the metric columns its update writes beyond the core's.
    - ``update_runs``: ``"module:function"``, ``function(policies, batches, cfgs)`` -> one info
      dict per run, the batched update of a group (TRPO's); None: each run's ``update`` in turn.
    - ``groupable``: its keys in which the runs of a group may differ (``algo.delta``): the
      batched launcher merges only runs equal in every other key.
    - ``shared``: its keys (or prefixes) that ``update_runs`` takes from the first run
      (``algo.cg_iters``): a group whose runs differ in one is refused
      (:mod:`trpo_lab.grouping`).
    - ``labels`` and ``label``: the labels it gives runs (analysis, W&B, summary.json), in
      canonical order, and ``label(cfg)`` picking one (default: ``name``).
    """

    name: str
    schema: type[AlgoConfig]
    build: str
    columns: tuple[str, ...] = ()
    update_runs: str | None = None
    groupable: tuple[str, ...] = ()
    shared: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    label: Callable[[Any], str] | None = None

    def label_of(self, cfg: AlgoConfig) -> str:
        return self.label(cfg) if self.label is not None else self.name

    def all_labels(self) -> tuple[str, ...]:
        return self.labels or (self.name,)


ALGORITHMS: dict[str, Algorithm] = {}


def register(algorithm: Algorithm) -> Algorithm:
    """Add ``algorithm`` (its schema too: :data:`trpo_lab.config.ALGO_SCHEMAS`, which
    :func:`~trpo_lab.config.register_configs` stores in Hydra's ConfigStore)."""
    if not (isinstance(algorithm.schema, type) and issubclass(algorithm.schema, AlgoConfig)):
        raise TypeError(f"algorithm {algorithm.name}: its schema must subclass AlgoConfig")
    ALGORITHMS[algorithm.name] = algorithm
    ALGO_SCHEMAS[algorithm.name] = algorithm.schema
    return algorithm


def load_plugins() -> None:
    """Import the modules named in ``TRPO_LAB_ALGORITHMS`` (comma-separated): each registers
    its algorithm."""
    for name in filter(None, (n.strip() for n in
                              os.environ.get("TRPO_LAB_ALGORITHMS", "").split(","))):
        importlib.import_module(name)


def algorithm_of(cfg: AlgoConfig) -> Algorithm:
    """The registered algorithm whose schema ``cfg`` is."""
    for algorithm in ALGORITHMS.values():
        if type(cfg) is algorithm.schema:
            return algorithm
    raise TypeError(f"no registered algorithm has the schema {type(cfg).__name__}")


def resolve(path: str) -> Any:
    """The attribute ``module:attribute`` names."""
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)


def metric_columns(supplementary: bool = True) -> list[str]:
    """metrics.csv's columns: the core's, every registered algorithm's, the critic's and (with
    ``supplementary``) the guard's and the probes'. Analysis's list is the one without."""
    extra: list[str] = []
    for algorithm in ALGORITHMS.values():
        extra += [c for c in algorithm.columns if c not in extra]
    tail = SUPPLEMENTARY_COLUMNS if supplementary else ()
    return [*CORE_COLUMNS, *extra, *CRITIC_COLUMNS, *tail]


def algo_order() -> tuple[str, ...]:
    """Every registered algorithm's labels, in registration order (analysis's order)."""
    return tuple(label for a in ALGORITHMS.values() for label in a.all_labels())


def groupable_keys() -> tuple[str, ...]:
    """Keys in which the jobs of a batched group may differ (core and every algorithm's)."""
    keys = list(CORE_GROUPABLE)
    for algorithm in ALGORITHMS.values():
        keys += [k for k in algorithm.groupable if k not in keys]
    return tuple(keys)


register(Algorithm(
    "trpo", TRPOConfig, "trpo_lab.algos.trpo:build",
    columns=("trpo/backtracks", "trpo/accepted", "trpo/step_norm", "trpo/surrogate_tested"),
    update_runs="trpo_lab.algos.trpo:trpo_update_runs",
    groupable=("algo.delta", "algo.cg_damping", "algo.backtrack_coef"),
    shared=("algo.cg_iters", "algo.backtrack_iters", "algo.fvp_subsample", "algo.sampler",
            "algo.vine"),
    labels=("trpo", "npg"), label=lambda cfg: "trpo" if cfg.line_search else "npg"))
register(Algorithm("vpg", VPGConfig, "trpo_lab.algos.vpg:build", groupable=("algo.lr",)))
register(Algorithm("kl_penalty", KLPenaltyConfig, "trpo_lab.algos.kl_penalty:build",
                   columns=("penalty/beta",), groupable=("algo.lr", "algo.beta")))
register(Algorithm("ppo", PPOConfig, "trpo_lab.algos.ppo:build",
                   groupable=("algo.lr", "algo.clip")))
