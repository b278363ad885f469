"""The pretraining stage of a run folder: the base model trained on a dataset folder, then evaluated.

    RUN/pretrain/checkpoint/   model.safetensors, config.json (model config, pretrain config, dataset
                               checksum), training_state.pt (optimizer, RNG, step): replaced atomically
                               every checkpoint
    RUN/pretrain/tb/           TensorBoard scalars
    RUN/pretrain/eval.json     the final evaluation (`analysis.base_model_eval.evaluate_base_model`)
"""

import dataclasses
import time
from pathlib import Path
from typing import Any

import torch

from internal_rl.analysis.base_model_eval import evaluate_base_model
from internal_rl.common.config import save_json
from internal_rl.common.device import describe_device
from internal_rl.common.errors import CheckpointError, ConfigError
from internal_rl.data.dataset import load_dataset
from internal_rl.models.pretraining import PretrainConfig, train_base_model
from internal_rl.pipeline.run_folder import PRETRAIN, RunFolder


def run_pretraining(
    config: PretrainConfig,
    data_dir: Path,
    run_dir: Path,
    *,
    resume: bool = False,
    show_progress: bool = True,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Pretrain on the dataset at `data_dir` into RUN/pretrain (checkpoint/, tb/, eval.json) on `device`;
    return eval.json's content.

    Refuses to overwrite an existing checkpoint unless `resume` (which continues it, or starts afresh
    when there is none).
    """
    run = RunFolder(run_dir)
    checkpoint_dir = run.checkpoint(PRETRAIN)
    dataset = load_dataset(Path(data_dir))
    if checkpoint_dir.exists() and not resume:
        raise CheckpointError(f"{run.pretrain} already holds a pretrained model; pass --resume to continue it or use a new --out")
    model = dataclasses.replace(config.model, obs_dim=dataset.obs_dim)
    actions = dataset.arrays["actions"]
    if (actions.ndim == 2) != (model.action_head == "gaussian"):
        raise ConfigError(
            f"the dataset's actions are {'vectors' if actions.ndim == 2 else 'integers'}; the model's "
            f"{model.action_head!r} action head needs {'vectors' if model.action_head == 'gaussian' else 'integers'}"
        )
    if actions.ndim == 2:
        model = dataclasses.replace(model, action_dim=int(actions.shape[1]))
    config = dataclasses.replace(config, model=model)
    train_set, held_out = dataset.split(config.holdout_fraction, config.holdout_seed)
    extra = {"dataset": {"path": str(Path(data_dir).resolve()), "checksum": dataset.checksum, "episodes": dataset.num_episodes}}
    result = train_base_model(
        config,
        train_set,
        held_out=held_out,
        checkpoint_dir=checkpoint_dir,
        log_dir=run.tensorboard(PRETRAIN),
        resume=resume,
        extra_config=extra,
        show_progress=show_progress,
        device=device,
    )
    start = time.perf_counter()
    evaluation = evaluate_base_model(result.model, held_out, rollouts=config.eval_rollouts, seed=config.seed)
    evaluation.update(
        {
            "step": config.steps,
            "final_train_loss": result.losses[-1] if result.losses else None,
            "train_seconds": result.seconds,
            "train_tokens_per_second": result.tokens_per_second,
            "train_bf16_autocast": result.bf16,
            "train_device": describe_device(result.device),
            "eval_seconds": time.perf_counter() - start,
            "dataset": extra["dataset"],
        }
    )
    save_json(run.pretrain_eval, evaluation)
    return evaluation
