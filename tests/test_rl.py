"""Critic-free PPO, the RL policies, rollouts and budget accounting, and every method learning a one-subgoal task."""

import copy
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from internal_rl.common.checkpoint import save_checkpoint
from internal_rl.common.config import config_to_dict, load_json, replace
from internal_rl.common.errors import CheckpointError, ConfigError
from internal_rl.data.dataset import save_dataset
from internal_rl.data.generate import generate_trajectories
from internal_rl.envs.batched_gridworld import BatchedGridWorld
from internal_rl.envs.gridworld import GridWorldConfig
from internal_rl.metacontroller.compile import CompILE, CompILEConfig
from internal_rl.metacontroller.modules import Metacontroller, MetacontrollerConfig
from internal_rl.models.base_model import BaseModel, BaseModelConfig, save_base_model
from internal_rl.models.controller import apply_controller
from internal_rl.models.transformer import TransformerConfig
from internal_rl.pipeline.rl_stage import run_rl
from internal_rl.rl.internal_env import BatchedInternalEnv
from internal_rl.rl.policies import CodePolicy, RawActionPolicy
from internal_rl.rl.ppo import PPOConfig, RolloutBatch, clipped_surrogate, normalised_advantages, ppo_update
from internal_rl.rl.rollouts import collect_internal_rollouts, collect_raw_rollouts
from internal_rl.rl.training import RLConfig, rl_preset, train_rl

from helpers import TINY_TRUNK

HOOK = "blocks.0.hook_resid_post"
# A grid world small enough to learn in seconds: 3x3, two colours, no walls. Pretraining tasks: visit
# colour 0, or visit colour 1 (the task is not observed, so the base model goes to either); the RL task:
# visit colour 0.
GRID = GridWorldConfig(size=3, n_colours=2, n_walls=0, horizon=8, tasks=((0,), (1,)))
POST = replace(GRID, tasks=((0,),))


# --- PPO on hand-made numbers ------------------------------------------------------------------------------


def test_advantage_is_the_batch_normalised_return():
    returns = torch.tensor([1.0, 0.0, 0.0, 1.0])
    # mean 0.5, population std 0.5: A = +-0.5 / (0.5 + 1e-3)
    expected = torch.tensor([1.0, -1.0, -1.0, 1.0]) * 0.5 / 0.501
    torch.testing.assert_close(normalised_advantages(returns), expected)
    assert torch.equal(normalised_advantages(torch.ones(5)), torch.zeros(5))
    a = normalised_advantages(torch.tensor([0.0, 0.0, 0.0, 1.0]))
    assert abs(a.mean().item()) < 1e-6 and a[3] > 0 > a[0]


def test_clipped_surrogate_on_hand_made_numbers():
    eps = 0.2
    ratio = torch.tensor([[1.5, 0.5], [1.5, 0.5]])
    advantages = torch.tensor([1.0, -1.0])
    old = torch.zeros(2, 2)
    new = ratio.log().requires_grad_(True)
    mask = torch.ones(2, 2, dtype=torch.bool)
    loss, info = clipped_surrogate(new, old, advantages, mask, eps)
    # Episode 0 (A = +1): min(1.5, 1.2) + min(0.5, 0.8) = 1.7.  Episode 1 (A = -1): min(-1.5, -1.2) + min(-0.5, -0.8) = -2.3.
    assert loss.item() == pytest.approx(-(1.7 - 2.3) / 2)
    assert info["clip_fraction"] == pytest.approx(1.0)
    loss.backward()
    # Clipped terms (ratio beyond 1 +- eps on the side the advantage favours) pass no gradient.
    grad = new.grad
    assert grad[0, 0] == 0 and grad[1, 1] == 0
    assert grad[0, 1] == pytest.approx(-0.5 / 2) and grad[1, 0] == pytest.approx(1.5 / 2)


def test_clipped_surrogate_sums_over_decisions_and_ignores_padding():
    new = torch.zeros(2, 3)
    advantages = torch.tensor([1.0, 1.0])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    loss, _ = clipped_surrogate(new, torch.zeros(2, 3), advantages, mask, 0.2)
    assert loss.item() == pytest.approx(-(3 + 1) / 2)  # mean over episodes of the sum over decisions


class GaussianBandit(nn.Module):
    """A one-decision policy with a learned mean: enough to check the direction of a PPO update."""

    def __init__(self):
        super().__init__()
        self.mean = nn.Parameter(torch.zeros(1))

    def log_prob(self, inputs, actions, mask):
        return torch.distributions.Normal(self.mean, 1.0).log_prob(actions[..., 0]) * mask


def test_ppo_update_moves_the_policy_toward_rewarded_decisions():
    policy = GaussianBandit()
    generator = torch.Generator().manual_seed(0)
    actions = torch.randn(64, 1, 1, generator=generator)
    returns = (actions[:, 0, 0] > 0.5).float()  # rewarded when the action is large
    batch = RolloutBatch(
        inputs=torch.zeros(64, 1, 1),
        actions=actions,
        log_probs=policy.log_prob(None, actions, torch.ones(64, 1)).detach(),
        mask=torch.ones(64, 1, dtype=torch.bool),
        returns=returns,
        successes=returns.bool(),
        env_steps=torch.ones(64, dtype=torch.long),
        decisions=torch.ones(64, dtype=torch.long),
    )
    config = PPOConfig(lr=0.05, episodes_per_batch=64, epochs=4, minibatches=2)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=config.lr, weight_decay=0.0)
    stats = ppo_update(policy, optimizer, batch, config, generator)
    assert policy.mean.item() > 0.05
    assert stats["skipped"] == 0.0 and stats["clip_fraction"] >= 0.0

    flat = dataclasses.replace(batch, returns=torch.ones(64))
    before = policy.mean.item()
    assert ppo_update(policy, optimizer, flat, config, generator)["skipped"] == 1.0
    assert policy.mean.item() == before  # no signal, no step


def test_ppo_config_refuses_bad_values():
    with pytest.raises(ConfigError, match="clip_eps"):
        PPOConfig(clip_eps=1.5)
    with pytest.raises(ConfigError, match="unknown RL preset 'fast'"):
        rl_preset("fast", "internal")
    with pytest.raises(ConfigError, match="unknown RL method 'ppo'"):
        rl_preset("quick", "ppo")


# --- policies and rollouts -----------------------------------------------------------------------------


def test_code_policy_starts_at_the_prior_and_steps_like_its_sequence_mode():
    torch.manual_seed(0)
    policy = CodePolicy(d_model=12, n_z=3, width=8, n_heads=2)
    e = 5 * torch.randn(4, 6, 12)  # residual activations have a large, arbitrary scale
    mean, log_std = policy.sequence(e)
    assert mean.abs().max() < 1e-2 and log_std.abs().max() < 1e-2  # N(0, I)
    state = policy.initial_state(4)
    for t in range(6):
        step_mean, step_log_std, state = policy.step(e[:, t], state)
        torch.testing.assert_close(step_mean, mean[:, t], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(step_log_std, log_std[:, t], atol=1e-6, rtol=1e-5)


def random_models(seed: int = 0, force_switch: bool = False) -> tuple[BaseModel, Metacontroller]:
    torch.manual_seed(seed)
    base = BaseModel(BaseModelConfig(obs_dim=GRID.obs_dim, transformer=TINY_TRUNK, init_scale=1.0)).freeze()
    mc = Metacontroller(MetacontrollerConfig(d_model=16, hook=HOOK, n_z=2, rank=2, embedder_width=8, force_switch=force_switch))
    with torch.no_grad():
        mc.switching_unit.out.weight.mul_(40.0)
        nn.init.normal_(mc.controller_decoder.b_head.weight, std=1.0)
    return base, mc.eval().requires_grad_(False)


def test_rollouts_record_what_the_policy_did():
    """Stored log-probabilities equal the recomputed ones (so PPO's first ratio is 1), and the budget
    counters agree with the environment."""
    base, mc = random_models()
    generator = torch.Generator().manual_seed(0)

    policy = CodePolicy(16, 2, width=8, n_heads=2)
    env = BatchedInternalEnv(base, mc, POST, 16)
    batch = collect_internal_rollouts(policy, env, seed=3, generator=generator)
    with torch.no_grad():
        recomputed = policy.log_prob(batch.inputs, batch.actions, batch.mask)
    torch.testing.assert_close(recomputed, batch.log_probs * batch.mask, atol=1e-4, rtol=1e-4)
    assert torch.equal(batch.mask.sum(1), batch.decisions)
    assert torch.equal(batch.env_steps, torch.from_numpy(env.env.t))
    assert (batch.decisions >= 1).all() and (batch.decisions <= batch.env_steps).all()
    assert torch.equal(batch.successes, batch.returns > 0)

    raw = RawActionPolicy(base)
    grid = BatchedGridWorld(POST, 16)
    raw_batch = collect_raw_rollouts(raw, grid, seed=3, generator=generator)
    with torch.no_grad():
        recomputed = raw.log_prob(raw_batch.inputs, raw_batch.actions, raw_batch.mask)
    torch.testing.assert_close(recomputed, raw_batch.log_probs, atol=1e-4, rtol=1e-4)
    assert torch.equal(raw_batch.decisions, raw_batch.env_steps)
    assert torch.equal(raw_batch.env_steps, torch.from_numpy(grid.t))
    # The same seed gives both methods the same layouts.
    assert (grid.layouts == env.env.layouts).all()


def test_raw_policy_is_a_trainable_copy():
    base, _ = random_models()
    raw = RawActionPolicy(base)
    assert all(p.requires_grad for p in raw.parameters())
    assert not any(p.requires_grad for p in base.parameters())
    assert raw.model is not base


def tiny_config(total_episodes: int) -> RLConfig:
    ppo = PPOConfig(episodes_per_batch=8, lr=1e-3, epochs=1)
    return RLConfig(ppo=ppo, total_episodes=total_episodes, policy_width=8, policy_heads=2, eval_episodes=8)


@pytest.mark.parametrize("method", ["internal", "no-switch", "raw"])
def test_budget_accounting_is_the_same_for_every_method(method):
    base, mc = random_models(force_switch=method == "no-switch")
    config = tiny_config(total_episodes=20)
    result = train_rl(method, base, None if method == "raw" else mc, POST, seed=0, config=config)
    curve = result["curve"]
    assert [r["episodes"] for r in curve] == [8, 16, 20]
    steps = [r["env_steps"] for r in curve]
    assert steps == sorted(steps) and steps[-1] == result["env_steps"]
    assert result["episodes"] == 20
    for r in curve:
        assert 0.0 <= r["success_rate"] <= 1.0 and r["mean_decisions"] <= r["mean_env_steps"]
    if method != "internal":  # a decision at every low-level step
        assert all(r["mean_decisions"] == r["mean_env_steps"] for r in curve)
    assert result["timing"]["rollout_episodes_per_second"] > 0
    # The entropy estimate starts at the initial policy's: the prior N(0, I) over codes, or the base model's.
    if method == "raw":
        assert 0.0 < curve[0]["entropy"] <= math.log(4) + 1e-6
    else:
        assert curve[0]["entropy"] == pytest.approx(mc.config.n_z * 0.5 * (1 + math.log(2 * math.pi)), abs=2.5)


def test_init_policy_warm_starts_the_policy_that_acts():
    """A warm start that narrows the code policy shows in the first batch's entropy estimate."""
    base, mc = random_models()
    seen = []

    def narrow(policy):
        seen.append(type(policy).__name__)
        with torch.no_grad():
            policy.head.bias[mc.config.n_z :] = -3.0  # log-std -3 in every dimension

    result = train_rl("internal", base, mc, POST, seed=0, config=tiny_config(total_episodes=8), init_policy=narrow)
    assert seen == ["CodePolicy"]
    prior = mc.config.n_z * 0.5 * (1 + math.log(2 * math.pi))
    assert result["curve"][0]["entropy"] == pytest.approx(prior - 3 * mc.config.n_z, abs=2.5)


def test_methods_refuse_the_wrong_metacontroller():
    base, mc = random_models()
    config = tiny_config(total_episodes=8)
    with pytest.raises(ConfigError, match="force_switch=True"):
        train_rl("no-switch", base, mc, POST, seed=0, config=config)
    with pytest.raises(ConfigError, match="needs a metacontroller"):
        train_rl("internal", base, None, POST, seed=0, config=config)


# --- every method learns a one-subgoal task ---------------------------------------------------------------


@pytest.fixture(scope="module")
def pretrained():
    """A tiny base model pretrained on expert data for tasks 'visit 0' and 'visit 1', and a metacontroller
    whose decoder was trained with the ground-truth target as the code (z = one-hot colour, the paper's
    supervised controllers) and whose switch never fires after t = 1: a metacontroller that found the
    subgoals. The base model alone goes to either colour, so it solves 'visit 0' about half the time."""
    torch.manual_seed(0)
    data = generate_trajectories("gridworld", 4096, seed=0, config=GRID)
    transformer = TransformerConfig(d_model=32, n_layers=2, n_heads=2, d_head=16, d_mlp=64)
    base = BaseModel(BaseModelConfig(obs_dim=GRID.obs_dim, transformer=transformer))
    optimizer = torch.optim.AdamW(base.parameters(), lr=3e-3)
    batches = data.infinite_batches(64, seed=0)
    for _ in range(400):
        loss, _ = base.loss(next(batches))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    base.freeze()

    mc = Metacontroller(MetacontrollerConfig(d_model=32, hook=HOOK, n_z=2, rank=4, embedder_width=16))
    decoder = mc.controller_decoder
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=1e-2)
    batches = data.infinite_batches(64, seed=1)
    for _ in range(200):
        batch = next(batches)
        z = F.one_hot(batch["targets"].long().clamp(min=0), 2).float()
        params = base(batch["observations"], interventions={HOOK: lambda e: apply_controller(e, decoder(z))}).action_params
        nll = (base.action_nll(params, batch["actions"]) * batch["mask"]).sum() / batch["mask"].sum()
        optimizer.zero_grad()
        nll.backward()
        optimizer.step()
    with torch.no_grad():
        mc.switching_unit.out.bias.fill_(-20.0)
    mc.eval().requires_grad_(False)
    no_switch = copy.deepcopy(mc)
    no_switch.config = replace(mc.config, force_switch=True)
    compile_baseline = CompILE(CompILEConfig(d_model=32, hook=HOOK, n_z=2, rank=4))  # the same decoder, no switch
    compile_baseline.controller_decoder.load_state_dict(decoder.state_dict())
    with torch.no_grad():
        compile_baseline.switching_unit[-1].bias.fill_(-20.0)
    compile_baseline.eval().requires_grad_(False)
    return base, {"internal": mc, "no-switch": no_switch, "raw": None, "compile": compile_baseline}, data


@pytest.mark.parametrize("method,lr", [("internal", 3e-2), ("no-switch", 3e-2), ("raw", 3e-3), ("compile", 3e-2)])
def test_each_method_learns_a_one_subgoal_task(pretrained, method, lr):
    base, metacontrollers, _ = pretrained
    config = RLConfig(
        ppo=PPOConfig(episodes_per_batch=64, lr=lr, epochs=4),
        total_episodes=640,
        policy_width=16,
        policy_heads=2,
        eval_episodes=512,
    )
    result = train_rl(method, base, metacontrollers[method], POST, seed=0, config=config)
    initial, final = result["initial_eval"]["success_rate"], result["final_eval"]["success_rate"]
    # Same 512 held-out layouts before and after; starts near 1/2, each method gains >= 0.12 here.
    assert 0.35 < initial < 0.65
    assert final > initial + 0.08, (initial, final)


def test_run_rl_reads_a_run_folder_and_writes_results(pretrained, tmp_path, make_run_folder):
    base, metacontrollers, data = pretrained
    data_dir = save_dataset(tmp_path / "data", data.arrays, data.manifest)
    mc = metacontrollers["internal"]
    run = make_run_folder(tmp_path / "run", base, data=data_dir, metacontrollers={"metacontroller": mc})
    config = tiny_config(total_episodes=16)

    result = run_rl("internal", tmp_path / "run", (0,), seed=2, config=config, show_progress=False)
    written = load_json(run.rl_result("internal", 2))
    assert written["final_eval"] == result["final_eval"] and written["task"] == [0]
    assert [r["episodes"] for r in written["curve"]] == [8, 16]
    assert any(run.rl_tensorboard("internal", 2).iterdir())
    with pytest.raises(CheckpointError, match="metacontroller-no-switch"):
        run_rl("no-switch", tmp_path / "run", (0,), seed=0, config=config, show_progress=False)
    with pytest.raises(ConfigError, match="unknown colour 5"):
        run_rl("raw", tmp_path / "run", (5,), seed=0, config=config, show_progress=False)
    assert not math.isnan(result["timing"]["seconds"])

    # The co-training baseline acts through its own base model, saved beside its metacontroller.
    with pytest.raises(CheckpointError, match="--cotrain"):
        run_rl("cotrained", tmp_path / "run", (0,), seed=0, config=config, show_progress=False)
    # A narrower base model than the pretrained one: the metacontroller fits only it, so the run must use it.
    stage = "metacontroller-cotrained"
    save_base_model(run.cotrained_base_model(stage), BaseModel(BaseModelConfig(obs_dim=GRID.obs_dim, transformer=TINY_TRUNK)))
    own = Metacontroller(replace(mc.config, d_model=16))
    save_checkpoint(run.checkpoint(stage), own, {"metacontroller": config_to_dict(own.config)})
    cotrained = run_rl("cotrained", tmp_path / "run", (0,), seed=2, config=config, show_progress=False)
    assert cotrained["method"] == "cotrained" and cotrained["episodes"] == 16


@pytest.mark.parametrize("method", ["internal", "raw"])
def test_a_resumed_run_makes_the_updates_of_an_uninterrupted_one(method, tmp_path):
    """Stopped after one update (a checkpoint every update) and resumed with the full budget, a run learns
    on the same batches with the same updates as one that never stopped."""
    base, mc = random_models()
    mc = None if method == "raw" else mc
    whole = train_rl(method, base, mc, POST, seed=3, config=tiny_config(total_episodes=24))
    checkpoint = tmp_path / "checkpoint"
    train_rl(method, base, mc, POST, seed=3, config=tiny_config(total_episodes=8), checkpoint=checkpoint,
             checkpoint_every=1)
    resumed = train_rl(method, base, mc, POST, seed=3, config=tiny_config(total_episodes=24), checkpoint=checkpoint,
                       checkpoint_every=1)
    assert resumed["resumed_at_updates"] == [1] and whole["resumed_at_updates"] == []
    keys = ("episodes", "env_steps", "success_rate", "policy_loss", "entropy")
    assert [[r[k] for k in keys] for r in resumed["curve"]] == [[r[k] for k in keys] for r in whole["curve"]]
    assert resumed["initial_eval"] == whole["initial_eval"] and resumed["final_eval"] == whole["final_eval"]
    # Another seed's or learning rate's run is refused, not continued.
    with pytest.raises(CheckpointError, match="seed"):
        train_rl(method, base, mc, POST, seed=4, config=tiny_config(total_episodes=24), checkpoint=checkpoint)
    other_lr = replace(tiny_config(total_episodes=24), ppo=PPOConfig(episodes_per_batch=8, lr=3e-3, epochs=1))
    with pytest.raises(CheckpointError, match="config"):
        train_rl(method, base, mc, POST, seed=3, config=other_lr, checkpoint=checkpoint)


def test_run_rl_continues_an_unfinished_seed_only_when_asked(pretrained, tmp_path, make_run_folder):
    base, _, data = pretrained
    data_dir = save_dataset(tmp_path / "data", data.arrays, data.manifest)
    run = make_run_folder(tmp_path / "run", base, data=data_dir)
    save_checkpoint(run.rl_checkpoint("raw", 0), nn.Linear(1, 1), {"rl": {}})  # an unfinished run's leftovers
    config = tiny_config(total_episodes=16)
    with pytest.raises(CheckpointError, match="--resume"):
        run_rl("raw", tmp_path / "run", (0,), seed=0, config=config, show_progress=False)
    with pytest.raises(CheckpointError, match="differs"):
        run_rl("raw", tmp_path / "run", (0,), seed=0, config=config, show_progress=False, resume=True)
    result = run_rl("raw", tmp_path / "run", (0,), seed=1, config=config, show_progress=False)
    assert not run.rl_checkpoint("raw", 1).exists()  # removed once the result is written
    # A finished seed is kept as it is by a resumed call with the same settings.
    kept = run_rl("raw", tmp_path / "run", (0,), seed=1, config=config, show_progress=False, resume=True)
    assert kept["final_eval"] == result["final_eval"] and kept["timing"] == result["timing"]
