"""Analysis steps on a run folder: read the run's model and dataset, write results beside them."""

from pathlib import Path
from typing import Any

import torch

from internal_rl.common.config import load_json, replace, save_json
from internal_rl.common.device import resolve_device
from internal_rl.envs.tasks import Task


def run_dataset(run: Path, data: Path | None = None) -> Path:
    """`data` if given, else the dataset recorded in RUN's pretraining checkpoint."""
    from internal_rl.metacontroller.training import dataset_of_run

    return Path(data) if data is not None else dataset_of_run(run)


def probe_run(
    run: Path, preset: str = "quick", *, data: Path | None = None, seed: int | None = None, steps: int | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Fit linear subgoal probes at every hook of RUN's base model; write RUN/probes.json and RUN/probes.png."""
    from internal_rl.analysis.probes import plot_probe_results, probe_layers, probe_preset
    from internal_rl.data.dataset import load_dataset
    from internal_rl.models.base_model import load_base_model

    run = Path(run)
    config = probe_preset(preset)
    config = replace(config, **{k: v for k, v in {"seed": seed, "steps": steps}.items() if v is not None})
    results = probe_layers(
        load_base_model(run), load_dataset(run_dataset(run, data)), config, show_progress=show_progress
    )
    save_json(run / "probes.json", results)
    plot_probe_results(results, run / "probes.png")
    return results


STEERING_CONTROLLERS = "steering_controllers"
DECODER_KEY = "controller_decoder"  # in each decoder checkpoint's config.json: the decoder's sizes


def steer_run(
    run: Path, preset: str = "quick", *, data: Path | None = None, layers: list[str] | None = None,
    seed: int | None = None, steps: int | None = None, episodes: int | None = None, show_progress: bool = True,
    posttrain_task: Task | None = None, device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Fit and evaluate supervised subgoal controllers per layer on `device`; write RUN/steering.json,
    RUN/steering.png and each layer's controller decoder as a checkpoint folder RUN/steering_controllers/<hook>/.
    The controllers are chained on `posttrain_task` (default: the env's post-training task)."""
    from internal_rl.analysis.steering import plot_steering_results, resolve_layers, steer_layers, steer_preset
    from internal_rl.data.dataset import load_dataset
    from internal_rl.data.generate import env_config_from_manifest
    from internal_rl.models.base_model import load_base_model

    run = Path(run)
    overrides = {"seed": seed, "steps": steps, "episodes": episodes}
    config = replace(steer_preset(preset), **{k: v for k, v in overrides.items() if v is not None})
    model = load_base_model(run).to(resolve_device(device))
    dataset = load_dataset(run_dataset(run, data))
    hooks = resolve_layers(layers, model.n_layers)

    def save_decoder(hook: str, decoder: Any) -> None:
        save_controller_decoder(run / STEERING_CONTROLLERS / hook, decoder)

    results = steer_layers(
        model, dataset, env_config_from_manifest(dataset.manifest), hooks, config, show_progress=show_progress,
        on_decoder=save_decoder, posttrain_task=posttrain_task,
    )
    save_json(run / "steering.json", results)
    probes = load_json(run / "probes.json") if (run / "probes.json").is_file() else None
    plot_steering_results(results, run / "steering.png", probes=probes)
    return results


def save_controller_decoder(path: Path, decoder: Any) -> None:
    """Write a controller decoder as a checkpoint folder whose config.json records its sizes."""
    from internal_rl.common.checkpoint import save_checkpoint

    sizes = {"n_z": decoder.n_z, "d_model": decoder.d_model, "rank": decoder.rank, "hidden": decoder.hidden,
             "shift": decoder.shift_head is not None}
    save_checkpoint(Path(path), decoder, {DECODER_KEY: sizes})


def load_steering_decoder(run: Path, hook: str) -> Any:
    """The supervised controller decoder `steer_run` fitted at `hook`, frozen."""
    from internal_rl.common.errors import CheckpointError

    path = Path(run) / STEERING_CONTROLLERS / hook
    if not path.is_dir():
        raise CheckpointError(f"no supervised controller for {hook} in {run} (run `internal-rl steer --run {run}`)")
    return load_controller_decoder(path)


def load_controller_decoder(path: Path) -> Any:
    """A controller decoder from a checkpoint folder written by `save_controller_decoder`, frozen."""
    from internal_rl.common.checkpoint import load_checkpoint
    from internal_rl.common.errors import CheckpointError
    from internal_rl.models.controller import ControllerDecoder

    weights, config, _ = load_checkpoint(Path(path))
    try:
        decoder = ControllerDecoder(**config[DECODER_KEY])
        decoder.load_state_dict(weights)
    except (KeyError, TypeError, RuntimeError) as err:
        raise CheckpointError(f"{path} is not a controller decoder checkpoint: {str(err).splitlines()[0]}") from None
    return decoder.eval().requires_grad_(False)
