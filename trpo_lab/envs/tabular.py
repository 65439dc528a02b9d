"""Exactly solvable tabular MDPs (GARNET, chain, gridworld) and a gymnasium env that samples them.

A :class:`TabularMDP` is the model ``(P, R, mu)``:

- ``P[s, a, s'] = P(s_{t+1} = s' | s_t = s, a_t = a)`` (rows sum to 1),
- ``R[s, a] = r(s, a)``, a deterministic reward for taking ``a`` in ``s``,
- ``mu[s] = P(s_0 = s)``.

Episode convention
------------------
The MDP is *infinite-horizon discounted*: the objective is J(pi) = E[sum_{t>=0} gamma^t r_t],
s_0 ~ mu, and no state is terminal (the gridworld's goal and pit send the agent back to the start
instead of ending the episode). A sampled episode of :class:`TabularEnv` is *truncated*, never
terminated: ``terminated`` is always False and ``truncated`` becomes True after ``horizon``
steps. The default horizon is ``horizon_for(gamma, tol=1e-6)``, the smallest H with
gamma^H <= tol. A learner bootstraps from V(s_H) at truncation (it is a time limit, not a terminal
state), and since |sum_{t>=H} gamma^t r_t| <= gamma^H max|R| / (1 - gamma), the discounted
return sum_{t<H} gamma^t r_t of a sampled episode has expectation within
tol * max|R| / (1 - gamma) of the exact J(pi). Monte Carlo discounted returns of this env and
the exact J of :mod:`trpo_lab.exact` therefore measure the same quantity.

Gymnasium ids (registered when this module is imported): ``trpo_lab/Garnet-v0``,
``trpo_lab/Chain-v0`` and ``trpo_lab/GridWorld-v0``. Their keyword arguments are those of the
builder (:func:`garnet`, :func:`chain`, :func:`gridworld`) plus ``horizon`` (None or 0 means
``horizon_for(gamma)``) and ``gamma`` (default 0.99, used only to choose that horizon), e.g.
``gymnasium.make("trpo_lab/Garnet-v0", num_states=50, num_actions=4, branching=5, mdp_seed=0)``.
Each also takes ``action_components`` (e.g. ``[3, 2]`` for a 6-action MDP): the action space is
then MultiDiscrete(components) and a component vector a is the joint action
``numpy.ravel_multi_index(a, components)`` (C order), see :func:`factored_actions`.
Without importing this module first, ``gymnasium.make("trpo_lab.envs.tabular:trpo_lab/Chain-v0")``
imports it for you.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import gymnasium
import numpy as np
import scipy.sparse as sp
from gymnasium import spaces

from trpo_lab.envs.errors import ActionComponentsError

__all__ = [
    "DEFAULT_GRID",
    "GRID_ACTIONS",
    "TabularEnv",
    "TabularMDP",
    "chain",
    "garnet",
    "grid_states",
    "gridworld",
    "horizon_for",
    "make_mdp",
]

# Tolerance on the sums of the rows of P and of mu.
_STOCHASTIC_ATOL = 1e-8


@dataclass(frozen=True, eq=False)
class TabularMDP:
    """A finite MDP ``(P, R, mu)`` with S states and A actions.

    ``P`` is float64 [S, A, S] with P[s, a, s'] = P(s' | s, a), ``R`` is float64 [S, A] with the
    deterministic reward r(s, a), ``mu`` is float64 [S], the initial state distribution. The arrays
    are copied to float64 and made read-only, so an MDP never changes after construction (the
    cached sparse form below stays valid). Equality and hashing are by identity (``eq=False``),
    since comparing arrays elementwise has no single truth value.
    """

    P: np.ndarray
    R: np.ndarray
    mu: np.ndarray
    name: str = "mdp"

    def __post_init__(self) -> None:
        P = _frozen_float_array(self.P, "P")  # noqa: N806 (the usual name of the kernel)
        R = _frozen_float_array(self.R, "R")  # noqa: N806
        mu = _frozen_float_array(self.mu, "mu")
        if P.ndim != 3 or P.shape[0] != P.shape[2] or P.shape[0] < 1 or P.shape[1] < 1:
            raise ValueError(f"P must have shape [S, A, S] with S, A >= 1, got {P.shape}")
        num_states, num_actions = P.shape[0], P.shape[1]
        if R.shape != (num_states, num_actions):
            raise ValueError(f"R must have shape [S, A] = {(num_states, num_actions)}, "
                             f"got {R.shape}")
        if mu.shape != (num_states,):
            raise ValueError(f"mu must have shape [S] = {(num_states,)}, got {mu.shape}")
        for label, array in (("P", P), ("R", R), ("mu", mu)):
            if not np.all(np.isfinite(array)):
                raise ValueError(f"{label} has non-finite entries")
        if P.min() < 0.0:
            raise ValueError(f"P has negative entries (min {P.min():.3g})")
        row_error = np.abs(P.sum(axis=2) - 1.0)
        if row_error.max() > _STOCHASTIC_ATOL:
            s, a = np.unravel_index(int(row_error.argmax()), row_error.shape)
            raise ValueError(f"rows of P must sum to 1: P[{s}, {a}, :] sums to "
                             f"{P[s, a].sum():.12g}")
        if mu.min() < 0.0 or abs(mu.sum() - 1.0) > _STOCHASTIC_ATOL:
            raise ValueError(f"mu must be a probability vector (min {mu.min():.3g}, "
                             f"sum {mu.sum():.12g})")
        object.__setattr__(self, "P", P)
        object.__setattr__(self, "R", R)
        object.__setattr__(self, "mu", mu)

    @property
    def num_states(self) -> int:
        return int(self.P.shape[0])

    @property
    def num_actions(self) -> int:
        return int(self.P.shape[1])

    @cached_property
    def transition_csr(self) -> sp.csr_array:
        """P reshaped to [S*A, S] as a CSR sparse array (row s*A + a is P[s, a, :]); cached."""
        return sp.csr_array(self.P.reshape(self.num_states * self.num_actions, self.num_states))

    @cached_property
    def density(self) -> float:
        """Fraction of nonzero entries of P (branching / S for a GARNET)."""
        return float(np.count_nonzero(self.P)) / self.P.size


def _frozen_float_array(value: Any, label: str) -> np.ndarray:
    try:
        array = np.array(value, dtype=np.float64, copy=True)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{label} must be a float array: {error}") from error
    array.setflags(write=False)
    return array


# ------------------------------------------------------------------------------------------------
# Builders
# ------------------------------------------------------------------------------------------------


def garnet(num_states: int, num_actions: int, branching: int, mdp_seed: int) -> TabularMDP:
    """GARNET(S, A, b): the standard random MDP (Archibald et al. 1995; Bhatnagar et al. 2009).

    With ``rng = numpy.random.default_rng(mdp_seed)``, in this order:

    1. for every (s, a), a set of ``branching`` distinct next states is drawn uniformly among the
       subsets of that size (the indices of the b smallest of S iid uniforms);
    2. their probabilities are a uniformly random point of the simplex, Dirichlet(1, ..., 1)
       (equivalently the gaps of sorted uniforms on [0, 1]);
    3. rewards R[s, a] ~ U[0, 1] iid;

    and mu is uniform over the states. The same arguments always give the same MDP.
    """
    _check_int("num_states", num_states, 1)
    _check_int("num_actions", num_actions, 1)
    _check_int("branching", branching, 1)
    if branching > num_states:
        raise ValueError(f"branching must be in [1, num_states={num_states}], got {branching}")
    rng = np.random.default_rng(mdp_seed)
    rows = num_states * num_actions
    keys = rng.random((rows, num_states))
    if branching < num_states:
        support = np.argpartition(keys, branching - 1, axis=1)[:, :branching]
    else:
        support = np.argsort(keys, axis=1)
    del keys
    weights = rng.dirichlet(np.ones(branching), size=rows)
    P = np.zeros((rows, num_states))  # noqa: N806
    np.put_along_axis(P, support, weights, axis=1)
    P /= P.sum(axis=1, keepdims=True)  # exact stochasticity after the float rounding of dirichlet
    R = rng.random((num_states, num_actions))  # noqa: N806
    mu = np.full(num_states, 1.0 / num_states)
    return TabularMDP(
        P=P.reshape(num_states, num_actions, num_states), R=R, mu=mu,
        name=f"garnet(S={num_states},A={num_actions},b={branching},seed={mdp_seed})")


def chain(num_states: int = 8, slip: float = 0.1, small_reward: float = 0.01,
          large_reward: float = 1.0) -> TabularMDP:
    """The classic chain (RiverSwim / NChain-like), a hard-exploration benchmark.

    States 0, 1, ..., N-1 in a row; the agent starts in state 0 (mu = delta_0). Actions:

    - 0 = left: moves to max(s - 1, 0) with probability 1;
    - 1 = right: moves to min(s + 1, N - 1) with probability 1 - slip, stays in s with
      probability slip (in the last state it stays with probability 1).

    Rewards: r(0, left) = ``small_reward`` (0.01), r(N-1, right) = ``large_reward`` (1), all
    others 0. Going left at the start is a tempting local optimum worth 0.01 / (1 - gamma); the
    optimal policy swims right and collects 1 per step at the far end.
    """
    _check_int("num_states", num_states, 2)
    if not 0.0 <= slip < 1.0:
        raise ValueError(f"slip must be in [0, 1), got {slip}")
    n = num_states
    P = np.zeros((n, 2, n))  # noqa: N806
    states = np.arange(n)
    P[states, 0, np.maximum(states - 1, 0)] = 1.0
    P[states[:-1], 1, states[:-1] + 1] = 1.0 - slip
    P[states[:-1], 1, states[:-1]] = slip
    P[n - 1, 1, n - 1] = 1.0
    R = np.zeros((n, 2))  # noqa: N806
    R[0, 0] = small_reward
    R[n - 1, 1] = large_reward
    mu = np.zeros(n)
    mu[0] = 1.0
    return TabularMDP(P=P, R=R, mu=mu, name=f"chain(N={n},slip={slip})")


DEFAULT_GRID = """
S....
.##..
..X.#
#.#..
....G
"""
"""The default gridworld, 5x5 (row 0 at the top, column 0 at the left)::

    S . . . .        S start (mu = delta at S)
    . # # . .        # wall (not a state)
    . . X . #        X pit: any action there gives -1 and the next state is drawn from mu
    # . # . .        G goal: any action there gives +1 and the next state is drawn from mu
    . . . . G        . free cell (reward 0)

The 20 non-wall cells are the states, numbered in row-major order: S = 0, (0, 4) = 4,
(1, 0) = 5, (1, 3) = 6, (1, 4) = 7, (2, 0) = 8, ..., X = (2, 2) = 10, G = (4, 4) = 19.
"""

GRID_ACTIONS: tuple[tuple[int, int], ...] = ((-1, 0), (0, 1), (1, 0), (0, -1))
"""Gridworld actions as (d_row, d_col): 0 = up, 1 = right, 2 = down, 3 = left."""


def grid_states(layout: str = DEFAULT_GRID) -> dict[tuple[int, int], int]:
    """Map (row, col) of each non-wall cell of ``layout`` to its state index (row-major order)."""
    cells = _parse_grid(layout)
    coords = [(i, j) for i, row in enumerate(cells) for j, c in enumerate(row) if c != "#"]
    return {coord: index for index, coord in enumerate(coords)}


def _parse_grid(layout: str) -> list[str]:
    rows = [line.strip() for line in layout.strip().splitlines() if line.strip()]
    if not rows:
        raise ValueError("gridworld layout is empty")
    if len({len(row) for row in rows}) != 1:
        raise ValueError(f"gridworld layout must be rectangular, got row lengths "
                         f"{[len(row) for row in rows]}")
    unknown = set("".join(rows)) - set(".#SGX")
    if unknown:
        raise ValueError(f"gridworld layout has unknown characters {sorted(unknown)}; "
                         f"use . # S G X")
    if "S" not in "".join(rows):
        raise ValueError("gridworld layout needs at least one start cell 'S'")
    return rows


def gridworld(layout: str = DEFAULT_GRID, slip: float = 0.1, goal_reward: float = 1.0,
              pit_reward: float = -1.0) -> TabularMDP:
    """A slippery gridworld from an ASCII layout (see :data:`DEFAULT_GRID`).

    Characters: ``.`` free, ``#`` wall, ``S`` start, ``G`` goal, ``X`` pit. States are the non-wall
    cells in row-major order (:func:`grid_states`); mu is uniform over the ``S`` cells. Actions
    0..3 = up, right, down, left (:data:`GRID_ACTIONS`). From a free or start cell the intended
    direction is taken with probability 1 - slip and each of the 3 other directions with
    probability slip / 3; a move into a wall or off the grid leaves the agent where it is; the
    reward is 0. From G (resp. X) every action gives ``goal_reward`` = +1 (resp. ``pit_reward`` =
    -1) and the next state is drawn from mu: the MDP has no terminal states, reaching G means
    collecting +1 on the next step and going back to the start.
    """
    if not 0.0 <= slip <= 1.0:
        raise ValueError(f"slip must be in [0, 1], got {slip}")
    rows = _parse_grid(layout)
    index = grid_states(layout)
    n = len(index)
    num_actions = len(GRID_ACTIONS)
    mu = np.zeros(n)
    for (i, j), s in index.items():
        if rows[i][j] == "S":
            mu[s] = 1.0
    mu /= mu.sum()
    P = np.zeros((n, num_actions, n))  # noqa: N806
    R = np.zeros((n, num_actions))  # noqa: N806
    for (i, j), s in index.items():
        cell = rows[i][j]
        if cell in "GX":
            P[s, :, :] = mu
            R[s, :] = goal_reward if cell == "G" else pit_reward
            continue
        for a in range(num_actions):
            for d, (di, dj) in enumerate(GRID_ACTIONS):
                prob = 1.0 - slip if d == a else slip / (num_actions - 1)
                target = index.get((i + di, j + dj), s)  # wall or off the grid: stay
                P[s, a, target] += prob
    return TabularMDP(P=P, R=R, mu=mu, name=f"gridworld({len(rows)}x{len(rows[0])},slip={slip})")


_BUILDERS = {"garnet": garnet, "chain": chain, "gridworld": gridworld}


def make_mdp(name: str, **kwargs: Any) -> TabularMDP:
    """Build a tabular MDP by name: ``garnet``, ``chain`` or ``gridworld`` (kwargs go to it)."""
    try:
        builder = _BUILDERS[name]
    except KeyError:
        raise ValueError(f"unknown tabular MDP {name!r}; valid names: "
                         f"{', '.join(sorted(_BUILDERS))}") from None
    return builder(**kwargs)


def _check_int(label: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{label} must be an integer >= {minimum}, got {value!r}")


# ------------------------------------------------------------------------------------------------
# Horizon and the gymnasium env
# ------------------------------------------------------------------------------------------------


def horizon_for(gamma: float, tol: float = 1e-6) -> int:
    """Smallest H >= 1 with gamma^H <= tol (1 for gamma = 0).

    Truncating a sampled episode after H steps drops sum_{t>=H} gamma^t r_t, at most
    gamma^H max|R| / (1 - gamma) <= tol max|R| / (1 - gamma) in absolute value.
    """
    if not 0.0 <= gamma < 1.0:
        raise ValueError(f"gamma must be in [0, 1), got {gamma}")
    if not 0.0 < tol < 1.0:
        raise ValueError(f"tol must be in (0, 1), got {tol}")
    if gamma == 0.0:
        return 1
    horizon = max(1, math.ceil(math.log(tol) / math.log(gamma)))
    # Guard the float rounding of the logarithms: make H exactly the smallest such integer.
    while gamma**horizon > tol:
        horizon += 1
    while horizon > 1 and gamma ** (horizon - 1) <= tol:
        horizon -= 1
    return horizon


class TabularEnv(gymnasium.Env):
    """Samples episodes of a :class:`TabularMDP`; observations are the integer state (np.int64).

    ``reset`` draws s_0 ~ mu (``options={"state": s}`` starts in s instead); ``step(a)`` returns
    reward R[s, a] and draws s' ~ P[s, a, :], both with ``self.np_random``. ``terminated`` is always
    False; ``truncated`` is True once ``horizon`` steps have been taken (see the module docstring).
    Sampling uses the precomputed cumulative probabilities of the nonzero entries of each row of
    P: one uniform draw and a binary search per step.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, mdp: TabularMDP, horizon: int, render_mode: str | None = None,
                 action_components: list[int] | tuple[int, ...] | None = None) -> None:
        _check_int("horizon", horizon, 1)
        if render_mode is not None:
            raise ValueError(f"TabularEnv does not render (render_mode={render_mode!r})")
        self.mdp = mdp
        self.horizon = int(horizon)
        self.render_mode = None
        self.observation_space = spaces.Discrete(mdp.num_states)
        self.action_space = spaces.Discrete(mdp.num_actions)
        self.components = factored_actions(mdp.num_actions, action_components)
        if self.components:
            # factored actions: a component vector a = (a_1, ..., a_k) is the joint action
            # ravel_multi_index(a, components) of the MDP (C order)
            self.action_space = spaces.MultiDiscrete(list(self.components))
        self._num_actions = mdp.num_actions
        csr = mdp.transition_csr
        self._indptr = csr.indptr.astype(np.int64)
        self._next_states = csr.indices.astype(np.int64)
        cumulative = np.empty_like(csr.data)
        for k in range(csr.shape[0]):
            lo, hi = self._indptr[k], self._indptr[k + 1]
            cumulative[lo:hi] = np.cumsum(csr.data[lo:hi])
            cumulative[hi - 1] = 1.0  # so that every u in [0, 1) falls inside the row
        self._cumulative = cumulative
        self._rewards = mdp.R.tolist()
        self._mu_cumulative = np.cumsum(mdp.mu)
        self._mu_cumulative[-1] = 1.0
        self._state = 0
        self._steps = 0

    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[np.int64, dict[str, Any]]:
        super().reset(seed=seed)
        if options is not None and "state" in options:
            state = int(options["state"])
            if not 0 <= state < self.mdp.num_states:
                raise ValueError(f"options['state'] must be in [0, {self.mdp.num_states}), "
                                 f"got {state}")
            self._state = state
        else:
            u = self.np_random.random()
            self._state = int(np.searchsorted(self._mu_cumulative, u, side="right"))
        self._steps = 0
        return np.int64(self._state), {}

    def step(self, action: Any) -> tuple[np.int64, float, bool, bool, dict[str, Any]]:
        if self.components:
            action = np.ravel_multi_index(tuple(np.asarray(action, np.int64)), self.components)
        a = int(action)
        if not 0 <= a < self._num_actions:
            raise ValueError(f"action must be in [0, {self._num_actions}), got {action!r}")
        s = self._state
        reward = self._rewards[s][a]
        k = s * self._num_actions + a
        lo, hi = self._indptr[k], self._indptr[k + 1]
        u = self.np_random.random()
        j = lo + int(np.searchsorted(self._cumulative[lo:hi], u, side="right"))
        self._state = int(self._next_states[min(j, hi - 1)])
        self._steps += 1
        return np.int64(self._state), reward, False, self._steps >= self.horizon, {}


# ------------------------------------------------------------------------------------------------
# Gymnasium registration
# ------------------------------------------------------------------------------------------------


def factored_actions(num_actions: int, components) -> tuple[int, ...]:
    """The action factorisation (n_1, ..., n_k) of an MDP with ``num_actions`` joint actions,
    checked (each n_j >= 2, their product the number of actions); () for none."""
    if not components:
        return ()
    components = tuple(int(n) for n in components)
    if any(n < 2 for n in components) or math.prod(components) != num_actions:
        raise ActionComponentsError(
            f"must be integers >= 2 whose product is the MDP's {num_actions} actions "
            f"(got product {math.prod(components)})")
    return components


def _resolve_horizon(horizon: int | None, gamma: float) -> int:
    return horizon_for(gamma) if horizon is None or horizon == 0 else horizon


def make_garnet_env(num_states: int = 50, num_actions: int = 4, branching: int = 5,
                    mdp_seed: int = 0, horizon: int | None = None, gamma: float = 0.99,
                    render_mode: str | None = None,
                    action_components: list[int] | None = None) -> TabularEnv:
    """Entry point of ``trpo_lab/Garnet-v0``: :func:`garnet` wrapped in a :class:`TabularEnv`."""
    mdp = garnet(num_states, num_actions, branching, mdp_seed)
    return TabularEnv(mdp, _resolve_horizon(horizon, gamma), render_mode=render_mode,
                      action_components=action_components)


def make_chain_env(num_states: int = 8, slip: float = 0.1, small_reward: float = 0.01,
                   large_reward: float = 1.0, horizon: int | None = None, gamma: float = 0.99,
                   render_mode: str | None = None,
                   action_components: list[int] | None = None) -> TabularEnv:
    """Entry point of ``trpo_lab/Chain-v0``: :func:`chain` wrapped in a :class:`TabularEnv`."""
    mdp = chain(num_states, slip, small_reward, large_reward)
    return TabularEnv(mdp, _resolve_horizon(horizon, gamma), render_mode=render_mode,
                      action_components=action_components)


def make_gridworld_env(layout: str = DEFAULT_GRID, slip: float = 0.1, goal_reward: float = 1.0,
                       pit_reward: float = -1.0, horizon: int | None = None, gamma: float = 0.99,
                       render_mode: str | None = None,
                    action_components: list[int] | None = None) -> TabularEnv:
    """Entry point of ``trpo_lab/GridWorld-v0``: :func:`gridworld` in a :class:`TabularEnv`."""
    mdp = gridworld(layout, slip, goal_reward, pit_reward)
    return TabularEnv(mdp, _resolve_horizon(horizon, gamma), render_mode=render_mode,
                      action_components=action_components)


GYM_IDS: dict[str, str] = {
    "trpo_lab/Garnet-v0": f"{__name__}:make_garnet_env",
    "trpo_lab/Chain-v0": f"{__name__}:make_chain_env",
    "trpo_lab/GridWorld-v0": f"{__name__}:make_gridworld_env",
}


def register_envs() -> None:
    """Register the tabular gymnasium ids; a no-op for ids that are already registered."""
    for env_id, entry_point in GYM_IDS.items():
        if env_id not in gymnasium.registry:
            gymnasium.register(id=env_id, entry_point=entry_point)


register_envs()
