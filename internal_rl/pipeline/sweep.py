"""Sweeps of RL runs: methods x seeds x tasks (x hyperparameters) from one run folder, and their folders.

A sweep is described by a JSON file (see `SweepConfig`), checked whole when it is read: the preset, every
key and every value, so a bad file fails once, before any trial starts. Every combination is one trial
(`run_trial`) running `pipeline.rl_stage.run_rl` on the run folder's frozen models. Trials sharing a task and
hyperparameters form a group, written as a run-shaped folder OUT/<group>/rl/<method>/seed_<k>.json, so
each group's report is the ordinary one (`pipeline.report.write_report`: OUT/<group>/report.md,
results.json), and OUT/results.json plus OUT/report.md put the groups side by side (`write_sweep_report`).

A trial whose result file already exists (it finished just before an interruption, or in an earlier sweep
into OUT) reads it back instead of training again, so nothing finished is ever recomputed. The run folder
and preset of an OUT cannot change (`start_sweep_folder`). Running the trials, on Ray Tune, is
`internal_rl.distributed.sweep.run_sweep`; nothing here imports Ray.
"""

import itertools
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from internal_rl.common.config import load_json, save_json, save_text
from internal_rl.common.errors import ConfigError, check
from internal_rl.envs.tasks import parse_task
from internal_rl.pipeline.report import write_report
from internal_rl.pipeline.results import METHOD_NAMES, rl_summary
from internal_rl.pipeline.rl_stage import env_config_of_run, load_method_metacontroller, run_rl
from internal_rl.pipeline.run_folder import RunFolder
from internal_rl.rl.training import BASE_METHODS, METHODS, check_method, rl_config


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _non_empty_list_of(values: Any, accepts: Callable[[Any], bool]) -> bool:
    return isinstance(values, (list, tuple)) and len(values) >= 1 and all(accepts(v) for v in values)


# Hyperparameters a sweep may vary, as the keyword of `rl.training.rl_config` they set, with the values
# each accepts and how an error message names them.
HYPERPARAMETERS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "lr": (lambda v: _is_number(v) and v > 0, "positive finite numbers"),
    "episodes": (lambda v: _is_int(v) and v >= 1, "positive integers"),
    "batch": (lambda v: _is_int(v) and v >= 2, "integers >= 2"),
}


@dataclass(frozen=True)
class SweepConfig:
    """What to run: every method x seed x task x combination of `grid` values, from the run folder `run`."""

    run: str  # run folder with pretrain/ and the metacontroller(s)
    out: str = ""  # where results go (default: RUN/sweep)
    methods: tuple[str, ...] = BASE_METHODS
    seeds: tuple[int, ...] = (0,)
    tasks: tuple[str, ...] = ("0-1-2-3-4-5-6-7-0-1-2-3",)
    preset: str = "quick"
    grid: dict[str, list[float]] = field(default_factory=dict)  # e.g. {"lr": [1e-3, 3e-3]}
    cpus_per_trial: int = 1
    gpus_per_trial: float = 0  # > 0: each trial's policy learns on a GPU (a fraction: trials share one)
    max_concurrent_trials: int = 0  # 0: as many as the CPUs allow

    def __post_init__(self) -> None:
        check(isinstance(self.run, str) and self.run != "", f"'run' must be a run folder, got {self.run!r}")
        check(isinstance(self.out, str), f"'out' must be a folder (or empty: RUN/sweep), got {self.out!r}")
        check(_non_empty_list_of(self.methods, lambda m: isinstance(m, str)),
              f"'methods' must be a non-empty list of {', '.join(METHODS)}, got {self.methods!r}")
        for method in self.methods:
            check_method(method)
        check(_non_empty_list_of(self.seeds, lambda v: _is_int(v) and v >= 0),
              f"'seeds' must be a count or a list of integers >= 0, got {self.seeds!r}")
        check(_non_empty_list_of(self.tasks, lambda t: isinstance(t, str)),
              f"'tasks' must be a non-empty list of tasks such as '0-1-2-3', got {self.tasks!r}")
        for task in self.tasks:
            parse_task(task)
        check(isinstance(self.preset, str), f"'preset' must be an RL preset name, got {self.preset!r}")
        check(isinstance(self.grid, dict), f"'grid' must map hyperparameters to lists of values, got {self.grid!r}")
        for name, values in self.grid.items():
            check(name in HYPERPARAMETERS,
                  f"unknown sweep hyperparameter {name!r}; valid: {', '.join(HYPERPARAMETERS)}")
            accepts, expected = HYPERPARAMETERS[name]
            check(_non_empty_list_of(values, accepts),
                  f"grid.{name} must be a non-empty list of {expected}, got {values!r}")
        check(_is_int(self.cpus_per_trial) and self.cpus_per_trial >= 1,
              f"cpus_per_trial {self.cpus_per_trial!r}; expected an integer >= 1")
        check(_is_number(self.gpus_per_trial) and self.gpus_per_trial >= 0,
              f"gpus_per_trial {self.gpus_per_trial!r}; expected a number >= 0 (a fraction shares a GPU)")
        check(_is_int(self.max_concurrent_trials) and self.max_concurrent_trials >= 0,
              f"max_concurrent_trials {self.max_concurrent_trials!r}; expected an integer >= 0 (0: no limit)")
        # Build every RL config the trials will build: checks the preset and each grid value against it.
        for method, hyperparameters in itertools.product(self.methods, grid_combinations(self)):
            rl_config(self.preset, method, **hyperparameters)

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path(self.run) / "sweep"


def load_sweep_config(path: str | Path) -> SweepConfig:
    """Read and check a sweep file: `seeds` may be a count (0..n-1) or a list; relative paths are taken from
    the file's folder. Any bad key or value is a one-line ConfigError naming the file."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"sweep file {path} is a folder; expected a JSON file such as examples/sweep.json")
    raw = load_json(path)
    if not isinstance(raw, dict) or "run" not in raw:
        raise ConfigError(f"sweep file {path} must be a JSON object with at least a 'run' folder")
    known = set(SweepConfig.__dataclass_fields__)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in sweep file {path}; valid: {sorted(known)}")
    seeds = raw.get("seeds", 1)
    if _is_int(seeds):
        if seeds < 1:
            raise ConfigError(f"sweep file {path}: 'seeds' {seeds} must be >= 1")
        raw["seeds"] = tuple(range(seeds))
    for key in ("methods", "seeds", "tasks"):  # values of another type are refused by SweepConfig
        if isinstance(raw.get(key), list):
            raw[key] = tuple(raw[key])
    for key in ("run", "out"):
        if isinstance(raw.get(key), str) and raw[key]:
            raw[key] = str((path.parent / raw[key]).resolve())
    try:
        return SweepConfig(**raw)
    except ConfigError as err:
        raise ConfigError(f"sweep file {path}: {err}") from None


def group_name(task: str, hyperparameters: dict[str, Any]) -> str:
    """The folder of a task x hyperparameter combination, e.g. 'task=0-1-2,lr=0.001'."""
    return ",".join([f"task={task}"] + [f"{k}={v:g}" for k, v in sorted(hyperparameters.items())])


def grid_combinations(config: SweepConfig) -> list[dict[str, Any]]:
    """Every combination of the grid's values, e.g. [{"lr": 0.001}, {"lr": 0.003}] ([{}] without a grid)."""
    names = sorted(config.grid)
    return [dict(zip(names, values)) for values in itertools.product(*(config.grid[n] for n in names))]


def trials(config: SweepConfig) -> list[dict[str, Any]]:
    """Every trial's parameters, in a fixed order."""
    return [
        {"method": method, "seed": seed, "task": task, "hyperparameters": hp}
        for task, hp, method, seed in itertools.product(config.tasks, grid_combinations(config), config.methods,
                                                        config.seeds)
    ]


def check_run(config: SweepConfig) -> None:
    """Fail before any trial starts if the run folder lacks a model a method needs or a task is invalid for it."""
    base_model = RunFolder(config.run).base_model()
    for task in config.tasks:
        env_config_of_run(Path(config.run), base_model, parse_task(task))
    for method in config.methods:
        load_method_metacontroller(Path(config.run), method)


def _settings(config: SweepConfig) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(config)))  # tuples -> lists, as read back


def start_sweep_folder(config: SweepConfig) -> Path:
    """Create OUT and record the sweep in OUT/sweep.json; returns OUT (resolved).

    Results in OUT are reused by trial name, so an OUT that already holds a sweep of another run folder or
    preset is refused (ConfigError) rather than mixed with this one.
    """
    out = config.out_dir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    recorded = out / "sweep.json"
    settings = _settings(config)
    if recorded.is_file():
        before = load_json(recorded)
        for key in ("run", "preset"):
            if before.get(key) != settings[key]:
                raise ConfigError(f"{out} holds a sweep with {key} {before.get(key)!r}, not {settings[key]!r}; "
                                  "use another 'out'")
    save_json(recorded, settings)
    return out


def run_trial(params: dict[str, Any]) -> dict[str, Any]:
    """One trial: `run_rl` into its group's folder (or the result already there); returns the summary a
    trial reports. `params` is a `trials` entry plus "run", "out" (resolved), "preset", "cpus" and "gpus" (> 0:
    the trial trains on the GPU Ray gave it)."""
    torch.set_num_threads(params["cpus"])
    group = Path(params["out"]) / group_name(params["task"], params["hyperparameters"])
    path = RunFolder(group).rl_result(params["method"], params["seed"])
    if path.is_file():  # finished before an interruption
        result = load_json(path)
    else:
        config = rl_config(params["preset"], params["method"], **params["hyperparameters"])
        result = run_rl(params["method"], Path(params["run"]), parse_task(params["task"]), params["seed"], config,
                        show_progress=False, results_dir=group, device="cuda" if params.get("gpus", 0) > 0 else "cpu")
    return {"final_success": result["final_eval"]["success_rate"], "episodes": result["episodes"],
            "env_steps": result["env_steps"], "seconds": result["timing"]["seconds"]}


def write_sweep_report(config: SweepConfig) -> Path:
    """Each group's report (the ordinary run report) and OUT/results.json + OUT/report.md over the groups,
    all written atomically. Returns OUT/report.md."""

    def fmt(x: float | None, digits: int = 3) -> str:
        return "n/a" if x is None else f"{x:.{digits}f}"

    out = config.out_dir.resolve()
    groups: dict[str, Any] = {}
    for t in trials(config):
        name = group_name(t["task"], t["hyperparameters"])
        if name not in groups and RunFolder(out / name).rl.is_dir():
            write_report(out / name)
            groups[name] = {"task": t["task"], "hyperparameters": t["hyperparameters"], "methods": rl_summary(out / name)}
    save_json(out / "results.json", {"sweep": _settings(config), "groups": groups})
    lines = [f"# internal-rl sweep: {out.name}", "", f"Run folder `{config.run}`, preset `{config.preset}`, "
             f"{len(trials(config))} trials. Each group's own report is in its folder; `results.json` holds these numbers.", "",
             "| group | method | held-out success (start -> end) | episodes to 90% | episodes | seeds |",
             "|---|---|---|---|---|---|"]
    for name, group in groups.items():
        for method, m in group["methods"].items():
            lines.append(f"| [{name}]({name}/report.md) | {METHOD_NAMES.get(method, method)} | {fmt(m['initial_success'])} -> "
                         f"{fmt(m['final_success'])} | {fmt(m['episodes_to_90'], 0)} | {m['episodes']} | {m['seeds']} |")
    path = out / "report.md"
    save_text(path, "\n".join(lines) + "\n")
    return path
