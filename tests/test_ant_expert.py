"""The ant expert's PPO: augmented observation, a short training run, save/load, rollouts."""

import numpy as np
import pytest

from internal_rl.common.errors import CheckpointError, ConfigError
from internal_rl.envs.ant_expert import (
    AntPPOConfig,
    ant_expert_episodes,
    body_frame,
    current_direction,
    direction_features,
    load_expert,
    train_ant_expert,
)
from internal_rl.envs.ant_pinpad import AntPinpadConfig, BatchedAntPinpad
from internal_rl.envs.pinpad import shortest_path_directions
from internal_rl.envs.pinpad_expert import rollout_expert

LAYOUT = np.array([[0, 1, -1, -1], [-1, 4, -1, -1], [-1, -1, 2, -1], [3, -1, -1, -1]], dtype=np.int8)


def test_direction_features_point_along_the_shortest_path() -> None:
    env = BatchedAntPinpad(AntPinpadConfig(tasks=((2,),)), 1)
    env.reset(seed=0, layouts=LAYOUT[None], start_cells=[(3, 2)])
    directions = shortest_path_directions(env.logic.layouts, env.config)
    features = direction_features(env, directions).reshape(4, 4, 4)
    assert features[3, 2].tolist() == [1, 0, 0, 0], "from below colour 2: up"
    assert features[2, 2].sum() == 0, "none at the colour itself"
    assert features[1, 1].sum() == 1, "the wall cell has a way out too (the env has ended by then)"
    assert np.allclose(current_direction(env, directions), [[0.0, 1.0]])


def test_body_frame_rotates_by_the_torso_yaw() -> None:
    env = BatchedAntPinpad(AntPinpadConfig(), 2)
    env.reset(seed=0)
    for data, yaw in zip(env.data, (np.pi / 2, np.pi)):
        data.qpos[3:7] = (np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2))
    north = np.array([[0.0, 1.0], [0.0, 1.0]])
    # Facing north, north is straight ahead; facing west, north is to the right (-y in the body frame).
    assert np.allclose(body_frame(env, north), [[1.0, 0.0], [0.0, -1.0]], atol=1e-9)


def test_short_training_run_saves_an_expert_that_acts(tmp_path) -> None:
    ppo = AntPPOConfig(total_steps=64, num_envs=2, rollout_steps=16, epochs=1, minibatch_size=16, hidden=16)
    config = AntPinpadConfig(horizon=20)
    _, history = train_ant_expert(config, ppo, out=tmp_path / "expert", show_progress=False)
    assert len(history) == 2 and history[-1]["env_steps"] == 64
    expert = load_expert(tmp_path / "expert")
    env = BatchedAntPinpad(config, 3)
    env.rng = np.random.default_rng(0)
    arrays = rollout_expert(env, lambda e, r: expert.act(e, r)[0], np.random.default_rng(0))
    assert arrays["observations"].shape[2] == 41 and arrays["actions"].shape[2] == 8
    assert np.abs(arrays["actions"]).max() <= 1.0
    data = ant_expert_episodes(expert, 2, seed=0, successful_only=False, batch_size=2, mean_actions=True)
    assert data["observations"].shape[:1] == (2,) and data["observations"].shape[2] == 41
    assert np.array_equal(data["subgoals"], data["targets"])
    with pytest.raises(CheckpointError, match="no ant expert"):
        load_expert(tmp_path / "missing")
    with pytest.raises(ConfigError, match="num_envs"):
        AntPPOConfig(num_envs=0)


def test_ant_dataset_records_the_config_the_expert_was_trained_in(tmp_path, monkeypatch, capsys) -> None:
    import internal_rl.envs.ant_expert as ant_expert
    from internal_rl.data.generate import env_config_from_manifest, generate_trajectories
    from internal_rl.envs import registry

    ppo = AntPPOConfig(total_steps=64, num_envs=2, rollout_steps=16, epochs=1, minibatch_size=16, hidden=16)
    trained_in = AntPinpadConfig(horizon=20)  # not the default config (horizon 500)
    train_ant_expert(trained_in, ppo, out=tmp_path / "expert", show_progress=False)
    monkeypatch.setenv(registry.ANT_EXPERT_VARIABLE, str(tmp_path / "expert"))
    # The tiny expert never succeeds: accept it, and keep its failed episodes (the manifest is under test).
    monkeypatch.setattr(registry, "MIN_ANT_EXPERT_SUCCESS", 0.0)
    collect = ant_expert.collect_episodes
    monkeypatch.setattr(ant_expert, "collect_episodes", lambda *a, **k: collect(*a, **{**k, "successful_only": False}))

    manifest = generate_trajectories("ant-pinpad", 3, seed=0, show_progress=True).manifest
    assert env_config_from_manifest(manifest) == trained_in
    assert manifest["expert"] == "AntExpert" and manifest["expert_config"]["ppo_config"]["hidden"] == 16
    assert manifest["episodes_attempted"] == 64  # exactly one batch of 64 environments
    assert "generate ant-pinpad" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="trained with horizon=20, not horizon=30"):
        generate_trajectories("ant-pinpad", 3, seed=0, config=AntPinpadConfig(horizon=30))
    tasks = ((0, 1), (2, 3))  # the tasks, and only they, may differ from the expert's
    data = generate_trajectories("ant-pinpad", 3, seed=0, config=AntPinpadConfig(horizon=20), tasks=tasks)
    assert env_config_from_manifest(data.manifest).tasks == tasks


def test_a_bad_ant_expert_folder_is_a_one_line_error(tmp_path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ConfigError, match="malformed JSON"):
        load_expert(tmp_path)
    (tmp_path / "config.json").write_text('{"model": {}}')
    with pytest.raises(CheckpointError, match="not an ant expert"):
        load_expert(tmp_path)
