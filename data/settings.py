"""Read, validate and save the config dataclasses: one way for every component, with pydantic over stdlib dataclasses.

Each config stays a plain ``@dataclass`` (its ``__post_init__`` checks cross-field rules); field ranges are declared
on the fields with ``Annotated[..., Field(ge=...)]``. :func:`load_settings` validates a JSON-like dict in pydantic's
strict JSON mode — ``"512"`` is not an integer, ``true`` is not a number, NaN is not a float, unknown keys are
refused — and turns the first problem into one line naming the field, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError, create_model

T = TypeVar("T")
_CONFIG = ConfigDict(extra="forbid", strict=True)
_SIGNS = (("greater than or equal to", ">="), ("less than or equal to", "<="), ("greater than", ">"), ("less than", "<"))

class SettingsError(ValueError):
    """A config value or key that cannot be used; ``str`` is one line, ``loc`` the dotted field it is about."""

    def __init__(self, message: str, loc: str = "") -> None:
        super().__init__(message)
        self.loc = loc


@functools.cache
def _root(cls: type) -> type[BaseModel]:
    """A pydantic model holding one ``cls`` as ``value``: its strict, extra-forbidding config reaches every nested
    stdlib dataclass (a bare TypeAdapter would silently ignore unknown keys of a dataclass)."""
    return create_model(f"{cls.__name__}Settings", __config__=_CONFIG, value=(cls, ...))


def _dataclass_at(cls: type, path: tuple[str | int, ...]) -> type | None:
    """The dataclass type found by following field names ``path`` from ``cls`` (None if it is not one)."""
    for part in path:
        if not dataclasses.is_dataclass(cls) or not isinstance(part, str):
            return None
        hint = typing.get_type_hints(cls).get(part)
        union = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
        options = typing.get_args(hint) if union else (hint,)
        found = [t for t in options if isinstance(t, type) and dataclasses.is_dataclass(t)]
        if not found:
            return None
        cls = found[0]
    return cls if dataclasses.is_dataclass(cls) else None


def _word(name: str, text: str) -> re.Match[str] | None:
    """Where ``name`` occurs in ``text`` as a whole word."""
    return re.search(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", text)


def field_names(cls: type) -> list[str]:
    """The settable fields of a config dataclass, in declaration order."""
    return [f.name for f in dataclasses.fields(cls) if f.init]


def _describe(cls: type, err: Mapping[str, Any], source: str, section: str) -> SettingsError:
    """One line for one pydantic error (the first one of a validation)."""
    loc = tuple(err["loc"])[1:]  # drop the root's "value"
    lead = f"{source}: " if source else ""

    def dotted_of(parts: tuple[Any, ...]) -> str:
        return ".".join(p for p in (section, *(str(x) for x in parts)) if p)

    dotted = dotted_of(loc)
    kind = err["type"]
    if kind == "unexpected_keyword_argument":
        parent = _dataclass_at(cls, loc[:-1])
        known = ", ".join(field_names(parent)) if parent is not None else "?"
        what = dotted_of(loc[:-1]) or (parent.__name__ if parent is not None else "")
        return SettingsError(
            f"{lead}unknown {what + ' ' if what else ''}field {loc[-1]!r}: expected one of {known}", dotted
        )
    if kind == "value_error":  # raised by a dataclass's __post_init__: its message says what is wrong
        message = str(err.get("ctx", {}).get("error", err["msg"]))
        parent = _dataclass_at(cls, loc)
        named = [(m.start(), name) for name in (field_names(parent) if parent else ()) if (m := _word(name, message))]
        if named:  # the field the message is about, e.g. "unknown view 'X'" -> geometry.view
            field = min(named)[1]
            dotted = dotted_of((*loc, field))
            if message.startswith(field):  # "count_range: min 5 > max 3" -> "nodules.count_range: min 5 > max 3"
                return SettingsError(f"{lead}{dotted}{message[len(field):]}", dotted)
        return SettingsError(f"{lead}{dotted + ': ' if dotted else ''}{message}", dotted)
    if kind == "missing":
        return SettingsError(f"{lead}{dotted}: required field is missing", dotted)
    msg = str(err["msg"]).replace("Input should be", "must be")
    for words, sign in _SIGNS:
        msg = msg.replace(words, sign)
    return SettingsError(f"{lead}{dotted} = {json.dumps(err.get('input'), default=str)}: {msg}", dotted)


def load_settings(cls: type[T], data: Mapping[str, Any], source: str = "", section: str = "") -> T:
    """``cls`` from a JSON-like dict, strictly validated; raises :class:`SettingsError` (one line).

    Args:
        cls: a config dataclass.
        data: its fields (nested dataclasses as dicts).
        source: where the dict comes from (a file name), the message's first word.
        section: dotted name of the dict inside a larger config (e.g. ``"nodules"``), prefixed to field names.
    """
    lead = f"{source}: " if source else ""
    if not isinstance(data, Mapping):
        raise SettingsError(f"{lead}{section or cls.__name__}: expected a JSON object of {', '.join(field_names(cls))}")
    data = dict(data)
    _refuse_non_finite(data, lead, (section,) if section else ())
    try:
        blob = json.dumps({"value": data}, default=_jsonable)
    except (TypeError, ValueError) as err:
        raise SettingsError(f"{lead}{section or cls.__name__}: not JSON-like: {err}", section) from None
    try:
        return _root(cls).model_validate_json(blob).value  # type: ignore[attr-defined,no-any-return]
    except ValidationError as err:
        raise _describe(cls, err.errors()[0], source, section) from None


def _refuse_non_finite(value: Any, lead: str, path: tuple[str, ...] = ()) -> None:
    """NaN/inf anywhere in ``value`` is an error naming its field (JSON has no such numbers)."""
    if isinstance(value, float) and not math.isfinite(value):
        dotted = ".".join(path)
        raise SettingsError(f"{lead}{dotted or 'value'} = {value}: must be a finite number", dotted)
    items = value.items() if isinstance(value, Mapping) else enumerate(value) if isinstance(value, (list, tuple)) else ()
    for key, item in items:
        _refuse_non_finite(item, lead, (*path, str(key)))


def _jsonable(value: Any) -> Any:
    """Tuples/paths/numpy scalars that ``json.dumps`` does not know."""
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy scalar
        return value.item()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return settings_dict(value)
    raise TypeError(f"{type(value).__name__} is not a JSON value")


def settings_dict(obj: Any) -> dict[str, Any]:
    """JSON-able dict of a config dataclass (tuples become lists, nested configs dicts)."""
    # warnings=False: an int in a float field (ProjectionGeometry(sdd_mm=1500)) is saved as given, as asdict did
    return TypeAdapter(type(obj)).dump_python(obj, mode="json", warnings=False)  # type: ignore[no-any-return]


def read_settings_file(path: str | Path) -> dict[str, Any]:
    """The JSON object in ``path``; one-line :class:`SettingsError` naming the file when it cannot be used."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise SettingsError(f"{path}: cannot read the config: {getattr(err, 'strerror', None) or err}") from None
    except ValueError as err:
        raise SettingsError(f"{path}: not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise SettingsError(f"{path}: a config is a JSON object, got {type(data).__name__}")
    return data
