"""The ant-pinpad expert: a scripted, steerable trot that follows the grid-level shortest path.

The paper's ant expert is a PPO agent (App. C.1). On 2 CPU cores PPO did not produce a walking ant
(no episode succeeded in 1.2M steps), so this expert is scripted instead, and is as competent: it
succeeds in 0.78 of episodes on the pretraining tasks and 0.71 to 0.77 on 0-1-2-3, against the paper's
0.8 and 0.7 (README, "MuJoCo pinpad").

Two layers, as in the point-mass expert:
- **Where to go.** The shortest path on the cell grid to the next colour (`pinpad_expert.ShortestPaths`,
  route ties drawn once per episode) gives a world direction, plus a pull towards the current cell's
  centre line.
- **How to walk there.** A trot (diagonal leg pairs in antiphase) whose joint-angle targets are tracked by
  a PD controller. For a desired direction psi in the torso's heading frame, each hip swings with an
  amplitude proportional to sin(psi - leg angle), the tangential component of the motion at that leg,
  so one gait walks in every direction without turning the body; the ankles lift and lower with a phase
  lag and lean against the torso's tilt. Its nine numbers (`AntGait`) were found by a cross-entropy
  search on the plain ant (`scripts/search_ant_gait.py`; the command is in `AntGait`'s docstring).

The expert's actions are the PD torques, plus Gaussian noise of `noise_std` for data D (zero for D*). The
gait's phase is part of the expert's state, drawn at random when an episode starts; the base model sees
it only through the joint angles and velocities, like the paper's base model sees a PPO ant's gait.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from internal_rl.common.config import config_to_dict
from internal_rl.common.errors import ConfigError
from internal_rl.envs.ant_pinpad import ACT_DIM, AntPinpadConfig, BatchedAntPinpad
from internal_rl.envs.pinpad import check_positive_float
from internal_rl.envs.pinpad_expert import ExpertEpisodes, ShortestPaths, collect_episodes
from internal_rl.envs.tasks import Task, with_tasks

# The legs in the order of Gymnasium's ant.xml (front_left, front_right, back, right_back): their angle
# around the torso, the sign that makes a positive ankle angle press the foot down, and the indices of
# (hip, ankle) among the 8 joints of qpos[7:] and among the 8 actuators (which list leg 4 first).
LEG_ANGLES = np.radians([45.0, 135.0, 225.0, 315.0])
ANKLE_SIGNS = np.array([1.0, -1.0, -1.0, 1.0])
JOINTS = np.array([[0, 1], [2, 3], [4, 5], [6, 7]])
ACTUATORS = np.array([[2, 3], [4, 5], [6, 7], [0, 1]])
TROT = np.array([0.0, np.pi, 0.0, np.pi])  # diagonal pairs (1, 3) and (2, 4) in antiphase
HIP_LIMIT = np.radians(30.0)
ANKLE_RANGE = np.radians([30.0, 70.0])


@dataclass(frozen=True)
class AntGait:
    """The steerable trot's parameters (radians, seconds, torques in control units).

    Found by `scripts/search_ant_gait.py --seed 2 --generations 60 --population 40` (cross-entropy
    search, 3 minutes on one core): about 0.7 m/s in any direction, turning by 90 degrees every 1.25 s. Of
    the two seeds searched, seed 2's gait succeeds more often with torque noise (pretraining tasks 0.73
    against 0.65 for seed 1's, 256 episodes each).
    """

    frequency: float = 7.79  # omega, rad/s of phase
    hip_amplitude: float = 0.92  # swing amplitude of a hip tangential to the desired direction
    hip_cross: float = 0.09  # swing amplitude of a hip radial to it
    ankle_mid: float = 0.54  # mean ankle angle (foot down) ...
    ankle_amplitude: float = 0.33  # ... its oscillation ...
    ankle_phase: float = -2.64  # ... and the oscillation's phase after the hip's
    kp: float = 2.08  # PD gains, control per rad and per rad/s
    kd: float = 0.16
    tilt_gain: float = 0.23  # ankle angle per unit of torso tilt towards the leg


@dataclass(frozen=True)
class AntExpertConfig:
    """The expert: its gait, the pull towards the path's centre line, and the noise of data D."""

    gait: AntGait = AntGait()
    lateral_gain: float = 1.0  # per metre off the current cell's centre line
    noise_std: float = 0.1  # Gaussian noise on the torques; 0 gives the mean actions (D*)

    def __post_init__(self) -> None:
        cls = type(self).__name__
        check_positive_float(cls, "lateral_gain", self.lateral_gain, allow_zero=True)
        check_positive_float(cls, "noise_std", self.noise_std, allow_zero=True)


def gait_torques(
    gait: AntGait, phase: np.ndarray, psi: np.ndarray, joints: np.ndarray, joint_velocities: np.ndarray,
    tilt: np.ndarray,
) -> np.ndarray:
    """The trot's torques, float64 [N, 8] in actuator order, clipped to [-1, 1].

    phase [N]; psi [N] the desired direction in the torso's heading frame; joints, joint_velocities
    [N, 8] (qpos[7:], qvel[6:]); tilt [N, 2] the torso's up axis in the heading frame.
    """
    g = gait
    angle = phase[:, None] + TROT  # [N, 4]
    relative = psi[:, None] - LEG_ANGLES
    lean = tilt @ np.stack([np.cos(LEG_ANGLES), np.sin(LEG_ANGLES)])  # [N, 4]: tilt towards each leg
    hip = (g.hip_amplitude * np.sin(relative) + g.hip_cross * np.cos(relative)) * np.sin(angle)
    ankle = g.ankle_mid + g.ankle_amplitude * np.sin(angle + g.ankle_phase) + g.tilt_gain * lean
    targets = np.stack([np.clip(hip, -HIP_LIMIT, HIP_LIMIT), ANKLE_SIGNS * np.clip(ankle, *ANKLE_RANGE)], axis=-1)
    error = targets - joints[:, JOINTS]
    control = g.kp * error - g.kd * joint_velocities[:, JOINTS]  # [N, 4, 2]
    torques = np.empty((len(phase), ACT_DIM))
    torques[:, ACTUATORS.reshape(-1)] = control.reshape(len(phase), -1)
    return np.clip(torques, -1.0, 1.0)


def torso_frame(data: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """(yaw [N], tilt [N, 2]) of each torso: its heading, and its up axis in the heading frame."""
    yaw = np.empty(len(data))
    up = np.empty((len(data), 2))
    for i, d in enumerate(data):
        w, x, y, z = d.qpos[3:7]
        yaw[i] = np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))
        up[i] = d.xmat[1, [2, 5]]  # the torso (body 1)'s z axis, world (x, y)
    cos, sin = np.cos(yaw), np.sin(yaw)
    tilt = np.stack([cos * up[:, 0] + sin * up[:, 1], -sin * up[:, 0] + cos * up[:, 1]], axis=1)
    return yaw, tilt


class AntExpert:
    """Scripted ant expert for a `BatchedAntPinpad` (see the module docstring)."""

    def __init__(self, env_config: AntPinpadConfig, config: AntExpertConfig | None = None):
        self.env_config = env_config
        self.config = config if config is not None else AntExpertConfig()
        self.paths = ShortestPaths(env_config)
        self.phase = np.zeros(0)

    def act(self, env: BatchedAntPinpad, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(sampled actions, mean actions), float32 [N, 8] each, zero for done envs."""
        if env.config != self.env_config:
            raise ConfigError("AntExpert was built for a different AntPinpadConfig than the env it acts in")
        n = env.num_envs
        if len(self.phase) != n:
            self.phase = np.zeros(n)
        starting = env.logic.t == 0
        self.phase[starting] = rng.uniform(0.0, 2 * np.pi, size=int(starting.sum()))
        desired = self.paths.direction(env.logic, env.xy, rng, self.config.lateral_gain)
        yaw, tilt = torso_frame(env.data)
        psi = np.arctan2(desired[:, 1], desired[:, 0]) - yaw
        joints = np.array([d.qpos[7:] for d in env.data])
        velocities = np.array([d.qvel[6:] for d in env.data])
        mean = gait_torques(self.config.gait, self.phase, psi, joints, velocities, tilt)
        self.phase += self.config.gait.frequency * env.model.opt.timestep * self.env_config.frame_skip
        sampled = np.clip(mean + self.config.noise_std * rng.normal(size=mean.shape), -1.0, 1.0)
        alive = ~env.logic.done[:, None]
        return np.where(alive, sampled, 0.0).astype(np.float32), np.where(alive, mean, 0.0).astype(np.float32)


def ant_expert_episodes(
    episodes: int,
    seed: int,
    *,
    env_config: AntPinpadConfig | None = None,
    expert_config: AntExpertConfig | None = None,
    tasks: Sequence[Task] | None = None,
    successful_only: bool = True,
    batch_size: int = 64,
    max_batches: int | None = None,
    show_progress: bool = False,
) -> dict[str, np.ndarray]:
    """`episodes` ant-pinpad expert episodes (successful ones only, by default) as padded arrays
    (`pinpad_expert.collect_episodes`); tasks as in `point_expert_episodes`. Same seed, same arrays.

    Gives up with a ConfigError after `max_batches` batches; by default 4x the batches a fully successful
    expert would need (plus 4), so that a configuration the expert cannot solve fails in seconds, not hours.
    """
    if max_batches is None:
        max_batches = 4 * math.ceil(episodes / batch_size) + 4
    env_config = with_tasks(env_config if env_config is not None else AntPinpadConfig(), tasks)
    expert = AntExpert(env_config, expert_config)
    env = BatchedAntPinpad(env_config, batch_size)
    return collect_episodes(
        env, lambda e, r: expert.act(e, r)[0], episodes, seed, successful_only=successful_only,
        max_batches=max_batches, show_progress=show_progress, desc="generate ant-pinpad",
    )


def ant_expert_data(
    config: AntPinpadConfig | None, tasks: Sequence[Task] | None, episodes: int, seed: int, *,
    mean_actions: bool = False, show_progress: bool = False,
) -> ExpertEpisodes:
    """The ant expert's successful episodes with their provenance, for a dataset: data D (torque noise
    0.1), or D* (its mean actions) with `mean_actions`."""
    if config is not None and not isinstance(config, AntPinpadConfig):
        raise ConfigError(f"the ant expert needs an AntPinpadConfig, got a {type(config).__name__}")
    env_config = with_tasks(config if config is not None else AntPinpadConfig(), tasks)
    expert = AntExpertConfig(noise_std=0.0) if mean_actions else AntExpertConfig()
    arrays = ant_expert_episodes(episodes, seed, env_config=env_config, expert_config=expert,
                                 show_progress=show_progress)
    return ExpertEpisodes(arrays, env_config, "AntExpert", config_to_dict(expert))
