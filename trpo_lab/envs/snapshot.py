"""Env snapshots: save the full state of a gymnasium env and restore it, into the same env or
into another instance built by the same constructor, so that the same actions and the same
random numbers then replay the same trajectory to the bit (the vine sampler's branches,
:mod:`trpo_lab.vine`).

What a snapshot holds:

- every wrapper's counters, outermost first: ``TimeLimit._elapsed_steps`` (a branch from step
  t of an episode is truncated where the episode would have been), ``OrderEnforcing._has_reset``
  and ``PassiveEnvChecker``'s flags. A wrapper of any other type is not snapshotted: the env is
  refused (:func:`unsupported`), since its state is unknown;
- the base env's dynamic state, per class (:data:`STATE_FIELDS`): the tabular envs' state and
  step count; CartPole's state and ``steps_beyond_terminated``; Acrobot's, MountainCar's (both)
  state; Pendulum's state and last torque;
- MuJoCo envs (any ``MujocoEnv``): the whole ``MjData`` (``mujoco.mj_copyData``): the
  integration state that ``mj_getState(mjSTATE_INTEGRATION)`` returns (time, qpos, qvel, act,
  warm start, controls, applied forces, mocap, equality flags, user and plugin data) AND the
  derived quantities of the last step. The state API alone does not replay Ant-v5 and
  Humanoid-v5 to the bit (measured; with or without ``mj_forward`` after ``mj_setState``):
  their rewards read ``xpos`` and ``cfrc_ext`` before stepping, which are the previous step's
  derived values, not a function of the state;
- MinAtar (the ``minatar`` package's gymnasium envs): a deep copy of the game object, whose
  own ``numpy.random.RandomState`` draws the game's randomness;
- the base env's RNG (``env.unwrapped.np_random``, its bit generator's state and seed).

Observation and reward normalisation live outside the env in trpo-lab (the collector's running
statistics), so a snapshot has none; the vine sampler encodes branch observations with the
frozen encoder of the update and never updates the statistics with branch steps.

:func:`reseed` gives an env a fresh RNG stream after a restore: independent branches get their
own, common-random-number branches the same one.
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from trpo_lab.spaces import PackObservations

# wrapper type name -> the attributes that carry its state
WRAPPER_FIELDS: dict[type, tuple[str, ...]] = {
    gym.wrappers.TimeLimit: ("_elapsed_steps",),
    gym.wrappers.OrderEnforcing: ("_has_reset",),
    gym.wrappers.PassiveEnvChecker: ("checked_reset", "checked_step", "checked_render"),
    PackObservations: (),  # Tuple/Dict observations as one vector: no state of its own
}


def _state_fields() -> dict[type, tuple[str, ...]]:
    from gymnasium.envs.classic_control import (
        AcrobotEnv,
        CartPoleEnv,
        Continuous_MountainCarEnv,
        MountainCarEnv,
        PendulumEnv,
    )

    from trpo_lab.envs.synthetic import SpacesEnv
    from trpo_lab.envs.tabular import TabularEnv

    return {
        TabularEnv: ("_state", "_steps"),
        SpacesEnv: ("_target", "_steps"),
        CartPoleEnv: ("state", "steps_beyond_terminated"),
        AcrobotEnv: ("state",),
        PendulumEnv: ("state", "last_u"),
        MountainCarEnv: ("state",),
        Continuous_MountainCarEnv: ("state",),
    }


STATE_FIELDS = _state_fields()
"""Base env class (exactly, not subclasses: a subclass may add state) -> its dynamic state."""


def _is_instance(base: gym.Env, module: str, name: str) -> bool:
    """``base`` is an instance of ``module.name``; a module never imported cannot have made
    it (and importing minatar imports seaborn: seconds)."""
    loaded = sys.modules.get(module)
    return loaded is not None and isinstance(base, getattr(loaded, name))


def _is_mujoco(base: gym.Env) -> bool:
    return _is_instance(base, "gymnasium.envs.mujoco.mujoco_env", "MujocoEnv")


def _is_minatar(base: gym.Env) -> bool:
    return _is_instance(base, "minatar.gym", "BaseEnv")


def _wrappers(env: gym.Env) -> list[gym.Wrapper]:
    chain = []
    while isinstance(env, gym.Wrapper):
        chain.append(env)
        env = env.env
    return chain


def unsupported(env: gym.Env) -> str | None:
    """Why ``env`` cannot be snapshotted (a wrapper or base class of unknown state), or None."""
    for wrapper in _wrappers(env):
        if type(wrapper) not in WRAPPER_FIELDS:
            return f"its wrapper {type(wrapper).__name__} has no snapshot"
    base = env.unwrapped
    if type(base) in STATE_FIELDS or _is_mujoco(base) or _is_minatar(base):
        return None
    return f"{type(base).__name__} has no snapshot (supported: tabular envs, CartPole, " \
           f"Acrobot, Pendulum, MountainCar, MountainCarContinuous, MuJoCo envs, MinAtar)"


@dataclass(frozen=True)
class Snapshot:
    """The full state of one env (:func:`snapshot`); restore it with :func:`restore`."""

    env_type: type
    wrappers: tuple[tuple[Any, ...], ...]  # per wrapper, outermost first, its fields' values
    state: Any  # the base env's fields, MjData copy or MinAtar game
    rng: dict
    rng_seed: Any


def _copy(value: Any) -> Any:
    return value.copy() if isinstance(value, np.ndarray) else copy.deepcopy(value)


def snapshot(env: gym.Env) -> Snapshot:
    """The full state of ``env`` now (it must support snapshots: :func:`unsupported`)."""
    reason = unsupported(env)
    if reason is not None:
        raise TypeError(f"{env.spec.id if env.spec else type(env).__name__}: {reason}")
    wrappers = tuple(tuple(_copy(getattr(w, name)) for name in WRAPPER_FIELDS[type(w)])
                     for w in _wrappers(env))
    base = env.unwrapped
    if _is_mujoco(base):
        state = copy.copy(base.data)  # MjData.__copy__: mj_copyData into a new MjData
    elif _is_minatar(base):
        state = copy.deepcopy(base.game)
    else:
        state = tuple(_copy(getattr(base, name)) for name in STATE_FIELDS[type(base)])
    return Snapshot(type(base), wrappers, state, copy.deepcopy(base.np_random.bit_generator.state),
                    base.np_random_seed)


def restore(env: gym.Env, snap: Snapshot) -> None:
    """Put ``env`` into the state of ``snap``: ``env`` is the env it was taken from or another
    built by the same constructor (the same wrappers and base class). The snapshot stays
    valid: it can be restored any number of times."""
    base = env.unwrapped
    if type(base) is not snap.env_type:
        raise TypeError(f"a snapshot of {snap.env_type.__name__} cannot be restored into "
                        f"{type(base).__name__}")
    wrappers = _wrappers(env)
    if len(wrappers) != len(snap.wrappers):
        raise TypeError("the env's wrappers differ from the snapshot's")
    for wrapper, values in zip(wrappers, snap.wrappers):
        for name, value in zip(WRAPPER_FIELDS[type(wrapper)], values):
            setattr(wrapper, name, _copy(value))
    if _is_mujoco(base):
        import mujoco

        mujoco.mj_copyData(base.data, base.model, snap.state)
    elif _is_minatar(base):
        base.game = copy.deepcopy(snap.state)
    else:
        for name, value in zip(STATE_FIELDS[type(base)], snap.state):
            setattr(base, name, _copy(value))
    rng = np.random.Generator(np.random.PCG64())
    rng.bit_generator.state = copy.deepcopy(snap.rng)
    base.np_random = rng
    base._np_random_seed = snap.rng_seed


def reseed(env: gym.Env, seed: int | np.random.SeedSequence) -> None:
    """A fresh RNG stream for ``env`` (its ``np_random``; MinAtar: also its game's), e.g. for
    each branch after :func:`restore`: the same seed gives the same env noise."""
    base = env.unwrapped
    base.np_random = np.random.Generator(np.random.PCG64(seed))
    if _is_minatar(base):
        state = np.random.SeedSequence(seed).generate_state(1)[0] if isinstance(seed, int) \
            else seed.generate_state(1)[0]
        base.game.random = np.random.RandomState(int(state))
        base.game.env.random = base.game.random
