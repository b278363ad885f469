"""`internal-rl reproduce gridworld`: the whole grid-world pipeline, stage by stage, ending in a report.

Run folder layout (every stage writes only its own part):

    DIR/reproduce.json          the preset this folder was started with (a resume must use the same one)
    DIR/data/                   expert dataset (manifest.json, trajectories.npz)
    DIR/pretrain/               base model checkpoint/, tb/, eval.json
    DIR/probes.json, .png       linear probes per layer
    DIR/steering.json, .png     supervised subgoal controllers per layer
    DIR/metacontroller/         metacontroller checkpoint/, tb/, summary.json
    DIR/switching.json, switching_beta.png
    DIR/metacontroller-no-switch/, switching_metacontroller-no-switch.json   the beta == 1 ablation
    DIR/rl/<method>/seed_<k>.json                                            RL learning curves
    DIR/stages/<stage>.json     marker of a finished stage (its summary and wall time)
    DIR/report.md, results.json, figures/
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from internal_rl.common.config import config_to_dict, load_json, save_json
from internal_rl.common.errors import ConfigError
from internal_rl.envs.tasks import GRID_POSTTRAIN_TASK, Task
from internal_rl.pipeline.run_steps import probe_run, steer_run
from internal_rl.pipeline.stages import Stage, run_stages

METHODS: tuple[str, ...] = ("internal", "raw", "no-switch")


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
    methods: tuple[str, ...] = METHODS
    seed: int = 0


PRESETS: dict[str, ReproducePreset] = {
    # Fits 2 CPU cores in about 15 minutes; shows the pipeline's effects at small scale.
    "quick": ReproducePreset(
        episodes=50_000, pretrain="quick", probe="quick", steer="quick", metacontroller="quick", rl="quick", seeds=2
    ),
    # The paper's budgets (accelerator scale), 3 seeds per method.
    "full": ReproducePreset(
        episodes=100_000, pretrain="paper", probe="paper", steer="paper", metacontroller="paper", rl="paper", seeds=3
    ),
}


def reproduce_preset(name: str) -> ReproducePreset:
    if name not in PRESETS:
        raise ConfigError(f"unknown reproduce preset {name!r}; valid: {sorted(PRESETS)}")
    return PRESETS[name]


def gridworld_stages(preset: ReproducePreset, show_progress: bool = True) -> list[Stage]:
    """The grid-world pipeline as a list of resumable stages."""
    from internal_rl.analysis.switching import analyse_run
    from internal_rl.data.generate import generate_dataset
    from internal_rl.metacontroller.training import train_metacontroller_run
    from internal_rl.models.pretraining import pretrain_preset, run_pretraining
    from internal_rl.pipeline.report import write_report
    from internal_rl.rl.training import run_rl_seeds

    def generate(out: Path) -> dict[str, Any]:
        generate_dataset("gridworld", preset.episodes, out / "data", preset.seed, force=True, show_progress=show_progress)
        return {"episodes": preset.episodes}

    def pretrain(out: Path) -> dict[str, Any]:
        config = pretrain_preset(preset.pretrain, seed=preset.seed, steps=preset.pretrain_steps)
        result = run_pretraining(config, out / "data", out / "pretrain", resume=True, show_progress=show_progress)
        return {"held_out_accuracy": result["held_out"]["action_accuracy"]}

    def probe(out: Path) -> dict[str, Any]:
        results = probe_run(out, preset.probe, seed=preset.seed, steps=preset.probe_steps, show_progress=show_progress)
        return {"best_layer": results["best_layer"]}

    def steer(out: Path) -> dict[str, Any]:
        steer_run(
            out, preset.steer, seed=preset.seed, steps=preset.steer_steps, episodes=preset.steer_episodes,
            show_progress=show_progress,
        )
        return {}

    def metacontroller(force_switch: bool):
        def run(out: Path) -> dict[str, Any]:
            train_metacontroller_run(
                out, preset_name=preset.metacontroller, seed=preset.seed, steps=preset.metacontroller_steps,
                force_switch=force_switch, resume=True,
                show_progress=show_progress,
            )
            stage = "metacontroller-no-switch" if force_switch else "metacontroller"
            report = analyse_run(out, stage_name=stage)
            return {"f1": report["subgoal_switches"]["f1"], "nmi": report["nmi"]["segment"]}

        return run

    def rl(method: str):
        def run(out: Path) -> dict[str, Any]:
            results = run_rl_seeds(
                method, out, preset.task, preset.seeds, preset.rl, episodes=preset.rl_episodes,
                first_seed=preset.seed, show_progress=show_progress,
            )
            return {"final_success": [r["final_eval"]["success_rate"] for r in results]}

        return run

    stages = [
        Stage("generate", generate),
        Stage("pretrain", pretrain),
        Stage("probe", probe),
        Stage("steer", steer),
        Stage("metacontroller", metacontroller(force_switch=False)),
    ]
    if "no-switch" in preset.methods:
        stages.append(Stage("metacontroller-no-switch", metacontroller(force_switch=True)))
    stages += [Stage(f"rl-{method}", rl(method)) for method in preset.methods]
    # The report is rebuilt on every call (it is cheap), so it always reflects the files present.
    stages.append(Stage("report", lambda out: {"report": str(write_report(out))}))
    return stages


def reproduce(
    env: str, out: Path, preset_name: str = "quick", show_progress: bool = True, preset: ReproducePreset | None = None
) -> Path:
    """Run (or continue) the whole pipeline for `env` into `out`; return the report's path.

    `preset` replaces the named preset's settings (the name is still recorded), e.g. for a tiny test run.
    """
    if env != "gridworld":
        raise ConfigError(f"unknown environment {env!r} for reproduce; valid: gridworld")
    out = Path(out)
    preset = preset or reproduce_preset(preset_name)
    record = {"env": env, "preset": preset_name, "config": config_to_dict(preset)}
    record_path = out / "reproduce.json"
    if record_path.is_file():
        previous = load_json(record_path)
        if (previous.get("env"), previous.get("preset")) != (env, preset_name):
            raise ConfigError(
                f"{out} was started as `reproduce {previous.get('env')} --preset {previous.get('preset')}`; "
                f"continue it with those arguments or choose another --out"
            )
    out.mkdir(parents=True, exist_ok=True)
    save_json(record_path, record)
    stages = gridworld_stages(preset, show_progress)
    report_marker = out / "stages" / "report.json"
    report_marker.unlink(missing_ok=True)
    run_stages(out, stages)
    return out / "report.md"
