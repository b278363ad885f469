"""Scaling out on Ray: dataset generation, RL rollouts and multi-seed sweeps over workers or a cluster.

Everything here is optional (`pip install internal-rl[ray]`) and imported only when asked for (`--ray`,
`--ray-address`, `internal-rl sweep`); nothing else in the package imports Ray. The distributed stages
run the very functions the local ones run (`data.generate.rollout_chunk`, `rl.training.method_setup`'s
rollouts, `pipeline.sweep.run_trial`); Ray only decides where they run and re-runs work lost with a worker.

    generate.py   expert chunks as Ray tasks, merged in plan order: byte-identical to local generation
    rollouts.py   Ray actors holding the frozen base model collect shares of each batch of episodes
    sweep.py      the trials of a sweep (`pipeline.sweep`: config, folders, report) as Ray Tune trials, resumable
"""

from typing import Any

from internal_rl.common.errors import ConfigError, DependencyError, InternalRLError

INSTALL_HINT = "pip install 'internal-rl[ray]'"


def require_ray() -> Any:
    """The `ray` module, or a one-line DependencyError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise DependencyError(f"Ray is not installed; install the extra with `{INSTALL_HINT}`") from None
    return ray


def init_ray(address: str | None = None, num_cpus: int | None = None) -> Any:
    """Start a local Ray instance (`num_cpus`: default all cores) or connect to the cluster at `address`.

    An already initialised Ray (e.g. the caller's own `ray.init`) is used as it is. Returns `ray`.
    """
    ray = require_ray()
    if ray.is_initialized():
        return ray
    options: dict[str, Any] = {"include_dashboard": False, "logging_level": "WARNING"}
    try:
        if address:
            ray.init(address=address, **options)
        else:
            ray.init(num_cpus=num_cpus, **options)
    except (ConnectionError, RuntimeError, ValueError) as err:
        where = f"the Ray cluster at {address!r}" if address else "a local Ray instance"
        raise DependencyError(f"cannot start or reach {where}: {str(err).splitlines()[0]}") from None
    return ray


def check_workers(workers: int | None) -> int | None:
    """`workers` (Ray workers to use) if it is None (one per CPU of the cluster) or a positive integer;
    a one-line ConfigError otherwise. The one check of `--workers`, for generation and RL alike."""
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ConfigError(f"workers {workers!r}: expected a positive integer (or none: one per CPU of the Ray cluster)")
    return workers


def cluster_cpus() -> int:
    """CPUs Ray can schedule on (at least 1)."""
    ray = require_ray()
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def get(refs: Any) -> Any:
    """`ray.get`, re-raising a user-facing error raised inside a task as itself (one line, not a traceback)."""
    ray = require_ray()
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as err:
        if isinstance(err.cause, InternalRLError):
            raise err.cause from None
        raise
