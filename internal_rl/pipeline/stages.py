"""Resumable stages: a finished stage leaves a marker and is not redone; a killed stage starts again
(and stages with checkpoints continue from their latest one)."""

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from internal_rl.common.config import load_json, save_json
from internal_rl.pipeline.run_folder import RunFolder


@dataclass(frozen=True)
class Stage:
    """One step of a pipeline: `run(out_dir)` does the work and returns a JSON-ready summary."""

    name: str
    run: Callable[[Path], dict[str, Any]]


def run_stages(out: Path, stages: list[Stage], log: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    """Run every stage not yet finished under `out`, in order; return each stage's summary."""
    run = RunFolder(out)
    run.stage_markers.mkdir(parents=True, exist_ok=True)
    summaries = {}
    for i, stage in enumerate(stages, 1):
        marker = run.stage_marker(stage.name)
        if marker.is_file():
            summaries[stage.name] = load_json(marker)
            log(f"[{i}/{len(stages)}] {stage.name}: done already ({summaries[stage.name]['seconds']:.0f} s), skipped")
            continue
        log(f"[{i}/{len(stages)}] {stage.name} ...")
        start = time.perf_counter()
        summary = dict(stage.run(run.root) or {})
        summary["seconds"] = time.perf_counter() - start
        save_json(marker, summary)
        summaries[stage.name] = summary
        log(f"[{i}/{len(stages)}] {stage.name}: finished in {summary['seconds']:.0f} s")
    return summaries
