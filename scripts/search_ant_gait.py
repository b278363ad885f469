"""Search the ant expert's steerable trot (`envs/ant_expert.AntGait`) by the cross-entropy method.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/search_ant_gait.py --seed 1 --generations 60 --population 40

Each candidate gait walks Gymnasium's plain ant (no arena) from 3 random starts (random yaw, joint and
velocity noise of +-0.1, random gait phase) through 8 segments of 25 steps (1.25 s) each, told a world
direction per segment: a random one, then turns of -90, 0 or +90 degrees. Its score is the distance
covered along the told directions, with -20 for a start on which the torso leaves [0.3, 0.9] m (inside
the task's [0.2, 1.0]). The elite sixth of each generation sets the next search distribution. Prints a
line per 5 generations and, at the end, the mean gait as an `AntGait(...)` to paste as the defaults.
"""

import argparse
import dataclasses
import time

import mujoco
import numpy as np

from internal_rl.envs.ant_expert import AntGait, gait_torques, torso_frame
from internal_rl.envs.ant_pinpad import ANT_XML

FRAME_SKIP, SEGMENTS, SEGMENT_STEPS, STARTS = 5, 8, 25, 3
NAMES = [f.name for f in dataclasses.fields(AntGait)]
# The search's initial mean and standard deviation, per field of AntGait.
INIT_MEAN = dict(frequency=8.0, hip_amplitude=0.3, hip_cross=0.0, ankle_mid=0.87, ankle_amplitude=0.2,
                 ankle_phase=0.0, kp=2.0, kd=0.1, tilt_gain=0.0)
INIT_STD = dict(frequency=3.0, hip_amplitude=0.3, hip_cross=0.2, ankle_mid=0.2, ankle_amplitude=0.2,
                ankle_phase=np.pi, kp=1.0, kd=0.1, tilt_gain=0.5)


def scores(model: mujoco.MjModel, gaits: list[AntGait], rng: np.random.Generator) -> np.ndarray:
    """Mean score of each gait over STARTS random starts, all walked at once."""
    runs = [(g, k) for g in range(len(gaits)) for k in range(STARTS)]
    data = [mujoco.MjData(model) for _ in runs]
    yaw = rng.uniform(-np.pi, np.pi, len(runs))
    for d, y in zip(data, yaw):
        d.qpos[3:7] = (np.cos(y / 2), 0.0, 0.0, np.sin(y / 2))
        d.qpos[7:] += rng.uniform(-0.1, 0.1, 8)
        d.qvel[:] = rng.uniform(-0.1, 0.1, model.nv)
    phase = rng.uniform(0, 2 * np.pi, len(runs))
    frequency = np.array([gaits[g].frequency for g, _ in runs])
    total, alive = np.zeros(len(runs)), np.ones(len(runs), dtype=bool)
    world = rng.uniform(-np.pi, np.pi, len(runs))
    dt = model.opt.timestep * FRAME_SKIP
    for segment in range(SEGMENTS):
        if segment:
            world += rng.choice([-np.pi / 2, 0.0, np.pi / 2], len(runs))
        start = np.array([d.qpos[:2].copy() for d in data])
        for _ in range(SEGMENT_STEPS):
            heading, tilt = torso_frame(data)
            joints = np.array([d.qpos[7:] for d in data])
            velocities = np.array([d.qvel[6:] for d in data])
            for g, gait in enumerate(gaits):
                rows = np.arange(g * STARTS, (g + 1) * STARTS)
                torques = gait_torques(gait, phase[rows], world[rows] - heading[rows], joints[rows],
                                       velocities[rows], tilt[rows])
                for i, row in enumerate(rows):
                    if alive[row]:
                        data[row].ctrl[:] = torques[i]
                        mujoco.mj_step(model, data[row], nstep=FRAME_SKIP)
            phase += frequency * dt
            height = np.array([d.qpos[2] for d in data])
            fell = alive & ((height < 0.3) | (height > 0.9))
            total[fell] -= 20.0
            alive &= ~fell
        moved = np.array([d.qpos[:2] for d in data]) - start
        total += np.where(alive, moved[:, 0] * np.cos(world) + moved[:, 1] * np.sin(world), 0.0)
    return total.reshape(len(gaits), STARTS).mean(axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--generations", type=int, default=60)
    parser.add_argument("--population", type=int, default=40)
    args = parser.parse_args()
    model = mujoco.MjModel.from_xml_string(ANT_XML.read_text())
    rng = np.random.default_rng(args.seed)
    mean = np.array([INIT_MEAN[n] for n in NAMES])
    std = np.array([INIT_STD[n] for n in NAMES])
    elite = max(2, args.population // 6)
    start = time.perf_counter()
    for generation in range(args.generations):
        candidates = mean + std * rng.standard_normal((args.population, len(NAMES)))
        candidates[:, NAMES.index("frequency")] = np.clip(candidates[:, NAMES.index("frequency")], 2.0, 20.0)
        for name in ("kp", "kd"):
            candidates[:, NAMES.index(name)] = np.abs(candidates[:, NAMES.index(name)])
        score = scores(model, [AntGait(*c) for c in candidates], rng)
        best = candidates[np.argsort(score)[-elite:]]
        mean, std = best.mean(axis=0), best.std(axis=0) + 0.01
        if generation % 5 == 0 or generation == args.generations - 1:
            print(f"generation {generation:3d}  best {score.max():6.2f}  mean {score.mean():6.2f}  "
                  f"{time.perf_counter() - start:4.0f}s", flush=True)
    final = AntGait(*(float(v) for v in np.round(mean, 2)))
    check = scores(model, [final] * 8, np.random.default_rng(99)).mean()
    print(f"score of the mean gait over 24 fresh starts: {check:.2f} (at most about {SEGMENTS * 1.25 * 1.5:.0f})")
    print(final)


if __name__ == "__main__":
    main()
