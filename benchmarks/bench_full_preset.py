"""What `reproduce gridworld --preset full` costs on a device: each training stage's step at the paper's sizes
and batches, timed, times the number of steps the paper's budgets take.

    python benchmarks/bench_full_preset.py --device cuda [--steps N]

Writes benchmarks/results/full_preset_<device type>.json and prints a table. A step's time is the difference
between a run of 2 + N steps and one of 2 steps, divided by N, so start-up and the end-of-run evaluations
cancel. Timed on generated grid-world expert data (8,192 episodes) with the paper's model sizes and their
initial weights. RL is timed at the paper's batch of 1,024 episodes on the task 0-1-2-3 with untrained
models, whose episodes end at the first wrong colour: their lengths (recorded) are shorter than a trained
model's, and as they never succeed, every PPO update is skipped (no return differs from the batch mean), so
the RL estimate counts rollouts only and is a lower bound. Generation and the probes are left out (minutes
on CPUs).
"""

import argparse
import copy
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import torch

from internal_rl.analysis.steering import evaluate_controllers
from internal_rl.analysis.subgoal_controllers import SteeringConfig, fit_subgoal_controllers
from internal_rl.common.device import describe_device, resolve_device
from internal_rl.data.dataset import load_dataset
from internal_rl.data.generate import env_config_from_manifest, generate_dataset
from internal_rl.metacontroller.modules import MetacontrollerConfig
from internal_rl.metacontroller.training import PRESETS as METACONTROLLER_PRESETS
from internal_rl.metacontroller.training import train_metacontroller
from internal_rl.models.hooks import layer_hook
from internal_rl.models.pretraining import PRESETS as PRETRAIN_PRESETS
from internal_rl.models.pretraining import train_base_model
from internal_rl.pipeline.reproduce import reproduce_preset
from internal_rl.rl.training import METHODS, rl_preset, train_rl

RESULTS = Path(__file__).parent / "results"
WARMUP_STEPS = 2


def seconds_per_step(run: Callable[[int], None], steps: int) -> float:
    """Seconds per step of `run(n)` (n steps), without its fixed costs: (t(2 + steps) - t(2)) / steps, after
    an untimed run of 2 steps (CUDA and library start-up)."""
    times = []
    for n in (WARMUP_STEPS, WARMUP_STEPS, WARMUP_STEPS + steps):
        start = time.perf_counter()
        run(n)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return max(times[2] - times[1], 0.0) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per stage (default 20)")
    args = parser.parse_args()
    device = resolve_device(args.device)
    full = reproduce_preset("full")
    work = Path(tempfile.mkdtemp())
    generate_dataset("gridworld", 8192, work / "data", seed=0, show_progress=False)
    dataset = load_dataset(work / "data")
    env_config = env_config_from_manifest(dataset.manifest)
    train, held_out = dataset.split(0.05, 0)
    stages: dict[str, dict[str, Any]] = {}
    out = RESULTS / f"full_preset_{device.type}.json"
    RESULTS.mkdir(parents=True, exist_ok=True)

    def record(name: str, seconds_each: float, count: int, unit: str, **extra: Any) -> None:
        """Print a stage's line and rewrite the results file with every stage timed so far."""
        stages[name] = {f"seconds_per_{unit}": seconds_each, f"{unit}s": count, "hours": seconds_each * count / 3600,
                        **extra}
        print(f"{name:<34}{seconds_each:>10.3f} s/{unit:<7}x {count:>9,} = {seconds_each * count / 3600:>7.2f} h",
              flush=True)
        total = sum(stage["hours"] for stage in stages.values())
        out.write_text(json.dumps({"device": describe_device(device), "torch": torch.__version__,
                                   "timed_steps": args.steps, "stages": stages, "total_hours": total}, indent=2) + "\n")

    pretrain = PRETRAIN_PRESETS[full.pretrain]
    models: list[Any] = []

    def pretrain_run(n: int) -> None:
        config = replace(pretrain, steps=n, eval_every=0, checkpoint_every=0, eval_rollouts=0)
        models[:] = [train_base_model(config, train, show_progress=False, device=device).model]

    record("pretrain", seconds_per_step(pretrain_run, args.steps), pretrain.steps, "step",
           batch_size=pretrain.batch_size)
    base = models[0]

    steer = SteeringConfig()
    hook = layer_hook(base.n_layers // 2, base.n_layers)
    fit = seconds_per_step(lambda n: fit_subgoal_controllers(base, dataset, hook, replace(steer, steps=n),
                                                             show_progress=False), args.steps)
    start = time.perf_counter()
    evaluate_controllers(base, env_config, steer)
    evaluation = time.perf_counter() - start
    # The steering stage fits and evaluates the layers 1..L-1, and evaluates the uncontrolled model once.
    record("steer, per layer", fit * steer.steps + evaluation, base.n_layers - 1, "layer",
           fit_seconds_per_step=fit, steps_per_layer=steer.steps)
    record("steer, uncontrolled baseline", evaluation, 1, "run")

    schedule = METACONTROLLER_PRESETS[full.metacontroller]
    trained: dict[str, tuple[Any, Any]] = {}  # RL method -> (its base model, its metacontroller)
    cotrained_base = copy.deepcopy(base)  # co-training changes its base model's weights
    for method, stage in (("internal", "metacontroller"), ("no-switch", "metacontroller-no-switch"),
                          ("cotrained", "metacontroller-cotrained")):
        config = MetacontrollerConfig(force_switch=method == "no-switch")
        own_base = cotrained_base if method == "cotrained" else base

        def mc_run(n: int) -> None:
            short = replace(schedule, steps=n, eval_every=n, checkpoint_every=n, eval_episodes=64)
            mc = train_metacontroller(own_base, dataset, config, short, show_progress=False, device=device,
                                      cotrain=method == "cotrained")[0]
            trained[method] = own_base, mc

        record(stage, seconds_per_step(mc_run, args.steps), schedule.steps, "step", batch_size=schedule.batch_size)

    task_config = replace(env_config, tasks=(tuple(full.task),))
    for method in METHODS:
        config = rl_preset(full.rl, method)
        batch = config.ppo.episodes_per_batch
        short = replace(config, total_episodes=2 * batch, eval_episodes=batch)
        own_base, mc = trained.get(method, (base, None))
        result = train_rl(method, own_base, mc, task_config, 0, short, device=device)
        timing = result["timing"]
        updates = len(result["curve"])
        per_update = (timing["rollout_seconds"] + timing["update_seconds"]) / updates
        record(f"rl {method}, {full.seeds} seeds", per_update, full.seeds * config.num_updates, "update",
               mean_env_steps=sum(r["mean_env_steps"] for r in result["curve"]) / updates,
               rollout_env_steps_per_second=timing["rollout_env_steps_per_second"],
               update_seconds=timing["update_seconds"] / updates)

    total = sum(stage["hours"] for stage in stages.values())
    print(f"{'total (without generation and probes)':<40}{total:>31.1f} h")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
