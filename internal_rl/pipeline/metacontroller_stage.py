"""The metacontroller stages of a run folder: a metacontroller (or a baseline) trained on the run's frozen
base model, into RUN/<stage>/ with the pretrain stage's layout: checkpoint/ (weights, config.json,
training state), tb/, summary.json, and base_model/ for the co-trained baseline."""

from pathlib import Path
from typing import Any

import torch

from internal_rl.common.config import replace, save_json
from internal_rl.common.errors import CheckpointError, check
from internal_rl.common.seeding import derive_seed
from internal_rl.data.dataset import load_dataset
from internal_rl.metacontroller.compile import CompILEConfig
from internal_rl.metacontroller.modules import MetacontrollerConfig
from internal_rl.metacontroller.training import COTRAIN_INITS, preset, train_metacontroller
from internal_rl.models.base_model import BaseModel, save_base_model
from internal_rl.pipeline.run_folder import (
    COMPILE_DIR,
    COTRAINED_DIR,
    LABEL_SWITCHES_DIR,
    METACONTROLLER_DIR,
    NO_SWITCH_DIR,
    RESERVED,
    RunFolder,
)


def train_metacontroller_run(
    run_dir: Path,
    *,
    preset_name: str = "quick",
    data: Path | None = None,
    alpha: float | None = None,
    steps: int | None = None,
    seed: int | None = None,
    force_switch: bool = False,
    label_switches: bool = False,
    resume: bool = False,
    stage_name: str | None = None,
    show_progress: bool = True,
    rank: int | None = MetacontrollerConfig.rank,
    device: str | torch.device = "cpu",
    cotrain: str | None = None,
    compile_baseline: bool = False,
) -> dict[str, Any]:
    """Train the metacontroller of run folder `run_dir` against its base model into RUN/<stage_name>/
    (default: RUN/metacontroller, RUN/metacontroller-no-switch for the `force_switch` ablation,
    RUN/metacontroller-label-switches for the `label_switches` diagnostic, RUN/metacontroller-cotrained
    for the co-training baseline, or RUN/compile for the CompILE baseline, `compile_baseline`).

    `cotrain` ("scratch" or "pretrained", `COTRAIN_INITS`) trains a base model jointly, from random weights of
    the run's base model's architecture or from its pretrained weights, and writes it to STAGE/base_model/.
    `rank` is the controller's (None: full rank, the ant's). It trains on `device`.
    The dataset is the one pretraining recorded, unless `data` is given. Refuses to overwrite an existing
    checkpoint unless `resume` (which continues it, or starts afresh when there is none). Returns the
    summary (also written to summary.json).
    """
    check(cotrain is None or cotrain in COTRAIN_INITS,
          f"unknown co-training start {cotrain!r}; valid: {', '.join(COTRAIN_INITS)}")
    check(cotrain is None or not (force_switch or label_switches),
          "co-training trains a metacontroller with learned switching; it cannot be combined with --force-switch "
          "or --label-switches")
    check(not compile_baseline or not (force_switch or label_switches or cotrain),
          "the CompILE baseline learns its own boundaries against the frozen base model; it cannot be combined "
          "with --force-switch, --label-switches or --cotrain")
    if stage_name is None:
        stage_name = (NO_SWITCH_DIR if force_switch else LABEL_SWITCHES_DIR if label_switches
                      else COTRAINED_DIR if cotrain else COMPILE_DIR if compile_baseline else METACONTROLLER_DIR)
    check(stage_name not in RESERVED,
          f"--stage {stage_name} is a folder of the run's other stages; name a new metacontroller stage")
    run = RunFolder(run_dir)
    stage = run.stage(stage_name)
    checkpoint_dir = run.checkpoint(stage_name)
    if checkpoint_dir.exists() and not resume:
        raise CheckpointError(f"{stage} already holds a metacontroller; pass --resume to continue it, or delete it")
    train = preset(preset_name)
    train = replace(train, **{k: v for k, v in (("steps", steps), ("seed", seed)) if v is not None})
    alpha_override = {} if alpha is None else {"alpha": alpha}
    config = (CompILEConfig(rank=rank, **alpha_override) if compile_baseline else
              MetacontrollerConfig(force_switch=force_switch, label_switches=label_switches, rank=rank, **alpha_override))
    data_dir = run.dataset_or(data)
    dataset = load_dataset(data_dir)
    base = run.base_model(frozen=cotrain is None)
    if cotrain == "scratch":
        with torch.random.fork_rng(devices=[]):  # seeded, and the global RNG the training seeds stays untouched
            torch.manual_seed(derive_seed(train.seed, "cotrain-init"))
            base = BaseModel(base.config)
    extra = {"dataset": {"path": str(data_dir.resolve()), "checksum": dataset.checksum}, "preset": preset_name,
             **({"cotrain_init": cotrain} if cotrain else {})}
    _, summary = train_metacontroller(
        base, dataset, config, train, checkpoint_dir=checkpoint_dir, log_dir=run.tensorboard(stage_name),
        resume=resume, extra_config=extra, show_progress=show_progress, device=device, cotrain=cotrain is not None,
    )
    if cotrain is not None:
        save_base_model(run.cotrained_base_model(stage_name), base, {**extra, "step": train.steps})
    summary = {**summary, "dataset": extra["dataset"], "preset": preset_name, "stage": str(stage), "cotrain": cotrain,
               "compile": compile_baseline}
    save_json(run.stage_summary(stage_name), summary)
    return summary
