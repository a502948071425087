"""Loading configs: YAML + ``--section.field=value`` overrides -> checked dataclasses.

Loading is strict, so that a typo never trains silently with a default:

* an unknown key anywhere (YAML or ``--section.field=value``) is an error naming the key,
* every value is parsed and checked against the field's type hint (``Literal`` choices,
  ``int``/``float``/``bool``/``str``, ``X | None``, ``list[X]``, nested dataclasses),
* each section's ``problems()`` adds range checks (negative lr, zero steps, ...), and
  :func:`train.config.sections.cross_problems` the checks across sections.

All of these raise :class:`ConfigError` with one line naming the field, e.g.
``config: optim.lr: must be > 0, got -0.1``. The same builder loads any section on its own
(:func:`load_section`, e.g. the model config stored in an export's ``video_llm.json``).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from data_shards.common.atomic import atomic_write_text
from train.config.sections import TrainConfig, cross_problems


class ConfigError(ValueError):
    """A bad config key or value; the message is one line that names the field."""


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "|".join(repr(c) for c in typing.get_args(tp))
    if typing.get_origin(tp) is not None or not hasattr(tp, "__name__"):
        return str(tp).replace("typing.", "")
    return tp.__name__


def _coerce(value: Any, tp: Any, key: str, from_cli: bool) -> Any:
    """Check ``value`` against the type hint ``tp``, converting where the meaning is plain."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config: {key}: expected a mapping (section), got {value!r}")
        return _build(tp, value, key)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"config: {key}: must not be null")
        errors: list[ConfigError] = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, from_cli)
            except ConfigError as e:
                errors.append(e)
        # a value of the right kind with a bad part (a nan inside a mapping) says what is bad in it
        specific = [e for e in errors if ": expected " not in str(e)]
        if len(errors) == 1 or specific:
            raise (specific or errors)[0]
        raise ConfigError(f"config: {key}: {value!r} is not a {' or '.join(_type_name(a) for a in args)}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if not any(value == c and type(value) is type(c) for c in choices):  # true is not stage 1
            raise ConfigError(f"config: {key}: must be one of {list(choices)}, got {value!r}")
        return value
    if origin in (list, tuple):
        if isinstance(value, (list, tuple)):
            (item_tp, *_) = typing.get_args(tp) or (Any,)
            items = [_coerce(v, item_tp, f"{key}[{i}]", from_cli) for i, v in enumerate(value)]
            return items if origin is list else tuple(items)
        if from_cli and isinstance(value, str):  # --data.urls=/a.tar  -> ["/a.tar"]
            return _coerce([value], tp, key, from_cli)
        raise ConfigError(f"config: {key}: expected a list, got {value!r}")
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config: {key}: expected a mapping, got {value!r}")
        _check_finite(value, key)  # free-form dicts (model.llm.config, deepspeed.extra): no nan / inf inside
        return value
    return _coerce_scalar(value, tp, key, from_cli)


def _coerce_scalar(value: Any, tp: Any, key: str, from_cli: bool) -> Any:
    """bool / int / float / str (and other plain classes) checked against ``tp``."""
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config: {key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"config: {key}: expected an integer, got {value!r}")
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise ConfigError(f"config: {key}: expected a number, got {value!r}")
        if not math.isfinite(number):  # an inf / nan lr or loss weight trains nothing useful
            raise ConfigError(f"config: {key}: must be a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        if from_cli and isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"config: {key}: expected a string, got {value!r}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"config: {key}: expected {_type_name(tp)}, got {value!r}")
    return value


def _check_finite(value: Any, key: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"config: {key}: must be a finite number, got {value!r}")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_finite(v, f"{key}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_finite(v, f"{key}[{i}]")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=False)


def _unknown_key(cls: type, key: str, name: str) -> ConfigError:
    known = [f.name for f in dataclasses.fields(cls)]
    close = difflib.get_close_matches(name, known, n=1)
    parent = key[: -len(name)]
    hint = f" (did you mean '{parent}{close[0]}'?)" if close else f" (known: {', '.join(known)})"
    return ConfigError(f"config: unknown key '{key}'{hint}")


def _build(cls: type, data: dict, prefix: str) -> Any:
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if name not in names:
            raise _unknown_key(cls, key, str(name))
        kwargs[name] = _coerce(value, hints[name], key, from_cli=False)
    try:
        obj = cls(**kwargs)
    except (ValueError, TypeError) as e:
        msg = " ".join(str(e).split())
        where = prefix or cls.__name__
        raise ConfigError(f"config: {msg}" if msg.startswith(f"{where}.") else f"config: {where}: {msg}") from None
    for name, msg in getattr(obj, "problems", lambda: [])():
        raise ConfigError(f"config: {prefix + '.' if prefix else ''}{name}: {msg}")
    return obj


# ---------------------------------------------------------------- public API

def parse_override(item: str) -> tuple[list[str], Any]:
    """``--optim.lr=3e-4`` -> (["optim", "lr"], 3e-4 parsed as YAML)."""
    body = item[2:] if item.startswith("--") else item
    if "=" not in body:
        raise ConfigError(f"config: override {item!r} must look like --section.field=value")
    key, raw = body.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"config: override {item!r} has an empty key part")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def _apply_override(data: dict, cls: type, parts: list[str], value: Any) -> None:
    """Set ``value`` at ``parts`` inside the raw dict, checking names against the dataclasses."""
    node, tp = data, cls
    for i, part in enumerate(parts):
        key = ".".join(parts[: i + 1])
        if dataclasses.is_dataclass(tp):
            names = {f.name for f in dataclasses.fields(tp)}
            if part not in names:
                raise _unknown_key(tp, key, part)
            field_tp = _hints(tp)[part]
        elif isinstance(node, dict):
            field_tp = Any  # inside a free-form mapping (e.g. an LLM config dict)
        else:
            raise ConfigError(f"config: unknown key '{key}' ({'.'.join(parts[:i])} is not a section)")
        if i == len(parts) - 1:
            if dataclasses.is_dataclass(_strip_optional(field_tp)):
                raise ConfigError(f"config: '{key}' is a section: override its fields ({key}.FIELD=VALUE)")
            node[part] = _coerce(value, field_tp, key, from_cli=True)
            return
        inner = _strip_optional(field_tp)
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node, tp = node[part], inner


def _strip_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML recipe, apply ``--section.field=value`` overrides, check every value.

    Args:
        path: YAML file (None = all defaults).
        overrides: items like ``"--optim.lr=3e-4"``; values are parsed as YAML, then typed.

    Raises:
        ConfigError: one line naming the bad key or value (or the unreadable file).
    """
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config: file not found: {p}")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config: {p}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config: {p}: top level must be a mapping of sections")
    for item in overrides or []:
        parts, value = parse_override(item)
        _apply_override(data, TrainConfig, parts, value)
    cfg = _build(TrainConfig, data, "")
    for key, msg in cross_problems(cfg):
        raise ConfigError(f"config: {key}: {msg}")
    return cfg


def config_to_dict(cfg: Any) -> dict:
    """Plain-data view (tuples as lists) of a config, suitable for YAML/JSON."""
    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(dataclasses.asdict(cfg))


def save_config(cfg: TrainConfig, path: str | Path) -> Path:
    """Write the resolved config as YAML, atomically (temp file + rename)."""
    return atomic_write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))



def load_section(cls: type, data: dict, prefix: str = "") -> Any:
    """Build one config section (e.g. ``ModelConfig``) from a nested dict, with every check of
    :func:`load_config`; ``prefix`` names the keys in errors (e.g. ``"model"``)."""
    if not isinstance(data, dict):
        raise ConfigError(f"config: {prefix or cls.__name__}: expected a mapping (section), got {data!r}")
    return _build(cls, data, prefix)


def split_overrides(rest: list[str]) -> list[str]:
    """``["--a.b=1", "--c.d", "2"]`` -> ``["--a.b=1", "--c.d=2"]``; anything else is an error."""
    out, i = [], 0
    while i < len(rest):
        item = rest[i]
        if not item.startswith("--") or "." not in item.split("=", 1)[0]:
            raise ConfigError(f"config: unexpected argument {item!r} (overrides look like --section.field=value)")
        if "=" not in item:
            if i + 1 >= len(rest) or rest[i + 1].startswith("--"):
                raise ConfigError(f"config: override {item!r} has no value")
            item, i = f"{item}={rest[i + 1]}", i + 1
        out.append(item)
        i += 1
    # A later override of a field wins, but the same field given in a row with different values is what a shell
    # makes of a brace pattern or glob (a remote shell too: pdsh under the DeepSpeed launcher): refuse it.
    for j in range(1, len(out)):
        key, value = out[j].split("=", 1)
        prev_key, prev_value = out[j - 1].split("=", 1)
        if key == prev_key and value != prev_value:
            run = [o.split("=", 1)[1] for o in out if o.split("=", 1)[0] == key]
            raise ConfigError(
                f"config: {key} given {len(run)} times in a row ({', '.join(run[:4])}{', ...' if len(run) > 4 else ''})"
                " - a shell expanded a brace pattern or glob: quote it, once more for every remote shell it crosses "
                f"(pdsh under the DeepSpeed launcher: \"'{key}=shards/train-{{000000..000003}}.tar'\")")
    return out
