"""Pretraining speed on an idle machine and beside one busy process, by torch thread count.

    .venv/bin/python benchmarks/bench_load.py [--steps 150] [--threads 1,2]

Times a fixed slice of the grid world's quick pretraining (the demo's model and batch, on generated data)
in a fresh process per setting, once with the other cores idle and once beside one process that spins a
core (what a user's editor, browser or second command does to a shared 2-core machine). Two torch
intra-op threads on two cores wait on each other at every parallel region, so one busy core can stall
both; one thread per process does not wait. Prints a table and writes benchmarks/results/load.json with
steps/s per setting, the busy/idle slowdown, and each setting's idle speed against the best idle one.
"""

import argparse
import json
import multiprocessing
import subprocess
import sys
import time
from pathlib import Path

from timing import machine_info

RESULTS = Path(__file__).parent / "results" / "load.json"

# One pretraining slice in a fresh interpreter: the thread count is fixed before torch does any work.
_SLICE = """
import sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
from internal_rl.common.config import replace
from internal_rl.data.generate import generate_trajectories
from internal_rl.models.base_model import BaseModel
from internal_rl.models.pretraining import PRESETS, bf16_supported, length_grouped_batches, make_optimizer
config = PRESETS["quick"]
data = generate_trajectories("gridworld", 4096, seed=0)
torch.manual_seed(0)
model = BaseModel(replace(config.model, obs_dim=data.arrays["observations"].shape[-1]))
optimizer = make_optimizer(model, config)
batches = length_grouped_batches(data, config.batch_size, seed=0)
bf16 = config.bf16_autocast and bf16_supported()
def step():
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss, _ = model.loss(next(batches))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    optimizer.step()
for _ in range(10):
    step()
steps = int(sys.argv[2])
start = time.perf_counter()
for _ in range(steps):
    step()
print(steps / (time.perf_counter() - start))
"""


def _spin(stop_at: float) -> None:
    while time.time() < stop_at:
        pass


def steps_per_second(threads: int, steps: int, busy: bool) -> float:
    """Pretraining steps/s of one slice with `threads` torch threads, beside one spinning process if `busy`."""
    spinner = None
    if busy:
        spinner = multiprocessing.Process(target=_spin, args=(time.time() + 3600,), daemon=True)
        spinner.start()
    try:
        out = subprocess.run([sys.executable, "-c", _SLICE, str(threads), str(steps)], check=True,
                             capture_output=True, text=True)
    finally:
        if spinner is not None:
            spinner.terminate()
            spinner.join()
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150, help="timed pretraining steps per setting")
    parser.add_argument("--threads", default="1,2", help="comma-separated torch thread counts")
    args = parser.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    rows = []
    for n in threads:
        idle = steps_per_second(n, args.steps, busy=False)
        busy = steps_per_second(n, args.steps, busy=True)
        rows.append({"threads": n, "idle_steps_per_second": idle, "busy_steps_per_second": busy,
                     "busy_slowdown": idle / busy})
    best_idle = max(r["idle_steps_per_second"] for r in rows)
    for r in rows:
        r["idle_slowdown_vs_best"] = best_idle / r["idle_steps_per_second"]
    print(f"{'threads':>7} {'idle steps/s':>13} {'busy steps/s':>13} {'busy/idle time':>15} {'idle vs best':>13}")
    for r in rows:
        print(f"{r['threads']:>7} {r['idle_steps_per_second']:>13.2f} {r['busy_steps_per_second']:>13.2f} "
              f"{r['busy_slowdown']:>14.2f}x {r['idle_slowdown_vs_best']:>12.2f}x")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": machine_info(), "steps": args.steps, "rows": rows}, indent=1))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
