"""Sweeps: methods x seeds x tasks (x hyperparameters) of RL as Ray Tune trials, resumable.

A sweep is described by a JSON file (see `SweepConfig`). Every combination is one Tune trial running
`rl.training.run_rl` on the run folder's frozen models. Trials sharing a task and hyperparameters form a
group, written as a run-shaped folder OUT/<group>/rl/<method>/seed_<k>.json, so each group's report is
the ordinary one (`pipeline.report.write_report`: OUT/<group>/report.md, results.json), and OUT/results.json
plus OUT/report.md put the groups side by side.

Resume: Tune keeps the experiment state in OUT/tune-<hash of the trial list>; calling the same sweep again
restores it and runs only the unfinished or failed trials. A trial whose result file already exists (it
finished just before an interruption, or in an earlier sweep into OUT) reads it back instead of training
again, so nothing finished is ever recomputed: adding seeds, methods, tasks or grid values to a sweep file
and running it again trains only the new trials. The run folder and preset of an OUT cannot change.
"""

import hashlib
import itertools
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from internal_rl.common.config import load_json, save_json
from internal_rl.common.errors import ConfigError, InternalRLError, check
from internal_rl.distributed import init_ray, require_ray
from internal_rl.envs.tasks import parse_task
from internal_rl.rl.training import METHODS, check_method, result_path, rl_config

# Hyperparameters a sweep may vary, as the keyword of `rl.training.rl_config` they set.
HYPERPARAMETERS = ("lr", "episodes")
TUNE_DIR_PREFIX = "tune-"


@dataclass(frozen=True)
class SweepConfig:
    """What to run: every method x seed x task x combination of `grid` values, from the run folder `run`."""

    run: str  # run folder with pretrain/ and the metacontroller(s)
    out: str = ""  # where results go (default: RUN/sweep)
    methods: tuple[str, ...] = METHODS
    seeds: tuple[int, ...] = (0,)
    tasks: tuple[str, ...] = ("0-1-2-3-4-5-6-7-0-1-2-3",)
    preset: str = "quick"
    grid: dict[str, list[float]] = field(default_factory=dict)  # e.g. {"lr": [1e-3, 3e-3]}
    cpus_per_trial: int = 1
    max_concurrent_trials: int = 0  # 0: as many as the CPUs allow

    def __post_init__(self) -> None:
        for method in self.methods:
            check_method(method)
        check(len(self.methods) >= 1 and len(self.seeds) >= 1 and len(self.tasks) >= 1,
              "a sweep needs at least one method, one seed and one task")
        for task in self.tasks:
            parse_task(task)
        for name, values in self.grid.items():
            check(name in HYPERPARAMETERS, f"unknown sweep hyperparameter {name!r}; valid: {', '.join(HYPERPARAMETERS)}")
            check(isinstance(values, list) and len(values) >= 1, f"grid.{name} must be a non-empty list, got {values!r}")
        check(self.cpus_per_trial >= 1, f"cpus_per_trial {self.cpus_per_trial}; expected >= 1")
        check(self.max_concurrent_trials >= 0, f"max_concurrent_trials {self.max_concurrent_trials}; expected >= 0")

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path(self.run) / "sweep"


def load_sweep_config(path: str | Path) -> SweepConfig:
    """Read a sweep file: `seeds` may be a count (0..n-1) or a list; relative paths are taken from the file's folder."""
    path = Path(path)
    raw = load_json(path)
    if not isinstance(raw, dict) or "run" not in raw:
        raise ConfigError(f"sweep file {path} must be a JSON object with at least a 'run' folder")
    known = set(SweepConfig.__dataclass_fields__)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in sweep file {path}; valid: {sorted(known)}")
    seeds = raw.get("seeds", 1)
    raw["seeds"] = tuple(range(seeds)) if isinstance(seeds, int) else tuple(int(s) for s in seeds)
    for key in ("methods", "tasks"):
        if key in raw:
            raw[key] = tuple(raw[key])
    for key in ("run", "out"):
        if raw.get(key):
            raw[key] = str((path.parent / raw[key]).resolve())
    try:
        return SweepConfig(**raw)
    except TypeError as err:
        raise ConfigError(f"bad sweep file {path}: {err}") from None


def group_name(task: str, hyperparameters: dict[str, Any]) -> str:
    """The folder of a task x hyperparameter combination, e.g. 'task=0-1-2,lr=0.001'."""
    return ",".join([f"task={task}"] + [f"{k}={v:g}" for k, v in sorted(hyperparameters.items())])


def trials(config: SweepConfig) -> list[dict[str, Any]]:
    """Every trial's parameters, in a fixed order."""
    names = sorted(config.grid)
    combos = [dict(zip(names, values)) for values in itertools.product(*(config.grid[n] for n in names))]
    return [
        {"method": method, "seed": seed, "task": task, "hyperparameters": hp}
        for task, hp, method, seed in itertools.product(config.tasks, combos, config.methods, config.seeds)
    ]


def check_run(config: SweepConfig) -> None:
    """Fail before any trial starts if the run folder lacks a model a method needs or a task is invalid for it."""
    from internal_rl.models.base_model import load_base_model
    from internal_rl.rl.training import env_config_of_run, load_method_metacontroller

    base_model = load_base_model(Path(config.run))
    for task in config.tasks:
        env_config_of_run(Path(config.run), base_model, parse_task(task))
    for method in config.methods:
        load_method_metacontroller(Path(config.run), method)


def run_trial(params: dict[str, Any]) -> dict[str, Any]:
    """One trial: `run_rl` into its group's folder (or the result already there); returns the summary Tune records."""
    import torch

    from internal_rl.rl.training import run_rl

    torch.set_num_threads(params["cpus"])
    group = Path(params["out"]) / group_name(params["task"], params["hyperparameters"])
    path = result_path(group, params["method"], params["seed"])
    if path.is_file():  # finished before an interruption
        result = load_json(path)
    else:
        config = rl_config(params["preset"], params["method"], **params["hyperparameters"])
        result = run_rl(params["method"], Path(params["run"]), parse_task(params["task"]), params["seed"], config,
                        show_progress=False, results_dir=group)
    return {"final_success": result["final_eval"]["success_rate"], "episodes": result["episodes"],
            "env_steps": result["env_steps"], "seconds": result["timing"]["seconds"]}


def _tune_trainable(space: dict[str, Any]) -> None:
    from ray import tune

    tune.report(run_trial(space["trial"]))


def run_sweep(config: SweepConfig, address: str | None = None) -> Path:
    """Run (or resume) the sweep on Ray (the one already initialised, else a local one or the cluster at
    `address`); write every group's report and OUT/report.md.

    Returns OUT/report.md. Trials that fail raise one `InternalRLError` naming them (after the others ran).
    """
    require_ray()
    from ray import tune

    check_run(config)
    init_ray(address)
    out = config.out_dir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    recorded = out / "sweep.json"
    settings = json.loads(json.dumps(asdict(config)))  # tuples -> lists, as read back
    if recorded.is_file():
        before = load_json(recorded)
        for key in ("run", "preset"):  # results in OUT are reused by trial name, so these must not change
            if before.get(key) != settings[key]:
                raise ConfigError(f"{out} holds a sweep with {key} {before.get(key)!r}, not {settings[key]!r}; "
                                  "use another 'out'")
    save_json(recorded, settings)

    constants = {"run": str(Path(config.run).resolve()), "out": str(out), "preset": config.preset,
                 "cpus": config.cpus_per_trial}
    grid = [{**t, **constants} for t in trials(config)]
    param_space = {"trial": tune.grid_search(grid)}
    trainable = tune.with_resources(_tune_trainable, {"cpu": config.cpus_per_trial})
    # One Tune experiment per trial list: the same sweep resumes it, a changed one starts another.
    name = TUNE_DIR_PREFIX + hashlib.sha256(json.dumps(grid, sort_keys=True).encode()).hexdigest()[:10]
    experiment = out / name
    if tune.Tuner.can_restore(str(experiment)):
        tuner = tune.Tuner.restore(str(experiment), trainable, resume_unfinished=True, resume_errored=False,
                                   restart_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(max_concurrent_trials=config.max_concurrent_trials or None),
            run_config=tune.RunConfig(name=name, storage_path=str(out), verbose=0),
        )
    results = tuner.fit()
    report = write_sweep_report(config)
    if results.errors:
        first = str(results.errors[0]).strip().splitlines()[-1]
        raise InternalRLError(f"{len(results.errors)} sweep trial(s) failed (first: {first}); "
                              f"run the sweep again to retry them; logs in {experiment}")
    return report


def write_sweep_report(config: SweepConfig) -> Path:
    """Each group's report (the ordinary run report) and OUT/results.json + OUT/report.md over the groups."""
    from internal_rl.pipeline.report import METHOD_NAMES, rl_summary, write_report

    def fmt(x: float | None, digits: int = 3) -> str:
        return "n/a" if x is None else f"{x:.{digits}f}"

    out = config.out_dir.resolve()
    groups: dict[str, Any] = {}
    for t in trials(config):
        name = group_name(t["task"], t["hyperparameters"])
        if name not in groups and (out / name / "rl").is_dir():
            write_report(out / name)
            groups[name] = {"task": t["task"], "hyperparameters": t["hyperparameters"], "methods": rl_summary(out / name)}
    save_json(out / "results.json", {"sweep": json.loads(json.dumps(asdict(config))), "groups": groups})
    lines = [f"# internal-rl sweep: {out.name}", "", f"Run folder `{config.run}`, preset `{config.preset}`, "
             f"{len(trials(config))} trials. Each group's own report is in its folder; `results.json` holds these numbers.", "",
             "| group | method | held-out success (start -> end) | episodes to 90% | episodes | seeds |",
             "|---|---|---|---|---|---|"]
    for name, group in groups.items():
        for method, m in group["methods"].items():
            lines.append(f"| [{name}]({name}/report.md) | {METHOD_NAMES.get(method, method)} | {fmt(m['initial_success'])} -> "
                         f"{fmt(m['final_success'])} | {fmt(m['episodes_to_90'], 0)} | {m['episodes']} | {m['seeds']} |")
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
