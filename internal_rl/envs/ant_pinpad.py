"""Ant-pinpad (paper App. A.2): the classic MuJoCo ant visits coloured cells of the floor in order.

The continuous pinpad rules (`pinpad`) on a 4 x 4 grid of 2 m cells (an 8 m x 8 m arena), driven by
Gymnasium's ant model (`gymnasium/envs/mujoco/assets/ant.xml`, the ant of Ant-v5: 8 hinge joints, motors
of gear 150, control range [-1, 1], RK4 with a 0.01 s timestep). Choices the paper leaves open:

- cell side 2.0 m: the ant spans about 1.6 m leg tip to leg tip, so a cell holds it with room to turn,
  and a path of a few cells fits the 25 s of an episode at the expert's walking speed (about 1 m/s);
- frame skip 5 (as Ant-v5): one environment step is 0.05 s of simulation, 500 steps are 25 s;
- a fence of 1 m high walls 1 m outside the arena (the grid world's "off the grid is a no-op"; a torso
  beyond the edge counts as in the edge cell), far enough that the legs of an ant walking along an edge
  cell do not climb it; the pinpad's wall cell is not a physical obstacle: entering it ends the
  episode, as in the paper;
- the coloured, wall and empty cells are thin visual tiles on the floor (no collisions), recoloured to
  the current layout when rendering.

Initial state (paper): torso (x, y) at the start cell's centre plus uniform noise within the cell, height
0.75 m (the model's), a uniformly random yaw; joint angles and all velocities uniform within +-0.1.
Termination: success, a wrong colour, the torso's centre entering the wall cell, or the torso's height
leaving [0.2, 1.0]; truncation at 500 steps.

Observation (float32, 41 values): symlog of the ant's 27-dim proprioception (qpos without x, y: height,
orientation quaternion, 8 joint angles; then qvel: 6 torso velocities, 8 joint velocities), then the
pinpad features (14: normalised (x, y), relative positions of the 4 colours and the wall, local
coordinate in the current cell). Action: 8 torques in [-1, 1].

Rendering uses MuJoCo's offscreen renderer; this module selects the headless EGL backend
(`MUJOCO_GL=egl`, Mesa's software EGL works without a GPU) unless MUJOCO_GL is already set. Where no
OpenGL context can be made, `render` falls back to the top-down picture of `pinpad.render_topdown`.
"""

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if "mujoco" not in __import__("sys").modules:
    os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium
import mujoco
import numpy as np
from gymnasium import spaces

from internal_rl.common.config import with_overrides
from internal_rl.common.errors import ConfigError
from internal_rl.envs.gridworld import check_render_mode
from internal_rl.envs.pinpad import (
    COLOUR_RGB,
    FLOOR_RGB,
    WALL_RGB,
    PinpadBatchState,
    PinpadConfig,
    cell_centres,
    check_positive_float,
    check_positive_int,
    render_topdown,
    single_env_info,
    symlog,
)
from internal_rl.envs.point_pinpad import check_actions, reset_kwargs

ANT_XML = Path(gymnasium.__file__).parent / "envs" / "mujoco" / "assets" / "ant.xml"
PROPRIO_DIM = 27  # qpos[2:] (13) + qvel (14)
ACT_DIM = 8
# Space between the arena's edge and the fence: an ant walking along an edge cell keeps its legs (0.8 m
# from the torso's centre) off the fence, which they would otherwise climb, lifting the torso over 1 m.
FENCE_GAP = 1.0


@dataclass(frozen=True)
class AntPinpadConfig(PinpadConfig):
    """Ant-pinpad parameters: the pinpad's (with 2 m cells) plus the ant's."""

    cell_size: float = 2.0
    frame_skip: int = 5
    min_torso_height: float = 0.2
    max_torso_height: float = 1.0
    # Joint angles and velocities at a reset: uniform within +-reset_noise.
    reset_noise: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        cls = type(self).__name__
        check_positive_int(cls, "frame_skip", self.frame_skip)
        check_positive_float(cls, "reset_noise", self.reset_noise, allow_zero=True)
        check_positive_float(cls, "min_torso_height", self.min_torso_height, allow_zero=True)
        check_positive_float(cls, "max_torso_height", self.max_torso_height)
        if not self.min_torso_height < 0.75 < self.max_torso_height:
            raise ConfigError(
                f"torso height range [{self.min_torso_height}, {self.max_torso_height}] must contain the "
                "starting height 0.75"
            )

    @property
    def obs_dim(self) -> int:
        return PROPRIO_DIM + self.n_features


def ant_pinpad_xml(config: PinpadConfig) -> str:
    """Gymnasium's ant model with the arena added: one visual floor tile per cell, a fence, two cameras."""
    xml = ANT_XML.read_text()
    half, cell = config.half_width, config.cell_size
    tiles = []
    for row in range(config.size):
        for col in range(config.size):
            x, y = cell_centres(np.array(row), np.array(col), config)
            tiles.append(
                f'<geom name="cell_{row}_{col}" type="box" pos="{x:.4f} {y:.4f} 0.002" '
                f'size="{cell / 2 - 0.03:.4f} {cell / 2 - 0.03:.4f} 0.002" contype="0" conaffinity="0" '
                'rgba="0.88 0.88 0.88 1"/>'
            )
    # The fence: four boxes 1 m high (above the torso), FENCE_GAP outside the arena, colliding with the ant.
    t, out = 0.25, half + FENCE_GAP
    for name, (x, y, sx, sy) in {
        "fence_n": (0, out + t, out + 2 * t, t),
        "fence_s": (0, -out - t, out + 2 * t, t),
        "fence_e": (out + t, 0, t, out + 2 * t),
        "fence_w": (-out - t, 0, t, out + 2 * t),
    }.items():
        tiles.append(
            f'<geom name="{name}" type="box" pos="{x:.4f} {y:.4f} 0.5" size="{sx:.4f} {sy:.4f} 0.5" '
            'contype="1" conaffinity="1" rgba="0.45 0.35 0.3 1"/>'
        )
    height = 1.35 * half / np.tan(np.radians(22.5))
    tiles.append(f'<camera name="top" pos="0 0 {height:.3f}" xyaxes="1 0 0 0 1 0"/>')
    # Looking at the arena's centre from the south, 35 degrees off vertical.
    tiles.append(f'<camera name="overview" pos="0 {-1.6 * half:.3f} {2.3 * half:.3f}" xyaxes="1 0 0 0 2.3 1.6"/>')
    anchor = '<body name="torso"'
    if anchor not in xml:
        raise ConfigError(f"unexpected ant model at {ANT_XML}: no torso body")
    return xml.replace(anchor, "\n    ".join(tiles) + "\n    " + anchor, 1)


class BatchedAntPinpad(PinpadBatchState):
    """N ant-pinpad environments: one MuJoCo model, one MjData per env (no autoreset; done envs frozen).

    Public state: `data` (list of MjData), `logic` (the task bookkeeping, see `PinpadLogic`), `rng`.
    MuJoCo steps each env in turn (one C call of `frame_skip` physics steps per env and step).
    """

    act_dim = ACT_DIM

    config: AntPinpadConfig

    def __init__(self, config: AntPinpadConfig, num_envs: int):
        super().__init__(config, num_envs)
        self.model = mujoco.MjModel.from_xml_string(ant_pinpad_xml(config))
        self.data = [mujoco.MjData(self.model) for _ in range(self.num_envs)]
        self._tiles = np.array(
            [self.model.geom(f"cell_{r}_{c}").id for r in range(config.size) for c in range(config.size)]
        )
        self._renderer: Any = None

    @property
    def xy(self) -> np.ndarray:
        """Torso (x, y) per env, float64 [N, 2]."""
        return np.array([d.qpos[:2] for d in self.data])

    def _place_bodies(self, mask: np.ndarray, start: np.ndarray) -> None:
        """Draws, after the task's: yaw, joint positions, joint velocities."""
        ids = np.flatnonzero(mask)
        k, noise = len(ids), self.config.reset_noise
        yaw = self.rng.uniform(-np.pi, np.pi, size=k)
        joints = self.rng.uniform(-noise, noise, size=(k, self.model.nq - 7))
        velocities = self.rng.uniform(-noise, noise, size=(k, self.model.nv))
        for j, i in enumerate(ids):
            data = self.data[i]
            mujoco.mj_resetData(self.model, data)
            data.qpos[:2] = start[j]
            data.qpos[3:7] = (np.cos(yaw[j] / 2), 0.0, 0.0, np.sin(yaw[j] / 2))
            data.qpos[7:] += joints[j]
            data.qvel[:] = velocities[j]
            mujoco.mj_forward(self.model, data)

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """Apply torques `actions` [N, 8] (clipped to [-1, 1]) for `frame_skip` physics steps.

        Returns (obs float32 [N, 41], reward float32 [N], terminated, truncated, info); envs already done
        do not move and return reward 0 with their final flags.
        """
        actions = check_actions(actions, self.num_envs, self.act_dim)
        for i in np.flatnonzero(~self.logic.done):
            data = self.data[i]
            data.ctrl[:] = actions[i]
            mujoco.mj_step(self.model, data, nstep=self.config.frame_skip)
        height = np.array([d.qpos[2] for d in self.data])
        fell = (height < self.config.min_torso_height) | (height > self.config.max_torso_height)
        # A simulation that blew up (NaN state) is a failure too, not a crash.
        fell |= ~np.array([np.isfinite(d.qpos).all() and np.isfinite(d.qvel).all() for d in self.data])
        reward, info = self.logic.update(np.nan_to_num(self.xy), failed=fell)
        return self.observations(), reward, self.logic.terminated.copy(), self.logic.truncated.copy(), info

    def proprioception(self) -> np.ndarray:
        """float64 [N, 27]: qpos without (x, y), then qvel."""
        return np.array([np.concatenate([d.qpos[2:], d.qvel]) for d in self.data])

    def observations(self) -> np.ndarray:
        """float32 [N, 41]: symlog proprioception, then the pinpad features."""
        proprio = symlog(np.nan_to_num(self.proprioception())).astype(np.float32)
        return np.concatenate([proprio, self.logic.features(np.nan_to_num(self.xy))], axis=1)

    def render(self, index: int = 0, pixels: int = 256, camera: str = "overview") -> np.ndarray:
        """RGB picture of env `index`, uint8 [pixels, pixels, 3], from camera "overview", "top" or
        "track" (Gymnasium's, following the ant); a top-down drawing if no OpenGL context can be made."""
        if self._renderer is None:
            try:
                self._renderer = mujoco.Renderer(self.model, pixels, pixels)
            except Exception:  # noqa: BLE001 - any GL failure means "no offscreen rendering here"
                self._renderer = False
        if self._renderer is False:
            return render_topdown(
                self.logic.layouts[index], self.xy[index], self.config, pixels=pixels,
                target=int(self.logic.target()[index]),
            )
        codes = self.logic.layouts[index].reshape(-1).astype(np.int64)
        rgb = np.tile(FLOOR_RGB, (len(codes), 1)).astype(np.float64)
        is_colour = (codes >= 0) & (codes < self.config.n_colours)
        rgb[is_colour] = COLOUR_RGB[codes[is_colour] % len(COLOUR_RGB)]
        rgb[codes >= self.config.n_colours] = WALL_RGB
        self.model.geom_rgba[self._tiles, :3] = rgb / 255.0
        self._renderer.update_scene(self.data[index], camera=camera)
        return self._renderer.render().copy()

    def close(self) -> None:
        if self._renderer:
            self._renderer.close()
        self._renderer = None


class AntPinpadEnv(gymnasium.Env):
    """One ant-pinpad environment (Gymnasium API), a `BatchedAntPinpad` of one.

    reset options (all optional): "task", "layout" (int8 [4, 4], the grid world's encoding), "start_cell"
    ((row, col); requires "layout"). info: "task", "progress", "target" (-1 once over), "visited",
    "cell" ((row, col)), "xy", "torso_height". After the episode ends the env stays frozen until `reset`.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(
        self, config: AntPinpadConfig | None = None, render_mode: str | None = None, camera: str = "overview",
        **overrides: Any,
    ):
        config = with_overrides(config, AntPinpadConfig, overrides)
        check_render_mode(render_mode, self.metadata)
        if camera not in ("overview", "top", "track"):
            raise ConfigError(f"unknown camera {camera!r}; valid: ['overview', 'top', 'track']")
        self.config = config
        self.render_mode = render_mode
        self.camera = camera
        self.batch = BatchedAntPinpad(config, 1)
        self.observation_space = spaces.Box(-np.inf, np.inf, (config.obs_dim,), dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (ACT_DIM,), dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        kwargs = reset_kwargs(options)
        self.batch.rng = self.np_random
        obs = self.batch.reset(**kwargs)
        return obs[0], self._info({"visited": np.array([-1])})

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        obs, reward, terminated, truncated, info = self.batch.step(np.asarray(action)[None])
        return obs[0], float(reward[0]), bool(terminated[0]), bool(truncated[0]), self._info(info)

    def render(self) -> np.ndarray | None:
        if self.render_mode == "rgb_array":
            return self.batch.render(0, camera=self.camera)
        return None

    def close(self) -> None:
        self.batch.close()

    def _info(self, step_info: dict[str, np.ndarray]) -> dict[str, Any]:
        info = single_env_info(self.batch.logic, step_info, self.batch.data[0].qpos[:2].copy())
        return {**info, "torso_height": float(self.batch.data[0].qpos[2])}
