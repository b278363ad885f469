"""Episode videos: roll a policy out in one environment, keep its rendered frames, write them as a GIF.

Works with any environment whose `render()` returns an RGB array (the pinpad environments made with
`render_mode="rgb_array"`). A policy is any callable `policy(observation, info) -> action`, so a caller
higher in the stack (a trained model, the expert) wraps itself in one; this module knows nothing of them.
GIFs are written with Pillow (already installed with matplotlib): no video codec is needed.
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from internal_rl.common.errors import ConfigError


def record_episode(
    env: Any,
    policy: Callable[[np.ndarray, dict[str, Any]], np.ndarray],
    *,
    seed: int | None = None,
    options: dict[str, Any] | None = None,
    every: int = 1,
    max_steps: int | None = None,
) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Run one episode and return (frames, summary).

    Frames (uint8 [H, W, 3]) are rendered after the reset and after every `every`-th step, and always
    after the last one. summary: "return", "length", "success" (reward > 0 at the end), "final_info".
    """
    if every < 1:
        raise ConfigError(f"every must be >= 1, got {every!r}")
    obs, info = env.reset(seed=seed, options=options)
    frames = [np.asarray(env.render())]
    total, length, terminated, truncated, reward = 0.0, 0, False, False, 0.0
    while not (terminated or truncated) and (max_steps is None or length < max_steps):
        obs, reward, terminated, truncated, info = env.step(policy(obs, info))
        total += float(reward)
        length += 1
        if length % every == 0 or terminated or truncated:
            frames.append(np.asarray(env.render()))
    summary = {"return": total, "length": length, "success": bool(terminated and reward > 0), "final_info": info}
    return frames, summary


def write_gif(frames: list[np.ndarray], path: str | Path, fps: float = 20.0, hold_last: float = 1.0) -> Path:
    """Write `frames` (uint8 [H, W, 3] each) as a looping GIF at `fps`; the last frame stays `hold_last` s."""
    if not frames:
        raise ConfigError("no frames to write")
    path = Path(path)
    if path.suffix.lower() != ".gif":
        raise ConfigError(f"video path must end in .gif, got {str(path)!r}")
    images = [Image.fromarray(np.asarray(frame, dtype=np.uint8)) for frame in frames]
    durations = [int(round(1000 / fps))] * len(images)
    durations[-1] += int(round(1000 * hold_last))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=durations, loop=0)
    tmp.replace(path)
    return path
