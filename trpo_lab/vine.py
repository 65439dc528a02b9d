"""The vine sampler of the TRPO paper (Schulman et al. 2015, section 5.2).

Per update:

1. **Trunk.** The collector steps the run's ``num_envs`` envs ``batch_steps / num_envs`` steps
   with the old policy, exactly as the single-path sampler does (the same batch trains the
   critic and gives the rollout statistics).
2. **Rollout set.** N = ``algo.vine.states`` of the trunk's M = ``batch_steps`` states, drawn
   uniformly without replacement before the trunk is stepped (from a generator seeded by the
   run's seed and the collector's step count: the same on a resume); the collector snapshots
   each env there (:mod:`trpo_lab.envs.snapshot`).
3. **Branches.** At each rollout state s_n, actions a_1..a_K: every action of a Discrete space
   (``proposal=all``), K from the old policy (``policy``) or K uniform ones (``uniform``). Each
   branch restores the snapshot into an env of its own, takes its action, then follows the old
   policy until the episode ends (termination or the env's own time limit, whose counter is in
   the snapshot) or for ``horizon`` steps in all, cut there with the bootstrap
   gamma^H V(s_H) (the critic, in units of reward). Qhat(s_n, a_k) = sum_t gamma^t r_t.
   With common random numbers the K branches of a state share their env noise and their
   policy noise (one seed, two independent streams: env and policy); without, each branch has
   its own seed. Branch observations go through the update's frozen encoder; no branch step
   updates the observation or reward statistics.
4. **Batch.** Rows (s_n, a_k) with c_nk: pi_old(a_k|s_n) for ``all``; otherwise the
   self-normalised importance weights u_nk / sum_k u_nk, u = pi_old(a|s) / q(a|s). Then

       weights_nk    = c_nk / N                       (surrogate and KL: mean over the set)
       advantages_nk = Qhat_nk - b_n, b_n = sum_k c_nk Qhat_nk
       dl_weights_nk = c_nk * (M / N) * gamma^t_n / n_ep     (units of J)
       groups        = n (sampled actions only)

   so that the surrogate sum_i w_i ratio_i A_i is (1/N) sum_n sum_a pi_theta(a|s_n) Qhat(s_n,a)
   - const for ``all`` (sum_a pi_old ratio = sum_a pi_theta = 1), and with the ratios
   self-normalised per state (:func:`trpo_lab.numerics.self_normalised`) it is
   (1/N) sum_n sum_k w_k Qhat_k / sum_k w_k - const, w_k = pi_theta(a_k|s_n) / q(a_k|s_n), for
   sampled actions; both are invariant to the baseline b_n, which only makes the logged raw
   advantages advantages. gamma^t_n / n_ep is the single-path batch's dl weight of that
   trunk state (:func:`trpo_lab.rollout.build_batch`: t since the episode's start, n_ep the
   episodes begun in the batch) and M / N undoes the subsampling, so
   sum_i dl_weights_i (ratio_i - 1) A_i estimates dL = sum_s rho(s) sum_a pi'(a|s) A(s,a):
   unbiased for ``all`` when the trunk is whole episodes (tests/test_vine.py). For sampled
   actions the self-normalised form is consistent, not unbiased: at theta_old with
   ``proposal=policy`` its gradient is (K-1)/K of the true one in expectation.
   The constraint, the Fisher matrix, CG and the line search are TRPO's own
   (:func:`trpo_lab.algos.trpo.trpo_update_runs`) on this batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import gymnasium as gym
import numpy as np
import torch

from trpo_lab.config import Config, ConfigError, TRPOConfig, env_label
from trpo_lab.envs.snapshot import Snapshot, reseed, restore, snapshot, unsupported
from trpo_lab.policies import NumpyActor, Policy
from trpo_lab.rollout import Batch, Collector, RolloutData, critic_values, finish_batch
from trpo_lab.spaces import to_env_actions

VINE_STREAM = 0x56494E45  # "VINE": the rollout-set generator's stream, apart from the run's
BRANCHES_AT_ONCE = 256  # branches stepped side by side (one policy call per step for them)


def coupled_meeting_probability(p: np.ndarray, q: np.ndarray) -> float:
    """The probability that inverse-CDF samples of the distributions ``p`` and ``q`` (over the
    same indices, in index order) drawn from ONE shared uniform land on the same index:
    sum_j |[F_p(j-1), F_p(j)) intersected with [F_q(j-1), F_q(j))|. This is what common random
    numbers give two branches of a tabular env (:class:`trpo_lab.envs.tabular.TabularEnv`
    samples s' by the inverse CDF of its row of P); independent noise gives sum_j p_j q_j.
    Once two branches share a state they stay together (the same env and policy noise)."""
    upper_p, upper_q = np.cumsum(p), np.cumsum(q)
    lower_p, lower_q = upper_p - p, upper_q - q
    return float(np.clip(np.minimum(upper_p, upper_q) - np.maximum(lower_p, lower_q), 0.0,
                         None).sum())


def uses_vine(cfg: Config) -> bool:
    return isinstance(cfg.algo, TRPOConfig) and cfg.algo.sampler == "vine"


class VineSampler:
    """The vine sampler of one run (the module docstring): watches the collector's trunk for
    the rollout states' snapshots, then :meth:`batch` branches them."""

    def __init__(self, cfg: Config, collector: Collector, make_env: Callable[[], gym.Env]):
        self.vine, self.gamma, self.seed = cfg.algo.vine, cfg.gamma, cfg.seed
        self.normalize = cfg.normalize_advantages
        self.collector, self.make_env = collector, make_env
        env = collector.envs.envs[0]
        reason = unsupported(env)
        if reason is not None:
            name = env_label(cfg.env.name, cfg.env.id)
            raise ConfigError("algo.sampler", "vine",
                              f"env {name} ({cfg.env.id}) has no state snapshot: {reason}; "
                              "use algo.sampler=single_path")
        space = collector.action_space
        self.discrete = isinstance(space, gym.spaces.Discrete)
        proposal = self.vine.proposal
        if proposal == "all" and not self.discrete:
            raise ConfigError("algo.vine.proposal", "all",
                              f"needs a Discrete action space, {cfg.env.id} has {space}: use "
                              "policy or uniform")
        if proposal == "uniform" and isinstance(space, gym.spaces.Box) and not (
                np.isfinite(space.low).all() and np.isfinite(space.high).all()):
            raise ConfigError("algo.vine.proposal", "uniform",
                              f"needs finite action bounds, {cfg.env.id} has {space}")
        self.space = space
        self.pool: list[gym.Env] = []
        self.positions = np.empty(0, np.int64)
        self.snapshots: dict[int, Snapshot] = {}
        self.rng = np.random.default_rng()
        collector.watch = self.watch

    # ----------------------------------------------------------------- the trunk
    def watch(self, t: int, envs: list[gym.Env]) -> None:
        """Before trunk step t: at t = 0 draw this batch's rollout set (trunk rows t * num_envs
        + i); snapshot the envs at its states."""
        n_envs = len(envs)
        if t == 0:
            self.rng = np.random.default_rng(
                [self.seed, self.collector.total_steps, VINE_STREAM])
            rows = self.collector.steps * n_envs
            self.positions = np.sort(self.rng.choice(rows, size=self.vine.states, replace=False))
            self.snapshots = {}
        lo, hi = np.searchsorted(self.positions, [t * n_envs, (t + 1) * n_envs])
        for row in self.positions[lo:hi]:
            self.snapshots[int(row)] = snapshot(envs[int(row) % n_envs])

    # ----------------------------------------------------------------- the branches
    def batch(self, policy: Policy, data: RolloutData, trunk: Batch,
              encode: Callable[[np.ndarray], np.ndarray], actor: NumpyActor
              ) -> tuple[Batch, int]:
        """The vine batch of this update's trunk (``trunk``: its single-path batch, ``data``
        its rollout, ``encode`` and ``actor`` the update's frozen encoder and old policy) and
        the env steps its branches took."""
        device = trunk.obs.device
        positions = torch.as_tensor(self.positions, device=device)
        n = len(self.positions)
        obs = trunk.obs[positions]
        actions, c = self._actions(policy, actor, obs)
        k = len(actions) // n
        seeds = self.rng.integers(2**63, size=n, dtype=np.int64)
        branch_seeds = np.repeat(seeds, k) if self.vine.common_random_numbers else \
            self.rng.integers(2**63, size=n * k, dtype=np.int64)
        snaps = [self.snapshots[int(row)] for row in self.positions]
        q_hat, steps = self.branch_returns(policy, actor, encode, data.reward_scale, snaps, k,
                                      actions, branch_seeds)
        q = torch.as_tensor(q_hat, device=device).view(n, k)
        baseline = (c * q).sum(1, keepdim=True)
        horvitz = trunk.dl_weights[positions].double() * trunk.size / n
        batch = finish_batch(
            policy, obs.repeat_interleave(k, 0), actions,
            (q - baseline).reshape(-1).float(), q.reshape(-1).float(),
            baseline.expand(n, k).reshape(-1).float(), (c / n).reshape(-1).float(),
            (horvitz[:, None] * c).reshape(-1).float(), self.normalize, exact=False)
        if self.vine.proposal != "all":
            batch = replace(batch, groups=torch.arange(n, device=device).repeat_interleave(k))
        return batch, steps

    def _actions(self, policy: Policy, actor: NumpyActor, obs: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """The branched actions [N * K] (state-major) and their weights c [N, K]."""
        n, proposal = obs.shape[0], self.vine.proposal
        dtype, device = policy.head.action_dtype, obs.device
        if proposal == "all":
            k = int(self.space.n)
            actions = torch.arange(k, device=device).repeat(n)
        else:
            k = self.vine.actions
            if proposal == "policy":
                drawn = actor.sample(np.repeat(obs.cpu().numpy(), k, axis=0), self.rng)
            elif self.discrete:
                drawn = self.rng.integers(int(self.space.n), size=n * k)
            elif isinstance(self.space, gym.spaces.Box):
                drawn = self.rng.uniform(self.space.low, self.space.high,
                                         (n * k, *self.space.shape)).reshape(n * k, -1)
            else:  # MultiDiscrete, MultiBinary: uniform per component, in the head's flat form
                nvec = np.ravel(self.space.nvec) if isinstance(
                    self.space, gym.spaces.MultiDiscrete) else np.full(int(np.prod(
                        self.space.shape)), 2)
                drawn = self.rng.integers(nvec, size=(n * k, len(nvec)))
            actions = torch.as_tensor(np.asarray(drawn), dtype=dtype, device=device)
        with torch.no_grad():
            log_pi = policy.head.log_prob(policy.dist_params(obs.repeat_interleave(k, 0)),
                                          actions).double().view(n, k)
        if proposal == "all":
            c = log_pi.exp()
        elif proposal == "policy":
            c = torch.full((n, k), 1.0 / k, dtype=torch.float64, device=device)  # u = 1
        else:  # q uniform: constant per state, so u / sum u = pi_old / sum pi_old
            c = torch.softmax(log_pi, dim=1)
        return actions, c

    def _envs(self, count: int) -> list[gym.Env]:
        while len(self.pool) < count:
            self.pool.append(self.make_env())
        return self.pool[:count]

    def _env_action(self, action: np.ndarray):
        if self.discrete:
            return int(action)
        return to_env_actions(self.space, np.asarray(action)[None])[0]

    def branch_returns(self, policy: Policy, actor: NumpyActor,
                  encode: Callable[[np.ndarray], np.ndarray], reward_scale: float,
                  snaps: list[Snapshot], k: int, actions: torch.Tensor,
                  seeds: np.ndarray) -> tuple[np.ndarray, int]:
        """Qhat of every branch (branch b = state b // k, action b % k) and the env steps."""
        total = len(seeds)
        q_hat = np.zeros(total)
        first = actions.cpu().numpy()
        horizon = self.vine.horizon
        steps = 0
        for start in range(0, total, BRANCHES_AT_ONCE):
            block = range(start, min(start + BRANCHES_AT_ONCE, total))
            envs = self._envs(len(block))
            noise_rngs = []
            for env, b in zip(envs, block):
                env_seed, noise_seed = np.random.SeedSequence(int(seeds[b])).spawn(2)
                restore(env, snaps[b // k])
                reseed(env, env_seed)
                noise_rngs.append(np.random.default_rng(noise_seed))
            alive = list(range(len(block)))
            step_actions = [first[b] for b in block]
            raw: list = [None] * len(block)
            discount, tau = 1.0, 0
            while alive:
                still = []
                for j, action in zip(alive, step_actions):
                    obs, reward, terminated, truncated, _ = envs[j].step(
                        self._env_action(action))
                    q_hat[block[j]] += discount * float(reward)
                    if not (terminated or truncated):
                        raw[j] = obs
                        still.append(j)
                steps += len(alive)
                alive, tau = still, tau + 1
                discount *= self.gamma
                if not alive:
                    break
                x = encode(np.asarray([raw[j] for j in alive]))
                if horizon and tau == horizon:  # cut: bootstrap gamma^H V(s_H)
                    v = critic_values(policy, x)
                    for j, value in zip(alive, reward_scale * v):
                        q_hat[block[j]] += discount * float(value)
                    break
                noise = np.stack([actor.noise(noise_rngs[j], 1)[0] for j in alive])
                step_actions = list(actor.sample_from_noise(x, noise))
        return q_hat, steps

