"""Episode GIFs of a pinpad run: the expert, the base model, the supervised and discovered controllers.

Each video is one episode of the single (Gymnasium) environment, recorded with `envs/video.py`:

- expert.gif: the expert on the post-training task 0-1-2-3;
- base_model.gif: the base model acting alone (actions sampled, KV-cached stepping) on a pretraining task;
- controller_colour_<g>.gif: the base model with the supervised controller U_g of the controlled layer
  applied from the first step, on the one-colour task (g,) (steering's single-subgoal evaluation);
- controllers_chained.gif: the controller of the current target colour, switched as colours are visited,
  on the post-training task (steering's chained evaluation);
- discovered_controller_<c>.gif: the base model with the metacontroller's discovered controller c (the
  k-means centre c of its segment codes, `switching.discovered_controllers`) applied from the first step,
  on the post-training task: where each discovered controller takes the body.

Layouts are the first seeds on which the task can be completed at all (`pinpad.solvable`) and whose start
cell has no coloured or wall cell beside it, so a video never shows a blocked layout, nor an episode
decided by the first step or two.
"""

from pathlib import Path
from typing import Any, Callable, Sequence

import gymnasium
import numpy as np
import torch

from internal_rl.analysis.subgoal_controllers import controller_intervention, subgoal_codes
from internal_rl.envs import register_envs
from internal_rl.envs.gridworld import EMPTY
from internal_rl.envs.pinpad import solvable
from internal_rl.envs.registry import EnvSpec
from internal_rl.envs.tasks import Task
from internal_rl.envs.video import record_episode, write_gif

Policy = Callable[[np.ndarray, dict[str, Any]], np.ndarray]


def _video_seed(env: Any, task: Task, first_seed: int) -> int:
    """The first seed from `first_seed` whose layout lets `task` be completed and whose start cell has only
    empty cells (or the fence) beside it."""
    size = env.config.size
    for seed in range(first_seed, first_seed + 200):
        env.reset(seed=seed, options={"task": task})
        logic = env.batch.logic
        layout, (row, col) = logic.layouts[0], logic.cells[0]
        beside = [layout[r, c] for r, c in ((row - 1, col), (row + 1, col), (row, col - 1), (row, col + 1))
                  if 0 <= r < size and 0 <= c < size]
        tasks = np.asarray(task, dtype=np.int64)[None]
        if all(code == EMPTY for code in beside) and solvable(logic.layouts[:1], logic.cells[:1], tasks, env.config)[0]:
            return seed
    return first_seed


def model_policy(
    model: torch.nn.Module, horizon: int, seed: int, *, decoder: Any = None, hook: str | None = None,
    code: Callable[[dict[str, Any]], torch.Tensor] | None = None,
) -> Policy:
    """The base model as a single-env policy (KV-cached stepping, sampled actions); with a `decoder`, the
    controller of `code(info)` (a code z [n_z]) is applied at `hook` at every step."""
    state = model.init_state(1, horizon + 1)
    generator = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def act(obs: np.ndarray, info: dict[str, Any]) -> np.ndarray:
        interventions = None
        if decoder is not None:
            interventions = {hook: controller_intervention(decoder, code(info)[None, None, :])}
        out = model.step(torch.as_tensor(obs, dtype=torch.float32)[None], state, interventions=interventions)
        return model.sample_actions(out.action_params[:, 0], generator)[0].numpy()

    return act


def target_subgoal_code(subgoal_table: np.ndarray, n_z: int) -> Callable[[dict[str, Any]], torch.Tensor]:
    """code(info) for the supervised controllers: the one-hot code of the current target colour's subgoal."""
    return lambda info: subgoal_codes(torch.tensor(max(int(subgoal_table[info["target"]]), 0)), n_z)


def expert_policy(spec: EnvSpec, env: Any, seed: int) -> Policy:
    """The env's expert acting through the single env's batch of one."""
    actor = spec.expert_actor(env.config)
    rng = np.random.default_rng(seed)
    return lambda obs, info: actor(env.batch, rng)[0]


def write_videos(
    out_dir: Path,
    spec: EnvSpec,
    env_config: Any,
    model: torch.nn.Module,
    *,
    decoder: Any = None,
    hook: str | None = None,
    discovered: tuple[Any, str, Sequence[Sequence[float]]] | None = None,
    seed: int = 0,
    every: int = 2,
    max_steps: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Write the GIFs (module docstring) into `out_dir`, each of a whole episode unless `max_steps`
    cuts it (every `every`-th frame); return {name: {"path", "task", "success", "length"}}.

    `decoder`, `hook`: the supervised controllers; `discovered`: (the metacontroller's decoder, its hook,
    its discovered codes).
    """
    register_envs()
    env = gymnasium.make(spec.gym_id, config=env_config, render_mode="rgb_array").unwrapped
    pretrain_task = spec.task_split.pretrain[0]
    posttrain = spec.posttrain_task
    horizon = env_config.horizon
    videos: list[tuple[str, Task, Callable[[int], Policy]]] = [
        ("expert", posttrain, lambda s: expert_policy(spec, env, s)),
        ("base_model", pretrain_task, lambda s: model_policy(model, horizon, s)),
    ]
    if decoder is not None:
        code = target_subgoal_code(spec.subgoal_table(env_config.n_colours), decoder.n_z)
        for g, task in enumerate(spec.subgoal_tasks):
            videos.append((f"controller_colour_{g}", task, lambda s: model_policy(
                model, horizon, s, decoder=decoder, hook=hook, code=code)))
        videos.append(("controllers_chained", posttrain, lambda s: model_policy(
            model, horizon, s, decoder=decoder, hook=hook, code=code)))
    if discovered is not None:
        mc_decoder, mc_hook, codes = discovered
        for c, z in enumerate(torch.tensor(codes, dtype=torch.float32)):
            videos.append((f"discovered_controller_{c}", posttrain, lambda s, z=z: model_policy(
                model, horizon, s, decoder=mc_decoder, hook=mc_hook, code=lambda info: z)))
    results = {}
    for name, task, make_policy in videos:
        episode_seed = _video_seed(env, task, seed)
        frames, summary = record_episode(
            env, make_policy(episode_seed), seed=episode_seed, options={"task": task}, every=every, max_steps=max_steps
        )
        path = write_gif(frames, Path(out_dir) / f"{name}.gif", fps=20.0 / every)
        results[name] = {"path": str(path), "task": list(task), "success": summary["success"],
                         "length": summary["length"], "seed": episode_seed}
    env.close()
    return results
