"""The RL stage of a run folder: one method trained on a post-training task from the run's frozen models,
its results in RUN/rl/<method>/seed_<k>.json (`RunFolder.rl_result`) with TensorBoard scalars beside them."""

import json
import shutil
from pathlib import Path
from typing import Any, Callable

import torch

from internal_rl.common.config import config_to_dict, load_json, replace, save_json
from internal_rl.common.errors import CheckpointError, check
from internal_rl.envs.tasks import Task, validate_task
from internal_rl.metacontroller.segmenter import Segmenter
from internal_rl.models.base_model import BaseModel
from internal_rl.pipeline.label_free_stage import load_label_free_codes
from internal_rl.pipeline.run_folder import METACONTROLLER_DIRS, RunFolder
from internal_rl.rl.training import LABEL_FREE, RLConfig, RolloutWorkers, check_method, rl_config, train_rl

# How to train the metacontroller each method acts through, for the message when it is missing.
_TRAIN_HINTS = {"no-switch": " (train it with `internal-rl metacontroller --force-switch`)",
                "cotrained": " (train it with `internal-rl metacontroller --cotrain scratch|pretrained`)",
                "compile": " (train it with `internal-rl metacontroller --compile`)"}


def env_config_of_run(run_dir: Path, base_model: BaseModel, task: Task) -> Any:
    """The environment the run's pretraining data came from (its dataset manifest), with `task` as its only task."""
    env_config = RunFolder(run_dir).env_config()
    if env_config.obs_dim != base_model.config.obs_dim:
        raise CheckpointError(
            f"the dataset of {run_dir} has obs_dim {env_config.obs_dim}, its base model {base_model.config.obs_dim}"
        )
    return replace(env_config, tasks=(validate_task(task, env_config.n_colours),))


def load_method_metacontroller(run_dir: Path, method: str) -> Segmenter | None:
    """The frozen metacontroller `method` acts through (None for raw-action RL; the label-free codes and
    switch for `label-free`)."""
    if check_method(method) == "raw":
        return None
    if method == LABEL_FREE:
        return load_label_free_codes(run_dir)
    run = RunFolder(run_dir)
    path = run.stage(METACONTROLLER_DIRS[method])
    if not path.is_dir():
        raise CheckpointError(f"method {method!r} needs a metacontroller at {path}; none found{_TRAIN_HINTS.get(method, '')}")
    return run.metacontroller(METACONTROLLER_DIRS[method])


def run_rl(
    method: str,
    run_dir: Path,
    task: Task,
    seed: int,
    config: RLConfig,
    *,
    show_progress: bool = True,
    workers: RolloutWorkers | None = None,
    results_dir: Path | None = None,
    device: str | torch.device = "cpu",
    init_policy: Callable[[torch.nn.Module], None] | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Train `method` on `task` from run folder `run_dir`; write RUN/rl/<method>/seed_<seed>.json; return it.

    TensorBoard scalars go to RUN/rl/<method>/tensorboard/seed_<seed>. `results_dir` (a sweep's trial
    group) replaces RUN as the folder the results go to; `workers` collect the episodes, `device` is
    where the policy learns and `init_policy` warm-starts it (see `train_rl`). Training state is kept in
    RUN/rl/<method>/checkpoint_seed_<seed>/ until the result is written; an unfinished run found there is
    continued with `resume` (and refused otherwise), and with `resume` a finished result on the same task
    and settings is returned as it is.
    """
    results = RunFolder(run_dir if results_dir is None else results_dir)
    out, checkpoint = results.rl_result(method, seed), results.rl_checkpoint(method, seed)
    if resume and out.is_file():
        done = load_json(out)
        if done.get("task") == list(task) and done.get("config") == json.loads(json.dumps(config_to_dict(config))):
            return done
    if checkpoint.is_dir() and not resume:
        raise CheckpointError(f"{checkpoint} holds an unfinished run of this method and seed; pass --resume to "
                              "continue it, or --force to start over")
    run = RunFolder(run_dir)
    base_model = run.base_model(METACONTROLLER_DIRS.get(method))  # the co-trained method's own
    metacontroller = load_method_metacontroller(run_dir, method)
    env_config = env_config_of_run(run_dir, base_model, task)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = train_rl(
        method,
        base_model,
        metacontroller,
        env_config,
        seed,
        config,
        logdir=results.rl_tensorboard(method, seed),
        show_progress=show_progress,
        workers=workers,
        device=device,
        init_policy=init_policy,
        checkpoint=checkpoint,
    )
    save_json(out, result)
    shutil.rmtree(checkpoint, ignore_errors=True)
    return result


def run_rl_seeds(
    method: str,
    run_dir: Path,
    task: Task,
    seeds: int,
    preset: str = "quick",
    *,
    episodes: int | None = None,
    lr: float | None = None,
    batch: int | None = None,
    first_seed: int = 0,
    show_progress: bool = True,
    workers: RolloutWorkers | None = None,
    device: str | torch.device = "cpu",
    resume: bool = False,
) -> list[dict[str, Any]]:
    """`run_rl` for seeds first_seed .. first_seed + seeds - 1 with the named preset (and overrides)."""
    check(seeds >= 1, f"--seeds {seeds}; expected >= 1")
    config = rl_config(preset, method, episodes=episodes, lr=lr, batch=batch)
    return [
        run_rl(method, run_dir, task, seed, config, show_progress=show_progress, workers=workers, device=device,
               resume=resume)
        for seed in range(first_seed, first_seed + seeds)
    ]
