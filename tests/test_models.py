"""Base model contracts: hook names, reading and writing hook points, causality, KV-cached stepping, heads."""

import math

import pytest
import torch
import torch.nn.functional as F

from internal_rl.common.errors import CheckpointError, ConfigError
from internal_rl.models.base_model import BaseModel, BaseModelConfig, load_base_model, save_base_model
from internal_rl.models.hooks import HookPoints, all_hook_names, controlled_hook, layer_hook, validate_hook
from internal_rl.models.transformer import Attention, TransformerConfig, relative_position_bucket

from helpers import check_cached_step_equals_full_forward, check_intervention_is_causal, scaled_model, stepped

OBS_DIM = 12
T = 9


def tiny_config(**changes) -> BaseModelConfig:
    trunk = TransformerConfig(d_model=16, n_layers=4, n_heads=2, d_head=8, d_mlp=32, n_buckets=8, max_distance=16)
    return BaseModelConfig(obs_dim=OBS_DIM, transformer=trunk, **changes)


def tiny_model(seed: int = 0, **changes) -> BaseModel:
    return scaled_model(tiny_config(**changes), seed)


def obs_batch(batch: int = 3, steps: int = T, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, steps, OBS_DIM, generator=g) < 0.3).float()


# --- hook names -----------------------------------------------------------------------------------------


def test_hook_names_and_validation():
    names = all_hook_names(6)
    assert len(names) == 18 and names[0] == "blocks.0.hook_resid_pre" and names[-1] == "blocks.5.hook_resid_post"
    assert validate_hook("blocks.3.hook_resid_mid", 6) == "blocks.3.hook_resid_mid"
    for bad in ("blocks.6.hook_resid_pre", "blocks.0.hook_attn", "resid_post", ""):
        with pytest.raises(ConfigError, match=r"valid: blocks\.0\.\.5\.hook_resid_\{pre,mid,post\}"):
            validate_hook(bad, 6)
    assert tiny_model().hook_names == all_hook_names(4)


def test_layer_hook_mapping():
    assert layer_hook(0, 6) == "blocks.0.hook_resid_pre"
    assert [layer_hook(l, 6) for l in range(1, 7)] == [f"blocks.{l}.hook_resid_post" for l in range(6)]
    assert controlled_hook(6) == "blocks.2.hook_resid_post"  # after block 3 of 6
    assert controlled_hook(8) == "blocks.3.hook_resid_post"
    with pytest.raises(ConfigError, match="valid: 0..6"):
        layer_hook(7, 6)


def test_unknown_hook_in_forward_and_step_is_refused():
    model = tiny_model()
    with pytest.raises(ConfigError, match="unknown hook 'blocks.4.hook_resid_pre'"):
        model(obs_batch(), cache_hooks=["blocks.4.hook_resid_pre"])
    with pytest.raises(ConfigError, match="unknown hook"):
        model(obs_batch(), interventions={"blocks.0.resid": lambda x: x})
    with pytest.raises(ConfigError, match="unknown hook"):
        model.step(obs_batch()[:, 0], model.init_state(3, T), cache_hooks=["nope"])


def test_intervention_must_keep_shape():
    model = tiny_model()
    with pytest.raises(ConfigError, match="returned shape"):
        model(obs_batch(), interventions={"blocks.1.hook_resid_post": lambda x: x[:, :1]})


# --- reading ------------------------------------------------------------------------------------------


def test_cached_activations_equal_manual_computation():
    model = tiny_model()
    obs = obs_batch()
    with torch.no_grad():
        out = model(obs, cache_hooks=model.hook_names)
        x = model.obs_embed(obs)
        for block in model.trunk.blocks:
            i = block.index
            assert torch.allclose(out.cache[f"blocks.{i}.hook_resid_pre"], x, atol=1e-6)
            x = x + block.attn(block.ln_attn(x))
            assert torch.allclose(out.cache[f"blocks.{i}.hook_resid_mid"], x, atol=1e-6)
            x = x + block.mlp(block.ln_mlp(x))
            assert torch.allclose(out.cache[f"blocks.{i}.hook_resid_post"], x, atol=1e-6)
        assert torch.allclose(out.action_params, model.action_head(model.ln_final(x)), atol=1e-6)
    assert set(out.cache) == set(model.hook_names)


def test_attention_equals_plain_matrix_products():
    """SDPA with the additive position-bias mask computes softmax(q k^T / sqrt(d) + bias) v, causally."""
    torch.manual_seed(0)
    config = TransformerConfig(d_model=16, n_heads=2, d_head=8, n_buckets=8, max_distance=16)
    attn = Attention(config)
    with torch.no_grad():
        attn.position_bias.embedding.weight.normal_()
        x = torch.randn(2, 7, 16)
        q, k, v = attn.qkv(x).view(2, 7, 3, 2, 8).unbind(2)  # [B,T,H,dh] each
        pos = torch.arange(7)
        bucket = relative_position_bucket(pos[None, :] - pos[:, None], 8, 16)
        logits = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(8) + attn.position_bias.embedding.weight[bucket].permute(2, 0, 1)
        logits = logits.masked_fill(pos[None, :] > pos[:, None], float("-inf"))
        y = torch.einsum("bhqk,bkhd->bqhd", logits.softmax(-1), v).reshape(2, 7, 16)
        assert torch.allclose(attn(x), attn.out(y), atol=1e-5)


def test_relative_position_buckets():
    rel = -torch.tensor([0, 1, 15, 16, 20, 64, 127, 128, 1000])
    buckets = relative_position_bucket(rel, 32, 128)
    assert buckets[:3].tolist() == [0, 1, 15]  # exact below n_buckets / 2
    assert buckets[3] == 16 and (buckets[3:].diff() >= 0).all() and buckets[-1] == 31 == buckets[-2]
    # Future keys (positive offsets) map to bucket 0; the attention mask removes them anyway.
    assert relative_position_bucket(torch.tensor([3]), 32, 128).item() == 0


# --- writing and causality ------------------------------------------------------------------------------


def test_identity_intervention_changes_nothing():
    model = tiny_model()
    obs = obs_batch()
    with torch.no_grad():
        plain = model(obs)
        same = model(obs, interventions={name: (lambda x: x) for name in model.hook_names})
    assert torch.equal(plain.action_params, same.action_params)


def test_intervention_acts_downstream_and_causally():
    model = tiny_model()
    obs = obs_batch()
    t0, hook = 4, "blocks.2.hook_resid_mid"
    plain, kicked = check_intervention_is_causal(model, obs, hook, t0)
    # The next hook sees the kick from t0 on only.
    order = list(model.hook_names)
    later = order[order.index(hook) + 1]
    assert torch.equal(plain.cache[later][:, :t0], kicked.cache[later][:, :t0])
    assert not torch.allclose(plain.cache[later][:, t0:], kicked.cache[later][:, t0:])


def test_outputs_depend_on_past_observations_only():
    model = tiny_model()
    obs = obs_batch()
    changed = obs.clone()
    changed[:, 5] = 1 - changed[:, 5]
    with torch.no_grad():
        a, b = model(obs), model(changed)
    assert torch.equal(a.action_params[:, :5], b.action_params[:, :5])
    assert torch.equal(a.obs_params[:, :5], b.obs_params[:, :5])
    assert not torch.allclose(a.action_params[:, 5:], b.action_params[:, 5:])


# --- KV-cached stepping ---------------------------------------------------------------------------------


@pytest.mark.parametrize("with_intervention", [False, True])
def test_cached_step_equals_full_forward(with_intervention):
    check_cached_step_equals_full_forward(tiny_model(), obs_batch(steps=T), with_intervention, max_len=T + 5)


def test_cached_step_beyond_bucket_range_and_overflow():
    """Offsets past max_distance share the last bucket in both modes; a full cache is refused."""
    model = tiny_model()
    obs = obs_batch(batch=2, steps=20)  # max_distance is 16
    with torch.no_grad():
        full = model(obs)
        outs = stepped(model, obs)
        torch.testing.assert_close(torch.cat([o.action_params for o in outs], 1), full.action_params, atol=1e-5, rtol=0)
        state = model.init_state(2, 1)
        model.step(obs[:, 0], state)
        with pytest.raises(ConfigError, match="full"):
            model.step(obs[:, 1], state)
        with pytest.raises(ConfigError, match="obs_t shape"):
            model.step(obs[:1, 0], model.init_state(2, 4))


def test_gaussian_heads_step_and_distribution():
    model = tiny_model(action_head="gaussian", action_dim=3, obs_head="gaussian")
    obs = obs_batch()
    with torch.no_grad():
        full = model(obs)
        outs = stepped(model, obs)
    torch.testing.assert_close(torch.cat([o.action_params for o in outs], 1), full.action_params, atol=1e-5, rtol=0)
    dist = model.action_distribution(full.action_params)
    assert dist.batch_shape == (3, T) and dist.event_shape == (3,)
    actions = model.sample_actions(full.action_params, torch.Generator().manual_seed(0))
    assert actions.shape == (3, T, 3)
    torch.testing.assert_close(model.action_nll(full.action_params, actions), -dist.log_prob(actions))
    batch = {"observations": obs, "next_observations": torch.randn(3, T, OBS_DIM), "actions": actions,
             "mask": torch.ones(3, T, dtype=torch.bool)}
    loss, metrics = model.loss(batch)
    assert torch.isfinite(loss) and "action_accuracy" not in metrics


def test_categorical_loss_is_masked_mean_of_nlls():
    model = tiny_model(obs_loss_weight=0.5)
    obs = obs_batch()
    actions = torch.randint(0, 4, (3, T), generator=torch.Generator().manual_seed(0))
    mask = torch.arange(T)[None, :] < torch.tensor([[T], [5], [2]])
    next_obs = obs_batch(seed=7)
    loss, metrics = model.loss({"observations": obs, "next_observations": next_obs, "actions": actions, "mask": mask})
    out = model(obs)
    nll = -F.log_softmax(out.action_params, -1).gather(-1, actions[..., None])[..., 0]
    obs_nll = F.binary_cross_entropy_with_logits(out.obs_params, next_obs, reduction="none").sum(-1)
    expected = nll[mask].mean() + 0.5 * obs_nll[mask].mean()
    torch.testing.assert_close(loss, expected)
    assert model.action_distribution(out.action_params).batch_shape == (3, T)
    assert 0.0 <= metrics["action_accuracy"] <= 1.0


def test_bad_configs_are_refused():
    with pytest.raises(ConfigError, match="unknown action head 'beta'"):
        BaseModelConfig(action_head="beta")
    with pytest.raises(ConfigError, match="unknown trunk 'lstm'"):
        BaseModelConfig(trunk="lstm")
    with pytest.raises(ConfigError, match="d_model"):
        TransformerConfig(d_model=0)
    with pytest.raises(ConfigError, match="observations of shape"):
        tiny_model()(torch.zeros(2, 3, OBS_DIM + 1))


# --- construction, determinism, save/load ------------------------------------------------------------


def test_seeded_construction_is_deterministic():
    a, b, c = tiny_model(0), tiny_model(0), tiny_model(1)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


def test_variance_scaled_init():
    torch.manual_seed(0)
    model = BaseModel(BaseModelConfig())  # the paper's sizes
    w = model.trunk.blocks[0].mlp.up.weight  # fan_in 256, scale 0.1
    assert abs(w.std().item() - math.sqrt(0.1 / 256)) < 0.1 * math.sqrt(0.1 / 256)
    assert w.abs().max() <= 2 * math.sqrt(0.1 / 256) / 0.8796 + 1e-6


def test_save_and_load_round_trip(tmp_path):
    model = tiny_model()
    save_base_model(tmp_path / "ckpt", model, {"note": "test"})
    loaded = load_base_model(tmp_path / "ckpt")
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert loaded.config == model.config
    obs = obs_batch()
    with torch.no_grad():
        assert torch.equal(loaded(obs).action_params, model(obs).action_params)
    with pytest.raises(CheckpointError, match="no base model checkpoint"):
        load_base_model(tmp_path / "missing")


def test_hook_points_cache_before_intervention():
    hooks = HookPoints(2, {"blocks.1.hook_resid_pre": lambda x: x * 2}, ["blocks.1.hook_resid_pre"])
    x = torch.ones(1, 1, 3)
    assert torch.equal(hooks("blocks.1.hook_resid_pre", x), 2 * x)
    assert torch.equal(hooks.cache["blocks.1.hook_resid_pre"], x)


def test_egocentric_embedding_recentres_the_grid_on_the_agent():
    """The egocentric view, built cell by cell from the definition, then the linear map; grid 3x3, 4 channels."""
    size, channels = 3, 4  # 3 content channels + the agent's
    config = BaseModelConfig(
        obs_dim=size * size * channels,
        obs_embedding="egocentric",
        obs_channels=channels,
        transformer=tiny_config().transformer,
    )
    torch.manual_seed(0)
    emb = BaseModel(config).obs_embed
    g = torch.Generator().manual_seed(2)
    obs = torch.zeros(2, 5, size, size, channels)
    obs[..., :-1] = (torch.rand(2, 5, size, size, channels - 1, generator=g) < 0.4).float()
    agent = torch.randint(0, size * size, (2, 5), generator=g)
    for b in range(2):
        for t in range(5):
            obs[b, t].view(-1, channels)[agent[b, t], -1] = 1.0
    view = 2 * size - 1
    expected = torch.zeros(2, 5, view, view, channels)
    for b in range(2):
        for t in range(5):
            ar, ac = divmod(int(agent[b, t]), size)
            for i in range(view):
                for j in range(view):
                    r, c = ar + i - (size - 1), ac + j - (size - 1)
                    if 0 <= r < size and 0 <= c < size:
                        expected[b, t, i, j, :-1] = obs[b, t, r, c, :-1]
                    else:
                        expected[b, t, i, j, -1] = 1.0
    with torch.no_grad():
        got = emb(obs.flatten(2))
        want = expected.flatten(2) @ emb.proj.weight.T + emb.proj.bias
    torch.testing.assert_close(got, want)
    with pytest.raises(ConfigError, match="obs_channels=5 does not divide obs_dim=12"):
        tiny_config(obs_embedding="egocentric", obs_channels=5)
    with pytest.raises(ConfigError, match="unknown obs embedding"):
        tiny_config(obs_embedding="conv")
    with pytest.raises(ConfigError, match="egocentric needs a square grid"):
        BaseModelConfig(obs_dim=3 * channels, obs_embedding="egocentric", obs_channels=channels)


def test_object_offsets_add_each_objects_offset_from_the_agent():
    """egocentric-offsets = the egocentric map + a linear map of (row, col) offsets / (size - 1) per object
    channel, 0 for an object that is absent; grid 3x3, objects in channels 0 and 2, channel 1 empty."""
    size, channels = 3, 4
    config = BaseModelConfig(obs_dim=size * size * channels, obs_embedding="egocentric-offsets", obs_channels=channels,
                             transformer=tiny_config().transformer)
    torch.manual_seed(0)
    emb = BaseModel(config).obs_embed
    grid = torch.zeros(size, size, channels)
    grid[0, 2, 0] = grid[2, 0, 2] = grid[1, 1, -1] = 1.0  # objects at (0, 2) and (2, 0); the agent at (1, 1)
    obs = grid.reshape(1, 1, -1)
    offsets = torch.tensor([[-1.0, 1.0, 0.0, 0.0, 1.0, -1.0]]) / (size - 1)
    with torch.no_grad():
        want = emb.grid(obs) + emb.offsets(offsets)
        torch.testing.assert_close(emb(obs), want)
