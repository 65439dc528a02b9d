"""Which keys the runs of a group must share: the batched code takes them from one run.

A group (:mod:`trpo_lab.pipeline`) steps its runs with a leading run axis; the batched numerics
read some settings once, from the first run: the stacked actor and critic their structure
(``policy.*``, ``critic.hidden_sizes``, ``device``), the rollout and GAE their shape
(``env.*``, ``batch_steps``, ``num_envs``) and ``normalize_advantages``
(:func:`trpo_lab.rollout.build_batches`), the evaluation its episode counts
(:func:`trpo_lab.evaluation.run_samplers`), the critic its epochs, minibatches and Adam eps
(:func:`trpo_lab.critic.critic_update_runs`), and each algorithm the keys it declares
(``Algorithm.shared`` in :mod:`trpo_lab.registry`; TRPO: ``algo.cg_iters``,
``algo.backtrack_iters``, ``algo.fvp_subsample``, the sampler and the vine's sizes). Runs that
differ in one of them are refused with :class:`GroupMismatch`, never merged. The batched
launcher groups only runs equal in every key but the groupable ones
(:func:`trpo_lab.registry.groupable_keys`), so its groups always pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from trpo_lab.registry import algorithm_of
from trpo_lab.resume import flat_config

#: Keys (or prefixes: ``env`` is every ``env.*`` key) the batched code takes from one run,
#: whatever the algorithm; ``algo.name`` first: runs of two algorithms differ there first.
CORE_SHARED: tuple[str, ...] = (
    "algo.name", "algo.estimator", "env", "policy", "device", "batch_steps", "num_envs",
    "normalize_advantages", "critic.hidden_sizes", "critic.adam_eps", "critic.epochs",
    "critic.minibatches", "eval.episodes", "eval.heldout_episodes")


class GroupMismatch(ValueError):
    """Runs that cannot be trained as one group; the message names the key."""


def first_difference(flats: Sequence[dict[str, Any]], keys: Sequence[str]
                     ) -> tuple[str, int] | None:
    """The first flat key (in ``keys``' order; a key is also a prefix of dotted keys) in which
    a run differs from run 0, with that run's index; None when they all agree. A key a run
    lacks counts as a difference (another algorithm's key)."""
    names = sorted({name for flat in flats for name in flat})
    for key in keys:
        for name in (n for n in names if n == key or n.startswith(f"{key}.")):
            missing = object()
            first = flats[0].get(name, missing)
            for r, flat in enumerate(flats[1:], start=1):
                if flat.get(name, missing) != first:
                    return name, r
    return None


def mismatch_message(name: str, r: int, first: Any, other: Any) -> str:
    return (f"the runs of a group must agree in {name} (the batched code takes it from the "
            f"first run): run 0 has {first!r}, run {r} has {other!r}; train them in separate "
            f"groups")


def check_group(cfgs: Sequence[Any]) -> None:
    """Refuse (:class:`GroupMismatch`) typed configs that differ in a key the batched code
    takes from one run (the module docstring)."""
    if len(cfgs) < 2:
        return
    flats = [flat_config(cfg) for cfg in cfgs]
    keys = (*CORE_SHARED, *algorithm_of(cfgs[0].algo).shared)
    found = first_difference(flats, keys)
    if found is not None:
        name, r = found
        raise GroupMismatch(mismatch_message(name, r, flats[0].get(name), flats[r].get(name)))


def require_shared(cfgs: Sequence[Any], fields: Sequence[str], prefix: str) -> None:
    """In batched numerics that read ``fields`` of ``cfgs[0]`` for every run: refuse
    (:class:`GroupMismatch`) configs (one section each, e.g. the runs' ``algo``, named
    ``prefix``) that differ in one of them."""
    for name in fields:
        first = getattr(cfgs[0], name)
        for r, cfg in enumerate(cfgs[1:], start=1):
            if getattr(cfg, name) != first:
                raise GroupMismatch(mismatch_message(f"{prefix}.{name}", r, first,
                                                     getattr(cfg, name)))
