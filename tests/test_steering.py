"""Supervised subgoal controllers (e + U_g e), their rollout evaluation, the steer CLI and the plot helpers."""

import json

import numpy as np
import pytest
import torch

from internal_rl.analysis.plots import align_runs, plot_curves, plot_layers, summarize
from internal_rl.analysis.steering import (
    evaluate_controllers,
    evaluate_discovered_controllers,
    hook_layer,
    plot_steering_results,
    resolve_layers,
    rollout_with_controllers,
    steer_layers,
)
from internal_rl.analysis.subgoal_controllers import (
    SteeringConfig,
    controller_intervention,
    fit_subgoal_controllers,
    heldout_action_nll,
    steer_preset,
    subgoal_codes,
)
from internal_rl.cli import main
from internal_rl.common.errors import ConfigError
from internal_rl.data.dataset import TrajectoryDataset
from internal_rl.data.generate import generate_trajectories
from internal_rl.envs.gridworld import GridWorldConfig
from internal_rl.models.base_model import BaseModel, BaseModelConfig
from internal_rl.models.transformer import TransformerConfig

from helpers import write_run_folder

TINY = SteeringConfig(steps=3, batch_size=8, nll_episodes=16, episodes=8)


def _model(n_layers: int, d_model: int = 16, seed: int = 0) -> BaseModel:
    torch.manual_seed(seed)
    trunk = TransformerConfig(d_model=d_model, n_layers=n_layers, n_heads=2, d_head=d_model // 2, d_mlp=2 * d_model)
    return BaseModel(BaseModelConfig(transformer=trunk)).freeze()


@pytest.fixture(scope="module")
def dataset():
    return generate_trajectories("gridworld", 80, seed=0)


def test_subgoal_codes_are_one_hot_and_zero_on_padding():
    z = subgoal_codes(torch.tensor([[0, 3, -1]]), 4)
    assert torch.equal(z, torch.tensor([[[1.0, 0, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0]]]))


def test_controller_fitted_on_a_planted_direction_moves_behaviour(dataset):
    """Expert data whose action is the subgoal id: only a subgoal-dependent controller can fit it.

    In a 1-block model the controlled point (the block's output) feeds the action head through the final
    LayerNorm alone, so the action depends (up to normalisation) linearly on the controlled residual.
    """
    arrays = dict(dataset.arrays)
    arrays["actions"] = arrays["subgoals"].astype(np.int64)
    planted = TrajectoryDataset.from_arrays(arrays, dataset.manifest)
    model = _model(n_layers=1)
    with torch.no_grad():  # a sharper action head, so that a controller can make the policy near-deterministic
        model.action_head.proj.weight.mul_(10.0)
    hook = "blocks.0.hook_resid_post"
    config = SteeringConfig(steps=40, batch_size=16, lr=2e-2, weight_decay=0.0, nll_episodes=40)
    decoder, fit = fit_subgoal_controllers(model, planted, hook, config, show_progress=False)
    base_nll = heldout_action_nll(model, planted.split(config.holdout_fraction, config.seed)[1], config)
    assert fit["heldout_nll_controlled"] < 0.5 * base_nll

    batch = planted.batch(np.arange(20))
    mask = batch["mask"]
    base_probs = torch.softmax(model(batch["observations"]).action_params, -1)
    p_expert = base_probs.gather(-1, batch["actions"][..., None])[..., 0][mask].mean()
    assert p_expert < 0.5, "without control the base model cannot know the subgoal"
    for g in range(4):
        z = subgoal_codes(torch.full(mask.shape, g), 4)
        with torch.no_grad():
            out = model(batch["observations"], interventions={hook: controller_intervention(decoder, z)})
        logits = out.action_params
        p_g = torch.softmax(logits, -1)[..., g][mask].mean()
        assert p_g > 0.9, f"controller {g} gives p(action {g}) = {p_g:.2f}"


def test_rollouts_are_seeded_and_bounded(dataset):
    model = _model(n_layers=2)
    decoder, _ = fit_subgoal_controllers(model, dataset, "blocks.0.hook_resid_post", TINY, show_progress=False)
    config = GridWorldConfig()
    kwargs = dict(tasks=[(0, 1)] * 6, decoder=decoder, hook="blocks.0.hook_resid_post", seed=3)
    a = rollout_with_controllers(model, config, 6, **kwargs)
    b = rollout_with_controllers(model, config, 6, **kwargs)
    for key in ("success", "progress", "steps"):
        assert np.array_equal(a[key], b[key])
    assert a["success"].dtype == bool and (a["progress"] <= 2).all() and (a["steps"] <= config.horizon).all()
    with pytest.raises(ConfigError, match="both decoder and hook"):
        rollout_with_controllers(model, config, 2, decoder=decoder)

    # Every episode ends in exactly one way: success, a wrong colour, or the horizon.
    assert np.array_equal(a["success"].astype(int) + a["wrong_colour"] + a["timeout"], np.ones(6, dtype=int))

    result = evaluate_controllers(model, config, TINY, decoder=decoder, hook="blocks.0.hook_resid_post")
    assert len(result["single"]["per_subgoal"]) == 4
    for key in ("single", "override", "chained_posttrain", "chained_pretrain"):
        row = result[key]
        assert 0.0 <= row["success"] <= 1.0 and 0.0 < row["expert_success"] <= 1.0
        assert row["normalised_success"] == pytest.approx(row["success"] / row["expert_success"])
        assert row["success"] + row["wrong_colour"] + row["timeout"] == pytest.approx(1.0)
    assert result["override"]["tasks"] == ["0-1-2-3", "2-3-4-5", "4-5-6-7", "6-7-0-1"]
    assert 0.0 <= result["override"]["conditional"] <= 1.0


def test_discovered_controllers_that_are_the_one_hots_evaluate_as_the_supervised_ones(dataset):
    model = _model(n_layers=2)
    hook = "blocks.0.hook_resid_post"
    decoder, _ = fit_subgoal_controllers(model, dataset, hook, TINY, show_progress=False)
    supervised = evaluate_controllers(model, GridWorldConfig(), TINY, decoder=decoder, hook=hook)
    order = [2, 0, 3, 1]  # centre k is the one-hot of subgoal order[k]: subgoal g's centre is order.index(g)
    discovered = evaluate_discovered_controllers(
        model, GridWorldConfig(), TINY, decoder=decoder, hook=hook, codes=np.eye(4)[order].tolist(),
        controller_of_subgoal=[order.index(g) for g in range(4)])
    for key in ("single", "override", "chained_posttrain", "chained_pretrain"):
        assert discovered[key] == supervised[key]
    # Subgoals no centre stands for (-1, or beyond the list) get the code 0, on the same layouts.
    wrong = evaluate_discovered_controllers(model, GridWorldConfig(), TINY, decoder=decoder, hook=hook,
                                            codes=[[0.0, 0.0, 0.0, 0.0]], controller_of_subgoal=[-1, -1])
    assert wrong["single"]["expert_success"] == supervised["single"]["expert_success"]  # the same layouts


def test_near_zero_temperature_samples_the_greedy_actions():
    model = _model(n_layers=2)
    kwargs = dict(tasks=[(0, 1, 2, 3)] * 8, seed=5)
    greedy = rollout_with_controllers(model, GridWorldConfig(), 8, greedy=True, **kwargs)
    cold = rollout_with_controllers(model, GridWorldConfig(), 8, temperature=1e-4, **kwargs)
    for key in ("progress", "steps", "success"):
        assert np.array_equal(greedy[key], cold[key])
    with pytest.raises(ConfigError, match="temperature"):
        SteeringConfig(temperature=0.0)


def test_untrained_model_never_solves_the_posttraining_task():
    """Success is not trivially true: an untrained model, without control, fails the 12-colour task."""
    model = _model(n_layers=1)
    out = rollout_with_controllers(model, GridWorldConfig(), 16, tasks=[(0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3)] * 16,
                                   seed=0, greedy=True)
    assert not out["success"].any()


def test_steer_layers_results_and_plot(dataset, tmp_path):
    model = _model(n_layers=2)
    hooks = resolve_layers(None, 2)
    results = steer_layers(model, dataset, GridWorldConfig(), hooks, TINY, show_progress=False)
    assert [r["layer"] for r in results["layers"]] == [1]
    assert results["best_single"]["hook"] == "blocks.0.hook_resid_post"
    assert set(results["baseline"]) == {"single", "override", "chained_posttrain", "chained_pretrain", "fit"}
    assert json.loads(json.dumps(results)) == results
    assert results["posttrain_task"] == [0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3]  # the env's, by default
    probes = {"layers": [{"layer": 0, "accuracy": 0.3}, {"layer": 1, "accuracy": 0.5}, {"layer": 2, "accuracy": 0.6}]}
    plot_steering_results(results, tmp_path / "steering.png", probes=probes)
    assert (tmp_path / "steering.png").read_bytes()[:4] == b"\x89PNG"


def test_steer_layers_chains_the_controllers_on_the_task_given(dataset):
    model = _model(n_layers=2)
    results = steer_layers(model, dataset, GridWorldConfig(), ["blocks.0.hook_resid_post"], TINY, show_progress=False,
                           posttrain_task=(0, 1))
    assert results["posttrain_task"] == [0, 1]
    # One colour pair: no rollout can complete more than one subgoal.
    for row in [results["baseline"], *results["layers"]]:
        assert row["chained_posttrain"]["mean_subgoals_completed"] <= 1.0


def test_layer_resolution():
    assert resolve_layers(None, 6) == [f"blocks.{b}.hook_resid_post" for b in range(5)]
    assert resolve_layers(["0", "3", "blocks.2.hook_resid_mid", 3], 6) == [
        "blocks.0.hook_resid_pre", "blocks.2.hook_resid_post", "blocks.2.hook_resid_mid"]
    assert hook_layer("blocks.2.hook_resid_post", 6) == 3 and hook_layer("blocks.2.hook_resid_mid", 6) is None
    with pytest.raises(ConfigError, match="residual layer 7 out of range; valid: 0..6"):
        resolve_layers(["7"], 6)
    with pytest.raises(ConfigError, match="unknown hook 'blocks.9.hook_resid_post'"):
        resolve_layers(["blocks.9.hook_resid_post"], 6)
    with pytest.raises(ConfigError, match="unknown steering preset"):
        steer_preset("fast")
    with pytest.raises(ConfigError, match="episodes=2"):
        SteeringConfig(episodes=2)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, dataset):
    root = tmp_path_factory.mktemp("steer_cli")
    data = dataset.save(root / "data")
    return write_run_folder(root / "run", _model(n_layers=2), data=data).root


def test_cli_steer_writes_results_and_plot(run_dir, capsys):
    assert main(["steer", "--run", str(run_dir), "--layers", "1", "--steps", "2", "--episodes", "4"]) == 0
    results = json.loads((run_dir / "steering.json").read_text())
    assert results["layers"][0]["hook"] == "blocks.0.hook_resid_post"
    assert (run_dir / "steering.png").read_bytes()[:4] == b"\x89PNG"
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--run", "{run}", "--layers", "9"], "residual layer 9 out of range; valid: 0..2"),
        (["--run", "{run}", "--layers", "blocks.0.hook_bogus"], "unknown hook 'blocks.0.hook_bogus'"),
        (["--run", "{run}", "--preset", "fast"], "unknown steering preset 'fast'"),
        (["--run", "{run}", "--episodes", "1"], "episodes=1"),
        (["--run", "{tmp}"], "no base model checkpoint"),
    ],
)
def test_cli_steer_bad_inputs_exit_2_with_one_line(run_dir, tmp_path, capsys, argv, message):
    argv = [a.format(tmp=tmp_path, run=run_dir) for a in argv]
    assert main(["steer", *argv, "--force"]) == 2  # the run holds results already: the error under test comes first
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


# --- plots -----------------------------------------------------------------------------------------------


def test_summarize_mean_ci_and_median_band():
    samples = np.array([[1.0, 0.0], [2.0, 0.0], [3.0, np.nan]])
    centre, lower, upper = summarize(samples, "mean")
    assert centre[0] == pytest.approx(2.0) and centre[1] == 0.0
    assert upper[0] - centre[0] == pytest.approx(4.303 * 1.0 / np.sqrt(3), rel=1e-3)  # t(2 dof) * sem
    centre, lower, upper = summarize(samples, "median")
    assert (centre[0], lower[0], upper[0]) == (2.0, 1.5, 2.5)
    single = summarize(np.array([[5.0]]), "mean")
    assert single[1][0] == single[2][0] == 5.0


def test_align_runs_interpolates_inside_each_run_only():
    x, ys = align_runs([[(0, 0.0), (10, 1.0)], [(0, 0.0), (5, 1.0)]])
    assert list(x) == [0, 5, 10]
    assert ys[0].tolist() == [0.0, 0.5, 1.0] and ys[1, :2].tolist() == [0.0, 1.0] and np.isnan(ys[1, 2])


def test_plot_helpers_write_pngs(tmp_path):
    curves = {"internal RL": [[(0, 0.1), (10, 0.5)], [(0, 0.2), (10, 0.7)]], "raw": [(0, 0.0), (10, 0.0)]}
    paths = [
        plot_curves(curves, "episodes", "success", tmp_path / "c.png", references={"expert": 0.7}, stat="median"),
        plot_layers({"acc": {0: 0.3, 1: [0.5, 0.6]}}, tmp_path / "l.png", ylabel="acc", highlight=1),
    ]
    for path in paths:
        assert path.read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.png", "l.png"]  # no temp files left
    with pytest.raises(ConfigError):
        plot_curves({}, "x", "y", tmp_path / "none.png")
