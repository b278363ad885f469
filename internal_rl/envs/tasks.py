"""Task specifications: ordered colour sequences, subgoals, and the paper's pretraining/post-training splits."""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from internal_rl.common.config import replace
from internal_rl.common.errors import ConfigError

Task = tuple[int, ...]

# The paper's grid-world subgoals are colour pairs (paper App. A.1): subgoal k is "visit 2k then 2k+1".
GRID_SUBGOAL_PAIRS: tuple[tuple[int, int], ...] = ((0, 1), (2, 3), (4, 5), (6, 7))


def _pairs(*names: str) -> tuple[Task, ...]:
    return tuple(tuple(int(c) for c in name.split("-")) for name in names)


# Table A1: 16 pretraining tasks of 3 subgoals (6 colours) each.
GRID_PRETRAIN_TASKS: tuple[Task, ...] = _pairs(
    "0-1-4-5-0-1", "0-1-4-5-2-3", "0-1-6-7-2-3", "2-3-0-1-4-5", "2-3-6-7-2-3", "2-3-6-7-4-5",
    "4-5-0-1-4-5", "4-5-0-1-6-7", "4-5-2-3-6-7", "6-7-2-3-0-1", "6-7-2-3-6-7", "6-7-4-5-0-1",
    "0-1-6-7-4-5", "2-3-0-1-6-7", "4-5-2-3-0-1", "6-7-4-5-2-3",
)
# The post-training task: 6 subgoals using only pair transitions never seen in pretraining.
GRID_POSTTRAIN_TASK: Task = _pairs("0-1-2-3-4-5-6-7-0-1-2-3")[0]

# Table A2 (ant-pinpad): 16 pretraining tasks of 3 colours; post-training task 0-1-2-3.
PINPAD_PRETRAIN_TASKS: tuple[Task, ...] = _pairs(
    "0-3-2", "1-0-3", "2-1-0", "3-2-1", "0-2-0", "0-2-1", "0-3-1", "1-0-2",
    "1-3-1", "1-3-2", "2-0-2", "2-0-3", "2-1-3", "3-1-0", "3-1-3", "3-2-0",
)
PINPAD_POSTTRAIN_TASK: Task = (0, 1, 2, 3)


@dataclass(frozen=True)
class TaskSplit:
    """A named set of pretraining tasks and held-out post-training tasks, definable as data."""

    name: str
    pretrain: tuple[Task, ...]
    posttrain: tuple[Task, ...]


SPLITS: dict[str, TaskSplit] = {
    "gridworld": TaskSplit("gridworld", GRID_PRETRAIN_TASKS, (GRID_POSTTRAIN_TASK,)),
    "pinpad": TaskSplit("pinpad", PINPAD_PRETRAIN_TASKS, (PINPAD_POSTTRAIN_TASK,)),
}


def subgoal_transitions(tasks: Sequence[Task], subgoals: Sequence[Task]) -> set[tuple[int, int]]:
    """The (h, g) subgoal transitions that occur in `tasks`, each task read as consecutive subgoals of
    `subgoals` (e.g. grid colour pairs); a task that is not such a sequence raises ConfigError."""
    index = {tuple(sub): k for k, sub in enumerate(subgoals)}
    width = len(subgoals[0])
    seen = set()
    for task in tasks:
        chunks = [tuple(task[i:i + width]) for i in range(0, len(task), width)]
        if any(chunk not in index for chunk in chunks):
            raise ConfigError(f"task {'-'.join(map(str, task))} is not a sequence of subgoals {list(subgoals)}")
        seen.update((index[a], index[b]) for a, b in zip(chunks, chunks[1:]))
    return seen


def unseen_transition_tasks(split: TaskSplit, subgoals: Sequence[Task]) -> tuple[Task, ...]:
    """Two-subgoal tasks h-g, one per ordered pair h != g whose transition h -> g no pretraining task of
    `split` contains: the transitions a controller must force against the base model's habits."""
    seen = subgoal_transitions(split.pretrain, subgoals)
    return tuple(
        tuple(subgoals[h]) + tuple(subgoals[g])
        for h in range(len(subgoals)) for g in range(len(subgoals)) if h != g and (h, g) not in seen
    )


def parse_task(text: str) -> Task:
    """Parse '0-1-2-3' into (0, 1, 2, 3), with a clear error for anything else."""
    try:
        task = tuple(int(c) for c in text.split("-"))
    except ValueError:
        raise ConfigError(f"bad task {text!r}: expected colours joined by '-', e.g. '0-1-2-3'") from None
    return task


def validate_task(task: Task, n_colours: int) -> Task:
    """Return `task` as a tuple of ints if it is non-empty and every colour is in range."""
    task = tuple(int(c) for c in task)
    if len(task) == 0:
        raise ConfigError("empty task: expected at least one colour")
    for c in task:
        if not 0 <= c < n_colours:
            raise ConfigError(f"unknown colour {c} in task {'-'.join(map(str, task))}; valid: 0..{n_colours - 1}")
    return task


def with_tasks(config: Any, tasks: Sequence[Task] | None) -> Any:
    """An env config with `tasks` (each checked against its `n_colours`) as its tasks; `config` itself if None."""
    if tasks is None:
        return config
    tasks = tuple(validate_task(task, config.n_colours) for task in tasks)
    if not tasks:
        raise ConfigError("tasks is empty; give at least one task, e.g. (0, 1, 2, 3)")
    return replace(config, tasks=tasks)
