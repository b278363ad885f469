"""Hierarchical tasks: environments, task specifications and splits, and scripted experts."""

import gymnasium

_ENVS = {
    "internal_rl/GridWorld-v0": dict(
        entry_point="internal_rl.envs.gridworld:GridWorldEnv",
        vector_entry_point="internal_rl.envs.batched_gridworld:GridWorldVectorEnv",
    ),
    "internal_rl/PointPinpad-v0": dict(entry_point="internal_rl.envs.point_pinpad:PointPinpadEnv"),
    # Imports `mujoco` only when made.
    "internal_rl/AntPinpad-v0": dict(entry_point="internal_rl.envs.ant_pinpad:AntPinpadEnv"),
}


def register_envs() -> None:
    """Register this package's environments with Gymnasium (idempotent)."""
    for env_id, kwargs in _ENVS.items():
        if env_id not in gymnasium.registry:
            gymnasium.register(id=env_id, **kwargs)
