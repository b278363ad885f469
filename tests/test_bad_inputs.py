"""Property: every bad input is refused by the command line with one line and exit status 2, no traceback, and
nothing written or changed on disk. Hypothesis generates the bad values of every numeric flag, and corrupts
the files the commands read (a dataset, a base-model checkpoint) at random places."""

import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from internal_rl.cli import main
from internal_rl.data.generate import generate_trajectories
from internal_rl.models.base_model import BaseModel, BaseModelConfig

from helpers import TINY_TRUNK, write_run_folder

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# Text that is no integer at all, and numbers out of every flag's range.
junk = st.text(alphabet="abcxyz.,-+e _", min_size=1, max_size=6).filter(lambda t: not t.strip().lstrip("+-").isdigit())
non_positive = st.integers(max_value=0).map(str)
negative = st.integers(max_value=-1).map(str)
fractions = st.floats(min_value=-1e6, max_value=1e6).filter(lambda x: x != int(x)).map(repr)
non_finite = st.sampled_from(["inf", "-inf", "nan", "Infinity", "1e999"])

# (command line with {d} for a scratch folder, flag, bad values): the flag's value is the only thing wrong.
RUN = ["--run", "{d}/run"]
FLAGS = [
    (["generate", "gridworld", "--episodes", "4", "--out", "{d}/out"], "--seed", st.one_of(negative, junk, fractions)),
    (["generate", "gridworld", "--out", "{d}/out"], "--episodes", st.one_of(non_positive, junk, fractions)),
    (["generate", "gridworld", "--episodes", "4", "--out", "{d}/out"], "--epsilon",
     st.one_of(non_finite, junk, st.floats(min_value=1.0001, max_value=1e9).map(repr), st.floats(max_value=-1e-9).map(repr))),
    (["pretrain", "--data", "{d}/data", "--out", "{d}/out"], "--steps", st.one_of(non_positive, junk, fractions)),
    (["pretrain", "--data", "{d}/data", "--out", "{d}/out"], "--batch-size", st.one_of(non_positive, junk)),
    (["pretrain", "--data", "{d}/data", "--out", "{d}/out"], "--seed", st.one_of(negative, junk)),
    (["rl", *RUN, "--method", "raw"], "--episodes", st.one_of(non_positive, junk)),
    (["rl", *RUN, "--method", "raw"], "--seeds", st.one_of(non_positive, junk)),
    (["rl", *RUN, "--method", "raw"], "--first-seed", st.one_of(negative, junk)),
    (["rl", *RUN, "--method", "raw"], "--lr", st.one_of(non_finite, junk)),
    (["rl", *RUN, "--method", "raw"], "--batch", st.one_of(non_positive, junk)),
    (["probe", *RUN], "--steps", st.one_of(non_positive, junk)),
    (["steer", *RUN], "--steps", st.one_of(non_positive, junk)),
    (["steer", *RUN], "--episodes", st.one_of(non_positive, junk)),
    (["metacontroller", *RUN], "--alpha", st.one_of(non_finite, junk)),
    (["metacontroller", *RUN], "--steps", st.one_of(non_positive, junk)),
    (["metacontroller", *RUN], "--rank", st.one_of(non_positive, junk)),
    (["analyse", *RUN], "--episodes", st.one_of(non_positive, junk)),
    (["analyse", *RUN], "--alpha-sweep", st.one_of(non_finite, junk)),
    ([], "--threads", st.one_of(non_positive, junk)),
]


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under `folder` with its size and modification time: what 'nothing changed' compares."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def refused_cleanly(argv: list[str], folder: Path, capsys) -> None:
    before = snapshot(folder)
    capsys.readouterr()  # what earlier tests printed
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, (argv, err)
    assert len(lines) == 1 and "error:" in lines[0] and "Traceback" not in err, (argv, err)
    assert snapshot(folder) == before, argv


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """A small dataset and a run folder with a tiny base model, as the commands read them."""
    root = tmp_path_factory.mktemp("inputs")
    generate_trajectories("gridworld", 40, seed=0).save(root / "data")
    torch.manual_seed(0)
    write_run_folder(root / "run", BaseModel(BaseModelConfig(transformer=TINY_TRUNK)), data=root / "data")
    return root


@SETTINGS
@given(case=st.sampled_from(range(len(FLAGS))), data=st.data())
def test_a_bad_flag_value_is_refused_with_one_line_and_nothing_written(inputs, capsys, case, data):
    command, flag, values = FLAGS[case]
    value = data.draw(values, label=flag)
    argv = [a.format(d=inputs) for a in command] + [f"{flag}={value}"]
    if not command:  # a top-level flag: any command behind it
        argv = [f"{flag}={value}", "report", "--run", str(inputs / "run")]
    refused_cleanly(argv, inputs, capsys)


def reader_argv(folder: Path, target: str, clean_data: Path) -> list[str]:
    """The command that reads `target`: pretraining reads the dataset, every later stage the base model."""
    if target.startswith("data/"):
        return ["pretrain", "--data", str(folder / "data"), "--out", str(folder / "out"), "--steps", "1", "--batch-size", "4"]
    return ["probe", "--run", str(folder / "run"), "--data", str(clean_data), "--steps", "1"]


def test_the_undamaged_inputs_are_accepted(inputs, tmp_path, capsys):
    """The control: the same commands on the same files, undamaged, succeed (so a refusal below is the damage's)."""
    shutil.copytree(inputs / "data", tmp_path / "data")
    shutil.copytree(inputs / "run", tmp_path / "run")
    for target in ("data/manifest.json", "run/pretrain/checkpoint/config.json"):
        assert main(reader_argv(tmp_path, target, inputs / "data")) == 0, capsys.readouterr().err


def corrupt(path: Path, how: str, at: float, byte: int) -> None:
    data = bytearray(path.read_bytes())
    position = min(int(at * len(data)), len(data) - 2)  # a cut keeps less than the text and its final newline
    if how == "truncate":
        path.write_bytes(bytes(data[:position]))
    elif how == "flip":
        data[position] ^= byte or 1
        path.write_bytes(bytes(data))
    elif how == "garbage":
        path.write_bytes(os.urandom(max(1, position)))
    else:  # "empty"
        path.write_bytes(b"")


@SETTINGS
@given(target=st.sampled_from(["data/trajectories.npz", "data/manifest.json", "run/pretrain/checkpoint/model.safetensors",
                               "run/pretrain/checkpoint/config.json"]),
       how=st.sampled_from(["truncate", "flip", "garbage", "empty"]),
       at=st.floats(min_value=0.0, max_value=1.0), byte=st.integers(min_value=1, max_value=255))
def test_a_corrupted_input_file_is_refused_with_one_line_and_nothing_written(inputs, capsys, target, how, at, byte):
    # The manifest carries the data's checksums but is not checksummed itself: a flipped letter in its free
    # text (a description, a time) is harmless and accepted; cuts and garbage must be refused.
    assume(not (target == "data/manifest.json" and how == "flip"))
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        shutil.copytree(inputs / "data", folder / "data")
        shutil.copytree(inputs / "run", folder / "run")
        corrupt(folder / target, how, at, byte)
        refused_cleanly(reader_argv(folder, target, inputs / "data"), folder, capsys)
