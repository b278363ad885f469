"""Devices: names resolve or fail in one line, random draws do not depend on the device, and every training
stage runs on each device this machine has (the CPU; a CUDA GPU too where PyTorch sees one) and agrees
there with the CPU. Without a GPU the CUDA tests are skipped."""

import dataclasses
import json

import pytest
import torch

from internal_rl.cli import main
from internal_rl.common.device import module_device, resolve_device, standard_normal
from internal_rl.common.errors import ConfigError
from internal_rl.data.dataset import load_dataset
from internal_rl.data.generate import generate_dataset
from internal_rl.envs.batched_gridworld import BatchedGridWorld
from internal_rl.metacontroller.modules import MetacontrollerConfig
from internal_rl.metacontroller.training import MetacontrollerTrainConfig, train_metacontroller
from internal_rl.models.base_model import BaseModelConfig
from internal_rl.models.heads import CategoricalActionHead
from internal_rl.models.pretraining import PretrainConfig, train_base_model
from internal_rl.pipeline.reproduce import reproduce
from internal_rl.rl.internal_env import BatchedInternalEnv
from internal_rl.rl.policies import CodePolicy, RawActionPolicy
from internal_rl.rl.rollouts import collect_internal_rollouts, collect_raw_rollouts
from internal_rl.rl.training import train_rl

from helpers import TINY_TRUNK
from test_pipeline import TINY
from test_rl import GRID, random_models, tiny_config

HAS_CUDA = torch.cuda.is_available()
DEVICES = ["cpu"] + (["cuda"] if HAS_CUDA else [])
cuda_only = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")


def test_device_names_resolve_or_are_refused():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if HAS_CUDA else "cpu")
    for bad in ("tpu", "banana", "cuda:99", "meta"):
        with pytest.raises(ConfigError):
            resolve_device(bad)


@pytest.mark.skipif(HAS_CUDA, reason="this machine has a CUDA GPU")
def test_cuda_without_a_gpu_is_a_one_line_error(tmp_path, capsys):
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        resolve_device("cuda")
    assert main(["reproduce", "gridworld", "--out", str(tmp_path / "run"), "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "no CUDA GPU" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()  # refused before anything was written


@pytest.mark.parametrize("device", DEVICES)
def test_random_draws_come_from_the_cpu_generator(device):
    like = torch.zeros(1, device=device)
    noise = standard_normal((4, 3), torch.Generator().manual_seed(1), like)
    assert noise.device.type == device
    torch.testing.assert_close(noise.cpu(), torch.randn(4, 3, generator=torch.Generator().manual_seed(1)))

    torch.manual_seed(0)
    head = CategoricalActionHead(8, 4, init_scale=1.0)
    logits = head(torch.randn(64, 8))
    on_cpu = head.sample(logits, torch.Generator().manual_seed(2))
    on_device = head.sample(logits.to(device), torch.Generator().manual_seed(2))
    assert on_device.device.type == device
    assert torch.equal(on_device.cpu(), on_cpu)


# --- training stages on a GPU, against the CPU ----------------------------------------------------------


@pytest.fixture(scope="module")
def grid_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "grid"
    generate_dataset("gridworld", episodes=48, out=path, seed=0, show_progress=False)
    return load_dataset(path)


def tiny_pretrain(steps: int) -> PretrainConfig:
    trunk = TINY_TRUNK
    return PretrainConfig(model=BaseModelConfig(transformer=trunk), steps=steps, batch_size=8, lr=3e-3, log_every=2,
                          eval_every=2, checkpoint_every=3, eval_rollouts=0, holdout_fraction=0.25)


@cuda_only
def test_pretraining_on_cuda_matches_the_cpu_and_resumes_on_the_cpu(grid_data, tmp_path):
    train, held_out = grid_data.split(0.25, 0)
    on_cpu = train_base_model(tiny_pretrain(6), train, held_out=held_out, show_progress=False, device="cpu")
    on_gpu = train_base_model(tiny_pretrain(3), train, held_out=held_out, checkpoint_dir=tmp_path / "ckpt",
                              show_progress=False, device="cuda")
    assert module_device(on_gpu.model).type == "cuda"
    # The same initial weights and batches: the losses differ by rounding only.
    torch.testing.assert_close(torch.tensor(on_gpu.losses), torch.tensor(on_cpu.losses[:3]), atol=1e-4, rtol=1e-4)
    # A checkpoint written on the GPU resumes on the CPU and continues as the CPU run did.
    resumed = train_base_model(tiny_pretrain(6), train, held_out=held_out, checkpoint_dir=tmp_path / "ckpt",
                               resume=True, show_progress=False, device="cpu")
    assert resumed.start_step == 3
    torch.testing.assert_close(torch.tensor(resumed.losses), torch.tensor(on_cpu.losses[3:]), atol=1e-3, rtol=1e-3)


@cuda_only
def test_metacontroller_on_cuda_matches_the_cpu(grid_data):
    train, _ = grid_data.split(0.25, 0)
    base = train_base_model(tiny_pretrain(3), train, show_progress=False).model
    config = MetacontrollerConfig(n_z=2, rank=2, embedder_width=8)
    schedule = MetacontrollerTrainConfig(steps=4, batch_size=8, eval_every=2, eval_episodes=8, log_every=2)
    runs = {}
    for device in ("cpu", "cuda"):
        model, summary = train_metacontroller(base, grid_data, config, schedule, show_progress=False, device=device)
        assert module_device(model).type == device and summary["device"].startswith(device)
        runs[device] = summary["history"]
    for cpu, gpu in zip(runs["cpu"], runs["cuda"]):
        assert gpu["train_nll"] == pytest.approx(cpu["train_nll"], rel=1e-3)
        assert gpu["heldout_nll"] == pytest.approx(cpu["heldout_nll"], rel=1e-3)


@cuda_only
def test_rollouts_on_cuda_match_the_cpu():
    """The first decision of every episode sees the same input on both devices: the same code or action
    (drawn on the CPU) and, up to rounding, the same log-probability."""
    batches = {}
    for device in ("cpu", "cuda"):
        base, mc = random_models()
        base.to(device)
        mc.to(device)
        torch.manual_seed(1)
        policy = CodePolicy(base.d_model, mc.config.n_z, width=8, n_heads=2).to(device)
        env = BatchedInternalEnv(base, mc, GRID, 16)
        internal = collect_internal_rollouts(policy, env, seed=3, generator=torch.Generator().manual_seed(4))
        raw = collect_raw_rollouts(RawActionPolicy(base), BatchedGridWorld(GRID, 16), seed=3,
                                   generator=torch.Generator().manual_seed(4))
        batches[device] = internal, raw
        assert internal.log_probs.device.type == device and raw.actions.device.type == device
    for cpu, gpu in zip(batches["cpu"], batches["cuda"]):
        torch.testing.assert_close(gpu.actions[:, 0].cpu(), cpu.actions[:, 0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(gpu.log_probs[:, 0].cpu(), cpu.log_probs[:, 0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", ["internal", "raw"])
def test_rl_trains_on_each_device(device, method):
    base, mc = random_models()
    result = train_rl(method, base, None if method == "raw" else mc, GRID, 0, tiny_config(16), device=device)
    assert result["device"].startswith(device) and result["episodes"] == 16
    assert 0.0 <= result["final_eval"]["success_rate"] <= 1.0


@cuda_only
def test_reproduce_runs_on_cuda(tmp_path):
    tiny = dataclasses.replace(TINY, methods=("internal", "raw", "cotrained"))
    reproduce("gridworld", tmp_path / "run", "quick", show_progress=False, preset=tiny, device="cuda")
    record = json.loads((tmp_path / "run" / "reproduce.json").read_text())
    assert record["device"].startswith("cuda")
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert set(results["methods"]) == {"internal", "raw", "cotrained"}
    evaluation = json.loads((tmp_path / "run" / "pretrain" / "eval.json").read_text())
    assert evaluation["train_device"].startswith("cuda")
