"""A grid world without a task, for following a model past the point where the real environment would end
its episode (the free rollouts of the base model's evaluation)."""

import numpy as np

from internal_rl.envs.batched_gridworld import BatchedGridWorld
from internal_rl.envs.gridworld import MOVES, GridWorldConfig


class FreeRunningGrid:
    """Grid worlds without a task: the agent moves until we stop it, and we record the colours it enters.

    The real environment ends an episode at the first colour that is not its task's next one, and it cannot
    restart with the agent standing on a colour, so a model that is not told the task cannot be followed
    past its first "wrong" colour there. This class takes layouts, start positions and the initial
    observations from `BatchedGridWorld.reset` (so the encoding is the environment's) and applies the
    environment's documented dynamics itself: a move into a wall or off the grid does nothing, and a colour
    is entered when the agent moves onto its cell from another cell. Only the agent channel of the
    observation changes. A test checks it against `BatchedGridWorld` step for step.
    """

    def __init__(self, env_config: GridWorldConfig, num_envs: int, seed: int):
        env = BatchedGridWorld(env_config, num_envs)
        self.config = env_config
        self.obs = env.reset(seed=seed)  # [N, obs_dim] float32
        self.layouts = env.layouts.copy()  # [N, G, G] int8
        self.agent_pos = env.agent_pos.copy()  # [N, 2] (row, col)

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Move every agent; returns (observations [N, obs_dim], colour entered [N] or -1)."""
        size, channels = self.config.size, self.config.n_channels
        ids = np.arange(len(actions))
        target = self.agent_pos + MOVES[actions]
        inside = ((target >= 0) & (target < size)).all(axis=1)
        clipped = np.clip(target, 0, size - 1)
        code = self.layouts[ids, clipped[:, 0], clipped[:, 1]].astype(np.int64)
        moved = inside & (code < self.config.n_colours)  # empty (-1) or a colour; walls block
        new_pos = np.where(moved[:, None], target, self.agent_pos)
        agent_channel = channels - 1
        self.obs[ids, (self.agent_pos[:, 0] * size + self.agent_pos[:, 1]) * channels + agent_channel] = 0.0
        self.obs[ids, (new_pos[:, 0] * size + new_pos[:, 1]) * channels + agent_channel] = 1.0
        self.agent_pos = new_pos
        return self.obs.copy(), np.where(moved & (code >= 0), code, -1)
