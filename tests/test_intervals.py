"""The statistics of the truth and of the prediction: adaptive pairs, coverage, correlations
with seed-bootstrap intervals, the calibration regression with clustered SEs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tests.conftest import train_in_process
from trpo_lab.evaluation import MonteCarloEstimate
from trpo_lab.intervals import (
    EXACT_TOLERANCE,
    agreement_fraction,
    calibration_regression,
    cluster_bootstrap_correlations,
    covered,
    heldout_se,
    more_rounds,
    no_difference_half_width,
    paired_improvement,
    paired_return_bound,
    run_prediction_summary,
    vacuity_rate,
)

# ------------------------------------------------------------------------- adaptive pairs


def test_rounds_continue_until_enough_pairs_differ_or_the_cap():
    assert more_rounds(differing=10, pairs=64, per_round=64, min_differing=64, max_pairs=1024)
    assert not more_rounds(64, 64, 64, 64, 1024)  # enough differ
    assert not more_rounds(10, 1024, 64, 64, 1024)  # at the cap
    assert not more_rounds(10, 1000, 64, 64, 1024)  # one more round would pass it
    assert not more_rounds(0, 64, 64, 0, 1024)  # min_differing 0: fixed pairs
    # none differ: stop once max_coinciding pairs are drawn, not before, and only if none
    assert more_rounds(0, 448, 64, 64, 4096, max_coinciding=512)
    assert not more_rounds(0, 512, 64, 64, 4096, max_coinciding=512)
    assert more_rounds(1, 512, 64, 64, 4096, max_coinciding=512)
    assert more_rounds(0, 512, 64, 64, 4096)  # no such stop


def test_the_no_difference_bound_in_closed_form():
    """(1 - 0.05^(1/n)) B: 0.95 B for one pair, about 3 B / n for many (the rule of three);
    the largest |G' - G| is the reward range (0 included) times sum_{t<H} gamma^t."""
    assert no_difference_half_width(1, 2.0) == pytest.approx(1.9, rel=1e-15)
    assert no_difference_half_width(512, 1.0) == pytest.approx(1 - 0.05 ** (1 / 512),
                                                               rel=1e-12)
    assert no_difference_half_width(10**6, 1.0) * 10**6 == pytest.approx(-math.log(0.05),
                                                                          rel=1e-5)
    assert no_difference_half_width(64, 1.0, level=0.99) == pytest.approx(
        1 - 0.01 ** (1 / 64), rel=1e-12)
    with pytest.raises(ValueError, match="pairs >= 1"):
        no_difference_half_width(0, 1.0)
    assert paired_return_bound(-1.0, 2.0, 0.5, 3) == pytest.approx(3.0 * 1.75, rel=1e-15)
    assert paired_return_bound(0.5, 2.0, 0.5, 3) == pytest.approx(2.0 * 1.75, rel=1e-15)
    assert paired_return_bound(-3.0, -1.0, 1.0, 4) == 12.0  # rewards all negative: 0 counts
    with pytest.raises(ValueError, match="reward_low <= reward_high"):
        paired_return_bound(1.0, 0.0, 0.9, 10)


def test_equal_returns_give_j_the_no_difference_bound_not_a_zero_se():
    bound = (1 - 0.99**500) / (1 - 0.99)  # CartPole's returns lie in [0, 99.34]
    solved = np.full(512, bound)
    j = MonteCarloEstimate.of(solved, bound)
    assert j.mean == pytest.approx(bound, rel=1e-15)
    assert j.se == pytest.approx(bound * (1 - 0.05 ** (1 / 512)) / 1.959963984540054,
                                 rel=1e-12)
    assert 0.29 < j.se < 0.30
    assert MonteCarloEstimate.of(solved).se < 1e-12  # no bound: sd / sqrt(n) = 0, rounded
    mixed = np.array([1.0, 2.0, 4.0])
    assert MonteCarloEstimate.of(mixed, bound).se == pytest.approx(
        np.std(mixed, ddof=1) / math.sqrt(3), rel=1e-15)


def test_when_no_pair_differs_the_bound_covers_at_least_95_percent():
    """Rare differences at the bound (P(D != 0) from 1e-4 to 1e-2, D = +/- B = 2: the worst
    case for the bound): with 512 pairs many updates see no differing pair; over 4,000
    simulated updates the interval (the sample's where some differ, the bound's where none
    do) covers E[D] in >= 95% of those with none differing, whose interval without the bound
    ({0}) never covers."""
    rng = np.random.default_rng(1)
    bound, hits, none_differ = 2.0, [], []
    for _ in range(4000):
        p = 10 ** rng.uniform(-4, -2)
        sign = rng.choice([-1.0, 1.0])

        def draw(_r: int, p=p, sign=sign) -> tuple[np.ndarray, np.ndarray]:
            return np.where(rng.random(64) < p, sign * bound, 0.0), np.zeros(64)

        est = paired_improvement(*draw(0), True, 64, 4096, draw, 512, bound)
        hits.append(covered(est.mean, est.se, p * sign * bound))
        none_differ.append(est.differing == 0)
        if est.differing == 0:
            assert est.pairs == 512 and est.mean == 0.0
            assert est.se * 1.959963984540054 == pytest.approx(
                no_difference_half_width(512, bound), rel=1e-12)
        else:
            assert est.pairs == 4096 or est.differing >= 64
    hits, none_differ = np.array(hits), np.array(none_differ)
    assert none_differ.sum() > 500, none_differ.sum()
    assert hits[none_differ].mean() >= 0.95, hits[none_differ].mean()
    print(f"none differ {none_differ.sum()}: covered {hits[none_differ].mean():.3f}")
    unbounded = paired_improvement(np.zeros(64), np.zeros(64), True, 64, 4096,
                                   lambda r: (np.zeros(64), np.zeros(64)), 512)
    assert (unbounded.pairs, unbounded.se) == (512, 0.0)  # no bound: {0}, flagged by 0 differing
    still = paired_improvement(np.zeros(64), np.zeros(64), False, 64, 4096,
                               lambda r: (np.zeros(64), np.zeros(64)), 512, bound)
    assert (still.pairs, still.se) == (64, 0.0)  # a rejected step: dJ = 0 exactly, {0}


def test_paired_improvement_pools_every_round_it_draws():
    """Round r of 4 pairs has r + 1 differing pairs (D = 1 there, 0 elsewhere): with
    min_differing 6 the rounds stop after round 2 (1 + 2 + 3 = 6 differ), and the estimate
    is the mean and SE of all 12 pairs."""
    def pairs(r: int) -> tuple[np.ndarray, np.ndarray]:
        new = np.zeros(4)
        new[: r + 1] = 1.0
        return new, np.zeros(4)

    drawn = []

    def draw(r: int):
        drawn.append(r)
        return pairs(r)

    est = paired_improvement(*pairs(0), True, 6, 1024, draw)
    d = np.concatenate([pairs(r)[0] for r in range(3)])
    assert drawn == [1, 2] and est.pairs == 12 and est.differing == 6
    assert est.mean == pytest.approx(d.mean(), abs=1e-15)
    assert est.se == pytest.approx(d.std(ddof=1) / math.sqrt(12), abs=1e-15)
    np.testing.assert_array_equal(est.old_returns, np.zeros(12))
    # an update that did not move the policy draws nothing: interval {0}
    still = paired_improvement(np.ones(4), np.ones(4), False, 6, 1024, draw)
    assert (still.mean, still.se, still.pairs, still.differing) == (0.0, 0.0, 4, 0)
    assert drawn == [1, 2]
    # the cap: 3 rounds of 4 pairs at most, whatever differs
    est = paired_improvement(np.zeros(4), np.zeros(4), True, 100, 12,
                             lambda r: (np.zeros(4), np.zeros(4)))
    assert (est.pairs, est.differing, est.mean, est.se) == (12, 0, 0.0, 0.0)


def test_a_tabular_run_logs_the_no_difference_bound_where_every_pair_coincides(tmp_path):
    """Steps of KL 1e-12 on a garnet move the policy so little that no pair of 256 differs:
    those updates stop at eval.max_coinciding_pairs=256, log mc/improvement 0 with SE =
    (1 - 0.05^(1/256)) B / 1.96, B from the MDP's rewards and horizon, and the interval holds
    the exact dJ; rejected steps draw 64 pairs with SE 0."""
    from tests.conftest import compose_typed
    from trpo_lab.envs import tabular_horizon
    from trpo_lab.envs.tabular import garnet

    overrides = ("env=garnet", "policy=tabular", "gamma=0.9", "env.num_states=20",
                 "env.num_actions=2", "env.branching=2", "algo.delta=1e-12", "batch_steps=64",
                 "total_steps=640", "eval.heldout_episodes=0", "eval.max_coinciding_pairs=256",
                 "checkpoint.every=0")
    metrics = train_in_process(tmp_path, *overrides)
    cfg = compose_typed(*overrides)
    mdp = garnet(20, 2, 2, cfg.env.mdp_seed)
    bound = paired_return_bound(float(mdp.R.min()), float(mdp.R.max()), 0.9,
                                tabular_horizon(cfg.env, 0.9))
    moved = metrics["trpo/accepted"] == 1
    none = moved & (metrics["eval/pairs_differing"] == 0)
    assert none.sum() >= 2, metrics[["trpo/accepted", "eval/pairs_differing"]]
    assert (metrics.loc[none, "eval/pairs"] == 256).all()
    assert (metrics.loc[none, "mc/improvement"] == 0).all()
    np.testing.assert_allclose(metrics.loc[none, "mc/improvement_se"],
                               no_difference_half_width(256, bound) / 1.959963984540054,
                               rtol=1e-12)
    assert (metrics.loc[none, "true/improvement"] != 0).all()
    assert covered(metrics.loc[none, "mc/improvement"], metrics.loc[none, "mc/improvement_se"],
                   metrics.loc[none, "true/improvement"]).all()
    assert (metrics.loc[~moved, "eval/pairs"] == 64).all()
    assert (metrics.loc[~moved, "mc/improvement_se"] == 0).all()


def _zero_inflated(rng, n: int, p: float, mu: float, sd: float) -> np.ndarray:
    """Paired differences of a small step: D = 0 unless an action differs (probability p),
    then D ~ Normal(mu, sd); E[D] = p mu."""
    return np.where(rng.random(n) < p, rng.normal(mu, sd, n), 0.0)


def test_adaptive_pairs_cover_where_few_pairs_differ_and_fixed_pairs_do_not():
    """Simulated updates whose pairs rarely differ (p from 0.2% to 50%, so a round of 64
    pairs often has 0-3 differing): the interval from 64 fixed pairs covers E[D] in far
    fewer than 95% of 2,000 updates (its SE collapses); with the default adaptive pairs
    (rounds of 64 until 64 differ, at most 1,024) coverage is 93-97% wherever the cap leaves
    >= 64 differing pairs, and only updates with p < 1/8 (64 expected differing pairs in
    512) reach the cap."""
    rng = np.random.default_rng(0)
    fixed, adaptive, capped, small_p = [], [], [], []
    for _ in range(2000):
        p = 10 ** rng.uniform(-2.7, -0.3)
        mu, sd = rng.normal(0.0, 1.0), 10 ** rng.uniform(-1, 0.5)

        def draw(_r: int, p=p, mu=mu, sd=sd) -> tuple[np.ndarray, np.ndarray]:
            return _zero_inflated(rng, 64, p, mu, sd), np.zeros(64)

        first = draw(0)
        fixed.append(covered(*(lambda e: (e.mean, e.se))(
            paired_improvement(*first, True, 0, 1024, draw)), p * mu))
        est = paired_improvement(*first, True, 64, 1024, draw)
        adaptive.append(covered(est.mean, est.se, p * mu))
        capped.append(est.differing < 64)
        small_p.append(p < 1 / 8)
    fixed, adaptive, capped, small_p = map(np.array, (fixed, adaptive, capped, small_p))
    assert fixed.mean() < 0.85, fixed.mean()
    assert 0.93 <= adaptive[~capped].mean() <= 0.97, adaptive[~capped].mean()
    assert adaptive.mean() > fixed.mean() + 0.05
    assert (capped <= small_p).all()
    print(f"fixed {fixed.mean():.3f} adaptive {adaptive.mean():.3f} uncapped "
          f"{adaptive[~capped].mean():.3f} capped {capped.mean():.3f}")


# --------------------------------------------------------------------------------- coverage


def test_heldout_se_is_the_larger_of_the_sample_and_the_ratio_implied_se():
    y = np.array([1.0, 2.0, 3.0, 6.0])  # sd(ddof=1)^2 = 14 / 3
    assert heldout_se(y) == pytest.approx(math.sqrt(14 / 3 / 4), rel=1e-15)
    # ratio-implied variance 2.0 * mean([1, 3]) = 4 < 14 / 3: the sample's SE stands
    assert heldout_se(y, np.array([1.0, 3.0, 1.0, 3.0]), 2.0) == pytest.approx(
        math.sqrt(14 / 3 / 4), rel=1e-15)
    # a sample that drew no ratio's tail (all Y_j equal) gets the implied SE: sqrt(2 * 5 / 4)
    assert heldout_se(np.zeros(4), np.full(4, 5.0), 2.0) == pytest.approx(
        math.sqrt(2.5), rel=1e-15)
    assert heldout_se(np.zeros(4), np.zeros(4), 2.0) == 0.0  # a rejected step: {0}
    assert math.isnan(heldout_se(np.ones(1)))


def test_covered_counts_the_solver_rounding_and_nothing_more():
    assert covered(0.0, 0.0, 1e-17)  # a rejected step: interval {0}, exact dL 0 to rounding
    assert not covered(0.0, 0.0, 2 * EXACT_TOLERANCE)
    z = 1.959963984540054
    np.testing.assert_array_equal(covered([1.0, 1.0], [1.0, 1.0], [1.0 + z, 1.0 + z + 1e-9]),
                                  [True, False])


# ------------------------------------------------------------- prediction against truth


def test_correlations_and_their_cluster_bootstrap():
    x = np.arange(12, dtype=float)
    y = x**3  # monotone: Spearman 1 exactly, Pearson below 1
    clusters = np.repeat([0, 1, 2, 3], 3)
    out = cluster_bootstrap_correlations(x, y, clusters, reps=200)
    assert out.n == 12 and out.clusters == 4
    assert out.spearman == pytest.approx(1.0, abs=1e-15)
    assert out.spearman_low == pytest.approx(1.0) and out.spearman_high == pytest.approx(1.0)
    assert out.pearson == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-14)
    assert out.pearson_low <= out.pearson <= out.pearson_high < 1
    # one cluster: no interval; NaN points are dropped
    one = cluster_bootstrap_correlations(np.r_[x, np.nan], np.r_[y, 1.0], np.zeros(13))
    assert one.n == 12 and one.clusters == 1 and math.isnan(one.spearman_low)
    assert one.pearson == pytest.approx(out.pearson, abs=1e-14)


def test_calibration_regression_with_clustered_errors_in_closed_form():
    # exactly linear: slope 2, intercept -1, every residual 0, so every SE is 0
    x = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    fit = calibration_regression(x, 2 * x - 1, [0, 0, 1, 1, 2, 2])
    assert (fit.slope, fit.intercept) == (pytest.approx(2.0), pytest.approx(-1.0))
    assert fit.slope_se == pytest.approx(0.0, abs=1e-12) and fit.clusters == 3
    # residuals +-1 by hand: CR1 = (X'X)^-1 sum_g (X_g'u_g)(X_g'u_g)' (X'X)^-1 G/(G-1) (n-1)/(n-2)
    y = 2 * x - 1 + np.array([1.0, -1.0, -1.0, 1.0, 1.0, -1.0])
    labels = np.array([0, 0, 1, 1, 2, 2])
    fit = calibration_regression(x, y, labels)
    design = np.column_stack([np.ones(6), x])
    bread = np.linalg.inv(design.T @ design)
    coef = bread @ design.T @ y
    u = y - design @ coef
    meat = sum(np.outer(design[labels == g].T @ u[labels == g], design[labels == g].T @ u[
        labels == g]) for g in range(3))
    cov = bread @ meat @ bread * 3 / 2 * 5 / 4
    assert fit.slope == pytest.approx(coef[1], abs=1e-14)
    assert fit.slope_se == pytest.approx(math.sqrt(cov[1, 1]), rel=1e-12)
    assert fit.intercept_se == pytest.approx(math.sqrt(cov[0, 0]), rel=1e-12)
    assert math.isnan(calibration_regression(x, y, np.zeros(6)).slope_se)  # one cluster
    assert math.isnan(calibration_regression(np.ones(6), y, labels).slope)  # constant x


def test_calibrated_predictions_have_slope_one_within_their_clustered_se():
    """400 updates of 8 seeds, dJ = dL + noise with a per-seed shift: the fitted slope is
    within 3 clustered SEs of 1, and the clustered SE of the intercept exceeds the naive
    one (the shift is shared within a seed)."""
    rng = np.random.default_rng(3)
    seeds = np.repeat(np.arange(8), 50)
    dl = rng.normal(0, 1, 400)
    dj = dl + rng.normal(0, 0.3, 8)[seeds] + rng.normal(0, 0.5, 400)
    clustered = calibration_regression(dl, dj, seeds)
    naive = calibration_regression(dl, dj, np.arange(400))
    assert abs(clustered.slope - 1) < 3 * clustered.slope_se
    assert clustered.intercept_se > 2 * naive.intercept_se


def test_agreement_and_vacuity_rates():
    dl, dl_se = np.array([1.0, 1.0, 1.0, np.nan]), np.array([1.0, 1.0, 0.0, 1.0])
    dj, dj_se = np.array([1.0, 1.0 + 2.7, 1.5, 0.0]), np.array([1.0, 1.0, 0.0, 0.0])
    # |diff| <= 1.96 sqrt(2) = 2.77 for the first two, 0.5 > 0 for the third
    assert agreement_fraction(dl, dl_se, dj, dj_se) == pytest.approx(2 / 3)
    assert math.isnan(agreement_fraction([np.nan], [1.0], [0.0], [0.0]))
    assert vacuity_rate([-1.0, 0.0, 0.5, np.nan]) == pytest.approx(2 / 3)
    assert math.isnan(vacuity_rate([np.nan]))


def test_a_run_summary_holds_its_prediction_statistics(tmp_path):
    """summary.json of a sampled garnet run: prediction/* recomputed from its metrics.csv."""
    metrics = train_in_process(tmp_path, "env=garnet", "policy=tabular", "gamma=0.9",
                               "env.num_states=10", "batch_steps=64", "total_steps=1280",
                               "eval.episodes=8", "eval.heldout_episodes=8")
    summary = json.loads((tmp_path / "summary.json").read_text())
    expected = run_prediction_summary({c: metrics[c].to_numpy(dtype=float) for c in (
        "surrogate/improvement_heldout", "surrogate/improvement_heldout_se",
        "true/improvement", "true/improvement_se", "bound/trpo")}, seed=0)
    assert summary["prediction/updates"] == 20
    for key, value in expected.items():
        assert summary[key] == pytest.approx(value, abs=1e-12), key
    assert summary["prediction/spearman_low"] <= summary["prediction/spearman"] \
        <= summary["prediction/spearman_high"]
    assert 0 <= summary["prediction/bound_vacuity_rate"] <= 1


def test_heldout_interval_covers_the_exact_dl_of_random_updates():
    """The default 64 held-out episodes with exact advantages (direct calls of the held-out
    estimator, which averages over the actions): dL +/- 1.96 SE covers the exact dL in 93-97%
    of 500 random updates (random tabular policies, steps of 10^-2.5 to 10^-0.5 per logit) on
    a 20-state garnet at gamma 0.6. Training runs: tests/test_truth.py and the README's
    calibration table."""
    import torch

    from tests.conftest import compose_typed
    from trpo_lab import exact
    from trpo_lab.algos.common import heldout_improvement
    from trpo_lab.envs import make_vector_env
    from trpo_lab.evaluation import EpisodeSampler, episode_envs
    from trpo_lab.numerics import set_flat_params
    from trpo_lab.policies import Policy
    from trpo_lab.rollout import heldout_batch

    gamma = 0.6
    cfg = compose_typed("env=garnet", "policy=tabular", f"gamma={gamma}", "env.num_states=20",
                        "env.num_actions=3", "env.branching=3", "env.mdp_seed=3")
    envs = make_vector_env(cfg.env, 1, gamma)
    mdp = envs.envs[0].unwrapped.mdp
    policy = Policy(envs.single_observation_space, envs.single_action_space, cfg.policy, [])
    params = policy.actor_parameters()
    sampler = EpisodeSampler(episode_envs(cfg.env, gamma, cfg.eval.heldout_episodes, 1, mdp),
                             gamma, seed=5)
    eye = np.eye(20, dtype=np.float32)
    generator = torch.Generator().manual_seed(0)
    hits = []
    for k in range(500):
        theta = torch.randn(60, generator=generator)
        set_flat_params(params, theta)
        pi_old = policy.numpy_actor().probabilities(np.eye(20))
        old = exact.evaluate(mdp, pi_old, gamma)
        (episodes,) = sampler.run([policy.numpy_actor()], lambda raw: eye[raw], (k,),
                                  record=True)
        batch = heldout_batch(policy, episodes, gamma, cfg.gae_lambda, 1.0, old.A)
        size = 10 ** (2 * torch.rand(1, generator=generator).item() - 2.5)
        set_flat_params(params, theta + size * torch.randn(60, generator=generator))
        estimate, se = heldout_improvement(policy, batch)
        pi_new = policy.numpy_actor().probabilities(np.eye(20))
        truth = exact.compare(mdp, pi_old, pi_new, gamma, old=old).surrogate_improvement
        hits.append(covered(estimate, se, truth))
    assert 0.93 <= np.mean(hits) <= 0.97, np.mean(hits)


def test_the_return_bound_of_cartpole_and_of_envs_without_one(tmp_path):
    """CartPole (+1 a step, env.reward_bounds [0, 1], max_episode_steps 500): B = sum_{t<500}
    0.99^t = 99.34 (sum_{t<100} with env.kwargs.max_episode_steps=100); an env without
    reward bounds (Pendulum) has none; bad bounds and bounds
    on a tabular env are refused, naming the key."""
    from tests.conftest import compose_typed
    from trpo_lab.config import ConfigError, validate
    from trpo_lab.train import Trainer

    for name in ("cartpole", "pendulum"):
        (tmp_path / name).mkdir()
    cartpole = Trainer(compose_typed("logger=none"), tmp_path / "cartpole")
    assert cartpole.return_bound == pytest.approx((1 - 0.99**500) / (1 - 0.99), rel=1e-12)
    (tmp_path / "short").mkdir()
    short = Trainer(compose_typed("logger=none", "+env.kwargs.max_episode_steps=100"),
                    tmp_path / "short")  # gymnasium.make's step limit, not the spec's
    assert short.return_bound == pytest.approx((1 - 0.99**100) / (1 - 0.99), rel=1e-12)
    assert Trainer(compose_typed("logger=none", "env=pendulum"),
                   tmp_path / "pendulum").return_bound is None
    for bad in ("[1.0, 0.0]", "[0.0]", "[0.0, inf]"):
        with pytest.raises(ConfigError, match="env.reward_bounds"):
            validate(compose_typed(f"env.reward_bounds={bad}"))
    with pytest.raises(ConfigError, match="env.reward_bounds.*tabular"):
        validate(compose_typed("env=garnet", "policy=tabular", "env.reward_bounds=[0.0, 1.0]"))
