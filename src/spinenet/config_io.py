"""Generic, strict I/O for typed dataclass configs: YAML/JSON parsing, strict merging, typed conversion.

Nothing here knows the SpineNet schema (that lives in :mod:`spinenet.config`); this module only knows how
to turn nested mappings into nested dataclasses and back, and how to read the reference's override formats.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config key, value or combination of values is invalid; the message names the key and the fix."""


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-4``/``4e-5`` as floats (YAML 1.1 needs a dot), like the reference.

    The reference (``hyperparameters/params_dict.py``) patches the global SafeLoader; a subclass keeps
    PyYAML's global state untouched.
    """


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


class _Dumper(yaml.SafeDumper):
    """Writes lists in flow style (``[640, 640]``), as the reference YAMLs do."""


_Dumper.add_representer(
    list, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)
)


def yaml_load(text: str) -> Any:
    """Parse a YAML (or JSON) document with the reference's float rules."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader subclass


def load_mapping_file(path: str | os.PathLike) -> dict:
    """Read a ``.yaml``/``.yml``/``.json`` file holding a mapping; an empty file is ``{}``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot parse config file {path}: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(data).__name__}")
    return dict(data)


def _split_top_level_commas(text: str) -> list[str]:
    """Split ``a=1, b=[1,2], c='x,y'`` on the commas that are outside brackets and quotes."""
    parts, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def parse_dotted_overrides(items: Sequence[str]) -> dict:
    """``["train.total_steps=100", "anchor.aspect_ratios=[1.0,2.0]"]`` -> nested dict.

    Values are parsed as YAML (numbers, ``true``, ``null``, lists, quoted strings); an empty value is ``''``.
    Later items win over earlier ones.
    """
    if isinstance(items, str):  # a lone string is a common slip; treat it as one item, not characters
        items = [items]
    out: dict = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        parts = key.split(".")
        if not sep or not all(p.strip() for p in parts):
            raise ConfigError(f"override {item!r} must look like 'section.key=value' (train.total_steps=100)")
        try:
            value = yaml_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"cannot parse the value of override {item!r}: {e}") from e
        node = out
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        node[parts[-1]] = value
    return out


def parse_params_override(value: str | os.PathLike | Mapping) -> dict:
    """Parse a reference-style ``--params_override``.

    Accepts a mapping; a YAML or JSON string (``"{ train: { total_steps : 231500 } }"``); the reference's
    comma-separated dotted form (``"train.total_steps=100,eval.eval_batch_size=4"``); or a path to a
    ``.yaml``/``.yml``/``.json`` file.
    """
    if isinstance(value, Mapping):
        return copy.deepcopy(dict(value))
    if isinstance(value, os.PathLike):
        return load_mapping_file(value)
    if not isinstance(value, str):
        raise ConfigError(f"params_override must be a string, path or mapping, got {type(value).__name__}")
    text = value.strip()
    if not text:
        return {}
    if "\n" not in text and (text.lower().endswith((".yaml", ".yml", ".json")) or os.path.isfile(text)):
        return load_mapping_file(text)  # like the reference, a string that is no mapping may be a file path
    try:
        data = yaml_load(text)
    except yaml.YAMLError:
        data = None
    if isinstance(data, Mapping):
        return dict(data)
    if "=" in text:
        return parse_dotted_overrides(_split_top_level_commas(text))
    raise ConfigError(
        f"cannot parse params_override {value!r}: expected a YAML/JSON mapping such as "
        "'{ train: { total_steps: 100 } }', 'train.total_steps=100', or a .yaml/.json file"
    )


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def unknown_key_error(path: str, key: object, valid: Sequence[str]) -> ConfigError:
    """The error for a key that the schema does not have: names it, lists the valid keys, suggests one."""
    where = f"under '{path}'" if path else "at the top level"
    msg = f"unknown config key '{_join(path, str(key))}'; valid keys {where}: {', '.join(sorted(valid))}"
    close = difflib.get_close_matches(str(key), list(valid), n=1)
    if close:
        msg += f" (did you mean '{_join(path, close[0])}'?)"
    return ConfigError(msg)


def merge_dicts(base: dict, update: Mapping, path: str = "") -> dict:
    """Return a deep copy of ``base`` with ``update`` merged in, recursively and strictly.

    Every key of ``update`` must exist in ``base`` (else :class:`ConfigError` naming the valid keys); a
    section (dict in ``base``) can only be updated by a mapping. Leaves, lists included, are replaced.
    """
    if not isinstance(update, Mapping):
        raise ConfigError(f"config section '{path or '<root>'}' expects a mapping, got {_describe(update)}")
    out = copy.deepcopy(base)
    for key, value in update.items():
        if key not in out:
            raise unknown_key_error(path, key, list(out))
        if isinstance(out[key], dict):
            out[key] = merge_dicts(out[key], value, _join(path, key))
        else:
            out[key] = copy.deepcopy(value)
    return out


def _describe(value: object) -> str:
    return f"{type(value).__name__} {value!r}" if value is not None else "None"


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("None" if a is type(None) else _type_name(a) for a in args)
    if origin in (list, tuple):
        return f"list[{_type_name(args[0])}]"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _convert(tp: Any, value: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it in canonical form (int -> float etc.)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)

    def fail() -> ConfigError:
        hint = " (quote it, e.g. '49')" if tp is str and isinstance(value, (int, float)) else ""
        return ConfigError(f"config key '{key}' expects {_type_name(tp)}, got {_describe(value)}{hint}")

    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) != 1:  # only Optional[X] is used in the schema
            raise TypeError(f"unsupported annotation {tp!r} for '{key}'")
        try:
            return _convert(inner[0], value, key)
        except ConfigError as e:
            if value is None or str(e).startswith(f"config key '{key}' expects"):
                raise fail() from None
            raise
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise fail()
        return from_dict(tp, value, key)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise fail()
        return [_convert(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail()
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail()
        return value
    if tp in (bool, str):
        if not isinstance(value, tp):
            raise fail()
        return value
    raise TypeError(f"unsupported annotation {tp!r} for '{key}'")


def from_dict(cls: type[T], data: Mapping, path: str = "") -> T:
    """Build dataclass ``cls`` from a (partial) nested mapping; missing keys keep the dataclass defaults."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"config section '{path or '<root>'}' expects a mapping, got {_describe(data)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise unknown_key_error(path, key, names)
        kwargs[key] = _convert(hints[key], value, _join(path, key))
    return cls(**kwargs)


def to_dict(obj: Any) -> dict:
    """Nested dataclass -> plain dict of str/int/float/bool/None/list (YAML- and JSON-serialisable)."""
    return dataclasses.asdict(obj)


def dump_yaml(obj: Any) -> str:
    """A dataclass config (or a plain dict) as YAML text, sections in schema order, lists in flow style."""
    data = obj if isinstance(obj, Mapping) else to_dict(obj)
    return yaml.dump(dict(data), Dumper=_Dumper, sort_keys=False, default_flow_style=False)
