"""Does internal RL learn a composition once its codes name subgoals? (a diagnostic, issue E6)

    OMP_NUM_THREADS=1 .venv/bin/python scripts/steering_diagnostics.py --run RUN --steps 1000 --batch-size 256 \\
        --save CONTROLLERS --out steering.json
    OMP_NUM_THREADS=1 .venv/bin/python scripts/rl_over_subgoal_controllers.py --run RUN --controllers CONTROLLERS \\
        --task 0-1-2-3-4-5 --switch subgoal --episodes 65536 --out OUT.json

Internal RL as `internal-rl rl --method internal` runs it (same PPO, code policy and budget accounting), with
the metacontroller's decoder replaced by supervised subgoal controllers: a code picks one of them
(`rl/subgoal_codes.SubgoalCodes`). Codes end where the true subgoal changes (`--switch subgoal`) or where
RUN's metacontroller's switching unit fires (`--switch learned`), or where the most probable state of a
label-free HMM over the residual changes (`--switch hmm --hmm SWITCH`, from scripts/fit_hmm_switch.py).
Beside each run it measures the ceiling of this setting: the same env with the true subgoal's controller
picked at every decision (not for `--labels none`: codes found without labels have no true choice). `--codes
metacontroller` runs the method itself (RUN's metacontroller, its codes and decoder) under the same switch
choice, which completes the 2 x 2 of codes x switch. Writes OUT after every seed (a rerun skips the seeds
OUT holds) and prints one line per seed.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from internal_rl.analysis.code_content import colour_cells
from internal_rl.common.errors import ConfigError, InternalRLError
from internal_rl.common.seeding import derive_seed
from internal_rl.envs.tasks import parse_task
from internal_rl.models.hooks import controlled_hook
from internal_rl.pipeline.run_folder import RunFolder
from internal_rl.models.controller import load_controller_decoder
from internal_rl.rl.hmm_switch import load_hmm_switch
from internal_rl.rl.internal_env import BatchedInternalEnv
from internal_rl.rl.ppo import PPOConfig
from internal_rl.rl.subgoal_codes import SubgoalCodes
from internal_rl.pipeline.rl_stage import env_config_of_run
from internal_rl.rl.training import RLConfig, train_rl


def held_place(env: BatchedInternalEnv) -> torch.Tensor:
    """int64 [N]: the cell of the first colour of each episode's current subgoal (0 once it has ended): the
    true choice among controllers fitted on `steering_diagnostics.py --labels held-place`."""
    subgoal = env.current_subgoals().cpu().numpy()
    return torch.from_numpy(colour_cells(env.env.layouts, np.where(subgoal >= 0, 2 * subgoal, -1))).to(env.device)


@torch.no_grad()
def true_choice_success(base_model, codes: SubgoalCodes, env_config, switch: str, episodes: int, seed: int,
                        labels: str = "subgoal") -> float:
    """Success when every decision picks the controller of the episode's current true subgoal (or of its first
    colour's cell, for `labels` held-place): what RL over these codes can reach at best (up to the timing of
    a learned switch)."""
    env = BatchedInternalEnv(base_model, codes, env_config, episodes, switch=switch)
    env.reset(seed)

    def decide(e: torch.Tensor, env_ids: torch.Tensor) -> torch.Tensor:
        choice = env.current_subgoals().clamp_min(0) if labels == "subgoal" else held_place(env)
        return F.one_hot(choice[env_ids], codes.config.n_z).float()

    while not bool(env.done.all()):
        env.step(decide)
    return float(env.successes.float().mean())


def controller_codes(run: RunFolder, base_model, controllers: Path | None, switch: str, hmm: Path | None) -> SubgoalCodes:
    """Codes that pick one of the `controllers`, ended by RUN's metacontroller's switching unit (`switch`
    learned), the `hmm` switch (hmm) or the env's true subgoal changes (subgoal)."""
    if controllers is None:
        raise ConfigError("--codes supervised needs --controllers")
    if switch == "hmm" and hmm is None:
        raise ConfigError("--switch hmm needs --hmm")
    switching = run.metacontroller() if switch == "learned" else load_hmm_switch(hmm) if switch == "hmm" else None
    hook = switching.config.hook if switching is not None and switching.config.hook else controlled_hook(base_model.n_layers)
    return SubgoalCodes(load_controller_decoder(controllers), hook, switching)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="run folder with pretrain/ (and metacontroller/)")
    parser.add_argument("--controllers", type=Path,
                        help="controller checkpoint folder (scripts/steering_diagnostics.py --save)")
    parser.add_argument("--codes", choices=["supervised", "metacontroller"], default="supervised",
                        help="supervised: a code picks one of --controllers; metacontroller: RUN's metacontroller")
    parser.add_argument("--labels", choices=["subgoal", "held-place", "none"], default="subgoal",
                        help="what --controllers are indexed by (for the true-choice ceiling): subgoals, the cell "
                             "of a subgoal's first colour (steering_diagnostics.py --labels held-place), or nothing "
                             "(codes found without labels: no ceiling)")
    parser.add_argument("--task", default="0-1-2-3", help="post-training task, e.g. 0-1-2-3-4-5")
    parser.add_argument("--switch", choices=["subgoal", "learned", "hmm"], default="subgoal")
    parser.add_argument("--hmm", type=Path, help="HMM switch checkpoint (scripts/fit_hmm_switch.py) for --switch hmm")
    parser.add_argument("--episodes", type=int, default=32_768, help="training episodes per seed")
    parser.add_argument("--batch-size", type=int, default=256, help="episodes per PPO update")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--eval-episodes", type=int, default=1024)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    try:
        run = RunFolder(args.run)
        base_model = run.base_model()
        if args.codes == "metacontroller":
            codes = run.metacontroller()
        else:
            codes = controller_codes(run, base_model, args.controllers, args.switch, args.hmm)
        env_switch = "learned" if args.switch == "hmm" else args.switch
        env_config = env_config_of_run(args.run, base_model, parse_task(args.task))
        config = RLConfig(
            ppo=PPOConfig(episodes_per_batch=args.batch_size, epochs=4, lr=args.lr), total_episodes=args.episodes,
            policy_width=64, policy_heads=4, eval_episodes=args.eval_episodes, switch=env_switch,
        )
        results = json.loads(args.out.read_text()) if args.out.is_file() else {}
        results.update(task=args.task, switch=args.switch, hmm=str(args.hmm) if args.hmm else None, codes=args.codes, controllers=str(args.controllers),
                       labels=args.labels)
        results.setdefault("seeds", {})
        if args.codes == "supervised" and args.labels != "none" and "true_choice_success" not in results:
            results["true_choice_success"] = true_choice_success(
                base_model, codes, env_config, env_switch, args.eval_episodes, derive_seed(0, "true-choice"), args.labels)
            print(f"true subgoal's controller at every decision: {results['true_choice_success']:.3f}", file=sys.stderr)
        for seed in range(args.seeds):
            if str(seed) in results["seeds"]:
                continue
            result = train_rl("internal", base_model, codes, env_config, seed, config, show_progress=True)
            results["seeds"][str(seed)] = result
            args.out.write_text(json.dumps(results, indent=1))
            expert = result["expert_eval"]["success_rate"]
            print(f"seed {seed}: {result['initial_eval']['success_rate']:.3f} -> {result['final_eval']['success_rate']:.3f}"
                  f" (expert {expert:.3f}; {result['episodes']} episodes, {result['timing']['seconds']:.0f} s)",
                  file=sys.stderr)
        finals = [r["final_eval"]["success_rate"] for r in results["seeds"].values()]
        print(f"final success: median {np.median(finals):.3f} over {len(finals)} seeds", file=sys.stderr)
    except InternalRLError as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
