"""Throughput of data generation and of RL rollouts on Ray with 1 and 2 workers, against the local path.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_ray.py [--episodes 20000] [--run RUN]
        [--rl-batch 1024] [--rl-batches 5] [--repeats 3] [--out benchmarks/results/ray.json]

Generation: `--episodes` successful expert episodes of the default grid world, chunks of 1024 envs; the
Ray runs must give arrays identical to the local run (checked). Rollouts: internal RL on the post-training
task with the base model and metacontroller of `--run` (default: random models of the quick presets'
sizes), batches of `--rl-batch` episodes with a fixed policy; the learner's PPO update on one such batch is
timed too, since in distributed RL it stays on the driver. "cpu capacity" is the speedup that N copies of
a fixed pure-Python loop get at the same moment: on a machine shared with other jobs, the ceiling.

Figures are best-of-repeats (generation: `--repeats` runs; rollouts: the fastest of the batches, each
timed alone), since other jobs on a shared machine only ever slow a run down. Each Ray measurement starts
its own local Ray with `num_cpus` = workers and times warm workers (actor start-up is reported apart).
"""

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from internal_rl.data.dataset import save_dataset
from internal_rl.data.generate import generate_trajectories, map_chunks_locally, rollout_chunk


def time_generation(episodes: int, map_chunks, repeats: int) -> dict[str, float]:
    """Best of `repeats` generations of the same dataset."""
    seconds = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        data = generate_trajectories("gridworld", episodes, seed=0, map_chunks=map_chunks)
        seconds = min(seconds, time.perf_counter() - start)
    steps = int(data.arrays["episode_lengths"].sum())
    return {"seconds": seconds, "episodes_per_s": episodes / seconds, "env_steps_per_s": steps / seconds,
            "attempted": data.manifest["episodes_attempted"], "arrays": data.arrays}


def spin(iterations: int) -> int:
    """Fixed pure-Python CPU work: the control for how much parallelism the machine gives right now."""
    total = 0
    for i in range(iterations):
        total += i * i % 7
    return total


def cpu_capacity(ray, workers: int, repeats: int, iterations: int = 5_000_000) -> float:
    """Speedup of `workers` parallel copies of `spin` over one (the ceiling any stage can reach now), best times."""
    remote_spin = ray.remote(num_cpus=1)(spin)
    ray.get([remote_spin.remote(1000) for _ in range(workers)])  # start the worker processes
    one = many = float("inf")
    for _ in range(repeats):
        tic = time.perf_counter()
        ray.get(remote_spin.remote(iterations))
        one = min(one, time.perf_counter() - tic)
        tic = time.perf_counter()
        ray.get([remote_spin.remote(iterations) for _ in range(workers)])
        many = min(many, time.perf_counter() - tic)
    return workers * one / many


def rl_models(run: Path | None, switch_every_step: bool = False):
    """(base model, metacontroller, env config on the post-training task) from `run`, or random quick-size models.

    The random metacontroller's switch is pinned shut (a code at t = 1 only, as the quick run's collapsed
    metacontroller behaves: the learner's update is then cheap), or with `switch_every_step` open (a
    decision every step, as the no-switch ablation: the update on [B, ~horizon] decisions is the cost).
    """
    from internal_rl.envs.gridworld import GridWorldConfig
    from internal_rl.envs.tasks import GRID_POSTTRAIN_TASK

    task = GRID_POSTTRAIN_TASK
    from internal_rl.pipeline.run_folder import METACONTROLLER_DIR, RunFolder

    if run is not None and RunFolder(run).stage(METACONTROLLER_DIR).is_dir():
        from internal_rl.pipeline.rl_stage import env_config_of_run, load_method_metacontroller

        base = RunFolder(run).base_model()
        return base, load_method_metacontroller(run, "internal"), env_config_of_run(run, base, task), str(run)
    from internal_rl.metacontroller.modules import Metacontroller, MetacontrollerConfig
    from internal_rl.models.base_model import BaseModel
    from internal_rl.models.pretraining import pretrain_preset

    torch.manual_seed(0)
    base = BaseModel(pretrain_preset("quick").model).freeze()
    mc = Metacontroller(MetacontrollerConfig(d_model=base.d_model, force_switch=switch_every_step))
    if not switch_every_step:
        with torch.no_grad():
            mc.switching_unit.out.bias.fill_(-20.0)
    mc = mc.eval().requires_grad_(False)
    switching = "a decision every step" if switch_every_step else "a decision at t = 1 only"
    return base, mc, GridWorldConfig(tasks=(task,)), f"random quick-size models, {switching}"


def time_rollouts(collect, batch: int, batches: int) -> dict[str, float]:
    """`batches` batches (fixed seeds), each timed alone; the fastest batch's rates count."""
    collect(10_000, batch)  # warm-up: first-call costs (allocation, caches)
    rates = []
    for i in range(batches):
        start = time.perf_counter()
        rollout = collect(i, batch)
        seconds = time.perf_counter() - start
        rates.append((rollout.num_episodes / seconds, int(rollout.env_steps.sum()) / seconds, seconds))
    episodes_per_s, env_steps_per_s, seconds = max(rates)
    return {"episodes_per_s": episodes_per_s, "env_steps_per_s": env_steps_per_s, "seconds_per_batch": seconds,
            "mean_episode_length": env_steps_per_s / episodes_per_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=20_000)
    parser.add_argument("--run", help="run folder with pretrain/ and metacontroller/ (default: random quick-size models)")
    parser.add_argument("--rl-batch", type=int, default=1024, help="episodes per batch (paper: 1024)")
    parser.add_argument("--rl-batches", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="generation repeats (the best counts)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--switch-every-step", action="store_true",
                        help="random metacontroller decides every step (default: only at t = 1)")
    parser.add_argument("--predict-workers", type=int, nargs="+", default=[1, 2, 4, 8, 16],
                        help="worker counts for the rollout scaling model")
    parser.add_argument("--out", default="benchmarks/results/ray.json")
    args = parser.parse_args()
    torch.set_num_threads(1)

    import ray

    from internal_rl.distributed.generate import ray_map_chunks
    from internal_rl.distributed.rollouts import RayRolloutWorkers
    from internal_rl.rl.ppo import make_optimizer, ppo_update
    from internal_rl.rl.training import RLConfig, method_setup

    base, mc, env_config, models = rl_models(Path(args.run) if args.run else None, args.switch_every_step)
    config = RLConfig(policy_width=64, policy_heads=4)  # the quick preset's policy
    rows = []

    local_gen = time_generation(args.episodes, map_chunks_locally, args.repeats)
    reference = local_gen.pop("arrays")
    with tempfile.TemporaryDirectory() as tmp:  # the driver's serial tail: compress, checksum, write
        tic = time.perf_counter()
        save_dataset(Path(tmp) / "data", reference, {"env": "gridworld"})
        save_seconds = time.perf_counter() - tic
    rows.append({"stage": "generation", "backend": "local", "workers": 1, **local_gen})
    generator = torch.Generator().manual_seed(0)
    policy, collect = method_setup("internal", base, mc, env_config, config, generator)
    local_rl = time_rollouts(collect, args.rl_batch, args.rl_batches)
    rows.append({"stage": "rollouts", "backend": "local", "workers": 1, **local_rl})
    # The scaling model for rollouts: N workers each roll out B/N episodes, so what matters is how the cost of
    # B episodes grows when they are collected in shares of B/N (smaller batches amortise the per-step
    # Python and torch overhead worse). Measured here in one process, free of Ray and of other workers.
    predicted = []
    for n in args.predict_workers:
        share = args.rl_batch // n
        tic = time.perf_counter()
        for k in range(n):
            collect(20_000 + k, share)
        seconds = time.perf_counter() - tic
        predicted.append({"workers": n, "share": share, "seconds_for_batch_in_shares": seconds})
    batch = collect(0, args.rl_batch)
    batch.returns = torch.rand(batch.num_episodes, generator=generator)  # an update with signal (none is skipped)
    optimizer = make_optimizer(policy, config.ppo)
    tic = time.perf_counter()
    ppo_update(policy, optimizer, batch, config.ppo, generator)
    update_seconds = time.perf_counter() - tic

    # What crosses the object store per unit of work (the transfer term of the scaling model).
    from internal_rl.envs.gridworld import GridWorldConfig

    chunk = rollout_chunk(GridWorldConfig(), 1024, 0, 0.0)
    sizes = {"chunk_of_1024_envs_bytes": sum(a.nbytes for a in chunk[0].values()),
             "rollout_batch_bytes": sum(getattr(batch, f).numel() * getattr(batch, f).element_size()
                                        for f in batch.__dataclass_fields__),
             "policy_weights_bytes": sum(t.numel() * t.element_size() for t in policy.state_dict().values())}

    for workers in args.workers:
        tic = time.perf_counter()
        ray.init(num_cpus=workers, include_dashboard=False, logging_level="ERROR")
        init_seconds = time.perf_counter() - tic
        capacity = cpu_capacity(ray, workers, args.repeats) if workers > 1 else 1.0
        if workers == args.workers[0]:
            tic = time.perf_counter()
            ray.get(ray.put(chunk))
            sizes["chunk_put_get_seconds"] = time.perf_counter() - tic
        rows.append({"stage": "cpu capacity", "backend": "ray", "workers": workers, "speedup": capacity})
        # Warm-up: worker processes start and import the package on their first task.
        generate_trajectories("gridworld", 64, seed=1, batch_size=16, map_chunks=ray_map_chunks(workers))
        gen = time_generation(args.episodes, ray_map_chunks(workers), args.repeats)
        arrays = gen.pop("arrays")
        identical = all(np.array_equal(arrays[k], reference[k]) for k in reference)
        rows.append({"stage": "generation", "backend": "ray", "workers": workers, "identical_to_local": identical,
                     "ray_init_seconds": init_seconds, **gen})
        ray_workers = RayRolloutWorkers(workers)
        tic = time.perf_counter()
        remote_collect = ray_workers.bind("internal", base, mc, env_config, config, policy)
        ray_workers.pids()  # waits for the actors to be up, with their models
        startup = time.perf_counter() - tic
        rows.append({"stage": "rollouts", "backend": "ray", "workers": workers, "actor_startup_seconds": startup,
                     **time_rollouts(remote_collect, args.rl_batch, args.rl_batches)})
        ray_workers.shutdown()
        ray.shutdown()

    # Scaling efficiency: the speedup over one Ray worker, divided by the speedup the machine itself gave N
    # copies of a fixed loop at the time (1.0: the stage scales as far as the free CPUs allow).
    capacity = {r["workers"]: r["speedup"] for r in rows if r["stage"] == "cpu capacity"}
    one = {r["stage"]: r["episodes_per_s"] for r in rows if r["backend"] == "ray" and r["workers"] == 1 and "episodes_per_s" in r}
    for row in rows:
        if row["backend"] == "ray" and row["stage"] in one:
            row["efficiency"] = row["episodes_per_s"] / one[row["stage"]] / capacity[row["workers"]]
    print(f"{'stage':<12} {'backend':<7} {'workers':>7} {'episodes/s':>11} {'env steps/s':>12} {'vs local':>9} {'efficiency':>10}")
    for row in rows:
        if row["stage"] == "cpu capacity":
            print(f"{row['stage']:<12} {row['backend']:<7} {row['workers']:>7} {'':>11} {'':>12} {row['speedup']:>8.2f}x")
            continue
        local = local_gen if row["stage"] == "generation" else local_rl
        print(f"{row['stage']:<12} {row['backend']:<7} {row['workers']:>7} {row['episodes_per_s']:>11.1f} "
              f"{row['env_steps_per_s']:>12.0f} {row['episodes_per_s'] / local['episodes_per_s']:>8.2f}x "
              f"{row.get('efficiency', float('nan')):>10.2f}")
    print(f"learner PPO update on one batch of {args.rl_batch}: {update_seconds:.3f} s "
          f"(local rollout of that batch: {local_rl['seconds_per_batch']:.3f} s); writing the {args.episodes}-episode "
          f"dataset: {save_seconds:.2f} s")

    out = {
        "machine": {"cpu_count": os.cpu_count(), "processor": platform.machine(), "python": platform.python_version(),
                    "torch": torch.__version__, "ray": ray.__version__, "load_average_1min": os.getloadavg()[0]},
        "episodes": args.episodes, "rl_models": models, "rl_batch": args.rl_batch, "rl_batches": args.rl_batches,
        "ppo_update_seconds": update_seconds, "dataset_save_seconds": save_seconds, "transfer": sizes, "rollout_scaling_model": predicted, "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    one_share = predicted[0]["seconds_for_batch_in_shares"]
    for row in predicted:
        # Rollouts in parallel shares, then the learner's update on the driver (serial).
        row["predicted_seconds_per_update"] = row["seconds_for_batch_in_shares"] / row["workers"] + update_seconds
        row["predicted_speedup"] = (one_share + update_seconds) / row["predicted_seconds_per_update"]
    print("rollout scaling model (B = %d): " % args.rl_batch + ", ".join(
        f"{r['workers']} workers {r['predicted_speedup']:.1f}x" for r in predicted))
    print(f"per 1024-env generation chunk {sizes['chunk_of_1024_envs_bytes'] / 1e6:.1f} MB "
          f"(object-store round trip {sizes['chunk_put_get_seconds']:.3f} s); per RL batch "
          f"{sizes['rollout_batch_bytes'] / 1e6:.2f} MB back, {sizes['policy_weights_bytes'] / 1e3:.0f} kB of weights out")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
