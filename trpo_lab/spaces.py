"""Which gymnasium spaces the policy serves, and how: observation encoders, action heads, the
actions an env receives, and the refusal of everything else.

Observations (:func:`encode_observations` maps a batch [N, ...] to the policy's input
[N, :func:`observation_dim`] float32):

- ``Discrete(n, start)``: one-hot of ``obs - start`` (n entries);
- ``Box`` of any shape: flattened;
- ``MultiBinary``: flattened 0/1; ``MultiDiscrete(nvec, start)``: one one-hot per component,
  concatenated (sum(nvec) entries);
- ``Tuple`` and ``Dict`` (nested too): the env is wrapped in :class:`PackObservations`, which
  packs each observation into one flat float64 vector (its parts in the space's order, each
  Discrete part as its integer, every other part flattened; :class:`PackedSpace` keeps the
  structure), and the encoder concatenates the encodings of the parts above. :func:`unpack`
  gives back the structured batch (a tuple or dict of arrays), for networks that take it.

Observation normalisation (``env.normalize_obs``) applies to the Box parts only
(:func:`box_mask`): one-hot and binary entries are left as they are.

Actions (head, see :func:`trpo_lab.policies.action_head`): Discrete -> Categorical, Box of any
shape -> diagonal Gaussian over its flattened entries, MultiDiscrete -> independent
Categoricals, MultiBinary -> independent Bernoullis. Buffers hold the head's flat form;
:func:`to_env_actions` turns it into what the env takes (Box: reshaped and clipped to the
bounds; MultiDiscrete and Discrete: plus ``start``).

Text, Graph, Sequence (and any other) spaces, and a Discrete too large to one-hot
(``MAX_DISCRETE``), are refused (:func:`unsupported`).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

MAX_DISCRETE = 1 << 20  # larger Discrete observations/actions count as unbounded: refused

OBSERVATIONS = ("Discrete, Box (any shape), MultiBinary, MultiDiscrete, and Tuple/Dict of "
                "these")
ACTIONS = "Discrete, Box (any shape), MultiDiscrete, MultiBinary"


def _leaf(space: gym.Space) -> bool:
    return isinstance(space, gym.spaces.Discrete | gym.spaces.Box | gym.spaces.MultiBinary
                      | gym.spaces.MultiDiscrete)


def unsupported(space: gym.Space, role: str) -> str | None:
    """Why the policy cannot serve ``space`` as the ``role`` ("observation" or "action")
    space, or None when it can."""
    allowed = OBSERVATIONS if role == "observation" else ACTIONS
    structured = isinstance(space, gym.spaces.Tuple | gym.spaces.Dict)
    if structured and role == "observation":
        parts = space.spaces.values() if isinstance(space, gym.spaces.Dict) else space.spaces
        for part in parts:
            if isinstance(part, gym.spaces.Tuple | gym.spaces.Dict):
                reason = unsupported(part, role)
            else:
                reason = None if _leaf(part) else f"its part {part} is not"
                reason = reason or _too_large(part)
            if reason is not None:
                return f"{role} space {space} is not supported ({reason}); supported: {allowed}"
        return None
    if not _leaf(space):
        return f"{role} space {space} is not supported; supported: {allowed}"
    reason = _too_large(space)
    if reason is not None:
        return f"{role} space {space} is not supported ({reason}); supported: {allowed}"
    return None


def _too_large(space: gym.Space) -> str | None:
    sizes = [int(space.n)] if isinstance(space, gym.spaces.Discrete) else \
        [int(n) for n in np.ravel(space.nvec)] if isinstance(space, gym.spaces.MultiDiscrete) \
        else []
    if any(n > MAX_DISCRETE for n in sizes):
        return f"a Discrete of more than {MAX_DISCRETE} values counts as unbounded"
    return None


# ------------------------------------------------------------------------------ packing
def _leaves(space: gym.Space, path: tuple = ()) -> list[tuple[tuple, gym.Space]]:
    """(path, leaf space) in the space's order (Dict: its key order; Tuple: index order)."""
    if isinstance(space, gym.spaces.Dict):
        return [leaf for key, part in space.spaces.items() for leaf in _leaves(part, (*path, key))]
    if isinstance(space, gym.spaces.Tuple):
        return [leaf for i, part in enumerate(space.spaces) for leaf in _leaves(part, (*path, i))]
    return [(path, space)]


def _packed_size(space: gym.Space) -> int:
    return 1 if isinstance(space, gym.spaces.Discrete) else int(np.prod(space.shape))


class PackedSpace(gym.spaces.Box):
    """A Tuple or Dict observation space packed into one flat float64 Box; ``structure`` is the
    original space, ``leaves`` its parts with their slices of the packed vector."""

    def __init__(self, structure: gym.Space):
        self.structure = structure
        self.leaves: list[tuple[tuple, gym.Space, slice]] = []
        offset = 0
        for path, leaf in _leaves(structure):
            size = _packed_size(leaf)
            self.leaves.append((path, leaf, slice(offset, offset + size)))
            offset += size
        super().__init__(-np.inf, np.inf, (offset,), np.float64)

    def __repr__(self) -> str:
        return f"Packed({self.structure})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PackedSpace) and self.structure == other.structure

    __hash__ = None  # spaces are compared, not hashed

    def pack(self, obs) -> np.ndarray:
        out = np.empty(self.shape, np.float64)
        for path, _, where in self.leaves:
            value = obs
            for key in path:
                value = value[key]
            out[where] = np.ravel(np.asarray(value, np.float64))
        return out

    def sample(self, mask=None, probability=None) -> np.ndarray:
        return self.pack(self.structure.sample())

    def contains(self, x) -> bool:
        return isinstance(x, np.ndarray) and x.shape == self.shape


def unpack(space: PackedSpace, packed: np.ndarray):
    """The structured batch of packed observations [N, k]: per part an array [N, *part shape]
    (Discrete parts int64), nested in tuples and dicts as the original space."""
    def build(part: gym.Space, path: tuple):
        if isinstance(part, gym.spaces.Dict):
            return {key: build(sub, (*path, key)) for key, sub in part.spaces.items()}
        if isinstance(part, gym.spaces.Tuple):
            return tuple(build(sub, (*path, i)) for i, sub in enumerate(part.spaces))
        where = next(s for p, _, s in space.leaves if p == path)
        values = packed[:, where]
        if isinstance(part, gym.spaces.Discrete):
            return values[:, 0].astype(np.int64)
        return values.reshape(packed.shape[0], *part.shape).astype(part.dtype)

    return build(space.structure, ())


class PackObservations(gym.ObservationWrapper):
    """A Tuple or Dict observation as one flat vector (:class:`PackedSpace`)."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.observation_space = PackedSpace(env.observation_space)

    def observation(self, observation) -> np.ndarray:
        return self.observation_space.pack(observation)


def needs_packing(space: gym.Space) -> bool:
    return isinstance(space, gym.spaces.Tuple | gym.spaces.Dict)


# ------------------------------------------------------------------------------ encoding
def _leaf_dim(space: gym.Space) -> int:
    if isinstance(space, gym.spaces.Discrete):
        return int(space.n)
    if isinstance(space, gym.spaces.MultiDiscrete):
        return int(np.sum(space.nvec))
    return int(np.prod(space.shape))


def observation_dim(space: gym.Space) -> int:
    """Size of the policy input for observations of ``space`` (see the module docstring)."""
    if isinstance(space, PackedSpace):
        return sum(_leaf_dim(leaf) for _, leaf, _ in space.leaves)
    return _leaf_dim(space)


def _one_hot(index: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros((index.shape[0], n), np.float32)
    out[np.arange(index.shape[0]), index] = 1.0
    return out


def _encode_leaf(space: gym.Space, obs: np.ndarray) -> np.ndarray:
    rows = obs.shape[0]
    if isinstance(space, gym.spaces.Discrete):
        return _one_hot(obs.reshape(rows).astype(np.int64) - int(space.start), int(space.n))
    if isinstance(space, gym.spaces.MultiDiscrete):
        nvec = np.ravel(space.nvec)
        values = obs.reshape(rows, -1).astype(np.int64) - np.ravel(space.start)
        return np.concatenate([_one_hot(values[:, j], int(n)) for j, n in enumerate(nvec)],
                              axis=1)
    return obs.reshape(rows, -1).astype(np.float32, copy=False)


def encode_observations(space: gym.Space, obs: np.ndarray) -> np.ndarray:
    """A batch of observations [N, ...] as the policy's input [N, observation_dim] float32."""
    if isinstance(space, PackedSpace):
        return np.concatenate([_encode_leaf(leaf, obs[:, where])
                               for _, leaf, where in space.leaves], axis=1)
    return _encode_leaf(space, obs)


def box_mask(space: gym.Space) -> np.ndarray | None:
    """Which entries of the encoded observation come from Box parts (the ones observation
    normalisation applies to); None when all do (a plain Box space)."""
    if isinstance(space, gym.spaces.Box) and not isinstance(space, PackedSpace):
        return None
    leaves = [leaf for _, leaf, _ in space.leaves] if isinstance(space, PackedSpace) else [space]
    return np.concatenate([np.full(_leaf_dim(leaf), isinstance(leaf, gym.spaces.Box))
                           for leaf in leaves])


# ------------------------------------------------------------------------------ actions
def action_storage(space: gym.Space) -> tuple[tuple[int, ...], type]:
    """Shape and dtype of one sampled action in the head's flat form (buffers, batches)."""
    if isinstance(space, gym.spaces.Discrete):
        return (), np.int64
    if isinstance(space, gym.spaces.Box):
        return (int(np.prod(space.shape)),), np.float64
    return (int(np.prod(space.shape)),), np.int64


def to_env_actions(space: gym.Space, actions: np.ndarray) -> np.ndarray:
    """The head's flat actions [..., d] (Discrete: [...]) as the env takes them: a Box's
    reshaped to its shape and clipped to its bounds; Discrete and MultiDiscrete indices plus
    ``start``; MultiBinary reshaped, int8."""
    if isinstance(space, gym.spaces.Discrete):
        return actions if int(space.start) == 0 else actions + int(space.start)
    lead = actions.shape[:-1]
    if isinstance(space, gym.spaces.Box):
        if len(space.shape) == 1:
            return np.clip(actions, space.low, space.high)
        return np.clip(actions.reshape(*lead, *space.shape), space.low, space.high)
    shaped = actions.reshape(*lead, *space.shape)
    if isinstance(space, gym.spaces.MultiDiscrete):
        return shaped + space.start if np.any(space.start) else shaped
    return shaped.astype(np.int8)
