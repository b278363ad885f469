"""What does a metacontroller's segment code carry, if not the subgoal's name? (grid world)

The code probe of `analysis.switching` asks whether a linear read-out of each true segment's code names
its subgoal. Where it does not, the code may still identify the subgoal *in the layout's coordinates*:
"the target is two rows up and three columns left" picks the same colour as "subgoal 2" on one layout and
a different one on the next. These read-outs separate the two, each cross-validated on segments
(5 folds) and set beside its trivial baseline:

- subgoal: the subgoal's name (logistic regression; baseline: the most common subgoal);
- first action: the segment's first action (logistic; baseline: the most common action);
- displacement: the first target colour's (row, col) offset from the agent at the segment start
  (linear regression, R^2 averaged over the two coordinates; baseline 0);
- place: the first target colour's absolute (row, col) (R^2);
- subgoal through the layout: the subgoal whose first colour lies nearest to where the code's predicted
  displacement (or, second read-out, its predicted place) points, the layout read off the observation
  (baseline: the subgoal whose first colour is nearest the agent, which uses the layout but not the code).

If "subgoal through the layout" is high while "subgoal" sits at its baseline, the codes name places, and a
policy over codes has to learn a map from layouts to codes instead of choosing among a few subgoals.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.linear_model import LinearRegression
from sklearn.model_selection import KFold, cross_val_predict
from threadpoolctl import threadpool_limits

from internal_rl.analysis.switching import EpisodeTrace, label_switches, probe_accuracy
from internal_rl.common.errors import ConfigError
from internal_rl.data.generate import env_config_from_manifest
from internal_rl.envs.gridworld import GridWorldConfig
from internal_rl.envs.registry import spec_of_config

FOLDS = 5


@dataclass
class Segments:
    """One row per true subgoal segment of a set of episodes."""

    code: np.ndarray  # [S, n_z] mean code over the segment
    subgoal: np.ndarray  # int [S]
    first_action: np.ndarray  # int [S]
    agent: np.ndarray  # int [S, 2] the agent's (row, col) at the segment start
    target: np.ndarray  # int [S, 2] the segment's first target colour's (row, col)
    candidates: np.ndarray  # int [S, n_subgoals, 2] every subgoal's first colour's (row, col)


def grid_positions(observation: np.ndarray, config: GridWorldConfig) -> tuple[np.ndarray, np.ndarray]:
    """The agent's (row, col) and every colour's (row, col) ([n_colours, 2], -1 where absent) in one flat
    grid-world observation."""
    grid = observation.reshape(config.size, config.size, config.n_channels)
    agent = np.argwhere(grid[:, :, -1] > 0.5)
    if len(agent) != 1:
        raise ConfigError(f"grid observation shows {len(agent)} agents; expected 1 (is this a grid-world dataset?)")
    colours = np.full((config.n_colours, 2), -1, dtype=np.int64)
    for channel in range(config.n_colours):
        where = np.argwhere(grid[:, :, channel] > 0.5)
        if len(where):
            colours[channel] = where[0]
    return agent[0], colours


def colour_cells(layouts: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """The flat cell index (row * size + col) of colour `colours[i]` in grid layout `layouts[i]` ([N, G, G]
    colour codes; int [N]); 0 where a colour is negative (no target)."""
    flat = layouts.reshape(len(colours), -1)
    return np.where(colours >= 0, (flat == np.maximum(colours, 0)[:, None]).argmax(1), 0).astype(np.int64)


def place_labels(arrays: dict[str, np.ndarray], config: GridWorldConfig, held: bool = False) -> np.ndarray:
    """Per step of a grid-world dataset's flat `arrays`, the cell index (row * size + col) of the colour the
    expert heads for; with `held`, of the first colour of the step's subgoal segment, held for the whole
    segment (what a place code held from the segment start names). Int [N]; -1 where there is no target.
    As labels of supervised controllers they ask: does a place explain the actions better than a subgoal?"""
    n = len(arrays["targets"])
    grid = arrays["observations"].reshape(n, config.size * config.size, config.n_channels)
    targets = arrays["targets"].astype(np.int64)
    on_target = grid[np.arange(n), :, np.maximum(targets, 0)]  # [N, cells]
    place = np.where((targets >= 0) & (on_target.max(1) > 0.5), on_target.argmax(1), -1)
    if not held:
        return place
    start = np.zeros(n, dtype=bool)
    start[arrays["episode_starts"].astype(np.int64)] = True
    subgoals = arrays["subgoals"]
    start[1:] |= subgoals[1:] != subgoals[:-1]
    first = np.maximum.accumulate(np.where(start, np.arange(n), 0))
    return np.where(subgoals >= 0, place[first], -1)


def segments_of(traces: Sequence[EpisodeTrace], observations: Sequence[np.ndarray], actions: Sequence[np.ndarray],
                first_colours: Sequence[int], config: GridWorldConfig) -> Segments:
    """Every true segment of `traces` (their episodes' `observations` [T, obs_dim] and `actions` [T]);
    `first_colours[k]` is subgoal k's first colour."""
    if not (len(traces) == len(observations) == len(actions)):
        raise ConfigError("segments_of: traces, observations and actions must describe the same episodes")
    rows: dict[str, list] = {name: [] for name in ("code", "subgoal", "first_action", "agent", "target", "candidates")}
    for trace, obs, act in zip(traces, observations, actions):
        bounds = np.concatenate([[0], label_switches(trace.subgoals), [len(trace.subgoals)]])
        for a, b in zip(bounds[:-1], bounds[1:]):
            agent, colours = grid_positions(obs[a], config)
            rows["code"].append(trace.z[a:b].mean(0))
            rows["subgoal"].append(int(trace.subgoals[a]))
            rows["first_action"].append(int(act[a]))
            rows["agent"].append(agent)
            rows["target"].append(colours[int(trace.targets[a])])
            rows["candidates"].append(colours[list(first_colours)])
    return Segments(**{name: np.asarray(values) for name, values in rows.items()})


def _classify(x: np.ndarray, y: np.ndarray) -> dict[str, float] | None:
    """`probe_accuracy` with its majority rate named as the baseline; None when too few segments to say."""
    result = probe_accuracy(x, y, FOLDS)
    return None if result is None else {"accuracy": result["accuracy"], "baseline": result["majority"]}


def _regress(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """Cross-validated predictions of y [S, 2] from x and their R^2 averaged over the columns."""
    with threadpool_limits(1):
        predicted = cross_val_predict(LinearRegression(), x, y, cv=KFold(FOLDS, shuffle=True, random_state=0))
    residual = ((y - predicted) ** 2).sum(0)
    total = ((y - y.mean(0)) ** 2).sum(0)
    return predicted, float(np.mean(1.0 - residual / np.maximum(total, 1e-12)))


def code_content(segments: Segments) -> dict[str, Any]:
    """The read-outs of the module docstring, JSON-ready."""
    if len(segments.subgoal) < 2 * FOLDS:
        raise ConfigError(f"code_content: {len(segments.subgoal)} segments; need at least {2 * FOLDS}")
    displacement = (segments.target - segments.agent).astype(np.float64)
    predicted_displacement, displacement_r2 = _regress(segments.code, displacement)
    predicted_place, place_r2 = _regress(segments.code, segments.target.astype(np.float64))
    offsets = (segments.candidates - segments.agent[:, None, :]).astype(np.float64)
    present = (segments.candidates >= 0).all(-1)

    def nearest_to(points: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        return np.where(present, ((candidates - points[:, None, :]) ** 2).sum(-1), np.inf).argmin(1)

    through_displacement = nearest_to(predicted_displacement, offsets)
    through_place = nearest_to(predicted_place, segments.candidates.astype(np.float64))
    nearest = nearest_to(np.zeros_like(predicted_displacement), offsets)
    baseline = float((nearest == segments.subgoal).mean())
    return {
        "segments": int(len(segments.subgoal)),
        "subgoal": _classify(segments.code, segments.subgoal),
        "first_action": _classify(segments.code, segments.first_action),
        "displacement_r2": displacement_r2,
        "place_r2": place_r2,
        "subgoal_through_displacement": {"accuracy": float((through_displacement == segments.subgoal).mean()),
                                         "baseline": baseline},
        "subgoal_through_place": {"accuracy": float((through_place == segments.subgoal).mean()), "baseline": baseline},
    }


def dataset_code_content(traces: Sequence[EpisodeTrace], dataset: Any) -> dict[str, Any] | None:
    """`code_content` of `traces`, the first len(traces) episodes of grid-world `dataset` (a
    TrajectoryDataset); None for another environment, where colours have no cells."""
    if dataset.manifest.get("env") != "gridworld":
        return None
    config = env_config_from_manifest(dataset.manifest)
    episodes = [dataset.episode(i) for i in range(len(traces))]
    first_colours = [task[0] for task in spec_of_config(config).subgoal_tasks]
    return code_content(segments_of(traces, [e["observations"] for e in episodes], [e["actions"] for e in episodes],
                                    first_colours, config))
