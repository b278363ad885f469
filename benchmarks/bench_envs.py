"""Throughput of the grid-world environments and the expert; prints a table and writes JSON.

    .venv/bin/python benchmarks/bench_envs.py [--batch 1024] [--seconds 1.0] [--out benchmarks/results/envs.json]

Every number is the best of a few timed repeats on one process (numpy runs these element-wise operations
on one core). "env steps/s" counts one environment advancing one step, so a batched step of N envs is N
env steps. Batched rows use random actions; envs whose episode ended stay frozen (still stepped, at the
same cost) unless the row says it autoresets.
"""

import argparse
import json
import os
import sys
from pathlib import Path

import gymnasium
import numpy as np

from internal_rl.envs.batched_gridworld import BatchedGridWorld, GridWorldVectorEnv
from internal_rl.envs.expert import GridExpert, distance_maps
from internal_rl.envs.gridworld import GridWorldConfig, GridWorldEnv, sample_layouts

from timing import best_rate, machine_info


def bench_scalar(config: GridWorldConfig, seconds: float) -> float:
    env = GridWorldEnv(config)
    env.reset(seed=0)
    actions = np.random.default_rng(0).integers(0, 4, 1000).tolist()

    def run() -> int:
        for action in actions:
            _, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                env.reset()
        return len(actions)

    return best_rate(run, seconds)


def bench_batched(config: GridWorldConfig, batch: int, seconds: float, *, with_obs: bool, autoreset: bool) -> float:
    env = BatchedGridWorld(config, batch)
    env.reset(seed=0)
    actions = np.random.default_rng(0).integers(0, 4, (64, batch))

    def run() -> int:
        for step_actions in actions:
            env.step(step_actions, with_obs=with_obs)
            if autoreset and env.done.any():
                env.reset_envs(env.done)
        return actions.size

    return best_rate(run, seconds)


def bench_vector(config: GridWorldConfig, batch: int, seconds: float) -> float:
    env = GridWorldVectorEnv(batch, config)
    env.reset(seed=0)
    actions = np.random.default_rng(0).integers(0, 4, (64, batch))

    def run() -> int:
        for step_actions in actions:
            env.step(step_actions)
        return actions.size

    return best_rate(run, seconds)


def bench_sync_vector(config: GridWorldConfig, batch: int, seconds: float) -> float:
    env = gymnasium.vector.SyncVectorEnv([lambda: GridWorldEnv(config) for _ in range(batch)])
    env.reset(seed=0)
    actions = np.random.default_rng(0).integers(0, 4, (8, batch))

    def run() -> int:
        for step_actions in actions:
            env.step(step_actions)
        return actions.size

    return best_rate(run, seconds, repeats=1)


def bench_expert(config: GridWorldConfig, batch: int, seconds: float, *, store_obs: bool) -> dict[str, float]:
    """Full episodes of the expert on fresh layouts and pretraining tasks, as data generation runs them."""
    env = BatchedGridWorld(config, batch)
    expert = GridExpert(config)
    rng = np.random.default_rng(0)
    stats = {"successes": 0, "episodes": 0, "steps": 0}

    def run() -> int:
        env.reset()
        while not env.done.all():
            alive = int((~env.done).sum())
            if store_obs:
                env.observations(np.uint8)  # what a dataset stores before each action
            env.step(expert.act(env, rng), with_obs=False)
            stats["steps"] += alive
        stats["successes"] += int(env.success.sum())
        stats["episodes"] += batch
        return batch

    env.reset(seed=0)
    rate = best_rate(run, seconds)
    return {
        "episodes_per_s": rate,
        "success_rate": stats["successes"] / stats["episodes"],
        "mean_episode_length": stats["steps"] / stats["episodes"],
    }


def bench_expert_act(config: GridWorldConfig, batch: int, seconds: float) -> float:
    """Expert decisions/s with cached distance maps (the layouts do not change between calls)."""
    env = BatchedGridWorld(config, batch)
    env.reset(seed=0)
    expert, rng = GridExpert(config), np.random.default_rng(0)
    expert.act(env, rng)

    def run() -> int:
        expert.act(env, rng)
        return batch

    return best_rate(run, seconds)


def bench_distance_maps(config: GridWorldConfig, batch: int, seconds: float) -> float:
    """Layouts/s through the batched shortest-path DP (all colours), the expert's cost at a reset."""
    layouts, _ = sample_layouts(np.random.default_rng(0), batch, config)

    def run() -> int:
        distance_maps(layouts, config)
        return batch

    return best_rate(run, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--seconds", type=float, default=1.0, help="length of each timed repeat")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "envs.json")
    args = parser.parse_args()
    config, batch, seconds = GridWorldConfig(), args.batch, args.seconds

    n = f"x{batch}"
    rows: list[tuple[str, float, str]] = []

    def row(name: str, rate: float, unit: str = "env steps/s") -> None:
        rows.append((name, rate, unit))
        print(f"  {name}: {rate:,.0f} {unit}", file=sys.stderr)

    row("GridWorldEnv (scalar reference, reset on done)", bench_scalar(config, seconds))
    for with_obs in (False, True):
        for autoreset in (False, True):
            name = f"BatchedGridWorld {n}, step {'with obs (float32 copy)' if with_obs else 'without obs'}"
            name += " + reset_envs(done)" if autoreset else ""
            row(name, bench_batched(config, batch, seconds, with_obs=with_obs, autoreset=autoreset))
    row(f"GridWorldVectorEnv {n} (next-step autoreset, obs, info)", bench_vector(config, batch, seconds))
    row(f"gymnasium SyncVectorEnv(GridWorldEnv) {n}, for comparison", bench_sync_vector(config, batch, seconds))
    maps_rate = bench_distance_maps(config, batch, seconds)
    row(f"distance maps {n} layouts x {config.n_colours} colours", maps_rate, "layouts/s")
    row(f"GridExpert.act {n} (cached distance maps)", bench_expert_act(config, batch, seconds), "decisions/s")
    expert = bench_expert(config, batch, seconds, store_obs=False)
    row(f"expert episodes {n} (reset + DP + act + step)", expert["episodes_per_s"], "episodes/s")
    expert_obs = bench_expert(config, batch, seconds, store_obs=True)
    row(f"expert episodes {n}, + uint8 obs every step", expert_obs["episodes_per_s"], "episodes/s")

    width = max(len(name) for name, _, _ in rows)
    print(f"{'benchmark':<{width}}  {'rate':>12}  unit")
    for name, rate, unit in rows:
        print(f"{name:<{width}}  {rate:>12,.0f}  {unit}")
    success, length = expert["success_rate"], expert["mean_episode_length"]
    print(f"expert success rate {success:.3f}, mean episode length {length:.1f} steps (failures run to the horizon)")

    results = {
        "machine": machine_info(),
        "batch": batch,
        "seconds_per_repeat": seconds,
        "rates": [{"name": name, "rate": rate, "unit": unit} for name, rate, unit in rows],
        "expert": {"success_rate": expert["success_rate"], "mean_episode_length": expert["mean_episode_length"]},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; wrote {args.out}")


if __name__ == "__main__":
    main()
