"""The run configuration: one YAML file composing model, corpora, optimisation,
checkpointing and logging, with `--set key=value` overrides, validated on load. Its
`plugins:` (training/engine/plugins.py) are imported first, so that what they register is
known when the rest is checked.

Sections `model`, `data` and `deepspeed` are either a path (relative to the run file, or to
the working directory) or an inline mapping; their contents are validated by their owners
(`check_sections`). Every field of the run's own sections declares its type, default and
range below; data_pipeline/config.py builds and checks them, and values from the file and
from `--set` are read by the same YAML loader.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import signal
import typing
from dataclasses import dataclass, field
from pathlib import Path

from data_pipeline.config import ConfigError, build, parse_yaml, read_yaml_file, setting, subkey
from data_pipeline.kinds import KINDS, data_kind

if typing.TYPE_CHECKING:
    from data_pipeline.spec import DataSpec
    from training.model.model_config import ModelConfig

REFERENCED_SECTIONS = ("model", "data", "deepspeed")
PRECISIONS = ("bf16", "fp16", "fp32")
SCHEDULES = ("linear", "cosine")
# The run config owns these; a DeepSpeed JSON that sets them would be a second source of truth.
RUN_OWNED_DEEPSPEED_KEYS = ("gradient_clipping", "gradient_accumulation_steps", "bf16", "fp16", "optimizer",
                            "scheduler", "train_batch_size", "train_micro_batch_size_per_gpu")
# The kernel delivers these without asking the process: no handler can checkpoint on them.
UNCATCHABLE_SIGNALS = (signal.SIGKILL, signal.SIGSTOP)
# Signals the kernel raises for a fault of the process itself: a handler that only sets a flag
# returns to the faulting instruction, which faults again, forever.
FAULT_SIGNALS = (signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL)


@dataclass
class RunSection:
    name: str = setting("run", nonempty=True)
    output_dir: str = setting("runs/run", nonempty=True)
    seed: int = setting(0, min=0, max=2**32 - 1)
    max_steps: int = setting(1000, min=1)
    # Write consolidated fp32 weights (OUTPUT/export) from memory when the run finishes.
    export_on_finish: bool = False


@dataclass
class OptimSection:
    lr: float = setting(1e-4, gt=0, max=10)  # above 10 no run of this field has ever trained
    weight_decay: float = setting(0.01, min=0, max=10)
    betas: list[float] = setting([0.9, 0.98], length=2, min=0, lt=1)
    eps: float = setting(1e-8, gt=0, max=1)
    new_param_lr_scale: float = setting(2.0, gt=0, max=1e4)
    warmup_steps: int = setting(1000, min=0)
    schedule: str = setting("linear", choices=SCHEDULES)
    # The schedule ends at this fraction of the peak learning rate.
    min_lr_ratio: float = setting(0.0, min=0, max=1)
    grad_clip: float = setting(1.0, min=0, max=1e6)  # 0: no clipping
    grad_accum: int = setting(1, min=1)
    precision: str = setting("bf16", choices=PRECISIONS)
    # Samples per optimizer step over all ranks, per data kind (image_text, region, video_text);
    # when set it overrides the corpora's per-rank batch sizes.
    global_batch: dict[str, int] = setting({}, keys=KINDS, min=1)


@dataclass
class CheckpointSection:
    every_steps: int = setting(1000, min=1)
    keep_last: int = setting(3, min=1)
    keep_every: typing.Optional[int] = setting(None, min=1)
    # 'auto' (the newest complete checkpoint), 'none', or a checkpoint folder.
    resume: str = setting("auto", nonempty=True)
    allow_config_change: bool = False


# Where the figures go besides the console (logging.report_to).
REPORTERS = ("jsonl", "tensorboard", "wandb")


@dataclass
class WandbSection:
    project: str = setting("x2vlm", nonempty=True)
    entity: typing.Optional[str] = None  # a team or user; None: the account's default
    # offline: written under OUTPUT/wandb for `wandb sync` (no account, no network); None: wandb's
    # own choice (WANDB_MODE, else online).
    mode: typing.Optional[str] = setting(None, choices=("online", "offline"))
    tags: list[str] = setting([])


@dataclass
class LoggingSection:
    every_steps: int = setting(10, min=1)
    # jsonl: OUTPUT/metrics.jsonl, always written (resume, x2vlm-curves and the model card read
    # it); tensorboard: OUTPUT/tensorboard; wandb: Weights & Biases (rank 0; the `wandb` package,
    # imported only then), with the settings of logging.wandb.
    report_to: list[str] = setting(["jsonl", "tensorboard"], choices=REPORTERS)
    # false: no TensorBoard whatever report_to says (the switch of run configs older than report_to).
    tensorboard: bool = True
    wandb: WandbSection = setting(WandbSection)
    progress_bar: typing.Optional[bool] = None
    # One JSONL file per rank with the sample keys of every step (for coverage audits).
    trained_keys: bool = False

    def reporters(self) -> set[str]:
        reporters = set(self.report_to) | {"jsonl"}
        return reporters - {"tensorboard"} if not self.tensorboard else reporters

    def check(self, where: str) -> None:
        import importlib.util

        if "wandb" in self.report_to and importlib.util.find_spec("wandb") is None:
            raise ConfigError(f"{subkey(where, 'report_to')}: wandb, but the wandb package is not installed "
                              f"(pip install wandb)")


@dataclass
class GuardSection:
    max_consecutive_nonfinite: int = setting(5, min=1)
    # Pre-emption signals: the first asks for a checkpoint, the second exits at once.
    signals: list[str] = setting(["SIGUSR1", "SIGTERM"], nonempty=True)
    # When the launcher dies (SIGTERM or SIGKILL to `deepspeed`), the ranks checkpoint as after a
    # pre-emption signal, and exit at once if they have not within this many seconds.
    launcher_grace_s: float = setting(300.0, min=0, max=86400)
    # A collective (gradients, the step's figures, a checkpoint) that waits longer than this for a
    # rank ends the run naming the ranks least recently heard from (exit 87); a rank that works
    # alone for longer (none does in this trainer) would need it larger.
    collective_timeout_s: float = setting(1800.0, min=1, max=7 * 86400)

    def check(self, where: str) -> None:
        from training.runtime.signals import PreemptionHandler

        for i, name in enumerate(self.signals):
            key = f"{subkey(where, 'signals')}[{i}]"
            try:
                (number,) = PreemptionHandler([name]).signals
            except ValueError:
                raise ConfigError(f"{key}: unknown signal name {name!r}") from None
            if number in UNCATCHABLE_SIGNALS:
                raise ConfigError(f"{key}: {number.name} cannot be caught, so it cannot trigger a checkpoint; "
                                  f"use a catchable signal such as SIGUSR1 or SIGTERM")
            if number in FAULT_SIGNALS:
                raise ConfigError(f"{key}: {number.name} reports a fault of the process itself, not a pre-emption; "
                                  f"handling it would repeat the fault forever; use SIGUSR1 or SIGTERM")


@dataclass
class EvalSet:
    # A named held-out set (a split, such as refcoco+_testA): its metrics are NAME/... .
    name: str = setting(nonempty=True)
    kind: str = setting(choices=KINDS)
    shards: list[str] = setting(nonempty=True)

    def check(self, where: str) -> None:
        if "/" in self.name:
            raise ConfigError(f"{subkey(where, 'name')}: must not contain '/' (it prefixes the set's metrics), "
                              f"got {self.name!r}")


# The batch names of the kinds whose held-out sets have a key of their own (`eval.BATCH_shards`).
PLAIN_SETS = ("image", "region", "video")


@dataclass
class EvalSection:
    # Evaluate every N steps and at the end (0: never) on held-out shards (patterns or lists).
    every_steps: int = setting(0, min=0)
    image_shards: list[str] = setting([])
    region_shards: list[str] = setting([])
    video_shards: list[str] = setting([])
    itm_top_k: int = setting(16, min=0)  # 0: ITC only
    batch_size: int = setting(32, min=1)
    # Only the first N samples of each kind, to keep evaluation during training short.
    max_samples: typing.Optional[int] = setting(None, min=1)
    # Further held-out sets by name, any number per kind (one per split).
    sets: list[EvalSet] = setting([])
    # Also caption the images of the image-text sets and score the captions (BLEU-4, CIDEr-D;
    # training/evaluation/captioning.py): for a model trained with the captioning loss.
    captioning: bool = False
    caption_max_len: int = setting(30, min=1)  # most generated tokens per caption
    caption_beam: int = setting(1, min=1)  # 1: greedy

    def shards(self) -> dict[str, list[str]]:
        return {"image_shards": self.image_shards, "region_shards": self.region_shards,
                "video_shards": self.video_shards, **{f"sets.{s.name}": s.shards for s in self.sets}}

    def named_sets(self) -> list[tuple[str, str, list[str]]]:
        """Every held-out set as (name, data kind, shard patterns): `BATCH_shards` is the set
        named BATCH of the kind whose batches are so named (image_text, region, video_text),
        then `sets`."""
        plain = [(batch, KINDS.by_batch(batch).name, getattr(self, f"{batch}_shards")) for batch in PLAIN_SETS]
        return [entry for entry in plain if entry[2]] + [(s.name, s.kind, s.shards) for s in self.sets]

    def check(self, where: str) -> None:
        for name, patterns in self.shards().items():
            for i, pattern in enumerate(patterns):
                if not pattern:
                    raise ConfigError(f"{subkey(where, name)}[{i}]: must not be empty")
        names = [s.name for s in self.sets]
        for i, name in enumerate(names):
            # image / region / video are the names of the image_shards, region_shards and video_shards sets.
            if name in names[:i] or name in ("image", "region", "video"):
                raise ConfigError(f"{subkey(where, f'sets[{i}].name')}: {name!r} is taken (by another set, or by "
                                  f"image_shards / region_shards / video_shards)")
        if self.every_steps and not any(self.shards().values()):
            raise ConfigError(f"{subkey(where, 'every_steps')}: {self.every_steps}, but no eval shards are given "
                              f"(eval.image_shards, eval.region_shards, eval.video_shards, eval.sets)")


@dataclass
class RunConfig:
    # The referenced sections, as mappings; `check_sections` validates them.
    model: dict
    data: dict
    deepspeed: dict
    run: RunSection = setting(RunSection)
    optim: OptimSection = setting(OptimSection)
    checkpoint: CheckpointSection = setting(CheckpointSection)
    logging: LoggingSection = setting(LoggingSection)
    guard: GuardSection = setting(GuardSection)
    eval: EvalSection = setting(EvalSection)
    # Modules to import before the config is checked (their data kinds, objectives, tasks and
    # extensions then exist): module names, or .py files relative to this file.
    plugins: list[str] = setting([])
    source: str = field(default="<inline>", init=False)
    # Folder of each section's file, for the paths inside it (shard patterns, weights).
    reference_dirs: dict = field(default_factory=dict, init=False)

    def check(self, where: str) -> None:
        zero = self.deepspeed.get("zero_optimization")
        stage = zero.get("stage") if isinstance(zero, dict) else None
        if isinstance(stage, bool) or stage not in (0, 1, 2, 3):  # true == 1 in Python
            raise ConfigError(f"{subkey(where, 'deepspeed.zero_optimization.stage')}: must be 0, 1, 2 or 3, "
                              f"got {stage!r}")
        for key in RUN_OWNED_DEEPSPEED_KEYS:
            if key in self.deepspeed:
                raise ConfigError(f"{subkey(where, 'deepspeed.' + key)}: set by the run config (optim / data "
                                  f"sections); remove it")

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


def parse_override(text: str, source: str) -> tuple[list[str], object]:
    """`key.path=value`; the value is read as YAML, as it would be in the file."""
    if "=" not in text:
        raise ConfigError(f"{source}: --set {text!r}: expected key=value, for example --set optim.lr=3e-4")
    key, raw = text.split("=", 1)
    if not key:
        raise ConfigError(f"{source}: --set {text!r}: empty key")
    return key.split("."), parse_yaml(raw, f"{source}: {key}: --set value {raw!r}") if raw else ""


def apply_overrides(data: dict, overrides: list[str], source: str) -> dict:
    data = copy.deepcopy(data)
    for text in overrides:
        path, value = parse_override(text, source)
        node = data
        for i, part in enumerate(path):
            where = ".".join(path[:i + 1])
            if isinstance(node, list):  # data.corpora.0.shards: a list index
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"{source}: {where}: --set {text}: not an index of that list "
                                      f"(0..{len(node) - 1})")
                part = int(part)
            elif not isinstance(node, dict):
                raise ConfigError(f"{source}: {'.'.join(path[:i])}: --set {text}: not a mapping")
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
    loaded = read_yaml_file(path, what)
    if not isinstance(loaded, dict):
        raise ConfigError(f"{what}: {path} must hold a mapping")
    return loaded


def resolve_reference(value, base: Path, key: str, source: str) -> tuple[dict, str | Path]:
    """An inline mapping, or a path to YAML / JSON (relative to the run file, else to the cwd)."""
    if isinstance(value, dict):
        return value, f"{source}:{key}"
    if not isinstance(value, str):
        raise ConfigError(f"{source}: {key}: expected a path or a mapping, got {value!r}")
    candidates = [Path(value)] if Path(value).is_absolute() else [base / value, Path(value)]
    for candidate in candidates:
        if candidate.is_file():
            return _load_file(candidate, f"{source}: {key}"), candidate
    raise ConfigError(f"{source}: {key}: names {value}, which exists neither beside the run file nor under the "
                      f"working directory")


def load_run_config(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    """The run file with its referenced files and the overrides; the run's own sections are
    validated here, the model and data sections by `check_sections`."""
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
            raise ConfigError(f"{source}: {key}: missing required key")
        raw[key], origin = resolve_reference(raw[key], base, key, source)
        reference_dirs[key] = Path(origin).parent if isinstance(origin, Path) else base
    raw = apply_overrides(raw, nested, source)
    from training.engine.plugins import import_plugins

    import_plugins(raw.get("plugins", []), base, f"{source}: plugins")
    try:
        config = build(RunConfig, raw, "")
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None
    config.source = source
    config.reference_dirs = reference_dirs
    return config


def check_sections(config: RunConfig) -> tuple["ModelConfig", "DataSpec"]:
    """The model and data sections validated by their owners, keys named from the run file
    (`model.text.vocab_size`, `data.corpora[0].shards`); the files the run names (tokenizer,
    shards, pre-trained towers, eval shards) checked to exist; and the settings that involve
    both sections. All before any process group or model exists. (`checkpoint.resume` is
    checked by `check_resume`, since `--resume` replaces it.)"""
    from data_pipeline.spec import check_data_files, parse_data_spec
    from training.model.model_config import model_config_from_dict
    from training.objectives.settings import parse_loss_settings

    try:
        model = model_config_from_dict(config.model, "model")
        parse_loss_settings(model.losses, "model.losses")
        data = parse_data_spec(config.data, root=config.reference_dirs.get("data"), where="data")
        _check_across_sections(model, data)
        check_data_files(data, "data")
        _check_run_files(config, model)
    except ConfigError as error:
        raise ConfigError(f"{config.source}: {error}") from None
    return model, data


def _check_across_sections(model: "ModelConfig", data: "DataSpec") -> None:
    offset = model.text.position_offset
    if data.text.max_tokens > model.text.token_positions:
        raise ConfigError(f"data.text.max_tokens: {data.text.max_tokens} exceeds the model's "
                          f"text.max_position_embeddings ({model.text.max_position_embeddings})"
                          + (f" less the {model.text.kind} position offset (text.pad_token_id + 1 = {offset})"
                             if offset else ""))
    for i, corpus in enumerate(data.corpora):
        if data_kind(corpus.kind).vision == "video" and corpus.options.frames > model.vision.max_frames:
            raise ConfigError(f"data.corpora[{i}].options.frames: {corpus.options.frames} exceeds the model's "
                              f"vision.max_frames ({model.vision.max_frames})")


def check_resume(resume: str, key: str) -> None:
    """'auto', 'none' or a complete checkpoint folder."""
    from training.engine.checkpoint import MARKER, read_marker

    if resume not in ("auto", "none") and read_marker(Path(resume)) is None:
        raise ConfigError(f"{key}: {resume} is not a complete checkpoint folder (no readable {MARKER} marker)")


def _check_run_files(config: RunConfig, model: "ModelConfig") -> None:
    from data_pipeline.io.shard_list import expand_shards

    for key, path in (("model.vision.pretrained", model.vision.pretrained),
                      ("model.text.pretrained", model.text.pretrained), ("model.init_from", model.init_from)):
        if path is not None and not Path(path).exists():
            raise ConfigError(f"{key}: {path} does not exist")
    if config.eval.every_steps:
        for name, patterns in config.eval.shards().items():
            if patterns:
                try:
                    expand_shards(patterns, where=f"eval.{name}")
                except (OSError, ValueError) as error:
                    raise ConfigError(str(error)) from None


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
