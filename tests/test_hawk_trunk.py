"""The Hawk trunk inside the base model: hook points, stepping equals the full forward (with and without an
intervention), keeping a subset of a decoding state's batch (both trunks), save/load, init, and training."""

import math

import pytest
import torch

from internal_rl.common.config import config_from_dict, config_to_dict
from internal_rl.common.errors import ConfigError
from internal_rl.models.base_model import BaseModel, BaseModelConfig, load_base_model, save_base_model
from internal_rl.models.hawk_trunk import HawkTrunkConfig
from internal_rl.models.transformer import TransformerConfig
from internal_rl.rl.internal_env import drop_finished, select_sequences

from helpers import check_cached_step_equals_full_forward, check_intervention_is_causal, scaled_model

OBS_DIM = 12
T = 9


def tiny_config(trunk: str = "hawk", **changes) -> BaseModelConfig:
    hawk = HawkTrunkConfig(d_model=16, n_layers=4, lru_width=24, n_heads=2, mlp_hidden=32)
    transformer = TransformerConfig(d_model=16, n_layers=4, n_heads=2, d_head=8, d_mlp=32, n_buckets=8, max_distance=16)
    return BaseModelConfig(obs_dim=OBS_DIM, trunk=trunk, hawk=hawk, transformer=transformer, **changes)


def tiny_model(seed: int = 0, trunk: str = "hawk", **changes) -> BaseModel:
    # Scaled weights also lift the conv filter off its near-zero init, so the conv's time shifts are tested.
    return scaled_model(tiny_config(trunk, **changes), seed)


def obs_batch(batch: int = 3, steps: int = T, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, steps, OBS_DIM, generator=torch.Generator().manual_seed(seed))


def test_paper_defaults_and_variance_scaled_init():
    config = HawkTrunkConfig()
    assert (config.d_model, config.n_layers, config.lru_width, config.n_heads, config.mlp_hidden) == (256, 8, 256, 8, 512)
    torch.manual_seed(0)
    model = BaseModel(BaseModelConfig(trunk="hawk"))
    assert model.n_layers == 8 and model.d_model == 256 and len(model.hook_names) == 24
    block = model.trunk.blocks[0]
    bound = 2 * math.sqrt(0.1 / 256) / 0.8796 + 1e-6
    for w in (block.mlp.up.weight, block.recurrent.linear_x.weight, block.recurrent.linear_out.weight):  # fan_in 256
        assert abs(w.std().item() - math.sqrt(0.1 / 256)) < 0.1 * math.sqrt(0.1 / 256)
        assert w.abs().max() <= bound
    gate = block.recurrent.rg_lru.a_gate.w  # 8 blocks of 32 x 32
    assert abs(gate.std().item() - math.sqrt(0.1 / 32)) < 0.1 * math.sqrt(0.1 / 32)


def test_cached_activations_equal_manual_computation():
    model = tiny_model()
    obs = obs_batch()
    with torch.no_grad():
        out = model(obs, cache_hooks=model.hook_names)
        x = model.obs_embed(obs)
        for block in model.trunk.blocks:
            i = block.index
            torch.testing.assert_close(out.cache[f"blocks.{i}.hook_resid_pre"], x)
            x = x + block.recurrent(block.temporal_norm(x), block.init_state(3))[0]
            torch.testing.assert_close(out.cache[f"blocks.{i}.hook_resid_mid"], x)
            x = x + block.mlp(block.channel_norm(x))
            torch.testing.assert_close(out.cache[f"blocks.{i}.hook_resid_post"], x)
        torch.testing.assert_close(out.action_params, model.action_head(model.ln_final(x)))
    assert set(out.cache) == set(model.hook_names)


def test_intervention_acts_downstream_and_causally():
    model = tiny_model()
    obs = obs_batch()
    t0 = 4
    plain, kicked = check_intervention_is_causal(model, obs, "blocks.1.hook_resid_mid", t0)
    # The MLP after the kicked point sees the kick at t0 only; later blocks carry it forward in time.
    post = "blocks.1.hook_resid_post"
    assert torch.equal(plain.cache[post][:, :t0], kicked.cache[post][:, :t0])
    assert not torch.allclose(plain.cache[post][:, t0], kicked.cache[post][:, t0])
    later = "blocks.2.hook_resid_mid"
    assert not torch.allclose(plain.cache[later][:, t0 + 1 :], kicked.cache[later][:, t0 + 1 :])


@pytest.mark.parametrize("with_intervention", [False, True])
def test_cached_step_equals_full_forward(with_intervention):
    model = tiny_model(action_head="gaussian", action_dim=3, obs_head="gaussian")
    check_cached_step_equals_full_forward(model, obs_batch(steps=T), with_intervention)


def test_step_state_is_refused_when_full_and_a_stateless_pass_starts_at_zero():
    model = tiny_model()
    obs = obs_batch(batch=2)
    with torch.no_grad():
        state = model.init_state(2, 1)
        model.step(obs[:, 0], state)
        with pytest.raises(ConfigError, match="full"):
            model.step(obs[:, 1], state)
        with pytest.raises(ConfigError, match="start=3"):
            model.trunk(model.obs_embed(obs), None, None, 3)


@pytest.mark.parametrize("trunk", ["transformer", "hawk"])
def test_select_sequences_keeps_a_subset_of_the_batch(trunk):
    """Stepping a batch, keeping rows 0 and 2, then stepping on equals the full forward on those rows."""
    model = tiny_model(trunk=trunk)
    obs = obs_batch(batch=4)
    rows = torch.tensor([0, 2])
    with torch.no_grad():
        full = model(obs[rows])
        state = model.init_state(4, T)
        outs = [model.step(obs[:, t], state).action_params[rows] for t in range(3)]
        kept = select_sequences(state, rows)
        assert kept.batch_size == 2 and kept.position == 3 and kept.max_len == T
        outs += [model.step(obs[rows, t], kept).action_params for t in range(3, T)]
        # The original state is untouched by the selection and by stepping the copy.
        model.step(obs[:, 3], state)
    torch.testing.assert_close(torch.cat(outs, 1), full.action_params, atol=1e-5, rtol=0)
    # drop_finished keeps the live episodes once at least half are done.
    done = torch.tensor([False, True, False, True])
    with torch.no_grad():
        state = model.init_state(4, T)
        model.step(obs[:, 0], state)
    smaller, live = drop_finished(state, torch.arange(4), done)
    assert live.tolist() == [0, 2] and smaller.batch_size == 2


def test_config_and_checkpoint_round_trip(tmp_path):
    config = tiny_config(action_head="gaussian", action_dim=3, obs_head="gaussian", obs_loss_weight=10.0)
    assert config_from_dict(BaseModelConfig, config_to_dict(config)) == config
    assert config_to_dict(config)["hawk"]["n_layers"] == 4
    model = tiny_model(action_head="gaussian", action_dim=3, obs_head="gaussian", obs_loss_weight=10.0)
    save_base_model(tmp_path / "ckpt", model)
    loaded = load_base_model(tmp_path / "ckpt")
    assert loaded.config == model.config and loaded.config.trunk == "hawk"
    obs = obs_batch()
    with torch.no_grad():
        assert torch.equal(loaded(obs).action_params, model(obs).action_params)


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"n_layers": 0}, "n_layers"),
        ({"n_heads": 5}, "n_heads"),
        ({"init_scale": 0.0}, "init_scale"),
        ({"d_model": 0}, "d_model"),
    ],
)
def test_bad_hawk_configs_are_refused(bad, match):
    with pytest.raises(ConfigError, match=match):
        HawkTrunkConfig(**{"d_model": 16, "lru_width": 16, "n_heads": 2, **bad})


def _continuous_batch(generator: torch.Generator, batch: int = 16, steps: int = 12, action_dim: int = 3) -> dict:
    """A synthetic continuous task: o_{t+1} = 0.8 o_t + noise, and the action depends on o_t and o_{t-1}
    (so the trunk's memory matters); episodes of different lengths, padded."""
    obs = torch.zeros(batch, steps + 1, OBS_DIM)
    obs[:, 0] = torch.randn(batch, OBS_DIM, generator=generator)
    for t in range(steps):
        obs[:, t + 1] = 0.8 * obs[:, t] + 0.3 * torch.randn(batch, OBS_DIM, generator=generator)
    previous = torch.cat([torch.zeros(batch, 1, OBS_DIM), obs[:, : steps - 1]], dim=1)
    actions = torch.tanh(obs[:, :steps, :action_dim] - previous[..., action_dim : 2 * action_dim])
    actions = actions + 0.05 * torch.randn(actions.shape, generator=generator)
    lengths = torch.randint(steps // 2, steps + 1, (batch,), generator=generator)
    mask = torch.arange(steps)[None, :] < lengths[:, None]
    return {"observations": obs[:, :steps], "next_observations": obs[:, 1:], "actions": actions, "mask": mask}


def test_tiny_gaussian_hawk_model_trains():
    """A few dozen AdamW steps (the paper's ant optimiser at a larger learning rate) lower the loss."""
    torch.manual_seed(0)
    model = BaseModel(tiny_config(action_head="gaussian", action_dim=3, obs_head="gaussian", obs_loss_weight=10.0))
    generator = torch.Generator().manual_seed(0)
    held_out = _continuous_batch(generator)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.03)
    with torch.no_grad():
        _, before = model.loss(held_out)
    for _ in range(40):
        loss, _ = model.loss(_continuous_batch(generator))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        _, after = model.loss(held_out)
    assert math.isfinite(after["loss"]) and after["loss"] < before["loss"], (before, after)
    # The next-observation NLL cannot fall below that of the transition noise (std 0.3 per element).
    obs_floor = OBS_DIM * (0.5 * 0.3**2 + 0.5 * math.log(2 * math.pi))
    assert after["obs_nll"] - obs_floor < 0.5 * (before["obs_nll"] - obs_floor), (before, after)
    assert after["action_nll"] < before["action_nll"] - 1.0, (before, after)
