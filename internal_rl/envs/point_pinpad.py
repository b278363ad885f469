"""Point-pinpad: the continuous pinpad task (see `pinpad`) for a point mass, fast enough for tests.

A point mass on the plane is pushed by a 2-D force in [-1, 1]^2. Its dynamics are a damped double
integrator, stepped with semi-implicit Euler:

    v <- v + dt (force_gain a - damping v),    p <- p + dt v,

so that a constant full push settles at speed force_gain / damping (1.5 m/s by default, a cell in about
7 steps). The arena is fenced: a body pushed against its edge stops there (the velocity component into
the fence is zeroed), as moving off the grid is a no-op in the grid world.

Why pure numpy rather than a MuJoCo model: a point mass needs no contacts or joints, and the whole batch
then steps in a handful of array operations (about a million env steps/s, against roughly a hundred
thousand for one MuJoCo model stepped from Python), which keeps tests and expert data generation fast.

Observation (float32, 16 values): symlog of the velocity (the point's "proprioception", 2), then the
pinpad features (14: normalised position, relative cell positions, local cell coordinate).

`BatchedPointPinpad` steps N environments at once (no autoreset: done envs stay frozen);
`PointPinpadEnv` is the Gymnasium environment, a batch of one, so both follow the same code.
"""

from dataclasses import dataclass
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from internal_rl.common.config import with_overrides
from internal_rl.common.errors import ConfigError, check
from internal_rl.envs.gridworld import check_render_mode
from internal_rl.envs.pinpad import (
    PinpadBatchState,
    PinpadConfig,
    check_positive_float,
    render_topdown,
    single_env_info,
    symlog,
)


@dataclass(frozen=True)
class PointPinpadConfig(PinpadConfig):
    """Point-pinpad parameters: the pinpad's (cells of 1 m) plus the point mass's dynamics."""

    dt: float = 0.1
    force_gain: float = 3.0
    damping: float = 2.0

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("dt", "force_gain", "damping"):
            check_positive_float(type(self).__name__, name, getattr(self, name))
            object.__setattr__(self, name, float(getattr(self, name)))
        check(
            self.dt * self.damping < 1.0,
            f"{type(self).__name__}: dt * damping = {self.dt * self.damping:g}; expected < 1 (else the velocity "
            "overshoots every step and leaves the observation space)",
        )

    @property
    def obs_dim(self) -> int:
        return 2 + self.n_features

    @property
    def max_speed(self) -> float:
        """Terminal speed per axis under a constant full push."""
        return self.force_gain / self.damping


def check_actions(actions: Any, num_envs: int, act_dim: int) -> np.ndarray:
    """`actions` as float64 [num_envs, act_dim], refusing a wrong shape or non-finite values; clipped to [-1, 1]."""
    actions = np.asarray(actions)
    if actions.shape != (num_envs, act_dim) or actions.dtype.kind not in "fiu":
        got = f"{actions.dtype}{list(actions.shape)}"
        raise ConfigError(f"actions must be numbers of shape ({num_envs}, {act_dim}), got {got}")
    if not np.isfinite(actions).all():
        raise ConfigError("actions must be finite, got NaN or inf")
    return np.clip(actions.astype(np.float64), -1.0, 1.0)


class BatchedPointPinpad(PinpadBatchState):
    """N point-pinpad environments in numpy arrays (no autoreset; done envs stay frozen).

    Public state: `pos` / `vel` float64 [N, 2], `logic` (the task bookkeeping, see `PinpadLogic`), and
    `rng`, the generator resets draw from.
    """

    act_dim = 2

    config: PointPinpadConfig

    def __init__(self, config: PointPinpadConfig, num_envs: int):
        super().__init__(config, num_envs)
        self.pos = np.zeros((self.num_envs, 2))
        self.vel = np.zeros((self.num_envs, 2))

    def _place_bodies(self, mask: np.ndarray, start: np.ndarray) -> None:
        """At rest, somewhere in a random start cell."""
        self.pos[mask] = start
        self.vel[mask] = 0.0

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """Push every env with `actions` [N, 2] (clipped to [-1, 1]) for one step.

        Returns (obs float32 [N, obs_dim], reward float32 [N], terminated, truncated, info); envs already
        done do not move and return reward 0 with their final flags.
        """
        config = self.config
        force = check_actions(actions, self.num_envs, self.act_dim)
        alive = ~self.logic.done[:, None]
        vel = self.vel + config.dt * (config.force_gain * force - config.damping * self.vel)
        pos = self.pos + config.dt * vel
        # The fence: stop at the arena's edge.
        limit = config.half_width * (1 - 1e-9)
        fenced = np.abs(pos) > limit
        pos = np.clip(pos, -limit, limit)
        vel = np.where(fenced, 0.0, vel)
        self.pos = np.where(alive, pos, self.pos)
        self.vel = np.where(alive, vel, self.vel)
        reward, info = self.logic.update(self.pos)
        return self.observations(), reward, self.logic.terminated.copy(), self.logic.truncated.copy(), info

    def observations(self) -> np.ndarray:
        """float32 [N, obs_dim]: symlog velocity, then the pinpad features."""
        return np.concatenate([symlog(self.vel).astype(np.float32), self.logic.features(self.pos)], axis=1)

    def render(self, index: int = 0, pixels: int = 256, trail: np.ndarray | None = None) -> np.ndarray:
        """Top-down RGB picture of env `index`, uint8 [pixels, pixels, 3]."""
        return render_topdown(
            self.logic.layouts[index], self.pos[index], self.config, pixels=pixels, trail=trail,
            target=int(self.logic.target()[index]),
        )


class PointPinpadEnv(gymnasium.Env):
    """One point-pinpad environment (Gymnasium API), a `BatchedPointPinpad` of one.

    reset options (all optional): "task" (sequence of colours), "layout" (int8 [G, G], the grid world's
    encoding), "start_cell" ((row, col); requires "layout"). info: "task", "progress", "target" (the next
    colour, -1 once over), "visited" (colour entered this step, or -1), "cell" ((row, col)), "xy".
    After the episode ends the env stays frozen until `reset`.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(self, config: PointPinpadConfig | None = None, render_mode: str | None = None, **overrides: Any):
        config = with_overrides(config, PointPinpadConfig, overrides)
        check_render_mode(render_mode, self.metadata)
        self.config = config
        self.render_mode = render_mode
        self.batch = BatchedPointPinpad(config, 1)
        self._trail: list[np.ndarray] = []
        # Speeds never exceed the terminal speed, and every pinpad feature lies in [-1, 1].
        high = np.ones(config.obs_dim, dtype=np.float32)
        high[:2] = symlog(np.float32(config.max_speed)) + 1e-3
        self.observation_space = spaces.Box(-high, high, dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (2,), dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        kwargs = reset_kwargs(options)
        self.batch.rng = self.np_random
        obs = self.batch.reset(**kwargs)
        self._trail = [self.batch.pos[0].copy()]
        return obs[0], self._info({"visited": np.array([-1])})

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        obs, reward, terminated, truncated, info = self.batch.step(np.asarray(action)[None])
        self._trail.append(self.batch.pos[0].copy())
        return obs[0], float(reward[0]), bool(terminated[0]), bool(truncated[0]), self._info(info)

    def render(self) -> np.ndarray | None:
        """Top-down picture (256 x 256) with the path taken since the reset; the next colour is framed."""
        if self.render_mode == "rgb_array":
            return self.batch.render(0, trail=np.array(self._trail))
        return None

    def _info(self, step_info: dict[str, np.ndarray]) -> dict[str, Any]:
        return single_env_info(self.batch.logic, step_info, self.batch.pos[0].copy())


def reset_kwargs(options: dict[str, Any] | None) -> dict[str, Any]:
    """Translate a single env's reset options ("task", "layout", "start_cell") into batch-of-one arguments."""
    options = dict(options or {})
    unknown = sorted(set(options) - {"task", "layout", "start_cell"})
    if unknown:
        raise ConfigError(f"unknown reset option(s) {unknown}; valid: ['layout', 'start_cell', 'task']")
    kwargs: dict[str, Any] = {}
    if "task" in options:
        task = options["task"]
        if isinstance(task, (str, bytes, int, np.integer)):
            raise ConfigError(f"bad task {task!r}: expected a sequence of colours")
        kwargs["tasks"] = [task]
    if "layout" in options:
        kwargs["layouts"] = np.asarray(options["layout"])[None]
    if "start_cell" in options:
        if "layout" not in options:
            raise ConfigError("reset option 'start_cell' needs option 'layout' too")
        kwargs["start_cells"] = np.asarray(options["start_cell"])[None]
    return kwargs
