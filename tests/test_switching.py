"""Switching metrics on hand-made examples: matching with tolerance, the first-step convention, segments, NMI."""

import numpy as np
import pytest

from internal_rl.analysis.switching import (
    EpisodeTrace,
    clustering_nmi,
    code_dimensions,
    code_probe,
    count_matches,
    discovered_controllers,
    label_switches,
    plot_alpha_sweep,
    plot_beta_traces,
    predicted_switches,
    segment_lengths,
    switch_metrics,
    switching_report,
)
from internal_rl.common.errors import ConfigError


def _beta(length: int, fires: list[int]) -> np.ndarray:
    beta = np.full(length, 0.05)
    beta[fires] = 0.95
    return beta


def test_label_and_predicted_switches():
    assert label_switches(np.array([0, 0, 1, 1, 1, 3, 3])).tolist() == [2, 5]
    assert label_switches(np.array([2, 2, 2])).tolist() == []
    assert predicted_switches(np.array([1.0, 0.5, 0.51, 0.2])).tolist() == [0, 2]


def test_count_matches_tolerance_and_one_to_one():
    assert count_matches([5], [7]) == 1
    assert count_matches([5], [8]) == 0
    # Two predictions near one true switch: only one may match it.
    assert count_matches([4, 5], [5]) == 1
    # Greedy must not let the first true switch steal the only prediction the second one could use.
    assert count_matches([3, 5], [5, 7]) == 2
    assert count_matches([], [1, 2]) == 0


def test_perfect_and_imperfect_detection():
    labels = np.array([0] * 5 + [1] * 5 + [2] * 5)  # true switches at 5 and 10
    perfect = switch_metrics([_beta(15, [0, 5, 10])], [labels])
    assert perfect["precision"] == perfect["recall"] == perfect["f1"] == 1.0
    assert (perfect["predicted"], perfect["true"]) == (2, 2)  # step 0 dropped from both
    # Off by two still matches; off by three does not; an extra switch costs precision.
    late = switch_metrics([_beta(15, [0, 7, 13, 14])], [labels])
    assert late["matched"] == 1 and late["predicted"] == 3 and late["true"] == 2
    assert late["precision"] == pytest.approx(1 / 3) and late["recall"] == pytest.approx(1 / 2)
    assert late["f1"] == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))
    # Counting the start as a switch adds one true and one predicted, always matched.
    with_start = switch_metrics([_beta(15, [0, 7, 13, 14])], [labels], include_start=True)
    assert (with_start["matched"], with_start["predicted"], with_start["true"]) == (2, 4, 3)
    never = switch_metrics([_beta(15, [0])], [labels])
    assert never["f1"] == 0.0 and never["recall"] == 0.0
    with pytest.raises(ConfigError):
        switch_metrics([_beta(15, [0])], [labels, labels])


def test_segment_lengths():
    assert segment_lengths(np.array([0, 5, 10]), 15).tolist() == [5, 5, 5]
    assert segment_lengths(np.array([3]), 5).tolist() == [3, 2]  # step 0 always starts a segment
    assert segment_lengths(np.array([], dtype=int), 4).tolist() == [4]


def _traces(seed: int, separable: bool, episodes: int = 20) -> list[EpisodeTrace]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4, 3)) * 5
    traces = []
    for _ in range(episodes):
        labels = np.repeat(rng.permutation(4)[:3], 6)
        z = (centres[labels] if separable else np.zeros((18, 3))) + 0.1 * rng.normal(size=(18, 3))
        traces.append(EpisodeTrace(beta=_beta(18, [0, 6, 12]), z=z, nll=np.zeros(18), subgoals=labels, targets=labels))
    return traces


def test_nmi_recovers_planted_clusters():
    good = clustering_nmi(_traces(0, separable=True))
    assert good["step"] > 0.99 and good["segment"] > 0.99
    bad = clustering_nmi(_traces(0, separable=False))
    assert bad["step"] < 0.2


def test_discovered_controllers_are_the_planted_segment_codes():
    traces = _traces(3, separable=True)
    found = discovered_controllers(traces, 4)
    planted = {int(tr.subgoals[a]): tr.z[a:a + 6].mean(0) for tr in traces for a in (0, 6, 12)}
    assert sorted(found["subgoal"]) == [0, 1, 2, 3] and sum(found["segments"]) == 60
    for code, subgoal in zip(found["codes"], found["subgoal"]):
        assert np.allclose(code, planted[subgoal], atol=0.2)
    for subgoal, centre in enumerate(found["controller_of_subgoal"]):
        assert found["subgoal"][centre] == subgoal


def test_code_probe_reads_planted_subgoal_codes_and_not_noise():
    good = code_probe(_traces(2, separable=True, episodes=100))
    assert good["segments"] == 300
    assert good["accuracy"] == 1.0 and good["given_previous"]["accuracy"] == 1.0
    assert good["majority"] < 0.35 and good["given_previous"]["majority"] < 0.5
    noise = code_probe(_traces(2, separable=False, episodes=100))
    assert noise["accuracy"] < noise["majority"] + 0.1
    assert noise["given_previous"]["accuracy"] < noise["given_previous"]["majority"] + 0.15


def test_active_code_dimensions_are_those_that_vary_across_segments():
    rng = np.random.default_rng(0)
    traces = []
    for _ in range(20):
        z = np.zeros((12, 4))
        z[:6], z[6:] = rng.normal(size=4), rng.normal(size=4)  # two segments, one code each
        z[:, 1] = 0.3  # constant: carries nothing
        z[:, 3] *= 0.01  # varies, but too little to count
        traces.append(EpisodeTrace(beta=_beta(12, [0, 6]), z=z, nll=np.zeros(12), subgoals=np.repeat([0, 1], 6),
                                   targets=np.repeat([0, 1], 6)))
    dims = code_dimensions(traces)
    assert dims["n_z"] == 4 and dims["active"] == 2
    assert dims["std"][1] < 1e-12 and 0.5 < dims["std"][0] < 1.5


def test_report_and_plots(tmp_path):
    traces = _traces(1, separable=True)
    report = switching_report(traces)
    assert report["subgoal_switches"]["f1"] == 1.0
    assert report["segment_length"]["mean"] == report["true_subgoal_length"]["mean"] == 6.0
    assert report["switches_per_episode"] == report["true_subgoals_per_episode"] == 3.0
    assert report["code_probe"]["accuracy"] == 1.0
    assert len(report["controllers"]["codes"]) == 4
    assert plot_beta_traces(traces, tmp_path / "beta.png").stat().st_size > 0
    rows = [{"alpha": a, "action_nll": 1 - a, "switches_per_episode": 3 + a, "true_subgoals_per_episode": 3, "f1": 0.5}
            for a in (0.0, 0.1, 0.3)]
    assert plot_alpha_sweep(rows, tmp_path / "sweep.png").stat().st_size > 0
