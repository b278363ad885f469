"""The shipped checkpoints that `reproduce --preset demo` starts from: they load, match the preset that trained
them, and still give their recorded held-out NLL."""

import dataclasses

import pytest

from internal_rl.common.checkpoint import load_checkpoint
from internal_rl.common.config import config_to_dict, load_json
from internal_rl.common.errors import ConfigError
from internal_rl.data.generate import env_config_from_manifest
from internal_rl.metacontroller.modules import load_metacontroller
from internal_rl.metacontroller.training import preset as metacontroller_preset
from internal_rl.models.base_model import load_base_model
from internal_rl.models.pretraining import pretrain_preset
from internal_rl.pipeline.reproduce import reproduce_preset
from internal_rl.pipeline.run_folder import RunFolder
from internal_rl.pipeline.shipped import PROVENANCE, heldout_check, install_shipped, shipped_path, shipped_stages

DEMO = reproduce_preset("demo")
SHIPPED = shipped_path(DEMO.shipped)
PROV = load_json(SHIPPED / PROVENANCE)


def test_the_demo_ships_what_the_quick_preset_trains():
    assert PROV["reproduce"]["env"] == "gridworld" and PROV["reproduce"]["preset"] == "quick"
    assert set(shipped_stages(DEMO.shipped)) == {"pretrain", "metacontroller", "metacontroller-no-switch"}
    quick = reproduce_preset("quick")
    assert dataclasses.replace(DEMO, episodes=quick.episodes, clean_episodes=quick.clean_episodes, shipped=None) == quick


def test_the_base_model_matches_its_preset_and_its_recorded_heldout_nll():
    _, config, state = load_checkpoint(SHIPPED / "pretrain" / "checkpoint")
    assert state is None  # weights only: a model to use, not a run to resume
    model = load_base_model(SHIPPED / "pretrain")
    expected = dataclasses.replace(pretrain_preset("quick").model, obs_dim=model.config.obs_dim)
    assert config_to_dict(model.config) == config_to_dict(expected)
    assert config["pretrain"]["steps"] == pretrain_preset("quick").steps
    check = heldout_check(SHIPPED / "pretrain", env_config_from_manifest(PROV["dataset"]))
    assert check["action_nll"] == pytest.approx(PROV["heldout_check"]["action_nll"], abs=1e-4)


@pytest.mark.parametrize("stage,force_switch", [("metacontroller", False), ("metacontroller-no-switch", True)])
def test_the_metacontrollers_load_and_match_their_preset(stage, force_switch):
    metacontroller = load_metacontroller(SHIPPED / stage)
    assert metacontroller.config.force_switch == force_switch
    assert metacontroller.config.d_model == load_base_model(SHIPPED / "pretrain").d_model
    _, config, _ = load_checkpoint(SHIPPED / stage / "checkpoint")
    assert config["train"] == config_to_dict(metacontroller_preset(DEMO.metacontroller)) and config["step"] == config["train"]["steps"]


def test_install_puts_a_stage_into_a_run_folder(tmp_path):
    summary = install_shipped(DEMO.shipped, "pretrain", tmp_path)
    assert summary == load_json(tmp_path / "pretrain" / "eval.json")
    assert RunFolder(tmp_path).base_model().d_model == load_base_model(SHIPPED / "pretrain").d_model
    with pytest.raises(ConfigError, match="no shipped checkpoints 'nope'"):
        install_shipped("nope", "pretrain", tmp_path)
    with pytest.raises(ConfigError, match="no 'probe' stage"):
        install_shipped(DEMO.shipped, "probe", tmp_path)


def test_the_demo_pipeline_installs_the_shipped_models_instead_of_training(tmp_path, monkeypatch):
    from internal_rl.pipeline import reproduce
    from internal_rl.pipeline.reproduce import pipeline_stages

    # The analyses that follow the metacontroller stage are tested elsewhere; here only what they are given.
    analysed = []
    monkeypatch.setattr(reproduce, "analyse_run", lambda run, stage_name: analysed.append(stage_name) or
                        {"subgoal_switches": {"f1": 1.0}, "nmi": {"segment": 0.0}})
    monkeypatch.setattr(reproduce, "replay_run", lambda run, task, seed: {"demonstration": {"success": 0.0}})
    preset = dataclasses.replace(DEMO, episodes=64, clean_episodes=64)
    stages = {stage.name: stage for stage in pipeline_stages("gridworld", preset, show_progress=False)}
    stages["generate"].run(tmp_path)
    summary = stages["pretrain"].run(tmp_path)
    assert summary["shipped"] == DEMO.shipped
    assert summary["action_accuracy"] == PROV["stages"]["pretrain"]["summary"]["held_out"]["action_accuracy"]
    # The installed model reads the run's own data; it records the data it was trained on.
    _, config, _ = load_checkpoint(tmp_path / "pretrain" / "checkpoint")
    assert config["dataset"]["path"] == str(tmp_path / "data") and config["dataset"]["trained_on"]["episodes"] == 200_000
    stages["metacontroller"].run(tmp_path)
    assert analysed == ["metacontroller"]
    assert not (tmp_path / "metacontroller" / "tb").exists()  # installed, not trained
    metacontroller = RunFolder(tmp_path).metacontroller()
    assert metacontroller.config == load_metacontroller(SHIPPED / "metacontroller").config


def test_the_report_says_which_models_were_shipped(tmp_path):
    from internal_rl.common.config import save_json
    from internal_rl.pipeline.report import write_report

    install_shipped(DEMO.shipped, "pretrain", tmp_path)
    save_json(tmp_path / "reproduce.json", {"env": "gridworld", "preset": "demo", "config": {"shipped": DEMO.shipped}})
    text = write_report(tmp_path).read_text()
    assert f"shipped `{DEMO.shipped}` models" in text
    assert load_json(tmp_path / "results.json")["shipped"] == DEMO.shipped
