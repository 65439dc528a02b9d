"""Exact policy evaluation and exact TRPO diagnostics on a tabular MDP (numpy/scipy only).

Conventions (as in DESIGN.md), for a policy pi given as a float64 array pi[s, a] = pi(a | s):

- J(pi) = E[sum_t gamma^t r_t], s_0 ~ mu.
- V_pi solves the Bellman equation V = r_pi + gamma P_pi V, where
  r_pi(s) = sum_a pi(a|s) R(s, a) and P_pi(s, s') = sum_a pi(a|s) P(s'|s, a);
  Q_pi(s, a) = R(s, a) + gamma sum_s' P(s'|s, a) V_pi(s'); A_pi = Q_pi - V_pi; J = mu . V_pi.
- rho_pi(s) = sum_t gamma^t P(s_t = s | pi), the UNnormalised discounted visitation; in matrix
  form rho_pi^T = mu^T (I - gamma P_pi)^{-1}, i.e. (I - gamma P_pi)^T rho_pi = mu, and
  sum_s rho_pi(s) = 1 / (1 - gamma). d_pi = (1 - gamma) rho_pi is its normalised version.
  (Also J = rho_pi . r_pi.)
- Surrogate L_pi(pi') = J(pi) + sum_s rho_pi(s) sum_a pi'(a|s) A_pi(s, a); predicted improvement
  dL = L_pi(pi') - J(pi); true improvement dJ = J(pi') - J(pi).
- Performance difference lemma (exact): dJ = sum_s rho_pi'(s) sum_a pi'(a|s) A_pi(s, a).
- KL(pi || pi')(s) = sum_a pi(a|s) log(pi(a|s) / pi'(a|s)), old policy first; 0 log 0 = 0 and
  KL = inf where pi(a|s) > 0 = pi'(a|s). TV(pi, pi')(s) = 1/2 sum_a |pi'(a|s) - pi(a|s)|.

Everything is vectorised: one LU factorisation of I - gamma P_pi per policy serves both V (the
system itself) and rho (its transpose).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from trpo_lab.envs.tabular import TabularMDP

__all__ = [
    "PairDiagnostics",
    "PenalisedOptimum",
    "PolicyEvaluation",
    "categorical_kl",
    "compare",
    "evaluate",
    "kl_ball_best_response",
    "maximize_penalized_surrogate",
    "policy_reward",
    "policy_transition",
    "q_from_v",
    "total_variation",
    "trpo_penalty_coefficient",
]

# P_pi is formed from the cached sparse [S*A, S] form of P when P is at most this dense and large
# enough for sparse overheads not to matter; otherwise densely. Both give the same matrix.
_SPARSE_MAX_DENSITY = 0.25
_SPARSE_MIN_ENTRIES = 100_000
# Tolerance on the row sums of a policy.
_POLICY_ATOL = 1e-8


@dataclass(frozen=True, eq=False)
class PolicyEvaluation:
    """Exact evaluation of one policy: V [S], Q [S, A], A = Q - V [S, A], rho [S] (unnormalised
    discounted visitation, sums to 1/(1-gamma)) and J = mu . V."""

    V: np.ndarray
    Q: np.ndarray
    A: np.ndarray
    rho: np.ndarray
    J: float


@dataclass(frozen=True)
class PairDiagnostics:
    """What TRPO's theory says about one update pi -> pi' (``old`` = pi, ``new`` = pi').

    - ``J_old``, ``J_new``: J(pi), J(pi').
    - ``surrogate_improvement`` dL = sum_s rho_pi(s) sum_a pi'(a|s) A_pi(s, a).
    - ``true_improvement`` dJ = J(pi') - J(pi).
    - ``pdl_rhs`` = sum_s rho_pi'(s) sum_a pi'(a|s) A_pi(s, a); ``pdl_residual`` = |dJ - pdl_rhs|
      (zero up to rounding, by the performance difference lemma).
    - ``kl_max`` = max_s KL(pi || pi')(s); ``kl_mean`` = sum_s d_pi(s) KL(pi || pi')(s);
      ``reverse_kl_max``/``reverse_kl_mean``: the same for KL(pi' || pi).
    - ``tv_max`` = max_s TV(s), ``tv_mean`` = sum_s d_pi(s) TV(s).
    - ``eps`` = max_{s,a} |A_pi(s, a)|; ``eps_prime`` = max_s |sum_a pi'(a|s) A_pi(s, a)|.
    - ``C`` = 4 eps gamma / (1 - gamma)^2.
    - ``bound_trpo`` = dL - C kl_max (Schulman et al. 2015, eq. 9; the penalty is taken as 0
      when C = 0, where the bound is dJ = dL exactly, even if kl_max = inf).
    - ``bound_trpo_tight`` = dL - 4 eps gamma alpha^2 / ((1 - gamma)(1 - gamma (1 - alpha))),
      alpha = tv_max: the bound the paper's Appendix A proof actually establishes (Lemma 3 summed,
      4 eps alpha sum_t gamma^t (1 - (1 - alpha)^t)), before relaxing 1 - gamma(1 - alpha) to
      1 - gamma and alpha^2 = tv_max^2 to kl_max (Pinsker). Always >= bound_trpo.
    - ``bound_cpo`` = (1/(1-gamma)) sum_s d_pi(s) [sum_a pi'(a|s) A_pi(s, a)
      - (2 gamma eps_prime / (1 - gamma)) TV(s)] (Achiam et al. 2017, Corollary 1)
      = dL - 2 gamma eps_prime tv_mean / (1 - gamma)^2.

    All three bounds are lower bounds on dJ.
    """

    J_old: float
    J_new: float
    surrogate_improvement: float
    true_improvement: float
    pdl_rhs: float
    pdl_residual: float
    kl_max: float
    kl_mean: float
    reverse_kl_max: float
    reverse_kl_mean: float
    tv_max: float
    tv_mean: float
    eps: float
    eps_prime: float
    C: float
    bound_trpo: float
    bound_trpo_tight: float
    bound_cpo: float


# ------------------------------------------------------------------------------------------------
# Small pure helpers
# ------------------------------------------------------------------------------------------------


def categorical_kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Row-wise KL(p || q) = sum_a p(a) log(p(a) / q(a)) of [..., A] arrays of distributions.

    Terms with p(a) = 0 contribute 0 (0 log 0 = 0); a row with p(a) > 0 = q(a) has KL = inf.
    Clipped below at 0 (rounding can give -1e-17 for equal rows).
    """
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    if p.shape != q.shape:
        raise ValueError(f"p and q must have the same shape, got {p.shape} and {q.shape}")
    positive = p > 0.0
    with np.errstate(divide="ignore", invalid="ignore"):  # 0 * inf where p = q = 0: masked
        log_ratio = np.log(np.where(positive, p, 1.0)) - np.log(q)
        terms = np.where(positive, p * log_ratio, 0.0)
    return np.maximum(terms.sum(axis=-1), 0.0)


def total_variation(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Row-wise total variation TV(p, q) = 1/2 sum_a |p(a) - q(a)| of [..., A] arrays, in [0, 1]."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    if p.shape != q.shape:
        raise ValueError(f"p and q must have the same shape, got {p.shape} and {q.shape}")
    return 0.5 * np.abs(p - q).sum(axis=-1)


def trpo_penalty_coefficient(eps: float, gamma: float) -> float:
    """C = 4 eps gamma / (1 - gamma)^2, the KL-penalty coefficient of TRPO's bound (eq. 9)."""
    _check_gamma(gamma)
    return 4.0 * eps * gamma / (1.0 - gamma) ** 2


def policy_reward(mdp: TabularMDP, pi: np.ndarray) -> np.ndarray:
    """r_pi(s) = sum_a pi(a|s) R(s, a), shape [S]."""
    return np.einsum("sa,sa->s", pi, mdp.R)


def policy_transition(mdp: TabularMDP, pi: np.ndarray) -> np.ndarray:
    """P_pi(s, s') = sum_a pi(a|s) P(s'|s, a) as a dense [S, S] array.

    For large sparse MDPs (a GARNET with small branching) it is the product of the sparse
    [S, S*A] block-diagonal matrix of pi with the cached CSR form of P, [S*A, S]: O(S A b) work
    instead of O(S^2 A).
    """
    if mdp.P.size >= _SPARSE_MIN_ENTRIES and mdp.density <= _SPARSE_MAX_DENSITY:
        return _policy_transition_sparse(mdp, pi)
    return _policy_transition_dense(mdp, pi)


def _policy_transition_dense(mdp: TabularMDP, pi: np.ndarray) -> np.ndarray:
    return np.einsum("sa,sat->st", pi, mdp.P)


def _policy_transition_sparse(mdp: TabularMDP, pi: np.ndarray) -> np.ndarray:
    num_states, num_actions = mdp.num_states, mdp.num_actions
    rows = num_states * num_actions
    weights = sp.csr_array(
        (np.ascontiguousarray(pi, dtype=np.float64).ravel(), np.arange(rows),
         np.arange(0, rows + 1, num_actions)),
        shape=(num_states, rows))
    return (weights @ mdp.transition_csr).toarray()


def q_from_v(mdp: TabularMDP, V: np.ndarray, gamma: float) -> np.ndarray:  # noqa: N803
    """Q(s, a) = R(s, a) + gamma sum_s' P(s'|s, a) V(s'), shape [S, A]."""
    if mdp.P.size >= _SPARSE_MIN_ENTRIES and mdp.density <= _SPARSE_MAX_DENSITY:
        expected_next = mdp.transition_csr @ V
    else:
        expected_next = mdp.P.reshape(-1, mdp.num_states) @ V
    return mdp.R + gamma * expected_next.reshape(mdp.num_states, mdp.num_actions)


def _check_gamma(gamma: float) -> None:
    if not 0.0 <= gamma < 1.0:
        raise ValueError(f"gamma must be in [0, 1), got {gamma}")


def _check_policy(mdp: TabularMDP, pi: np.ndarray, label: str = "pi") -> np.ndarray:
    pi = np.asarray(pi, dtype=np.float64)
    expected = (mdp.num_states, mdp.num_actions)
    if pi.shape != expected:
        raise ValueError(f"{label} must have shape [S, A] = {expected}, got {pi.shape}")
    if not np.all(np.isfinite(pi)) or pi.min() < 0.0:
        raise ValueError(f"{label} must have finite non-negative entries")
    row_error = np.abs(pi.sum(axis=1) - 1.0)
    if row_error.max() > _POLICY_ATOL:
        s = int(row_error.argmax())
        raise ValueError(f"rows of {label} must sum to 1: row {s} sums to {pi[s].sum():.12g}")
    return pi


def _weighted_sum(weights: np.ndarray, values: np.ndarray) -> float:
    """sum_s w(s) x(s) over the states with w(s) > 0 (so that 0 * inf counts as 0)."""
    support = weights > 0.0
    return float(np.dot(weights[support], values[support]))


# ------------------------------------------------------------------------------------------------
# Evaluation and comparison
# ------------------------------------------------------------------------------------------------


def _factorise(mdp: TabularMDP, pi: np.ndarray, gamma: float) -> tuple:
    """LU factors of M^T, M = I - gamma P_pi, without any copy.

    M is built C-contiguous, so M.T is a Fortran-ordered view that LAPACK factorises in place.
    Then M x = b is ``lu_solve(lu, b, trans=1)`` and M^T y = c is ``lu_solve(lu, c, trans=0)``.
    """
    system = -gamma * policy_transition(mdp, pi)
    system[np.diag_indices_from(system)] += 1.0
    return scipy.linalg.lu_factor(system.T, overwrite_a=True, check_finite=False)


def evaluate(mdp: TabularMDP, pi: np.ndarray, gamma: float) -> PolicyEvaluation:
    """Exact V, Q, A, rho and J of ``pi`` in ``mdp`` at discount ``gamma`` (in [0, 1)).

    Solves (I - gamma P_pi) V = r_pi and (I - gamma P_pi)^T rho = mu with one LU factorisation,
    then Q = R + gamma P V, A = Q - V, J = mu . V.
    """
    _check_gamma(gamma)
    pi = _check_policy(mdp, pi)
    lu = _factorise(mdp, pi, gamma)
    V = scipy.linalg.lu_solve(lu, policy_reward(mdp, pi), trans=1, check_finite=False)  # noqa: N806
    rho = scipy.linalg.lu_solve(lu, mdp.mu, trans=0, check_finite=False)
    Q = q_from_v(mdp, V, gamma)  # noqa: N806
    return PolicyEvaluation(V=V, Q=Q, A=Q - V[:, None], rho=rho, J=float(mdp.mu @ V))


def _check_evaluation(evaluation: PolicyEvaluation, pi: np.ndarray, label: str) -> None:
    """Cheap consistency check: an evaluation of pi has V(s) = sum_a pi(a|s) Q(s, a)."""
    scale = 1.0 + float(np.abs(evaluation.V).max())
    if np.abs(np.einsum("sa,sa->s", pi, evaluation.Q) - evaluation.V).max() > 1e-6 * scale:
        raise ValueError(f"the evaluation passed as {label!r} is not an evaluation of "
                         f"pi_{label} (V != sum_a pi(a|s) Q(s, a))")


def compare(mdp: TabularMDP, pi_old: np.ndarray, pi_new: np.ndarray, gamma: float,
            old: PolicyEvaluation | None = None,
            new: PolicyEvaluation | None = None) -> PairDiagnostics:
    """Exact diagnostics of the update pi_old -> pi_new; see :class:`PairDiagnostics`.

    ``old`` (and ``new``) may be precomputed :func:`evaluate` results of pi_old (pi_new) at the
    same gamma, to save their LU factorisations; they are checked for consistency with the policy.
    """
    _check_gamma(gamma)
    pi_old = _check_policy(mdp, pi_old, "pi_old")
    pi_new = _check_policy(mdp, pi_new, "pi_new")
    if old is None:
        old = evaluate(mdp, pi_old, gamma)
    else:
        _check_evaluation(old, pi_old, "old")
    if new is None:
        new = evaluate(mdp, pi_new, gamma)
    else:
        _check_evaluation(new, pi_new, "new")

    # Expected advantage of the new policy under the old advantages, per state.
    new_advantage = np.einsum("sa,sa->s", pi_new, old.A)
    surrogate = float(old.rho @ new_advantage)
    true = new.J - old.J
    pdl_rhs = float(new.rho @ new_advantage)

    d_old = (1.0 - gamma) * old.rho
    kl = categorical_kl(pi_old, pi_new)
    reverse_kl = categorical_kl(pi_new, pi_old)
    tv = total_variation(pi_old, pi_new)
    kl_max, tv_max = float(kl.max()), float(tv.max())
    eps = float(np.abs(old.A).max())
    eps_prime = float(np.abs(new_advantage).max())

    C = trpo_penalty_coefficient(eps, gamma)  # noqa: N806
    bound_trpo = surrogate - (C * kl_max if C > 0.0 else 0.0)
    alpha = tv_max
    tight_penalty = 4.0 * eps * gamma * alpha**2 / ((1.0 - gamma) * (1.0 - gamma * (1.0 - alpha)))
    cpo_coefficient = 2.0 * gamma * eps_prime / (1.0 - gamma)
    bound_cpo = float(old.rho @ (new_advantage - cpo_coefficient * tv))

    return PairDiagnostics(
        J_old=old.J, J_new=new.J,
        surrogate_improvement=surrogate, true_improvement=true,
        pdl_rhs=pdl_rhs, pdl_residual=abs(true - pdl_rhs),
        kl_max=kl_max, kl_mean=_weighted_sum(d_old, kl),
        reverse_kl_max=float(reverse_kl.max()), reverse_kl_mean=_weighted_sum(d_old, reverse_kl),
        tv_max=tv_max, tv_mean=float(d_old @ tv),
        eps=eps, eps_prime=eps_prime, C=C,
        bound_trpo=bound_trpo, bound_trpo_tight=surrogate - tight_penalty, bound_cpo=bound_cpo)


# ------------------------------------------------------------------------------------------------
# TRPO's Algorithm 1: the exact maximiser of dL - C KLmax over tabular policies
# ------------------------------------------------------------------------------------------------

_ROOT_STEPS = 100  # cap on regula-falsi steps; they converge in about 10-20
_ROOT_RTOL = 1e-13  # on log(mu - max A) and log t


@dataclass(frozen=True)
class PenalisedOptimum:
    """The maximiser ``pi_new`` of M(pi') = dL(pi') - C KLmax(pi, pi') over all policies, with
    ``value`` = M(pi_new), ``surrogate_improvement`` = dL(pi_new) and ``kl_max``."""

    pi_new: np.ndarray
    value: float
    surrogate_improvement: float
    kl_max: float


def _decreasing_root(f, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Roots of decreasing functions, one per element: f(lo) > 0 > f(hi), by regula falsi with
    the Illinois modification (superlinear, never leaves the bracket), vectorised."""
    f_lo, f_hi = f(lo), f(hi)
    side = np.zeros_like(lo)
    for _ in range(_ROOT_STEPS):
        x = (lo * f_hi - hi * f_lo) / (f_hi - f_lo)
        x = np.where(np.isfinite(x), x, 0.5 * (lo + hi))
        fx = f(x)
        left = fx > 0  # the root lies right of x
        lo, f_lo = np.where(left, x, lo), np.where(left, fx, f_lo)
        hi, f_hi = np.where(left, hi, x), np.where(left, f_hi, fx)
        # Illinois: halve the stale end's value when the same end is kept twice
        f_hi = np.where(left & (side > 0), 0.5 * f_hi, f_hi)
        f_lo = np.where(~left & (side < 0), 0.5 * f_lo, f_lo)
        side = np.where(left, 1.0, -1.0)
        if np.all(hi - lo <= _ROOT_RTOL * np.maximum(1.0, np.abs(hi))):
            break
    return 0.5 * (lo + hi)


class _KLBall:
    """The per-state family q_a(mu) = (p_a / (mu - A_a)) / Z(mu), mu = max A + spread e^u."""

    def __init__(self, p: np.ndarray, advantages: np.ndarray):
        self.p = np.asarray(p, dtype=np.float64)
        self.a = np.asarray(advantages, dtype=np.float64)
        self.support = self.p > 0.0
        a_max = np.where(self.support, self.a, -np.inf).max(axis=1, keepdims=True)
        self.a_max = a_max
        self.spread = np.where(self.support, a_max - self.a, 0.0).max(axis=1, keepdims=True)
        self.movable = self.spread[:, 0] > 0.0  # constant advantages: q = p for every t

    def weights(self, u: np.ndarray) -> np.ndarray:
        # mu - A_a formed as (max A - A_a) + spread e^u: never 0, even where mu == max A in
        # floating point
        gap = (self.a_max - self.a) + np.maximum(self.spread, 1e-300) * np.exp(u)
        return np.where(self.support, self.p / np.where(self.support, gap, 1.0), 0.0)

    def policy(self, u: np.ndarray) -> np.ndarray:
        w = self.weights(u)
        return w / w.sum(axis=1, keepdims=True)

    def multiplier(self, u: np.ndarray) -> np.ndarray:
        """lambda = 1 / sum_a p_a / (mu - A_a), the derivative of the state's value in t."""
        return np.where(self.movable, 1.0 / self.weights(u).sum(axis=1), 0.0)

    def solve(self, t: np.ndarray) -> np.ndarray:
        """u per state with KL(p || q(u)) = t: log KL falls from +inf to -inf in u."""
        log_t = np.log(np.maximum(t, 1e-300))

        def excess(u: np.ndarray) -> np.ndarray:
            kl = categorical_kl(self.p, self.policy(u[:, None]))
            return np.log(np.maximum(kl, 1e-300)) - log_t

        n = self.p.shape[0]
        return _decreasing_root(excess, np.full(n, -60.0), np.full(n, 60.0))[:, None]


def kl_ball_best_response(p: np.ndarray, advantages: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Per row s: argmax_q sum_a q(a) A(s, a) subject to KL(p_s || q) <= t_s.

    The KKT conditions give the one-parameter family q_a(mu) = (p_a / (mu - A_a)) / Z(mu) for
    mu > max_a A_a (actions with p_a = 0 get q_a = 0); KL(p || q(mu)) falls from infinity to 0
    as mu grows, so mu is found by regula falsi on log KL in log(mu - max A). Rows with
    t_s = 0 or constant advantages keep q = p. Vectorised over rows: p, advantages [S, A],
    t [S].
    """
    ball = _KLBall(p, advantages)
    t = np.broadcast_to(np.asarray(t, dtype=np.float64), ball.p.shape[:1])
    q = ball.policy(ball.solve(t))
    keep = (t <= 0.0) | ~ball.movable
    return np.where(keep[:, None], ball.p, q)


def maximize_penalized_surrogate(pi: np.ndarray, advantages: np.ndarray, rho: np.ndarray,
                                 C: float) -> PenalisedOptimum:  # noqa: N803
    """TRPO's Algorithm 1 step: argmax over policies pi' of dL(pi') - C max_s KL(pi || pi')[s],
    dL(pi') = sum_s rho(s) sum_a pi'(a|s) A(s, a) (``advantages`` = A_pi, exact).

    For a level t of the max KL, each state's best policy is :func:`kl_ball_best_response`
    with the same t (a state never gains from staying inside the ball once t is paid for), so
    the problem is max_t F(t), F(t) = sum_s rho(s) g_s(t) - C t, g_s the value of the
    state's KL-ball problem: concave in t (the value of a convex program in its constraint
    level), with F'(t) = sum_s rho(s) lambda_s(t) - C (envelope theorem, lambda_s the KL
    multiplier, decreasing in t). t* solves F'(t*) = 0, found by regula falsi in log t between
    a t whose F' > 0 and t_hi = sum_s rho(s) max_a A(s, a) / C (F(t*) >= F(0) = 0 and
    g_s <= max_a A(s, a) bound t* by it).
    """
    if not C > 0.0:
        raise ValueError(f"the penalty coefficient C must be > 0, got {C}")
    pi = np.asarray(pi, dtype=np.float64)
    a = np.asarray(advantages, dtype=np.float64)
    rho = np.asarray(rho, dtype=np.float64)
    baseline = float(rho @ np.einsum("sa,sa->s", pi, a))  # 0 for exact advantages
    ball = _KLBall(pi, a)
    best_a = np.where(pi > 0.0, a, -np.inf).max(axis=1)
    t_hi = float(rho @ np.maximum(best_a, 0.0)) / C
    if not (ball.movable & (rho > 0)).any() or t_hi <= 0.0:
        return PenalisedOptimum(pi.copy(), 0.0, 0.0, 0.0)

    def slope(log_t: np.ndarray) -> np.ndarray:
        u = ball.solve(np.full(pi.shape[0], float(np.exp(log_t[0]))))
        return np.array([np.log(max(float(rho @ ball.multiplier(u)), 1e-300)) - np.log(C)])

    log_lo = np.array([np.log(t_hi) - 1.0])
    while slope(log_lo)[0] <= 0.0 and log_lo[0] > np.log(t_hi) - 700.0:
        log_lo = log_lo - 10.0
    log_t = _decreasing_root(slope, log_lo, np.array([np.log(t_hi)]))
    q = np.where(ball.movable[:, None],
                 ball.policy(ball.solve(np.full(pi.shape[0], float(np.exp(log_t[0]))))), pi)
    kl_max = float(categorical_kl(pi, q).max())
    surrogate = float(rho @ np.einsum("sa,sa->s", q, a)) - baseline
    value = surrogate - C * kl_max
    if value < 0.0:  # only rounding can make the optimum worse than staying put
        return PenalisedOptimum(pi.copy(), 0.0, 0.0, 0.0)
    return PenalisedOptimum(pi_new=q, value=value, surrogate_improvement=surrogate,
                            kl_max=kl_max)
