"""Every action head against torch.distributions, its Fisher block against the Hessian of its
KL, a policy's Fisher-vector product with it against double backward, and its sampling."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch.distributions import (
    Bernoulli,
    Categorical,
    Independent,
    Normal,
    kl_divergence,
)

from trpo_lab.algos.common import mean_kl
from trpo_lab.algos.trpo import fisher_vector_product
from trpo_lab.batched import StackedActor, StackedBatch, fisher_vector_product_runs
from trpo_lab.config import PolicyConfig
from trpo_lab.heads import BernoulliHead, MultiCategoricalHead
from trpo_lab.numerics import flat_grad
from trpo_lab.policies import CategoricalHead, GaussianHead, Policy, action_head
from trpo_lab.rollout import finish_batch

SPACES = {
    "discrete": gym.spaces.Discrete(4),
    "box": gym.spaces.Box(-1, 1, (2,)),
    "box2d": gym.spaces.Box(-1, 1, (2, 3)),
    "multi_discrete": gym.spaces.MultiDiscrete([3, 2, 4]),
    "multi_binary": gym.spaces.MultiBinary(3),
}


def reference(head, params: torch.Tensor):
    """The torch.distributions object of ``params`` under ``head`` (a list of independent
    Categoricals for MultiDiscrete, whose components differ in size)."""
    if isinstance(head, CategoricalHead):
        return Categorical(logits=params)
    if isinstance(head, GaussianHead):
        mean, log_std = head.split(params)
        return Independent(Normal(mean, log_std.exp()), 1)
    if isinstance(head, BernoulliHead):
        return Independent(Bernoulli(logits=params), 1)
    return [Categorical(logits=z) for z in head.split(params)]


def random_actions(head, params: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    n = params.shape[0]
    if isinstance(head, CategoricalHead):
        return torch.randint(0, head.n, (n,), generator=g)
    if isinstance(head, GaussianHead):
        return torch.randn(n, head.dim, generator=g, dtype=params.dtype)
    if isinstance(head, BernoulliHead):
        return torch.randint(0, 2, (n, head.n), generator=g).to(params.dtype)
    return torch.stack([torch.randint(0, k, (n,), generator=g) for k in head.components], -1)


def random_params(head, n: int, g: torch.Generator) -> torch.Tensor:
    return 1.5 * torch.randn(n, head.param_dim, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("space", list(SPACES))
def test_log_prob_entropy_kl_match_torch_distributions(space):
    head = action_head(SPACES[space])
    g = torch.Generator().manual_seed(0)
    p, q = random_params(head, 9, g), random_params(head, 9, g)
    actions = random_actions(head, p, g)
    ref_p, ref_q = reference(head, p), reference(head, q)
    if isinstance(ref_p, list):  # MultiDiscrete: the product of independent Categoricals
        log_prob = sum(d.log_prob(actions[:, j]) for j, d in enumerate(ref_p))
        entropy = sum(d.entropy() for d in ref_p)
        kl = sum(kl_divergence(a, b) for a, b in zip(ref_p, ref_q))
    else:
        log_prob, entropy, kl = ref_p.log_prob(actions), ref_p.entropy(), kl_divergence(ref_p,
                                                                                         ref_q)
    torch.testing.assert_close(head.log_prob(p, actions), log_prob, rtol=0, atol=1e-6)
    torch.testing.assert_close(head.entropy(p), entropy, rtol=0, atol=1e-6)
    torch.testing.assert_close(head.kl(p, q), kl, rtol=0, atol=1e-6)  # old policy first
    assert (head.kl(p, p).abs() < 1e-12).all()


def test_equal_sized_components_are_torch_independent_categoricals():
    head = MultiCategoricalHead([3, 3])
    g = torch.Generator().manual_seed(1)
    p, q = random_params(head, 5, g), random_params(head, 5, g)
    ref_p = Independent(Categorical(logits=p.reshape(5, 2, 3)), 1)
    ref_q = Independent(Categorical(logits=q.reshape(5, 2, 3)), 1)
    actions = random_actions(head, p, g)
    torch.testing.assert_close(head.log_prob(p, actions), ref_p.log_prob(actions), atol=1e-6,
                               rtol=0)
    torch.testing.assert_close(head.kl(p, q), kl_divergence(ref_p, ref_q), atol=1e-6, rtol=0)


@pytest.mark.parametrize("space", list(SPACES))
def test_fisher_block_is_the_hessian_of_the_kl(space):
    """M = d^2/dz^2 KL(p_old || p(z)) at z = z_old: block-diagonal diag(p) - p p^T per
    Categorical, p (1 - p) per Bernoulli, diag(1/sigma^2, 2) per Gaussian coordinate."""
    head = action_head(SPACES[space])
    g = torch.Generator().manual_seed(2)
    old = random_params(head, 3, g)
    weights = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    product = head.fisher_operator(old, weights)
    eye = torch.eye(head.param_dim, dtype=torch.float64)
    for i in range(3):
        hessian = torch.autograd.functional.hessian(
            lambda z, i=i: head.kl(old[i:i + 1], z[None])[0], old[i].clone())
        columns = product(eye[:, None, :].expand(-1, 3, -1).clone())[:, i, :]  # M e_j rows
        torch.testing.assert_close(columns.T, weights[i] * hessian, rtol=1e-10, atol=1e-12)


def test_fisher_blocks_closed_form():
    head = MultiCategoricalHead([2, 3])
    z = torch.tensor([[0.3, -0.2, 1.0, 0.0, -1.0]], dtype=torch.float64)
    m = head.fisher_operator(z, torch.ones(1, dtype=torch.float64))(
        torch.eye(5, dtype=torch.float64)[:, None, :])[:, 0, :]
    p1, p2 = torch.softmax(z[0, :2], -1), torch.softmax(z[0, 2:], -1)
    block = torch.block_diag(torch.diag(p1) - torch.outer(p1, p1),
                             torch.diag(p2) - torch.outer(p2, p2))
    torch.testing.assert_close(m, block, rtol=1e-12, atol=1e-14)
    bern = BernoulliHead(2)
    logits = torch.tensor([[0.0, 2.0]], dtype=torch.float64)
    prob = torch.sigmoid(logits[0])
    mb = bern.fisher_operator(logits, torch.ones(1, dtype=torch.float64))(
        torch.eye(2, dtype=torch.float64)[:, None, :])[:, 0, :]
    torch.testing.assert_close(mb, torch.diag(prob * (1 - prob)), rtol=1e-12, atol=1e-14)


def make_policy(space: str, seed: int, dtype=torch.float64) -> Policy:
    torch.manual_seed(seed)
    policy = Policy(gym.spaces.Box(-1, 1, (3,)), SPACES[space],
                    PolicyConfig(name="mlp", hidden_sizes=[5], init_log_std=-0.3), [4])
    with torch.no_grad():  # off the near-zero output initialisation
        for p in policy.actor_parameters():
            p.add_(0.5 * torch.randn_like(p))
    return policy.to(dtype)


def make_batch(policy: Policy, size: int, seed: int, dtype=torch.float64):
    g = torch.Generator().manual_seed(100 + seed)
    obs = torch.randn(size, 3, dtype=dtype, generator=g)
    with torch.no_grad():
        params = policy.dist_params(obs)
    actions = random_actions(policy.head, params, g)
    adv = torch.randn(size, dtype=dtype, generator=g)
    w = torch.rand(size, dtype=dtype, generator=g)
    w = w / w.sum()
    return finish_batch(policy, obs, actions, adv, adv, adv, w, w, False, False)


def double_backward_fvp(policy: Policy, batch, v: torch.Tensor) -> torch.Tensor:
    """H v of the mean KL by autograd: grad of (grad KL . v)."""
    params = policy.actor_parameters()
    grad = flat_grad(mean_kl(policy, batch), params, create_graph=True)
    return flat_grad(grad @ v, params)


@pytest.mark.parametrize("space", list(SPACES))
def test_policy_fvp_with_each_head_is_double_backward_of_the_mean_kl(space):
    policy = make_policy(space, 0)
    batch = make_batch(policy, 11, 0)
    n = sum(p.numel() for p in policy.actor_parameters())
    v = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    expected = double_backward_fvp(policy, batch, v)
    got = fisher_vector_product(policy, batch, damping=0.0)(v)
    torch.testing.assert_close(got, expected, rtol=1e-8, atol=1e-10)
    # the batched (group) path with its own damping per run
    policies = [policy, make_policy(space, 1)]
    batches = [batch, make_batch(policies[1], 11, 1)]
    actor, _ = StackedActor.of(policies)
    fvp = fisher_vector_product_runs(actor, StackedBatch.of(batches),
                                     torch.tensor([0.0, 0.5], dtype=torch.float64))
    vs = torch.stack([v, v.flip(0)])
    product = fvp(vs)
    torch.testing.assert_close(product[0], expected, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(product[1], double_backward_fvp(policies[1], batches[1], vs[1])
                               + 0.5 * vs[1], rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("space", list(SPACES))
def test_numpy_and_torch_sampling_agree_on_the_same_noise(space):
    """The rollouts' numpy sampler and the head's torch sampler map the same noise to the same
    actions (common random numbers hold whichever samples)."""
    policy = make_policy(space, 4)
    actor = policy.numpy_actor()
    obs = np.random.default_rng(0).normal(size=(50, 3))
    noise = actor.noise(np.random.default_rng(1), 50)
    numpy_actions = actor.sample_from_noise(obs, noise)
    with torch.no_grad():
        params = policy.dist_params(torch.as_tensor(obs))
        torch_actions = policy.head.sample(params, torch.as_tensor(noise))
    np.testing.assert_allclose(numpy_actions, torch_actions.numpy(), rtol=1e-10, atol=1e-10)
    with torch.no_grad():
        modes = policy.head.mode(params).numpy()
    np.testing.assert_allclose(actor.mode(obs), modes, rtol=1e-10, atol=1e-10)


def test_multi_categorical_samples_follow_the_joint_distribution():
    space = gym.spaces.MultiDiscrete([3, 2])
    policy = Policy(gym.spaces.Discrete(1), space, PolicyConfig(name="tabular"), [])
    with torch.no_grad():
        policy.actor[0].weight.copy_(torch.log(torch.tensor(
            [[0.2], [0.5], [0.3], [0.9], [0.1]])))
    actor = policy.numpy_actor()
    joint = actor.probabilities(np.ones((1, 1)))[0]
    np.testing.assert_allclose(joint, np.outer([0.2, 0.5, 0.3], [0.9, 0.1]).ravel(), rtol=1e-6)
    n = 200_000
    actions = actor.sample(np.ones((n, 1)), np.random.default_rng(0))
    index = policy.head.joint_index(actions)
    freq = np.bincount(index, minlength=6) / n
    np.testing.assert_allclose(freq, joint, atol=4 * np.sqrt(0.25 / n))
    np.testing.assert_array_equal(policy.head.joint_index(policy.head.joint_actions()),
                                  np.arange(6))


def test_bernoulli_samples_have_the_head_probabilities():
    head = BernoulliHead(2)
    logits = np.array([[-1.0, 0.5]])
    n = 200_000
    policy = Policy(gym.spaces.Discrete(1), gym.spaces.MultiBinary(2),
                    PolicyConfig(name="tabular"), [])
    with torch.no_grad():
        policy.actor[0].weight.copy_(torch.as_tensor(logits.T, dtype=torch.float32))
    actor = policy.numpy_actor()
    actions = actor.sample(np.ones((n, 1)), np.random.default_rng(0))
    np.testing.assert_allclose(actions.mean(0), 1 / (1 + np.exp(-logits[0])),
                               atol=4 * np.sqrt(0.25 / n))
    assert head.param_dim == 2


def test_box_of_any_shape_is_a_flattened_gaussian():
    head = action_head(gym.spaces.Box(-1, 1, (2, 3)))
    assert isinstance(head, GaussianHead) and head.dim == 6 and head.param_dim == 12
