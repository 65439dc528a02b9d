"""``device``: the networks and the update on a torch device other than the CPU.

Here (no GPU): the key's refusals, the backend choice off the CPU, and every tensor the update's
numerics create on the networks' device, checked on torch's ``meta`` device, which refuses to
mix its tensors with CPU ones exactly as CUDA does (a CPU scalar excepted) but computes no
values. Where torch sees a GPU: whole runs on ``device=cuda`` against the same runs on the CPU,
a group against its runs alone, exact resume, and the Fisher-vector product in float64.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest
import torch

from tests.conftest import compose_typed, read_summary, run_cli, train_in_process
from tests.test_networks import make_batch, make_policy
from trpo_lab.algos.common import mean_kl, predicted_improvement, surrogate
from trpo_lab.algos.trpo import fisher_vector_product
from trpo_lab.chi_square import chi_square
from trpo_lab.config import ConfigError, PolicyConfig
from trpo_lab.generic import StackedModule, outputs_and_pullback
from trpo_lab.group import GroupTrainer
from trpo_lab.logging import TIME_COLUMNS
from trpo_lab.policies import Policy
from trpo_lab.preflight import check_device
from trpo_lab.rollout import Batch
from trpo_lab.train import Trainer, full_float32_on_gpus

REPO = Path(__file__).resolve().parents[1]
META = torch.device("meta")
HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="torch sees no CUDA GPU here")
SMALL = ["total_steps=768", "batch_steps=256", "num_envs=2", "critic.epochs=2",
         "critic.minibatches=2", "eval.episodes=4", "eval.heldout_episodes=2",
         "checkpoint.every=1"]
MODULE = ["policy=module", "policy.actor._target_=tests.nets.ResidualNet",
          "policy.critic._target_=tests.nets.ResidualNet"]


# ------------------------------------------------------------------------- refusals, everywhere

def test_check_device_accepts_the_gpus_torch_sees_and_names_the_key_otherwise():
    check_device("cpu", gpus=0)
    check_device("cuda", gpus=1)
    check_device("cuda:1", gpus=2)
    with pytest.raises(ConfigError, match=r"device='cuda': torch sees no CUDA GPU.*device=cpu"):
        check_device("cuda", gpus=0)
    with pytest.raises(ConfigError, match=r"device='cuda:2': torch sees 2 CUDA GPU\(s\), "
                                          r"cuda:0 to cuda:1"):
        check_device("cuda:2", gpus=2)


@pytest.mark.parametrize("args, key, message", [
    (["device=gpu"], "device", "must be cpu, cuda or cuda:N"),
    (["device=cuda:x"], "device", "must be cpu, cuda or cuda:N"),
    (["device=cuda", "policy.backend=fast"], "policy.backend",
     "the hand-written derivatives run in numpy on the CPU"),
])
def test_bad_devices_are_refused_before_anything_is_written(args, key, message, tmp_path):
    run_dir = tmp_path / "run"
    out = run_cli([*args, "logger=none", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert f"{key}=" in out.stderr and message in out.stderr
    assert not (run_dir / "metrics.csv").exists()


@pytest.mark.skipif(HAS_CUDA, reason="torch sees a GPU: device=cuda runs")
def test_cuda_without_a_gpu_is_refused_with_exit_2(tmp_path):
    run_dir = tmp_path / "run"
    out = run_cli(["device=cuda", "logger=none", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert out.returncode == 2
    assert "device='cuda'" in out.stderr and "torch sees no CUDA GPU" in out.stderr
    assert not (run_dir / "metrics.csv").exists()


def test_off_the_cpu_every_network_takes_the_generic_backend():
    space, action = gym.spaces.Box(-1, 1, (4,)), gym.spaces.Discrete(2)
    on_cpu = Policy(space, action, PolicyConfig(), [8])
    assert on_cpu.fast_actor and on_cpu.fast_critic and on_cpu.device.type == "cpu"
    off = Policy(space, action, PolicyConfig(), [8], device=META)
    assert not off.fast_actor and not off.fast_critic
    assert {p.device for p in off.parameters()} == {META} and off.device == META
    on_cpu.to(META)  # moved after it was built: the numpy path is not taken off the CPU
    assert not on_cpu.fast_actor and not on_cpu.fast_critic
    on_cpu.to_empty(device="cpu")  # back (meta tensors hold no values to copy)
    assert on_cpu.fast_actor and on_cpu.fast_critic


def test_gpu_runs_compute_in_full_float32():
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    try:
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        full_float32_on_gpus()
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
         torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark) = saved


# ------------------------------------------------- the update's numerics stay on the device

def _on_meta(kind: str, action: str) -> tuple[Policy, Batch]:
    """A policy moved to the meta device and a batch built on the CPU by finish_batch."""
    policy, space = make_policy(kind, action, 0)  # auto: generic once off the CPU
    policy.to(META)
    return policy, make_batch(policy, space, action, 12, 0)


@pytest.mark.parametrize("action", ["discrete", "box"])
@pytest.mark.parametrize("kind", ["mlp", "cnn", "module"])
def test_the_update_numerics_create_no_cpu_tensor(kind, action):
    policy, batch = _on_meta(kind, action)
    for f in fields(Batch):  # finish_batch moved every tensor of the batch
        value = getattr(batch, f.name)
        if isinstance(value, torch.Tensor):
            assert value.device == META, f.name
    n = sum(p.numel() for p in policy.actor_parameters())
    v = torch.empty(n, dtype=torch.float64, device=META)
    # a CPU tensor anywhere inside would raise "Tensor on device cpu is not on the expected
    # device meta", as CUDA does
    assert fisher_vector_product(policy, batch, damping=0.1)(v).device == META
    for value in (surrogate(policy, batch), mean_kl(policy, batch),
                  predicted_improvement(policy, batch),
                  chi_square(policy.head, batch.old_params, policy.dist_params(batch.obs))):
        assert value.device == META
    critic = StackedModule.of([policy.critic])
    out, back = outputs_and_pullback(critic, critic.flat, batch.obs[None])
    assert out.device == META and back(torch.empty_like(out)).device == META


# ----------------------------------------------------------------------- on a GPU, where one is

@needs_cuda
def test_the_fvp_on_the_gpu_is_the_cpu_one_in_float64():
    policy, space = make_policy("module", "box", 0, backend="generic")
    batch = make_batch(policy, space, "box", 64, 0)
    n = sum(p.numel() for p in policy.actor_parameters())
    v = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    expected = fisher_vector_product(policy, batch, damping=0.1)(v)
    policy.to("cuda")
    got = fisher_vector_product(policy, make_batch(policy, space, "box", 64, 0), 0.1)(
        v.to("cuda"))
    assert got.device.type == "cuda"
    torch.testing.assert_close(got.cpu(), expected, rtol=1e-10, atol=1e-12)


@needs_cuda
@pytest.mark.parametrize("extra", [[], MODULE, [*MODULE, "algo=ppo", "algo.minibatches=4"],
                                   ["algo=kl_penalty", "algo.minibatches=2"]])
def test_a_gpu_run_takes_the_cpu_runs_first_step(extra, tmp_path):
    gpu = train_in_process(tmp_path / "gpu", *SMALL, *extra, "device=cuda")
    cpu = train_in_process(tmp_path / "cpu", *SMALL, *extra, "policy.backend=generic")
    assert len(gpu) == len(cpu) == 3
    assert read_summary(tmp_path / "gpu")["status"] == "completed"
    for key in ("kl/mean", "surrogate/improvement", "value/loss", "true/J",
                "surrogate/improvement_heldout", "policy/entropy"):
        assert np.isfinite(gpu[key]).all(), key
        # the first update starts from the same policy and draws the same batch; only float32
        # rounding (GPU against CPU kernels) differs
        assert gpu[key][0] == pytest.approx(cpu[key][0], rel=1e-3, abs=1e-6), key
    if "algo=ppo" not in extra and "algo=kl_penalty" not in extra:
        moved = gpu[gpu["trpo/accepted"] == 1]
        assert len(moved) and (moved["kl/mean"] <= 0.01 * (1 + 1e-5)).all()


@needs_cuda
def test_a_gpu_run_resumes_and_a_gpu_group_equals_its_runs_alone(tmp_path):
    whole = train_in_process(tmp_path / "whole", *SMALL, "device=cuda")
    train_in_process(tmp_path / "part", *SMALL, "device=cuda", "total_steps=512")
    part = train_in_process(tmp_path / "part", *SMALL, "device=cuda")
    # CUDA's index_add_ sums in an unspecified order: equal to rounding, not to the bit
    pd.testing.assert_frame_equal(whole.drop(columns=TIME_COLUMNS),
                                  part.drop(columns=TIME_COLUMNS), rtol=1e-5, atol=1e-7)
    extra = ["logger=none", "progress=false", *SMALL, "device=cuda"]
    variants = [["seed=0"], ["seed=1", "algo.delta=0.02"]]
    trainers = []
    for i, variant in enumerate(variants):
        (tmp_path / "group" / str(i)).mkdir(parents=True)
        trainers.append(Trainer(compose_typed(*extra, *variant), tmp_path / "group" / str(i),
                                in_group=True))
    assert [error for _, error in GroupTrainer(trainers).run()] == [None, None]
    for i, variant in enumerate(variants):
        alone = train_in_process(tmp_path / f"alone{i}", *SMALL, "device=cuda", *variant)
        grouped = pd.read_csv(tmp_path / "group" / str(i) / "metrics.csv")
        pd.testing.assert_frame_equal(grouped.drop(columns=TIME_COLUMNS).iloc[:1],
                                      alone.drop(columns=TIME_COLUMNS).iloc[:1],
                                      rtol=1e-4, atol=1e-6)
