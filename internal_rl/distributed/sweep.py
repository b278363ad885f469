"""Sweeps on Ray Tune: each trial of a sweep (`pipeline.sweep`) as one Tune trial, resumable.

What a sweep runs, its folders and its report are `internal_rl.pipeline.sweep`; here Tune only decides
where and when each `pipeline.sweep.run_trial` runs. Resume: Tune keeps the experiment state in
OUT/tune-<hash of the trial list>; calling the same sweep again restores it and runs only the unfinished or
failed trials, and a trial whose result file already exists reads it back, so adding seeds, methods, tasks
or grid values to a sweep file and running it again trains only the new trials.
"""

import hashlib
import json
from pathlib import Path
from typing import Any

from internal_rl.common.errors import InternalRLError
from internal_rl.distributed import init_ray, require_ray
from internal_rl.pipeline.sweep import SweepConfig, check_run, run_trial, start_sweep_folder, trials, write_sweep_report

TUNE_DIR_PREFIX = "tune-"


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
    out = start_sweep_folder(config)
    constants = {"run": str(Path(config.run).resolve()), "out": str(out), "preset": config.preset,
                 "cpus": config.cpus_per_trial, "gpus": config.gpus_per_trial}
    grid = [{**t, **constants} for t in trials(config)]
    param_space = {"trial": tune.grid_search(grid)}
    trainable = tune.with_resources(_tune_trainable, {"cpu": config.cpus_per_trial, "gpu": config.gpus_per_trial})
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
