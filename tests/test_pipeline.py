"""End-to-end: the whole grid-world pipeline on a tiny budget, resumed stage by stage, ending in a report."""

import dataclasses
import json

import pytest

from internal_rl.analysis.label_free_codes import LabelFreeConfig
from internal_rl.cli import main
from internal_rl.common.config import config_to_dict
from internal_rl.pipeline.reproduce import reproduce, reproduce_preset, stage_presets
from internal_rl.rl.training import LABEL_FREE, METHODS

TINY = dataclasses.replace(
    reproduce_preset("quick"),
    episodes=96,
    clean_episodes=96,
    pretrain_steps=20,
    probe_steps=20,
    steer_steps=10,
    steer_episodes=16,
    metacontroller_steps=10,
    rl_episodes=64,
    seeds=1,
    methods=(*METHODS, LABEL_FREE),
    label_free=LabelFreeConfig(n_codes=3, steps=5),
)


def test_reproduce_writes_every_section_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    report = reproduce("gridworld", out, "quick", show_progress=False, preset=TINY)

    text = report.read_text()
    task = "-".join(map(str, TINY.task))
    for section in ("## The headline's chain", "## Data", "## Base model", "## Linear probes", "## Supervised subgoal controllers",
                    "## Metacontroller", f"## RL on task {task} ", "## Wall time per stage"):
        assert section in text
    assert "_no " not in text  # every stage produced its results
    results = json.loads((out / "results.json").read_text())
    for method in METHODS:
        m = results["methods"][method]
        assert m["task"] == list(TINY.task)
        assert 0.0 <= m["final_success"] <= 1.0
        assert "episodes_to_90" in m and m["env_steps"] > 0
        assert 0.0 < m["expert_success"] <= 1.0
        assert m["normalised_success"] == pytest.approx(m["final_success"] / m["expert_success"])
    steering = results["steering"]
    assert steering["controlled_layer"] == 3  # L/2 of the 6-layer quick model
    for name in ("single", "override", "chained_post_training", "chained_pretraining"):
        assert 0.0 < steering[name]["expert_success"] <= 1.0 and "normalised_success" in steering[name]
    assert "| override |" in text
    assert "switching_cotrained" in results and "| co-trained with the base model |" in text
    assert len(results["pretrain"]["held_out"]["by_target"]) == 6 and "| target position | 0 | 1 | 2 | 3 | 4 | 5 |" in text
    assert "switching_compile" in results and "| CompILE |" in text
    assert (out / "metacontroller-cotrained" / "base_model" / "model.safetensors").is_file()
    assert set(results["switching"]) >= {"f1", "colour_f1", "nmi", "action_nll", "base_action_nll", "kl_per_episode",
                                         "supervised_subgoal_nll"}
    assert "with supervised subgoal controllers" in text
    assert f"| chained, task {task} |" in text  # the steering stage chains its controllers on the RL task
    assert 0.0 <= results["switching"]["code_probe"]["accuracy"] <= 1.0
    assert 0 <= results["switching"]["active_code_dimensions"] <= results["switching"]["code_dimensions"]
    discovered = results["switching"]["discovered_steering"]  # G2's second half, on the supervised ones' layouts
    for name in ("single", "override", "chained_post_training", "chained_pretraining"):
        assert discovered[name]["expert_success"] == steering[name]["expert_success"]
        assert discovered[name]["supervised_success"] == steering[name]["success"]
    assert "discovered controllers held" in text and "not measured here" not in text
    assert 0.0 <= results["code_replay"]["demonstration"]["success"] <= 1.0
    assert "Code replay on the RL task" in text and "code -> subgoal, linear probe" in text
    assert len(results["probes"]["accuracy_by_layer"]) == 7 and "best_layer" in results["probes"]
    assert (out / "figures" / "rl_success_vs_episodes.png").is_file()
    label_free = results["methods"][LABEL_FREE]  # the deviation: codes and switch found without labels
    assert label_free["task"] == list(TINY.task) and 0.0 <= label_free["final_success"] <= 1.0
    assert (out / "hmm-switch" / "summary.json").is_file() and (out / "label-free-codes" / "summary.json").is_file()
    assert "label-free codes" in text
    gates = results["gates"]  # every gate measured; the tiny run's RL task is not the post-training task
    assert all(gates[k]["passed"] is not None for k in ("G1", "G2", "G3")) and gates["G3"]["passed"] is False
    assert gates["G3"]["on_posttrain_task"] is (list(TINY.task) == [0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3])
    assert "## The headline's chain" in text and f"The chain first stops at **{gates['first_failing']}" in text

    # A second call redoes nothing but the report: the pretrained weights are untouched.
    weights = out / "pretrain" / "checkpoint" / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    reproduce("gridworld", out, "quick", show_progress=False, preset=TINY)
    assert weights.stat().st_mtime_ns == mtime

    # The code replay on another task, from the command line: it replaces the pipeline's only with --force.
    assert main(["analyse", "--run", str(out), "--code-replay", "0-1", "--episodes", "8"]) == 2
    assert "pass --force" in capsys.readouterr().err
    assert main(["analyse", "--run", str(out), "--code-replay", "0-1", "--episodes", "8", "--force"]) == 0
    assert "predicted linearly from the residual" in capsys.readouterr().out
    assert json.loads((out / "code_replay.json").read_text())["task"] == [0, 1]


def test_reproduce_refuses_another_preset_on_the_same_folder(tmp_path, capsys):
    (tmp_path / "reproduce.json").write_text(json.dumps({"env": "gridworld", "preset": "full"}))
    assert main(["reproduce", "gridworld", "--out", str(tmp_path), "--preset", "quick"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--preset full" in err


def test_reproduce_refuses_a_folder_started_with_other_budgets(tmp_path, capsys):
    config = config_to_dict(reproduce_preset("quick"))
    config["episodes"] = 50_000  # the folder of an older, smaller quick preset
    record = {"env": "gridworld", "preset": "quick", "config": config,
              "stage_presets": stage_presets(reproduce_preset("quick"))}
    (tmp_path / "reproduce.json").write_text(json.dumps(record))
    assert main(["reproduce", "gridworld", "--out", str(tmp_path), "--preset", "quick"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "(episodes)" in err and not (tmp_path / "stages").exists()


def test_reproduce_refuses_a_folder_whose_stage_presets_changed(tmp_path, capsys):
    # Same reproduce settings, but the pretraining preset they name trained fewer steps then.
    preset = reproduce_preset("quick")
    stages = stage_presets(preset)
    stages["pretrain"]["steps"] = 8000
    for folder, record in ((tmp_path / "older", {"stage_presets": stages}), (tmp_path / "unrecorded", {})):
        folder.mkdir()
        record.update(env="gridworld", preset="quick", config=config_to_dict(preset))
        (folder / "reproduce.json").write_text(json.dumps(record))
        assert main(["reproduce", "gridworld", "--out", str(folder), "--preset", "quick"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "the pretrain preset" in err and not (folder / "stages").exists()


def test_unknown_preset_is_a_one_line_error(tmp_path, capsys):
    assert main(["reproduce", "gridworld", "--out", str(tmp_path), "--preset", "huge"]) == 2
    assert "valid: ['demo', 'full', 'long', 'quick', 'stepping-stone']" in capsys.readouterr().err


POINT_TINY = dataclasses.replace(
    reproduce_preset("quick", "point-pinpad"),
    episodes=64,
    clean_episodes=48,
    horizon=60,
    pretrain_steps=10,
    probe_steps=10,
    steer_steps=4,
    steer_episodes=8,
    metacontroller_steps=4,
    rl_episodes=8,
    seeds=1,
    methods=METHODS,  # the pinpads co-train from the pretrained base model
)


def test_reproduce_point_pinpad_runs_every_stage_with_videos(tmp_path):
    out = tmp_path / "run"
    report = reproduce("point-pinpad", out, "quick", show_progress=False, preset=POINT_TINY)

    text = report.read_text()
    for section in ("## The headline's chain", "## Data", "## Base model", "## Linear probes", "## Supervised subgoal controllers",
                    "## Metacontroller", "## RL on task ", "## Videos", "## Wall time per stage"):
        assert section in text
    assert "_no " not in text
    results = json.loads((out / "results.json").read_text())
    assert results["env"] == "point-pinpad" and results["data"]["env"] == "point-pinpad"
    assert set(results["methods"]) == set(METHODS)
    assert json.loads((out / "metacontroller-cotrained" / "summary.json").read_text())["cotrain"] == "pretrained"
    assert len(results["probes"]["accuracy_by_layer"]) == 5  # the quick pinpad Hawk has 4 blocks
    assert "switching_cotrained" in results and "| co-trained with the base model |" in text
    assert "switching_compile" in results and "| CompILE |" in text
    assert (out / "metacontroller-cotrained" / "base_model" / "model.safetensors").is_file()
    assert set(results["switching"]) >= {"f1", "nmi"}
    discovered = json.loads((out / "switching.json").read_text())["controllers"]["codes"]
    videos = {p.name for p in (out / "videos").glob("*.gif")}
    assert videos >= {"expert.gif", "base_model.gif", "controllers_chained.gif"} | {
        f"controller_colour_{g}.gif" for g in range(4)
    } | {f"discovered_controller_{c}.gif" for c in range(len(discovered))}
    assert "(videos/expert.gif)" in text
    assert json.loads((out / "reproduce.json").read_text())["config"]["controller_rank"] is None


def test_reproduce_ant_pinpad_runs_every_stage(tmp_path):
    # The full horizon: the scripted ant needs about 240 steps for a 3-colour task. One RL method and no
    # videos (the point mass runs them all; MuJoCo rendering is tested with the env).
    tiny = dataclasses.replace(POINT_TINY, episodes=48, clean_episodes=48, horizon=None, steer_episodes=4,
                               rl_episodes=4, videos=False, methods=("internal",))
    report = reproduce("ant-pinpad", tmp_path / "run", "quick", show_progress=False, preset=tiny)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["env"] == "ant-pinpad" and set(results["methods"]) == {"internal"}
    assert results["data"]["expert_success_rate"] > 0.5
    assert "## RL on task 0-1-2-3" in report.read_text()


def test_reproduce_refuses_a_folder_it_did_not_start(tmp_path, capsys):
    (tmp_path / "mine.txt").write_text("a user's file")
    assert main(["reproduce", "gridworld", "--out", str(tmp_path)]) == 2
    assert "not started by `reproduce`" in capsys.readouterr().err
    (tmp_path / "mine.txt").unlink()
    (tmp_path / "reproduce.json").write_text("[1, 2]")
    assert main(["reproduce", "gridworld", "--out", str(tmp_path)]) == 2
    assert "not a reproduce record" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reproduce.json"]


def test_the_report_names_each_rows_task_when_methods_ran_on_different_tasks(tmp_path):
    from internal_rl.pipeline.report import _rl_lines

    row = dict(normalised_success=0.5, initial_success=0.1, final_success=0.4, expert_success=0.8,
               episodes_to_90_of_expert=None, episodes=64, env_steps=900, seeds=1)
    one_task = {"methods": {"raw": {**row, "task": [0, 1]}, "internal": {**row, "task": [0, 1]}}}
    mixed = {"methods": {"raw": {**row, "task": [0, 1]}, "internal": {**row, "task": [2, 3]}}}
    assert not any("different tasks" in line for line in _rl_lines(tmp_path, one_task, []))
    lines = _rl_lines(tmp_path, mixed, [])
    assert any("2 different tasks" in line for line in lines)
    assert any(line.startswith("| method | task |") for line in lines)
    assert any("| 2-3 |" in line for line in lines)
