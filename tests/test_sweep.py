"""Sweep files are checked whole when read (presets, keys, value types), so a bad one fails once with one
line, before Ray starts or any trial runs; the trial list; the report is written atomically. (Running
sweeps on Ray: test_distributed.py.)"""

import json
import sys
from pathlib import Path

import pytest

from internal_rl.cli import main
from internal_rl.common.errors import ConfigError
from internal_rl.pipeline.sweep import load_sweep_config, start_sweep_folder, trials, write_sweep_report

GOOD = {"run": "run", "methods": ["internal", "raw"], "seeds": 2, "tasks": ["0-1"], "preset": "paper-ant",
        "grid": {"lr": [0.001, 0.003], "episodes": [128]}}


def write(tmp_path, **changes):
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps({**GOOD, **changes}))
    return path


def test_a_good_sweep_file_gives_every_trial(tmp_path):
    config = load_sweep_config(write(tmp_path))
    assert config.run == str((tmp_path / "run").resolve()) and config.seeds == (0, 1)
    assert len(trials(config)) == 2 * 2 * 2  # methods x seeds x lr values
    assert {t["method"] for t in trials(config)} == {"internal", "raw"}


@pytest.mark.parametrize(("changes", "message"), [
    ({"preset": "huge"}, "unknown RL preset 'huge'"),
    ({"preset": 3}, "'preset' must be"),
    ({"methods": "internal"}, "'methods' must be a non-empty list"),
    ({"methods": ["internal", "greedy"]}, "unknown RL method 'greedy'"),
    ({"seeds": "3"}, "'seeds' must be a count or a list of integers"),
    ({"seeds": [0, 1.5]}, "'seeds' must be a count or a list of integers"),
    ({"seeds": 0}, "'seeds' 0 must be >= 1"),
    ({"tasks": ["0-x"]}, "bad task '0-x'"),
    ({"tasks": "0-1"}, "'tasks' must be a non-empty list"),
    ({"grid": {"lr": ["fast"]}}, "grid.lr must be a non-empty list of positive finite numbers"),
    ({"grid": {"lr": [float("inf")]}}, "grid.lr must be a non-empty list of positive finite numbers"),
    ({"seeds": [-1]}, "'seeds' must be a count or a list of integers >= 0"),
    ({"grid": {"episodes": [0]}}, "grid.episodes must be a non-empty list of positive integers"),
    ({"grid": {"episodes": [1.5]}}, "grid.episodes must be a non-empty list of positive integers"),
    ({"grid": {"batch": [1]}}, "grid.batch must be a non-empty list of integers >= 2"),
    ({"grid": {"gamma": [0.9]}}, "unknown sweep hyperparameter 'gamma'"),
    ({"grid": [0.1]}, "'grid' must map"),
    ({"cpus_per_trial": True}, "cpus_per_trial True"),
    ({"gpus_per_trial": -0.5}, "gpus_per_trial -0.5"),
    ({"max_concurrent_trials": -1}, "max_concurrent_trials -1"),
    ({"out": 5}, "'out' must be a folder"),
    ({"colour": 1}, "unknown key(s) ['colour']"),
])
def test_a_bad_sweep_file_is_refused_when_read(tmp_path, changes, message):
    path = write(tmp_path, **changes)
    with pytest.raises(ConfigError) as err:
        load_sweep_config(path)
    assert message in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)


def test_the_cli_refuses_a_bad_preset_before_ray_starts(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # were Ray reached first, the error would be its absence
    assert main(["sweep", str(write(tmp_path, preset="huge"))]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown RL preset 'huge'" in err and "'paper-ant'" in err


def test_an_interrupted_report_write_leaves_the_previous_report(tmp_path, monkeypatch):
    config = load_sweep_config(write(tmp_path, out="sweep"))
    start_sweep_folder(config)
    report = write_sweep_report(config)  # no trial has finished yet: an empty table
    before = report.read_text()
    replace = Path.replace

    def fail_on_the_report(self, target):
        if Path(target).name == "report.md":
            raise OSError("disk full")
        return replace(self, target)

    monkeypatch.setattr(Path, "replace", fail_on_the_report)
    with pytest.raises(OSError, match="disk full"):
        write_sweep_report(load_sweep_config(write(tmp_path, out="sweep", preset="paper")))
    assert report.read_text() == before and "preset `paper-ant`" in before  # not the new one's `paper`
    assert sorted(p.name for p in report.parent.iterdir()) == ["report.md", "results.json", "sweep.json"]  # no temporary


def test_a_folder_given_as_the_sweep_file_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="is a folder; expected a JSON file"):
        load_sweep_config(tmp_path)
