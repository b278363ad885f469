"""The code-content read-outs recover a planted meaning: codes that name places, or codes that name subgoals."""

import numpy as np
import pytest

from internal_rl.analysis.code_content import code_content, grid_positions, place_labels, segments_of
from internal_rl.analysis.switching import EpisodeTrace
from internal_rl.common.errors import ConfigError
from internal_rl.envs.gridworld import GridWorldConfig

CONFIG = GridWorldConfig()
FIRST_COLOURS = (0, 2, 4, 6)


def _episode(rng: np.random.Generator, meaning: str) -> tuple[EpisodeTrace, np.ndarray, np.ndarray]:
    """Three segments of 4 steps on a random layout; each segment's code is its subgoal's one-hot
    ("subgoal") or the offset from the agent to its first colour ("place"), plus noise."""
    cells = rng.choice(CONFIG.size**2, CONFIG.n_colours + 1, replace=False)
    grid = np.zeros((CONFIG.size, CONFIG.size, CONFIG.n_channels), dtype=np.float32)
    for colour, cell in enumerate(cells[:-1]):
        grid[cell // CONFIG.size, cell % CONFIG.size, colour] = 1.0
    agent = np.array([cells[-1] // CONFIG.size, cells[-1] % CONFIG.size])
    grid[agent[0], agent[1], -1] = 1.0
    subgoals = rng.choice(4, 3, replace=False).repeat(4)
    codes = []
    for g in subgoals:
        target = np.array([cells[FIRST_COLOURS[g]] // CONFIG.size, cells[FIRST_COLOURS[g]] % CONFIG.size])
        code = np.eye(4)[g] if meaning == "subgoal" else np.concatenate([target - agent, [0.0, 0.0]])
        codes.append(code + 0.05 * rng.normal(size=4))
    steps = len(subgoals)
    trace = EpisodeTrace(beta=np.zeros(steps), z=np.stack(codes), nll=np.zeros(steps), subgoals=subgoals,
                         targets=np.array([FIRST_COLOURS[g] for g in subgoals]))
    observations = np.repeat(grid.reshape(1, -1), steps, axis=0)  # the agent stays put: fine for segment starts
    return trace, observations, rng.integers(0, 4, steps)


def _content(meaning: str) -> dict:
    rng = np.random.default_rng(0)
    episodes = [_episode(rng, meaning) for _ in range(120)]
    segments = segments_of(*map(list, zip(*episodes)), FIRST_COLOURS, CONFIG)
    assert len(segments.subgoal) == 360
    return code_content(segments)


def test_codes_that_name_places_identify_the_subgoal_only_through_the_layout():
    content = _content("place")
    assert content["displacement_r2"] > 0.95
    assert content["subgoal"]["accuracy"] < content["subgoal"]["baseline"] + 0.1
    assert content["subgoal_through_displacement"]["accuracy"] > 0.95
    assert content["subgoal_through_displacement"]["baseline"] < 0.6


def test_codes_that_name_subgoals_do_not_predict_the_displacement():
    content = _content("subgoal")
    assert content["subgoal"]["accuracy"] > 0.95
    assert content["displacement_r2"] < 0.2
    assert content["subgoal_through_place"]["accuracy"] < 0.6


def test_grid_positions_reads_the_agent_and_the_colours():
    grid = np.zeros((CONFIG.size, CONFIG.size, CONFIG.n_channels), dtype=np.float32)
    grid[1, 2, 3] = 1.0
    grid[4, 5, -1] = 1.0
    agent, colours = grid_positions(grid.reshape(-1), CONFIG)
    assert agent.tolist() == [4, 5] and colours[3].tolist() == [1, 2] and (colours[0] == -1).all()
    with pytest.raises(ConfigError, match="agents"):
        grid_positions(np.zeros(CONFIG.obs_dim), CONFIG)


def test_place_labels_name_the_target_cell_per_colour_or_held_per_segment():
    grid = np.zeros((CONFIG.size, CONFIG.size, CONFIG.n_channels), dtype=np.float32)
    grid[0, 1, 0] = grid[2, 3, 1] = grid[6, 6, 2] = grid[3, 3, -1] = 1.0
    steps = 5  # heads for colour 0, 0, 1 (subgoal 0), then 2, 2 (subgoal 1)
    arrays = {
        "observations": np.repeat(grid.reshape(1, -1), steps, axis=0),
        "targets": np.array([0, 0, 1, 2, 2]),
        "subgoals": np.array([0, 0, 0, 1, 1]),
        "episode_starts": np.array([0]),
    }
    cell = lambda r, c: r * CONFIG.size + c  # noqa: E731
    assert place_labels(arrays, CONFIG).tolist() == [cell(0, 1)] * 2 + [cell(2, 3)] + [cell(6, 6)] * 2
    assert place_labels(arrays, CONFIG, held=True).tolist() == [cell(0, 1)] * 3 + [cell(6, 6)] * 2


def test_too_few_segments_of_a_class_give_no_probe_rather_than_an_error():
    rng = np.random.default_rng(1)
    episodes = [_episode(rng, "place") for _ in range(5)]  # 15 segments: some subgoal has fewer than 5
    content = code_content(segments_of(*map(list, zip(*episodes)), FIRST_COLOURS, CONFIG))
    assert content["subgoal"] is None and content["segments"] == 15
    with pytest.raises(ConfigError, match="segments"):
        code_content(segments_of(*map(list, zip(*episodes[:2])), FIRST_COLOURS, CONFIG))
