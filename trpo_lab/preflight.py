"""Checks at start that need more than a field's range: memory, and the cost of evaluation.

- :func:`check` refuses (``ConfigError``, exit 2) a tabular model that cannot fit in memory,
  estimated from its keys before anything is built, and a ``device`` torch does not see.
- :func:`warnings` names settings that make every update absurdly slow, or a run's evaluation
  far more costly than its training, without refusing them.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

from trpo_lab.config import Config, ConfigError, planned_updates

# the evaluation may cost this many times a batch's env steps per update before we warn
EVAL_COST_RATIO = 100
EVAL_COST_MIN_STEPS = 1_000_000
# over the run, the evaluation of an env stepped one env at a time (a SyncVectorEnv: no numpy
# vector entry point) may play this many times the training env steps before we warn. Measured
# here on the default settings (64 + 64 + 16 episodes per update): Pendulum-v1 14x its 100k
# training steps (at most; 200-step episodes), evaluation 56 of 70 s; Acrobot-v1 15x (35x at
# most), 337 of 358 s. CartPole-v1 plays 22x in numpy's vector env, 10 of 20 s: not warned.
EVAL_RUN_RATIO = 10
# a probe's landscape may step this many env steps before we warn (CartPole: 672,000)
PROBE_COST_STEPS = 1_000_000


def tabular_model_bytes(num_states: int, num_actions: int) -> int:
    """Peak bytes of a dense tabular model and its exact solution: P [S, A, S] float64 twice
    (built, then frozen as a copy), and three [S, S] float64 matrices (P_pi, its LU, the
    one-hot observations)."""
    s, a = num_states, num_actions
    return 8 * (2 * s * a * s + 3 * s * s)


def _cgroup_available() -> int | None:
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
    except (OSError, ValueError):
        return None
    return None if limit == "max" else max(int(limit) - used, 0)


def available_memory() -> int | None:
    """Bytes this process may still allocate: MemAvailable (and the cgroup's limit, if any)."""
    candidates = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                candidates.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        candidates = []
    if not candidates:
        with contextlib.suppress(ValueError, OSError, AttributeError):
            candidates.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    cgroup = _cgroup_available()
    if cgroup is not None:
        candidates.append(cgroup)
    return min(candidates) if candidates else None


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def check(cfg: Config, available: int | None = None) -> None:
    """Refuse what cannot run at all; ``available`` defaults to :func:`available_memory`."""
    check_device(cfg.device)
    if cfg.env.tabular and cfg.env.name == "garnet":
        needed = tabular_model_bytes(cfg.env.num_states, cfg.env.num_actions)
        available = available_memory() if available is None else available
        if available is not None and needed > available:
            raise ConfigError(
                "env.num_states", cfg.env.num_states,
                f"with env.num_actions={cfg.env.num_actions} the tabular model needs about "
                f"{human_bytes(needed)} (S*A*S float64 transitions, twice, and S*S matrices), "
                f"more than the {human_bytes(available)} of memory available; lower "
                f"env.num_states or env.num_actions")


def check_device(device: str, gpus: int | None = None) -> None:
    """``device`` must be one torch can use: cpu, or a CUDA GPU among the ``gpus`` torch sees
    (default ``torch.cuda.device_count()``, 0 where torch has no CUDA or no GPU)."""
    if device == "cpu":
        return
    gpus = (torch.cuda.device_count() if torch.cuda.is_available() else 0) \
        if gpus is None else gpus
    index = 0 if device == "cuda" else int(device.split(":")[1])
    if gpus == 0:
        raise ConfigError("device", device,
                          f"torch sees no CUDA GPU here (torch {torch.__version__}, "
                          "torch.cuda.is_available() is False): use device=cpu")
    if index >= gpus:
        raise ConfigError("device", device,
                          f"torch sees {gpus} CUDA GPU(s), cuda:0 to cuda:{gpus - 1}")


def episode_step_bound(cfg: Config) -> int | None:
    """The most steps one evaluation episode can take, if the env says."""
    import gymnasium as gym

    from trpo_lab.envs import EnvError, registered_id, tabular_horizon

    if cfg.env.tabular:
        return tabular_horizon(cfg.env, cfg.gamma)
    if cfg.env.kwargs.get("max_episode_steps") is not None:  # gymnasium.make's own override
        return int(cfg.env.kwargs["max_episode_steps"])
    try:
        return gym.spec(registered_id(cfg.env.id)).max_episode_steps
    except (gym.error.Error, EnvError):
        return None  # the env's own check reports a bad id


def eval_pairs(cfg: Config) -> int:
    """Paired episodes an evaluated update that moved the policy plays: eval.episodes, in
    rounds of it while fewer than eval.min_differing pairs differ (adaptive pairs; counted as
    if every pair differed, the least), within eval.max_pairs."""
    n, wanted = cfg.eval.episodes, cfg.eval.min_differing
    if n == 0 or wanted <= n:
        return n
    most = max(cfg.eval.max_pairs // n, 1) * n
    return min(-(-wanted // n) * n, most)


def eval_steps_per_update(cfg: Config, bound: int) -> float:
    """At most how many env steps the evaluation plays per update, on average: episodes of
    pi and of pi', and the held-out episodes, every ``eval.every`` updates."""
    episodes = 2 * eval_pairs(cfg) + cfg.eval.heldout_episodes
    return episodes * bound / cfg.eval.every


def evaluated_updates(updates: int, every: int) -> int:
    """Updates k in [0, updates) with k % every == 0: those the evaluation plays."""
    return -(-updates // every)


def eval_run_steps(cfg: Config, bound: int, every: int | None = None) -> int:
    """At most how many env steps the evaluation plays over the whole run (episodes of pi and
    pi' and the held-out episodes, ``bound`` steps each, every ``every`` updates: by default
    ``eval.every``; pairs: :func:`eval_pairs`); the probed updates' evaluations aside."""
    episodes = 2 * eval_pairs(cfg) + cfg.eval.heldout_episodes
    every = cfg.eval.every if every is None else every
    return evaluated_updates(planned_updates(cfg), every) * episodes * bound


def eval_every_within(cfg: Config, bound: int, ratio: float) -> int:
    """The smallest eval.every whose evaluation plays at most ``ratio`` x the training steps."""
    training = planned_updates(cfg) * cfg.batch_steps
    every = cfg.eval.every
    while eval_run_steps(cfg, bound, every) > ratio * training and every < planned_updates(cfg):
        every += 1
    return every


def steps_one_by_one(cfg: Config) -> bool:
    """The evaluation steps a SyncVectorEnv, one env after the other (the env has no numpy
    vector entry point): an env step costs there what it costs in training."""
    import gymnasium as gym

    from trpo_lab.envs import registered_id

    return not cfg.env.tabular and gym.spec(registered_id(cfg.env.id)).vector_entry_point is None


def warnings(cfg: Config) -> list[str]:
    """Settings that run but make every update far slower than it needs to be, or the
    evaluation cost far more than the training."""
    found = []
    evaluated = cfg.eval.episodes > 0 or cfg.eval.heldout_episodes > 0
    bound = episode_step_bound(cfg) if evaluated else None
    if bound:
        steps = eval_steps_per_update(cfg, bound)
        run_steps, training = eval_run_steps(cfg, bound), planned_updates(cfg) * cfg.batch_steps
        if steps > max(EVAL_COST_RATIO * cfg.batch_steps, EVAL_COST_MIN_STEPS):
            found.append(
                f"eval.episodes={cfg.eval.episodes} (with eval.heldout_episodes="
                f"{cfg.eval.heldout_episodes}, eval.every={cfg.eval.every}) plays up to "
                f"{steps:.3g} evaluation env steps per update ({bound} steps an episode) "
                f"against batch_steps={cfg.batch_steps} for training: every update may take "
                f"minutes; lower eval.episodes (0 turns the evaluation off) or raise eval.every")
        elif run_steps > EVAL_RUN_RATIO * training and steps_one_by_one(cfg):
            every = eval_every_within(cfg, bound, EVAL_RUN_RATIO)
            evaluated = evaluated_updates(planned_updates(cfg), cfg.eval.every)
            pairs = f"eval.episodes={cfg.eval.episodes}"
            if eval_pairs(cfg) != cfg.eval.episodes:
                pairs = f"at least {eval_pairs(cfg)} pairs ({pairs} in rounds until " \
                        f"eval.min_differing={cfg.eval.min_differing} differ, at most " \
                        f"eval.max_pairs={cfg.eval.max_pairs})"
            found.append(
                f"the evaluation (true J and dJ, held-out dL) may cost far more than training: "
                f"up to {run_steps} env steps ({evaluated} evaluated updates x (2 x {pairs} + "
                f"eval.heldout_episodes={cfg.eval.heldout_episodes}) episodes x up to {bound} "
                f"steps), "
                f"{run_steps / training:.0f}x the {training} training env steps, stepped one "
                f"env at a time on {cfg.env.id}: expect most of the run's time to go there; "
                f"lower eval.episodes (0 turns the truth off)"
                f"{', eval.min_differing' if eval_pairs(cfg) != cfg.eval.episodes else ''} "
                f"or eval.heldout_episodes, or "
                f"raise eval.every (eval.every={every}: "
                f"{eval_run_steps(cfg, bound, every) / training:.1f}x)")
    probe_bound = episode_step_bound(cfg) if cfg.probe.every and not cfg.env.tabular else None
    if probe_bound:
        envs = probe_landscape_envs(cfg)
        steps = envs * probe_bound
        if steps > PROBE_COST_STEPS:
            found.append(
                f"probe.every={cfg.probe.every}: each probe steps {envs} envs at once for the "
                f"landscape (probe.episodes={cfg.probe.episodes} x (1 + "
                f"{len(cfg.probe.alphas)} alphas x {1 + cfg.probe.random_directions} lines)), "
                f"up to {steps:.3g} env steps ({probe_bound} steps an episode); lower "
                f"probe.episodes, probe.alphas or probe.random_directions, or raise probe.every")
    return found


def probe_landscape_envs(cfg: Config) -> int:
    """Envs the landscape probe steps together off the tabular envs: pi_old and every point."""
    points = len(cfg.probe.alphas) * (1 + cfg.probe.random_directions)
    return cfg.probe.episodes * (1 + points) if points else 0


def observation_warnings(space, policy: str, normalize_obs: bool) -> list[str]:
    """Image observations (a uint8 Box of two or more dimensions, values up to 255) that would
    go unscaled into a policy that flattens them (``mlp``, ``linear``)."""
    import gymnasium as gym
    import numpy as np

    image = isinstance(space, gym.spaces.Box) and space.dtype == np.uint8 \
        and len(space.shape) >= 2 and float(np.max(space.high)) > 1
    if not image or policy not in ("mlp", "linear") or normalize_obs:
        return []
    return [f"the observations are uint8 images of shape {space.shape} (values 0..255), fed "
            f"to policy={policy} unscaled and flattened to {int(np.prod(space.shape))} inputs: "
            f"training is likely to stall; use policy=cnn (a convolutional policy for image "
            f"observations) or env.normalize_obs=true (running mean/std of each input)"]
