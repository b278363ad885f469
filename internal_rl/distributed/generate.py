"""Expert dataset generation on Ray: the chunks `data.generate` plans, rolled out as Ray tasks.

`generate_trajectories` plans each round's chunks (sizes and seeds) from the seed and earlier rounds
alone; here every chunk becomes one task running `rollout_chunk`, and the results are handed back in plan
order, so the merged arrays are byte-identical to local generation with the same seed and batch size. A
task lost with its worker is re-run by Ray (`max_retries`), with the same inputs and so the same output.
"""

from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from internal_rl.data.generate import MapChunks, generate_dataset, rollout_chunk
from internal_rl.distributed import check_workers, cluster_cpus, get, require_ray

MAX_RETRIES = 3  # re-runs of a chunk whose worker died


def ray_map_chunks(workers: int | None = None) -> MapChunks:
    """A `MapChunks` that runs each chunk as a Ray task, keeping `workers` + 1 in flight (default: all CPUs), so that no worker waits for the next chunk.

    Ray must be initialised (`internal_rl.distributed.init_ray`).
    """
    check_workers(workers)
    ray = require_ray()
    remote_chunk = ray.remote(num_cpus=1, max_retries=MAX_RETRIES)(rollout_chunk)

    def map_chunks(config: Any, epsilon: float, noiseless: bool,
                   chunks: list[tuple[int, int]]) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
        config_ref = ray.put(config)
        todo, pending = deque(chunks), deque()

        def submit() -> None:
            if todo:
                num_envs, seed = todo.popleft()
                pending.append(remote_chunk.remote(config_ref, num_envs, seed, epsilon, noiseless))

        for _ in range((workers or cluster_cpus()) + 1):  # one queued beyond the running ones keeps workers busy
            submit()
        while pending:  # in plan order: a chunk that finishes early waits in the object store
            result = get(pending.popleft())
            submit()
            yield result

    return map_chunks


def generate_dataset_ray(env: str, episodes: int, out: str | Path, seed: int, *, workers: int | None = None,
                         **kwargs: Any) -> Path:
    """`data.generate.generate_dataset` with the chunks rolled out on Ray (see `ray_map_chunks`)."""
    return generate_dataset(env, episodes, out, seed, map_chunks=ray_map_chunks(workers), **kwargs)
