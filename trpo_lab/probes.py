"""Probes of one update (``probe.every=K``): what the surrogate and the true objective look like
along lines through parameter space, and how well a batch's gradient estimates the policy
gradient as the batch grows (Ilyas et al. 2020, "A closer look at deep policy gradients").

At a probed update k, with theta_old the parameters that collected the batch and theta_new the
ones the algorithm chose, :class:`Prober` writes rows to ``probes.csv``:

- ``landscape`` rows, one per point theta_old + alpha d of a line, d the step taken
  (``direction=step``, d = theta_new - theta_old) or a seeded random direction of the same norm
  (``direction=random``): the in-sample dL estimate on the training batch (``surrogate``), on the
  held-out episodes (``surrogate_heldout``), the true J(point) - J(theta_old) (``true``; exact on
  tabular envs, else paired Monte Carlo with ``true_se``), and KL(old || point) on the batch's
  states (``kl_mean``, ``kl_max``; exact and d_pi-weighted on tabular envs, where ``bound``, the
  TRPO lower bound dL - C KLmax at the point, and ``surrogate_exact`` are exact too);
- ``gradient`` rows, one per batch size B: ``batches`` independent batches of about B fresh
  env steps of the old policy give gradient estimates g_i of dL at theta_old (the policy
  gradient, by the seed's last identity), compared with a reference gradient by cosine
  (``cosine_mean``, ``cosine_se`` over the batches), with each other (``pairwise_cosine_mean``,
  which needs no reference) and by norm (``norm_ratio_mean`` = mean |g_i| / |g_ref|,
  ``reference_norm`` = |g_ref|: near 0 once a tabular policy has converged, where cosines mean
  nothing). ``cosine_mean`` mixes two things: a batch gradient is off because it is noisy
  (variance) or because it is consistently off (bias). They are reported apart: ``mean_cosine``
  is the cosine of the mean batch gradient (1/M) sum_i g_i with the reference (the bias: near 1
  for an unbiased estimator once M x B steps resolve it, whatever B), ``relative_variance`` is
  the trace of the batch gradients' covariance (ddof 1) over |g_ref|^2 (the variance, falling
  as 1/B), ``relative_bias_sq`` an unbiased estimate of |E g_i - g_ref|^2 / |g_ref|^2 (the
  squared bias, in length and direction: 0 for an unbiased estimator up to its noise, about
  relative_variance x sqrt(2 / M) / M). The reference is the exact gradient of J on tabular
  envs (``reference_steps`` = 0) and one estimate from ``probe.reference_steps`` fresh steps
  elsewhere.

  Batches (``probe.batch_by``): ``episodes`` (the default) makes a batch of n_B = max(1,
  round(B / L)) whole episodes (L the mean length of the first round's episodes; on tabular
  envs every episode has the horizon's length), so every batch weighs the discounted
  visitation as the full gradient does (sum_t gamma^t from each reset): with exact advantages
  E[g_i] is the exact gradient for every B, and ``batch_episodes`` says what n_B was;
  ``steps`` takes exactly B steps of whole episodes in order, the last one cut (Ilyas et al.'s
  batching): a batch shorter than an episode sees only its first steps, a biased direction,
  not a noisy one.

Every probe batch is collected with the old policy in envs of its own (never the training env,
never trained on), counted in ``probe/env_steps`` and seeded by (seed, update), so a resumed run
writes the same rows. The parameters are back at theta_new when a probe returns.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from trpo_lab.algos.common import heldout_improvement, predicted_improvement
from trpo_lab.config import Config, TRPOConfig
from trpo_lab.evaluation import (
    Episodes,
    EpisodeSampler,
    episode_envs,
    paired_difference,
)
from trpo_lab.numerics import flat_grad, set_flat_params
from trpo_lab.policies import NumpyActor, Policy
from trpo_lab.rollout import Batch, HeldoutBatch, exact_batch, heldout_batch

PROBES = "probes.csv"

COLUMNS = [
    "iteration", "env_steps", "probe",
    # landscape rows
    "direction", "line", "alpha", "surrogate", "surrogate_heldout", "surrogate_heldout_se",
    "surrogate_exact", "true", "true_se", "kl_mean", "kl_max", "bound", "kl_limit",
    # gradient rows
    "batch_steps", "batches", "cosine_mean", "cosine_se", "pairwise_cosine_mean",
    "norm_ratio_mean", "reference_norm", "reference_steps", "batch_episodes",
    "mean_cosine", "relative_variance", "relative_bias_sq",
]

LANDSCAPE_COLUMNS = COLUMNS[:COLUMNS.index("batch_steps")]
GRADIENT_COLUMNS = COLUMNS[:3] + COLUMNS[COLUMNS.index("batch_steps"):]

#: the per-step [T, N, ...] arrays of recorded :class:`Episodes`, in their order
STEP_ARRAYS = ("raw_obs", "obs", "next_obs", "actions", "rewards", "terminated", "done", "alive")
#: episodes per round of the gradient batches' sampler (one vector env of this many)
ROUND_EPISODES = 512
#: offsets of the probe samplers' seeds from the run's seed (the evaluator uses + 10,000)
LANDSCAPE_SEED, GRADIENT_SEED, DIRECTION_SEED = 20_000, 30_000, 40_000


# ------------------------------------------------------------------ pure numerics

def gradient_agreement(estimates: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """How M independent gradient estimates [M, P] agree with ``reference`` [P] and with each
    other: mean and standard error over the estimates of cos(g_i, g_ref), the mean of
    cos(g_i, g_j) over the M(M-1)/2 pairs, the mean of |g_i| / |g_ref|, and |g_ref|; apart,
    the bias, cos(mean_i g_i, g_ref) and (|mean_i g_i - g_ref|^2 - V / M) / |g_ref|^2 (an
    unbiased estimate of |E g - g_ref|^2 / |g_ref|^2 for an exact reference), and the variance
    V / |g_ref|^2, V = sum_p Var_i(g_ip) (ddof 1): bias^2 + variance is the mean squared error
    of one batch gradient, relative to |g_ref|^2."""
    m = estimates.shape[0]
    norms = np.linalg.norm(estimates, axis=1)
    ref_norm = float(np.linalg.norm(reference))
    unit = estimates / np.where(norms > 0, norms, np.nan)[:, None]
    to_reference = unit @ reference / ref_norm if ref_norm > 0 else np.full(m, np.nan)
    pairs = (unit @ unit.T)[np.triu_indices(m, k=1)]
    mean = estimates.mean(axis=0)
    mean_norm = float(np.linalg.norm(mean))
    spread = float(estimates.var(axis=0, ddof=1).sum()) if m > 1 else math.nan
    return {
        "mean_cosine": float(mean @ reference / (mean_norm * ref_norm))
        if mean_norm > 0 and ref_norm > 0 else math.nan,
        "relative_variance": spread / ref_norm**2 if ref_norm > 0 else math.nan,
        "relative_bias_sq": (float(np.sum((mean - reference) ** 2)) - spread / m) / ref_norm**2
        if ref_norm > 0 and m > 1 else math.nan,
        "cosine_mean": float(np.mean(to_reference)),
        "cosine_se": float(np.std(to_reference, ddof=1) / np.sqrt(m)) if m > 1 else math.nan,
        "pairwise_cosine_mean": float(np.mean(pairs)) if pairs.size else math.nan,
        "norm_ratio_mean": float(np.mean(norms) / ref_norm) if ref_norm > 0 else math.nan,
        "reference_norm": ref_norm,
    }


def random_direction(like: torch.Tensor, norm: float, seed: list[int]) -> torch.Tensor:
    """A direction uniform on the sphere of radius ``norm`` (standard normal, rescaled), from
    ``np.random.default_rng(seed)``."""
    draw = np.random.default_rng(seed).standard_normal(like.numel())
    length = float(np.linalg.norm(draw))
    return torch.as_tensor(draw * (norm / length), dtype=like.dtype, device=like.device)


def first_steps(episodes: Episodes, start: int, steps: int) -> tuple[Episodes, int] | None:
    """The first ``steps`` steps of the recorded episodes from column ``start`` on, in episode
    order, and the column after the last one used; None if they hold fewer steps.

    The last episode used is cut after the steps it contributes: its last kept step is marked
    done (not terminated), so GAE bootstraps from the critic there as at the end of a rollout.
    Episodes are never shared between two calls, so successive batches are independent.
    """
    lengths = episodes.lengths[start:]
    total = np.cumsum(lengths)
    if total.size == 0 or total[-1] < steps:
        return None
    used = int(np.searchsorted(total, steps)) + 1  # columns start .. start + used - 1
    chunk = episodes.columns(slice(start, start + used))
    keep = steps - (int(total[used - 2]) if used > 1 else 0)  # steps of the last episode
    lengths = chunk.lengths.copy()
    lengths[-1] = keep
    horizon = int(lengths.max())  # drop the padding after the chunk's longest episode
    chunk = replace(chunk, **{name: getattr(chunk, name)[:horizon] for name in STEP_ARRAYS})
    alive, done = chunk.alive.copy(), chunk.done.copy()
    alive[keep:, -1] = False
    done[keep - 1, -1] = True
    return replace(chunk, lengths=lengths, alive=alive, done=done), start + used


def join_episodes(parts: list[Episodes]) -> Episodes:
    """Recorded episodes side by side: the per-step arrays padded in time (not alive) to the
    longest part, then concatenated along the episode axis."""
    if len(parts) == 1:
        return parts[0]
    horizon = max(part.alive.shape[0] for part in parts)

    def column(name: str) -> np.ndarray:
        arrays = []
        for part in parts:
            a = getattr(part, name)
            pad = [(0, horizon - a.shape[0])] + [(0, 0)] * (a.ndim - 1)
            arrays.append(np.pad(a, pad))
        return np.concatenate(arrays, axis=1)

    return Episodes(np.concatenate([p.returns for p in parts]),
                    np.concatenate([p.lengths for p in parts]),
                    *(column(name) for name in STEP_ARRAYS))


def probe_tables(text: str) -> dict[str, tuple[list[str], list[list[Any]]]]:
    """The rows of a probes.csv as W&B tables ``probes_landscape`` and ``probes_gradient``:
    name -> (columns, rows), each with its own columns, numbers as floats (NaN when empty)."""
    tables: dict[str, tuple[list[str], list[list[Any]]]] = {}
    records = list(csv.DictReader(io.StringIO(text)))
    for kind, columns in (("landscape", LANDSCAPE_COLUMNS), ("gradient", GRADIENT_COLUMNS)):
        rows = [[row[c] if c in ("probe", "direction") else
                 float(row[c]) if row[c] else math.nan for c in columns]
                for row in records if row["probe"] == kind]
        if rows:
            tables[f"probes_{kind}"] = (columns, rows)
    return tables


# ------------------------------------------------------------------ the prober

@dataclass
class UpdateContext:
    """What a probe of update k needs from the trainer; the policy holds theta_new."""

    iteration: int
    env_steps: int
    batch: Batch
    theta_old: torch.Tensor
    theta_new: torch.Tensor
    actor_old: NumpyActor
    encode_old: Callable[[np.ndarray], np.ndarray]
    reward_scale: float
    heldout: HeldoutBatch | None
    pi_old: np.ndarray | None = None  # tabular: the old policy's table and exact evaluation
    old_eval: Any = None
    exact_advantages: np.ndarray | None = None  # the run updates on exact advantages


class Prober:
    """Landscape and gradient probes of an update, written as rows of probes.csv."""

    def __init__(self, cfg: Config, policy: Policy, mdp=None, exact=None):
        self.cfg, self.probe, self.policy = cfg, cfg.probe, policy
        self.mdp, self.exact = mdp, exact
        self.lines = [("step", 0)] + [("random", i + 1)
                                      for i in range(self.probe.random_directions)]
        self.points = [(line, alpha) for line in self.lines for alpha in self.probe.alphas]
        self.env_steps = 0  # probe env steps of the last probe
        self.landscape_sampler: EpisodeSampler | None = None
        if mdp is None and self.points:
            self.landscape_sampler = EpisodeSampler(
                episode_envs(cfg.env, cfg.gamma, self.probe.episodes, 1 + len(self.points)),
                cfg.gamma, cfg.seed + LANDSCAPE_SEED)
        self.gradient_sampler: EpisodeSampler | None = None
        if self.probe.batch_steps:
            self.gradient_sampler = EpisodeSampler(
                episode_envs(cfg.env, cfg.gamma, ROUND_EPISODES, 1, mdp), cfg.gamma,
                cfg.seed + GRADIENT_SEED)
        self.kl_limit = float(cfg.algo.delta) if isinstance(cfg.algo, TRPOConfig) else math.nan

    def due(self, iteration: int) -> bool:
        return self.probe.every > 0 and iteration % self.probe.every == 0

    def run(self, update: UpdateContext) -> list[dict[str, Any]]:
        """The probe rows of ``update``; the actor is at theta_new before and after."""
        self.env_steps = 0
        base = {"iteration": update.iteration, "env_steps": update.env_steps}
        params = self.policy.actor_parameters()
        try:
            rows = [base | row for row in self._landscape(update, params)]
            rows += [base | row for row in self._gradients(update, params)]
        finally:
            set_flat_params(params, update.theta_new)
        return rows

    # -------------------------------------------------------------- landscape
    def _directions(self, update: UpdateContext) -> dict[tuple[str, int], torch.Tensor]:
        step = update.theta_new - update.theta_old
        norm = float(step.norm())
        out = {("step", 0): step}
        for line in self.lines[1:]:
            out[line] = random_direction(step, norm, [self.cfg.seed + DIRECTION_SEED,
                                                      update.iteration, line[1]])
        return out

    def _point(self, update: UpdateContext, d: torch.Tensor, line: tuple[str, int],
               alpha: float) -> torch.Tensor:
        if alpha == 0.0:
            return update.theta_old
        if alpha == 1.0 and line[0] == "step":
            return update.theta_new  # exactly the new policy, not theta_old + (new - old)
        return update.theta_old + alpha * d

    def _landscape(self, update: UpdateContext, params) -> list[dict[str, Any]]:
        if not self.points:
            return []
        directions = self._directions(update)
        batch = update.batch
        rows, actors = [], []
        for line, alpha in self.points:
            theta = self._point(update, directions[line], line, alpha)
            set_flat_params(params, theta)
            with torch.no_grad():
                dist = self.policy.dist_params(batch.obs)
                kl = self.policy.head.kl(batch.old_params, dist)
                row = {"probe": "landscape", "direction": line[0], "line": line[1],
                       "alpha": alpha, "kl_limit": self.kl_limit,
                       "surrogate": float(predicted_improvement(self.policy, batch, dist)),
                       "kl_mean": float((batch.weights * kl).sum()), "kl_max": float(kl.max())}
                if update.heldout is not None:
                    dl, se = heldout_improvement(self.policy, update.heldout)
                    row |= {"surrogate_heldout": dl, "surrogate_heldout_se": se}
            if self.mdp is not None:
                row |= self._exact_point(update)
            else:
                actors.append(self.policy.numpy_actor())
            rows.append(row)
        if self.landscape_sampler is not None:
            runs = self.landscape_sampler.run([update.actor_old, *actors], update.encode_old,
                                              (update.iteration,))
            self.env_steps += sum(run.steps for run in runs)
            for row, run in zip(rows, runs[1:]):
                dj = paired_difference(run.returns, runs[0].returns)
                row |= {"true": dj.mean, "true_se": dj.se}
        return rows

    def _exact_point(self, update: UpdateContext) -> dict[str, float]:
        """Exact J(point) - J(old), dL, KL (d_pi-weighted) and TRPO's bound at the point."""
        pi = self.policy.numpy_actor().probabilities(np.eye(self.mdp.num_states))
        pair = self.exact.compare(self.mdp, update.pi_old, pi, self.cfg.gamma,
                                  old=update.old_eval)
        return {"true": pair.true_improvement, "true_se": 0.0,
                "surrogate_exact": pair.surrogate_improvement, "kl_mean": pair.kl_mean,
                "kl_max": pair.kl_max, "bound": pair.bound_trpo}

    # -------------------------------------------------------------- gradients
    def _gradients(self, update: UpdateContext, params) -> list[dict[str, Any]]:
        sizes = list(self.probe.batch_steps)
        if not sizes:
            return []
        set_flat_params(params, update.theta_old)
        batches = self._episode_batches(update, sizes * self.probe.batches + (
            [] if self.mdp is not None else [self.probe.reference_steps]))
        if self.mdp is not None:
            reference = exact_batch(self.policy, update.pi_old, update.old_eval.A,
                                    update.old_eval.rho, self.cfg.gamma, False)
            reference_grad, reference_steps = self._gradient(reference), 0
        else:
            reference_grad = self._gradient(self._heldout(update, batches.pop()).batch)
            reference_steps = self.probe.reference_steps
        rows = []
        for i, size in enumerate(sizes):
            chunks = batches[i::len(sizes)]
            grads = np.stack([self._gradient(self._heldout(update, chunk).batch)
                              for chunk in chunks])
            by_episodes = self.probe.batch_by == "episodes"
            rows.append({"probe": "gradient", "batch_steps": size,
                         "batches": self.probe.batches, "reference_steps": reference_steps,
                         "batch_episodes": chunks[0].returns.size if by_episodes else math.nan}
                        | gradient_agreement(grads, reference_grad))
        return rows

    def _gradient(self, batch: Batch) -> np.ndarray:
        params = self.policy.actor_parameters()
        return flat_grad(predicted_improvement(self.policy, batch),
                         params).double().cpu().numpy()

    def _heldout(self, update: UpdateContext, episodes: Episodes) -> HeldoutBatch:
        return heldout_batch(self.policy, episodes, self.cfg.gamma, self.cfg.gae_lambda,
                             update.reward_scale, update.exact_advantages)

    def _episode_batches(self, update: UpdateContext, sizes: list[int]) -> list[Episodes]:
        """Independent batches of the old policy, one per entry of ``sizes`` (env steps), taken
        in order from rounds of :data:`ROUND_EPISODES` fresh episodes keyed by (update, round):
        ``probe.batch_by=steps`` exactly ``sizes[i]`` steps (:func:`first_steps`);
        ``episodes`` max(1, round(sizes[i] / L)) whole episodes, L the mean length of the
        first round's episodes (fixed before any batch is taken)."""
        out: list[Episodes] = []
        pool: Episodes | None = None
        column, round_index, mean_length = 0, 0, math.nan

        def take(size: int) -> tuple[Episodes, int] | None:
            if pool is None:
                return None
            if self.probe.batch_by == "steps":
                return first_steps(pool, column, size)
            n = max(1, round(size / mean_length))
            if pool.returns.size - column < n:
                return None
            return pool.columns(slice(column, column + n)), column + n

        for size in sizes:
            taken = take(size)
            while taken is None:  # not enough left: append a fresh round
                fresh = self.gradient_sampler.run([update.actor_old], update.encode_old,
                                                  (update.iteration, round_index),
                                                  record=True)[0]
                self.env_steps += fresh.steps
                if round_index == 0:
                    mean_length = float(fresh.lengths.mean())
                round_index += 1
                rest = [] if pool is None else [pool.columns(slice(column, None))]
                pool, column = join_episodes([*rest, fresh]), 0
                taken = take(size)
            chunk, column = taken
            out.append(chunk)
        return out

    def close(self) -> None:
        for sampler in (self.landscape_sampler, self.gradient_sampler):
            if sampler is not None:
                sampler.close()
