"""The command line's own contracts: options reach the library as documented, and bad values are refused with
one line (exit status 2) before anything starts."""

import sys

import pytest

from internal_rl.cli import main
from internal_rl.common.config import load_json


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.fixture
def no_ray(monkeypatch):
    """`import ray` fails, as without the extra: an error that is not Ray's shows the check came first."""
    monkeypatch.setitem(sys.modules, "ray", None)


@pytest.mark.parametrize("workers", ["0", "-2"])
def test_workers_is_checked_the_same_way_for_generate_and_rl_before_ray_starts(tmp_path, capsys, no_ray, workers):
    generate = ["generate", "gridworld", "--episodes", "4", "--out", str(tmp_path / "d"), "--ray"]
    rl = ["rl", "--run", str(tmp_path / "run"), "--method", "raw", "--task", "0", "--ray"]
    errors = []
    for argv in (generate, rl):
        assert main(argv + ["--workers", workers]) == 2
        errors.append(one_line_error(capsys).split("error: ", 1)[1])
    assert errors[0] == errors[1] and f"workers {workers}" in errors[0] and "positive integer" in errors[0]
    assert not (tmp_path / "d").exists()


def test_workers_without_ray_is_refused(tmp_path, capsys):
    assert main(["generate", "gridworld", "--episodes", "4", "--out", str(tmp_path / "d"), "--workers", "2"]) == 2
    assert "--workers 2 needs --ray" in one_line_error(capsys)
    assert not (tmp_path / "d").exists()


def test_rl_accepts_every_preset_of_the_rl_code_and_lists_them_for_a_bad_one(tmp_path, capsys):
    from internal_rl.rl.training import METHODS, PRESETS

    def run(method: str) -> list[str]:
        return ["rl", "--run", str(tmp_path / "missing"), "--method", method, "--task", "0"]

    for name in PRESETS:  # accepted for every method: the failure is the missing run folder, not the preset
        for method in METHODS:
            assert main(run(method) + ["--preset", name]) == 2
            err = one_line_error(capsys)
            assert "RL preset" not in err and "checkpoint" in err
    assert main(run("raw") + ["--preset", "huge"]) == 2
    err = one_line_error(capsys)
    assert "unknown RL preset 'huge'" in err and all(repr(name) in err for name in PRESETS)


@pytest.mark.parametrize(("argv", "expected"), [([], {}), (["--rank", "full"], {"rank": None}),
                                                (["--rank", "4"], {"rank": 4})])
def test_metacontroller_rank_reaches_the_training_run(tmp_path, monkeypatch, argv, expected):
    import internal_rl.pipeline.metacontroller_stage as stage

    calls = []

    def fake_run(run_dir, **kwargs):
        calls.append(kwargs)
        final = {"heldout_nll": 0.0, "heldout_kl": 0.0, "heldout_switches_per_episode": 0.0}
        return {"stage": str(run_dir), "train_seconds": 0.0, "final": final}

    monkeypatch.setattr(stage, "train_metacontroller_run", fake_run)
    assert main(["metacontroller", "--run", str(tmp_path)] + argv) == 0
    assert {k: v for k, v in calls[0].items() if k == "rank"} == expected


@pytest.mark.parametrize("rank", ["0", "-1", "half"])
def test_metacontroller_refuses_a_bad_rank(tmp_path, capsys, rank):
    with pytest.raises(SystemExit) as exit_:
        main(["metacontroller", "--run", str(tmp_path), "--rank", rank])
    assert exit_.value.code == 2 and "positive integer or 'full'" in capsys.readouterr().err


def test_generate_mean_actions(tmp_path, capsys):
    out = tmp_path / "clean"
    assert main(["generate", "point-pinpad", "--episodes", "3", "--out", str(out), "--mean-actions"]) == 0
    manifest = load_json(out / "manifest.json")
    assert manifest["expert_mean_actions"] is True and manifest["expert_config"]["noise_std"] == 0.0
    capsys.readouterr()
    assert main(["generate", "gridworld", "--episodes", "3", "--out", str(tmp_path / "g"), "--mean-actions"]) == 0
    assert load_json(tmp_path / "g" / "manifest.json")["expert_mean_actions"] is True
    capsys.readouterr()
    args = ["generate", "gridworld", "--episodes", "3", "--out", str(tmp_path / "h"), "--mean-actions", "--epsilon", "0.1"]
    assert main(args) == 2
    assert "noiseless expert" in one_line_error(capsys)
    assert not (tmp_path / "h").exists()


def test_rl_batch_override_is_checked(tmp_path, capsys):
    from internal_rl.rl.training import rl_config

    assert rl_config("quick", "internal", batch=256, lr=1e-3).ppo.episodes_per_batch == 256
    assert main(["rl", "--run", str(tmp_path), "--method", "internal", "--batch", "1"]) == 2
    assert "episodes_per_batch must be >= 2" in one_line_error(capsys)


def test_threads_sets_torch_and_refuses_a_bad_count(tmp_path, capsys):
    import torch

    before = torch.get_num_threads()
    try:
        assert main(["--threads", "1", "report", "--run", str(tmp_path / "none")]) == 2  # the run is missing
        assert torch.get_num_threads() == 1
        for bad in ("0", "-1", "two"):
            with pytest.raises(SystemExit) as exit_:
                main(["--threads", bad, "report", "--run", str(tmp_path)])
            assert exit_.value.code == 2 and "positive number of threads" in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)


def test_report_refuses_a_folder_that_is_not_a_run_and_writes_nothing(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "manifest.json").write_text("{}")
    for run in (tmp_path / "nope", tmp_path / "data" / "manifest.json", tmp_path / "data"):
        assert main(["report", "--run", str(run)]) == 2
        assert "run folder" in one_line_error(capsys)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["manifest.json"]


@pytest.mark.parametrize("argv, message", [
    (["generate", "gridworld", "--episodes", "4", "--out", "{tmp}/d", "--seed", "-1"], "expected a seed"),
    (["pretrain", "--data", "{tmp}/d", "--out", "{tmp}/r", "--seed", "-1"], "expected a seed"),
    (["rl", "--run", "{tmp}/r", "--method", "raw", "--first-seed", "-1"], "expected a seed"),
    (["rl", "--run", "{tmp}/r", "--method", "raw", "--lr", "inf"], "finite number"),
    (["metacontroller", "--run", "{tmp}/r", "--alpha", "inf"], "finite number"),
    (["metacontroller", "--run", "{tmp}/r", "--alpha", "nan"], "finite number"),
    (["analyse", "--run", "{tmp}/r", "--alpha-sweep", "inf"], "finite numbers"),
    (["analyse", "--run", "{tmp}/r", "--alpha-sweep", ""], "finite numbers"),
    (["alpha-sweep", "--run", "{tmp}/r", "--alphas", "nan"], "finite numbers"),
    (["steer", "--run", "{tmp}/r", "--seed", "-3"], "expected a seed"),
    (["probe", "--run", "{tmp}/r", "--seed", "x"], "expected a seed"),
])
def test_bad_numbers_are_refused_before_anything_runs(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        main([a.format(tmp=tmp_path) for a in argv])
    assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv", [
    ["rl", "--run", "{tmp}", "--method", "raw", "--task", ""],
    ["analyse", "--run", "{tmp}", "--code-replay", ""],
    ["code-replay", "--run", "{tmp}", "--task", ""],
])
def test_an_empty_task_is_refused_not_taken_for_the_default(tmp_path, capsys, argv):
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    assert "bad task ''" in one_line_error(capsys)


def test_pretrain_resume_with_nothing_to_resume_is_refused(tmp_path, capsys):
    assert main(["pretrain", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "r"), "--resume"]) == 2
    assert "no checkpoint to continue" in one_line_error(capsys)
    assert not (tmp_path / "r").exists()


def test_rl_resume_and_force_together_are_refused(tmp_path, capsys):
    assert main(["rl", "--run", str(tmp_path), "--method", "raw", "--task", "0", "--resume", "--force"]) == 2
    assert "pick one" in one_line_error(capsys)
    assert list(tmp_path.iterdir()) == []


def test_steer_refuses_zero_steps(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["steer", "--run", str(tmp_path), "--steps", "0"])
    assert exit_.value.code == 2 and "positive integer" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["generate", "gridworld", "--episodes", "4"],
                                     ["pretrain", "--data", "nowhere"], ["reproduce", "gridworld"]])
def test_an_output_folder_that_cannot_be_written_is_named_as_given(tmp_path, capsys, command):
    (tmp_path / "a-file").write_text("x")
    for out, message in ((tmp_path / "a-file", "is a file"), (tmp_path / "a-file" / "sub", "no folder can be made"),
                         ("/proc/internal-rl-test", "cannot write in /proc")):
        assert main(command + ["--out", str(out)]) == 2
        assert message in one_line_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


@pytest.mark.parametrize("argv, existing", [
    (["probe", "--run", "{tmp}"], "probes.json"),
    (["steer", "--run", "{tmp}"], "steering.json"),
    (["analyse", "--run", "{tmp}"], "switching.json"),
    (["analyse", "--run", "{tmp}", "--stage", "metacontroller-no-switch"], "switching_metacontroller-no-switch.json"),
    (["analyse", "--run", "{tmp}", "--code-replay", "0-1"], "code_replay.json"),
    (["analyse", "--run", "{tmp}", "--alpha-sweep", "0.1"], "alpha_sweep.json"),
    (["code-replay", "--run", "{tmp}", "--task", "0-1"], "code_replay.json"),
    (["code-replay", "--run", "{tmp}", "--task", "0-1", "--stage", "compile"], "code_replay_compile.json"),
    (["alpha-sweep", "--run", "{tmp}", "--alphas", "0.1"], "alpha_sweep.json"),
    (["rl", "--run", "{tmp}", "--method", "raw", "--task", "0-1", "--seeds", "2"], "rl/raw/seed_1.json"),
])
def test_results_written_earlier_are_replaced_only_with_force(tmp_path, capsys, argv, existing):
    path = tmp_path / existing
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('{"task": [0, 1]}')
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    assert f"{path} exists; pass --force to overwrite" in one_line_error(capsys)
    assert path.read_text() == '{"task": [0, 1]}'


def test_rl_refuses_to_mix_tasks_in_one_methods_seeds(tmp_path, capsys):
    (tmp_path / "rl" / "raw").mkdir(parents=True)
    (tmp_path / "rl" / "raw" / "seed_0.json").write_text('{"task": [0, 1]}')
    assert main(["rl", "--run", str(tmp_path), "--method", "raw", "--task", "2-3", "--first-seed", "1"]) == 2
    assert "is on task 0-1, not 2-3" in one_line_error(capsys)
    assert sorted(p.name for p in (tmp_path / "rl" / "raw").iterdir()) == ["seed_0.json"]


def test_pretrain_names_the_preset_that_fits_the_datas_environment(tmp_path, capsys):
    assert main(["generate", "point-pinpad", "--episodes", "2", "--out", str(tmp_path / "d")]) == 0
    capsys.readouterr()
    assert main(["pretrain", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "r")]) == 2
    assert "holds point-pinpad data; use --preset quick-pinpad or paper-ant" in one_line_error(capsys)
    assert not (tmp_path / "r").exists()


def test_metacontroller_refuses_another_stages_folder(tmp_path, capsys):
    assert main(["metacontroller", "--run", str(tmp_path), "--stage", "pretrain"]) == 2
    assert "--stage pretrain is a folder of the run's other stages" in one_line_error(capsys)


def test_pretrain_refuses_a_dataset_of_an_unregistered_env(tmp_path, capsys):
    import json

    assert main(["generate", "gridworld", "--episodes", "2", "--out", str(tmp_path / "d")]) == 0
    manifest = tmp_path / "d" / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "env": "moonwalk"}))
    capsys.readouterr()
    assert main(["pretrain", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "r")]) == 2
    assert "names env 'moonwalk', which is not registered" in one_line_error(capsys)
    assert not (tmp_path / "r").exists()


def test_label_free_refuses_a_run_without_a_base_model_and_keeps_an_earlier_fit(tmp_path, capsys):
    assert main(["label-free", "--run", str(tmp_path)]) == 2
    assert "pretrain" in one_line_error(capsys)
    (tmp_path / "hmm-switch").mkdir()
    assert main(["label-free", "--run", str(tmp_path)]) == 2
    assert f"{tmp_path / 'hmm-switch'} exists; pass --force to overwrite" in one_line_error(capsys)
