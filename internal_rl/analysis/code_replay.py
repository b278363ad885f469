"""Can the metacontroller's codes steer the base model through a task? A ceiling check for internal RL.

Internal RL searches the code space for codes that solve a task; this measures how good the best-informed
codes in that space are, before any RL is run. The expert solves the task on N layouts; the
metacontroller's non-causal encoder reads each demonstration and gives its codes (z_t, with z~ = mu, at the
steps where its switch fires); the internal-RL environment then replays those codes in order, one per
decision, on the same layouts, with the base model sampling its own actions. Codes drawn from the prior
N(0, I), where internal RL's policy starts, are the reference.

The replayed codes do not adapt when the base model drifts from the demonstration, or when the switch
fires at other steps than in it, so a policy could do better; but a replay that barely beats the prior
says the codes do not carry what the task needs, whatever RL does with them. Grid world only: it needs an
expert that rolls out on layouts the internal-RL environment can reproduce (`data.generate.rollout_chunk`).
"""

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from internal_rl.analysis.switching import predicted_switches
from internal_rl.common.config import save_json
from internal_rl.common.errors import ConfigError, check
from internal_rl.common.seeding import derive_seed
from internal_rl.envs.gridworld import GridWorldConfig
from internal_rl.envs.tasks import Task, with_tasks
from internal_rl.rl.internal_env import BatchedInternalEnv

REPLAY_FILE = "code_replay.json"


@torch.no_grad()
def demonstration_codes(base: torch.nn.Module, metacontroller: torch.nn.Module, demos: Any) -> list[Tensor]:
    """Per demonstration, the codes z at the steps where the switch fires (step 0 always), [K_i, n_z] each."""
    from internal_rl.metacontroller.training import controlled_forward

    batch = demos.batch(np.arange(demos.num_episodes))
    _, out = controlled_forward(base, metacontroller, batch, sample=False)
    lengths = batch["mask"].sum(1).tolist()
    codes = []
    for i, length in enumerate(lengths):
        fires = np.union1d([0], predicted_switches(out["beta"][i, :length].numpy()))
        codes.append(out["z"][i, torch.from_numpy(fires)])
    return codes


@torch.no_grad()
def replay_codes(base: torch.nn.Module, metacontroller: torch.nn.Module, task: Task, *, episodes: int = 256,
                 seed: int = 0, env_config: GridWorldConfig | None = None, noiseless: bool = False) -> dict[str, Any]:
    """Success on `task` with codes inferred from expert demonstrations, against codes from the prior.

    `noiseless`: the demonstrations come from the noiseless expert (for a metacontroller trained on D*)."""
    from internal_rl.data.dataset import TrajectoryDataset
    from internal_rl.data.generate import rollout_chunk

    check(isinstance(episodes, int) and episodes >= 1, f"code replay: episodes={episodes!r}; expected an int >= 1")
    config = with_tasks(GridWorldConfig() if env_config is None else env_config, [task])
    layout_seed = derive_seed(seed, "reset")  # the layouts rollout_chunk(config, episodes, seed) draws
    arrays, solved = rollout_chunk(config, episodes, seed, 0.0, noiseless)
    solvable = np.flatnonzero(solved)
    if solvable.size == 0:
        raise ConfigError(f"code replay: the expert solved none of {episodes} layouts of task {task}")
    codes = dict(zip(solvable.tolist(), demonstration_codes(base, metacontroller, TrajectoryDataset.from_arrays(arrays))))
    n_z = metacontroller.config.n_z
    generator = torch.Generator().manual_seed(derive_seed(seed, "prior-codes"))

    def demonstration(env_id: int, k: int) -> Tensor:
        demo = codes.get(env_id)
        return torch.zeros(n_z) if demo is None else demo[min(k, len(demo) - 1)]

    def prior(env_id: int, k: int) -> Tensor:
        return torch.randn(n_z, generator=generator)

    def run(pick: Callable[[int, int], Tensor]) -> dict[str, float]:
        env = BatchedInternalEnv(base, metacontroller, config, episodes)
        env.reset(seed, tasks=[task] * episodes, layout_seed=layout_seed)
        decisions = torch.zeros(episodes, dtype=torch.long)

        def decide(e: Tensor, env_ids: Tensor) -> Tensor:
            z = torch.stack([pick(i, int(decisions[i])) for i in env_ids.tolist()])
            decisions[env_ids] += 1
            return z

        while not bool(env.done.all()):
            env.step(decide)
        return {
            "success": float(env.successes.numpy()[solvable].mean()),
            "colours_reached": float(env.env.progress[solvable].mean()),
            "decisions_per_episode": float(decisions[solvable].float().mean()),
        }

    return {
        "task": list(task),
        "layouts": episodes,
        "noiseless_demonstrations": bool(noiseless),
        "solvable_layouts": int(solvable.size),
        "demonstration_codes_per_episode": float(np.mean([len(c) for c in codes.values()])),
        "demonstration": run(demonstration),
        "prior": run(prior),
    }


def replay_run(run_dir: Path, task: Task, *, stage_name: str = "metacontroller", episodes: int = 256,
               seed: int = 0) -> dict[str, Any]:
    """`replay_codes` for RUN's base model and metacontroller stage; writes RUN/code_replay.json."""
    from internal_rl.common.checkpoint import load_checkpoint
    from internal_rl.data.dataset import read_manifest
    from internal_rl.metacontroller.modules import find_metacontroller_checkpoint, load_metacontroller
    from internal_rl.models.base_model import load_base_model
    from internal_rl.rl.training import env_config_of_run

    run_dir = Path(run_dir)
    base = load_base_model(run_dir)
    config = env_config_of_run(run_dir, base, task)
    if not isinstance(config, GridWorldConfig):
        raise ConfigError("code replay needs the grid world's expert (it replays the expert's layouts); "
                          f"{run_dir} was pretrained in {type(config).__name__}")
    checkpoint = find_metacontroller_checkpoint(run_dir / stage_name)
    metacontroller = load_metacontroller(checkpoint)
    # Demonstrations like the metacontroller's training data: the noiseless expert's if it trained on D*
    # (if that dataset has moved, the expert's usual ones; the result records which).
    data = Path(load_checkpoint(checkpoint)[1]["dataset"]["path"])
    noiseless = data.is_dir() and bool(read_manifest(data).get("expert_mean_actions", False))
    result = {"stage": stage_name, **replay_codes(base, metacontroller, task, episodes=episodes, seed=seed,
                                                  env_config=config, noiseless=noiseless)}
    suffix = "" if stage_name == "metacontroller" else f"_{stage_name}"
    save_json(run_dir / REPLAY_FILE.replace(".json", f"{suffix}.json"), result)
    return result
