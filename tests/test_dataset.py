"""The dataset format (round trip, verification, atomic writes, batches) and expert data generation."""

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from internal_rl.common.errors import ConfigError, DatasetError
from internal_rl.data import dataset as ds
from internal_rl.data.dataset import MANIFEST, TRAJECTORIES, TrajectoryDataset, load_dataset, save_dataset

OBS_DIM = 12


def synthetic_arrays(lengths=(3, 5, 1, 4), obs_dim=OBS_DIM, seed=0) -> dict[str, np.ndarray]:
    """Arrays in the dataset format with distinct, random contents at every step."""
    rng = np.random.default_rng(seed)
    lengths = np.asarray(lengths, dtype=np.int64)
    num_steps, num_episodes = int(lengths.sum()), len(lengths)
    tasks = np.full((num_episodes, 6), -1, dtype=np.int8)
    tasks[:, :4] = rng.integers(0, 8, (num_episodes, 4))
    return {
        "observations": rng.integers(0, 2, (num_steps, obs_dim), dtype=np.uint8),
        "actions": rng.integers(0, 4, num_steps).astype(np.int64),
        "rewards": rng.random(num_steps).astype(np.float32),
        "targets": rng.integers(0, 8, num_steps).astype(np.int8),
        "subgoals": rng.integers(0, 4, num_steps).astype(np.int8),
        "episode_starts": np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64),
        "episode_lengths": lengths,
        "tasks": tasks,
        "final_observations": rng.integers(0, 2, (num_episodes, obs_dim), dtype=np.uint8),
    }


METADATA = {"env": "gridworld", "env_config": {"size": 3}, "seed": 0}


@pytest.fixture
def saved(tmp_path) -> tuple[Path, dict[str, np.ndarray]]:
    arrays = synthetic_arrays()
    path = save_dataset(tmp_path / "data", arrays, METADATA)
    return path, arrays


# --- round trip and manifest ----------------------------------------------------------------------------


def test_round_trip_preserves_arrays_and_records_manifest(saved):
    path, arrays = saved
    data = load_dataset(path)
    for name, array in arrays.items():
        np.testing.assert_array_equal(data.arrays[name], array)
        assert data.arrays[name].dtype == array.dtype
    m = data.manifest
    assert (m["format"], m["format_version"]) == (ds.FORMAT_NAME, ds.FORMAT_VERSION)
    assert (m["env"], m["env_config"], m["seed"]) == ("gridworld", {"size": 3}, 0)
    assert (m["episodes"], m["steps"]) == (4, 13)
    assert m["arrays"]["observations"] == {"shape": [13, OBS_DIM], "dtype": "|u1"}
    assert m["files"][TRAJECTORIES]["bytes"] == (path / TRAJECTORIES).stat().st_size
    assert data.checksum == m["files"][TRAJECTORIES]["sha256"] and len(data.checksum) == 64
    assert "package_version" in m and "created" in m
    assert (data.num_episodes, data.num_steps, data.obs_dim, len(data)) == (4, 13, OBS_DIM, 4)
    assert not any(p.name.startswith(".") for p in path.parent.iterdir())  # no temporary folders left


def test_batch_pads_masks_and_aligns_next_observations(saved):
    path, arrays = saved
    data = load_dataset(path)
    b = data.batch([1, 2, 0])  # lengths 5, 1, 3
    assert b["observations"].shape == b["next_observations"].shape == (3, 5, OBS_DIM)
    assert b["observations"].dtype == torch.float32
    assert b["actions"].shape == b["targets"].shape == b["subgoals"].shape == b["mask"].shape == (3, 5)
    assert b["actions"].dtype == torch.int64 and b["mask"].dtype == torch.bool
    assert b["tasks"].shape == (3, 6)
    assert b["lengths"].tolist() == [5, 1, 3]
    assert b["mask"].tolist() == [[True] * 5, [True] + [False] * 4, [True] * 3 + [False] * 2]
    for row, episode in enumerate([1, 2, 0]):
        start, length = arrays["episode_starts"][episode], arrays["episode_lengths"][episode]
        obs = arrays["observations"][start : start + length].astype(np.float32)
        np.testing.assert_array_equal(b["observations"][row, :length].numpy(), obs)
        # next_observations[t] == observations[t+1] within the episode, the final observation at its end
        np.testing.assert_array_equal(b["next_observations"][row, : length - 1].numpy(), obs[1:])
        final = arrays["final_observations"][episode]
        np.testing.assert_array_equal(b["next_observations"][row, length - 1].numpy(), final)
        for name in ("actions", "targets", "subgoals"):
            np.testing.assert_array_equal(b[name][row, :length].numpy(), arrays[name][start : start + length])
        np.testing.assert_array_equal(b["tasks"][row].numpy(), arrays["tasks"][episode])
    pad = ~b["mask"]
    assert (b["observations"][pad] == 0).all() and (b["next_observations"][pad] == 0).all()
    assert (b["actions"][pad] == 0).all() and (b["rewards"][pad] == 0).all()
    assert (b["targets"][pad] == -1).all() and (b["subgoals"][pad] == -1).all()


def test_continuous_actions_and_float_observations_batch(tmp_path):
    arrays = synthetic_arrays()
    arrays["observations"] = arrays["observations"].astype(np.float32) * 0.5
    arrays["final_observations"] = arrays["final_observations"].astype(np.float32)
    arrays["actions"] = np.random.default_rng(0).normal(size=(13, 8)).astype(np.float32)
    data = load_dataset(save_dataset(tmp_path / "ant", arrays, {**METADATA, "env": "ant-pinpad"}))
    b = data.batch([0, 1])
    assert b["actions"].shape == (2, 5, 8) and b["actions"].dtype == torch.float32
    np.testing.assert_array_equal(b["actions"][1].numpy(), arrays["actions"][3:8])
    assert (b["actions"][0, 3:] == 0).all()


def test_split_is_deterministic_disjoint_and_complete():
    data = TrajectoryDataset.from_arrays(synthetic_arrays(lengths=[2] * 20))
    train, held = data.split(0.25, seed=3)
    assert (train.num_episodes, held.num_episodes) == (15, 5)
    assert sorted(np.concatenate([train.episode_ids, held.episode_ids]).tolist()) == list(range(20))
    train2, held2 = data.split(0.25, seed=3)
    assert held.episode_ids.tolist() == held2.episode_ids.tolist()
    assert held.episode_ids.tolist() != data.split(0.25, seed=4)[1].episode_ids.tolist()
    # a subset's batch indices are its own episodes
    first = held.episode_ids[0]
    np.testing.assert_array_equal(held.batch([0])["actions"][0].numpy(), data.batch([first])["actions"][0].numpy())
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ConfigError):
            data.split(bad, seed=0)


def test_iter_batches_covers_every_episode_deterministically():
    data = TrajectoryDataset.from_arrays(synthetic_arrays(lengths=np.arange(1, 11)))
    def epoch_order(seed, epoch):
        return [b["lengths"].tolist() for b in data.iter_batches(4, seed=seed, epoch=epoch)]
    order = epoch_order(0, 0)
    assert [len(b) for b in order] == [4, 4, 2]
    assert sorted(sum(order, [])) == list(range(1, 11))
    assert order == epoch_order(0, 0) and order != epoch_order(0, 1)
    # a resumed infinite stream yields what the uninterrupted one yields from that step on
    stream = data.infinite_batches(3, seed=1)
    full = [next(stream)["lengths"].tolist() for _ in range(8)]
    resumed = data.infinite_batches(3, seed=1, start_step=5)
    assert [next(resumed)["lengths"].tolist() for _ in range(3)] == full[5:]
    assert all(len(b) == 3 for b in full)


def test_subset_saves_as_its_own_dataset(tmp_path):
    data = TrajectoryDataset.from_arrays(synthetic_arrays(), METADATA)
    part = data.subset([3, 1])
    reloaded = load_dataset(part.save(tmp_path / "part"))
    assert reloaded.episode_lengths.tolist() == [4, 5]
    permuted = load_dataset(data.subset([3, 1, 0, 2]).save(tmp_path / "permuted"))
    assert permuted.episode_lengths.tolist() == [4, 5, 3, 1]
    np.testing.assert_array_equal(reloaded.batch([0, 1])["observations"], part.batch([0, 1])["observations"])


def test_batch_gathers_quickly():
    data = TrajectoryDataset.from_arrays(synthetic_arrays(lengths=[40] * 2000, obs_dim=637))
    start = time.perf_counter()
    for batch in data.iter_batches(128, seed=0):
        pass
    assert time.perf_counter() - start < 5.0  # 16 batches of [128, 40, 637]; a per-step Python loop is far slower


# --- refusals -------------------------------------------------------------------------------------------


def test_overwrite_refused_without_force(saved):
    path, arrays = saved
    with pytest.raises(DatasetError, match=r"already exists.*--force"):
        save_dataset(path, synthetic_arrays(seed=1), METADATA)
    np.testing.assert_array_equal(load_dataset(path).arrays["actions"], arrays["actions"])
    save_dataset(path, synthetic_arrays(seed=1), METADATA, force=True)
    np.testing.assert_array_equal(load_dataset(path).arrays["actions"], synthetic_arrays(seed=1)["actions"])


def test_force_never_overwrites_a_folder_that_is_not_a_dataset(tmp_path):
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("keep me")
    with pytest.raises(DatasetError, match="non-empty folder"):
        save_dataset(tmp_path / "precious", synthetic_arrays(), METADATA, force=True)
    assert (tmp_path / "precious" / "notes.txt").read_text() == "keep me"


def test_interrupted_write_leaves_no_dataset(tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ds.np, "savez_compressed", crash)
    with pytest.raises(KeyboardInterrupt):
        save_dataset(tmp_path / "data", synthetic_arrays(), METADATA)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_overwrite_keeps_the_old_dataset(saved, monkeypatch):
    path, arrays = saved
    monkeypatch.setattr(ds, "sha256_of_file", lambda p: (_ for _ in ()).throw(RuntimeError("disk full")))
    with pytest.raises(RuntimeError):
        save_dataset(path, synthetic_arrays(seed=1), METADATA, force=True)
    monkeypatch.undo()
    np.testing.assert_array_equal(load_dataset(path).arrays["actions"], arrays["actions"])
    assert [p.name for p in path.parent.iterdir()] == ["data"]


def test_invalid_arrays_refused_before_writing(tmp_path):
    arrays = synthetic_arrays()
    arrays["episode_lengths"] = arrays["episode_lengths"] + 1
    with pytest.raises(DatasetError, match="boundaries"):
        save_dataset(tmp_path / "bad", arrays, METADATA)
    missing = synthetic_arrays()
    del missing["subgoals"]
    with pytest.raises(DatasetError, match="subgoals"):
        save_dataset(tmp_path / "bad", missing, METADATA)
    assert not (tmp_path / "bad").exists()


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_missing_folder_and_manifest_refused(saved, tmp_path):
    with pytest.raises(DatasetError, match="does not exist") as err:
        load_dataset(tmp_path / "nowhere")
    _one_line(err)
    path, _ = saved
    (path / MANIFEST).unlink()
    with pytest.raises(DatasetError, match="manifest.json: missing") as err:
        load_dataset(path)
    _one_line(err)


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda m: m.update(format_version=99), "format version 99"),
        (lambda m: m.update(format="something-else"), "not an internal-rl-trajectories manifest"),
        (lambda m: m["arrays"]["actions"].update(dtype="<f4"), "array 'actions'"),
        (lambda m: m["arrays"].update(extra={"shape": [1], "dtype": "<f4"}), "lacks array 'extra'"),
    ],
)
def test_manifest_mismatches_refused(saved, edit, match):
    path, _ = saved
    manifest = json.loads((path / MANIFEST).read_text())
    edit(manifest)
    (path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(DatasetError, match=match) as err:
        load_dataset(path)
    _one_line(err)


def test_unparseable_manifest_refused(saved):
    path, _ = saved
    (path / MANIFEST).write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        load_dataset(path)


def test_corrupted_file_refused(saved):
    path, _ = saved
    data = bytearray((path / TRAJECTORIES).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (path / TRAJECTORIES).write_bytes(bytes(data))
    with pytest.raises(DatasetError, match="sha256.*corrupted") as err:
        load_dataset(path)
    assert TRAJECTORIES in _one_line(err)


def test_truncated_file_refused(saved):
    path, _ = saved
    data = (path / TRAJECTORIES).read_bytes()
    (path / TRAJECTORIES).write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match="truncated") as err:
        load_dataset(path)
    assert TRAJECTORIES in _one_line(err)


def test_damaged_zip_with_matching_manifest_refused(saved):
    """A file that passes the checksum (manifest rewritten to match) but cannot be decompressed."""
    path, _ = saved
    file = path / TRAJECTORIES
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])
    manifest = json.loads((path / MANIFEST).read_text())
    manifest["files"][TRAJECTORIES] = {"sha256": ds.sha256_of_file(file), "bytes": file.stat().st_size}
    (path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(DatasetError, match="unreadable") as err:
        load_dataset(path)
    assert TRAJECTORIES in _one_line(err)


def test_inconsistent_boundaries_in_file_refused(tmp_path, monkeypatch):
    arrays = synthetic_arrays()
    arrays["episode_starts"] = arrays["episode_starts"][::-1].copy()
    monkeypatch.setattr(ds, "validate_arrays", lambda arrays, where="arrays": None)
    save_dataset(tmp_path / "data", arrays, METADATA)
    monkeypatch.undo()
    with pytest.raises(DatasetError, match="boundaries inconsistent"):
        load_dataset(tmp_path / "data")


# --- expert data generation (grid world) ----------------------------------------------------------------

GEN_EPISODES = 40


@pytest.fixture(scope="module")
def generated() -> TrajectoryDataset:
    from internal_rl.data.generate import generate_trajectories

    return generate_trajectories("gridworld", GEN_EPISODES, seed=7)


def test_generation_is_seeded(generated):
    from internal_rl.data.generate import generate_trajectories

    again = generate_trajectories("gridworld", GEN_EPISODES, seed=7)
    for name, array in generated.arrays.items():
        np.testing.assert_array_equal(again.arrays[name], array)
    other = generate_trajectories("gridworld", GEN_EPISODES, seed=8)
    assert not np.array_equal(other.arrays["actions"][:50], generated.arrays["actions"][:50])


def test_generated_episodes_are_successful_and_labelled(generated):
    from internal_rl.envs.gridworld import GridWorldConfig
    from internal_rl.envs.tasks import GRID_PRETRAIN_TASKS

    a = generated.arrays
    config = GridWorldConfig()
    assert generated.num_episodes == GEN_EPISODES and generated.obs_dim == config.obs_dim
    assert a["observations"].dtype == a["final_observations"].dtype == np.uint8
    assert a["actions"].dtype == np.int64 and a["targets"].dtype == a["subgoals"].dtype == np.int8
    assert a["tasks"].shape == (GEN_EPISODES, 6)
    assert {tuple(t) for t in a["tasks"].tolist()} <= set(GRID_PRETRAIN_TASKS)
    ends = a["episode_starts"] + a["episode_lengths"] - 1
    assert (a["rewards"][ends] == 1).all() and a["rewards"].sum() == GEN_EPISODES
    np.testing.assert_array_equal(a["targets"][a["episode_starts"]], a["tasks"][:, 0])
    np.testing.assert_array_equal(a["subgoals"], a["targets"] // 2)  # subgoal k is the colour pair (2k, 2k + 1)
    m = generated.manifest
    assert (m["env"], m["seed"], m["expert_epsilon"]) == ("gridworld", 7, 0.0)
    assert 0.9 <= m["expert_success_rate"] <= 1.0 and m["episodes_attempted"] >= GEN_EPISODES
    assert m["env_config"]["size"] == 7


def _decode(obs: np.ndarray, config) -> tuple[np.ndarray, tuple[int, int]]:
    """The layout and agent position shown by a one-hot grid observation."""
    grid = obs.reshape(config.size, config.size, config.n_channels)
    objects = grid[..., :-1]
    layout = np.where(objects.any(axis=-1), objects.argmax(axis=-1), -1).astype(np.int8)
    row, col = np.argwhere(grid[..., -1])[0]
    return layout, (int(row), int(col))


def test_generated_episodes_replay_in_the_reference_env(generated):
    """Recorded observations, actions, targets and final observations agree with GridWorldEnv step by step."""
    from internal_rl.envs.gridworld import GridWorldConfig, GridWorldEnv

    config = GridWorldConfig()
    env = GridWorldEnv(config)
    for i in range(0, GEN_EPISODES, 7):
        episode = generated.episode(i)
        layout, agent_pos = _decode(episode["observations"][0], config)
        task = [c for c in episode["tasks"].tolist() if c >= 0]
        obs, info = env.reset(seed=0, options={"task": task, "layout": layout, "agent_pos": agent_pos})
        for t, action in enumerate(episode["actions"]):
            np.testing.assert_array_equal(obs, episode["observations"][t])
            assert info["target"] == episode["targets"][t]
            obs, reward, terminated, truncated, info = env.step(int(action))
            assert reward == episode["rewards"][t]
        assert terminated and reward == 1.0
        np.testing.assert_array_equal(obs, episode["final_observation"])


def test_generation_options_and_bad_inputs():
    from internal_rl.data.generate import generate_trajectories

    data = generate_trajectories("gridworld", 5, seed=0, epsilon=0.2, tasks=[(0, 1, 2, 3)])
    assert data.num_episodes == 5 and data.manifest["expert_epsilon"] == 0.2
    assert (data.arrays["tasks"] == [0, 1, 2, 3]).all()
    with pytest.raises(ConfigError, match="unknown env 'antmaze'"):
        generate_trajectories("antmaze", 5, seed=0)
    with pytest.raises(ConfigError, match="episodes"):
        generate_trajectories("gridworld", 0, seed=0)
    with pytest.raises(ConfigError, match="epsilon"):
        generate_trajectories("gridworld", 5, seed=0, epsilon=1.5)
    with pytest.raises(ConfigError, match="colour 9"):
        generate_trajectories("gridworld", 5, seed=0, tasks=[(0, 9)])
    from internal_rl.envs.gridworld import GridWorldConfig

    with pytest.raises(DatasetError, match="succeeded in only 0 of"):  # no task fits in one step
        generate_trajectories("gridworld", 5, seed=0, config=GridWorldConfig(horizon=1), batch_size=16)


def test_generated_dataset_manifest_config_round_trips(tmp_path):
    from internal_rl.data.generate import env_config_from_manifest, generate_dataset
    from internal_rl.envs.gridworld import GridWorldConfig

    path = generate_dataset("gridworld", 5, tmp_path / "grid", seed=0, show_progress=False)
    data = load_dataset(path)
    assert env_config_from_manifest(data.manifest) == GridWorldConfig()
    assert data.num_episodes == 5


def test_cli_generate(tmp_path, capsys):
    from internal_rl.cli import main

    out = tmp_path / "grid"
    args = ["generate", "gridworld", "--episodes", "10", "--out", str(out), "--seed", "3"]
    assert main(args) == 0
    assert load_dataset(out).num_episodes == 10
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(out) in err and "--force" in err
    assert main(args + ["--force", "--tasks", "0-1-2-3", "--epsilon", "0.1"]) == 0
    assert (load_dataset(out).arrays["tasks"] == [0, 1, 2, 3]).all()
    with pytest.raises(SystemExit) as exit_:  # refused by the argument parser
        main(["generate", "gridworld", "--episodes", "0", "--out", str(tmp_path / "none")])
    assert exit_.value.code == 2
    assert main(["generate", "gridworld", "--episodes", "3", "--out", str(tmp_path / "t"), "--tasks", "0-x"]) == 2
    assert not (tmp_path / "none").exists() and not (tmp_path / "t").exists()


def test_grid_actions_out_of_range_refused(tmp_path):
    """An action the grid world does not have would be silently clamped by the action head: refuse it."""
    arrays = synthetic_arrays()
    arrays["actions"][3] = 7
    save_dataset(tmp_path / "data", arrays, METADATA)
    with pytest.raises(DatasetError, match="actions range over 0..7") as err:
        load_dataset(tmp_path / "data")
    _one_line(err)
