"""Does the metacontroller's code still explain the actions when it is held the way internal RL holds it?

    OMP_NUM_THREADS=1 .venv/bin/python scripts/switch_gate_nll.py --run RUN [--stage metacontroller]

Training integrates codes with the soft gate z_t = beta_t z~_t + (1 - beta_t) z_{t-1}, and beta rests at
0.05-0.3 between switches, so a code fades and picks up the encoder's later proposals within a segment.
Internal RL holds a code exactly until beta >= 0.5. This prints the held-out action NLL per step of the
metacontroller's own held-out episodes (z~ = mu) under:

- soft: the training-time gate;
- hard: the gate thresholded at 0.5 inside the recurrence (`Metacontroller.forward(hard_switch=True)`);
- first code: the code of each episode's first step held for the whole episode;
- zero code: z = 0 at every step (the decoder's U(0));
- base model: no controller at all.

If hard is far above soft, the codes RL can choose cannot do what training measured. Prints one JSON line.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from internal_rl.analysis.switching import _held_out_of
from internal_rl.common.checkpoint import load_checkpoint
from internal_rl.common.errors import InternalRLError
from internal_rl.metacontroller.modules import load_metacontroller
from internal_rl.metacontroller.training import _valid_actions
from internal_rl.models.controller import apply_controller
from internal_rl.pipeline.run_folder import RunFolder

VARIANTS = ("soft", "hard", "first code", "zero code", "base model")


@torch.no_grad()
def nll_by_variant(base, metacontroller, dataset, episodes: int) -> dict[str, float]:
    """Mean action NLL per real step over the first `episodes` held-out episodes, for each variant."""
    totals = dict.fromkeys(VARIANTS, 0.0)
    switches = {"soft": 0.0, "hard": 0.0}
    steps, n = 0, min(episodes, dataset.num_episodes)
    hook = metacontroller.config.hook
    for start in range(0, n, 256):
        batch = dataset.batch(np.arange(start, min(start + 256, n)))
        mask = batch["mask"]
        for variant in VARIANTS:
            def intervene(e: torch.Tensor) -> torch.Tensor:
                if variant == "base model":
                    return e
                out = metacontroller(e, mask, sample=False, hard_switch=variant == "hard")
                z = out["z"]
                if variant in switches:
                    switches[variant] += float(((out["beta"] >= 0.5) & mask).sum())
                if variant == "first code":
                    z = z[:, :1].expand_as(z)
                elif variant == "zero code":
                    z = torch.zeros_like(z)
                return apply_controller(e, metacontroller.decode(z))

            out = base(batch["observations"], interventions={hook: intervene})
            nll = -base.action_distribution(out.action_params).log_prob(_valid_actions(batch["actions"], mask))
            totals[variant] += float((nll * mask).sum())
        steps += int(mask.sum())
    result = {variant: totals[variant] / steps for variant in VARIANTS}
    result.update({f"switches_per_episode_{k}": v / n for k, v in switches.items()})
    result["episodes"] = n
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--stage", default="metacontroller", help="the metacontroller's stage folder in RUN")
    parser.add_argument("--episodes", type=int, default=1000)
    args = parser.parse_args()
    try:
        run = RunFolder(args.run)
        checkpoint = run.metacontroller_checkpoint(args.stage)
        _, config, _ = load_checkpoint(checkpoint)
        held_out = _held_out_of(config, None)
        base = run.base_model(args.stage)
        metacontroller = load_metacontroller(checkpoint).eval()
        print(json.dumps({"run": str(args.run), "stage": args.stage,
                          **nll_by_variant(base, metacontroller, held_out, args.episodes)}))
    except InternalRLError as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
