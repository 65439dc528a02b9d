"""Probes (probe.every=K): the numerics in closed form, and the consistency the theory demands of
a probed run: the landscape at alpha = 0 and 1 against the run's own metrics, the gradient
identity by finite differences, and gradient quality against the exact gradient."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from analysis import figures
from analysis.load import load_all, load_probes
from analysis.probe_plots import chosen_updates, mean_band, trust_region_edge
from tests.conftest import read_metrics, run_cli, train_in_process, wandb_summary
from trpo_lab.evaluation import Episodes
from trpo_lab.probes import (
    COLUMNS,
    first_steps,
    gradient_agreement,
    join_episodes,
    probe_tables,
    random_direction,
)

GARNET_EXACT = ["env=garnet", "policy=tabular", "gamma=0.9", "batch_steps=256",
                "algo.estimator=exact", "eval.episodes=0"]


def read_probes(run_dir) -> pd.DataFrame:
    return pd.read_csv(run_dir / "probes.csv")


# ------------------------------------------------------------------ numerics


def test_gradient_agreement_in_closed_form():
    reference = np.array([2.0, 0.0, 0.0])
    # two estimates at 45 degrees on either side of the reference, orthogonal to each other
    estimates = np.array([[1.0, 1.0, 0.0], [1.0, -1.0, 0.0]])
    out = gradient_agreement(estimates, reference)
    assert out["cosine_mean"] == pytest.approx(1 / math.sqrt(2), abs=1e-15)
    assert out["cosine_se"] == pytest.approx(0.0, abs=1e-15)
    assert out["pairwise_cosine_mean"] == pytest.approx(0.0, abs=1e-15)
    assert out["norm_ratio_mean"] == pytest.approx(math.sqrt(2) / 2, abs=1e-15)
    assert out["reference_norm"] == 2.0
    # parallel estimates of different lengths: cosines 1 and -1
    out = gradient_agreement(np.array([[3.0, 0, 0], [-1.0, 0, 0], [0.5, 0, 0]]), reference)
    assert out["cosine_mean"] == pytest.approx(1 / 3)
    assert out["cosine_se"] == pytest.approx(np.std([1, -1, 1], ddof=1) / math.sqrt(3))
    assert out["pairwise_cosine_mean"] == pytest.approx((-1 + 1 - 1) / 3)
    assert out["norm_ratio_mean"] == pytest.approx((3 + 1 + 0.5) / 3 / 2)


def test_gradient_agreement_separates_bias_from_variance_in_closed_form():
    reference = np.array([2.0, 0.0, 0.0])
    # symmetric about the reference's direction: unbiased, mean cosine 1, variance 2 / 4
    out = gradient_agreement(np.array([[1.0, 1.0, 0.0], [1.0, -1.0, 0.0]]), reference)
    assert out["mean_cosine"] == pytest.approx(1.0, abs=1e-15)
    assert out["relative_variance"] == pytest.approx(((0.0 + 2.0) + 0.0) / 4, abs=1e-15)
    # |mean - ref|^2 = 1, minus the variance of a mean of 2, 2 / 2, over |ref|^2: 0
    assert out["relative_bias_sq"] == pytest.approx(0.0, abs=1e-15)
    # identical estimates at 60 degrees: no variance, all bias
    same = np.array([[1.0, math.sqrt(3), 0.0]] * 3)
    out = gradient_agreement(same, reference)
    assert out["mean_cosine"] == pytest.approx(0.5, abs=1e-15)
    assert out["relative_variance"] == pytest.approx(0.0, abs=1e-30)
    assert out["pairwise_cosine_mean"] == pytest.approx(1)
    assert out["relative_bias_sq"] == pytest.approx((1 + 3) / 4, abs=1e-15)


def test_gradient_agreement_with_a_zero_vector_is_nan():
    out = gradient_agreement(np.ones((2, 3)), np.zeros(3))  # a vanished reference
    assert math.isnan(out["cosine_mean"]) and math.isnan(out["norm_ratio_mean"])
    assert out["pairwise_cosine_mean"] == pytest.approx(1.0) and out["reference_norm"] == 0.0
    out = gradient_agreement(np.array([[0.0, 0.0], [1.0, 2.0]]), np.array([2.0, 4.0]))
    assert math.isnan(out["cosine_mean"])  # a zero estimate has no direction


def test_random_direction_has_the_norm_and_depends_only_on_its_seed():
    like = torch.zeros(1000)
    a, b = random_direction(like, 0.3, [1, 2, 3]), random_direction(like, 0.3, [1, 2, 3])
    c = random_direction(like, 0.3, [1, 2, 4])
    assert float(a.norm()) == pytest.approx(0.3, rel=1e-6)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert abs(float(a @ c)) / 0.09 < 0.15  # nearly orthogonal in 1000 dimensions


def recorded(lengths: list[int], horizon: int = 6) -> Episodes:
    """Episodes whose step (t, j) observes 100 j + t."""
    n = len(lengths)
    t = np.arange(horizon)[:, None]
    alive = t < np.array(lengths)[None, :]
    value = (100 * np.arange(n)[None, :] + t).astype(float)
    done = t == np.array(lengths)[None, :] - 1
    return Episodes(np.zeros(n), np.array(lengths), value.astype(int), value[..., None],
                    value[..., None] + 1, np.zeros((horizon, n), int), np.ones((horizon, n)),
                    done.copy(), done, alive)


def test_first_steps_takes_whole_episodes_and_cuts_the_last_as_a_truncation():
    episodes = recorded([3, 5, 2, 4])
    chunk, column = first_steps(episodes, 0, 4)  # 3 of episode 0, 1 of episode 1
    assert column == 2 and chunk.alive.sum() == 4
    assert sorted(chunk.obs[chunk.alive][:, 0]) == [0, 1, 2, 100]
    assert chunk.done[0, 1] and not chunk.terminated[0, 1]  # the cut bootstraps
    assert chunk.lengths.tolist() == [3, 1]
    assert chunk.alive.shape[0] == 3  # padding after the longest kept episode dropped
    assert not episodes.done[0, 1] and episodes.alive[4, 1]  # the pool is not modified
    chunk, column = first_steps(episodes, column, 6)  # episodes 2 and 3 exactly
    assert column == 4 and chunk.alive.sum() == 6 and chunk.lengths.tolist() == [2, 4]
    assert first_steps(episodes, column, 1) is None
    assert first_steps(episodes, 0, 15) is None


def test_join_episodes_pads_in_time_and_keeps_every_step():
    a, b = recorded([3, 2], horizon=3), recorded([5], horizon=5)
    joined = join_episodes([a, b])
    assert joined.alive.shape == (5, 3) and joined.lengths.tolist() == [3, 2, 5]
    assert joined.alive.sum() == 10 and not joined.alive[3:, :2].any()
    assert joined.obs[4, 2, 0] == 4


def test_probe_tables_split_rows_by_kind():
    header = ",".join(COLUMNS)
    land = {c: "" for c in COLUMNS} | {"iteration": "0", "probe": "landscape",
                                       "direction": "step", "alpha": "1.0", "true": "0.5"}
    grad = {c: "" for c in COLUMNS} | {"iteration": "0", "probe": "gradient",
                                       "batch_steps": "64", "cosine_mean": "0.25"}
    text = "\n".join([header, *(",".join(r[c] for c in COLUMNS) for r in (land, grad)), ""])
    tables = probe_tables(text)
    columns, rows = tables["probes_landscape"]
    assert rows[0][columns.index("true")] == 0.5 and rows[0][columns.index("direction")] == "step"
    assert "cosine_mean" not in columns
    columns, rows = tables["probes_gradient"]
    assert rows[0][columns.index("cosine_mean")] == 0.25 and len(rows) == 1


def test_trust_region_edge_is_exact_for_a_quadratic_kl():
    alphas = np.array([-0.5, 0.0, 0.5, 1.0, 1.5, 2.0])
    rows = pd.DataFrame({"alpha": alphas, "kl_mean": 0.004 * alphas**2, "kl_limit": 0.01})
    assert trust_region_edge(rows) == pytest.approx(math.sqrt(0.01 / 0.004), rel=1e-12)
    assert math.isnan(trust_region_edge(rows.assign(kl_limit=np.nan)))
    assert math.isnan(trust_region_edge(rows.assign(kl_mean=1e-4 * alphas**2)))  # never reached


def test_mean_band_over_runs_and_from_one_runs_standard_error():
    rows = pd.DataFrame({"alpha": [0.5, 0.5, 1.0], "true": [1.0, 3.0, 2.0],
                         "true_se": [9.0, 9.0, 0.5]})
    band = mean_band(rows, "alpha", "true", "true_se").set_index("alpha")
    assert band.loc[0.5, "mean"] == 2.0 and band.loc[0.5, "n"] == 2
    half = 1.959964 * math.sqrt(2.0) / math.sqrt(2)  # sd of (1, 3) over sqrt(2) runs
    assert band.loc[0.5, "hi"] == pytest.approx(2.0 + half)
    assert band.loc[1.0, "lo"] == pytest.approx(2.0 - 1.959964 * 0.5)  # one run: its own SE
    assert chosen_updates([0, 10, 20, 30, 40, 50, 60], 4) == [0, 20, 40, 60]
    assert chosen_updates([0, 10], 4) == [0, 10]


# ------------------------------------------------------------------ probed runs


@pytest.fixture(scope="module")
def garnet_probes(tmp_path_factory):
    """The default garnet with exact estimation, two probed updates (k = 0, 2), small alphas
    for the finite differences at alpha = 0."""
    run_dir = tmp_path_factory.mktemp("garnet")
    metrics = train_in_process(run_dir, *GARNET_EXACT, "total_steps=768", "probe.every=2",
                               "probe.alphas=[-0.001,0.0,0.001,0.5,1.0,2.0]",
                               "probe.random_directions=2")
    return run_dir, metrics, read_probes(run_dir)


def test_probe_rows_per_probed_update(garnet_probes):
    _, metrics, probes = garnet_probes
    assert sorted(probes["iteration"].unique()) == [0, 2]
    for _, rows in probes.groupby("iteration"):
        land, grad = rows[rows.probe == "landscape"], rows[rows.probe == "gradient"]
        assert len(land) == 3 * 6 and sorted(land["line"].unique()) == [0, 1, 2]
        assert land.groupby("direction").size().to_dict() == {"step": 6, "random": 12}
        assert grad["batch_steps"].tolist() == [64, 256, 1024, 4096, 16384]
        # whole episodes of the horizon H = 132 at gamma 0.9: max(1, round(B / 132))
        assert grad["batch_episodes"].tolist() == [1, 2, 8, 31, 124]
        assert (grad["batches"] == 8).all() and (grad["reference_steps"] == 0).all()
    assert metrics["time/probe_s"].notna().tolist() == [True, False, True]
    steps = metrics["probe/env_steps"]
    assert steps.iloc[0] >= 8 * 132 * (1 + 2 + 8 + 31 + 124)
    assert steps.iloc[1] == steps.iloc[0] and steps.iloc[2] == 2 * steps.iloc[0]
    assert metrics["env_steps"].tolist() == [256, 512, 768]  # probes are not trained on


def test_landscape_at_zero_and_one_is_the_run_itself(garnet_probes):
    _, metrics, probes = garnet_probes
    land = probes[probes.probe == "landscape"]
    at_zero = land[land.alpha == 0]
    assert (at_zero["surrogate"].abs() <= 1e-12).all()
    assert (at_zero["true"].abs() <= 1e-12).all()
    assert (at_zero["kl_mean"].abs() <= 1e-12).all()
    step = land[(land.direction == "step") & (land.alpha == 1)].set_index("iteration")
    row = metrics.set_index("iteration").loc[step.index]
    np.testing.assert_array_equal(step["true"], row["true/improvement"])
    np.testing.assert_allclose(step["surrogate"], row["exact/surrogate_improvement"],
                               rtol=1e-5)
    np.testing.assert_allclose(step["surrogate_exact"], row["exact/surrogate_improvement"],
                               rtol=1e-12)
    np.testing.assert_allclose(step["bound"], row["bound/trpo"], rtol=1e-9)
    np.testing.assert_allclose(step["kl_max"], row["kl/max"], rtol=1e-4)
    assert (step["kl_limit"] == 0.01).all() and (step["kl_mean"] < 0.0102).all()
    # the surrogate is the exact one (exact batch); the held-out one is sampled
    np.testing.assert_allclose(land["surrogate"], land["surrogate_exact"], rtol=1e-4,
                               atol=1e-7)
    assert land["surrogate_heldout"].notna().all()


def test_slopes_of_surrogate_and_true_agree_at_zero(garnet_probes):
    """The seed's last identity, grad L_pi(pi') at pi' = pi equals grad J, along every line:
    central differences at alpha = +-1e-3 of the surrogate and of the exact J agree, and on
    the step they equal the analytic g . dtheta (surrogate/linear)."""
    _, metrics, probes = garnet_probes
    land = probes[probes.probe == "landscape"]
    for (iteration, line), rows in land.groupby(["iteration", "line"]):
        by_alpha = rows.set_index("alpha")
        slope_true = (by_alpha.loc[0.001, "true"] - by_alpha.loc[-0.001, "true"]) / 0.002
        slope_surrogate = (by_alpha.loc[0.001, "surrogate_exact"]
                           - by_alpha.loc[-0.001, "surrogate_exact"]) / 0.002
        assert abs(slope_true) > 1e-3  # a real slope, not two zeros
        assert slope_surrogate == pytest.approx(slope_true, rel=2e-3)
        if line == 0:
            linear = metrics.set_index("iteration").loc[iteration, "surrogate/linear"]
            assert slope_true == pytest.approx(linear, rel=2e-3)


def test_gradient_cosine_rises_with_batch_size_to_the_exact_gradient(garnet_probes):
    _, _, probes = garnet_probes
    for _, grad in probes[probes.probe == "gradient"].groupby("iteration"):
        cosines = grad["cosine_mean"].to_numpy()
        assert (np.diff(cosines) > 0).all(), cosines
        assert cosines[-1] > 0.9
        assert (grad["cosine_se"] > 0).all() and (grad["cosine_se"] < 0.05).all()
        # pairwise cosines (no reference) rise too, and sit below the cosine to the truth
        pairwise = grad["pairwise_cosine_mean"].to_numpy()
        assert (np.diff(pairwise) > 0).all() and (pairwise < cosines).all()
        # whole episodes with exact advantages: unbiased at every size, so the mean of the 8
        # batch gradients points at the exact gradient far better than any one batch does,
        # and the variance falls as 1 / episodes (within a factor 2 of it)
        assert (grad["mean_cosine"] > cosines).all() and grad["mean_cosine"].iloc[-1] > 0.99
        variance = grad["relative_variance"].to_numpy() * grad["batch_episodes"].to_numpy()
        assert variance.max() < 2 * variance.min(), variance


def test_gradient_batches_of_cut_episodes_are_biased_and_whole_episodes_are_not(tmp_path):
    """On the exact garnet at gamma 0.99 (episodes of H = 1375 steps), a batch of 64 steps
    (probe.batch_by=steps) is the first 64 steps of one episode: its expectation is the
    gradient's sum over t < 64 only, which misses 0.99^64 = 53% of the discounted weight, a
    squared bias of about 0.53^2 = 0.28 of |grad J|^2. One whole episode per batch
    (batch_by=episodes) is unbiased: its squared bias is 0 within its noise, and its mean over
    64 batches points at the exact gradient (cosine > 0.99)."""
    common = [*(o for o in GARNET_EXACT if o != "gamma=0.9"), "gamma=0.99", "total_steps=256",
              "probe.every=1",
              "probe.alphas=[]", "probe.batch_steps=[64]", "probe.batches=64"]
    rows = {}
    for by in ("steps", "episodes"):
        train_in_process(tmp_path / by, *common, f"probe.batch_by={by}")
        rows[by] = read_probes(tmp_path / by).iloc[0]
    assert rows["episodes"]["batch_episodes"] == 1
    assert math.isnan(rows["steps"]["batch_episodes"])
    episodes, steps = rows["episodes"], rows["steps"]
    noise = 4 * episodes["relative_variance"] * math.sqrt(2 / 64) / 64
    assert abs(episodes["relative_bias_sq"]) < noise and episodes["mean_cosine"] > 0.99
    assert 0.15 < steps["relative_bias_sq"] < 0.45, steps


def test_cartpole_probes_pair_episodes_and_resume_to_the_same_rows(tmp_path):
    """Off the tabular envs 'true' is paired Monte Carlo: exactly 0 at alpha = 0 (the same
    episodes). A run stopped after update 1 and resumed writes exactly the rows of an
    uninterrupted run (probes are seeded by seed and update)."""
    small = ["batch_steps=256", "probe.every=1", "probe.episodes=16", "probe.random_directions=1",
             "probe.batch_steps=[64,512]", "probe.batches=3", "probe.reference_steps=2048",
             "eval.episodes=8", "eval.heldout_episodes=4", "checkpoint.every=1"]
    whole, part = tmp_path / "whole", tmp_path / "part"
    train_in_process(whole, *small, "total_steps=768")
    train_in_process(part, *small, "total_steps=512")
    train_in_process(part, *small, "total_steps=768")
    a, b = read_probes(whole), read_probes(part)
    pd.testing.assert_frame_equal(a, b)
    land = a[a.probe == "landscape"]
    assert (land[land.alpha == 0][["true", "true_se", "surrogate"]] == 0).all().all()
    assert land["true_se"][land.alpha != 0].gt(0).any()
    assert land["bound"].isna().all() and land["surrogate_exact"].isna().all()
    grad = a[a.probe == "gradient"]
    assert (grad["reference_steps"] == 2048).all() and grad["cosine_mean"].between(-1, 1).all()
    metrics = read_metrics(part)
    assert metrics["probe/env_steps"].is_monotonic_increasing
    assert metrics["probe/env_steps"].iloc[-1] == read_metrics(whole)["probe/env_steps"].iloc[-1]


def test_a_probed_cli_run_reaches_wandb_tables_and_the_figures(tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli([*GARNET_EXACT, "total_steps=256", "probe.every=1",
                      "probe.batch_steps=[64,256]", "logger.mode=offline",
                      f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    probes = read_probes(run_dir)
    summary = wandb_summary(run_dir)
    for kind, count in (("landscape", 20), ("gradient", 2)):
        entry = summary[f"probes_{kind}"]
        assert entry["_type"] == "table-file" and entry["nrows"] == count
        files = run_dir / "wandb" / next((run_dir / "wandb").glob("offline-run-*")).name
        table = json.loads((files / "files" / entry["path"]).read_text())
        value = table["columns"].index("true" if kind == "landscape" else "cosine_mean")
        expected = probes[probes.probe == kind]["true" if kind == "landscape" else
                                                "cosine_mean"].to_numpy()
        np.testing.assert_allclose([row[value] for row in table["data"]], expected)
    index, _ = load_all(run_dir)
    loaded = load_probes(index)
    assert (loaded["env"] == "garnet").all() and (loaded["algo"] == "trpo").all()
    assert (loaded["run_batch_steps"] == 256).all()  # the run's, beside the probe's batch_steps
    np.testing.assert_array_equal(loaded["true"].fillna(-9), probes["true"].fillna(-9))
    out = tmp_path / "figs"
    assert figures.main([str(run_dir), "--out", str(out), "--reps", "50"]) == 0
    for name in figures.PROBE_FIGURES:
        assert (out / f"{name}.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(("override", "key"), [
    ("probe.batches=1", "probe.batches"),
    ("probe.alphas=[0.0,nan]", "probe.alphas"),
    ("probe.batch_steps=[0]", "probe.batch_steps"),
    ("probe.every=-1", "probe.every"),
])
def test_bad_probe_values_are_refused_naming_the_key(override, key, tmp_path):
    result = run_cli([override, "logger=none", f"hydra.run.dir={tmp_path / 'run'}"],
                     cwd=tmp_path)
    assert result.returncode == 2
    assert key in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()



def test_heldout_batch_bootstraps_exactly_as_gae_on_every_next_observation():
    """heldout_batch evaluates the critic once per step (and at episode ends, and at a cut):
    its advantages equal GAE with V(next_obs) computed at every step."""
    from tests.conftest import compose_typed
    from trpo_lab.envs import make_vector_env
    from trpo_lab.evaluation import EpisodeSampler, episode_envs
    from trpo_lab.numerics import gae
    from trpo_lab.policies import Policy
    from trpo_lab.rollout import heldout_batch

    cfg = compose_typed("env=cartpole")
    envs = make_vector_env(cfg.env, 1, cfg.gamma)
    policy = Policy(envs.single_observation_space, envs.single_action_space, cfg.policy, [8])
    sampler = EpisodeSampler(episode_envs(cfg.env, cfg.gamma, 6, 1), cfg.gamma, 3)
    pool = sampler.run([policy.numpy_actor()], lambda x: x.astype(np.float32), (0,),
                       record=True)[0]
    episodes, _ = first_steps(pool, 0, int(pool.lengths[:3].sum()) + 2)  # cut the 4th
    held = heldout_batch(policy, episodes, cfg.gamma, cfg.gae_lambda, 1.0)
    with torch.no_grad():
        values = policy.value(torch.as_tensor(episodes.obs)).double().numpy()
        next_values = policy.value(torch.as_tensor(episodes.next_obs)).double().numpy()
    expected = gae(episodes.rewards, values, next_values, episodes.terminated, episodes.done,
                   cfg.gamma, cfg.gae_lambda)[episodes.alive]
    np.testing.assert_allclose(held.batch.advantages.numpy(), expected, rtol=1e-5, atol=1e-6)
    assert held.env_steps == int(pool.lengths[:3].sum()) + 2
    sampler.close()
    envs.close()
