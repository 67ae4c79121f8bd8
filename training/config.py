"""The run configuration: one YAML file composing model, corpora, optimisation,
checkpointing and logging, with `--set key=value` overrides, validated on load.

Sections `model`, `data` and `deepspeed` are either a path (relative to the run file, or to
the working directory) or an inline mapping; their contents are validated by their owners.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml


class ConfigError(ValueError):
    """A configuration mistake; the message names the key and the file."""


@dataclass
class RunSection:
    name: str = "run"
    output_dir: str = "runs/run"
    seed: int = 0
    max_steps: int = 1000
    # Write consolidated fp32 weights (OUTPUT/export) from memory when the run finishes.
    export_on_finish: bool = False


@dataclass
class OptimSection:
    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-8
    new_param_lr_scale: float = 2.0
    warmup_steps: int = 1000
    schedule: str = "linear"
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0
    grad_accum: int = 1
    precision: str = "bf16"
    # Samples per optimizer step over all ranks, per data kind (image_text, region, video_text);
    # when set it overrides the corpora's per-rank batch sizes.
    global_batch: dict = field(default_factory=dict)


@dataclass
class CheckpointSection:
    every_steps: int = 1000
    keep_last: int = 3
    keep_every: typing.Optional[int] = None
    resume: str = "auto"
    allow_config_change: bool = False


@dataclass
class LoggingSection:
    every_steps: int = 10
    tensorboard: bool = True
    progress_bar: typing.Optional[bool] = None
    # One JSONL file per rank with the sample keys of every step (for coverage audits).
    trained_keys: bool = False


@dataclass
class GuardSection:
    max_consecutive_nonfinite: int = 5
    signals: list[str] = field(default_factory=lambda: ["SIGUSR1", "SIGTERM"])


@dataclass
class EvalSection:
    # Evaluate every N steps and at the end (0: never) on held-out shards (patterns or lists).
    every_steps: int = 0
    image_shards: list[str] = field(default_factory=list)
    region_shards: list[str] = field(default_factory=list)
    video_shards: list[str] = field(default_factory=list)
    itm_top_k: int = 16
    batch_size: int = 32
    # Only the first N samples of each kind, to keep evaluation during training short.
    max_samples: typing.Optional[int] = None


@dataclass
class RunConfig:
    model: typing.Any
    data: typing.Any
    deepspeed: typing.Any
    run: RunSection = field(default_factory=RunSection)
    optim: OptimSection = field(default_factory=OptimSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    logging: LoggingSection = field(default_factory=LoggingSection)
    guard: GuardSection = field(default_factory=GuardSection)
    eval: EvalSection = field(default_factory=EvalSection)
    source: str = "<inline>"
    # Folder of each section's file, for the paths inside it (shard patterns, weights).
    reference_dirs: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data.pop("source")
        data.pop("reference_dirs")
        return data

    def fingerprint(self) -> str:
        """What must not change across a resume: model, data and optimisation settings."""
        essential = {k: v for k, v in self.to_dict().items() if k in ("model", "data", "optim")}
        essential["seed"] = self.run.seed
        return hashlib.sha256(json.dumps(essential, sort_keys=True, default=str).encode()).hexdigest()[:16]


REFERENCED_SECTIONS = ("model", "data", "deepspeed")
PRECISIONS = ("bf16", "fp16", "fp32")
SCHEDULES = ("linear", "cosine")
# The run config owns these; a DeepSpeed JSON that sets them would be a second source of truth.
RUN_OWNED_DEEPSPEED_KEYS = ("gradient_clipping", "gradient_accumulation_steps", "bf16", "fp16", "optimizer",
                            "scheduler", "train_batch_size", "train_micro_batch_size_per_gpu")


def _type_ok(value, annotation) -> bool:
    origin = typing.get_origin(annotation)
    if annotation is typing.Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if origin is list:
        (item,) = typing.get_args(annotation)
        return isinstance(value, list) and all(_type_ok(v, item) for v in value)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, annotation)


def _build(cls, data, where: str, source: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: '{where}' must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in ("source", "reference_dirs")}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise ConfigError(f"{source}: unknown key '{key}' (known keys here: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, f in fields.items():
        key = f"{where}.{name}" if where else name
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{source}: missing key '{key}'")
            continue
        annotation = hints[name]
        value = data[name]
        if annotation is float and isinstance(value, str):
            # PyYAML reads 3e-4 (no dot) as a string.
            try:
                value = data[name] = float(value)
            except ValueError:
                pass
        if dataclasses.is_dataclass(annotation):
            kwargs[name] = _build(annotation, data[name], key, source)
        elif not _type_ok(data[name], annotation):
            raise ConfigError(f"{source}: '{key}' must be {getattr(annotation, '__name__', annotation)}, got {data[name]!r}")
        else:
            kwargs[name] = float(data[name]) if annotation is float else data[name]
    return cls(**kwargs)


def parse_override(text: str, source: str) -> tuple[list[str], object]:
    if "=" not in text:
        raise ConfigError(f"{source}: --set {text!r}: expected key=value, for example --set optim.lr=3e-4")
    key, raw = text.split("=", 1)
    if not key:
        raise ConfigError(f"{source}: --set {text!r}: empty key")
    return key.split("."), yaml.safe_load(raw) if raw else ""


def apply_overrides(data: dict, overrides: list[str], source: str) -> dict:
    data = copy.deepcopy(data)
    for text in overrides:
        path, value = parse_override(text, source)
        node = data
        for i, part in enumerate(path):
            where = ".".join(path[:i + 1])
            if isinstance(node, list):  # data.corpora.0.shards: a list index
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"{source}: --set {text}: '{where}' is not an index of that list (0..{len(node) - 1})")
                part = int(part)
            elif not isinstance(node, dict):
                raise ConfigError(f"{source}: --set {text}: '{'.'.join(path[:i])}' is not a mapping")
            if i == len(path) - 1:
                node[part] = value
            else:
                if isinstance(node, dict) and node.get(part) is None:
                    node[part] = {}
                node = node[part]
    return data


def _load_file(path: Path, what: str) -> dict:
    if not path.is_file():
        raise ConfigError(f"{what}: file {path} does not exist")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        loaded = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as error:
        raise ConfigError(f"{what}: {path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {error}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{what}: {path} must hold a mapping")
    return loaded


def resolve_reference(value, base: Path, key: str, source: str) -> tuple[dict, str | Path]:
    """An inline mapping, or a path to YAML / JSON (relative to the run file, else to the cwd)."""
    if isinstance(value, dict):
        return value, f"{source}:{key}"
    if not isinstance(value, str):
        raise ConfigError(f"{source}: '{key}' must be a path or a mapping, got {value!r}")
    candidates = [Path(value)] if Path(value).is_absolute() else [base / value, Path(value)]
    for candidate in candidates:
        if candidate.is_file():
            return _load_file(candidate, f"{source}: '{key}'"), candidate
    raise ConfigError(f"{source}: '{key}' names {value}, which exists neither beside the run file nor under the working directory")


def load_run_config(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    path = Path(path)
    source = str(path)
    raw = _load_file(path, "--config")
    # Whole-section overrides (--set model=other.yaml) first, then the referenced files are
    # read, so that --set deepspeed.zero_optimization.stage=3 reaches inside them.
    top_level = [o for o in overrides if "." not in o.split("=", 1)[0]]
    nested = [o for o in overrides if o not in top_level]
    raw = apply_overrides(raw, top_level, source)
    base = path.parent
    reference_dirs = {}
    for key in REFERENCED_SECTIONS:
        if key not in raw:
            raise ConfigError(f"{source}: missing key '{key}'")
        raw[key], origin = resolve_reference(raw[key], base, key, source)
        reference_dirs[key] = Path(origin).parent if isinstance(origin, Path) else base
    config = _build(RunConfig, apply_overrides(raw, nested, source), "", source)
    config.source = source
    config.reference_dirs = reference_dirs
    validate(config)
    return config


def validate(config: RunConfig) -> None:
    source = config.source
    if config.optim.precision not in PRECISIONS:
        raise ConfigError(f"{source}: 'optim.precision' must be one of {PRECISIONS}, got {config.optim.precision!r}")
    if config.optim.schedule not in SCHEDULES:
        raise ConfigError(f"{source}: 'optim.schedule' must be one of {SCHEDULES}, got {config.optim.schedule!r}")
    positive = {"run.max_steps": config.run.max_steps, "optim.grad_accum": config.optim.grad_accum,
                "checkpoint.every_steps": config.checkpoint.every_steps, "checkpoint.keep_last": config.checkpoint.keep_last,
                "logging.every_steps": config.logging.every_steps, "optim.lr": config.optim.lr,
                "guard.max_consecutive_nonfinite": config.guard.max_consecutive_nonfinite}
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{source}: '{key}' must be > 0, got {value}")
    if len(config.optim.betas) != 2:
        raise ConfigError(f"{source}: 'optim.betas' must hold two numbers, got {config.optim.betas}")
    stage = config.deepspeed.get("zero_optimization", {}).get("stage")
    if stage not in (0, 1, 2, 3):
        raise ConfigError(f"{source}: 'deepspeed.zero_optimization.stage' must be 0, 1, 2 or 3, got {stage!r}")
    for key in RUN_OWNED_DEEPSPEED_KEYS:
        if key in config.deepspeed:
            raise ConfigError(f"{source}: 'deepspeed.{key}' is set by the run config (optim / data sections); remove it")


def deepspeed_config(config: RunConfig, micro_batch_size: int) -> dict:
    """The DeepSpeed JSON for this run: the ZeRO settings of the file plus what the run owns."""
    ds = copy.deepcopy(config.deepspeed)
    ds["train_micro_batch_size_per_gpu"] = micro_batch_size
    ds["gradient_accumulation_steps"] = config.optim.grad_accum
    # DeepSpeed 0.19.3 changed its default clipping; always say it.
    ds["gradient_clipping"] = config.optim.grad_clip
    ds["bf16"] = {"enabled": config.optim.precision == "bf16"}
    ds["fp16"] = {"enabled": config.optim.precision == "fp16", "loss_scale": 0, "initial_scale_power": 16}
    ds.setdefault("steps_per_print", 10**9)
    ds.setdefault("wall_clock_breakdown", False)
    return ds
