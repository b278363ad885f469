"""Linear subgoal probes: planted signals are recovered, shuffled labels are not, and the CLI refuses bad input."""

import json

import numpy as np
import pytest
import torch

from internal_rl.analysis.probes import (
    ProbeConfig,
    _segment_positions,
    probe_layers,
    probe_logits,
    probe_preset,
    score_probes,
    train_linear_probes,
)
from internal_rl.cli import main
from internal_rl.common.errors import ConfigError, DatasetError
from internal_rl.data.dataset import TrajectoryDataset
from internal_rl.data.generate import generate_trajectories
from internal_rl.models.base_model import BaseModel, BaseModelConfig

from helpers import TINY_TRUNK, write_run_folder

FAST = ProbeConfig(steps=150, batch_size=256, lr=1e-2)


def _planted(n: int, d: int, seed: int, signal: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Features whose class is a linear function (class means along random directions) plus noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(4, (n,), generator=g)
    directions = torch.randn(4, d, generator=torch.Generator().manual_seed(123))
    features = torch.randn(n, d, generator=g) * 2.0 + 10.0 + signal * 3.0 * directions[labels]
    return features, labels


def test_planted_linear_signal_is_decoded_and_shuffled_labels_are_not():
    x_train, y_train = _planted(3000, 24, seed=0)
    x_test, y_test = _planted(1000, 24, seed=1)
    noise = {"signal": x_train, "noise": torch.randn(3000, 24)}
    probes = train_linear_probes(noise, y_train, FAST, show_progress=False)
    scores = score_probes(probes, {"signal": x_test, "noise": torch.randn(1000, 24)}, y_test)
    assert scores["signal"]["accuracy"] > 0.95
    assert abs(scores["noise"]["accuracy"] - 0.25) < 0.06

    # Shuffling breaks the link between features and labels (in train and test alike): back to chance.
    g = torch.Generator().manual_seed(0)
    shuffled_train = y_train[torch.randperm(3000, generator=g)]
    shuffled_test = y_test[torch.randperm(1000, generator=g)]
    probes = train_linear_probes({"signal": x_train}, shuffled_train, FAST, show_progress=False)
    assert abs(score_probes(probes, {"signal": x_test}, shuffled_test)["signal"]["accuracy"] - 0.25) < 0.06


def test_batched_probe_logits_match_plain_matrix_products():
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(3, 5, 7, generator=g), torch.randn(3, 7, 4, generator=g), torch.randn(3, 4, generator=g)
    logits = probe_logits(x, w, b)
    for h in range(3):
        torch.testing.assert_close(logits[h], x[h] @ w[h] + b[h])


def test_probes_of_different_widths_and_bad_labels():
    x, y = _planted(500, 8, seed=0)
    probes = train_linear_probes({"a": x, "b": x[:, :3]}, y, ProbeConfig(steps=5), show_progress=False)
    assert probes.weight.shape == (2, 8, 4)
    assert set(score_probes(probes, {"a": x, "b": x[:, :3]}, y)) == {"a", "b"}
    with pytest.raises(DatasetError, match="labels span"):
        train_linear_probes({"a": x}, y + 4, ProbeConfig(steps=1), show_progress=False)


def test_segment_positions_count_steps_since_label_change():
    labels = torch.tensor([[0, 0, 0, 2, 2, 1, -1], [3, 3, 3, 3, 3, 3, 3]])
    expected = torch.tensor([[0, 1, 2, 0, 1, 0, 0], [0, 1, 2, 3, 4, 5, 6]])
    assert torch.equal(_segment_positions(labels), expected)


def test_bad_configs_refused():
    with pytest.raises(ConfigError, match="unknown probe preset 'fast'"):
        probe_preset("fast")
    with pytest.raises(ConfigError, match="holdout_fraction"):
        ProbeConfig(holdout_fraction=1.0)


@pytest.fixture(scope="module")
def tiny():
    """A tiny untrained base model (2 blocks, d 16) and 60 expert episodes."""
    torch.manual_seed(0)
    model = BaseModel(BaseModelConfig(transformer=TINY_TRUNK)).freeze()
    dataset = generate_trajectories("gridworld", 60, seed=0)
    return model, dataset


def test_probe_layers_reports_every_hook_and_residual_layer(tiny):
    model, dataset = tiny
    results = probe_layers(model, dataset, ProbeConfig(steps=20, batch_size=128, lr=1e-2), show_progress=False)
    assert set(results["hooks"]) == set(model.hook_names)
    assert [r["layer"] for r in results["layers"]] == [0, 1, 2]
    assert results["layers"][1]["hook"] == "blocks.0.hook_resid_post"
    labels = dataset.arrays["subgoals"]
    assert 0.25 <= results["majority_baseline"] <= 1.0 and results["chance"] == 0.25
    assert 0 <= results["majority_class"] < 4 and (labels == results["majority_class"]).any()
    assert results["n_train"] + results["n_heldout"] == dataset.num_steps
    assert results["best_layer"] in (0, 1, 2) and results["best_hook"] in model.hook_names
    assert all(0.0 <= v["accuracy"] <= 1.0 for v in results["hooks"].values())
    assert json.loads(json.dumps(results)) == results  # JSON-ready


def test_subgoal_planted_in_the_observations_is_decoded_from_the_residual_stream(tiny):
    """End to end through a real model: when 4 observation dims hold the (scaled) subgoal one-hot, the embedding
    (layer 0) and the residual stream after it carry the subgoal linearly; shuffled labels do not."""
    model, dataset = tiny
    arrays = {k: v.copy() for k, v in dataset.arrays.items()}
    # Scaled up so that the planted dims dominate the random 637 -> 16 embedding of the other inputs.
    arrays["observations"][:, :4] = 8 * np.eye(4, dtype=np.uint8)[arrays["subgoals"]]
    planted = TrajectoryDataset.from_arrays(arrays, dataset.manifest)
    config = ProbeConfig(steps=150, batch_size=256, lr=1e-2)
    hooks = ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_post"]
    results = probe_layers(model, planted, config, hooks=hooks, show_progress=False)
    assert results["layers"][0]["accuracy"] > 0.95 and results["hooks"][hooks[1]]["accuracy"] > 0.9

    rng = np.random.default_rng(0)
    arrays["subgoals"] = rng.permutation(arrays["subgoals"])  # labels independent of the (unchanged) inputs
    shuffled = probe_layers(model, TrajectoryDataset.from_arrays(arrays, dataset.manifest), config, hooks=hooks,
                            show_progress=False)
    assert shuffled["layers"][0]["accuracy"] < shuffled["majority_baseline"] + 0.08


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny):
    """A run folder with the tiny model as its pretraining checkpoint, recording a saved dataset."""
    model, dataset = tiny
    root = tmp_path_factory.mktemp("probe_cli")
    data = dataset.save(root / "data")
    return write_run_folder(root / "run", model, data=data).root


def test_cli_probe_writes_results_and_plot(run_dir, capsys):
    assert main(["probe", "--run", str(run_dir), "--steps", "5"]) == 0
    results = json.loads((run_dir / "probes.json").read_text())
    assert len(results["layers"]) == 3 and results["config"]["steps"] == 5
    assert (run_dir / "probes.png").read_bytes()[:4] == b"\x89PNG"
    assert "best layer" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--run", "{tmp}/missing"], "no base model checkpoint"),
        (["--run", "{run}", "--preset", "fast"], "unknown probe preset 'fast'"),
        (["--run", "{run}", "--data", "{tmp}/nodata"], "no dataset at"),
        (["--run", "{run}", "--steps", "0"], "argument --steps: '0'; expected a positive integer"),
    ],
)
def test_cli_probe_bad_inputs_exit_2_with_one_line(run_dir, tmp_path, capsys, argv, message):
    argv = [a.format(tmp=tmp_path, run=run_dir) for a in argv]
    try:
        code = main(["probe", *argv, "--force"])  # the run holds results already: the error under test comes first
    except SystemExit as exit_:  # refused by the argument parser
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_cli_probe_without_recorded_dataset_asks_for_data(tiny, tmp_path, capsys, make_run_folder):
    make_run_folder(tmp_path / "run", tiny[0])
    assert main(["probe", "--run", str(tmp_path / "run")]) == 2
    assert "pass --data DIR" in capsys.readouterr().err
