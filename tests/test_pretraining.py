"""Pretraining: exact resumption, seeded determinism, the stage folder, evaluation, and the CLI's refusals."""

import json

import numpy as np
import pytest
import torch

from internal_rl.cli import main
from internal_rl.common.config import replace
from internal_rl.common.errors import CheckpointError, ConfigError
from internal_rl.data.dataset import load_dataset
from internal_rl.data.generate import generate_dataset
from internal_rl.envs.gridworld import GridWorldConfig
from internal_rl.envs.tasks import GRID_PRETRAIN_TASKS
from internal_rl.models.base_model import BaseModel, BaseModelConfig, load_base_model
from internal_rl.analysis.base_model_eval import (
    evaluate_held_out,
    evaluate_rollouts,
    expert_action_probabilities,
    expert_noise_level,
    leading_subgoals,
    target_indices,
    valid_task_mask,
)
from internal_rl.envs.free_running_grid import FreeRunningGrid
from internal_rl.models.pretraining import (
    PRESETS,
    PretrainConfig,
    learning_rate,
    length_grouped_batches,
    pretrain_preset,
    train_base_model,
)
from internal_rl.pipeline.pretrain_stage import run_pretraining
from internal_rl.models.transformer import TransformerConfig

from helpers import TINY_TRUNK


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "grid"
    generate_dataset("gridworld", episodes=48, out=path, seed=0, show_progress=False)
    return path


@pytest.fixture(scope="module")
def dataset(data_dir):
    return load_dataset(data_dir)


def tiny(steps: int = 6, **changes) -> PretrainConfig:
    trunk = TINY_TRUNK
    config = PretrainConfig(
        model=BaseModelConfig(transformer=trunk), steps=steps, batch_size=8, lr=3e-3, log_every=2,
        eval_every=2, checkpoint_every=2, eval_rollouts=16, holdout_fraction=0.25,
    )
    return replace(config, **changes)


def test_resumed_run_has_identical_losses(dataset, tmp_path):
    train, held = dataset.split(0.25, 0)
    extra = {"dataset": {"checksum": dataset.checksum}}
    straight = train_base_model(tiny(6), train, held_out=held, show_progress=False)
    first = train_base_model(tiny(3), train, checkpoint_dir=tmp_path / "ckpt", extra_config=extra, show_progress=False)
    second = train_base_model(
        tiny(6), train, checkpoint_dir=tmp_path / "ckpt", extra_config=extra, resume=True, show_progress=False
    )
    assert second.start_step == 3
    assert first.losses + second.losses == straight.losses
    for p, q in zip(second.model.parameters(), straight.model.parameters()):
        assert torch.equal(p, q)


def test_resume_refuses_other_hyperparameters_or_data(dataset, tmp_path):
    train, _ = dataset.split(0.25, 0)
    extra = {"dataset": {"checksum": dataset.checksum}}
    train_base_model(tiny(2), train, checkpoint_dir=tmp_path / "ckpt", extra_config=extra, show_progress=False)
    with pytest.raises(CheckpointError, match=r"\['lr'\]"):
        train_base_model(tiny(4, lr=1e-3), train, checkpoint_dir=tmp_path / "ckpt", extra_config=extra, resume=True)
    with pytest.raises(CheckpointError, match="dataset"):
        train_base_model(
            tiny(4), train, checkpoint_dir=tmp_path / "ckpt", extra_config={"dataset": {"checksum": "x"}}, resume=True
        )


def test_length_grouped_batches_cover_epochs_and_resume(dataset):
    batch_size, per_epoch = 8, dataset.num_episodes // 8
    stream = length_grouped_batches(dataset, batch_size, seed=4, group_batches=2)
    batches = [next(stream) for _ in range(2 * per_epoch)]
    lengths = sorted(int(n) for b in batches[:per_epoch] for n in b["lengths"])
    assert len(lengths) == per_epoch * batch_size and set(lengths) <= set(dataset.episode_lengths.tolist())
    resumed = length_grouped_batches(dataset, batch_size, seed=4, start_step=per_epoch + 1, group_batches=2)
    for expected in batches[per_epoch + 1 :]:
        assert torch.equal(next(resumed)["observations"], expected["observations"])
    # Grouping by length wastes little on padding.
    real = sum(int(b["mask"].sum()) for b in batches) / sum(b["mask"].numel() for b in batches)
    assert real > 0.8


def test_seeded_training_is_deterministic(dataset):
    train, _ = dataset.split(0.25, 0)
    a = train_base_model(tiny(3), train, show_progress=False).losses
    b = train_base_model(tiny(3), train, show_progress=False).losses
    c = train_base_model(tiny(3, seed=1), train, show_progress=False).losses
    assert a == b and a != c


def test_learning_rate_schedule():
    config = PretrainConfig(steps=100, warmup_steps=10, schedule="cosine", lr=1.0, min_lr_fraction=0.1)
    assert learning_rate(config, 0) == pytest.approx(0.1)
    assert learning_rate(config, 9) == pytest.approx(1.0)
    assert learning_rate(config, 99) == pytest.approx(0.1, abs=1e-3)
    assert learning_rate(PretrainConfig(), 12345) == 3e-4  # the paper's constant rate


def test_presets_and_bad_values():
    assert PRESETS["paper"].model.transformer == TransformerConfig()
    assert (PRESETS["paper"].steps, PRESETS["paper"].batch_size, PRESETS["paper"].weight_decay) == (256_000, 1024, 0.03)
    assert PRESETS["quick"].model.transformer.n_layers == 6
    assert pretrain_preset("quick", steps=7, seed=None).steps == 7
    ant = PRESETS["paper-ant"]  # Table A5
    assert (ant.steps, ant.batch_size, ant.lr, ant.weight_decay, ant.model.obs_loss_weight) == (204_800, 512, 3e-4, 0.03, 10.0)
    assert (ant.model.trunk, ant.model.action_head, ant.model.obs_head) == ("hawk", "gaussian", "gaussian")
    offsets = PRESETS["quick-offsets"]  # the quick preset but for the observation embedding
    assert offsets.model.obs_embedding == "egocentric-offsets"
    assert replace(offsets, model=PRESETS["quick"].model) == PRESETS["quick"]
    wide = PRESETS["quick-offsets-w256"]  # the same at the paper's trunk width
    assert wide.model.transformer == PRESETS["paper"].model.transformer
    assert replace(wide, model=offsets.model) == offsets
    with pytest.raises(ConfigError, match="unknown preset 'fast'; valid: paper, paper-ant, quick, quick-offsets, "
                                          "quick-offsets-w256, quick-pinpad"):
        pretrain_preset("fast")
    with pytest.raises(ConfigError, match="schedule"):
        PretrainConfig(schedule="linear")


def test_run_pretraining_writes_stage_and_refuses_overwrite(data_dir, tmp_path):
    stage = tmp_path / "run" / "pretrain"
    result = run_pretraining(tiny(4), data_dir, tmp_path / "run", show_progress=False)
    written = json.loads((stage / "eval.json").read_text())
    assert written["held_out"]["episodes"] == 12 and 0 <= written["held_out"]["action_accuracy"] <= 1
    assert 0.5 < written["expert"]["accuracy_ceiling"] <= 1
    assert 0 <= written["rollouts"]["valid_task_fraction"] <= 1
    assert result["dataset"]["checksum"] == load_dataset(data_dir).checksum
    assert (stage / "tb").is_dir()
    config = json.loads((stage / "checkpoint" / "config.json").read_text())
    assert config["dataset"]["checksum"] == result["dataset"]["checksum"] and config["step"] == 4
    model = load_base_model(stage)
    assert model.config.obs_dim == 637 and not model.training
    with pytest.raises(CheckpointError, match="--resume"):
        run_pretraining(tiny(4), data_dir, tmp_path / "run", show_progress=False)


def test_expert_probabilities_explain_the_data(dataset):
    """The reconstructed expert policy gives every recorded action positive probability."""
    env_config = GridWorldConfig()
    p = expert_action_probabilities(dataset, env_config)
    actions = dataset.arrays["actions"]
    assert p.shape == (dataset.num_steps, 4)
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-6)
    assert (p[np.arange(len(actions)), actions] > 0).all()
    noise = expert_noise_level(p)
    assert 0.5 < noise["accuracy_ceiling"] < 1 and noise["nll_floor"] > 0


def test_target_indices_count_the_task_position():
    # two episodes: targets 4 4 5 5 5 0 | 2 3 3
    targets = np.array([4, 4, 5, 5, 5, 0, 2, 3, 3])
    assert target_indices(targets, np.array([6, 3])).tolist() == [0, 0, 1, 1, 1, 2, 0, 1, 1]


def test_evaluation_by_target_position(dataset):
    """Grouped by target position, the steps, NLL, accuracy and the expert's ceiling add up to the whole's."""
    model = BaseModel(BaseModelConfig(transformer=TransformerConfig(d_model=32, n_layers=2, n_heads=2, d_head=16, d_mlp=64)))
    p = expert_action_probabilities(dataset, GridWorldConfig())
    overall = evaluate_held_out(model.eval(), dataset, p)
    groups = overall["by_target"]
    assert [g["target_index"] for g in groups] == list(range(6))  # the pretraining tasks have 6 colours
    steps = np.array([g["steps"] for g in groups])
    assert steps.sum() == overall["steps"] == dataset.num_steps
    for key, whole in (("accuracy_ceiling", expert_noise_level(p)["accuracy_ceiling"]),
                       ("action_nll", overall["action_nll"]), ("action_accuracy", overall["action_accuracy"])):
        assert sum(g[key] * g["steps"] for g in groups) / steps.sum() == pytest.approx(whole)
    # The per-step evaluation agrees with the training loss's batch means.
    _, metrics = model.loss(dataset.batch(np.arange(dataset.num_episodes)))
    for key in ("action_nll", "obs_nll", "action_accuracy"):
        assert overall[key] == pytest.approx(metrics[key], rel=1e-4)


def test_task_validity_and_subgoal_counting():
    sequences = np.array([
        [0, 1, 4, 5, 0, 1],  # a pretraining task
        [0, 1, 2, 3, 4, 5],  # subgoals, but an unseen ordering
        [0, 1, 4, 3, -1, -1],  # broke off after one subgoal
        [1, 0, 4, 5, 0, 1],  # reversed first pair
    ])
    assert valid_task_mask(sequences, GRID_PRETRAIN_TASKS).tolist() == [True, False, False, False]
    assert leading_subgoals(sequences, ((0, 1), (2, 3), (4, 5), (6, 7))).tolist() == [3, 3, 1, 0]


def test_free_running_grid_matches_the_environment():
    """Until the environment ends an episode, the task-free grid moves and observes exactly as it does."""
    from internal_rl.envs.batched_gridworld import BatchedGridWorld
    from internal_rl.envs.expert import GridExpert

    config = GridWorldConfig()
    env, grid = BatchedGridWorld(config, 32), FreeRunningGrid(config, 32, seed=5)
    obs = env.reset(seed=5)
    np.testing.assert_array_equal(obs, grid.obs)
    expert, rng = GridExpert(config, epsilon=0.3), np.random.default_rng(0)  # epsilon: also bump into walls
    entered_any = False
    for _ in range(40):
        alive = ~env.done
        actions = expert.act(env, rng)
        obs, _, _, _, info = env.step(actions)
        grid_obs, entered = grid.step(actions)
        np.testing.assert_array_equal(grid_obs[alive], obs[alive])
        np.testing.assert_array_equal(entered[alive], info["visited"][alive])
        entered_any |= bool((entered[alive] >= 0).any())
    assert entered_any


def test_rollouts_are_seeded(dataset):
    train, _ = dataset.split(0.25, 0)
    model = train_base_model(tiny(2), train, show_progress=False).model
    a = evaluate_rollouts(model, GridWorldConfig(), episodes=8, seed=3)
    b = evaluate_rollouts(model, GridWorldConfig(), episodes=8, seed=3)
    assert a == b and a["episodes"] == 8 and 0 <= a["mean_subgoals_completed"] <= 3


def test_cli_refuses_bad_preset_and_missing_data(data_dir, tmp_path, capsys):
    assert main(["pretrain", "--data", str(data_dir), "--out", str(tmp_path / "r"), "--preset", "fast"]) == 2
    assert "unknown preset 'fast'" in capsys.readouterr().err
    assert main(["pretrain", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as exit_:  # refused by the argument parser
        main(["pretrain", "--data", str(data_dir), "--out", str(tmp_path / "r"), "--batch-size", "0"])
    assert exit_.value.code == 2 and "--batch-size" in capsys.readouterr().err
