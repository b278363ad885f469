"""Helpers shared across the tests: the tiny transformer trunk most tests build their base model from, a run
folder written as the pipeline leaves it, and, for the base-model tests of both trunks (`test_models.py`:
transformer, `test_hawk_trunk.py`: Hawk), a model with weights large enough to expose mistakes, stepping a
sequence, and the contracts every trunk must meet (cached stepping equals the full forward; an intervention
acts downstream only). tests/conftest.py offers the first two as fixtures."""

from pathlib import Path
from typing import Mapping

import torch

from internal_rl.common.checkpoint import save_checkpoint
from internal_rl.common.config import config_to_dict
from internal_rl.metacontroller.compile import CompILE
from internal_rl.models.base_model import BaseModel, BaseModelConfig, save_base_model
from internal_rl.models.hooks import controlled_hook
from internal_rl.models.transformer import TransformerConfig
from internal_rl.pipeline.run_folder import PRETRAIN, RunFolder

# Two blocks of width 16: the base model of most tests.
TINY_TRUNK = TransformerConfig(d_model=16, n_layers=2, n_heads=2, d_head=8, d_mlp=32)


def write_run_folder(
    root: Path, base_model: BaseModel, *, data: Path | None = None, metacontrollers: Mapping[str, torch.nn.Module] | None = None,
) -> RunFolder:
    """A run folder as the pipeline leaves it: `base_model` as the pretraining checkpoint (recording the dataset
    folder `data`, if given) and each metacontroller (or CompILE) of `metacontrollers` at its stage."""
    run = RunFolder(root)
    save_base_model(run.checkpoint(PRETRAIN), base_model, {"dataset": {"path": str(data)}} if data is not None else {})
    for stage, model in (metacontrollers or {}).items():
        key = "compile" if isinstance(model, CompILE) else "metacontroller"
        save_checkpoint(run.checkpoint(stage), model, {key: config_to_dict(model.config)})
    return run


def scaled_model(config: BaseModelConfig, seed: int = 0) -> BaseModel:
    """A model built with `seed`, in eval mode, with every matrix scaled by 4: the paper's 0.1-scaled init
    makes every block nearly the identity, and larger weights make equivalence tests sensitive to any mistake."""
    torch.manual_seed(seed)
    model = BaseModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(4.0)
    return model


def stepped(model, obs, interventions=None, cache_hooks=(), max_len=None):
    """The model's outputs stepping through `obs` [B, T, obs_dim] one step at a time from a fresh state."""
    state = model.init_state(obs.shape[0], max_len or obs.shape[1])
    outs = [model.step(obs[:, t], state, interventions=interventions, cache_hooks=cache_hooks) for t in range(obs.shape[1])]
    assert state.position == obs.shape[1]
    return outs


def check_cached_step_equals_full_forward(model, obs, with_intervention: bool, max_len=None) -> None:
    """Stepping `obs` equals the full forward on action and obs heads and at the controlled hook, with or
    without the residual-stream controller e + U e applied there."""
    hook = controlled_hook(model.n_layers)
    interventions = None
    if with_intervention:
        u = torch.randn(model.d_model, model.d_model, generator=torch.Generator().manual_seed(3)) * 0.3
        interventions = {hook: lambda x: x + x @ u}  # the residual-stream controller e + U e
    with torch.no_grad():
        full = model(obs, interventions=interventions, cache_hooks=[hook])
        outs = stepped(model, obs, interventions, [hook], max_len=max_len)
    for name, full_tensor in (("action_params", full.action_params), ("obs_params", full.obs_params)):
        stepped_tensor = torch.cat([getattr(o, name) for o in outs], dim=1)
        torch.testing.assert_close(stepped_tensor, full_tensor, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.cat([o.cache[hook] for o in outs], 1), full.cache[hook], atol=1e-5, rtol=0)
    assert outs[0].cache[hook].shape == (obs.shape[0], 1, model.d_model)


def check_intervention_is_causal(model, obs, hook: str, t0: int):
    """Kick the residual stream at `hook` at step `t0` only; check outputs change from t0 on and not before,
    and that hooks up to the kicked one are untouched (the cache at a hook holds the value before it).
    Returns the (plain, kicked) forward outputs, with every hook cached, for trunk-specific checks."""
    direction = torch.randn(model.d_model, generator=torch.Generator().manual_seed(5))

    def kick(x):  # not by a constant: a LayerNorm would remove that
        x = x.clone()
        x[:, t0] += 3.0 * direction
        return x

    with torch.no_grad():
        plain = model(obs, cache_hooks=model.hook_names)
        kicked = model(obs, interventions={hook: kick}, cache_hooks=model.hook_names)
    assert torch.equal(plain.action_params[:, :t0], kicked.action_params[:, :t0])
    assert (plain.action_params[:, t0:] - kicked.action_params[:, t0:]).abs().amax(-1).min() > 1e-4
    order = list(model.hook_names)
    for name in order[: order.index(hook) + 1]:
        assert torch.equal(plain.cache[name], kicked.cache[name]), name
    return plain, kicked
