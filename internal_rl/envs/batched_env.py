"""The batched-env contract: what code driving N episodes at once (data generation, rollouts, RL, steering's
evaluation, the expert's ceiling) may rely on, whichever registered environment it drives.

`BatchedGridWorld`, `BatchedPointPinpad` and `BatchedAntPinpad` meet it (a test checks each); build one
with `envs.registry.make_batched_env(config, num_envs)`. Episodes do not autoreset: a finished episode
stays frozen until the next `reset`.
"""

from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np


@runtime_checkable
class BatchedEnv(Protocol):
    """N episodes of one environment config, stepped together in numpy."""

    num_envs: int
    config: Any  # the env config: `horizon`, `obs_dim`, `n_colours`, `tasks`

    def reset(self, seed: int | None = None, tasks: Sequence[Sequence[int]] | None = None) -> np.ndarray:
        """Start a new episode in every env (on `tasks`, one per env, if given); observations float32 [N, obs_dim]."""
        ...

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Act in every env: int [N] (grid) or float [N, act_dim]; returns (obs, reward, terminated,
        truncated, info) as arrays [N], info holding at least "visited" (colour entered this step, or -1)."""
        ...

    def observations(self) -> np.ndarray:
        """The current observations, float32 [N, obs_dim]."""
        ...

    def target(self) -> np.ndarray:
        """The next colour to visit, int64 [N]; -1 once the episode is over."""
        ...

    @property
    def done(self) -> np.ndarray:
        """bool [N]: the episode has ended (terminated or truncated)."""
        ...

    @property
    def terminated(self) -> np.ndarray:
        """bool [N]: the episode ended by success or failure."""
        ...

    @property
    def truncated(self) -> np.ndarray:
        """bool [N]: the episode reached the horizon."""
        ...

    @property
    def success(self) -> np.ndarray:
        """bool [N]: the episode completed its task; the one definition of success."""
        ...

    @property
    def progress(self) -> np.ndarray:
        """int64 [N]: colours of the task visited so far."""
        ...

    @property
    def task_lengths(self) -> np.ndarray:
        """int64 [N]: the length of each episode's task."""
        ...

    @property
    def tasks(self) -> np.ndarray:
        """int8 [N, Lmax]: each episode's task, -1 padded."""
        ...

    @property
    def t(self) -> np.ndarray:
        """int64 [N]: steps taken in each episode."""
        ...
