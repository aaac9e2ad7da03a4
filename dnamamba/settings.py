"""User settings into their dataclass schemas, with every mistake as one line.

`build(cls, values)` checks the keys (unknown ones get a did-you-mean), fills required ones, converts
and checks the types through OmegaConf's structured configs ("64" -> 64, "abc" for an int is an
error), then runs the schema's `validate()` for ranges. Schemas raise ValueError("key=value: why")
from `validate()`; here it becomes an InputError that names the setting with its group prefix.
"""
from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Iterable, TypeVar

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import InputError

C = TypeVar("C")

# Errors in the settings themselves (not in a file) are reported against this name.
SETTINGS = "settings"


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean X?)' for the closest of `choices`, or ''."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def build(cls: type[C], values: Any, prefix: str = "") -> C:
    """The dataclass `cls` from a Hydra config or a plain mapping; `prefix` ("data.") names the group
    in messages. A `_target_` key (Hydra's) is ignored."""
    if isinstance(values, cls):
        return values
    data = OmegaConf.to_container(values, resolve=True) if isinstance(values, DictConfig) else dict(values)
    data.pop("_target_", None)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in sorted(set(data) - set(names)):
        raise InputError(SETTINGS, f"unknown setting {prefix}{key}{did_you_mean(key, names)}; "
                                   f"known settings: {', '.join(prefix + n for n in names)}")
    missing = [k for k in names if data.get(k, _default(cls, k)) == MISSING]
    if missing:
        raise InputError(SETTINGS, "missing required setting(s): " + ", ".join(f"{prefix}{k}=..." for k in missing))
    try:
        # Merging into the structured schema checks and converts types ("64" -> 64, "true" -> True);
        # creating the object runs the schema's __post_init__, which may check ranges.
        obj = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), data))
        validate = getattr(obj, "validate", None)
        if validate is not None:
            validate()
    except OmegaConfBaseException as e:  # a value of the wrong type
        key = getattr(e, "full_key", None)
        raise InputError(SETTINGS, f"bad setting{f' {prefix}{key}' if key else ''}: {_first_line(e)}") from None
    except ValueError as e:  # the schema's own range checks
        raise InputError(SETTINGS, f"{prefix}{_first_line(e)}") from None
    return obj


def _default(cls, name: str):
    field = {f.name: f for f in dataclasses.fields(cls)}[name]
    return field.default


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
