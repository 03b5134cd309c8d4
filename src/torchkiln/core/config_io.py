"""Read a YAML run config, apply ``--set`` overrides, turn pydantic errors into plain ones, dump YAML.

Validation picks the run config of the task (:func:`torchkiln.tasks.base.validate`); this module knows
nothing of tasks.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from torchkiln.core.errors import ConfigError, did_you_mean


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The YAML mapping in ``path``, or a ConfigError that says what is wrong with the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"Config file '{path}' does not exist. Expected a YAML file such as:\n"
            "  task: image-classification\n  data: {path: data/digits}\n"
            "Check the path, or run 'kiln datasets fetch digits --out data/digits' for sample data."
        )
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"Config file '{path}' is not valid YAML: {exc}. Fix the syntax and retry."
        ) from None
    if not isinstance(raw, dict):
        raise ConfigError(
            f"Config file '{path}' must hold a mapping of settings (task, data, model, train); "
            f"got {type(raw).__name__}. Start from the example in the README."
        )
    return raw


def apply_override(raw: Mapping[str, Any], item: str) -> dict[str, Any]:
    """Return a copy of ``raw`` with ``key.path=value`` set; the value is parsed as YAML."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(
            f"Override '{item}' is not of the form key.path=value. Example: --set train.epochs=5"
        )
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    out: dict[str, Any] = _deep_copy(raw)
    node: Any = out
    parts = key.strip().split(".")
    for part, nxt in itertools.pairwise(parts):
        if isinstance(node, list):  # data.augment.0.p=0.3 indexes into a list
            node = _list_item(node, part, item)
            continue
        child = node.get(part)
        if isinstance(child, str) and part in ("task", "data"):
            child = {"kind": child} if part == "task" else {"path": child}
        if not isinstance(child, dict | list) or (isinstance(child, list) and not nxt.isdigit()):
            child = {}
        node[part] = child
        node = child
    if isinstance(node, list):
        idx = _index(node, parts[-1], item)
        node[idx] = value
    else:
        node[parts[-1]] = value
    return out


def _index(items: list[Any], part: str, item: str) -> int:
    if not items:
        raise ConfigError(
            f"Override '{item}': the list is empty, so '{part}' indexes nothing. Set the whole list."
        )
    if not part.isdigit() or int(part) >= len(items):
        raise ConfigError(
            f"Override '{item}': '{part}' is not an index of a list with {len(items)} item(s). "
            f"Use 0 to {len(items) - 1}, or set the whole list, e.g. "
            f"--set 'data.augment=[{{name: horizontal_flip}}]'"
        )
    return int(part)


def _list_item(items: list[Any], part: str, item: str) -> Any:
    idx = _index(items, part, item)
    if not isinstance(items[idx], dict):
        items[idx] = {}
    return items[idx]


def _deep_copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


RUN_CONFIG_FIX = (
    "Fix the config file or the --set value; 'kiln config show CONFIG' prints what was understood."
)


def format_errors(
    exc: ValidationError,
    model: type[BaseModel],
    *,
    what: str = "The run config is invalid",
    fix: str = RUN_CONFIG_FIX,
    source: str = "the config",
) -> str:
    lines = [f"{what} ({exc.error_count()} problem(s)):"]
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        where = ".".join(loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            allowed = _fields_at(model, loc[:-1])
            hint = did_you_mean(loc[-1], allowed) or _one_level_down(model, loc)
            lines.append(f"  - unknown key '{where}'.{hint} Valid keys here: {', '.join(sorted(allowed))}.")
        elif err["type"] == "missing":
            lines.append(f"  - '{where}' is required but missing. Add it to {source}.")
        else:
            got = err.get("input")
            secret = any(w in where.lower() for w in ("token", "password", "secret"))  # never echo those
            shown = "" if secret or isinstance(got, dict | list) else f" Got {_short_repr(got)}."
            # pydantic prefixes a validator's own message with "Value error, ", which says nothing here.
            message = err["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
            lines.append(f"  - '{where}': {message}.{shown}")
    lines.append(fix)
    return "\n".join(lines)


def _short_repr(value: Any, limit: int = 80) -> str:
    """``repr`` cut to ``limit`` characters: a request body may hold megabytes of base64."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}...' ({len(text):,} characters)"


def _fields_at(model: type[BaseModel], loc: list[str]) -> list[str]:
    """Field names of the sub-model at ``loc``, following lists and tagged unions (augment steps)."""
    current: Any = model
    for part in loc:
        if part.isdigit():
            continue
        members = _models_in(current)
        field = next((m.model_fields[part] for m in members if part in m.model_fields), None)
        if field is not None:
            current = field.annotation
            continue
        tagged = [m for m in members if part in _tags(m)]  # loc names the union member by its tag
        if not tagged:
            return []
        current = tagged[0]
    members = _models_in(current)
    return list(members[0].model_fields) if len(members) == 1 else []


def _one_level_down(model: type[BaseModel], loc: list[str]) -> str:
    """ " Did you mean 'train.optimizer.lr'?" when the unknown key ``loc[-1]`` is a key of a section inside
    the one it was written in (``train.lr``); else ""."""
    parent = _fields_at(model, loc[:-1])
    found = [name for name in parent if loc[-1] in _fields_at(model, [*loc[:-1], name]) and name != loc[-1]]
    if len(found) != 1:
        return ""
    return f" Did you mean '{'.'.join([*loc[:-1], found[0], loc[-1]])}'?"


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in getattr(annotation, "__args__", ()) for m in _models_in(arg)]


def _tags(model: type[BaseModel]) -> tuple[Any, ...]:
    field = model.model_fields.get("name") or model.model_fields.get("kind")
    return getattr(field.annotation, "__args__", ()) if field is not None else ()


def dump_config(cfg: BaseModel) -> str:
    """The config as YAML, in field order, ready to be saved or printed."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
