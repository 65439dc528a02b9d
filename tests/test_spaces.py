"""Every space the policy serves: encoders by hand, the space matrix trained and resumed, the
exact factored garnet's identities, and the refusal of the rest."""

from __future__ import annotations

import pickle
from pathlib import Path

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest
import torch

from tests.conftest import TINY, compose_typed, read_metrics, run_cli, train_in_process
from tests.nets import DictNet
from trpo_lab import exact
from trpo_lab.envs import EnvError, make_vector_env
from trpo_lab.envs.synthetic import observation_space
from trpo_lab.envs.tabular import garnet
from trpo_lab.logging import TIME_COLUMNS
from trpo_lab.networks import StructuredView, split_encoded
from trpo_lab.numerics import RunningMeanStd
from trpo_lab.policies import Policy
from trpo_lab.rollout import normalize_parts
from trpo_lab.spaces import (
    PackedSpace,
    PackObservations,
    box_mask,
    encode_observations,
    observation_dim,
    to_env_actions,
    unpack,
)
from trpo_lab.train import StopSignal, Trainer

DICT = gym.spaces.Dict({"pos": gym.spaces.Box(-1, 1, (2,)), "cell": gym.spaces.Discrete(3, start=1),
                        "bits": gym.spaces.MultiBinary(2),
                        "level": gym.spaces.MultiDiscrete([2, 3])})


def test_discrete_multidiscrete_multibinary_box_encodings_by_hand():
    obs = encode_observations(gym.spaces.Discrete(3, start=2), np.array([2, 4]))
    np.testing.assert_array_equal(obs, [[1, 0, 0], [0, 0, 1]])
    md = encode_observations(gym.spaces.MultiDiscrete([2, 3]), np.array([[1, 0], [0, 2]]))
    np.testing.assert_array_equal(md, [[0, 1, 1, 0, 0], [1, 0, 0, 0, 1]])
    mb = encode_observations(gym.spaces.MultiBinary([2, 2]), np.array([[[1, 0], [0, 1]]]))
    np.testing.assert_array_equal(mb, [[1, 0, 0, 1]])
    box = encode_observations(gym.spaces.Box(-1, 1, (2, 2)), np.arange(8.0).reshape(2, 2, 2))
    np.testing.assert_array_equal(box, np.arange(8.0).reshape(2, 4))
    assert box.dtype == np.float32


def test_dict_observation_packs_encodes_and_unpacks():
    space = PackedSpace(DICT)
    value = {"pos": np.array([0.5, -0.25], np.float32), "cell": 3,
             "bits": np.array([1, 0], np.int8), "level": np.array([1, 2])}
    packed = space.pack(value)
    # gymnasium's Dict orders its keys: bits, cell, level, pos
    np.testing.assert_array_equal(packed, [1, 0, 3, 1, 2, 0.5, -0.25])
    assert observation_dim(space) == 2 + 3 + 2 + 5
    encoded = encode_observations(space, packed[None])
    np.testing.assert_array_equal(encoded, [[1, 0, 0, 0, 1, 0, 1, 0, 0, 1, 0.5, -0.25]])
    back = unpack(space, packed[None])
    assert set(back) == {"pos", "cell", "bits", "level"}
    np.testing.assert_array_equal(back["pos"], [[0.5, -0.25]])
    np.testing.assert_array_equal(back["cell"], [3])
    np.testing.assert_array_equal(back["level"], [[1, 2]])
    np.testing.assert_array_equal(box_mask(space), [False] * 10 + [True] * 2)
    assert box_mask(gym.spaces.Box(-1, 1, (3,))) is None
    assert pickle.loads(pickle.dumps(space)) == space  # checkpoints pickle the wrapped envs


def test_tuple_of_blackjack_is_three_one_hots():
    env = PackObservations(gym.make("Blackjack-v1"))
    obs, _ = env.reset(seed=0)
    x = encode_observations(env.observation_space, obs[None])
    assert x.shape == (1, 32 + 11 + 2) and x.sum() == 3
    assert x[0, int(obs[0])] == 1 and x[0, 32 + int(obs[1])] == 1 and x[0, 43 + int(obs[2])] == 1


def test_normalisation_touches_only_the_box_parts():
    space = PackedSpace(DICT)
    rms = RunningMeanStd((12,))
    rms.mean[:] = 0.5
    rms.var[:] = 4.0
    x = encode_observations(space, space.pack(DICT.sample())[None])
    out = normalize_parts(rms, x, box_mask(space))
    np.testing.assert_allclose(out[0, 10:], (x[0, 10:] - 0.5) / np.sqrt(4.0 + 1e-8), rtol=1e-6)
    np.testing.assert_array_equal(out[0, :10], x[0, :10])


def test_actions_reach_the_env_in_its_shape():
    box = gym.spaces.Box(-1, 1, (2, 3))
    flat = np.linspace(-2, 2, 12).reshape(2, 6)
    np.testing.assert_array_equal(to_env_actions(box, flat),
                                  np.clip(flat, -1, 1).reshape(2, 2, 3))
    md = gym.spaces.MultiDiscrete([3, 2], start=[1, -1])
    np.testing.assert_array_equal(to_env_actions(md, np.array([[2, 0]])), [[3, -1]])
    mb = to_env_actions(gym.spaces.MultiBinary([2, 2]), np.array([[1, 0, 0, 1]]))
    assert mb.dtype == np.int8 and mb.shape == (1, 2, 2)
    np.testing.assert_array_equal(to_env_actions(gym.spaces.Discrete(3, start=5),
                                                 np.array([0, 2])), [5, 7])


# ------------------------------------------------------------------------------ space matrix
# every action space, every observation space (each at least once)
MATRIX = [("discrete", "box"), ("box", "discrete"), ("box2d", "tuple"),
          ("multi_discrete", "dict"), ("multi_binary", "tuple"), ("multi_discrete", "box"),
          ("multi_binary", "dict")]
PREDICTED_VS_TRUE = ["surrogate/improvement", "surrogate/improvement_heldout", "true/J",
                     "true/improvement", "true/improvement_se", "kl/mean", "policy/entropy"]


def matrix_args(action: str, observation: str, algo: str) -> tuple[str, ...]:
    return ("logger=none", "progress=false", "env=custom", "env.id=trpo_lab/Spaces-v0",
            f"+env.kwargs.action={action}", f"+env.kwargs.observation={observation}",
            f"algo={algo}", "total_steps=256", "batch_steps=128", "critic.epochs=1",
            "eval.episodes=4", "eval.heldout_episodes=2", "checkpoint.every=1",
            "env.normalize_obs=true", "policy.hidden_sizes=[8]")


@pytest.mark.parametrize("algo", ["trpo", "ppo"])
@pytest.mark.parametrize("action,observation", MATRIX)
def test_space_matrix_trains_resumes_exactly_and_logs_the_truth(tmp_path, action, observation,
                                                                algo):
    cfg = compose_typed(*matrix_args(action, observation, algo))
    reference = tmp_path / "reference"
    reference.mkdir()
    assert Trainer(cfg, reference).run()["status"] == "completed"
    ref = read_metrics(reference)
    assert len(ref) == 2
    assert ref[PREDICTED_VS_TRUE].notna().all().all()
    assert (ref["kl/mean"] > 0).all()
    if algo == "trpo":
        assert (ref["trpo/accepted"] == 1).all() and (ref["kl/mean"] <= 0.01 * (1 + 1e-5)).all()
    # interrupted after its first update, then resumed from the checkpoint
    run_dir = tmp_path / "interrupted"
    run_dir.mkdir()
    stop = StopSignal()
    summary = Trainer(cfg, run_dir).run(stop, on_row=lambda row: setattr(stop, "requested", True))
    assert summary["status"] == "interrupted" and len(read_metrics(run_dir)) == 1
    assert Trainer(compose_typed(*matrix_args(action, observation, algo)),
                   run_dir).run()["status"] == "completed"
    pd.testing.assert_frame_equal(read_metrics(run_dir).drop(columns=TIME_COLUMNS,
                                                             errors="ignore"),
                                  ref.drop(columns=TIME_COLUMNS, errors="ignore"))


# ------------------------------------------------------------------------------ policy=module
def test_a_module_gets_tuple_and_dict_observations_as_their_parts():
    space = PackedSpace(gym.spaces.Tuple((DICT, gym.spaces.Discrete(2))))
    value = ({"pos": np.array([0.5, -0.25], np.float32), "cell": 3,
              "bits": np.array([1, 0], np.int8), "level": np.array([1, 2])}, 1)
    x = torch.as_tensor(encode_observations(space, space.pack(value)[None]))
    (parts, last) = split_encoded(space, x)
    assert list(parts) == ["bits", "cell", "level", "pos"]  # gymnasium's Dict key order
    np.testing.assert_array_equal(parts["bits"], [[1, 0]])
    np.testing.assert_array_equal(parts["cell"], [[0, 0, 1]])  # Discrete(3, start=1): 3 -> 2
    np.testing.assert_array_equal(parts["level"], [[0, 1, 0, 0, 1]])  # one-hot per component
    np.testing.assert_array_equal(parts["pos"], [[0.5, -0.25]])
    np.testing.assert_array_equal(last, [[0, 1]])
    assert all(t.dtype == torch.float32 for t in (*parts.values(), last))
    boxes = PackedSpace(gym.spaces.Dict({"img": gym.spaces.Box(0, 1, (2, 3)),
                                         "bits": gym.spaces.MultiBinary([2, 2])}))
    flat = torch.arange(10.0)[None]
    got = split_encoded(boxes, flat)
    np.testing.assert_array_equal(got["bits"], torch.arange(4.0).reshape(1, 2, 2))
    np.testing.assert_array_equal(got["img"], torch.arange(4.0, 10.0).reshape(1, 2, 3))


def module_args(algo: str) -> tuple[str, ...]:
    return (*matrix_args("discrete", "dict", algo), "policy=module",
            "policy.actor._target_=tests.nets.DictNet",
            "policy.critic._target_=tests.nets.DictNet")


@pytest.mark.parametrize("algo", ["trpo", "ppo"])
def test_a_custom_module_trains_on_dict_observations_and_resumes_exactly(tmp_path, algo):
    DictNet.seen.clear()
    cfg = compose_typed(*module_args(algo))
    policy = Policy(PackedSpace(observation_space("dict")), gym.spaces.Discrete(3), cfg.policy,
                    [8])
    assert isinstance(policy.actor, StructuredView) and isinstance(policy.actor.net, DictNet)
    assert isinstance(policy.critic.net, DictNet)
    reference = tmp_path / "reference"
    reference.mkdir()
    assert Trainer(cfg, reference).run()["status"] == "completed"
    ref = read_metrics(reference)
    assert len(ref) == 2 and ref[PREDICTED_VS_TRUE].notna().all().all()
    assert (ref["kl/mean"] > 0).all()
    if algo == "trpo":
        assert (ref["trpo/accepted"] == 1).all() and (ref["kl/mean"] <= 0.01 * (1 + 1e-5)).all()
    # every call (rollouts, the evaluator, the updates, the critic) handed it the dict
    assert DictNet.seen == {tuple(sorted(DictNet.PARTS.items()))}
    run_dir = tmp_path / "interrupted"
    run_dir.mkdir()
    stop = StopSignal()
    summary = Trainer(cfg, run_dir).run(stop, on_row=lambda row: setattr(stop, "requested", True))
    assert summary["status"] == "interrupted" and len(read_metrics(run_dir)) == 1
    assert Trainer(compose_typed(*module_args(algo)), run_dir).run()["status"] == "completed"
    pd.testing.assert_frame_equal(read_metrics(run_dir).drop(columns=TIME_COLUMNS,
                                                             errors="ignore"),
                                  ref.drop(columns=TIME_COLUMNS, errors="ignore"))


# ------------------------------------------------------------------------------ factored garnet
FACTORED = ["env=garnet", "env.num_states=10", "env.num_actions=6",
            "env.action_components=[3,2]", "policy=tabular", "gamma=0.9"]


def test_factored_garnet_env_is_the_joint_mdp():
    cfg = compose_typed(*FACTORED)
    envs = make_vector_env(cfg.env, 1, cfg.gamma)
    env = envs.envs[0].unwrapped
    assert env.action_space == gym.spaces.MultiDiscrete([3, 2])
    mdp = garnet(10, 6, 5, 0)
    env.reset(seed=0, options={"state": 4})
    _, reward, *_ = env.step(np.array([2, 1]))
    assert reward == mdp.R[4, 2 * 2 + 1]  # joint index a_1 * 2 + a_2


@pytest.mark.parametrize("algo", [["algo=trpo"], ["algo=kl_penalty", "algo.lr=0.5"],
                                  ["algo=kl_penalty", "algo.beta=theory", "algo.lr=1.0"]])
def test_factored_garnet_exact_columns_and_identities(tmp_path, algo):
    metrics = train_in_process(tmp_path, *FACTORED, *algo, "algo.estimator=exact",
                               "eval.episodes=8", "batch_steps=128", "total_steps=640")
    assert len(metrics) == 5
    exact_columns = ["true/J", "true/improvement", "bound/trpo", "bound/cpo", "bound/C",
                     "bound/eps", "exact/surrogate_improvement", "exact/pdl_residual",
                     "mc/J", "mc/improvement"]
    assert metrics[exact_columns].notna().all().all()
    assert (metrics["exact/pdl_residual"] < 1e-10 * metrics["true/J"].abs().max()).all()
    for bound in ("bound/trpo", "bound/cpo"):
        assert (metrics["true/improvement"] >= metrics[bound] - 1e-10).all()
    # consecutive rows: J(pi_{k+1}) = J(pi_k) + dJ_k, exactly
    np.testing.assert_allclose(metrics["true/J"].iloc[1:].to_numpy(),
                               (metrics["true/J"] + metrics["true/improvement"]).iloc[:-1],
                               rtol=1e-12)
    np.testing.assert_allclose(metrics["surrogate/improvement"],
                               metrics["exact/surrogate_improvement"], rtol=1e-3, atol=1e-6)
    if algo == ["algo=trpo"]:
        assert (metrics["kl/mean"] <= 0.01 * (1 + 1e-5)).all()
    assert metrics["true/J"].iloc[-1] > metrics["true/J"].iloc[0]
    # the Monte Carlo J on the same policy is within a few standard errors of the exact one
    assert (abs(metrics["mc/J"] - metrics["true/J"]) <= 5 * metrics["mc/J_se"]).all()


def test_factored_policy_table_is_a_product_of_components():
    """The exact evaluator sees the joint pi[s, a_1 * 2 + a_2] = pi_1(a_1|s) pi_2(a_2|s)."""
    cfg = compose_typed(*FACTORED)
    envs = make_vector_env(cfg.env, 1, cfg.gamma)
    policy = Policy(envs.single_observation_space, envs.single_action_space, cfg.policy, [])
    table = policy.actor[0].weight
    with torch.no_grad():
        table.copy_(torch.randn_like(table))
    pi = policy.numpy_actor().probabilities(np.eye(10))
    logits = table.detach().numpy().T.astype(np.float64)
    p1 = np.exp(logits[:, :3]) / np.exp(logits[:, :3]).sum(1, keepdims=True)
    p2 = np.exp(logits[:, 3:]) / np.exp(logits[:, 3:]).sum(1, keepdims=True)
    np.testing.assert_allclose(pi, (p1[:, :, None] * p2[:, None, :]).reshape(10, 6), rtol=1e-6)
    evaluation = exact.evaluate(garnet(10, 6, 5, 0), pi, 0.9)
    assert np.isfinite(evaluation.J)


# ------------------------------------------------------------------------------ refusals
@pytest.mark.parametrize("name,space", [("TextObs-v0", "Text"), ("SequenceObs-v0", "Sequence"),
                                        ("GraphAction-v0", "Graph"),
                                        ("HugeDiscrete-v0", "Discrete(1099511627776)"),
                                        ("TupleWithText-v0", "Text")])
def test_unserved_spaces_are_refused_by_name(name, space):
    cfg = compose_typed("env=custom", f"env.id=tests.space_envs:{name}")
    with pytest.raises(EnvError) as error:
        make_vector_env(cfg.env, 1, cfg.gamma)
    assert space in str(error.value) and "supported:" in str(error.value)


def test_refusal_on_the_command_line_exits_2_in_one_line(tmp_path):
    proc = run_cli(["env=custom", "env.id=tests.space_envs:TextObs-v0", "logger=none",
                    f"hydra.run.dir={tmp_path / 'run'}", *TINY],
                   cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "observation space Text(" in lines[0]
    assert "supported: Discrete, Box (any shape)" in lines[0]


def test_factored_actions_off_tabular_envs_or_with_the_wrong_product_are_refused():
    from trpo_lab.config import ConfigError

    with pytest.raises(ConfigError, match="env.action_components"):
        compose_typed("env=cartpole", "env.action_components=[2,2]")
    with pytest.raises(ConfigError, match="set env.num_actions=6"):
        compose_typed("env=garnet", "env.action_components=[3,2]")
    cfg = compose_typed("env=chain", "env.action_components=[3,2]")
    with pytest.raises(EnvError, match="product is the MDP's 2 actions"):
        make_vector_env(cfg.env, 1, cfg.gamma)


# ------------------------------------------------------------------------------ vine
@pytest.mark.parametrize("action,proposal", [("box2d", "uniform"), ("multi_binary", "uniform"),
                                             ("multi_discrete", "policy")])
def test_vine_branches_every_action_space(tmp_path, action, proposal):
    """The vine sampler (snapshots through PackObservations) with the new heads: uniform
    proposals in the head's flat form, branch actions reshaped for the env."""
    metrics = train_in_process(tmp_path, "env=custom", "env.id=trpo_lab/Spaces-v0",
                               f"+env.kwargs.action={action}", "+env.kwargs.observation=dict",
                               "algo.sampler=vine", f"algo.vine.proposal={proposal}",
                               "total_steps=256", "batch_steps=128", "eval.episodes=4",
                               "critic.epochs=1")
    assert len(metrics) == 2
    assert metrics[["surrogate/improvement", "true/improvement", "kl/mean"]].notna().all().all()
    assert ((metrics["kl/mean"] > 0) & (metrics["kl/mean"] <= 0.01 * (1 + 1e-5))).all()


def test_vine_on_the_factored_garnet_keeps_the_exact_identities(tmp_path):
    metrics = train_in_process(tmp_path, *FACTORED, "algo.sampler=vine",
                               "algo.vine.proposal=uniform", "total_steps=256",
                               "batch_steps=128", "eval.episodes=4")
    assert (metrics["exact/pdl_residual"] < 1e-10 * metrics["true/J"].abs().max()).all()
    assert (metrics["true/improvement"] >= metrics["bound/trpo"] - 1e-10).all()
