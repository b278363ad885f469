"""Analysis steps on a run folder: read the run's models and dataset, write results beside them
(`RunFolder` says where): probes, supervised controllers, the switching analysis of a metacontroller stage,
the alpha sweep, and the grid world's code replay."""

from pathlib import Path
from typing import Any, Sequence

import torch

from internal_rl.analysis.code_content import dataset_code_content
from internal_rl.analysis.code_replay import replay_codes
from internal_rl.analysis.probes import plot_probe_results, probe_layers, probe_preset
from internal_rl.analysis.steering import (
    evaluate_discovered_controllers,
    plot_steering_results,
    resolve_layers,
    steer_layers,
)
from internal_rl.analysis.subgoal_controllers import SteeringConfig, steer_preset
from internal_rl.analysis.switching import (
    _held_out_of,
    collect_traces,
    plot_alpha_sweep,
    plot_beta_traces,
    switching_report,
)
from internal_rl.common.checkpoint import load_checkpoint
from internal_rl.common.config import load_json, replace, save_json
from internal_rl.common.device import resolve_device
from internal_rl.common.errors import CheckpointError, ConfigError
from internal_rl.data.dataset import load_dataset, read_manifest
from internal_rl.data.generate import env_config_from_manifest
from internal_rl.envs.gridworld import GridWorldConfig
from internal_rl.envs.tasks import Task
from internal_rl.metacontroller.modules import load_metacontroller, segmenter_key
from internal_rl.models.controller import load_controller_decoder, save_controller_decoder
from internal_rl.pipeline.metacontroller_stage import train_metacontroller_run
from internal_rl.pipeline.rl_stage import env_config_of_run
from internal_rl.pipeline.run_folder import METACONTROLLER_DIR, RunFolder



def probe_run(
    run: Path, preset: str = "quick", *, data: Path | None = None, seed: int | None = None, steps: int | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Fit linear subgoal probes at every hook of RUN's base model; write RUN/probes.json and RUN/probes.png."""
    folder = RunFolder(run)
    config = probe_preset(preset)
    config = replace(config, **{k: v for k, v in {"seed": seed, "steps": steps}.items() if v is not None})
    results = probe_layers(
        folder.base_model(), load_dataset(folder.dataset_or(data)), config, show_progress=show_progress
    )
    save_json(folder.probes, results)
    plot_probe_results(results, folder.probes_plot)
    return results


def steer_run(
    run: Path, preset: str = "quick", *, data: Path | None = None, layers: list[str] | None = None,
    seed: int | None = None, steps: int | None = None, episodes: int | None = None, show_progress: bool = True,
    posttrain_task: Task | None = None, device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Fit and evaluate supervised subgoal controllers per layer on `device`; write RUN/steering.json,
    RUN/steering.png and each layer's controller decoder as a checkpoint folder RUN/steering_controllers/<hook>/.
    The controllers are chained on `posttrain_task` (default: the env's post-training task)."""
    folder = RunFolder(run)
    overrides = {"seed": seed, "steps": steps, "episodes": episodes}
    config = replace(steer_preset(preset), **{k: v for k, v in overrides.items() if v is not None})
    model = folder.base_model().to(resolve_device(device))
    dataset = load_dataset(folder.dataset_or(data))
    hooks = resolve_layers(layers, model.n_layers)

    def save_decoder(hook: str, decoder: Any) -> None:
        save_controller_decoder(folder.steering_controller(hook), decoder)

    results = steer_layers(
        model, dataset, env_config_from_manifest(dataset.manifest), hooks, config, show_progress=show_progress,
        on_decoder=save_decoder, posttrain_task=posttrain_task,
    )
    save_json(folder.steering, results)
    probes = load_json(folder.probes) if folder.probes.is_file() else None
    plot_steering_results(results, folder.steering_plot, probes=probes)
    return results


def load_steering_decoder(run: Path, hook: str) -> Any:
    """The supervised controller decoder `steer_run` fitted at `hook`, frozen."""
    path = RunFolder(run).steering_controller(hook)
    if not path.is_dir():
        raise CheckpointError(f"no supervised controller for {hook} in {run} (run `internal-rl steer --run {run}`)")
    return load_controller_decoder(path)


def analyse_run(run_dir: Path, *, stage_name: str = METACONTROLLER_DIR, data: Path | None = None,
                max_episodes: int = 1000, seed: int = 0, plot: bool = True,
                steer_discovered: bool | None = None) -> dict[str, Any]:
    """Switching analysis of RUN's metacontroller on its held-out episodes; writes RUN/switching.json and
    RUN/switching_beta.png (for the default stage) and returns the report. `steer_discovered` (default: for
    the default stage, when RUN's supervised controllers were evaluated at the metacontroller's hook) adds
    "discovered_steering": its discovered controllers rolled out as the supervised ones were."""
    run = RunFolder(run_dir)
    checkpoint = run.metacontroller_checkpoint(stage_name)
    _, config, _ = load_checkpoint(checkpoint)
    held_out = _held_out_of(config, data)
    base = run.base_model(stage_name)
    metacontroller = load_metacontroller(checkpoint)
    traces = collect_traces(base, metacontroller, held_out, max_episodes)
    model_config = config[segmenter_key(config, checkpoint)]
    report = {"metacontroller": model_config, "step": config.get("step"), **switching_report(traces, seed=seed)}
    content = dataset_code_content(traces, held_out)  # grid world: do the codes name places instead?
    if content is not None:
        report["code_content"] = content
    steering = load_json(run.steering) if run.steering.is_file() else None
    if steer_discovered is None:
        steer_discovered = stage_name == METACONTROLLER_DIR and _supervised_row(steering, metacontroller) is not None
    if steer_discovered:
        report["discovered_steering"] = _steer_discovered(run, base, metacontroller, report["controllers"], steering)
    if plot:
        alpha = model_config["alpha"]
        report["plot"] = str(plot_beta_traces(traces, run.switching_plot(stage_name),
                                              title=f"beta_t on held-out episodes (alpha={alpha})"))
    report["json"] = str(run.switching(stage_name))
    save_json(Path(report["json"]), report)
    return report


def _supervised_row(steering: dict[str, Any] | None, metacontroller: Any) -> dict[str, Any] | None:
    """steering.json's supervised controllers at the metacontroller's hook, if they were evaluated there."""
    rows = [r for r in (steering or {}).get("layers", []) if r["hook"] == metacontroller.config.hook]
    return rows[0] if rows else None


def _steer_discovered(run: RunFolder, base: Any, metacontroller: Any, controllers: dict[str, Any],
                      steering: dict[str, Any] | None) -> dict[str, Any]:
    """`evaluate_discovered_controllers` under the supervised controllers' evaluation settings (steering.json),
    hence on their layouts, with each evaluation's success relative to theirs at the same hook."""
    hook = metacontroller.config.hook
    supervised_row = _supervised_row(steering, metacontroller)
    if supervised_row is None:
        raise ConfigError(f"{run.root}: no supervised controllers evaluated at the metacontroller's hook {hook} "
                          f"(run `internal-rl steer --run {run.root}` first)")
    config = SteeringConfig(**steering["config"])
    result = evaluate_discovered_controllers(
        base, run.env_config(), config, decoder=metacontroller.controller_decoder, hook=hook,
        codes=controllers["codes"], controller_of_subgoal=controllers["controller_of_subgoal"],
        posttrain_task=tuple(steering["posttrain_task"]))
    for name, evaluation in result.items():
        supervised = supervised_row[name]["success"]
        evaluation["supervised_success"] = supervised
        evaluation["relative_to_supervised"] = evaluation["success"] / supervised if supervised > 0 else None
    return {"hook": hook, "controller_of_subgoal": controllers["controller_of_subgoal"], **result}


def alpha_sweep(run_dir: Path, alphas: Sequence[float], *, preset_name: str = "quick", data: Path | None = None,
                steps: int | None = None, seed: int | None = None, max_episodes: int = 500,
                show_progress: bool = True, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Train one metacontroller per alpha on `device` (RUN/alpha_sweep/alpha_<a>/, resumable) and record the
    trade-off between held-out action NLL and the number of switches; writes RUN/alpha_sweep.json and .png."""
    if not alphas:
        raise ConfigError("alpha_sweep: no alpha values given; e.g. --alpha-sweep 0,0.05,0.1")
    run = RunFolder(run_dir)
    rows = []
    for alpha in alphas:
        stage_name = run.alpha_sweep_stage(alpha)
        train_metacontroller_run(run.root, preset_name=preset_name, data=data, alpha=alpha, steps=steps, seed=seed,
                                 resume=True, stage_name=stage_name, show_progress=show_progress, device=device)
        report = analyse_run(run.root, stage_name=stage_name, data=data, max_episodes=max_episodes, plot=False,
                             steer_discovered=False)
        rows.append({
            "alpha": alpha,
            "action_nll": report["action_nll"],
            "switches_per_episode": report["switches_per_episode"],
            "true_subgoals_per_episode": report["true_subgoals_per_episode"],
            "f1": report["subgoal_switches"]["f1"],
            "nmi_step": report["nmi"]["step"],
            "mean_segment_length": report["segment_length"]["mean"],
        })
    result = {"preset": preset_name, "rows": rows, "plot": str(plot_alpha_sweep(rows, run.alpha_sweep_plot))}
    save_json(run.alpha_sweep, result)
    return result


def replay_run(run_dir: Path, task: Task, *, stage_name: str = METACONTROLLER_DIR, episodes: int = 256,
               seed: int = 0) -> dict[str, Any]:
    """`replay_codes` for RUN's base model and metacontroller stage; writes RUN/code_replay.json."""
    run = RunFolder(run_dir)
    base = run.base_model(stage_name)
    config = env_config_of_run(run.root, base, task)
    if not isinstance(config, GridWorldConfig):
        raise ConfigError("code replay needs the grid world's expert (it replays the expert's layouts); "
                          f"{run.root} was pretrained in {type(config).__name__}")
    checkpoint = run.metacontroller_checkpoint(stage_name)
    metacontroller = load_metacontroller(checkpoint)
    # Demonstrations like the metacontroller's training data: the noiseless expert's if it trained on D*
    # (if that dataset has moved, the expert's usual ones; the result records which).
    data = Path(load_checkpoint(checkpoint)[1]["dataset"]["path"])
    noiseless = data.is_dir() and bool(read_manifest(data).get("expert_mean_actions", False))
    result = {"stage": stage_name, **replay_codes(base, metacontroller, task, episodes=episodes, seed=seed,
                                                  env_config=config, noiseless=noiseless)}
    save_json(run.code_replay(stage_name), result)
    return result
