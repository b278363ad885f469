"""Which environment a dataset or run belongs to: one table from an env name to everything that differs.

Every stage above `envs/` (data generation, pretraining's evaluation, probes, steering, RL, `reproduce`)
asks this table instead of naming an environment class, so the grid world, the point-mass pinpad and the
ant pinpad run through the same code:

    name           config               batched env          expert data                 subgoal
    gridworld      GridWorldConfig      BatchedGridWorld     data/generate.py (chunks)   a colour pair
    point-pinpad   PointPinpadConfig    BatchedPointPinpad   PointExpert                 one colour
    ant-pinpad     AntPinpadConfig      BatchedAntPinpad     AntExpert (scripted gait)   one colour

A batched env (N episodes in numpy, no autoreset) meets the `BatchedEnv` protocol of `envs/batched_env.py`.

Classes are named as "module:attribute" and imported on use: the ant imports MuJoCo.
"""

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from internal_rl.common.config import config_to_dict
from internal_rl.common.errors import ConfigError
from internal_rl.envs.batched_env import BatchedEnv
from internal_rl.envs.tasks import GRID_SUBGOAL_PAIRS, SPLITS, Task, TaskSplit, with_tasks

if TYPE_CHECKING:
    from internal_rl.envs.pinpad_expert import ExpertEpisodes


def _resolve(path: str) -> Any:
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)


@dataclass(frozen=True)
class EnvSpec:
    """What the pipeline needs to know about one environment."""

    name: str
    config_class: str  # "module:Class" of the env config dataclass
    batched_class: str  # "module:Class" of the batched env, built as Class(config, num_envs)
    split: str  # key of `tasks.SPLITS`: pretraining tasks and the post-training task
    # One task per subgoal, in subgoal order: completing it is completing that subgoal (steering's
    # single-subgoal evaluation); its colours are the colours of that subgoal.
    subgoal_tasks: tuple[Task, ...]
    gym_id: str
    # expert(config or None, tasks or None, episodes, seed, mean_actions, show_progress) -> the expert's
    # successful episodes with the env config they were rolled out in (`pinpad_expert.ExpertEpisodes`);
    # None: the grid world's chunked generator in data/generate.py.
    expert: Callable[[Any, Sequence[Task] | None, int, int, bool, bool], "ExpertEpisodes"] | None = None
    # expert_actor(config) -> act(batched_env, rng) -> actions: the expert as a policy (videos, and the
    # ceiling that success rates are normalised by); the grid world's is the noiseless expert of D*.
    expert_actor: Callable[[Any], Callable[[Any, np.random.Generator], np.ndarray]] | None = None

    @property
    def config_type(self) -> type:
        return _resolve(self.config_class)

    @property
    def task_split(self) -> TaskSplit:
        return SPLITS[self.split]

    @property
    def posttrain_task(self) -> Task:
        return self.task_split.posttrain[0]

    @property
    def n_subgoals(self) -> int:
        return len(self.subgoal_tasks)

    @property
    def colours_per_subgoal(self) -> int:
        return len(self.subgoal_tasks[0])

    def default_config(self) -> Any:
        return self.config_type()

    def make_batched(self, config: Any, num_envs: int) -> BatchedEnv:
        """A batched env of `num_envs` episodes of `config`."""
        return _resolve(self.batched_class)(config, num_envs)

    def subgoal_table(self, n_colours: int) -> np.ndarray:
        """int64 [n_colours + 1]: colour -> subgoal index; -1 for colours in no subgoal and at index -1
        (the target of a finished episode)."""
        table = np.full(n_colours + 1, -1, dtype=np.int64)
        for k, task in enumerate(self.subgoal_tasks):
            for colour in task:
                if colour < n_colours:
                    table[colour] = k
        return table


def _point_expert(
    config: Any, tasks: Sequence[Task] | None, episodes: int, seed: int, mean_actions: bool, show_progress: bool
) -> "ExpertEpisodes":
    from internal_rl.envs.pinpad_expert import ExpertEpisodes, PointExpertConfig, point_expert_episodes
    from internal_rl.envs.point_pinpad import PointPinpadConfig

    env_config = with_tasks(config if config is not None else PointPinpadConfig(), tasks)
    expert = PointExpertConfig(noise_std=0.0) if mean_actions else PointExpertConfig()
    arrays = point_expert_episodes(episodes, seed, env_config=env_config, expert_config=expert,
                                   show_progress=show_progress)
    return ExpertEpisodes(arrays, env_config, "PointExpert", config_to_dict(expert))


def _grid_expert_actor(config: Any) -> Callable[[Any, np.random.Generator], np.ndarray]:
    from internal_rl.envs.expert import GridExpert

    return GridExpert(config, noiseless=True).act


def _point_expert_actor(config: Any) -> Callable[[Any, np.random.Generator], np.ndarray]:
    from internal_rl.envs.pinpad_expert import PointExpert

    expert = PointExpert(config)
    return lambda env, rng: expert.act(env, rng)[0]


def _ant_expert_actor(config: Any) -> Callable[[Any, np.random.Generator], np.ndarray]:
    from internal_rl.envs.ant_expert import AntExpert

    expert = AntExpert(config)
    return lambda env, rng: expert.act(env, rng)[0]


def _ant_expert(
    config: Any, tasks: Sequence[Task] | None, episodes: int, seed: int, mean_actions: bool, show_progress: bool
) -> "ExpertEpisodes":
    from internal_rl.envs.ant_expert import ant_expert_data

    return ant_expert_data(config, tasks, episodes, seed, mean_actions=mean_actions, show_progress=show_progress)


_PINPAD_SUBGOALS: tuple[Task, ...] = ((0,), (1,), (2,), (3,))

ENVS: dict[str, EnvSpec] = {
    "gridworld": EnvSpec(
        "gridworld", "internal_rl.envs.gridworld:GridWorldConfig",
        "internal_rl.envs.batched_gridworld:BatchedGridWorld", "gridworld", GRID_SUBGOAL_PAIRS,
        gym_id="internal_rl/GridWorld-v0", expert_actor=_grid_expert_actor,
    ),
    "point-pinpad": EnvSpec(
        "point-pinpad", "internal_rl.envs.point_pinpad:PointPinpadConfig",
        "internal_rl.envs.point_pinpad:BatchedPointPinpad", "pinpad", _PINPAD_SUBGOALS,
        gym_id="internal_rl/PointPinpad-v0", expert=_point_expert, expert_actor=_point_expert_actor,
    ),
    "ant-pinpad": EnvSpec(
        "ant-pinpad", "internal_rl.envs.ant_pinpad:AntPinpadConfig", "internal_rl.envs.ant_pinpad:BatchedAntPinpad",
        "pinpad", _PINPAD_SUBGOALS, gym_id="internal_rl/AntPinpad-v0", expert=_ant_expert,
        expert_actor=_ant_expert_actor,
    ),
}


def env_spec(name: str) -> EnvSpec:
    """The spec of env `name`, or a ConfigError listing the known ones."""
    if name not in ENVS:
        raise ConfigError(f"unknown env {name!r}; valid: {', '.join(ENVS)}")
    return ENVS[name]


def spec_of_config(config: Any) -> EnvSpec:
    """The spec whose config class `config` is an instance of (exact class first: configs subclass each other)."""
    name = f"{type(config).__module__}:{type(config).__name__}"
    for spec in ENVS.values():
        if spec.config_class == name:
            return spec
    raise ConfigError(f"no environment uses a {type(config).__name__}; valid: {', '.join(ENVS)}")


def make_batched_env(config: Any, num_envs: int) -> BatchedEnv:
    """The batched env for an env config of any registered environment."""
    return spec_of_config(config).make_batched(config, num_envs)


def expert_successes(config: Any, num_envs: int, seed: int, tasks: Sequence[Task] | None = None) -> np.ndarray:
    """Whether the env's scripted expert (`EnvSpec.expert_actor`) succeeds, bool [num_envs], on the episodes
    that `make_batched_env(config, num_envs).reset(seed=seed, tasks=tasks)` starts: the same layouts an
    evaluation with that seed and those tasks sees, so its success rate can be normalised by this ceiling
    (some grid layouts cannot be solved at all)."""
    spec = spec_of_config(config)
    if spec.expert_actor is None:
        raise ConfigError(f"{spec.name} has no scripted expert to measure its success ceiling")
    env = make_batched_env(config, num_envs)
    env.reset(seed=seed, tasks=tasks)
    act = spec.expert_actor(env.config)
    rng = np.random.default_rng(seed)  # the expert's own draws, apart from the env's layout stream
    for _ in range(env.config.horizon):
        if env.done.all():
            break
        env.step(act(env, rng))
    return env.success.copy()
