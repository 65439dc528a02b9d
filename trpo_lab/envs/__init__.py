"""Environment construction: gymnasium ids and the exact tabular MDPs, behind one factory."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

import gymnasium as gym
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from trpo_lab.config import EnvConfig
from trpo_lab.envs.errors import ActionComponentsError
from trpo_lab.spaces import PackObservations, needs_packing, unsupported


class EnvError(ValueError):
    """The environment cannot be built (unknown id, missing extra, unsupported spaces)."""

    def __init__(self, key: str, value: Any, allowed: str):
        super().__init__(f"invalid value {key}={value!r}: {allowed}")
        self.key, self.value, self.allowed = key, value, allowed


def _register_tabular() -> None:
    import trpo_lab.envs.synthetic  # noqa: F401  (registers trpo_lab/Spaces-v0)
    import trpo_lab.envs.tabular  # noqa: F401  (registers trpo_lab/* ids)


def _register_minatar(env_cfg: EnvConfig) -> None:
    """The minatar package's gymnasium ids (MinAtar/Breakout-v1, ...)."""
    try:
        import minatar.gym
    except ImportError:
        raise EnvError("env.id", env_cfg.id, 'needs the minatar package: pip install -e '
                       '".[minatar]" (the [dev] extra includes it)') from None
    if "MinAtar/Breakout-v1" not in gym.registry:
        minatar.gym.register_envs()


def tabular_horizon(env_cfg: EnvConfig, gamma: float) -> int:
    from trpo_lab.envs.tabular import horizon_for

    return env_cfg.horizon or horizon_for(gamma)


def make_kwargs(env_cfg: EnvConfig, gamma: float) -> dict[str, Any]:
    kwargs = dict(env_cfg.kwargs)
    if env_cfg.tabular:
        kwargs["horizon"] = tabular_horizon(env_cfg, gamma)
        if env_cfg.name == "garnet":
            kwargs.update(num_states=env_cfg.num_states, num_actions=env_cfg.num_actions,
                          branching=env_cfg.branching, mdp_seed=env_cfg.mdp_seed)
        if env_cfg.action_components:
            kwargs["action_components"] = list(env_cfg.action_components)
    return kwargs


def registered_id(env_id: str) -> str:
    """The registry id of ``env_id``; ``module:EnvId`` (gymnasium's own form) first imports
    ``module``, which registers ``EnvId``, as ``gymnasium.make`` does."""
    if ":" not in env_id:
        return env_id
    module, name = env_id.split(":", 1)
    try:
        importlib.import_module(module)
    except ImportError as error:
        hint = ""
        if isinstance(error, ModuleNotFoundError) and error.name == module.split(".")[0]:
            hint = (f"; it is looked for on sys.path, which holds the current directory "
                    f"(trpo-lab adds it last): run from the directory that holds "
                    f"{error.name}.py, or set PYTHONPATH=DIR")
        raise EnvError("env.id", env_id,
                       f"cannot import module {module!r} of module:EnvId ({error}){hint}") \
            from None
    return name


def env_factory(env_cfg: EnvConfig, gamma: float) -> Callable[[], gym.Env]:
    """A zero-argument constructor of one environment; checks the id and extras first."""
    env_id = registered_id(env_cfg.id)
    if env_cfg.tabular or env_id.startswith("trpo_lab/"):
        _register_tabular()
    if env_id.startswith("MinAtar/"):
        _register_minatar(env_cfg)
    try:
        spec = gym.spec(env_id)
    except gym.error.Error as error:
        raise EnvError("env.id", env_cfg.id,
                       f"not a registered gymnasium id ({error})") from None
    entry = str(spec.entry_point)
    if "mujoco" in entry and importlib.util.find_spec("mujoco") is None:
        raise EnvError("env.id", env_cfg.id,
                       'needs MuJoCo: install the extra with pip install -e ".[mujoco]"')
    kwargs = make_kwargs(env_cfg, gamma)

    def make() -> gym.Env:
        env = gym.make(env_id, disable_env_checker=True, **kwargs)
        if not needs_packing(env.observation_space):
            return env
        # Tuple and Dict observations travel as one flat vector (trpo_lab.spaces)
        reason = unsupported(env.observation_space, "observation")
        if reason is not None:
            env.close()
            raise EnvError("env.id", env_cfg.id, reason)
        return PackObservations(env)

    return make


def check_spaces(env: gym.Env, env_cfg: EnvConfig) -> None:
    """Refuse spaces no head or encoder serves (:func:`trpo_lab.spaces.unsupported`)."""
    for name, space in (("observation", env.observation_space), ("action", env.action_space)):
        reason = unsupported(space, name)
        if reason is not None:
            raise EnvError("env.id", env_cfg.id, reason)


def make_vector_env(env_cfg: EnvConfig, num_envs: int, gamma: float) -> SyncVectorEnv:
    """``num_envs`` copies in a SyncVectorEnv that autoresets in the same step.

    Same-step autoreset returns the first observation of the next episode at once and puts the
    final observation of the finished one in ``info["final_obs"]``, which GAE needs to bootstrap
    from V on truncation.
    """
    make = env_factory(env_cfg, gamma)
    try:
        probe = make()
    except TypeError as error:
        raise EnvError("env.kwargs", dict(env_cfg.kwargs),
                       f"rejected by {env_cfg.id}: {error}") from None
    except ActionComponentsError as error:
        raise EnvError("env.action_components", list(env_cfg.action_components),
                       str(error)) from None
    except gym.error.DependencyNotInstalled as error:  # e.g. Box2D for CarRacing-v3
        message = " ".join(str(error).split())
        raise EnvError("env.id", env_cfg.id, f"needs a package that is not installed: "
                                             f"{message}") from None
    check_spaces(probe, env_cfg)
    probe.close()
    return SyncVectorEnv([make for _ in range(num_envs)], copy=False,
                         autoreset_mode=AutoresetMode.SAME_STEP)


def state_vector_env(env_id: str, n: int, kwargs: dict[str, Any]) -> gym.vector.VectorEnv:
    """gymnasium's numpy vector env of ``n`` copies of ``env_id`` (its vector entry point),
    reset once, as gymnasium requires before a step: for callers that then write every
    column's state themselves (several runs' envs stepped as one)."""
    envs = gym.make_vec(env_id, n, vectorization_mode="vector_entry_point", **kwargs)
    envs.reset(seed=0)
    return envs


def tabular_model(envs: SyncVectorEnv):
    """The TabularMDP behind a tabular vector env (the same model in every copy)."""
    return envs.envs[0].unwrapped.mdp
