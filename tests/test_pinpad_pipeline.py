"""The pipeline on the continuous point-mass pinpad: registry dispatch, datasets with vector actions, and
every stage that acts (steering rollouts, the metacontroller's loss, InternalEnv, raw-action RL) with a
Gaussian action head, on a tiny Hawk model and a short horizon."""

import pytest
import torch

from internal_rl.analysis.steering import evaluate_controllers, rollout_with_controllers
from internal_rl.analysis.subgoal_controllers import SteeringConfig
from internal_rl.common.config import replace
from internal_rl.common.errors import ConfigError
from internal_rl.data.generate import env_config_from_manifest, generate_dataset, generate_trajectories
from internal_rl.data.dataset import load_dataset
from internal_rl.envs.batched_gridworld import BatchedGridWorld
from internal_rl.envs.gridworld import GridWorldConfig
from internal_rl.envs.point_pinpad import BatchedPointPinpad, PointPinpadConfig
from internal_rl.envs.registry import env_spec, make_batched_env
from internal_rl.metacontroller.modules import Metacontroller, MetacontrollerConfig
from internal_rl.metacontroller.training import controlled_forward
from internal_rl.models.base_model import BaseModel, BaseModelConfig
from internal_rl.models.controller import ControllerDecoder
from internal_rl.models.hawk_trunk import HawkTrunkConfig
from internal_rl.models.pretraining import pretrain_preset
from internal_rl.pipeline.pretrain_stage import run_pretraining
from internal_rl.rl.internal_env import BatchedInternalEnv
from internal_rl.rl.policies import CodePolicy, RawActionPolicy
from internal_rl.rl.rollouts import collect_internal_rollouts, collect_raw_rollouts

ENV = PointPinpadConfig(horizon=25)
HOOK = "blocks.0.hook_resid_post"


def tiny_model(seed: int = 0) -> BaseModel:
    torch.manual_seed(seed)
    config = BaseModelConfig(
        obs_dim=ENV.obs_dim, action_head="gaussian", action_dim=2, obs_head="gaussian", obs_loss_weight=10.0,
        trunk="hawk", hawk=HawkTrunkConfig(d_model=16, n_layers=2, lru_width=16, n_heads=2, mlp_hidden=32),
    )
    return BaseModel(config).freeze()


def tiny_metacontroller(force_switch: bool = False) -> Metacontroller:
    torch.manual_seed(1)
    config = MetacontrollerConfig(d_model=16, hook=HOOK, rank=None, n_z=4, enc_hidden=8, dec_hidden=8, n_h=8,
                                  n_s=8, switch_hidden=8, embedder_width=8, force_switch=force_switch)
    return Metacontroller(config).eval().requires_grad_(False)


def test_registry_dispatches_by_name_and_by_config():
    assert isinstance(make_batched_env(ENV, 3), BatchedPointPinpad)
    assert isinstance(make_batched_env(GridWorldConfig(), 3), BatchedGridWorld)
    point, grid = env_spec("point-pinpad"), env_spec("gridworld")
    assert point.posttrain_task == (0, 1, 2, 3) and point.colours_per_subgoal == 1
    assert point.subgoal_table(4).tolist() == [0, 1, 2, 3, -1]
    assert grid.subgoal_table(8).tolist() == [0, 0, 1, 1, 2, 2, 3, 3, -1]
    with pytest.raises(ConfigError, match="valid: gridworld, point-pinpad, ant-pinpad"):
        env_spec("maze")


def test_pinpad_dataset_has_vector_actions_and_round_trips_its_config(tmp_path):
    generate_dataset("point-pinpad", 12, tmp_path / "d", seed=0, show_progress=False)
    data = load_dataset(tmp_path / "d")
    assert env_config_from_manifest(data.manifest) == PointPinpadConfig()
    arrays = data.arrays
    assert arrays["actions"].shape == (data.num_steps, 2) and arrays["actions"].dtype.kind == "f"
    assert (arrays["subgoals"] == arrays["targets"]).all() and arrays["subgoals"].min() >= 0
    assert arrays["rewards"].sum() == 12  # every kept episode succeeded, once
    clean = generate_trajectories("point-pinpad", 4, seed=0, mean_actions=True)
    assert clean.manifest["expert_mean_actions"] is True
    with pytest.raises(ConfigError, match="grid world only"):
        generate_trajectories("point-pinpad", 4, seed=0, epsilon=0.1)


def test_pinpad_generation_shows_progress_and_counts_every_attempted_episode(capsys):
    data = generate_trajectories("point-pinpad", 5, seed=0, config=ENV, show_progress=True)
    assert "generate point-pinpad" in capsys.readouterr().err
    manifest = data.manifest
    assert manifest["episodes_attempted"] == 1024  # exactly one batch of the expert's 1024 environments
    successes = manifest["expert_success_rate"] * manifest["episodes_attempted"]
    assert 5 <= successes == pytest.approx(round(successes))  # a count of the attempted episodes
    assert env_config_from_manifest(manifest) == ENV and manifest["expert"] == "PointExpert"


def test_pretraining_takes_the_action_size_from_the_data(tmp_path):
    generate_dataset("point-pinpad", 40, tmp_path / "d", seed=0, show_progress=False)
    config = pretrain_preset("quick-pinpad", steps=2, batch_size=4, eval_every=0, checkpoint_every=0)
    config = replace(config, model=tiny_model().config)
    result = run_pretraining(config, tmp_path / "d", tmp_path / "run", show_progress=False)
    assert result["held_out"]["action_nll"] == pytest.approx(result["held_out"]["action_nll"])  # finite
    assert "grid-world only" in result["rollouts"]
    grid = replace(config, model=replace(config.model, action_head="categorical", action_dim=4))
    with pytest.raises(ConfigError, match="action head"):
        run_pretraining(grid, tmp_path / "d", tmp_path / "run2", show_progress=False)


def test_steering_rollouts_drive_the_point_mass():
    model = tiny_model()
    decoder = ControllerDecoder(4, 16, rank=None, hidden=8).eval().requires_grad_(False)
    out = rollout_with_controllers(model, ENV, 6, tasks=[(0, 1, 2, 3)] * 6, decoder=decoder, hook=HOOK, seed=3)
    assert out["steps"].max() <= ENV.horizon and out["success"].dtype == bool
    again = rollout_with_controllers(model, ENV, 6, tasks=[(0, 1, 2, 3)] * 6, decoder=decoder, hook=HOOK, seed=3)
    assert (again["steps"] == out["steps"]).all()  # seeded
    greedy = rollout_with_controllers(model, ENV, 6, seed=3, greedy=True)
    assert greedy["progress"].shape == (6,)
    result = evaluate_controllers(model, ENV, SteeringConfig(rank=None, episodes=8), decoder=decoder, hook=HOOK)
    assert set(result) == {"single", "override", "chained_posttrain", "chained_pretrain"}
    assert result["override"]["tasks"] == ["0-1", "1-2", "2-3", "3-0"] and 0 < result["single"]["expert_success"] <= 1


def test_metacontroller_loss_is_the_gaussian_action_nll_and_reaches_phi():
    model = tiny_model()
    data = generate_trajectories("point-pinpad", 4, seed=0, mean_actions=True)
    batch = data.batch([0, 1, 2, 3])
    mc = tiny_metacontroller().train().requires_grad_(True)
    nll, outputs = controlled_forward(model, mc, batch)
    assert nll.shape == batch["mask"].shape and torch.isfinite(nll).all()
    (nll * batch["mask"]).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in mc.parameters())


def test_internal_rl_rollouts_in_the_point_pinpad():
    env = BatchedInternalEnv(tiny_model(), tiny_metacontroller(), replace(ENV, tasks=((0, 1, 2, 3),)), 5)
    batch = collect_internal_rollouts(CodePolicy(16, 4, width=8, n_heads=2), env, seed=0, generator=torch.Generator())
    assert torch.equal(batch.env_steps, torch.from_numpy(env.env.t))
    assert (batch.decisions >= 1).all() and batch.actions.shape[-1] == 4


def test_raw_action_rl_log_probs_of_continuous_actions_match_the_rollout():
    policy = RawActionPolicy(tiny_model())
    env = BatchedPointPinpad(replace(ENV, tasks=((0, 1, 2, 3),)), 4)
    batch = collect_raw_rollouts(policy, env, seed=0, generator=torch.Generator().manual_seed(0))
    assert batch.actions.dtype == torch.float32 and batch.actions.shape[-1] == 2
    assert torch.equal(batch.env_steps, torch.from_numpy(env.t))
    with torch.no_grad():
        recomputed = policy.log_prob(batch.inputs, batch.actions, batch.mask)
    # Stepping and the full-sequence forward agree, so the first PPO ratio is exactly 1.
    torch.testing.assert_close(recomputed, batch.log_probs, atol=1e-4, rtol=1e-4)


def test_the_ant_runs_through_the_same_rollout_code():
    from internal_rl.envs.ant_pinpad import AntPinpadConfig

    ant = AntPinpadConfig(horizon=6)
    torch.manual_seed(0)
    config = replace(tiny_model().config, obs_dim=ant.obs_dim, action_dim=8)
    model = BaseModel(config).freeze()
    decoder = ControllerDecoder(4, 16, rank=None, hidden=8).eval().requires_grad_(False)
    out = rollout_with_controllers(model, ant, 2, tasks=[(0, 1, 2, 3)] * 2, decoder=decoder, hook=HOOK, seed=0)
    assert out["steps"].max() <= 6
