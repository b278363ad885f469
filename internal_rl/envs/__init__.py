"""Hierarchical tasks: environments, task specifications and splits, and scripted experts."""

import gymnasium


def register_envs() -> None:
    """Register this package's environments with Gymnasium (idempotent)."""
    if "internal_rl/GridWorld-v0" not in gymnasium.registry:
        gymnasium.register(
            id="internal_rl/GridWorld-v0",
            entry_point="internal_rl.envs.gridworld:GridWorldEnv",
            vector_entry_point="internal_rl.envs.batched_gridworld:GridWorldVectorEnv",
        )
