"""`internal-rl reproduce ENV`: the whole pipeline (grid world, point-mass or ant pinpad), stage by stage,
ending in a report. The environment only changes the presets and what the registry (`envs/registry.py`)
hands each stage; the stages are the same.

The run folder's layout is `pipeline/run_folder.py`'s.
"""

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from internal_rl.common.config import config_to_dict, load_json, replace, save_json
from internal_rl.common.device import describe_device, resolve_device
from internal_rl.common.errors import CheckpointError, ConfigError
from internal_rl.common.seeding import derive_seed
from internal_rl.envs.tasks import GRID_POSTTRAIN_TASK, PINPAD_POSTTRAIN_TASK, Task
from internal_rl.analysis.label_free_codes import LabelFreeConfig
from internal_rl.analysis.probes import probe_preset
from internal_rl.analysis.subgoal_controllers import steer_preset
from internal_rl.data.generate import generate_dataset
from internal_rl.envs.registry import env_spec
from internal_rl.metacontroller.training import COMPILE_PRESETS
from internal_rl.metacontroller.training import preset as metacontroller_preset
from internal_rl.models.hooks import controlled_hook
from internal_rl.models.pretraining import pretrain_preset
from internal_rl.pipeline.label_free_stage import discover_codes_run, fit_switch_run
from internal_rl.pipeline.metacontroller_stage import train_metacontroller_run
from internal_rl.pipeline.pretrain_stage import run_pretraining
from internal_rl.pipeline.report import write_report
from internal_rl.pipeline.rl_stage import run_rl_seeds
from internal_rl.pipeline.run_folder import (
    COMPILE_DIR,
    COTRAINED_DIR,
    HMM_SWITCH_DIR,
    LABEL_FREE_DIR,
    METACONTROLLER_DIR,
    NO_SWITCH_DIR,
    RunFolder,
)
from internal_rl.pipeline.run_steps import analyse_run, load_steering_decoder, probe_run, replay_run, steer_run
from internal_rl.pipeline.shipped import install_shipped, shipped_stages
from internal_rl.pipeline.stages import Stage, run_stages
from internal_rl.pipeline.videos import write_videos
from internal_rl.rl.training import BASE_METHODS, LABEL_FREE, METHODS
from internal_rl.rl.training import PRESETS as RL_PRESETS


@dataclass(frozen=True)
class ReproducePreset:
    """How much of everything `reproduce` does; each stage's own preset is named here."""

    episodes: int  # expert episodes in the dataset
    pretrain: str
    probe: str
    steer: str
    metacontroller: str
    rl: str
    seeds: int
    # Overrides of the stage presets' budgets (None keeps the preset's); the tests use them for a tiny run.
    pretrain_steps: int | None = None
    probe_steps: int | None = None
    steer_steps: int | None = None
    steer_episodes: int | None = None
    metacontroller_steps: int | None = None
    rl_episodes: int | None = None
    task: Task = GRID_POSTTRAIN_TASK
    methods: tuple[str, ...] = BASE_METHODS  # METHODS adds the co-training and CompILE baselines
    seed: int = 0
    # Episodes of the cleaner data D* (the expert's noiseless actions, `generate --mean-actions`; paper App.
    # C.4.4) on which the supervised controllers and the metacontroller are trained; 0: they use D.
    clean_episodes: int = 0
    controller_rank: int | None = 16  # the metacontroller's U: rank 16 (grid), None = full linear (ant)
    # Where the co-training baseline's base model starts (methods with "cotrained"): random weights (the
    # paper's grid world) or the pretrained ones (its ant).
    cotrain_init: str = "scratch"
    videos: bool = False  # episode GIFs of the expert, the base model, the supervised and discovered controllers
    horizon: int | None = None  # the env's episode horizon (None: the env's default); the tests shorten it
    # Shipped checkpoints (`pipeline/shipped.py`) that replace the training of the stages they hold (the base
    # model, the metacontrollers); None trains every stage.
    shipped: str | None = None
    # The label-free chain's settings, for presets whose methods include it (None: LabelFreeConfig's, the
    # measured ones; the tests shrink them).
    label_free: LabelFreeConfig | None = None


_GRID_PRESETS: dict[str, ReproducePreset] = {
    # About 50 minutes on 2 cores of an AMD EPYC: a budget at which the base model learns the subgoal (the
    # plateau it leaves is described in models/pretraining.py) and the metacontroller, with the "long"
    # schedule, switches where the subgoals change. The controllers and the metacontroller train on D*, the
    # noiseless expert's data (paper App. C.4.4). Measured figures: docs/results.md.
    "quick": ReproducePreset(
        episodes=200_000, pretrain="quick", probe="quick", steer="quick", metacontroller="long", rl="quick", seeds=2,
        clean_episodes=50_000,
    ),
    # The quick model trained 15,000 steps instead of 12,000, steering trained 300 steps instead of 100, and
    # all the RL methods (about 95 minutes on 2 CPU cores, 27 of them raw-action RL and 12 the co-training
    # baseline): the base model holds the subgoal in its residual stream from mid-depth on, and the
    # metacontroller switches at the subgoal changes (docs/results.md): switch F1 1.00 on D* against
    # 0.97-0.99 on D.
    # RL runs on the unseen composition 0-1-2-3, whose chance success (about 0.04) gives every method a
    # signal; on the 12-colour post-training task every method's return stays 0 at this scale.
    "long": ReproducePreset(
        episodes=200_000, pretrain="quick", probe="quick", steer="quick", metacontroller="long", rl="long", seeds=2,
        pretrain_steps=15_000, steer_steps=300, clean_episodes=50_000, task=(0, 1, 2, 3), methods=METHODS,
    ),
    # The stepping stone with no label in the chain (docs/results.md, "A switch found without labels"), two
    # named deviations: the base model reads each object's offset from the agent (pretrain preset
    # quick-offsets), and a sticky HMM switch and k-means codes found without labels stand in for the
    # metacontroller (analysis/label_free_codes.py; the metacontroller's switching collapses on this model). RL over
    # them (label-free), over the paper's metacontroller (internal) and over raw actions, on 0-1-2-3-4-5 (two
    # unseen transitions; no method sees a success on the 12-colour task at this scale), 65,536 episodes and
    # 3 seeds each. About 7 hours on 2 CPU cores, 3 of them raw-action RL.
    "stepping-stone": ReproducePreset(
        episodes=200_000, pretrain="quick-offsets", probe="quick", steer="quick", metacontroller="long", rl="long",
        seeds=3, clean_episodes=10_000, task=(0, 1, 2, 3, 4, 5), methods=(LABEL_FREE, "internal", "raw"),
        rl_episodes=65_536,
    ),
    # The paper's budgets (accelerator scale), 3 seeds per method.
    "full": ReproducePreset(
        episodes=100_000, pretrain="paper", probe="paper", steer="paper", metacontroller="paper", rl="paper", seeds=3,
        methods=METHODS,
    ),
}
# `make demo`: the quick pipeline from the base model and metacontrollers that `--preset quick` trained
# (shipped with the package, internal_rl/shipped/gridworld-quick/provenance.json), on a smaller dataset for
# the analyses: the stages that show the method (probes, steering, switching, RL for every method) in
# minutes, not the hour the training takes.
_GRID_PRESETS["demo"] = replace(_GRID_PRESETS["quick"], episodes=20_000, clean_episodes=10_000, shipped="gridworld-quick")
_PINPAD = dict(task=PINPAD_POSTTRAIN_TASK, controller_rank=None, videos=True, cotrain_init="pretrained")
_PINPAD_PRESETS: dict[str, ReproducePreset] = {
    # Point mass: fits 2 CPU cores in under 30 minutes (measured; see docs/results.md).
    "quick": ReproducePreset(
        episodes=10_000, pretrain="quick-pinpad", probe="quick", steer="quick-pinpad",
        metacontroller="quick-pinpad", rl="quick", seeds=1, clean_episodes=2_000, rl_episodes=2_048, **_PINPAD,
    ),
    # The paper's ant budgets (Tables A5, A8, A10, A14), 3 seeds per method.
    "full": ReproducePreset(
        episodes=100_000, pretrain="paper-ant", probe="paper", steer="paper-ant", metacontroller="paper-ant",
        rl="paper-ant", seeds=3, clean_episodes=20_000, methods=METHODS, **_PINPAD,
    ),
}
_ANT_PRESETS: dict[str, ReproducePreset] = {
    # The point mass's quick preset on less data: the ant's expert rolls out about 20 episodes/s, not 5,000.
    "quick": replace(_PINPAD_PRESETS["quick"], episodes=4_000, clean_episodes=1_000),
    "full": _PINPAD_PRESETS["full"],
}
ENV_PRESETS: dict[str, dict[str, ReproducePreset]] = {
    "gridworld": _GRID_PRESETS,
    "point-pinpad": _PINPAD_PRESETS,
    "ant-pinpad": _ANT_PRESETS,
}


def stage_presets(preset: ReproducePreset) -> dict[str, Any]:
    """The settings of the stage presets that `preset` names, as JSON: what a resumed run must still match
    (a preset's step count can change between versions while its name stays)."""
    return {
        "pretrain": config_to_dict(pretrain_preset(preset.pretrain)),
        "probe": config_to_dict(probe_preset(preset.probe)),
        "steer": config_to_dict(steer_preset(preset.steer)),
        "metacontroller": config_to_dict(metacontroller_preset(preset.metacontroller)),
        "rl": config_to_dict(RL_PRESETS[preset.rl]),
    }


def reproduce_preset(name: str, env: str = "gridworld") -> ReproducePreset:
    """The named preset of `env`'s pipeline; ConfigError listing the valid names otherwise."""
    if env not in ENV_PRESETS:
        raise ConfigError(f"unknown environment {env!r} for reproduce; valid: {', '.join(ENV_PRESETS)}")
    presets = ENV_PRESETS[env]
    if name not in presets:
        raise ConfigError(f"unknown reproduce preset {name!r}; valid: {sorted(presets)}")
    return presets[name]


def pipeline_stages(
    env: str, preset: ReproducePreset, show_progress: bool = True, device: str | torch.device = "cpu"
) -> list[Stage]:
    """The pipeline of `env` (any registered environment) as a list of resumable stages; pretraining, the
    supervised controllers, the metacontrollers and RL train on `device`, the other analyses run on the CPU."""
    def clean_data(out: Path) -> Path | None:
        return RunFolder(out).clean_data if preset.clean_episodes else None

    def generate(out: Path) -> dict[str, Any]:
        spec = env_spec(env)
        config = None if preset.horizon is None else replace(spec.default_config(), horizon=preset.horizon)
        generate_dataset(
            env, preset.episodes, RunFolder(out).data, preset.seed, force=True, show_progress=show_progress,
            config=config,
        )
        summary: dict[str, Any] = {"episodes": preset.episodes}
        if preset.clean_episodes:
            generate_dataset(
                env, preset.clean_episodes, RunFolder(out).clean_data, derive_seed(preset.seed, "clean"), force=True,
                show_progress=show_progress, mean_actions=True, config=config,
            )
            summary["clean_episodes"] = preset.clean_episodes
        return summary

    def pretrain(out: Path) -> dict[str, Any]:
        if preset.shipped is not None:
            result, origin = install_shipped(preset.shipped, "pretrain", out), {"shipped": preset.shipped}
        else:
            config = pretrain_preset(preset.pretrain, seed=preset.seed, steps=preset.pretrain_steps)
            result, origin = run_pretraining(
                config, RunFolder(out).data, out, resume=True, show_progress=show_progress,
                device=device,
            ), {}
        held_out = result["held_out"]  # accuracy is NaN for a Gaussian action head: leave it out
        keys = ("action_accuracy", "action_nll")
        return {**origin, **{key: held_out[key] for key in keys if math.isfinite(held_out.get(key, math.nan))}}

    def probe(out: Path) -> dict[str, Any]:
        results = probe_run(out, preset.probe, seed=preset.seed, steps=preset.probe_steps, show_progress=show_progress)
        return {"best_layer": results["best_layer"]}

    def steer(out: Path) -> dict[str, Any]:
        steer_run(
            out, preset.steer, data=clean_data(out), seed=preset.seed, steps=preset.steer_steps,
            episodes=preset.steer_episodes, show_progress=show_progress, posttrain_task=preset.task, device=device,
        )
        return {}

    def metacontroller(stage: str):
        def run(out: Path) -> dict[str, Any]:
            name = preset.metacontroller
            if stage == COMPILE_DIR:  # CompILE's own paper budget, where the paper gives one
                name = COMPILE_PRESETS.get(name, name)
            if preset.shipped is not None and stage in shipped_stages(preset.shipped):
                install_shipped(preset.shipped, stage, out)
            else:
                train_metacontroller_run(
                    out, preset_name=name, data=clean_data(out), seed=preset.seed,
                    steps=preset.metacontroller_steps, force_switch=stage == NO_SWITCH_DIR, resume=True,
                    show_progress=show_progress, rank=preset.controller_rank, device=device,
                    cotrain=preset.cotrain_init if stage == COTRAINED_DIR else None, compile_baseline=stage == COMPILE_DIR,
                )
            report = analyse_run(out, stage_name=stage)
            summary = {"f1": report["subgoal_switches"]["f1"], "nmi": report["nmi"]["segment"]}
            if env == "gridworld" and stage == METACONTROLLER_DIR:  # the replay needs the grid world's expert
                replay = replay_run(out, preset.task, seed=preset.seed)
                summary["code_replay_success"] = replay["demonstration"]["success"]
            return summary

        return run

    label_free_config = preset.label_free or LabelFreeConfig(seed=preset.seed)

    def label_free_switch(out: Path) -> dict[str, Any]:
        held_out = fit_switch_run(out, label_free_config)["held_out"]
        return {"f1": held_out["switches"]["f1"], "switches_per_episode": held_out["switches_per_episode"]}

    def label_free_codes(out: Path) -> dict[str, Any]:
        summary = discover_codes_run(out, label_free_config)
        return {"segments_per_episode": summary["segments_per_episode"], "fit_loss": summary["fit_loss"]}

    def rl(method: str):
        def run(out: Path) -> dict[str, Any]:
            results = run_rl_seeds(
                method, out, preset.task, preset.seeds, preset.rl, episodes=preset.rl_episodes,
                first_seed=preset.seed, show_progress=show_progress, device=device, resume=True,
            )
            return {"final_success": [r["final_eval"]["success_rate"] for r in results]}

        return run

    def videos(out: Path) -> dict[str, Any]:
        result = video_run(out, env, seed=preset.seed)
        save_json(RunFolder(out).videos_record, result)
        return {name: video["success"] for name, video in result.items()}

    stages = [
        Stage("generate", generate),
        Stage("pretrain", pretrain),
        Stage("probe", probe),
        Stage("steer", steer),
        Stage(METACONTROLLER_DIR, metacontroller(METACONTROLLER_DIR)),
    ]
    for method, stage in (("no-switch", NO_SWITCH_DIR), ("cotrained", COTRAINED_DIR), ("compile", COMPILE_DIR)):
        if method in preset.methods:
            stages.append(Stage(stage, metacontroller(stage)))
    if LABEL_FREE in preset.methods:
        stages += [Stage(HMM_SWITCH_DIR, label_free_switch), Stage(LABEL_FREE_DIR, label_free_codes)]
    stages += [Stage(f"rl-{method}", rl(method)) for method in preset.methods]
    if preset.videos:
        stages.append(Stage("videos", videos))
    # The report is rebuilt on every call (it is cheap), so it always reflects the files present.
    stages.append(Stage("report", lambda out: {"report": str(write_report(out))}))
    return stages


def video_run(run: Path, env: str, seed: int = 0) -> dict[str, dict[str, Any]]:
    """GIFs of the expert, the base model, the supervised controllers at the controlled layer L/2 (when the
    steering stage saved them) and the metacontroller's discovered controllers (when its analysis found
    them) into RUN/videos/; returns what `write_videos` returns."""
    folder = RunFolder(run)
    model = folder.base_model()
    env_config = folder.env_config()
    hook = controlled_hook(model.n_layers)
    try:
        decoder = load_steering_decoder(run, hook)
    except CheckpointError:
        decoder = None
    discovered = None
    # An analysis written before the discovered controllers were recorded has no "controllers": no videos of them.
    analysis = folder.switching()
    controllers = load_json(analysis).get("controllers") if analysis.is_file() else None
    if controllers:
        metacontroller = folder.metacontroller()
        discovered = (metacontroller.controller_decoder, metacontroller.config.hook or hook, controllers["codes"])
    return write_videos(folder.videos, env_spec(env), env_config, model, decoder=decoder, hook=hook,
                        discovered=discovered, seed=seed)


def reproduce(
    env: str,
    out: Path,
    preset_name: str = "quick",
    show_progress: bool = True,
    preset: ReproducePreset | None = None,
    device: str | torch.device = "cpu",
) -> Path:
    """Run (or continue) the whole pipeline for `env` into `out`; return the report's path.

    `preset` replaces the named preset's settings (the name is still recorded), e.g. for a tiny test run.
    The training stages run on `device` (see `pipeline_stages`).
    """
    named = reproduce_preset(preset_name, env)  # checks env and name
    device = resolve_device(device)
    out = Path(out)
    preset = preset or named
    record = {
        "env": env, "preset": preset_name, "config": config_to_dict(preset), "stage_presets": stage_presets(preset),
        "device": describe_device(device),
    }
    record_path = RunFolder(out).reproduce_record
    if not record_path.is_file() and out.is_dir() and any(out.iterdir()):
        raise ConfigError(f"{out} holds files but was not started by `reproduce` (no reproduce.json); "
                          "choose a new or empty --out")
    if record_path.is_file():
        previous = load_json(record_path)
        if not isinstance(previous, dict):
            raise ConfigError(f"{record_path} is not a reproduce record (a JSON object); choose another --out, "
                              "or delete the folder to start again")
        if (previous.get("env"), previous.get("preset")) != (env, preset_name):
            raise ConfigError(
                f"{out} was started as `reproduce {previous.get('env')} --preset {previous.get('preset')}`; "
                f"continue it with those arguments or choose another --out"
            )
        # A preset whose budgets changed since (e.g. an older version's) would mix stale and new stages.
        config, before = record["config"], previous.get("config", record["config"])
        changed = sorted(k for k in config.keys() | before.keys() if before.get(k) != config.get(k))
        before_stages = previous.get("stage_presets", {})  # absent: written by a version that did not record them
        changed += [f"the {stage} preset" for stage, settings in record["stage_presets"].items()
                    if before_stages.get(stage) != settings]
        if changed:
            raise ConfigError(
                f"{out} was started with other settings of `--preset {preset_name}` ({', '.join(changed)}); "
                f"choose another --out, or delete the folder to start again"
            )
    out.mkdir(parents=True, exist_ok=True)
    save_json(record_path, record)
    stages = pipeline_stages(env, preset, show_progress, device)
    report_marker = RunFolder(out).stage_marker("report")
    report_marker.unlink(missing_ok=True)
    run_stages(out, stages)
    return RunFolder(out).report
