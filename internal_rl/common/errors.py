"""One hierarchy for user-facing failures.

Every error a user can cause (a bad config value, a missing or corrupted file, an unknown hook name)
is raised as a subclass of `InternalRLError` with a one-line message that names the bad value and,
where it helps, the valid choices. The CLI prints that line and exits with status 2.
"""


class InternalRLError(Exception):
    """Base class of every user-facing failure."""


class ConfigError(InternalRLError, ValueError):
    """A configuration or argument value is invalid."""


class DatasetError(InternalRLError):
    """A dataset is missing, incomplete, corrupted, or would be overwritten."""


class CheckpointError(InternalRLError):
    """A checkpoint or run folder is missing, incomplete, or does not match the request."""


def check(condition: bool, message: str) -> None:
    """Raise `ConfigError(message)` unless `condition` holds."""
    if not condition:
        raise ConfigError(message)


class DependencyError(InternalRLError):
    """An optional dependency (e.g. Ray, `pip install internal-rl[ray]`) is missing or unusable."""
