"""Throughput of the continuous pinpad environments, their experts and rendering; prints a table, writes JSON.

    .venv/bin/python benchmarks/bench_pinpad.py [--batch 1024] [--seconds 1.0] [--out benchmarks/results/pinpad.json]

Every number is the best of a few timed repeats on one process. "env steps/s" counts one environment
advancing one step; "physics steps/s" counts MuJoCo `mj_step`s (an ant env step is `frame_skip` = 5 of
them; the point mass has one integration step per env step). Expert rows roll complete episodes on fresh
layouts, as data generation does, and report their success rates (the experts' competence; the noise is
data D's, 0 gives the mean actions of D*).
"""

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from internal_rl.envs.ant_expert import AntExpert, AntExpertConfig
from internal_rl.envs.ant_pinpad import AntPinpadConfig, AntPinpadEnv, BatchedAntPinpad
from internal_rl.envs.pinpad_expert import PointExpert, PointExpertConfig, rollout_expert
from internal_rl.envs.point_pinpad import BatchedPointPinpad, PointPinpadConfig, PointPinpadEnv
from internal_rl.envs.tasks import PINPAD_POSTTRAIN_TASK

from timing import best_rate, machine_info


def bench_batched(env, seconds: float, n_steps: int) -> float:
    """env steps/s of a batched pinpad env under random actions, resetting envs whose episode ended."""
    env.reset(seed=0)
    actions = np.random.default_rng(0).uniform(-1, 1, (n_steps, env.num_envs, env.act_dim))

    def run() -> int:
        for step_actions in actions:
            env.step(step_actions)
            if env.done.any():
                env.reset_envs(env.done)
        return actions.shape[0] * env.num_envs

    return best_rate(run, seconds)


def bench_gym_env(env, seconds: float, n_steps: int = 200) -> float:
    env.reset(seed=0)
    actions = np.random.default_rng(0).uniform(-1, 1, (n_steps,) + env.action_space.shape).astype(np.float32)

    def run() -> int:
        for action in actions:
            _, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                env.reset()
        return n_steps

    return best_rate(run, seconds)


def expert_episodes(env, expert, seconds: float) -> dict[str, float]:
    """Complete expert episodes/s on fresh layouts, and their success rate and mean successful length."""
    env.rng = np.random.default_rng(0)
    rng = np.random.default_rng(1)
    stats = {"success": 0, "episodes": 0, "steps": 0}

    def run() -> int:
        arrays = rollout_expert(env, lambda e, r: expert.act(e, r)[0], rng)
        stats["success"] += int(arrays["success"].sum())
        stats["episodes"] += env.num_envs
        stats["steps"] += int(arrays["lengths"][arrays["success"]].sum())
        return env.num_envs

    rate = best_rate(run, seconds)
    return {
        "episodes_per_s": rate,
        "success_rate": stats["success"] / stats["episodes"],
        "episodes": stats["episodes"],
        "mean_successful_length": stats["steps"] / max(stats["success"], 1),
    }


def bench_render(env, seconds: float) -> float:
    env.reset(seed=0)

    def run() -> int:
        env.render()
        return 1

    return best_rate(run, seconds, repeats=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1024, help="point-pinpad batch")
    parser.add_argument("--ant-batch", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=1.0, help="length of each timed repeat")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "pinpad.json")
    args = parser.parse_args()
    batch, seconds, ant_batch = args.batch, args.seconds, args.ant_batch
    frame_skip = AntPinpadConfig().frame_skip
    rows: list[tuple[str, float, str]] = []

    def row(name: str, rate: float, unit: str) -> None:
        rows.append((name, rate, unit))
        print(f"  {name}: {rate:,.1f} {unit}", file=sys.stderr)

    point_rate = bench_batched(BatchedPointPinpad(PointPinpadConfig(), batch), seconds, n_steps=32)
    row(f"BatchedPointPinpad x{batch}, random actions + reset_envs", point_rate, "env steps/s (= physics steps/s)")
    row("PointPinpadEnv (Gymnasium, one env)", bench_gym_env(PointPinpadEnv(), seconds), "env steps/s")
    ant_rate = bench_batched(BatchedAntPinpad(AntPinpadConfig(), ant_batch), seconds, n_steps=8)
    row(f"BatchedAntPinpad x{ant_batch}, random actions + reset_envs", ant_rate, "env steps/s")
    row(f"BatchedAntPinpad x{ant_batch}, MuJoCo physics", ant_rate * frame_skip, "physics steps/s")
    row("AntPinpadEnv (Gymnasium, one env)", bench_gym_env(AntPinpadEnv(), seconds), "env steps/s")
    experts = {}
    for split, tasks in (("pretrain", PointPinpadConfig().tasks), ("posttrain", (PINPAD_POSTTRAIN_TASK,))):
        for noise in (0.3, 0.0):
            config = PointPinpadConfig(tasks=tasks)
            expert = PointExpert(config, PointExpertConfig(noise_std=noise))
            result = expert_episodes(BatchedPointPinpad(config, batch), expert, seconds)
            experts[f"point_{split}_noise{noise}"] = result
            row(f"point expert episodes x{batch}, {split} tasks, noise {noise}", result["episodes_per_s"], "episodes/s")
        for noise in (0.1, 0.0):
            config = AntPinpadConfig(tasks=tasks)
            expert = AntExpert(config, AntExpertConfig(noise_std=noise))
            result = expert_episodes(BatchedAntPinpad(config, 64), expert, seconds)
            experts[f"ant_{split}_noise{noise}"] = result
            row(f"ant expert episodes x64, {split} tasks, noise {noise}", result["episodes_per_s"], "episodes/s")
    point_frames = bench_render(PointPinpadEnv(render_mode="rgb_array"), seconds)
    row("point top-down frame 256x256 (numpy)", point_frames, "frames/s")
    ant_render = AntPinpadEnv(render_mode="rgb_array")
    ant_frames = bench_render(ant_render, seconds)
    row(f"ant MuJoCo frame 256x256 (MUJOCO_GL={os.environ.get('MUJOCO_GL')})", ant_frames, "frames/s")
    ant_render.close()

    width = max(len(name) for name, _, _ in rows)
    print(f"{'benchmark':<{width}}  {'rate':>12}  unit")
    for name, rate, unit in rows:
        print(f"{name:<{width}}  {rate:>12,.1f}  {unit}")
    for name, result in experts.items():
        print(f"{name}: success {result['success_rate']:.3f} over {result['episodes']} episodes, "
              f"mean successful length {result['mean_successful_length']:.1f} steps")
    results = {
        "machine": machine_info(),
        "batch": batch,
        "ant_batch": ant_batch,
        "seconds_per_repeat": seconds,
        "rates": [{"name": name, "rate": rate, "unit": unit} for name, rate, unit in rows],
        "experts": experts,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; wrote {args.out}")


if __name__ == "__main__":
    main()
