"""The one data path shared by every algorithm: rollouts, GAE, and the update batch.

A :class:`Collector` steps a gymnasium vector env with a numpy snapshot of the actor and fills
preallocated buffers; :func:`build_batch` adds critic values (one batched torch call), GAE and
the weights of the estimators. :func:`exact_batch` builds the same :class:`Batch` from a tabular
model: every (s, a) pair, weighted by d_pi(s) pi(a|s), with exact advantages.

The weights of a batch:

- ``weights`` (sum to 1): the distribution that the policy objective and the KL constraint
  average over. Sampled: uniform over the batch. Exact: d_pi(s) pi(a|s), so a weighted mean of
  per-state KL is the d_pi-weighted mean KL of TRPO's constraint.
- ``dl_weights``: the estimator of the predicted improvement in units of J,
  dL_hat = sum_i dl_weights_i (ratio_i - 1) A_i with raw advantages. Sampled (TRPO paper,
  App. A): gamma^t / n, t the time since the episode's start, n the number of episodes that
  started in the batch. Episodes that began in an earlier batch keep their true t; episodes cut
  by the batch end contribute their observed part; over consecutive batches every step counts
  once, so this is a ratio estimator of the per-episode mean (if no episode starts in the batch,
  n is the number of episode segments in it). Exact: rho_pi(s) pi(a|s), which gives dL exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
import torch

from trpo_lab.envs import state_vector_env
from trpo_lab.envs.cartpole_physics import fast_steppable, vector_step
from trpo_lab.evaluation import Episodes
from trpo_lab.numerics import RunningMeanStd, discounted_running_returns, gae
from trpo_lab.policies import NumpyActor, Policy, encode_observations
from trpo_lab.spaces import action_storage, box_mask, to_env_actions


@dataclass
class Batch:
    obs: torch.Tensor
    actions: torch.Tensor
    advantages: torch.Tensor  # raw advantages, units of reward
    returns: torch.Tensor  # critic targets (GAE advantages + old values)
    values: torch.Tensor  # critic predictions when the batch was collected
    weights: torch.Tensor
    dl_weights: torch.Tensor
    old_params: torch.Tensor  # distribution parameters of the policy that collected the batch
    old_log_prob: torch.Tensor
    policy_advantages: torch.Tensor  # what the policy losses use (standardised if switched on)
    exact: bool = False
    # vine batches with sampled actions: the rollout state of each row, whose rows' ratios are
    # self-normalised in the surrogate (numerics.self_normalised); None: plain ratios
    groups: torch.Tensor | None = None

    @property
    def size(self) -> int:
        return int(self.obs.shape[0])


@dataclass
class EpisodeStats:
    returns: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)


def _as_tensor(array: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(array), dtype=dtype)


def critic_values(policy: Policy, obs: np.ndarray) -> np.ndarray:
    """V(s) of the policy's critic for every row of ``obs`` (encoded observations), as float64
    numpy, computed on the policy's device without autograd."""
    with torch.no_grad():
        return policy.value(_as_tensor(obs).to(policy.device)).double().cpu().numpy()


def weighted_standardize(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    mean = (weights * x).sum()
    std = torch.sqrt((weights * (x - mean) ** 2).sum())
    return (x - mean) / (std + 1e-8)


def finish_batch(policy: Policy, obs: torch.Tensor, actions: torch.Tensor,
                 advantages: torch.Tensor, returns: torch.Tensor, values: torch.Tensor,
                 weights: torch.Tensor, dl_weights: torch.Tensor, normalize: bool,
                 exact: bool) -> Batch:
    """Record the collecting policy's distribution on the batch and the policy advantages; the
    batch's tensors move to the policy's device (``device``; no copy on the CPU)."""
    device = policy.device
    obs, actions, advantages, returns, values, weights, dl_weights = (
        t.to(device) for t in (obs, actions, advantages, returns, values, weights, dl_weights))
    with torch.no_grad():
        old_params = policy.dist_params(obs)
        old_log_prob = policy.head.log_prob(old_params, actions)
    policy_adv = weighted_standardize(advantages, weights) if normalize else advantages
    return Batch(obs, actions, advantages, returns, values, weights, dl_weights, old_params,
                 old_log_prob, policy_adv, exact)


class Collector:
    """Steps a vector env for ``steps_per_env`` steps per batch; keeps episodes across batches."""

    def __init__(self, envs: gym.vector.VectorEnv, steps_per_env: int, seed: int,
                 normalize_obs: bool, normalize_reward: bool = False, gamma: float = 0.99):
        self.envs = envs
        self.num_envs = envs.num_envs
        self.steps = steps_per_env
        self.obs_space = envs.single_observation_space
        self.action_space = envs.single_action_space
        self.discrete = isinstance(self.action_space, gym.spaces.Discrete)
        self.rng = np.random.default_rng(seed)
        self.obs_rms = RunningMeanStd(encode_observations(
            self.obs_space, np.asarray([self.obs_space.sample()])).shape[1:]) \
            if normalize_obs else None
        # normalisation leaves the one-hot and binary parts of the input alone
        self.obs_mask = box_mask(self.obs_space) if normalize_obs else None
        # reward normalisation (as sb3's VecNormalize): the running variance of the discounted
        # return sum_k gamma^k r_{t-k}, restarted at each episode's end, scales the rewards
        self.gamma = gamma
        self.return_rms = RunningMeanStd(()) if normalize_reward else None
        self.discounted_return = np.zeros(envs.num_envs)
        # independent streams per env: plain seed + i would give run seed k's second env the
        # stream of run seed k+1's first env, correlating the seeds of a sweep
        env_seeds = np.random.SeedSequence([seed, 0xE7]).generate_state(self.num_envs)
        raw_obs, _ = envs.reset(seed=[int(s) for s in env_seeds])
        self.raw_obs = raw_obs
        self.episode_return = np.zeros(self.num_envs)
        self.episode_length = np.zeros(self.num_envs, np.int64)
        self.total_steps = 0
        # called as watch(t, envs) before step t of each batch (the vine sampler snapshots
        # its rollout states there); its envs are then stepped one by one
        self.watch: Callable[[int, list[gym.Env]], None] | None = None

    def encode(self, raw_obs: np.ndarray) -> np.ndarray:
        x = encode_observations(self.obs_space, raw_obs)
        if self.obs_rms is not None:
            x = normalize_parts(self.obs_rms, x, self.obs_mask)
        return x

    def frozen_encoder(self) -> Callable[[np.ndarray], np.ndarray]:
        """:meth:`encode` with the normalisation statistics as they are now: the input map of
        the policy that is about to collect a batch (the statistics change after it)."""
        if self.obs_rms is None:
            return self.encode
        frozen = RunningMeanStd(self.obs_rms.mean.shape)
        frozen.load_state_dict(self.obs_rms.state_dict())
        space, mask = self.obs_space, self.obs_mask

        def encode(raw_obs: np.ndarray) -> np.ndarray:
            return normalize_parts(frozen, encode_observations(space, raw_obs), mask)

        return encode

    def collect(self, actor: NumpyActor) -> RolloutData:
        """Step every env ``steps`` times with ``actor``; autoreset in the same step (see
        :func:`collect_runs`, of which this is the group of one)."""
        return collect_runs([self], [actor])[0]

    def _reward_scale(self, rewards: np.ndarray, done: np.ndarray) -> float:
        """Update the return statistics with this batch; the std the batch's rewards are
        divided by (1 without reward normalisation).

        The statistics take every step's discounted return, as sb3's per-step updates do (one
        parallel-moments update of the same values); the whole batch then shares one scale.
        """
        if self.return_rms is None:
            return 1.0
        returns = discounted_running_returns(rewards, done, self.gamma, self.discounted_return)
        self.discounted_return = self.gamma * (1.0 - done[-1]) * returns[-1]
        self.return_rms.update(returns.reshape(-1))
        return float(np.sqrt(self.return_rms.var + 1e-8))

    def _episode_bookkeeping(self, rewards: np.ndarray,
                             done: np.ndarray) -> tuple[np.ndarray, EpisodeStats]:
        """Steps since each sample's episode began, and the undiscounted returns and lengths
        of the episodes that ended in this batch (carrying partial episodes across batches)."""
        T, N = rewards.shape  # noqa: N806
        episode_time = np.empty((T, N), np.int64)
        stats = EpisodeStats()
        for i in range(N):
            start, length, ret = 0, int(self.episode_length[i]), float(self.episode_return[i])
            for end in np.flatnonzero(done[:, i]):
                episode_time[start:end + 1, i] = length + np.arange(end + 1 - start)
                stats.returns.append(ret + float(rewards[start:end + 1, i].sum()))
                stats.lengths.append(length + end + 1 - start)
                start, length, ret = end + 1, 0, 0.0
            episode_time[start:, i] = length + np.arange(T - start)
            self.episode_length[i] = length + T - start
            self.episode_return[i] = ret + float(rewards[start:, i].sum())
        return episode_time, stats

    def state_dict(self) -> dict:
        return {
            "rng": self.rng.bit_generator.state,
            "raw_obs": self.raw_obs,
            "episode_return": self.episode_return,
            "episode_length": self.episode_length,
            "total_steps": self.total_steps,
            "obs_rms": None if self.obs_rms is None else self.obs_rms.state_dict(),
            "return_rms": None if self.return_rms is None else self.return_rms.state_dict(),
            "discounted_return": self.discounted_return,
            "envs": list(self.envs.envs),
            "physics": [physics_state(env) for env in self.envs.envs],
        }

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.raw_obs = state["raw_obs"]
        self.episode_return = state["episode_return"]
        self.episode_length = state["episode_length"]
        self.total_steps = state["total_steps"]
        if self.obs_rms is not None:
            self.obs_rms.load_state_dict(state["obs_rms"])
        if self.return_rms is not None:
            self.return_rms.load_state_dict(state["return_rms"])
        # checkpoints written before reward normalisation existed have neither key
        self.discounted_return = state.get("discounted_return", np.zeros(self.num_envs))
        self.envs.envs = list(state["envs"])
        for env, physics in zip(self.envs.envs, state["physics"]):
            restore_physics(env, physics)


def normalize_parts(rms: RunningMeanStd, x: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Observation normalisation of the entries in ``mask`` (the Box parts; None: all)."""
    if mask is None:
        return rms.normalize(x).astype(np.float32)
    return np.where(mask, rms.normalize(x), x).astype(np.float32)


class NonFiniteObservation(RuntimeError):
    """An env returned an observation that is not finite: the policy cannot act on it."""


def env_name(env: gym.Env) -> str:
    return env.spec.id if env.spec is not None else type(env.unwrapped).__name__


def nonfinite_observation(collector: Collector, data: RolloutData, steps_before: int
                          ) -> NonFiniteObservation | None:
    """The first observation of a batch (as the policy saw it, encoded in float32) that is not
    finite, named by env, sub-env and the run's env step that returned it; None if all are
    finite. ``steps_before``: the run's env steps before this batch."""
    T, N = data.obs.shape[:2]  # noqa: N806
    candidates = [(data.obs.reshape(T * N, -1), [steps_before + t * N for t in range(T)
                                                for _ in range(N)], [i for _ in range(T)
                                                                    for i in range(N)]),
                  (data.last_obs, [steps_before + T * N] * N, list(range(N))),
                  (data.final_obs, [steps_before + (t + 1) * N for t, _ in data.final_index],
                   [i for _, i in data.final_index])]
    for obs, steps, envs in candidates:
        bad = np.flatnonzero(~np.isfinite(obs).all(axis=1)) if len(obs) else []
        if len(bad):
            k = int(bad[0])
            row = obs[k]
            where = ", ".join(f"[{j}]={row[j]}" for j in np.flatnonzero(~np.isfinite(row))[:4])
            shown = np.array2string(row[:8], precision=4, separator=", ")
            return NonFiniteObservation(
                f"the env {env_name(collector.envs.envs[envs[k]])} returned a non-finite "
                f"observation (sub-env {envs[k]}, after {steps[k]} env steps of the run: "
                f"{where} in {shown}{' ...' if row.size > 8 else ''}); the policy cannot act "
                f"on it: fix the env, or end its episode before its state breaks")
    return None


def collect_runs(collectors: list[Collector], actors: list[NumpyActor],
                 failures: dict[int, Exception] | None = None) -> list[RolloutData]:
    """One batch per run: collector r steps its envs ``steps`` times with ``actors[r]``.

    An env that raises, or returns a non-finite observation (:class:`NonFiniteObservation`),
    raises here; with ``failures`` given (a group), it fails its run alone instead: the
    exception goes into ``failures[r]``, that run's envs stop stepping (its batch is garbage:
    drop it) and the other runs' batches are what they would have been.

    The runs step in lockstep with one policy call per step for all of them (the actors
    stacked: a leading run axis on every weight); each run draws its noise from its own
    generator, exactly as alone, so a run's batch does not depend on the others in its group
    (up to the rounding of the stacked matrix products). All collectors have the same number
    of envs and steps.

    The sub-environments are stepped with SyncVectorEnv's same-step autoreset semantics (an
    ended episode's last observation is kept for the bootstrap, the env is reset at once),
    without its per-step info merging: one by one (:class:`SubEnvSteps`) or, for CartPole with
    enough envs in all, as one numpy vector env (:class:`CartPoleSteps`; the same numbers).
    Episode bookkeeping is derived from the buffers afterwards.
    """
    first_collector = collectors[0]
    R, T, N = len(collectors), first_collector.steps, first_collector.num_envs  # noqa: N806
    stacked = actors[0] if R == 1 else NumpyActor.stack(actors)
    raw_obs = [np.array(c.raw_obs) for c in collectors]
    obs_dim = first_collector.encode(raw_obs[0]).shape[1]
    space = first_collector.action_space
    act_shape, act_dtype = action_storage(space)  # the head's flat form
    obs_buf = np.empty((R, T, N, obs_dim), np.float32)
    raw_buf = [np.empty((T, *raw.shape), raw.dtype) if c.obs_rms is not None else None
               for c, raw in zip(collectors, raw_obs)]
    act_buf = np.empty((R, T, N, *act_shape), act_dtype)
    rew_buf = np.empty((R, T, N))
    term_buf = np.zeros((R, T, N), bool)
    done_buf = np.zeros((R, T, N), bool)
    final_index: list[list[tuple[int, int]]] = [[] for _ in range(R)]
    final_obs: list[list[np.ndarray]] = [[] for _ in range(R)]
    watched = [c for c in collectors if c.watch is not None]
    stepper = ((None if watched else CartPoleSteps.of(collectors))
               or SubEnvSteps(collectors, failures))
    steps_before = [c.total_steps for c in collectors]
    for t in range(T):
        for c in watched:
            c.watch(t, c.envs.envs)
        for r, c in enumerate(collectors):
            obs_buf[r, t] = c.encode(raw_obs[r])
            if raw_buf[r] is not None:
                raw_buf[r][t] = raw_obs[r]
        if R == 1:
            actions = stacked.sample(obs_buf[0, t], first_collector.rng)[None]
        else:
            noise = np.stack([a.noise(c.rng, N) for a, c in zip(actors, collectors)])
            actions = stacked.sample_from_noise(obs_buf[:, t], noise)
        act_buf[:, t] = actions
        env_actions = to_env_actions(space, actions)
        rew_buf[:, t], term_buf[:, t], done_buf[:, t] = stepper.step(env_actions, raw_obs)
        for r, i, obs_i in stepper.finals:
            final_index[r].append((t, i))
            final_obs[r].append(obs_i)
    stepper.close()
    out = []
    for r, c in enumerate(collectors):
        c.raw_obs = raw_obs[r]
        c.total_steps += T * N
        time_buf, stats = c._episode_bookkeeping(rew_buf[r], done_buf[r])
        last = c.encode(raw_obs[r])
        finals = c.encode(np.asarray(final_obs[r])) if final_obs[r] else \
            np.empty((0, obs_dim), np.float32)
        if c.obs_rms is not None:
            c.obs_rms.update(encode_observations(
                c.obs_space, raw_buf[r].reshape(T * N, *raw_obs[r].shape[1:])))
        out.append(RolloutData(obs_buf[r], act_buf[r], rew_buf[r], term_buf[r], done_buf[r],
                               time_buf, last, final_index[r], finals, stats,
                               c._reward_scale(rew_buf[r], done_buf[r])))
        if failures is None or r not in failures:
            broken = nonfinite_observation(c, out[-1], steps_before[r])
            if broken is not None and failures is None:
                raise broken
            if broken is not None:
                failures[r] = broken
    return out


class SubEnvSteps:
    """Every sub-env of every run's SyncVectorEnv stepped by itself, reset in the step that
    ends its episode."""

    def __init__(self, collectors: list[Collector], failures: dict[int, Exception] | None = None):
        """``failures``: see :func:`collect_runs` (a run whose env raised stops stepping)."""
        self.envs = [c.envs.envs for c in collectors]
        self.failures = failures
        runs, n = len(collectors), collectors[0].num_envs
        self.rewards = np.empty((runs, n))
        self.terminated = np.zeros((runs, n), bool)
        self.done = np.zeros((runs, n), bool)
        self.finals: list[tuple[int, int, np.ndarray]] = []

    def step(self, actions: np.ndarray, raw_obs: list[np.ndarray]
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Step env i of run r with ``actions[r, i]``; ``raw_obs[r][i]`` becomes the
        observation the next step starts from. Returns rewards, terminated and done [R, N];
        ``finals`` lists (r, i, final observation) of the episodes that ended."""
        self.terminated[:] = False
        self.done[:] = False
        self.finals = []
        for r, envs in enumerate(self.envs):
            if self.failures is None:
                self._step_run(r, envs, actions[r], raw_obs[r])
            elif r not in self.failures:
                try:
                    self._step_run(r, envs, actions[r], raw_obs[r])
                except Exception as error:  # noqa: BLE001  (the env's own code: its run fails)
                    self.failures[r] = error
                    self.rewards[r] = 0.0
                    self.finals = [f for f in self.finals if f[0] != r]
        return self.rewards, self.terminated, self.done

    def _step_run(self, r: int, envs: list[gym.Env], actions: np.ndarray,
                  raw: np.ndarray) -> None:
        for i, env in enumerate(envs):
            obs_i, reward, terminated, truncated, _ = env.step(actions[i])
            self.rewards[r, i] = reward
            if terminated or truncated:
                self.terminated[r, i] = terminated
                self.done[r, i] = True
                self.finals.append((r, i, obs_i))
                obs_i, _ = env.reset()
            raw[i] = obs_i

    def close(self) -> None:
        pass


class CartPoleSteps:
    """The CartPole envs of all runs stepped as ONE gymnasium ``CartPoleVectorEnv``.

    A vector step costs about as much as five single-env steps (its per-call checks), so this
    pays from :data:`MIN_ENVS` envs on (a group of runs). The sub-envs stay the runs' state:
    their physical states and time-limit counters are copied into the vector env when a batch
    starts and back when it ends. Both envs compute the same float64 physics, so the numbers
    are the single envs' to the bit (tests/test_rollout_engine.py). An episode that ends is
    reset by its own sub-env's ``reset()`` (its own random stream, as alone), whose state then
    goes into its column, so the vector env never resets anything itself.
    """

    MIN_ENVS = 6

    def __init__(self, collectors: list[Collector]):
        # each sub-env is its TimeLimit (outermost, see of()), which counts its episode's steps
        self.envs = [env for c in collectors for env in c.envs.envs]
        self.shape = (len(collectors), collectors[0].num_envs)
        first = self.envs[0]
        kwargs = {**first.spec.kwargs, "max_episode_steps": first._max_episode_steps}
        self.engine = state_vector_env(first.spec.id, len(self.envs), kwargs)
        self.state = self.engine.unwrapped
        self.state.state = np.stack([np.asarray(env.unwrapped.state, np.float64)
                                     for env in self.envs], axis=1)
        self.state.steps[:] = [env._elapsed_steps for env in self.envs]
        self.finals: list[tuple[int, int, np.ndarray]] = []

    @staticmethod
    def of(collectors: list[Collector]) -> CartPoleSteps | None:
        """The vector stepping of these runs' envs, or None: fewer than MIN_ENVS, or not all
        gymnasium's own ``CartPoleEnv`` as ``gym.make`` wraps it, with one spec (id, kwargs,
        time limit)."""
        from gymnasium.envs.classic_control.cartpole import CartPoleEnv

        envs = [env for c in collectors for env in c.envs.envs]
        if len(envs) < CartPoleSteps.MIN_ENVS:
            return None
        first = envs[0].spec
        if first is None or first.vector_entry_point is None or first.additional_wrappers:
            return None
        for env in envs:
            # exactly what gym.make builds: TimeLimit(OrderEnforcing(CartPoleEnv)); any other
            # wrapper would change what the vector env computes
            if not isinstance(env, gym.wrappers.TimeLimit) or env.spec != first:
                return None
            inner = env.env
            while isinstance(inner, gym.wrappers.OrderEnforcing | gym.wrappers.PassiveEnvChecker):
                inner = inner.env
            if type(inner) is not CartPoleEnv:
                return None
        try:
            return CartPoleSteps(collectors)
        except (TypeError, gym.error.Error):  # kwargs or wrappers the vector env does not take
            return None

    def step(self, actions: np.ndarray, raw_obs: list[np.ndarray]
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`SubEnvSteps.step`, in one vector step."""
        if fast_steppable(self.state):  # gymnasium's step to the bit, without its checks
            obs, rewards, terminated, truncated = vector_step(self.state, actions.reshape(-1))
        else:
            obs, rewards, terminated, truncated, _ = self.engine.step(actions.reshape(-1))
        done = terminated | truncated
        self.finals = []
        n = self.shape[1]
        for j in np.flatnonzero(done):
            self.finals.append((j // n, j % n, obs[j].copy()))
            obs[j], _ = self.envs[j].reset()
            self.state.state[:, j] = self.envs[j].unwrapped.state
            self.state.steps[j] = 0
        self.state.prev_done[:] = False
        obs = obs.reshape(*self.shape, -1)
        for r, raw in enumerate(raw_obs):
            raw[:] = obs[r]
        return (rewards.reshape(self.shape).astype(np.float64),
                terminated.reshape(self.shape), done.reshape(self.shape))

    def close(self) -> None:
        """The states and step counters back into the sub-envs (each run's own state)."""
        for j, env in enumerate(self.envs):
            env.unwrapped.state = self.state.state[:, j].copy()
            env._elapsed_steps = int(self.state.steps[j])
        self.engine.close()


def physics_state(env: gym.Env) -> dict | None:
    """What pickling a MuJoCo env loses: it is rebuilt from its constructor arguments, so the
    simulator state and the env's RNG are saved beside it (pure-Python envs pickle whole)."""
    base = env.unwrapped
    data = getattr(base, "data", None)
    if data is None or not hasattr(base, "set_state"):
        return None
    return {"qpos": data.qpos.copy(), "qvel": data.qvel.copy(), "time": float(data.time),
            "rng": base.np_random.bit_generator.state}


def restore_physics(env: gym.Env, physics: dict | None) -> None:
    if physics is None:
        return
    base = env.unwrapped
    base.set_state(physics["qpos"], physics["qvel"])
    base.data.time = physics["time"]
    base.np_random.bit_generator.state = physics["rng"]


@dataclass
class RolloutData:
    obs: np.ndarray  # [T, N, obs_dim], encoded (and normalised) as the actor saw them
    actions: np.ndarray
    rewards: np.ndarray
    terminated: np.ndarray
    done: np.ndarray
    episode_time: np.ndarray  # steps since each sample's episode began
    last_obs: np.ndarray
    final_index: list[tuple[int, int]]
    final_obs: np.ndarray
    stats: EpisodeStats
    reward_scale: float = 1.0  # the critic and GAE see clip(rewards / reward_scale, +-10)


REWARD_CLIP = 10.0


def scaled_rewards(rewards: np.ndarray, reward_scale: float) -> np.ndarray:
    """What the critic and GAE see: rewards / scale clipped to +-REWARD_CLIP (1: unchanged)."""
    if reward_scale == 1.0:
        return rewards
    return np.clip(rewards / reward_scale, -REWARD_CLIP, REWARD_CLIP)


def build_batch(policy: Policy, data: RolloutData, gamma: float, lam: float,
                normalize_advantages: bool) -> Batch:
    """Critic values, GAE and weights for a rollout (:func:`build_batches` for one run).

    With reward normalisation (``data.reward_scale`` != 1) the critic and GAE work on the
    scaled, clipped rewards; ``Batch.advantages`` is multiplied back to units of reward (exact
    unless a reward was clipped) so every logged estimate stays in units of J.
    """
    return build_batches([policy], [data], [gamma], [lam], normalize_advantages)[0]


def build_batches(policies: list[Policy], datas: list[RolloutData], gammas: list[float],
                  lams: list[float], normalize_advantages: bool) -> list[Batch]:
    """:func:`build_batch` for R runs of one shape: each run's critic values, then one GAE
    recursion over all runs' envs side by side ([T, R * N], each column with its run's gamma
    and lambda), then each run's weights."""
    R = len(datas)  # noqa: N806
    T, N, obs_dim = datas[0].obs.shape  # noqa: N806
    values, next_values = np.empty((T, R * N)), np.empty((T, R * N))
    for r, (policy, data) in enumerate(zip(policies, datas)):
        flat_obs = data.obs.reshape(T * N, obs_dim)
        all_values = critic_values(
            policy, np.concatenate([flat_obs, data.last_obs, data.final_obs]))
        v = values[:, r * N:(r + 1) * N]
        v[:] = all_values[: T * N].reshape(T, N)
        nv = next_values[:, r * N:(r + 1) * N]
        nv[:-1] = v[1:]
        nv[-1] = all_values[T * N: T * N + N]
        for (t, i), value in zip(data.final_index, all_values[T * N + N:]):
            nv[t, i] = value  # terminated steps are zeroed inside gae
    columns = [slice(r * N, (r + 1) * N) for r in range(R)]
    rewards = np.concatenate([scaled_rewards(d.rewards, d.reward_scale) for d in datas], axis=1)
    terminated = np.concatenate([d.terminated for d in datas], axis=1)
    done = np.concatenate([d.done for d in datas], axis=1)
    if R == 1:
        gamma_cols, lam_cols = gammas[0], lams[0]
    else:
        gamma_cols, lam_cols = np.repeat(gammas, N), np.repeat(lams, N)
    all_advantages = gae(rewards, values, next_values, terminated, done, gamma_cols, lam_cols)
    size = T * N
    batches = []
    for r, (policy, data) in enumerate(zip(policies, datas)):
        advantages, v = all_advantages[:, columns[r]], values[:, columns[r]]
        starts = int((data.episode_time == 0).sum())
        episodes = starts if starts else N  # no start: one segment per env
        dl_weights = gammas[r] ** data.episode_time.astype(np.float64) / episodes
        batches.append(finish_batch(
            policy,
            _as_tensor(data.obs.reshape(size, obs_dim)),
            _as_tensor(data.actions.reshape(size, *data.actions.shape[2:]),
                       policy.head.action_dtype),
            _as_tensor(data.reward_scale * advantages.reshape(size)),
            _as_tensor((advantages + v).reshape(size)),
            _as_tensor(v.reshape(size)),
            torch.full((size,), 1.0 / size),
            _as_tensor(dl_weights.reshape(size)),
            normalize_advantages,
            exact=False,
        ))
    return batches


def exact_batch(policy: Policy, pi: np.ndarray, advantages: np.ndarray, rho: np.ndarray,
                gamma: float, normalize_advantages: bool) -> Batch:
    """All (s, a) pairs of a tabular model as one batch, weighted by the exact visitation.

    ``pi``, ``advantages``: [S, A]; ``rho``: the unnormalised discounted visitation of pi.
    Then sum_i weights_i ratio_i A_i = sum_s d_pi(s) sum_a pi'(a|s) A_pi(s, a) and
    sum_i dl_weights_i (ratio_i - 1) A_i = dL exactly.
    """
    S, A = pi.shape  # noqa: N806
    obs = np.repeat(np.eye(S, dtype=np.float32), A, axis=0)
    joint = policy.head.joint_actions()  # [A] or, factored, [A, k] component indices
    actions = np.tile(joint, (S,) + (1,) * (joint.ndim - 1))
    dl_weights = (rho[:, None] * pi).reshape(-1)
    weights = (1.0 - gamma) * dl_weights
    weights = weights / weights.sum()
    adv = _as_tensor(advantages.reshape(-1))
    nan = torch.full((S * A,), float("nan"))
    return finish_batch(policy, _as_tensor(obs), torch.as_tensor(actions), adv, nan, nan,
                        _as_tensor(weights), _as_tensor(dl_weights), normalize_advantages,
                        exact=True)


@dataclass
class HeldoutBatch:
    """Fresh episodes of the old policy, never trained on, as a :class:`Batch` of their steps
    with ``dl_weights`` = gamma^t / n (t from the episode's reset, n episodes), so that
    sum_i dl_weights_i (ratio_i - 1) A_i is the TRPO paper's dL estimator on whole episodes;
    ``episode`` maps each step to its episode, for the standard error over episodes.
    ``action_advantages`` [steps, joint actions]: with exact advantages, A_pi(s_i, a) of every
    action a at each step's state (the held-out dL then averages over the actions exactly,
    :func:`trpo_lab.algos.common.heldout_improvement`); None with sampled advantages."""

    batch: Batch
    episode: torch.Tensor
    episodes: int
    env_steps: int
    action_advantages: torch.Tensor | None = None


def heldout_batch(policy: Policy, episodes: Episodes, gamma: float, lam: float,
                  reward_scale: float, exact_advantages: np.ndarray | None = None) -> HeldoutBatch:
    """The held-out batch of ``episodes`` (recorded), with the current (pre-update) critic.

    Advantages are GAE(gamma, lam) on the critic's values in its reward scale, multiplied back
    to units of reward, exactly as for the training batch; with ``exact_advantages`` (a tabular
    model's A_pi[s, a], for runs that update on the exact batch) they are looked up instead,
    and every action's A_pi(s_t, .) is kept (``action_advantages``).
    """
    T, N, obs_dim = episodes.obs.shape  # noqa: N806
    alive = episodes.alive
    size = int(alive.sum())
    if exact_advantages is not None:
        advantages = exact_advantages[episodes.raw_obs,
                                      policy.head.joint_index(episodes.actions)]
    else:
        # the critic on the episodes' steps only (the arrays are padded to the longest), and on
        # the observations reached at their last steps: before it, step t reaches step t + 1
        following = np.zeros_like(alive)
        following[:-1] = alive[1:]
        last = alive & (episodes.done | ~following)
        both = critic_values(policy, np.concatenate([episodes.obs[alive],
                                                     episodes.next_obs[last]]))
        values, next_values = np.zeros((T, N)), np.zeros((T, N))
        values[alive] = both[:size]
        next_values[:-1] = values[1:]
        next_values[last] = both[size:]
        advantages = reward_scale * gae(scaled_rewards(episodes.rewards, reward_scale), values,
                                        next_values, episodes.terminated, episodes.done, gamma,
                                        lam)
    t_index = np.broadcast_to(np.arange(T)[:, None], (T, N))
    episode_index = np.broadcast_to(np.arange(N)[None, :], (T, N))
    actions = episodes.actions[alive]
    batch = finish_batch(
        policy, _as_tensor(episodes.obs[alive]),
        _as_tensor(actions, policy.head.action_dtype),
        _as_tensor(advantages[alive]), torch.full((size,), float("nan")),
        torch.full((size,), float("nan")), torch.full((size,), 1.0 / size),
        _as_tensor(gamma ** t_index[alive].astype(np.float64) / N), normalize=False,
        exact=False)
    every_action = None if exact_advantages is None else torch.as_tensor(
        np.ascontiguousarray(exact_advantages[episodes.raw_obs[alive]]), dtype=torch.float64,
        device=policy.device)
    return HeldoutBatch(batch, torch.as_tensor(episode_index[alive]), N, size, every_action)
