"""Fresh episodes of a fixed policy, stepped together: the Monte Carlo truth J and dJ, the
held-out batch, and the deterministic evaluation of a final policy.

:class:`EpisodeSampler` runs ``episodes`` fresh episodes of one policy side by side in one
vector env, with one batched policy call per step:

- gymnasium's own numpy vector env where the id has one (``gym.make_vec(id, N,
  vectorization_mode="vector_entry_point")``, e.g. CartPole), else a SyncVectorEnv;
- on tabular envs the model itself (:class:`TabularEpisodes`): P, R, mu and the horizon H of the
  env, sampled by inverse CDFs for N episodes at once.

Every random number is indexed by (key, episode, t): the reset seeds come from the key, the
policy's noise at step t is one draw of N values per step (whether an episode is still running or
not), and a tabular env's transition noise likewise. Two calls with the same key are therefore
paired by common random numbers: episode j of pi and episode j of pi' start in the same state and
see the same noise at every step, so most of the randomness cancels in J(pi') - J(pi).

J is the discounted return sum_t gamma^t r_t at the run's gamma; an episode runs until it
terminates or is truncated by its time limit (``MAX_EVAL_STEPS`` as a last resort for an env
without one).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from trpo_lab import cartpole_columns as live_columns
from trpo_lab.config import EnvConfig
from trpo_lab.envs import (
    env_factory,
    make_kwargs,
    registered_id,
    state_vector_env,
    tabular_horizon,
)
from trpo_lab.envs.cartpole_physics import fast_steppable, vector_step
from trpo_lab.intervals import no_difference_se
from trpo_lab.policies import NumpyActor
from trpo_lab.spaces import to_env_actions

MAX_EVAL_STEPS = 100_000
NOISE_STEPS = 64  # steps of policy noise drawn at once by the evaluator


@dataclass(frozen=True)
class MonteCarloEstimate:
    mean: float
    se: float

    @staticmethod
    def of(samples: np.ndarray, bound: float | None = None) -> MonteCarloEstimate:
        """The mean and sd / sqrt(n); when every sample is the same and ``bound`` bounds
        the range they can take (the width of the returns' range), the SE is
        :func:`trpo_lab.intervals.no_difference_se` instead of 0: n equal draws say only
        that other values have probability at most 1 - 0.05^(1/n)."""
        n = samples.shape[0]
        se = float(samples.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
        if bound is not None and n >= 1 and np.all(samples == samples[0]):
            se = no_difference_se(n, bound)
        return MonteCarloEstimate(float(samples.mean()), se)


def paired_difference(new: np.ndarray, old: np.ndarray) -> MonteCarloEstimate:
    """J(pi') - J(pi) from paired episodes: the mean paired difference and its standard
    error."""
    return MonteCarloEstimate.of(new - old)


@dataclass
class Episodes:
    """N fresh episodes of one policy. ``returns`` are discounted; the per-step arrays [T, N]
    are filled only when recorded (the held-out batch), with ``alive[t, j]`` true for the steps
    of episode j (t < its length)."""

    returns: np.ndarray  # [N] discounted returns
    lengths: np.ndarray  # [N]
    raw_obs: np.ndarray | None = None  # [T, N, ...] as the env returned them
    obs: np.ndarray | None = None  # [T, N, obs_dim] encoded as the actor saw them
    next_obs: np.ndarray | None = None  # [T, N, obs_dim] encoded observation reached at t
    actions: np.ndarray | None = None  # [T, N, ...]
    rewards: np.ndarray | None = None  # [T, N]
    terminated: np.ndarray | None = None  # [T, N]
    done: np.ndarray | None = None  # [T, N] terminated or truncated at t
    alive: np.ndarray | None = None  # [T, N]

    @property
    def steps(self) -> int:
        return int(self.lengths.sum())

    def columns(self, index: slice) -> Episodes:
        """The episodes in ``index`` (per-step arrays sliced along the episode axis)."""
        def cut(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[:, index]

        return Episodes(self.returns[index], self.lengths[index], cut(self.raw_obs),
                        cut(self.obs), cut(self.next_obs), cut(self.actions), cut(self.rewards),
                        cut(self.terminated), cut(self.done), cut(self.alive))


class GymEpisodes:
    """``copies`` x N episodes in one vector env with NEXT_STEP autoreset (the step that ends an
    episode returns its final observation, what a truncated episode bootstraps from); row
    c N + j of copy c starts where row j does.

    gymnasium's numpy vector envs keep their state as one (k, num_envs) array whose transpose is
    the observation (CartPole); their copies are made by copying state columns after the reset.
    Any other env is a SyncVectorEnv whose copies are reset with the same seeds.
    """

    def __init__(self, env_id: str, make_env: Callable[[], gym.Env], n: int, copies: int,
                 kwargs: dict):
        self.n, self.copies = n, copies
        self.env_id, self.kwargs = env_id, kwargs
        self.envs: gym.vector.VectorEnv | None = None
        if gym.spec(env_id).vector_entry_point is not None:
            try:
                self.envs = gym.make_vec(env_id, n * copies,
                                         vectorization_mode="vector_entry_point", **kwargs)
            except TypeError:  # kwargs the vector entry point does not take
                self.envs = None
            if self.envs is not None and not self._state_copyable():
                self.envs.close()
                self.envs = None
        self.vector_state = self.envs is not None
        if self.envs is None:
            self.envs = gym.vector.SyncVectorEnv(
                [make_env for _ in range(n * copies)], copy=False,
                autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)
        self.action_space = self.envs.single_action_space

    def _state_copyable(self) -> bool:
        obs, _ = self.envs.reset(seed=0)
        state = getattr(self.envs.unwrapped, "state", None)
        return isinstance(state, np.ndarray) and state.shape[-1] == self.n * self.copies \
            and np.array_equal(obs, state.T.astype(obs.dtype))

    def reset(self, seeds: np.ndarray) -> np.ndarray:
        if not self.vector_state:
            return self.envs.reset(seed=[int(s) for s in seeds] * self.copies)[0]
        obs, _ = self.envs.reset(seed=int(seeds[0]))
        state = self.envs.unwrapped.state
        state[..., self.n:] = np.tile(state[..., : self.n], self.copies - 1)
        return state.T.astype(obs.dtype)

    def step(self, actions: np.ndarray, _uniform: np.ndarray):
        obs, reward, terminated, truncated, _ = self.envs.step(actions)
        return obs, np.asarray(reward, np.float64), terminated, truncated

    def close(self) -> None:
        self.envs.close()


class MergedEpisodes:
    """The CartPole episodes of several runs' samplers stepped as ONE ``CartPoleVectorEnv``
    (a vector step costs about the same for 16 envs as for 160): each run's env is reset by
    its own sampler (its seeds), then the columns of all runs are copied side by side. The
    physics is elementwise, so every column's numbers are its run's own; a column whose
    episode ended is reset by the vector env at the next step (NEXT_STEP), as alone, and no
    longer counts."""

    def __init__(self, parts: list[GymEpisodes]):
        self.parts = parts
        self.bounds = np.cumsum([0, *(p.n * p.copies for p in parts)])
        self.engine = state_vector_env(parts[0].env_id, int(self.bounds[-1]), parts[0].kwargs)

    @staticmethod
    def of(parts: list) -> MergedEpisodes | None:
        """Merged stepping of these runs' episode envs; None for one run, or unless every one
        is gymnasium's CartPoleVectorEnv with the same id and kwargs."""
        from gymnasium.envs.classic_control.cartpole import CartPoleVectorEnv

        if len(parts) < 2 or not all(
                isinstance(p, GymEpisodes) and isinstance(p.envs.unwrapped, CartPoleVectorEnv)
                and (p.env_id, p.kwargs) == (parts[0].env_id, parts[0].kwargs) for p in parts):
            return None
        return MergedEpisodes(parts)

    def start(self) -> None:
        """Copy every run's freshly reset columns in (after each run's ``reset``)."""
        engine, parts = self.engine.unwrapped, [p.envs.unwrapped for p in self.parts]
        engine.state = np.concatenate([p.state for p in parts], axis=1)
        engine.steps = np.concatenate([p.steps for p in parts])
        engine.prev_done = np.concatenate([p.prev_done for p in parts])

    def step(self, actions: list[np.ndarray]) -> list[tuple]:
        """One step of every run's envs with its ``actions``: per run what
        :meth:`GymEpisodes.step` returns."""
        obs, reward, terminated, truncated, _ = self.engine.step(np.concatenate(actions))
        reward = np.asarray(reward, np.float64)
        return [(obs[lo:hi], reward[lo:hi], terminated[lo:hi], truncated[lo:hi])
                for lo, hi in zip(self.bounds[:-1], self.bounds[1:])]

    def close(self) -> None:
        self.engine.close()


class TabularEpisodes:
    """``copies`` x N episodes of a tabular model (P, R, mu), truncated after ``horizon``
    steps, exactly as :class:`trpo_lab.envs.tabular.TabularEnv` samples them, but all at once by
    inverse CDFs; the copies use the same uniforms.

    Next states come from one sorted array over the nonzero entries of P's CSR form: entry k of
    row r = s A + a holds r + (cumulative probability within the row), so the next state of
    (s, a) with uniform u is the column of the first entry above r + u (O(N log nnz) a step,
    no dense [S, A, S] array).
    """

    def __init__(self, mdp, horizon: int, n: int, copies: int,
                 components: tuple[int, ...] = ()):
        """``components``: the env's action factorisation (MultiDiscrete actions, joint index
        in C order), () for Discrete actions."""
        self.mdp, self.horizon, self.n, self.copies = mdp, horizon, n, copies
        self.components = tuple(components)
        csr = mdp.transition_csr
        rows = np.repeat(np.arange(csr.shape[0]), np.diff(csr.indptr))
        within = np.empty_like(csr.data)
        for r in range(csr.shape[0]):
            lo, hi = csr.indptr[r], csr.indptr[r + 1]
            within[lo:hi] = np.cumsum(csr.data[lo:hi])
            within[hi - 1] = 1.0
        self.keys = rows + within
        self.columns = csr.indices
        self.num_actions = mdp.num_actions
        self.mu_cdf = np.cumsum(mdp.mu)
        self.mu_cdf[-1] = 1.0
        self.action_space = gym.spaces.MultiDiscrete(list(self.components)) \
            if self.components else gym.spaces.Discrete(mdp.num_actions)
        self.state = np.zeros(n * copies, np.int64)
        self.t = 0

    def reset(self, seeds: np.ndarray) -> np.ndarray:
        uniform = np.random.default_rng(int(seeds[0])).random(self.n)
        self.state = np.tile(np.searchsorted(self.mu_cdf, uniform, side="right"), self.copies)
        self.t = 0
        return self.state.copy()

    def step(self, actions: np.ndarray, uniform: np.ndarray):
        actions = np.asarray(actions, np.int64)
        if self.components:
            actions = np.ravel_multi_index(tuple(actions.T), self.components)
        row = self.state * self.num_actions + actions
        reward = self.mdp.R[self.state, actions]
        entry = np.searchsorted(self.keys, row + np.tile(uniform, self.copies), side="right")
        self.state = self.columns[entry].astype(np.int64)
        self.t += 1
        truncated = np.full(self.n * self.copies, self.t >= self.horizon)
        return self.state.copy(), reward, np.zeros(self.n * self.copies, bool), truncated

    def close(self) -> None:
        pass


def episode_envs(env_cfg: EnvConfig, gamma: float, n: int, copies: int,
                 mdp=None) -> GymEpisodes | TabularEpisodes:
    """``copies`` x N paired episodes side by side: the tabular model when there is one, else
    gymnasium's vector entry point if the id has one, else a SyncVectorEnv."""
    if mdp is not None:
        return TabularEpisodes(mdp, tabular_horizon(env_cfg, gamma), n, copies,
                               tuple(env_cfg.action_components))
    make = env_factory(env_cfg, gamma)  # imports the module of a module:EnvId first
    return GymEpisodes(registered_id(env_cfg.id), make, n, copies, make_kwargs(env_cfg, gamma))


class EpisodeSampler:
    """Fresh episodes of one policy per env copy, all in lockstep; see the module docstring.

    :meth:`run` steps actor i in copy i; the copies start alike and every actor gets the same
    noise, so row j of every copy is one paired episode (common random numbers across the
    actors). One call of the stacked actors and one vector-env step per time step.
    """

    def __init__(self, envs: GymEpisodes | TabularEpisodes, gamma: float, seed: int):
        self.envs, self.episodes, self.copies = envs, envs.n, envs.copies
        self.gamma, self.seed = gamma, seed
        self.action_space = envs.action_space

    def run(self, actors: list[NumpyActor], encode: Callable[[np.ndarray], np.ndarray],
            key: tuple[int, ...], record: bool = False) -> list[Episodes]:
        """Episodes of each actor with the random numbers of ``key``; with ``record``, the
        first actor's steps are kept (for a held-out batch)."""
        return run_samplers([SamplerRequest(self, actors, encode, key, record)])[0]

    def close(self) -> None:
        self.envs.close()


def deterministic_returns(make_env: Callable[[], gym.Env], actor: NumpyActor,
                          encode: Callable[[np.ndarray], np.ndarray], episodes: int,
                          seed: int) -> list[float]:
    """Undiscounted returns of ``episodes`` fresh episodes with the deterministic policy: the
    figure papers and the rl-baselines3-zoo report. Reset seeds come from a SeedSequence of
    the run's seed, so runs with neighbouring seeds do not share start states."""
    env = make_env()
    space = env.action_space
    returns = []
    reset_seeds = np.random.SeedSequence([seed, 0xE7A1]).generate_state(episodes)
    try:
        for reset_seed in reset_seeds:
            obs, _ = env.reset(seed=int(reset_seed))
            total, done, steps = 0.0, False, 0
            while not done and steps < MAX_EVAL_STEPS:
                action = to_env_actions(space, actor.mode(encode(np.asarray(obs)[None])))[0]
                obs, reward, terminated, truncated, _ = env.step(action)
                total += float(reward)
                done, steps = terminated or truncated, steps + 1
            returns.append(total)
    finally:
        env.close()
    return returns


def fast_engine(requests: list[SamplerRequest], merged: MergedEpisodes | None):
    """The CartPole vector env (unwrapped) that every run's columns step in, for
    :func:`~trpo_lab.envs.cartpole_physics.vector_step` (gymnasium's step to the bit, without
    its per-call checks): the merged env of a group, a lone run's own env; None otherwise."""
    if merged is not None:
        engine = merged.engine
    elif len(requests) == 1 and isinstance(requests[0].sampler.envs, GymEpisodes) \
            and requests[0].sampler.envs.vector_state:
        engine = requests[0].sampler.envs.envs
    else:
        return None
    return engine if engine is engine.unwrapped and fast_steppable(engine) else None


#: run_samplers steps CartPole episodes on their live columns (trpo_lab/cartpole_columns.py);
#: tests turn it off to compare with the general loop
LIVE_COLUMNS = True


def cartpole_columns(requests: list[SamplerRequest]) -> bool:
    """Every request's envs are gymnasium's CartPoleVectorEnv (Euler, unwrapped) with the same
    id and kwargs, which :mod:`trpo_lab.cartpole_columns` steps."""
    envs = [request.sampler.envs for request in requests]
    return LIVE_COLUMNS and all(
        isinstance(e, GymEpisodes) and e.vector_state and e.envs is e.envs.unwrapped
        and fast_steppable(e.envs) and (e.env_id, e.kwargs) == (envs[0].env_id, envs[0].kwargs)
        for e in envs)


def run_cartpole(requests: list[SamplerRequest]) -> list[list[Episodes]]:
    """:func:`run_samplers` on CartPole columns (:func:`cartpole_columns`)."""
    out = []
    for request, (returns, lengths, recorded) in zip(
            requests, live_columns.run(requests, NOISE_STEPS, MAX_EVAL_STEPS)):
        episodes = [Episodes(returns[i], lengths[i]) for i in range(len(request.actors))]
        if recorded is not None:
            raw_obs, obs, acts, rewards, terminated, done, alive, next_raw = recorded
            T, n = obs.shape[:2]  # noqa: N806
            next_obs = request.encode(next_raw.reshape(T * n, *next_raw.shape[2:])).reshape(
                obs.shape)
            episodes[0] = Episodes(returns[0], lengths[0], raw_obs, obs, next_obs, acts,
                                   rewards, terminated, done, alive)
        out.append(episodes)
    return out


@dataclass
class SamplerRequest:
    """One run's :meth:`EpisodeSampler.run` call, for :func:`run_samplers`."""

    sampler: EpisodeSampler
    actors: list[NumpyActor]
    encode: Callable[[np.ndarray], np.ndarray]
    key: tuple[int, ...]
    record: bool = False
    #: rows [0, copy_rows) of the copies after the first are read (None: all of them); the
    #: CartPole evaluator does not step the others (the held-out rows of pi'), whose returns and
    #: lengths come back 0
    copy_rows: int | None = None


def run_samplers(requests: list[SamplerRequest],
                 failures: dict[int, Exception] | None = None) -> list[list[Episodes]]:
    """:meth:`EpisodeSampler.run` for several runs in lockstep (a group of runs,
    trpo_lab.group): one call of all runs' stacked actors per step; each run's envs, encoder
    and random numbers its own, so each run's episodes are those of its own call. The samplers
    have the same number of episodes and copies. A run whose episodes have all ended stops
    counting (with merged CartPole envs its columns go on stepping, unread); the loop ends with
    the last one. With ``failures`` given, a run whose env raises stops there instead of
    raising: the exception goes into ``failures[r]`` and that run's episodes are garbage."""
    R = len(requests)  # noqa: N806
    first = requests[0].sampler
    n, m = first.episodes, first.copies
    for request in requests:
        if len(request.actors) != m:
            raise ValueError(f"the sampler steps {m} env copies: pass {m} actors")
    if cartpole_columns(requests):
        return run_cartpole(requests)
    stacked = NumpyActor.stack([a.as_float32() for r in requests for a in r.actors])
    policy_rngs, env_rngs, raws = [], [], []
    for request in requests:
        sampler = request.sampler
        seeds = np.random.SeedSequence([sampler.seed, *request.key]).generate_state(n)
        policy_rngs.append(np.random.default_rng([sampler.seed, *request.key, 1]))
        env_rngs.append(np.random.default_rng([sampler.seed, *request.key, 2]))
        raws.append(sampler.envs.reset(seeds))
    merged = MergedEpisodes.of([request.sampler.envs for request in requests])
    if merged is not None:
        merged.start()
    engine = fast_engine(requests, merged)
    returns = np.zeros((R, m, n))
    lengths = np.zeros((R, m, n), np.int64)
    discount = np.ones(R)
    gammas = np.array([request.sampler.gamma for request in requests])
    active = np.ones((R, m, n), bool)
    running = np.ones(R, bool)
    steps: list[list[tuple]] = [[] for _ in range(R)]
    # the policy's inputs, written in place per run (a finished run's rows keep their last
    # values: with merged CartPole envs its columns go on stepping, unread), and its noise,
    # drawn NOISE_STEPS steps at a time: one draw of k n values is the k draws of n in a row
    x: np.ndarray | None = None
    noise: np.ndarray | None = None
    for t in range(MAX_EVAL_STEPS):
        live = np.flatnonzero(running)
        for r in live:
            x_r = requests[r].encode(raws[r])
            if x is None:
                x = np.zeros((R, m * n, x_r.shape[-1]), x_r.dtype)
            x[r] = x_r
        if t % NOISE_STEPS == 0:
            for r in live:
                block = stacked.noise(policy_rngs[r], NOISE_STEPS * n)
                block = block.reshape(NOISE_STEPS, 1, n, *block.shape[1:])
                if noise is None:
                    noise = np.zeros((NOISE_STEPS, R, m, *block.shape[2:]), np.float32)
                noise[:, r] = block  # the same noise for every copy (common random numbers)
        step_noise = noise[t % NOISE_STEPS]
        actions = stacked.sample_from_noise(x.reshape(R * m, n, -1),
                                            step_noise.reshape(R * m, *step_noise.shape[2:]))
        actions = actions.reshape(R, m, n, *actions.shape[2:])
        if engine is not None:  # every run's columns in one CartPole vector env
            obs, reward32, terminated_all, _ = vector_step(engine, actions.reshape(-1))
            reward = reward32.astype(np.float64).reshape(R, m, n)
            done = engine.prev_done.reshape(R, m, n)  # terminated or truncated, a new array
            terminated_all = terminated_all.reshape(R, m * n)
            obs = obs.reshape(R, m * n, -1)
            for r in live:
                if requests[r].record:
                    steps[r].append((raws[r][:n], x[r, :n].copy(), actions[r, 0],
                                     reward[r, 0], terminated_all[r, :n], done[r, 0],
                                     active[r, 0].copy(), obs[r, :n]))
                raws[r] = obs[r]
        else:
            all_actions = [actions[r].reshape(m * n, *actions.shape[3:]) for r in range(R)]
            stepped = merged.step(all_actions) if merged is not None else None
            reward = np.zeros((R, m, n))
            done = np.zeros((R, m, n), bool)
            for r in live:
                sampler = requests[r].sampler
                if stepped is not None:
                    next_raw, run_reward, terminated, truncated = stepped[r]
                else:
                    flat_actions = to_env_actions(sampler.action_space, all_actions[r])
                    try:
                        next_raw, run_reward, terminated, truncated = sampler.envs.step(
                            flat_actions, env_rngs[r].random(n))
                    except Exception as error:  # noqa: BLE001  (the env's own code: its run fails)
                        if failures is None:
                            raise
                        failures[r] = error
                        active[r] = False
                        continue
                reward[r] = run_reward.reshape(m, n)
                done[r] = np.logical_or(terminated, truncated).reshape(m, n)
                if requests[r].record:
                    steps[r].append((raws[r][:n], x[r, :n].copy(), actions[r, 0],
                                     reward[r, 0], terminated[:n], done[r, 0],
                                     active[r, 0].copy(), next_raw[:n]))
                raws[r] = next_raw
        # every run at once (a finished run's rows are inactive: they add nothing)
        returns += np.where(active, discount[:, None, None] * reward, 0.0)
        lengths += active
        active &= ~done
        running = active.any(axis=(1, 2))
        discount *= gammas
        if not running.any():
            break
    if merged is not None:
        merged.close()
    out = []
    for r, request in enumerate(requests):
        episodes = [Episodes(returns[r, i], lengths[r, i]) for i in range(m)]
        if request.record and (failures is None or r not in failures):
            raw_obs, obs, acts, rewards, terminated, done, alive, next_raw = (
                np.stack(column) for column in zip(*steps[r]))
            T = obs.shape[0]  # noqa: N806
            next_obs = request.encode(next_raw.reshape(T * n, *next_raw.shape[2:])).reshape(
                obs.shape)
            episodes[0] = Episodes(returns[r, 0], lengths[r, 0], raw_obs, obs, next_obs, acts,
                                   rewards, terminated, done, alive)
        out.append(episodes)
    return out
