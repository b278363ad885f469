"""The scripted ant expert: its leg tables, the gait, that it walks to a colour, and its datasets."""

import mujoco
import numpy as np
import pytest

from internal_rl.common.errors import ConfigError
from internal_rl.envs.ant_expert import (
    ACTUATORS,
    ANKLE_SIGNS,
    JOINTS,
    LEG_ANGLES,
    AntExpert,
    AntExpertConfig,
    AntGait,
    ant_expert_data,
    ant_expert_episodes,
    gait_torques,
    torso_frame,
)
from internal_rl.envs.ant_pinpad import AntPinpadConfig, BatchedAntPinpad
from internal_rl.envs.point_pinpad import PointPinpadConfig

LAYOUT = np.array([[0, 1, -1, -1], [-1, 4, -1, -1], [-1, -1, 2, -1], [3, -1, -1, -1]], dtype=np.int8)


def test_leg_tables_match_the_ant_model() -> None:
    model = BatchedAntPinpad(AntPinpadConfig(), 1).model
    hinges = [model.joint(j).name for j in range(1, 9)]  # qpos[7:] in order, after the free joint
    for leg in range(4):
        names = (f"hip_{leg + 1}", f"ankle_{leg + 1}")
        assert [hinges[j] for j in JOINTS[leg]] == list(names)
        assert [model.joint(int(model.actuator_trnid[a, 0])).name for a in ACTUATORS[leg]] == list(names)
        foot = model.body(f"aux_{leg + 1}").pos[:2]
        assert np.isclose(np.arctan2(foot[1], foot[0]) % (2 * np.pi), LEG_ANGLES[leg])
        # The signed ankle range is the joint's: a positive signed angle presses the foot down.
        ankle_range = np.degrees(model.jnt_range[model.joint(names[1]).id])
        assert np.allclose(sorted(ANKLE_SIGNS[leg] * np.array([30.0, 70.0])), ankle_range)


def test_gait_torques_track_the_targets_and_steer_by_the_hips() -> None:
    gait = AntGait(ankle_amplitude=0.0, tilt_gain=0.0, kd=0.0)
    phase, zeros = np.array([np.pi / 2]), np.zeros((1, 2))
    # Joints standing exactly on the targets need no torque.
    joints = np.zeros((1, 8))
    for leg in range(4):
        angle = np.pi / 2 + (0.0 if leg in (0, 2) else np.pi)
        joints[0, JOINTS[leg, 0]] = np.clip(gait.hip_amplitude * np.sin(0 - LEG_ANGLES[leg]) * np.sin(angle)
                                            + gait.hip_cross * np.cos(0 - LEG_ANGLES[leg]) * np.sin(angle),
                                            -np.radians(30), np.radians(30))
        joints[0, JOINTS[leg, 1]] = ANKLE_SIGNS[leg] * gait.ankle_mid
    assert np.allclose(gait_torques(gait, phase, np.zeros(1), joints, np.zeros((1, 8)), zeros), 0.0)
    # Turning the desired direction by 90 degrees swaps which legs swing: the leg pattern rotates with it.
    east = gait_torques(gait, phase, np.zeros(1), np.zeros((1, 8)), np.zeros((1, 8)), zeros)[0]
    north = gait_torques(gait, phase, np.array([np.pi / 2]), np.zeros((1, 8)), np.zeros((1, 8)), zeros)[0]
    hips = ACTUATORS[:, 0]
    assert not np.allclose(east[hips], north[hips])
    assert np.abs(gait_torques(AntGait(kp=100.0), np.zeros(3), np.zeros(3), np.zeros((3, 8)), np.zeros((3, 8)),
                               np.zeros((3, 2)))).max() <= 1.0


def test_torso_frame_reads_yaw_and_tilt() -> None:
    env = BatchedAntPinpad(AntPinpadConfig(), 2)
    env.reset(seed=0)
    for data, yaw in zip(env.data, (np.pi / 2, -np.pi / 4)):
        data.qpos[3:7] = (np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2))
        mujoco.mj_forward(env.model, data)
    yaw, tilt = torso_frame(env.data)
    assert np.allclose(yaw, [np.pi / 2, -np.pi / 4]) and np.allclose(tilt, 0.0, atol=1e-9)


def test_the_expert_walks_to_a_colour_two_cells_away() -> None:
    # Colour 2 sits two cells above the start cell (3, 2); every ant, whatever its yaw, must walk 4 m.
    config = AntPinpadConfig(tasks=((2,),), horizon=200)
    env = BatchedAntPinpad(config, 8)
    env.reset(seed=0, layouts=np.repeat(LAYOUT[None], 8, axis=0), start_cells=[(3, 2)] * 8)
    start = env.xy.copy()
    expert, rng = AntExpert(config), np.random.default_rng(0)
    while not env.done.all():
        env.step(expert.act(env, rng)[0])
    assert env.logic.success.mean() >= 0.75, env.logic.success
    assert np.linalg.norm(env.xy - start, axis=1).max() > 2.0
    assert env.t[env.logic.success].mean() < 120, "about 1 m/s: 4 m in well under 6 s"


def test_episodes_are_seeded_and_the_clean_data_are_the_mean_actions() -> None:
    config = AntPinpadConfig(horizon=30)
    kwargs = dict(env_config=config, successful_only=False, batch_size=4)
    a = ant_expert_episodes(4, seed=3, **kwargs)
    b = ant_expert_episodes(4, seed=3, **kwargs)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert a["observations"].shape[2] == 41 and a["actions"].shape[2] == 8
    assert np.array_equal(a["subgoals"], a["targets"])
    clean = ant_expert_episodes(4, seed=3, expert_config=AntExpertConfig(noise_std=0.0), **kwargs)
    assert not np.array_equal(clean["actions"], a["actions"])


def test_bad_expert_configs_are_clear_errors() -> None:
    with pytest.raises(ConfigError, match="noise_std"):
        AntExpertConfig(noise_std=-0.1)
    with pytest.raises(ConfigError, match="AntPinpadConfig"):
        ant_expert_data(PointPinpadConfig(), None, 1, 0)
    env = BatchedAntPinpad(AntPinpadConfig(horizon=10), 1)
    env.reset(seed=0)
    with pytest.raises(ConfigError, match="different AntPinpadConfig"):
        AntExpert(AntPinpadConfig()).act(env, np.random.default_rng(0))


def test_ant_dataset_manifest_records_the_expert() -> None:
    from internal_rl.data.generate import env_config_from_manifest, generate_trajectories

    data = generate_trajectories("ant-pinpad", 2, seed=0, tasks=((2,), (3,)))
    manifest = data.manifest
    assert manifest["expert"] == "AntExpert" and manifest["expert_config"]["noise_std"] == AntExpertConfig().noise_std
    assert manifest["expert_config"]["gait"]["frequency"] == AntGait().frequency
    clean = ant_expert_data(None, ((2,),), 2, 0, mean_actions=True)
    assert clean.expert_config["noise_std"] == 0.0 and clean.arrays["success"].all()
    assert env_config_from_manifest(manifest).tasks == ((2,), (3,))
    assert manifest["expert_success_rate"] > 0.5


def test_an_unsolvable_configuration_fails_fast_with_a_clear_error() -> None:
    # 10 steps (0.5 s) reach no colour: the expert never succeeds, and says so after a few batches.
    with pytest.raises(ConfigError, match="succeeded in only 0 of 128 episodes"):
        ant_expert_episodes(1, seed=0, env_config=AntPinpadConfig(horizon=10), batch_size=16)
