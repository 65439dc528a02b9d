"""Policies: one interface for every algorithm.

A :class:`Policy` holds an actor (observation -> distribution parameters) and a critic
(observation -> V) with disjoint parameter sets, exposed explicitly by
:meth:`Policy.actor_parameters` and :meth:`Policy.critic_parameters`. Distributions are
represented by a single parameter tensor per state (logits for Categorical; mean and log-std
side by side for the diagonal Gaussian; the components' logits side by side for MultiDiscrete and
MultiBinary, :mod:`trpo_lab.heads`), so the "old" policy of a batch is just a tensor and
``log_prob``, ``kl`` and ``entropy`` are pure functions of such tensors. :func:`action_head`
picks the head of an action space; :mod:`trpo_lab.spaces` says which spaces are served.

The actor and critic are any torch modules (:mod:`trpo_lab.networks`: ``policy=mlp``,
``linear``, ``tabular``, ``cnn`` or ``module``); ``policy.backend`` decides per network whether
its derivatives take the hand-written path (plain Linear + tanh/ReLU stacks:
``fast_actor``/``fast_critic``) or the generic torch.func one (:mod:`trpo_lab.generic`).

Rollouts sample from a snapshot of the actor, :meth:`Policy.numpy_actor`: for the hand-written
backend a :class:`NumpyActor`, which evaluates the same function in numpy (a 64x64 MLP call
costs about a third of a torch call at these sizes); for the generic one a
:class:`ModuleActor`, a copy of the module called under no_grad. Both sample with a seeded
numpy Generator from the same noise (:class:`ActorSampling`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from trpo_lab import spaces
from trpo_lab.config import ConfigError, PolicyConfig, module_target
from trpo_lab.heads import (
    BernoulliHead,
    MultiCategoricalHead,
    bernoulli_from_uniform,
    categorical_from_uniform,
    multi_categorical_from_uniform,
    multi_categorical_joint,
    multi_categorical_mode,
)
from trpo_lab.module_calls import snapshot_call, stacked_call
from trpo_lab.networks import (
    ACTIVATIONS,
    ConvNet,
    ObservationView,
    Tanh,  # noqa: F401  (its home was here; tests and users import it from here)
    fast_layout,
    instantiate,
    module_view,
    observation_shape,
)
from trpo_lab.networks import mlp as _mlp
from trpo_lab.numerics import (
    categorical_entropy,
    categorical_kl,
    gaussian_entropy,
    gaussian_kl,
    gaussian_log_prob,
)


class PolicySpaceError(ValueError):
    """The policy cannot serve the environment's observation or action space."""


class CategoricalHead:
    """Categorical over ``n`` actions; parameters are logits [N, n]."""

    kind = "categorical"
    action_dtype = torch.long

    def __init__(self, n: int):
        self.n = n
        self.param_dim = n

    def log_prob(self, params: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        log_p = torch.log_softmax(params, dim=-1)
        return log_p.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)

    def kl(self, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return categorical_kl(p, q)

    def fisher_operator(self, params: torch.Tensor, weights: torch.Tensor):
        """u -> w M u row-wise, M = diag(p) - p p^T: the Hessian of KL(p || softmax(z)) in the
        logits z, p = softmax(params); p and w p computed once for all of CG's products."""
        p = torch.softmax(params, dim=-1)
        wp = weights.unsqueeze(-1) * p

        def product(u: torch.Tensor) -> torch.Tensor:
            pu = wp * u
            return pu - p * pu.sum(-1, keepdim=True)

        return product

    def entropy(self, params: torch.Tensor) -> torch.Tensor:
        return categorical_entropy(params)

    def noise(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.random(n)

    def sample(self, params: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Inverse-CDF samples from uniforms [...] (NumpyActor's rule, in torch)."""
        probs = torch.softmax(params - params.max(-1, keepdim=True).values, dim=-1)
        cdf = probs.cumsum(-1)
        return (cdf <= noise[..., None] * cdf[..., -1:]).sum(-1).clamp(max=self.n - 1)

    def mode(self, params: torch.Tensor) -> torch.Tensor:
        return params.argmax(-1)

    def joint_actions(self) -> np.ndarray:
        """Every action, in index order (the exact evaluator's columns)."""
        return np.arange(self.n)

    def joint_index(self, actions: np.ndarray) -> np.ndarray:
        return np.asarray(actions)


class GaussianHead:
    """Diagonal Gaussian with a state-independent log-std; parameters are [mean, log_std]."""

    kind = "gaussian"
    action_dtype = torch.float32

    def __init__(self, dim: int):
        self.dim = dim
        self.param_dim = 2 * dim

    def split(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return params[..., : self.dim], params[..., self.dim:]

    def log_prob(self, params: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        mean, log_std = self.split(params)
        return gaussian_log_prob(mean, log_std, actions)

    def kl(self, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return gaussian_kl(*self.split(p), *self.split(q))

    def fisher_operator(self, params: torch.Tensor, weights: torch.Tensor):
        """u -> w M u row-wise, M = diag(1/sigma^2, 2): the Hessian of the KL in
        (mean, log_std); the diagonal w M computed once for all of CG's products."""
        _, log_std = self.split(params)
        w = weights.unsqueeze(-1)
        diagonal = torch.cat([w * torch.exp(-2 * log_std), 2.0 * w.expand_as(log_std)], dim=-1)

        def product(u: torch.Tensor) -> torch.Tensor:
            return diagonal * u

        return product

    def entropy(self, params: torch.Tensor) -> torch.Tensor:
        return gaussian_entropy(self.split(params)[1])

    def noise(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.standard_normal((n, self.dim))

    def sample(self, params: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        mean, log_std = self.split(params)
        return mean + torch.exp(log_std) * noise

    def mode(self, params: torch.Tensor) -> torch.Tensor:
        return self.split(params)[0]


Head = CategoricalHead | GaussianHead | MultiCategoricalHead | BernoulliHead


def action_head(space: gym.Space) -> Head:
    """The head that serves an action space: Categorical (Discrete), diagonal Gaussian over the
    flattened entries (Box of any shape), independent Categoricals (MultiDiscrete), independent
    Bernoullis (MultiBinary); anything else is refused."""
    reason = spaces.unsupported(space, "action")
    if reason is not None:
        raise PolicySpaceError(reason)
    if isinstance(space, gym.spaces.Discrete):
        return CategoricalHead(int(space.n))
    if isinstance(space, gym.spaces.Box):
        return GaussianHead(int(np.prod(space.shape)))
    if isinstance(space, gym.spaces.MultiDiscrete):
        return MultiCategoricalHead([int(n) for n in np.ravel(space.nvec)])
    return BernoulliHead(int(np.prod(space.shape)))


def observation_dim(space: gym.Space) -> int:
    """Size of the policy input (:func:`trpo_lab.spaces.observation_dim`): one-hot for
    Discrete observations, flattened for Box, parts concatenated for Tuple and Dict."""
    reason = spaces.unsupported(space, "observation")
    if reason is not None and not isinstance(space, spaces.PackedSpace):
        raise PolicySpaceError(reason)
    return spaces.observation_dim(space)


def encode_observations(space: gym.Space, obs: np.ndarray) -> np.ndarray:
    """Discrete observations become one-hot vectors; Box observations are flattened to float;
    the other spaces as :func:`trpo_lab.spaces.encode_observations` says."""
    return spaces.encode_observations(space, obs)


class Policy(nn.Module):
    """Actor and critic with disjoint parameters; see the module docstring."""

    def __init__(self, obs_space: gym.Space, action_space: gym.Space, policy: PolicyConfig,
                 critic_hidden: list[int], device: str | torch.device = "cpu"):
        """``device``: where the networks live (the run's ``device``); off the CPU both take
        the generic backend, whatever ``policy.backend=auto`` would pick on the CPU."""
        super().__init__()
        device = torch.device(device)
        obs_dim = observation_dim(obs_space)
        self.head: Head = action_head(action_space)
        out_dim = self.head.dim if isinstance(self.head, GaussianHead) else self.head.param_dim
        if policy.name == "tabular" and not isinstance(obs_space, gym.spaces.Discrete):
            raise PolicySpaceError(
                f"policy=tabular needs a Discrete observation space, got {obs_space}")
        self.policy_name = policy.name
        self.activation = policy.activation
        shape = observation_shape(obs_space)
        if policy.name == "mlp":
            self.actor = _mlp(obs_dim, list(policy.hidden_sizes), out_dim, policy.activation, 0.01)
        elif policy.name == "linear":
            self.actor = _mlp(obs_dim, [], out_dim, policy.activation, 0.01)
        elif policy.name == "tabular":  # a logit table: a bias-free linear map of the one-hot
            self.actor = _mlp(obs_dim, [], out_dim, policy.activation, 0.0, bias=False)
        elif policy.name == "cnn":
            self.actor = ObservationView(ConvNet(
                obs_space, out_dim, tuple(policy.channels), tuple(policy.hidden_sizes),
                policy.kernel_size, policy.stride, policy.activation), shape)
        else:  # module: the user's class (networks.instantiate checks the contract)
            self.actor = module_view(
                instantiate(dict(policy.actor), "policy.actor", obs_space, out_dim), obs_space)
        if isinstance(self.head, GaussianHead):
            self.log_std = nn.Parameter(torch.full((out_dim,), float(policy.init_log_std)))
        else:
            self.log_std = None
        if module_target(policy.critic) is not None:
            self.critic = module_view(
                instantiate(dict(policy.critic), "policy.critic", obs_space, 1), obs_space)
        else:
            self.critic = _mlp(obs_dim, list(critic_hidden), 1, "tanh", 1.0)
        self._fast_actor = self._fast(policy.backend, "policy", self.actor)
        self._fast_critic = self._fast(policy.backend, "policy.critic", self.critic)
        self.to(device)

    @property
    def fast_actor(self) -> bool:
        """Whether the actor's derivatives take the hand-written (numpy, CPU) path: its
        network is one that path knows, ``policy.backend`` allows it, and it is on the CPU now
        (a policy moved to a GPU after construction takes the generic path there)."""
        return self._fast_actor and self.device.type == "cpu"

    @property
    def fast_critic(self) -> bool:
        """:attr:`fast_actor` for the critic."""
        return self._fast_critic and self.device.type == "cpu"

    @property
    def device(self) -> torch.device:
        """The device of the networks, where batches live (:func:`trpo_lab.rollout.
        finish_batch` moves them there)."""
        return next(self.parameters()).device

    @staticmethod
    def _fast(backend: str, key: str, net: nn.Module) -> bool:
        """Whether ``net``'s derivatives take the hand-written path (``policy.backend``)."""
        unknown = fast_layout(net)
        if backend == "fast" and unknown is not None:
            raise ConfigError("policy.backend", "fast",
                              f"the hand-written derivatives serve nn.Sequential stacks of "
                              f"Linear and Tanh/ReLU; {key}'s network is not one ({unknown}): "
                              "use policy.backend=auto or generic")
        return backend != "generic" and unknown is None

    def set_tabular_probabilities(self, pi: np.ndarray) -> None:
        """Make a tabular policy's table equal ``pi`` [S, A] (logits log pi; the softmax of a
        row of log-probabilities is the row itself)."""
        if self.policy_name != "tabular":
            raise TypeError(f"only a tabular policy has a table to set, not {self.policy_name}")
        (table,) = self.actor.parameters()
        logits = np.log(np.maximum(np.asarray(pi, np.float64), np.finfo(np.float64).tiny))
        with torch.no_grad():
            table.copy_(torch.as_tensor(logits.T, dtype=table.dtype))

    def actor_parameters(self) -> list[nn.Parameter]:
        extra = [] if self.log_std is None else [self.log_std]
        return [*self.actor.parameters(), *extra]

    def critic_parameters(self) -> list[nn.Parameter]:
        return list(self.critic.parameters())

    def dist_params(self, obs: torch.Tensor) -> torch.Tensor:
        out = self.actor(obs)
        if self.log_std is None:
            return out
        return torch.cat([out, self.log_std.expand_as(out)], dim=-1)

    def log_prob(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self.head.log_prob(self.dist_params(obs), actions)

    def kl(self, obs: torch.Tensor, old_params: torch.Tensor) -> torch.Tensor:
        """Per-state KL(old || current), old policy first as in TRPO's constraint."""
        return self.head.kl(old_params, self.dist_params(obs))

    def entropy(self, obs: torch.Tensor) -> torch.Tensor:
        return self.head.entropy(self.dist_params(obs))

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.critic(obs).squeeze(-1)

    def numpy_actor(self) -> NumpyActor | ModuleActor:
        """A snapshot of the actor for sampling: numpy for the hand-written backend, the
        module itself (torch, under no_grad) for the generic one; the same interface."""
        if not self.fast_actor:
            return ModuleActor.of(self)
        layers = [m for m in self.actor if isinstance(m, nn.Linear)]
        weights = [
            (m.weight.detach().cpu().numpy().T.astype(np.float64),
             None if m.bias is None else m.bias.detach().cpu().numpy().astype(np.float64))
            for m in layers
        ]
        log_std = None if self.log_std is None else self.log_std.detach().cpu().numpy()
        return NumpyActor(weights, ACTIVATIONS[self.activation][1], self.head.kind,
                          None if log_std is None else log_std.astype(np.float64),
                          getattr(self.head, "components", ()))


class ActorSampling:
    """Sampling from an actor snapshot's ``forward`` (numpy in, float64 numpy out), shared by
    :class:`NumpyActor` and :class:`ModuleActor`: ``kind`` is the head's, ``log_std`` the
    Gaussian's (numpy) or None, ``components`` a MultiDiscrete head's nvec."""

    kind: str
    log_std: np.ndarray | None
    components: tuple[int, ...]

    def forward(self, obs: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def output_dim(self) -> int:
        raise NotImplementedError

    def noise(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """The random numbers one sampling step consumes, for ``n`` states: one uniform per
        state (Categorical) or per state and component (MultiDiscrete, MultiBinary), one
        standard normal per state and dimension (Gaussian)."""
        if self.kind == "categorical":
            return rng.random(n)
        if self.kind == "multi_categorical":
            return rng.random((n, len(self.components)))
        if self.kind == "bernoulli":
            return rng.random((n, self.output_dim()))
        return rng.standard_normal((n, self.log_std.shape[-1]))

    def sample_from_noise(self, obs: np.ndarray, noise: np.ndarray) -> np.ndarray:
        """Inverse-CDF sampling (Categorical, per component for MultiDiscrete), u < sigmoid
        (Bernoulli) or mean + std * z (Gaussian) from given noise."""
        out = self.forward(obs)
        if self.kind == "categorical":
            if out.shape[-1] == 2:
                return self._sample_two(out, noise)
            return categorical_from_uniform(out, noise)
        if self.kind == "multi_categorical":
            return multi_categorical_from_uniform(out, noise, self.components)
        if self.kind == "bernoulli":
            return bernoulli_from_uniform(out, noise)
        return out + np.exp(self.log_std) * noise

    @staticmethod
    def _sample_two(out: np.ndarray, noise: np.ndarray) -> np.ndarray:
        """The general inverse CDF for two actions, with the same operations on the same
        numbers (max of two = maximum, the cumulative sum's last entry = p0 + p1, exp on the
        same contiguous array) but no reductions along a length-2 axis, which cost numpy
        several times the arithmetic."""
        out -= np.maximum(out[..., 0], out[..., 1])[..., None]
        probs = np.exp(out, out=out)
        total = probs[..., 0] + probs[..., 1]
        threshold = noise * total
        actions = (probs[..., 0] <= threshold).astype(np.int64)
        actions += total <= threshold
        return np.minimum(actions, 1, out=actions)

    def mode(self, obs: np.ndarray) -> np.ndarray:
        """The deterministic policy: the most probable action (ties: the lowest index; per
        component for MultiDiscrete and MultiBinary), or the Gaussian mean."""
        out = self.forward(obs)
        if self.kind == "multi_categorical":
            return multi_categorical_mode(out, self.components)
        if self.kind == "bernoulli":
            return (out > 0).astype(np.int64)
        return out.argmax(axis=1) if self.kind == "categorical" else out

    def sample(self, obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.sample_from_noise(obs, self.noise(rng, obs.shape[0]))

    def probabilities(self, obs: np.ndarray) -> np.ndarray:
        """pi(.|s) for every row of ``obs`` (Categorical; MultiDiscrete: the joint distribution
        over prod(nvec) joint actions in C order), used by exact tabular evaluation."""
        out = self.forward(obs)
        if self.kind == "multi_categorical":
            return multi_categorical_joint(out, self.components)
        out = out - out.max(axis=1, keepdims=True)
        probs = np.exp(out)
        return probs / probs.sum(axis=1, keepdims=True)


class ModuleActor(ActorSampling):
    """The actor of the generic backend as a sampling snapshot: a copy of the module with the
    weights of the moment, evaluated in torch without autograd (on the policy's device).
    Stacked snapshots (the runs of a group, pi and pi' in the evaluator) are evaluated in one
    call; observations are then [m, N, d]. The call is built once per snapshot
    (:mod:`trpo_lab.module_calls`: a Linear + activation stack as its layers' own operations,
    stacked ones as batched products; any other module called as it is)."""

    def __init__(self, module: nn.Module, kind: str, log_std: np.ndarray | None,
                 components: tuple[int, ...], out_dim: int,
                 members: list[nn.Module] | None = None):
        self.module, self.kind, self.log_std = module, kind, log_std
        self.components, self.out_dim, self.members = components, out_dim, members
        first = next(module.parameters())
        self.dtype, self.device = first.dtype, first.device
        self._np_dtype = torch.empty((), dtype=self.dtype).numpy().dtype
        self._call = snapshot_call(module) if members is None else stacked_call(members)
        self._cpu = self.device.type == "cpu"

    @staticmethod
    def of(policy: Policy) -> ModuleActor:
        log_std = None if policy.log_std is None else \
            policy.log_std.detach().cpu().double().numpy()
        out_dim = policy.head.dim if isinstance(policy.head, GaussianHead) else \
            policy.head.param_dim
        return ModuleActor(copy.deepcopy(policy.actor), policy.head.kind, log_std,
                           tuple(getattr(policy.head, "components", ())), out_dim)

    @staticmethod
    def stack(actors: list[ModuleActor]) -> ModuleActor:
        first = actors[0]
        log_std = None if first.log_std is None else np.stack(
            [a.log_std for a in actors])[:, None]
        return ModuleActor(first.module, first.kind, log_std, first.components, first.out_dim,
                           [a.module for a in actors])

    def as_float32(self) -> ModuleActor:
        return self

    def output_dim(self) -> int:
        return self.out_dim

    def forward(self, obs: np.ndarray) -> np.ndarray:
        # from_numpy on the array in the module's dtype: zero-copy (a float32 observation for
        # a float32 module), a third of as_tensor's cost per call
        x = torch.from_numpy(np.asarray(obs, dtype=self._np_dtype))
        if not self._cpu:
            return self._call(x.to(self.device)).double().cpu().numpy()
        return self._call(x).numpy().astype(np.float64)


@dataclass
class NumpyActor(ActorSampling):
    """The actor's function evaluated in numpy, for fast per-step sampling in rollouts.

    :meth:`stack` makes one actor of several with the same architecture: weights get a leading
    axis, observations are [m, N, obs_dim] and one call evaluates all m actors (the evaluator
    steps pi and pi' together this way).
    """

    weights: list[tuple[np.ndarray, np.ndarray | None]]
    activation: object
    kind: str
    log_std: np.ndarray | None
    components: tuple[int, ...] = ()  # multi_categorical: the nvec its logits split into

    def forward(self, obs: np.ndarray) -> np.ndarray:
        # in place after each product (the same operations, so the same numbers as x + b and
        # tanh(x)): one temporary per layer, which the per-step calls of rollouts and the
        # evaluator feel
        x = obs
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(self.weights):
            x = x @ w
            if b is not None:
                x += b
            if i < last:
                if self.activation is np.tanh:
                    np.tanh(x, out=x)
                else:
                    x = self.activation(x)
        return x

    def as_float32(self) -> NumpyActor:
        """The same actor in float32: about 3x faster per call on 64 rows (numpy's float32
        tanh), for the evaluator's many-row calls; rollouts keep float64."""
        def cast(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a.astype(np.float32)

        return NumpyActor([(cast(w), cast(b)) for w, b in self.weights], self.activation,
                          self.kind, cast(self.log_std), self.components)

    @staticmethod
    def stack(actors: list[NumpyActor]) -> NumpyActor:
        """m actors as one: forward([m, N, d]) row-block i is actors[i].forward(x[i])."""
        first = actors[0]
        if isinstance(first, ModuleActor):  # generic-backend snapshots stack their own way
            return ModuleActor.stack(actors)
        weights = []
        for i, (_, bias) in enumerate(first.weights):
            w = np.stack([a.weights[i][0] for a in actors])
            b = None if bias is None else np.stack([a.weights[i][1] for a in actors])[:, None]
            weights.append((w, b))
        log_std = None if first.log_std is None else np.stack(
            [a.log_std for a in actors])[:, None]
        return NumpyActor(weights, first.activation, first.kind, log_std, first.components)

    def output_dim(self) -> int:
        return self.weights[-1][0].shape[-1]
