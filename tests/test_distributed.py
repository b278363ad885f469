"""Scaling out on Ray: distributed generation equals local, distributed RL rollouts (with a worker killed
mid-run), and a resumable Ray Tune sweep. One small Ray instance (2 CPUs) is shared by the module."""

import os
import signal
import threading
import time

import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray")

from internal_rl.common.errors import ConfigError  # noqa: E402
from internal_rl.data.dataset import load_dataset  # noqa: E402
from internal_rl.data.generate import generate_dataset, generate_trajectories  # noqa: E402
from internal_rl.distributed import init_ray  # noqa: E402
from internal_rl.distributed.generate import generate_dataset_ray, ray_map_chunks  # noqa: E402
from internal_rl.distributed.rollouts import RayRolloutWorkers, shard_sizes  # noqa: E402
from internal_rl.envs.gridworld import GridWorldConfig  # noqa: E402
from internal_rl.rl.ppo import PPOConfig, RolloutBatch  # noqa: E402
from internal_rl.rl.policies import CodePolicy  # noqa: E402
from internal_rl.rl.training import RLConfig, train_rl  # noqa: E402

from test_rl import POST, random_models  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def ray_instance():
    torch.set_num_threads(1)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


# --- generation ---------------------------------------------------------------------------------------------


def test_distributed_generation_equals_local(tmp_path):
    # Small chunks, so that the dataset takes two rounds of several chunks each (the expert fails on
    # about 14% of layouts): the plan and the merge order are what is under test.
    kwargs = dict(batch_size=64, show_progress=False)
    local = generate_dataset("gridworld", 300, tmp_path / "local", seed=5, **kwargs)
    remote = generate_dataset_ray("gridworld", 300, tmp_path / "ray", seed=5, workers=2, **kwargs)
    a, b = load_dataset(local), load_dataset(remote)
    assert a.arrays.keys() == b.arrays.keys()
    for name in a.arrays:
        assert a.arrays[name].dtype == b.arrays[name].dtype
        assert a.arrays[name].tobytes() == b.arrays[name].tobytes(), name
    assert a.checksum == b.checksum  # the very same trajectories file
    assert a.manifest["episodes_attempted"] > 2 * 64  # more than one chunk per round was rolled out

    # The in-memory path with one worker (chunks strictly in turn) gives the same arrays too.
    one = generate_trajectories("gridworld", 300, seed=5, batch_size=64, map_chunks=ray_map_chunks(1))
    assert all(np.array_equal(one.arrays[k], a.arrays[k]) for k in a.arrays)


def test_errors_raised_in_a_task_arrive_as_one_line():
    from internal_rl.common.errors import DatasetError

    with pytest.raises(DatasetError, match="succeeded in only 0"):
        # A one-step horizon: the expert can never finish a task.
        generate_trajectories("gridworld", 5, seed=0, config=GridWorldConfig(horizon=1), batch_size=16,
                              map_chunks=ray_map_chunks(2))


def test_init_ray_reuses_the_running_instance():
    assert init_ray() is ray and ray.is_initialized()


# --- RL rollouts --------------------------------------------------------------------------------------------


def test_shard_sizes():
    assert shard_sizes(10, 3) == [4, 3, 3]
    assert shard_sizes(2, 4) == [1, 1]
    assert sum(shard_sizes(1024, 7)) == 1024


def test_concatenated_batches_pad_decisions():
    def batch(n, m):
        return RolloutBatch(torch.randn(n, m, 3), torch.randn(n, m, 2), torch.randn(n, m), torch.ones(n, m, dtype=torch.bool),
                            torch.randn(n), torch.ones(n, dtype=torch.bool), torch.full((n,), m), torch.full((n,), m))
    a, b = batch(2, 3), batch(3, 5)
    c = RolloutBatch.concatenate([a, b])
    assert c.inputs.shape == (5, 5, 3) and c.num_episodes == 5
    assert torch.equal(c.mask.sum(1), torch.tensor([3, 3, 5, 5, 5]))
    assert torch.equal(c.inputs[:2, :3], a.inputs) and (c.inputs[:2, 3:] == 0).all()
    assert torch.equal(c.returns, torch.cat([a.returns, b.returns]))


def tiny_config(total_episodes: int) -> RLConfig:
    ppo = PPOConfig(episodes_per_batch=16, lr=1e-3, epochs=1)
    return RLConfig(ppo=ppo, total_episodes=total_episodes, policy_width=8, policy_heads=2, eval_episodes=16)


@pytest.mark.parametrize("method", ["internal", "raw"])
def test_distributed_rl_gives_results_of_the_same_kind(method):
    base, mc = random_models()
    config = tiny_config(total_episodes=32)
    mc = None if method == "raw" else mc
    local = train_rl(method, base, mc, POST, seed=0, config=config)
    workers = RayRolloutWorkers(2)
    remote = train_rl(method, base, mc, POST, seed=0, config=config, workers=workers)
    again = train_rl(method, base, mc, POST, seed=0, config=config, workers=workers)
    workers.shutdown()
    assert remote.keys() == local.keys() and remote["curve"][0].keys() == local["curve"][0].keys()
    assert [r["episodes"] for r in remote["curve"]] == [r["episodes"] for r in local["curve"]] == [16, 32]
    # Same seed, same number of workers: the same run.
    assert remote["curve"] == again["curve"] and remote["final_eval"] == again["final_eval"]


def test_rollouts_follow_the_learners_weights():
    base, mc = random_models()
    config = tiny_config(total_episodes=16)
    policy = CodePolicy(16, 2, width=8, n_heads=2)
    workers = RayRolloutWorkers(2)
    collect = workers.bind("internal", base, mc, POST, config, policy)
    batch = collect(7, 10)
    assert batch.num_episodes == 10 and torch.equal(batch.mask.sum(1), batch.decisions)
    with torch.no_grad():  # the stored log-probabilities are those of the learner's current policy
        torch.testing.assert_close(policy.log_prob(batch.inputs, batch.actions, batch.mask), batch.log_probs * batch.mask,
                                   atol=1e-4, rtol=1e-4)
        for p in policy.parameters():
            p.add_(0.5)
        moved = collect(7, 10)
        torch.testing.assert_close(policy.log_prob(moved.inputs, moved.actions, moved.mask), moved.log_probs * moved.mask,
                                   atol=1e-4, rtol=1e-4)
    workers.shutdown()


def test_a_killed_rollout_worker_is_replaced_and_the_stage_completes():
    base, mc = random_models()
    config = tiny_config(total_episodes=16 * 12)
    reference = train_rl("internal", base, mc, POST, seed=3, config=config, workers=RayRolloutWorkers(2))

    workers = RayRolloutWorkers(2)
    killed = []

    class KillOnce:
        """Binds the workers, then SIGKILLs actor 0's process while the third batch is being collected."""

        def bind(self, *args):
            collect = workers.bind(*args)
            calls = 0

            def collect_and_kill(seed, num_envs):
                nonlocal calls
                calls += 1
                if calls == 3:
                    pid = workers.pids()[0]
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                return collect(seed, num_envs)

            return collect_and_kill

    result = train_rl("internal", base, mc, POST, seed=3, config=config, workers=KillOnce())
    assert killed, "the kill never happened"
    new_pid = workers.pids()[0]
    workers.shutdown()
    assert new_pid != killed[0]  # Ray restarted the actor in a new process
    # The stage completed every update, and (actors being stateless) with the very same episodes.
    assert [r["episodes"] for r in result["curve"]] == [16 * (i + 1) for i in range(12)]
    assert result["curve"] == reference["curve"] and result["final_eval"] == reference["final_eval"]


def test_a_worker_killed_inside_a_rollout_call_is_replaced_and_the_call_rerun():
    from internal_rl.metacontroller.modules import Metacontroller, MetacontrollerConfig
    from internal_rl.models.base_model import BaseModel, BaseModelConfig
    from helpers import TINY_TRUNK

    # One colour on an open 7x7 grid: random codes wander for ~70 steps, so a call lasts about 2 s.
    grid = GridWorldConfig(size=7, n_colours=1, n_walls=0, horizon=100, tasks=((0,),))
    torch.manual_seed(0)
    base = BaseModel(BaseModelConfig(obs_dim=grid.obs_dim, transformer=TINY_TRUNK)).freeze()
    mc = Metacontroller(MetacontrollerConfig(d_model=16, hook="blocks.0.hook_resid_post", n_z=2, rank=2, embedder_width=8))
    mc = mc.eval().requires_grad_(False)
    workers = RayRolloutWorkers(2)
    collect = workers.bind("internal", base, mc, grid, tiny_config(16), CodePolicy(16, 2, width=8, n_heads=2))
    pid = workers.pids()[0]
    start = time.perf_counter()
    reference = collect(11, 2048)
    seconds = time.perf_counter() - start
    assert seconds > 0.1

    # A third of the way through the same call, whatever this machine's speed.
    timer = threading.Timer(seconds / 3, os.kill, (pid, signal.SIGKILL))
    timer.start()
    batch = collect(11, 2048)
    timer.join()
    assert workers.pids()[0] != pid
    workers.shutdown()
    for field in RolloutBatch.__dataclass_fields__:
        assert torch.equal(getattr(batch, field), getattr(reference, field)), field


# --- sweeps -------------------------------------------------------------------------------------------------


def make_run(folder):
    """A run folder with a random tiny base model, its dataset and a metacontroller (for `run_rl`)."""
    from helpers import write_run_folder
    from test_rl import GRID

    from internal_rl.data.dataset import save_dataset

    base, mc = random_models()
    data = generate_trajectories("gridworld", 16, seed=0, config=GRID)
    data_dir = save_dataset(folder / "data", data.arrays, data.manifest)
    return write_run_folder(folder, base, data=data_dir, metacontrollers={"metacontroller": mc}).root


def write_sweep_file(tmp_path, episodes):
    import json

    run = make_run(tmp_path / "run")
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps({"run": "run", "out": "sweep", "methods": ["internal"], "seeds": 2, "tasks": ["0"],
                                "grid": {"episodes": [episodes]}, "max_concurrent_trials": 1}))
    return path, run


def test_a_two_trial_sweep_completes_and_gathers_the_usual_report(tmp_path):
    from internal_rl.common.config import load_json
    from internal_rl.distributed.sweep import run_sweep
    from internal_rl.pipeline.sweep import load_sweep_config

    path, run = write_sweep_file(tmp_path, episodes=128)
    config = load_sweep_config(path)
    report = run_sweep(config)
    group = tmp_path / "sweep" / "task=0,episodes=128"
    assert sorted(p.name for p in (group / "rl" / "internal").glob("seed_*.json")) == ["seed_0.json", "seed_1.json"]
    results = load_json(tmp_path / "sweep" / "results.json")
    summary = results["groups"]["task=0,episodes=128"]["methods"]["internal"]
    assert summary["seeds"] == 2 and summary["episodes"] == 128
    assert load_json(group / "results.json")["methods"]["internal"] == summary  # the ordinary run report
    assert "task=0,episodes=128" in report.read_text()

    # A third seed added to the file: only the new trial trains.
    import json

    mtimes = {p.name: p.stat().st_mtime_ns for p in (group / "rl" / "internal").glob("seed_*.json")}
    path.write_text(json.dumps({**json.loads(path.read_text()), "seeds": 3}))
    run_sweep(load_sweep_config(path))
    assert {p.name: p.stat().st_mtime_ns for p in (group / "rl" / "internal").glob("seed_*.json")
            if p.name in mtimes} == mtimes
    assert load_json(tmp_path / "sweep" / "results.json")["groups"]["task=0,episodes=128"]["methods"]["internal"]["seeds"] == 3
    path.write_text(json.dumps({**json.loads(path.read_text()), "preset": "paper"}))
    with pytest.raises(ConfigError, match="preset 'quick', not 'paper'"):
        run_sweep(load_sweep_config(path))


def test_an_interrupted_sweep_resumes_without_redoing_finished_trials(tmp_path):
    import subprocess
    import sys

    from internal_rl.distributed.sweep import run_sweep
    from internal_rl.pipeline.sweep import load_sweep_config

    path, run = write_sweep_file(tmp_path, episodes=1024)
    results = tmp_path / "sweep" / "task=0,episodes=1024" / "rl" / "internal"
    # The sweep's own driver, on this module's Ray instance, killed once its first trial has finished.
    driver = subprocess.Popen(
        [sys.executable, "-m", "internal_rl.cli", "sweep", str(path), "--ray-address", ray.get_runtime_context().gcs_address],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not list(results.glob("seed_*.json")) and time.monotonic() < deadline and driver.poll() is None:
        time.sleep(0.05)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    finished = {p.name: p.stat().st_mtime_ns for p in results.glob("seed_*.json")}
    assert len(finished) == 1, f"the interruption missed its window: {sorted(finished)}"
    assert list((tmp_path / "sweep").glob("tune-*"))  # Tune's experiment state

    run_sweep(load_sweep_config(path))
    assert sorted(p.name for p in results.glob("seed_*.json")) == ["seed_0.json", "seed_1.json"]
    for name, mtime in finished.items():  # the finished trial was read back, not trained again
        assert (results / name).stat().st_mtime_ns == mtime
    assert (tmp_path / "sweep" / "report.md").is_file()


# --- the optional extra -------------------------------------------------------------------------------------


def test_without_ray_the_cli_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    import sys

    from internal_rl.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    assert main(["generate", "gridworld", "--episodes", "4", "--out", str(tmp_path / "d"), "--ray"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "pip install 'internal-rl[ray]'" in err
    assert main(["sweep", str(tmp_path / "missing.json")]) == 2  # a bad sweep file is refused before Ray starts
    assert "missing.json" in capsys.readouterr().err


def test_nothing_outside_internal_rl_distributed_imports_ray():
    import subprocess
    import sys

    code = ("import sys, internal_rl.cli, internal_rl.pipeline.reproduce, internal_rl.rl.training, "
            "internal_rl.data.generate; assert 'ray' not in sys.modules, 'ray imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
