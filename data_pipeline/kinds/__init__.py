"""The registry of data kinds: one record per kind of corpus, which everything that differs by
kind reads (the data spec's options, the loader's transform and collate, the training batch's
name and row bound, the evaluation of held-out sets and the figures fine-tuning reports).

The built-in kinds (image_text, region, video_text) are registered by
data_pipeline/kinds/builtin.py the first time the registry is read; their collate functions, and
the helpers a plug-in's collate can use, are in collate.py. A plug-in adds a kind by
calling `register_kind` when its module is imported (a run config's `plugins:` imports it
before the config is validated):

    register_kind(DataKind(name="image_pairs", batch="pairs", vision="image", options=PairOptions,
                           transform=PairTransform.for_spec, collate=collate_pairs,
                           eval_collate=collate_pairs_eval, evaluation="pair_accuracy",
                           headline=("accuracy",)))

docs/ARCHITECTURE.md walks through a whole example.
"""
from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

# What a kind's batches carry on their visual side, which decides how the model encodes them:
# "image": `images` (B, 3, H, W); "regions": `images` plus per text `image_index`, `boxes` and
# `patch_mask`; "video": `frames` (B, F, 3, H, W).
VISIONS = ("image", "regions", "video")


def one_text(options) -> int:
    return 1


@dataclasses.dataclass(frozen=True)
class DataKind:
    # The corpus kind of data configs (`corpora[i].kind`, `kinds:`, `optim.global_batch`).
    name: str
    # The name of its batches on the training side: the task's batch argument, the prefix of
    # its loss weights (`model.losses.weights.BATCH`), of its logged figures (`BATCH/itc`) and
    # of the held-out set given by `eval.BATCH_shards`.
    batch: str
    vision: str  # one of VISIONS
    # The dataclass of `corpora[i].options` (built and checked by data_pipeline/config.py).
    options: type
    # (data spec, the corpus's options, the text encoder) -> the per-sample transform: a
    # callable (raw shard sample, random.Random) -> the sample's model inputs; in evaluation
    # mode when the spec's `training` is false.
    transform: Callable[[Any, Any, Any], Callable]
    collate: Callable[[list[dict]], dict]  # training samples -> a batch
    eval_collate: Callable[[list[dict]], dict]  # evaluation samples -> a batch (every text kept)
    # The evaluation that scores its held-out sets, by the name it is registered under in
    # training/evaluation (retrieval, grounding, ...), and the metrics of it that fine-tuning
    # prints before -> after.
    evaluation: str
    headline: tuple[str, ...]
    # The most texts one sample puts in a training batch (one caption; up to `max_regions`):
    # the losses pad a batch's rows to batch_size x this where ranks exchange rows.
    texts_per_sample: Callable[[Any], int] = one_text

    def __post_init__(self):
        if self.vision not in VISIONS:
            raise ValueError(f"data kind {self.name}: vision must be one of {', '.join(VISIONS)}, got {self.vision!r}")
        if not dataclasses.is_dataclass(self.options):
            raise ValueError(f"data kind {self.name}: options must be a dataclass, got {self.options!r}")


class KindRegistry(Mapping[str, DataKind]):
    """Name -> DataKind, in registration order (the built-in kinds first). Config fields take
    it as their `choices` / `keys`, so a kind registered by a plug-in is accepted there too."""

    def __init__(self):
        self._kinds: dict[str, DataKind] = {}
        self._lock = threading.Lock()
        self._builtins = "absent"  # "absent" -> "loading" -> "loaded"

    def _load_builtins(self) -> None:
        if self._builtins != "absent":
            return
        with self._lock:
            if self._builtins == "absent":
                self._builtins = "loading"
                from . import builtin  # noqa: F401  (registers the built-in kinds)

                self._builtins = "loaded"

    def register(self, kind: DataKind) -> DataKind:
        self._load_builtins()
        if kind.name in self._kinds:
            raise ValueError(f"data kind {kind.name!r} is registered twice")
        if any(other.batch == kind.batch for other in self._kinds.values()):
            raise ValueError(f"data kind {kind.name}: the batch name {kind.batch!r} is taken")
        self._kinds[kind.name] = kind
        return kind

    def __getitem__(self, name: str) -> DataKind:
        self._load_builtins()
        try:
            return self._kinds[name]
        except KeyError:
            raise KeyError(f"unknown data kind {name!r} (registered: {', '.join(self._kinds)})") from None

    def __iter__(self) -> Iterator[str]:
        self._load_builtins()
        return iter(list(self._kinds))

    def __len__(self) -> int:
        self._load_builtins()
        return len(self._kinds)

    def __str__(self) -> str:
        return ", ".join(self)

    def by_batch(self, batch: str) -> DataKind:
        """The kind whose batches are named BATCH."""
        for kind in self.values():
            if kind.batch == batch:
                return kind
        raise KeyError(f"no data kind names its batches {batch!r}")

    @property
    def options(self) -> Mapping[str, type]:
        """Name -> options dataclass: the `type_from` of a corpus's `options`."""
        return _OptionsView(self)


class _OptionsView(Mapping[str, type]):
    def __init__(self, registry: KindRegistry):
        self.registry = registry

    def __getitem__(self, name: str) -> type:
        return self.registry[name].options

    def __iter__(self):
        return iter(self.registry)

    def __len__(self) -> int:
        return len(self.registry)


KINDS = KindRegistry()


def register_kind(kind: DataKind) -> DataKind:
    """Adds KIND to the registry; a name or batch name registered before is an error."""
    return KINDS.register(kind)


def data_kind(name: str) -> DataKind:
    return KINDS[name]
