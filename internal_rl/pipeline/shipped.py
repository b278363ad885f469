"""Shipped checkpoints: models a named preset trained, committed with the package so that the demo starts
from them instead of training for most of an hour.

    internal_rl/shipped/<name>/provenance.json   how they were made: command, commit, seed, dataset checksum,
                                                 each stage's summary (training curve, evaluation) and the
                                                 held-out check below
    internal_rl/shipped/<name>/<stage>/          one checkpoint folder per stage (weights, config, checksums)

The held-out check is the base model's action NLL on a small set of fresh expert episodes (seeded, never
in any training set), recorded when shipped; `heldout_check` recomputes it, so a test can see that the
weights, the code and the environment still agree.
"""

import shutil
from pathlib import Path
from typing import Any

from internal_rl.analysis.subgoal_controllers import SteeringConfig, heldout_action_nll
from internal_rl.common.checkpoint import copy_weights, load_checkpoint
from internal_rl.common.config import load_json, save_json
from internal_rl.common.errors import ConfigError, check
from internal_rl.common.seeding import derive_seed
from internal_rl.data.generate import env_config_from_manifest, generate_trajectories
from internal_rl.envs.registry import spec_of_config
from internal_rl.data.dataset import MANIFEST
from internal_rl.models.base_model import load_base_model
from internal_rl.pipeline.run_folder import METACONTROLLER_DIR, NO_SWITCH_DIR, PRETRAIN, RunFolder

SHIPPED_DIR = Path(__file__).resolve().parent.parent / "shipped"
PROVENANCE = "provenance.json"
# The stages whose models can be shipped (each with the summary it writes beside its checkpoint).
SHIPPABLE_STAGES = (PRETRAIN, METACONTROLLER_DIR, NO_SWITCH_DIR)
HELDOUT_EPISODES = 64
HELDOUT_SEED = derive_seed(0, "shipped-heldout")


def shipped_path(name: str) -> Path:
    """The folder of shipped checkpoints `name`; ConfigError listing the shipped names otherwise."""
    path = SHIPPED_DIR / name
    if not (path / PROVENANCE).is_file():
        names = sorted(p.name for p in SHIPPED_DIR.iterdir() if (p / PROVENANCE).is_file()) if SHIPPED_DIR.is_dir() else []
        raise ConfigError(f"no shipped checkpoints {name!r}; shipped: {', '.join(names) or 'none'}")
    return path


def heldout_check(checkpoint: Path, env_config: Any) -> dict[str, Any]:
    """The base model's mean action NLL per step on HELDOUT_EPISODES fresh expert episodes of `env_config`."""
    model = load_base_model(checkpoint)
    data = generate_trajectories(spec_of_config(env_config).name, HELDOUT_EPISODES, HELDOUT_SEED, config=env_config)
    nll = heldout_action_nll(model, data, SteeringConfig(nll_episodes=HELDOUT_EPISODES))
    return {"episodes": HELDOUT_EPISODES, "seed": HELDOUT_SEED, "action_nll": nll}


def training_curves(tensorboard_dir: Path, points: int = 60) -> dict[str, list[list[float]]]:
    """{tag: [[step, value], ...]} of a stage's TensorBoard scalars, thinned to about `points` per tag."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not Path(tensorboard_dir).is_dir():
        return {}
    events = EventAccumulator(str(tensorboard_dir), size_guidance={"scalars": 0})
    events.Reload()
    curves = {}
    for tag in events.Tags()["scalars"]:
        scalars = events.Scalars(tag)
        stride = max(1, len(scalars) // points)
        curves[tag] = [[e.step, round(e.value, 6)] for e in scalars[::stride]]
    return curves


def ship_run(run: Path, name: str, command: str, commit: str, stages: tuple[str, ...]) -> Path:
    """Copy `stages` of run folder `run` (weights, config and summary; no optimizer state) to SHIPPED_DIR/name
    with their provenance; return that folder."""
    run, out = RunFolder(run), RunFolder(SHIPPED_DIR / name)
    manifest = load_json(run.data / MANIFEST)
    provenance: dict[str, Any] = {
        "name": name, "command": command, "commit": commit, "reproduce": load_json(run.reproduce_record),
        "dataset": {key: manifest[key] for key in ("env", "env_config", "files") if key in manifest},
        "stages": {},
    }
    for stage in stages:
        check(stage in SHIPPABLE_STAGES, f"stage {stage!r} cannot be shipped; valid: {', '.join(SHIPPABLE_STAGES)}")
        checkpoint = run.checkpoint(stage)
        recorded = load_json(checkpoint / "config.json").get("dataset")
        # The training data stay behind: keep their record (checksum, size) and the name of their folder in the
        # run (data, or data-clean for D*), not a path on this machine.
        update = None
        if isinstance(recorded, dict):
            update = {"dataset": {**{k: v for k, v in recorded.items() if k != "path"},
                                  "folder": Path(recorded.get("path", "data")).name}}
        copy_weights(checkpoint, out.checkpoint(stage), update)
        summary = run.stage_summary(stage)
        shutil.copyfile(summary, out.stage_summary(stage))
        provenance["stages"][stage] = {"summary": load_json(summary), "curves": training_curves(run.tensorboard(stage))}
    provenance["heldout_check"] = heldout_check(out.pretrain, env_config_from_manifest(manifest))
    save_json(out.root / PROVENANCE, provenance)
    return out.root


def install_shipped(name: str, stage: str, run: Path) -> dict[str, Any]:
    """Put shipped checkpoint `name`'s `stage` into run folder `run` as if that stage had trained it; return
    the stage's summary. ConfigError if `name` ships no such stage."""
    source, target = RunFolder(shipped_path(name)), RunFolder(run)
    if stage not in SHIPPABLE_STAGES or not source.stage(stage).is_dir():
        raise ConfigError(f"shipped checkpoints {name!r} hold no {stage!r} stage")
    _, config, _ = load_checkpoint(source.checkpoint(stage))  # verified before anything is written
    update = None
    if isinstance(config.get("dataset"), dict):  # the run's own data stand in for the training data's path
        folder = config["dataset"].get("folder", "data")
        update = {"dataset": {"path": str(target.stage(folder)), "trained_on": config["dataset"], "shipped": name}}
    copy_weights(source.checkpoint(stage), target.checkpoint(stage), update)
    summary = source.stage_summary(stage)
    shutil.copyfile(summary, target.stage_summary(stage))
    return load_json(summary)


def shipped_stages(name: str) -> tuple[str, ...]:
    """The stages shipped checkpoints `name` hold."""
    return tuple(load_json(shipped_path(name) / PROVENANCE)["stages"])
