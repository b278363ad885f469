"""The run folder's layout (`pipeline/run_folder.py`): the paths every run written so far uses, so old run
folders resume, and what a run records (its dataset, its environment, the base model of a stage)."""

import pytest
import torch

from internal_rl.common.errors import CheckpointError, ConfigError
from internal_rl.data.generate import generate_trajectories
from internal_rl.envs.gridworld import GridWorldConfig
from internal_rl.envs.tasks import GRID_POSTTRAIN_TASK
from internal_rl.metacontroller.modules import Metacontroller, MetacontrollerConfig, load_metacontroller
from internal_rl.models.base_model import load_base_model
from internal_rl.pipeline.run_folder import RunFolder, stage_suffix


def test_the_layout_is_the_one_old_run_folders_have(tmp_path):
    run = RunFolder(tmp_path)
    expected = {
        run.data: "data", run.clean_data: "data-clean", run.pretrain: "pretrain", run.pretrain_eval: "pretrain/eval.json",
        run.checkpoint("pretrain"): "pretrain/checkpoint", run.tensorboard("metacontroller"): "metacontroller/tb",
        run.checkpoint("metacontroller-no-switch"): "metacontroller-no-switch/checkpoint",
        run.stage_summary("compile"): "compile/summary.json",
        run.cotrained_base_model("metacontroller-cotrained"): "metacontroller-cotrained/base_model",
        run.probes: "probes.json", run.probes_plot: "probes.png", run.steering: "steering.json",
        run.steering_plot: "steering.png",
        run.steering_controller("blocks.2.hook_resid_post"): "steering_controllers/blocks.2.hook_resid_post",
        run.switching(): "switching.json", run.switching_plot(): "switching_beta.png",
        run.switching("metacontroller-no-switch"): "switching_metacontroller-no-switch.json",
        run.switching("compile"): "switching_compile.json",
        run.switching(RunFolder.alpha_sweep_stage(0.05)): "switching_alpha_0.05.json",
        run.code_replay(): "code_replay.json", run.code_replay("compile"): "code_replay_compile.json",
        run.stage(RunFolder.alpha_sweep_stage(0.1)): "alpha_sweep/alpha_0.1",
        run.alpha_sweep: "alpha_sweep.json", run.alpha_sweep_plot: "alpha_sweep.png",
        run.rl_result("raw", 3): "rl/raw/seed_3.json", run.rl_tensorboard("raw", 3): "rl/raw/tensorboard/seed_3",
        run.videos_record: "videos/videos.json", run.stage_marker("probe"): "stages/probe.json",
        run.reproduce_record: "reproduce.json", run.report: "report.md", run.results: "results.json",
        run.figures: "figures",
    }
    for path, relative in expected.items():
        assert path == tmp_path / relative
    assert stage_suffix("metacontroller") == "" and stage_suffix("compile") == "_compile"


def test_a_run_knows_its_dataset_environment_and_post_training_task(tmp_path, tiny_base_model, make_run_folder):
    data = generate_trajectories("gridworld", 4, seed=0).save(tmp_path / "data")
    run = make_run_folder(tmp_path / "run", tiny_base_model, data=data)
    assert run.dataset() == data and run.dataset_or(tmp_path / "other") == tmp_path / "other"
    assert isinstance(run.env_config(), GridWorldConfig) and run.posttrain_task() == GRID_POSTTRAIN_TASK
    loaded = run.base_model()
    assert all(torch.equal(a, b) for a, b in zip(loaded.parameters(), tiny_base_model.parameters()))
    assert not loaded.training


def test_a_run_without_a_recorded_or_present_dataset_is_refused_with_the_way_out(tmp_path, tiny_base_model,
                                                                                   make_run_folder):
    run = make_run_folder(tmp_path / "run", tiny_base_model)
    with pytest.raises(ConfigError, match="pass --data DIR"):
        run.dataset()
    moved = make_run_folder(tmp_path / "moved", tiny_base_model, data=tmp_path / "gone")
    with pytest.raises(CheckpointError, match="gone .*is missing"):
        moved.env_config()


def test_a_run_resolves_its_checkpoints_and_the_component_loaders_take_only_checkpoint_or_stage_folders(
        tmp_path, tiny_base_model, make_run_folder):
    metacontroller = Metacontroller(MetacontrollerConfig(d_model=16, hook="blocks.0.hook_resid_post", n_z=2, rank=2,
                                                         embedder_width=8))
    run = make_run_folder(tmp_path / "run", tiny_base_model, metacontrollers={"metacontroller": metacontroller,
                                                                            "compile-like": metacontroller})
    assert run.base_model_checkpoint() == tmp_path / "run" / "pretrain" / "checkpoint"
    assert run.base_model_checkpoint("metacontroller") == run.base_model_checkpoint()  # no co-trained base model
    assert run.metacontroller_checkpoint() == tmp_path / "run" / "metacontroller" / "checkpoint"
    assert run.metacontroller_checkpoint("compile-like") == tmp_path / "run" / "compile-like" / "checkpoint"
    assert run.metacontroller().config == metacontroller.config and not run.metacontroller().training
    assert not run.base_model(frozen=False).freeze().training
    # The loaders read a checkpoint folder or the stage folder holding it; a whole run folder is RunFolder's.
    assert load_base_model(run.pretrain).config == load_base_model(run.base_model_checkpoint()).config
    assert load_metacontroller(run.stage("metacontroller")).config == metacontroller.config
    with pytest.raises(CheckpointError, match="no base model checkpoint .*RUN/pretrain"):
        load_base_model(run.root)
    with pytest.raises(CheckpointError, match="no metacontroller checkpoint .*RUN/metacontroller"):
        load_metacontroller(run.root)
    with pytest.raises(CheckpointError, match="no metacontroller checkpoint"):
        run.metacontroller("missing")
