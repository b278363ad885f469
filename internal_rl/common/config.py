"""Config dataclasses to and from JSON, with unknown or mistyped keys refused at the boundary; atomic
writes of JSON and text files."""

import dataclasses
import json
import uuid
from pathlib import Path
from typing import Any, TypeVar

from internal_rl.common.errors import ConfigError

C = TypeVar("C")


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (possibly nested) config dataclass; tuples become lists."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def config_from_dict(cls: type[C], values: dict[str, Any]) -> C:
    """Build `cls` from `values`, refusing keys it does not have; lists become tuples where the default is one."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} field(s) {unknown}; valid: {sorted(fields)}")
    kwargs = {}
    for name, value in values.items():
        field_type = fields[name].type
        if dataclasses.is_dataclass(field_type) and isinstance(value, dict):
            value = config_from_dict(field_type, value)
        elif isinstance(value, list):
            value = _to_tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def _to_tuple(value: Any) -> Any:
    return tuple(_to_tuple(v) for v in value) if isinstance(value, list) else value


def replace(config: C, **changes: Any) -> C:
    """`dataclasses.replace` that names an unknown field instead of raising TypeError."""
    fields = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(changes) - fields)
    if unknown:
        raise ConfigError(f"unknown {type(config).__name__} field(s) {unknown}; valid: {sorted(fields)}")
    return dataclasses.replace(config, **changes)


def with_overrides(config: C | None, default: type[C], overrides: dict[str, Any]) -> C:
    """`config` (or `default()` if None) with the fields in `overrides` replaced, as environments take them."""
    config = config if config is not None else default()
    return replace(config, **overrides) if overrides else config


def save_text(path: Path, text: str) -> None:
    """Write `text` to `path` atomically: a reader sees the old file or the new one, never a partial one.

    The text goes to a temporary sibling with a unique name (so concurrent writers do not share it),
    which is then renamed over `path`.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_text(text)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def save_json(path: Path, obj: Any) -> None:
    """Write `obj` as indented JSON atomically (see `save_text`)."""
    save_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def load_json(path: Path) -> Any:
    """Read JSON, turning a missing or malformed file into a `ConfigError` that names it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"missing file {path}") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"malformed JSON in {path}: {err}") from None
