"""The data specification: corpora, their mixture and the text / image settings, as YAML.

Loading validates every key and raises `SpecError` naming the key path
(`corpora[1].weight: ...`), because a typo in a mixture must stop a job at start-up,
not a day into it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .io.tar_stream import DEFAULT_MAX_MEMBER_BYTES

KINDS = ("image_text", "region", "video_text")
FLIP_MODES = ("swap", "skip", "off")

# Per-kind options and their defaults. Anything else under `options` is an error.
KIND_OPTION_DEFAULTS: dict[str, dict[str, Any]] = {
    "image_text": {"crop_scale": [0.2, 1.0], "flip": "swap", "rand_augment": True},
    "region": {"max_regions": 6, "min_perc_in_image": 0.5, "flip": "swap", "rand_augment": True},
    "video_text": {"frames": 3, "crop_scale": [0.5, 1.0], "flip": "swap", "rand_augment": True,
                   "decode_timeout_s": 10.0},
}


class SpecError(ValueError):
    """A data specification that cannot be used; the message starts with the key path."""


@dataclass
class TextSpec:
    tokenizer: str
    max_tokens: int = 40
    max_words: int = 40
    mask_prob: float = 0.5
    max_masks: int = 12
    span_prob: float = 0.2
    span_max: int = 3
    whole_word: bool = True


@dataclass
class CorpusSpec:
    name: str
    kind: str
    shards: list[str]
    weight: float = 1.0
    batch_size: int = 32
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class LoaderSpec:
    num_workers: int = 2
    shuffle_buffer: int = 1000
    shard_retries: int = 2
    retry_delay_s: float = 1.0
    prefetch_factor: int = 2
    # A tar member larger than this is skipped unread (a damaged size or a stray huge file).
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES
    # Stop when more than max_bad_fraction of the last bad_sample_window samples a worker read
    # were skipped: a corpus that is mostly unusable is a mistake to report, not to read forever.
    bad_sample_window: int = 1000
    max_bad_fraction: float = 0.5
    # A worker that delivers no batch for this long is reported as stuck (0: wait forever).
    worker_timeout_s: float = 600.0


@dataclass
class DataSpec:
    corpora: list[CorpusSpec]
    text: TextSpec
    seed: int = 0
    image_res: int = 224
    patch_size: int = 16
    # How often each kind appears: ratio 1.0 is every step, 0.5 every other step.
    kind_ratio: dict[str, float] = field(default_factory=dict)
    loader: LoaderSpec = field(default_factory=LoaderSpec)
    training: bool = True

    def kinds(self) -> list[str]:
        return [k for k in KINDS if any(c.kind == k for c in self.corpora)]

    def corpora_of(self, kind: str) -> list[CorpusSpec]:
        return [c for c in self.corpora if c.kind == kind]


def _type_error(path: str, expected: str, value: Any) -> SpecError:
    return SpecError(f"{path}: expected {expected}, got {value!r}")


def _take(mapping: dict, key: str, path: str, kind: type | tuple, default: Any = ..., check=None) -> Any:
    if key not in mapping:
        if default is ...:
            raise SpecError(f"{path}.{key}: missing (required)" if path else f"{key}: missing (required)")
        return default
    value = mapping[key]
    full = f"{path}.{key}" if path else key
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # bool is an int in Python; a `true` where a number belongs is still a mistake.
    if isinstance(value, bool) and bool not in kinds:
        raise _type_error(full, "/".join(k.__name__ for k in kinds), value)
    if not isinstance(value, kinds):
        raise _type_error(full, "/".join(k.__name__ for k in kinds), value)
    if check is not None:
        problem = check(value)
        if problem:
            raise SpecError(f"{full}: {problem}")
    return value


def _no_unknown(mapping: dict, allowed: set[str], path: str) -> None:
    unknown = sorted(set(mapping) - allowed)
    if unknown:
        where = f"{path}." if path else ""
        raise SpecError(f"{where}{unknown[0]}: unknown key (allowed: {', '.join(sorted(allowed))})")


def _positive(v):
    return None if v > 0 else "must be > 0"


def _non_negative(v):
    return None if v >= 0 else "must be >= 0"


def _probability(v):
    return None if 0 <= v <= 1 else "must be in [0, 1]"


def _parse_options(kind: str, raw: dict, path: str) -> dict[str, Any]:
    defaults = KIND_OPTION_DEFAULTS[kind]
    _no_unknown(raw, set(defaults), path)
    options = dict(defaults)
    for key, value in raw.items():
        full = f"{path}.{key}"
        default = defaults[key]
        if key == "flip":
            if value not in FLIP_MODES:
                raise SpecError(f"{full}: expected one of {', '.join(FLIP_MODES)}, got {value!r}")
        elif key == "crop_scale":
            if (not isinstance(value, list) or len(value) != 2 or not all(isinstance(v, (int, float)) for v in value)
                    or not 0 < value[0] <= value[1] <= 1):
                raise SpecError(f"{full}: expected [low, high] with 0 < low <= high <= 1, got {value!r}")
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise _type_error(full, "bool", value)
        elif isinstance(default, int):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise SpecError(f"{full}: expected a positive int, got {value!r}")
        elif isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise SpecError(f"{full}: expected a positive number, got {value!r}")
        options[key] = value
    if kind == "region" and not 0 <= options["min_perc_in_image"] <= 1:
        raise SpecError(f"{path}.min_perc_in_image: must be in [0, 1]")
    return options


def _parse_corpus(raw: Any, index: int, root: Path | None) -> CorpusSpec:
    path = f"corpora[{index}]"
    if not isinstance(raw, dict):
        raise _type_error(path, "a mapping", raw)
    _no_unknown(raw, {"name", "kind", "shards", "weight", "batch_size", "options"}, path)
    name = _take(raw, "name", path, str, check=lambda v: None if v and "/" not in v else "must be non-empty, no '/'")
    kind = _take(raw, "kind", path, str, check=lambda v: None if v in KINDS else f"must be one of {', '.join(KINDS)}")
    shards = _take(raw, "shards", path, (str, list))
    if isinstance(shards, str):
        shards = [shards]
    if not shards or not all(isinstance(s, str) and s for s in shards):
        raise SpecError(f"{path}.shards: expected a non-empty string or list of strings")
    if root is not None:
        shards = [s if "://" in s or s.startswith("pipe:") or os.path.isabs(s) else str(root / s) for s in shards]
    weight = float(_take(raw, "weight", path, (int, float), 1.0, check=_positive))
    batch_size = _take(raw, "batch_size", path, int, 32, check=_positive)
    options = _parse_options(kind, _take(raw, "options", path, dict, {}), f"{path}.options")
    return CorpusSpec(name, kind, shards, weight, batch_size, options)


def parse_data_spec(raw: Any, root: Path | None = None) -> DataSpec:
    """Validates a loaded YAML mapping. `root`, when given, anchors relative shard paths."""
    if not isinstance(raw, dict):
        raise _type_error("(top level)", "a mapping", raw)
    _no_unknown(raw, {"seed", "image_res", "patch_size", "text", "kinds", "loader", "corpora", "training", "root"}, "")
    if "root" in raw:
        root = Path(_take(raw, "root", "", str)) if root is None else root / _take(raw, "root", "", str)
    seed = _take(raw, "seed", "", int, 0, check=_non_negative)
    image_res = _take(raw, "image_res", "", int, 224, check=_positive)
    patch_size = _take(raw, "patch_size", "", int, 16, check=_positive)
    if image_res % patch_size:
        raise SpecError(f"patch_size: image_res {image_res} is not a multiple of patch_size {patch_size}")
    training = _take(raw, "training", "", bool, True)

    text_raw = _take(raw, "text", "", dict)
    _no_unknown(text_raw, set(TextSpec.__dataclass_fields__), "text")
    text = TextSpec(
        tokenizer=_take(text_raw, "tokenizer", "text", str),
        max_tokens=_take(text_raw, "max_tokens", "text", int, 40, check=lambda v: None if v >= 3 else "must be >= 3"),
        max_words=_take(text_raw, "max_words", "text", int, 40, check=_positive),
        mask_prob=float(_take(text_raw, "mask_prob", "text", (int, float), 0.5, check=_probability)),
        max_masks=_take(text_raw, "max_masks", "text", int, 12, check=_positive),
        span_prob=float(_take(text_raw, "span_prob", "text", (int, float), 0.2, check=_probability)),
        span_max=_take(text_raw, "span_max", "text", int, 3, check=lambda v: None if v >= 2 else "must be >= 2"),
        whole_word=_take(text_raw, "whole_word", "text", bool, True),
    )
    if root is not None and not os.path.isabs(text.tokenizer):
        text.tokenizer = str(root / text.tokenizer)

    loader_raw = _take(raw, "loader", "", dict, {})
    _no_unknown(loader_raw, set(LoaderSpec.__dataclass_fields__), "loader")
    loader = LoaderSpec(
        num_workers=_take(loader_raw, "num_workers", "loader", int, 2, check=_non_negative),
        shuffle_buffer=_take(loader_raw, "shuffle_buffer", "loader", int, 1000, check=_non_negative),
        shard_retries=_take(loader_raw, "shard_retries", "loader", int, 2, check=_non_negative),
        retry_delay_s=float(_take(loader_raw, "retry_delay_s", "loader", (int, float), 1.0, check=_non_negative)),
        prefetch_factor=_take(loader_raw, "prefetch_factor", "loader", int, 2, check=_positive),
        max_member_bytes=_take(loader_raw, "max_member_bytes", "loader", int, DEFAULT_MAX_MEMBER_BYTES,
                               check=_positive),
        bad_sample_window=_take(loader_raw, "bad_sample_window", "loader", int, 1000, check=_positive),
        max_bad_fraction=float(_take(loader_raw, "max_bad_fraction", "loader", (int, float), 0.5,
                                     check=lambda v: None if 0 < v <= 1 else "must be in (0, 1]")),
        worker_timeout_s=float(_take(loader_raw, "worker_timeout_s", "loader", (int, float), 600.0,
                                     check=_non_negative)),
    )

    corpora_raw = _take(raw, "corpora", "", list, check=lambda v: None if v else "must list at least one corpus")
    corpora = [_parse_corpus(c, i, root) for i, c in enumerate(corpora_raw)]
    names = [c.name for c in corpora]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise SpecError(f"corpora[{i}].name: duplicate corpus name {name!r}")

    kinds_raw = _take(raw, "kinds", "", dict, {})
    _no_unknown(kinds_raw, set(KINDS), "kinds")
    kind_ratio = {}
    for kind in KINDS:
        entry = _take(kinds_raw, kind, "kinds", dict, {})
        _no_unknown(entry, {"ratio"}, f"kinds.{kind}")
        kind_ratio[kind] = float(_take(entry, "ratio", f"kinds.{kind}", (int, float), 1.0,
                                       check=lambda v: None if 0 < v <= 1 else "must be in (0, 1]"))
        if kind in kinds_raw and not any(c.kind == kind for c in corpora):
            raise SpecError(f"kinds.{kind}: no corpus of this kind is listed under corpora")
    return DataSpec(corpora, text, seed, image_res, patch_size, kind_ratio, loader, training)


def load_data_spec(path: str | os.PathLike) -> DataSpec:
    """Reads a data YAML. Relative shard and tokenizer paths are taken from the current
    directory unless the file sets `root` (itself relative to the YAML's folder)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exn:
        raise SpecError(f"{path}: cannot read data spec ({exn.strerror})") from None
    except yaml.YAMLError as exn:
        raise SpecError(f"{path}: not valid YAML ({exn})") from None
    root = path.parent if isinstance(raw, dict) and "root" in raw else None
    return parse_data_spec(raw, root)
