"""Base-model throughput on this machine: matmul rate, training tokens/s and MFU, KV-cached vs recomputed rollouts.

    .venv/bin/python benchmarks/bench_model.py [--compile] [--repeats N]

Prints a table and writes benchmarks/results/model.json. Training FLOPs per token are counted as
6 * (parameters in matmuls) + 12 * n_layers * T * (n_heads * d_head) (attention scores and mixing, forward
and backward, over the full T x T score matrix that the masked kernel computes). MFU is the achieved
FLOP rate as a fraction of the measured float32 1024^3 matmul rate, not of a datasheet peak (bfloat16
rows can exceed 100%: their matmuls run faster than the float32 reference).
Rollouts: T = 100 steps of single-observation decoding, with the KV cache (`step`) and without it
(recomputing the whole prefix with `forward` at every step, as a model without a cache must).
"""

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from internal_rl.common.config import config_to_dict
from internal_rl.models.base_model import BaseModel, BaseModelConfig
from internal_rl.models.pretraining import PRESETS, bf16_supported, make_optimizer

RESULTS = Path(__file__).parent / "results" / "model.json"
OBS_DIM = 637
TRAIN_T = 50  # a typical padded episode length in a batch of grid-world expert episodes (mean length ~31)


def timed(fn, repeats: int, warmup: int = 2) -> float:
    """Median wall time of `fn()` over `repeats` runs, after `warmup` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_rate(repeats: int) -> float:
    """Measured float32 FLOP/s of a 1024 x 1024 x 1024 matmul."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    seconds = timed(lambda: [a @ b for _ in range(10)], repeats) / 10
    return 2 * 1024**3 / seconds


def synthetic_batch(batch: int, steps: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # Grid observations have 13 ones among 637 elements; the density barely matters for dense matmuls.
    obs = (torch.rand(batch, steps + 1, OBS_DIM, generator=g) < 13 / OBS_DIM).float()
    return {
        "observations": obs[:, :-1],
        "next_observations": obs[:, 1:],
        "actions": torch.randint(0, 4, (batch, steps), generator=g),
        "mask": torch.ones(batch, steps, dtype=torch.bool),
    }


def training_flops_per_token(model: BaseModel, steps: int) -> float:
    matmul_params = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    trunk = model.config.transformer
    attention = 12 * trunk.n_layers * steps * trunk.n_heads * trunk.d_head
    return 6 * matmul_params + attention


def bench_training(
    config: BaseModelConfig, batch_size: int, repeats: int, compile_model: bool, bf16: bool, peak: float
) -> dict:
    torch.manual_seed(0)
    model = BaseModel(config)
    optimizer = make_optimizer(model, PRESETS["paper"])
    batch = synthetic_batch(batch_size, TRAIN_T)
    loss_fn = torch.compile(model.loss) if compile_model else model.loss

    def train_step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, _ = loss_fn(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    seconds = timed(train_step, repeats, warmup=3 if compile_model else 2)
    tokens = batch_size * TRAIN_T
    flops = training_flops_per_token(model, TRAIN_T) * tokens / seconds
    return {
        "batch_size": batch_size,
        "T": TRAIN_T,
        "compiled": compile_model,
        "bf16_autocast": bf16,
        "params": sum(p.numel() for p in model.parameters()),
        "step_seconds": seconds,
        "tokens_per_second": tokens / seconds,
        "flops_per_second": flops,
        "mfu_of_measured_matmul": flops / peak,
    }


@torch.no_grad()
def bench_rollout(config: BaseModelConfig, batch_size: int, horizon: int = 100) -> dict:
    torch.manual_seed(0)
    model = BaseModel(config).eval()
    obs = (torch.rand(batch_size, horizon, OBS_DIM) < 13 / OBS_DIM).float()

    def cached():
        state = model.init_state(batch_size, horizon)
        for t in range(horizon):
            model.step(obs[:, t], state)

    def recomputed():
        for t in range(horizon):
            model(obs[:, : t + 1])

    with_cache = timed(cached, repeats=3, warmup=1)
    without_cache = timed(recomputed, repeats=1, warmup=0)
    return {
        "batch_size": batch_size,
        "T": horizon,
        "cached_seconds": with_cache,
        "recomputed_seconds": without_cache,
        "cached_env_steps_per_second": batch_size * horizon / with_cache,
        "recomputed_env_steps_per_second": batch_size * horizon / without_cache,
        "speedup": without_cache / with_cache,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd training steps")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    # Other processes on the machine slow every number here; the load average records how busy it was.
    load_before = os.getloadavg()

    peak = matmul_rate(args.repeats)
    models = {"paper": PRESETS["paper"].model, "quick": PRESETS["quick"].model}
    results = {
        "machine": {"platform": platform.platform(), "threads": torch.get_num_threads(), "torch": torch.__version__},
        "matmul_1024_flops_per_second": peak,
        "models": {name: config_to_dict(config.transformer) for name, config in models.items()},
        "training": {},
        "rollout": {},
    }
    print(f"float32 1024^3 matmul: {peak / 1e9:.1f} GFLOP/s on {torch.get_num_threads()} threads", flush=True)
    print(f"\n{'training':<30}{'params':>10}{'tokens/s':>12}{'GFLOP/s':>10}{'MFU':>8}")
    for name, config in models.items():
        batch_size = PRESETS["quick"].batch_size
        variants = [(False, False), (False, True)] + ([(True, False)] if args.compile else [])
        for compile_model, bf16 in variants:
            if bf16 and not bf16_supported():
                continue
            key = f"{name}{'-compiled' if compile_model else ''}{'-bf16' if bf16 else ''}"
            r = bench_training(config, batch_size, args.repeats, compile_model, bf16, peak)
            results["training"][key] = r
            print(
                f"{key + f' (B={batch_size}, T={TRAIN_T})':<30}{r['params']:>10,}{r['tokens_per_second']:>12,.0f}"
                f"{r['flops_per_second'] / 1e9:>10.1f}{r['mfu_of_measured_matmul']:>8.0%}",
                flush=True,
            )
    print(f"\n{'rollout (T=100)':<24}{'cached steps/s':>16}{'recomputed':>12}{'speedup':>9}")
    for name, config in models.items():
        for batch_size in (64, 256):
            r = bench_rollout(config, batch_size)
            results["rollout"][f"{name}-B{batch_size}"] = r
            print(
                f"{f'{name} B={batch_size}':<24}{r['cached_env_steps_per_second']:>16,.0f}"
                f"{r['recomputed_env_steps_per_second']:>12,.0f}{r['speedup']:>8.1f}x",
                flush=True,
            )
    results["machine"]["load_average_before_after"] = [load_before[0], os.getloadavg()[0]]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
