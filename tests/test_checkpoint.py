"""Checkpoint folders: atomic, verified on load, and damaged or stale files named in one line."""

import json

import pytest
import torch

from internal_rl.cli import main
from internal_rl.common.checkpoint import CHECKSUMS, TRAINING_STATE, WEIGHTS, load_checkpoint, save_checkpoint
from internal_rl.common.errors import CheckpointError


def _save(path, state=True):
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 4)
    save_checkpoint(path, model, {"sizes": [8, 4]}, {"step": 3, "opt": torch.randn(16)} if state else None)
    return model


def test_round_trip_records_each_file_with_its_size_and_digest(tmp_path):
    model = _save(tmp_path / "ckpt")
    weights, config, state = load_checkpoint(tmp_path / "ckpt")
    assert torch.equal(weights["weight"], model.weight) and config == {"sizes": [8, 4]} and state["step"] == 3
    recorded = json.loads((tmp_path / "ckpt" / CHECKSUMS).read_text())
    assert set(recorded) == {WEIGHTS, "config.json", TRAINING_STATE}
    assert recorded[WEIGHTS]["bytes"] == (tmp_path / "ckpt" / WEIGHTS).stat().st_size


@pytest.mark.parametrize("name", [WEIGHTS, TRAINING_STATE])
@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_a_damaged_file_is_named_in_a_checkpoint_error(tmp_path, name, damage):
    _save(tmp_path / "ckpt")
    file = tmp_path / "ckpt" / name
    data = file.read_bytes()
    if damage == "truncate":
        file.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        file.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    else:
        file.unlink()
    expected = "no checkpoint" if (damage == "delete" and name == WEIGHTS) else name
    with pytest.raises(CheckpointError, match=expected):
        load_checkpoint(tmp_path / "ckpt")


def test_a_damaged_checkpoint_without_checksums_is_still_a_checkpoint_error(tmp_path):
    _save(tmp_path / "ckpt")
    (tmp_path / "ckpt" / CHECKSUMS).unlink()  # as saved before checksums were kept
    file = tmp_path / "ckpt" / WEIGHTS
    file.write_bytes(file.read_bytes()[:40])
    with pytest.raises(CheckpointError, match="is damaged"):
        load_checkpoint(tmp_path / "ckpt")


def test_the_next_save_removes_what_a_killed_save_left(tmp_path):
    stale = tmp_path / ".ckpt.tmp-deadbeef"
    stale.mkdir()
    (stale / WEIGHTS).write_bytes(b"x" * 1000)
    _save(tmp_path / "ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_cli_names_a_truncated_base_model_in_one_line(tmp_path, capsys, tiny_base_model, make_run_folder):
    run = make_run_folder(tmp_path / "run", tiny_base_model)
    weights = run.checkpoint("pretrain") / WEIGHTS
    weights.write_bytes(weights.read_bytes()[:100])
    assert main(["probe", "--run", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "truncated" in err and WEIGHTS in err
