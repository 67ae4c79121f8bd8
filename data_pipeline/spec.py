"""The data specification: corpora, their mixture and the text / image settings, as YAML.

Every field declares its type, default and range here (data_pipeline/config.py builds and
checks them), and a mistake raises `ConfigError` naming the key path
(`corpora[1].weight: ...`), because a typo in a mixture must stop a job at start-up, not a
day into it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from .config import ConfigError, build, read_yaml_file, setting, subkey
from .io.shard_reader import DEFAULT_READ_TIMEOUT_S
from .io.tar_stream import DEFAULT_MAX_MEMBER_BYTES
from .kinds import KINDS, data_kind
from .text.text_spec import TextSpec


# Sections -----------------------------------------------------------------------------------

@dataclass
class CorpusSpec:
    name: str = setting(nonempty=True)
    kind: str = setting(choices=KINDS)  # a registered data kind (data_pipeline/kinds)
    # Brace patterns, globs, local paths, http(s):// or pipe: URLs; one string or a list.
    shards: Union[str, list[str]] = setting(nonempty=True)
    weight: float = setting(1.0, gt=0, max=1e6)
    batch_size: int = setting(32, min=1)
    # The options of the corpus's kind (its options dataclass); its defaults when not given.
    options: Any = setting(None, type_from=("kind", KINDS.options))

    def __post_init__(self):
        if isinstance(self.shards, str):
            self.shards = [self.shards]
        if self.options is None:
            self.options = data_kind(self.kind).options()

    def check(self, where: str) -> None:
        if "/" in self.name:
            raise ConfigError(f"{subkey(where, 'name')}: must not contain '/', got {self.name!r}")


@dataclass
class LoaderSpec:
    num_workers: int = setting(2, min=0)
    shuffle_buffer: int = setting(1000, min=0)
    shard_retries: int = setting(2, min=0)
    retry_delay_s: float = setting(1.0, min=0, max=3600)
    prefetch_factor: int = setting(2, min=1)
    # A tar member larger than this is skipped unread (a damaged size or a stray huge file).
    max_member_bytes: int = setting(DEFAULT_MAX_MEMBER_BYTES, min=1)
    # Stop when more than max_bad_fraction of the last bad_sample_window samples a worker read
    # were skipped: a corpus that is mostly unusable is a mistake to report, not to read forever.
    bad_sample_window: int = setting(1000, min=1)
    max_bad_fraction: float = setting(0.5, gt=0, max=1)
    # A worker that delivers no batch for this long is reported as stuck (0: wait forever).
    worker_timeout_s: float = setting(600.0, min=0, max=7 * 86400)
    # A shard not read, open to close, within this many seconds is skipped (`shard_timeout`),
    # the samples read before it kept: a stalled pipe or server, a trickle, a compression bomb.
    # It bounds evaluation's reads too, which run in the trainer's process (0: no bound). Keep it
    # below worker_timeout_s, or a stalled shard ends the run as a stuck worker first.
    shard_read_timeout_s: float = setting(DEFAULT_READ_TIMEOUT_S, min=0, max=7 * 86400)


@dataclass
class GroupingSpec:
    """GRIT-VLP grouped mini-batches (loader/grouping.py): each corpus's batches are formed from a
    pool of `pool_batches` batches by grouping nearest neighbours in the features the trainer
    recorded; the loader rereads the records every `refresh_steps` steps. Batches are grouped from
    step `start_step` on (the features are recorded from the first step): before it the stream is
    the one grouping off gives, so that grouping starts from a model whose features mean something."""
    enabled: bool = False
    pool_batches: int = setting(16, min=2)
    refresh_steps: int = setting(100, min=1)
    start_step: int = setting(0, min=0)
    # Samples per group: 0 makes each batch one group (GRIT-VLP); smaller groups put several
    # groups of near neighbours in a batch, which keeps the batch's other samples diverse.
    group_size: int = setting(0, min=0)


@dataclass
class KindSettings:
    # The fraction of steps that carry a batch of this kind: 1.0 every step, 0.5 every other.
    ratio: float = setting(1.0, gt=0, max=1)


@dataclass
class DataSpec:
    corpora: list[CorpusSpec] = setting(nonempty=True)
    text: TextSpec = setting()
    seed: int = setting(0, min=0, max=2**32 - 1)
    image_res: int = setting(224, min=1)
    patch_size: int = setting(16, min=1)
    # `kinds:` in the YAML; a kind not listed has ratio 1.0.
    kind_settings: dict[str, KindSettings] = setting({}, keys=KINDS, key="kinds")
    loader: LoaderSpec = setting(LoaderSpec)
    grouping: GroupingSpec = setting(GroupingSpec)
    training: bool = True
    # The folder relative shard and tokenizer paths are taken from (itself relative to the YAML
    # file's folder); the working directory when not set.
    root: str | None = setting(None, nonempty=True)

    def check(self, where: str) -> None:
        if self.image_res % self.patch_size:
            raise ConfigError(f"{subkey(where, 'patch_size')}: image_res {self.image_res} is not a multiple of "
                              f"patch_size {self.patch_size}")
        names = [c.name for c in self.corpora]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise ConfigError(f"{subkey(where, f'corpora[{i}].name')}: duplicate corpus name {name!r}")
        for kind in self.kind_settings:
            if not self.corpora_of(kind):
                raise ConfigError(f"{subkey(where, f'kinds.{kind}')}: no corpus of this kind is listed under corpora")

    @property
    def kind_ratio(self) -> dict[str, float]:
        return {kind: self.kind_settings.get(kind, KindSettings()).ratio for kind in KINDS}

    def kinds(self) -> list[str]:
        """The kinds of the corpora, in the registry's order."""
        return [k for k in KINDS if any(c.kind == k for c in self.corpora)]

    def corpora_of(self, kind: str) -> list[CorpusSpec]:
        return [c for c in self.corpora if c.kind == kind]


def _is_local(path: str) -> bool:
    return not ("://" in path or path.startswith("pipe:") or os.path.isabs(path))


def parse_data_spec(raw: Any, root: Path | None = None, where: str = "") -> DataSpec:
    """Validates a loaded YAML mapping. `root`, when given, anchors relative shard and
    tokenizer paths (and the file's own `root`); WHERE prefixes the keys in messages (`data`
    inside a run config)."""
    spec = build(DataSpec, raw, where)
    if spec.root is not None:
        root = Path(spec.root) if root is None else root / spec.root
    if root is not None:
        for corpus in spec.corpora:
            corpus.shards = [str(root / s) if _is_local(s) else s for s in corpus.shards]
        if not os.path.isabs(spec.text.tokenizer):
            spec.text.tokenizer = str(root / spec.text.tokenizer)
    return spec


def load_data_spec(path: str | os.PathLike) -> DataSpec:
    """Reads a data YAML. Relative shard and tokenizer paths are taken from the current
    directory unless the file sets `root` (itself relative to the YAML's folder)."""
    path = Path(path)
    raw = read_yaml_file(path, "data spec")
    try:
        return parse_data_spec(raw, path.parent if isinstance(raw, dict) and "root" in raw else None)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None


def check_data_files(spec: DataSpec, where: str = "") -> None:
    """The files the spec names exist: the tokenizer directory and every corpus's shards
    (each brace range and glob expanded, as the loader will). Apart from `parse_data_spec`
    because a spec can be written before its shards."""
    from .io.shard_list import expand_shards

    if not os.path.isdir(spec.text.tokenizer):
        raise ConfigError(f"{subkey(where, 'text.tokenizer')}: {spec.text.tokenizer} is not a directory "
                          f"(a tokenizer saved with save_pretrained)")
    for i, corpus in enumerate(spec.corpora):
        key = subkey(where, f"corpora[{i}].shards")
        try:
            expand_shards(corpus.shards, where=key)
        except (OSError, ValueError) as error:
            raise ConfigError(str(error)) from None
