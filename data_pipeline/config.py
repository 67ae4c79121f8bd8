"""The one configuration mechanism of the project: the data, model and run configs are
dataclasses whose fields declare their own type, default and range, built from YAML by
`build`, which names the dotted key of every mistake (`optim.warmup_steps: must be >= 0,
got -5`; `corpora[1].options.crop_scale: ...`).

- `setting(default, *, min=, max=, gt=, lt=, choices=, ...)` declares a field with its
  constraints (kept in the field's metadata). Constraints on a list apply to each item, on a
  mapping to each value.
- `build(cls, raw, where)` refuses unknown and missing keys and wrong types (bool is never
  an int or a float; an int is accepted where a float belongs), checks each field's
  constraints, then calls the section's `check(where)` method, if it has one, for the rules
  that involve several fields.
- `parse_yaml` / `read_yaml_file` read YAML with YAML 1.2 floats, for files and for
  `--set key=value` values alike: PyYAML follows YAML 1.1, which reads `5e-1` and `1e-4`
  (no dot) as strings.

It lives at the bottom layer and imports nothing else of the project, so that the data
pipeline, the model and the trainer all use it.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
import re
import types
import typing
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the key (and the file, where
    there is one)."""


# YAML ---------------------------------------------------------------------------------------

class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's floats: an exponent makes a number, dot or not."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


# A config is a few hundred values; YAML aliases can make a 1 KB file stand for billions
# (each `*a` is the whole `&a` again once copied or serialised), and a large file is no config.
MAX_CONFIG_VALUES = 1_000_000
MAX_CONFIG_BYTES = 16 * 2**20


def check_expanded_size(data: Any, where: str, limit: int = MAX_CONFIG_VALUES) -> None:
    """Refuses DATA when it holds more than LIMIT values counted as a copy would count them
    (every alias again, a self-referencing alias without end): the walk stops at the limit."""
    count, stack = 0, [data]
    while stack:
        node = stack.pop()
        count += 1
        if count > limit:
            raise ConfigError(f"{where}: more than {limit:,} values once its YAML aliases (*name) are expanded; "
                              f"a config is not that large (an alias bomb, or an alias that contains itself?)")
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, (list, tuple)):
            stack.extend(node)


def parse_yaml(text: str, where: str) -> Any:
    """YAML text to Python values; a syntax error becomes a one-line ConfigError naming WHERE,
    and so does a text whose aliases expand beyond MAX_CONFIG_VALUES."""
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as error:
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        mark = getattr(error, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise ConfigError(f"{where}: not valid YAML: {problem}{at}") from None
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply to be a config") from None
    check_expanded_size(data, where)
    return data


def read_yaml_file(path: str | Path, what: str = "config") -> Any:
    """A YAML file's contents (a `.json` file is read as JSON), at most MAX_CONFIG_BYTES."""
    path = Path(path)
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_CONFIG_BYTES + 1)
    except OSError as error:
        raise ConfigError(f"{path}: cannot read {what} ({error.strerror})") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES // 2**20} MiB; not a {what}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text (byte {error.start}); not a {what}") from None
    if path.suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(f"{path}: not valid JSON: {error}") from None
        except RecursionError:
            raise ConfigError(f"{path}: nested too deeply to be a {what}") from None
    return parse_yaml(text, str(path))


# Declaring fields ---------------------------------------------------------------------------

_RULE = "x2vlm.setting"


@dataclasses.dataclass(frozen=True)
class _Rule:
    min: float | None = None
    max: float | None = None
    gt: float | None = None
    lt: float | None = None
    choices: Collection | None = None
    keys: Collection | None = None
    length: int | None = None
    nonempty: bool = False
    key: str | None = None
    type_from: tuple[str, Mapping[str, type]] | None = None

    def range_text(self) -> str | None:
        low = f"[{_num(self.min)}" if self.min is not None else f"({_num(self.gt)}" if self.gt is not None else None
        high = f"{_num(self.max)}]" if self.max is not None else f"{_num(self.lt)})" if self.lt is not None else None
        if low and high:
            return f"in {low}, {high}"
        if low:
            return f"{'>=' if self.min is not None else '>'} {low[1:]}"
        if high:
            return f"{'<=' if self.max is not None else '<'} {high[:-1]}"
        return None

    def in_range(self, value) -> bool:
        return not ((self.min is not None and value < self.min) or (self.gt is not None and value <= self.gt)
                    or (self.max is not None and value > self.max) or (self.lt is not None and value >= self.lt))


_NO_RULE = _Rule()


def setting(default: Any = dataclasses.MISSING, *, min: float | None = None, max: float | None = None,
            gt: float | None = None, lt: float | None = None, choices=None, keys=None, length: int | None = None,
            nonempty: bool = False, key: str | None = None, type_from: tuple[str, Mapping[str, type]] | None = None):
    """A config field: DEFAULT (none: the key is required; a list, dict or dataclass type is
    copied or made per instance) and its constraints.

    min / max / gt / lt: bounds (>=, <=, >, <) of a number, of each item of a list, of each
    value of a mapping. choices: the allowed values (of each item / value). keys: the allowed
    keys of a mapping. length: a list's exact length. nonempty: a string, list or mapping (and
    each string in a list) must not be empty. key: the YAML key when it differs from the field
    name. type_from=(field, {value: dataclass}): the field's type is chosen by the value of an
    earlier field of the section (a corpus's `options` by its `kind`). CHOICES, KEYS and the
    mapping of TYPE_FROM may be live collections (a registry), read whenever a config is built."""
    rule = _Rule(min, max, gt, lt, _frozen(choices), _frozen(keys), length, nonempty, key, type_from)
    metadata = {_RULE: rule}
    if default is dataclasses.MISSING:
        return dataclasses.field(metadata=metadata)
    if isinstance(default, type) and dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=default, metadata=metadata)
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=functools.partial(copy.deepcopy, default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _frozen(values):
    """A list or tuple of allowed values as a tuple; any other collection (a registry that
    plug-ins add to, such as data_pipeline.kinds.KINDS) is kept, and read when a config is built."""
    return tuple(values) if isinstance(values, (list, tuple, set, frozenset)) else values


def subkey(where: str, name) -> str:
    """The dotted key of NAME inside the section at WHERE ('' is the top level)."""
    return f"{where}.{name}" if where else str(name)


# Building -----------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _num(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _got(value) -> str:
    if value is None:
        return "null"
    text = repr(value)
    return f"{type(value).__name__} ({text if len(text) <= 60 else text[:57] + '...'})"


def _describe(annotation) -> str:
    origin = typing.get_origin(annotation)
    if annotation is typing.Any:
        return "any value"
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in typing.get_args(annotation))
    if origin is list:
        args = typing.get_args(annotation)
        return f"list of {_describe(args[0])}" if args else "list"
    if annotation is dict or origin is dict or dataclasses.is_dataclass(annotation):
        return "mapping"
    return getattr(annotation, "__name__", str(annotation))


def _convert(value, annotation, key: str):
    """VALUE checked against ANNOTATION (nested sections built); ints become floats where a
    float belongs."""
    origin = typing.get_origin(annotation)
    if annotation is typing.Any:
        return value
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        options = [a for a in options if a is not type(None)]
        if len(options) == 1:
            return _convert(value, options[0], key)
        for option in options:
            try:
                return _convert(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {_describe(annotation)}, got {_got(value)}")
    if dataclasses.is_dataclass(annotation):
        return build(annotation, value, key)
    if origin is list or annotation is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected {_describe(annotation)}, got {_got(value)}")
        (item,) = typing.get_args(annotation) or (typing.Any,)
        return [_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or annotation is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {_got(value)}")
        _, item = typing.get_args(annotation) or (str, typing.Any)
        for name in value:
            if not isinstance(name, str):
                raise ConfigError(f"{key}: keys must be strings, got {_got(name)}")
        return {name: _convert(v, item, subkey(key, name)) for name, v in value.items()}
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected float, got {_got(value)}")
        # Every comparison with NaN is false, so a range check alone would let `.nan` through.
        if not math.isfinite(value):
            raise ConfigError(f"{key}: must be a finite number, got {value!r}")
        return float(value)
    if annotation in (int, str, bool):
        # bool is an int in Python; a `true` where a number belongs is still a mistake.
        if not isinstance(value, annotation) or (annotation is int and isinstance(value, bool)):
            raise ConfigError(f"{key}: expected {annotation.__name__}, got {_got(value)}")
        return value
    raise TypeError(f"{key}: config fields cannot be of type {annotation!r}")


def _check_rule(rule: _Rule, value, key: str) -> None:
    if value is None or rule is _NO_RULE:
        return
    if rule.nonempty and isinstance(value, (str, list, dict)) and not value:
        raise ConfigError(f"{key}: must not be empty")
    if rule.length is not None and isinstance(value, list) and len(value) != rule.length:
        raise ConfigError(f"{key}: expected {rule.length} items, got {len(value)} ({value!r})")
    if isinstance(value, list):
        items = [(f"{key}[{i}]", v) for i, v in enumerate(value)]
    elif isinstance(value, dict):
        if rule.keys is not None:
            for name in value:
                if name not in rule.keys:
                    raise ConfigError(f"{subkey(key, name)}: unknown key (allowed: {', '.join(rule.keys)})")
        items = [(subkey(key, name), v) for name, v in value.items()]
    else:
        items = [(key, value)]
    span = rule.range_text()
    for where, item in items:
        if rule.nonempty and isinstance(item, str) and not item:
            raise ConfigError(f"{where}: must not be empty")
        if rule.choices is not None and item not in rule.choices:
            raise ConfigError(f"{where}: must be one of {', '.join(map(str, rule.choices))}, got {item!r}")
        if span is not None and isinstance(item, (int, float)) and not rule.in_range(item):
            raise ConfigError(f"{where}: must be {span}, got {item!r}")


def build(cls: type, raw: Any, where: str = ""):
    """An instance of the dataclass CLS from the mapping RAW, every key checked; WHERE is the
    dotted key of RAW itself, used in the messages."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where or '(top level)'}: expected a mapping, got {_got(raw)}")
    fields = {}
    for f in dataclasses.fields(cls):
        if f.init:
            fields[f.metadata.get(_RULE, _NO_RULE).key or f.name] = f
    unknown = sorted(str(k) for k in raw if k not in fields)
    if unknown:
        raise ConfigError(f"{subkey(where, unknown[0])}: unknown key (allowed: {', '.join(fields)})")
    hints = _hints(cls)
    values: dict[str, Any] = {}
    for name, f in fields.items():
        key = subkey(where, name)
        rule = f.metadata.get(_RULE, _NO_RULE)
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{key}: missing required key")
            continue
        annotation = hints[f.name]
        if rule.type_from is not None:
            chooser, types_by_value = rule.type_from
            choice = values[chooser] if chooser in values else getattr(cls, chooser)  # given, else its default
            annotation = types_by_value[choice]
        value = _convert(raw[name], annotation, key)
        _check_rule(rule, value, key)
        values[f.name] = value
    instance = cls(**values)
    check = getattr(instance, "check", None)
    if check is not None:
        check(where)
    return instance

