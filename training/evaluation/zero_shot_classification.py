"""Zero-shot image classification: class names and prompt templates to text embeddings, then
accuracy on labelled images, evaluation only.

Each class's embedding is the mean of its prompts' unit-length ITC embeddings ("a photo of a
{}." with the class name filled in, one per template), normalised again, as CLIP and open_clip
build their zero-shot classifiers; an image is given the classes whose embeddings are most
similar to its own (cosine similarity). Embeddings come from X2VLMPredictor
(training/inference.py), so images take its preprocessing, the evaluation mode of the data
pipeline, whether they come from files or shards.

Labelled images come from
  * an ImageFolder tree, as torchvision's ImageFolder reads it: one subfolder per class, the
    class its name, labels numbered in sorted folder order (`image_folder`);
  * shards with a label field, as img2dataset and webdataset write ImageNet: a member such as
    `cls` (the label as text) or a field of the sample's json, read with the project's shard
    reader (`labelled_shards`).
A label is a class index (0-based, the line of the classes file), a class name, or a key the
classes file maps to a name (`KEY<TAB>NAME` lines, e.g. ImageNet's n01440764<TAB>tench).

An image that cannot be decoded is counted and skipped, as evaluation skips it; a class
folder without images, a label that names no class and a template without `{}` are the
user's mistakes and raise ZeroShotError naming them.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Iterable, Iterator, Protocol, Sequence

import torch
from tqdm import tqdm

from data_pipeline import schema
from data_pipeline.io.shard_list import expand_shards
from data_pipeline.io.shard_reader import read_shard
from data_pipeline.skips import BadSample, Counters
from training.evaluation.prompt_templates import DEFAULT_TEMPLATES
from training.inference import InputError

log = logging.getLogger(__name__)

TOP_K = (1, 5)
PROMPTS_PER_CALL = 1024  # prompts handed to the model at once (it batches them further)


class ZeroShotError(ValueError):
    """A classes file, template, image folder, shard or label that cannot be used; the
    message names it."""


class Embedder(Protocol):
    """What classification needs of a model: X2VLMPredictor, or a stand-in in tests."""

    def embed_images(self, images: Sequence) -> torch.Tensor: ...

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor: ...


@dataclasses.dataclass(frozen=True)
class Classes:
    """The classes to choose from: NAMES fill the templates; KEYS map a label as the data
    writes it (a folder name, a shard's label text) to a class index."""

    names: list[str]
    keys: dict[str, int] = dataclasses.field(default_factory=dict)
    source: str = "the classes"  # where they come from, for messages

    def index(self, label, where: str) -> int:
        """The class of LABEL (an index, a key or a name) found at WHERE."""
        if isinstance(label, bool) or not isinstance(label, (int, str)):
            raise ZeroShotError(f"{where}: label {label!r} is neither an integer nor a string")
        text = str(label).strip()
        if text in self.keys:
            return self.keys[text]
        if isinstance(label, int) or (text.isascii() and text.isdigit()):
            if 0 <= int(text) < len(self.names):
                return int(text)
        elif text in self.names:
            return self.names.index(text)
        raise ZeroShotError(f"{where}: unknown label {label!r}: not a class index below {len(self.names)}, "
                            f"a key or a name of {self.source}")


@dataclasses.dataclass(frozen=True)
class LabelledImage:
    image: bytes | Path  # as X2VLMPredictor takes it
    label: int
    where: str  # the file, or shard URL and sample key, for messages


# Inputs --------------------------------------------------------------------------------------

def _text_lines(path: Path, what: str) -> list[tuple[int, str]]:
    """(line number, line) of a UTF-8 file, without blank lines and lines starting with #."""
    if not path.is_file():
        raise ZeroShotError(f"{path}: {what} file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ZeroShotError(f"{path}: not UTF-8 text ({error.reason})") from None
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), start=1)
            if line.strip() and not line.lstrip().startswith("#")]


def read_classes(path: Path) -> Classes:
    """A classes file: one class per line in label order, either `NAME` or `KEY<TAB>NAME`
    (every line alike); blank lines and lines starting with # are skipped."""
    lines = _text_lines(path, "classes")
    if not lines:
        raise ZeroShotError(f"{path}: no classes")
    keyed = sum("\t" in line for _, line in lines)
    if keyed not in (0, len(lines)):
        raise ZeroShotError(f"{path}: mixes NAME and KEY<TAB>NAME lines; use one form for every line")
    names, keys = [], {}
    for number, line in lines:
        where = f"{path}:{number}"
        if keyed:
            parts = [part.strip() for part in line.split("\t")]
            if len(parts) != 2 or not all(parts):
                raise ZeroShotError(f"{where}: expected KEY<TAB>NAME, got {line!r}")
            key, name = parts
            if key in keys:
                raise ZeroShotError(f"{where}: key {key!r} repeats line {lines[keys[key]][0]}")
            keys[key] = len(names)
        else:
            name = line
        if name in names:
            raise ZeroShotError(f"{where}: class {name!r} repeats line {lines[names.index(name)][0]}")
        names.append(name)
    return Classes(names, keys, str(path))


def read_templates(path: Path) -> list[str]:
    """A templates file: one prompt per line, `{}` where the class name goes."""
    templates = [line for _, line in _text_lines(path, "templates")]
    if not templates:
        raise ZeroShotError(f"{path}: no templates")
    return check_templates(templates, str(path))


def check_templates(templates: Sequence[str], source: str = "templates") -> list[str]:
    for template in templates:
        if template.count("{}") != 1 or template.replace("{}", "").count("{") or template.replace("{}", "").count("}"):
            raise ZeroShotError(f"{source}: template {template!r} must hold `{{}}` once (where the class name goes) "
                                f"and no other braces")
    if not templates:
        raise ZeroShotError(f"{source}: no templates")
    return list(templates)


def image_folder(root: Path, classes: Classes | None = None) -> tuple[Classes, list[LabelledImage]]:
    """The classes and images of an ImageFolder tree: ROOT/CLASS/**/IMAGE. Without CLASSES
    each folder is a class named after it (underscores as spaces); with them each folder is a
    key or a name of theirs, or, for a plain list as long as the folders that does not name
    them all, the name on the line of its place in sorted order (torchvision's numbering, which
    ImageNet's class lists follow)."""
    if not root.is_dir():
        raise ZeroShotError(f"{root}: not a directory")
    folders = sorted(entry.name for entry in os.scandir(root) if entry.is_dir() and not entry.name.startswith("."))
    if not folders:
        raise ZeroShotError(f"{root}: no class folders (expected ROOT/CLASS_NAME/IMAGE files)")
    if classes is None:
        classes = Classes([name.replace("_", " ") for name in folders], {name: i for i, name in enumerate(folders)},
                          f"the folders of {root}")
    elif not classes.keys:
        classes = dataclasses.replace(classes, keys=_folder_keys(folders, classes.names))
    suffixes = {f".{ext}" for ext in schema.IMAGE_EXTENSIONS}
    resolved_root = root.resolve()
    images = []
    for folder in folders:
        label = classes.index(folder, f"{root / folder}")
        files = [path for path in sorted((root / folder).rglob("*"))
                 if path.suffix.lower() in suffixes and path.is_file() and path.resolve().is_relative_to(resolved_root)]
        if not files:
            raise ZeroShotError(f"{root / folder}: empty class folder (no {', '.join(schema.IMAGE_EXTENSIONS)} files)")
        images += [LabelledImage(path, label, str(path)) for path in files]
    return classes, images


def _folder_keys(folders: list[str], names: list[str]) -> dict[str, int]:
    """The class of each folder of a tree whose classes are a plain list of NAMES: by name
    (underscores read as spaces), or else by place in sorted order when there are as many.
    A folder left out is refused, named, by Classes.index."""
    named = {}
    for folder in folders:
        name = next((n for n in (folder, folder.replace("_", " ")) if n in names), None)
        if name is not None:
            named[folder] = names.index(name)
    if len(named) < len(folders) and len(folders) == len(names):
        return {folder: i for i, folder in enumerate(folders)}
    return named


def _label_of(sample: dict, field: str):
    """The label of a raw sample: its member FIELD (text) or, failing that, FIELD of its json
    (dots reach into nested objects); None when it has neither."""
    member = sample.get(field.lower())
    if member is not None:
        try:
            return member.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise BadSample("bad_label", f"member {field!r} is not UTF-8 text") from None
    value = schema.parse_meta(sample).info
    for part in field.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def labelled_shards(patterns: Sequence[str], classes: Classes, label_field: str, counters: Counters,
                    ) -> Iterator[LabelledImage]:
    """The labelled images of shards (local, http(s), pipe:) in stored order. A shard that cannot
    be read and a sample without an image are counted in COUNTERS and skipped, as evaluation
    skips them; a sample without a label or with an unknown one raises ZeroShotError."""
    for url in expand_shards(list(patterns), where="--shards"):
        for _, sample in read_shard(url, 0, counters, retries=1, retry_delay_s=0):
            where = f"{url}: sample {sample['__key__']!r}"
            try:
                image = schema.media_of(sample, schema.IMAGE_EXTENSIONS)
                label = _label_of(sample, label_field)
            except BadSample as bad:
                counters.add(bad.reason)
                log.warning("%s: skipped (%s)", where, bad)
                continue
            if label is None:
                raise ZeroShotError(f"{where}: no label: neither a {label_field!r} member nor a json field "
                                    f"{label_field!r} (see --label-field)")
            yield LabelledImage(image, classes.index(label, where), where)


# Classification ------------------------------------------------------------------------------

@torch.no_grad()
def class_embeddings(model: Embedder, names: Sequence[str], templates: Sequence[str],
                     progress: bool = False) -> torch.Tensor:
    """(C, D) unit-length class embeddings: the mean of each class's unit-length prompt
    embeddings, normalised."""
    per_call = max(1, PROMPTS_PER_CALL // len(templates))  # classes whose prompts are embedded together
    rows = []
    with tqdm(total=len(names), unit="class", desc="class prompts", disable=not progress, dynamic_ncols=True) as bar:
        for start in range(0, len(names), per_call):
            group = names[start:start + per_call]
            prompts = [template.format(name) for name in group for template in templates]
            try:
                embedded = model.embed_texts(prompts).float()
            except InputError as error:
                raise ZeroShotError(f"a prompt the model cannot take: {error}") from None
            embedded = torch.nn.functional.normalize(embedded, dim=-1).view(len(group), len(templates), -1)
            rows.append(torch.nn.functional.normalize(embedded.mean(dim=1), dim=-1))
            bar.update(len(group))
    return torch.cat(rows)


class Tally:
    """Correct predictions so far, per class and top k."""

    def __init__(self, classes: int, ks: tuple[int, ...]):
        self.classes, self.ks = classes, ks
        self.images = torch.zeros(classes, dtype=torch.long)  # images per true class
        # k -> images of each class whose class is among the k most similar
        self.correct = {k: torch.zeros(classes, dtype=torch.long) for k in ks}

    def add(self, similarities: torch.Tensor, labels: torch.Tensor) -> None:
        """SIMILARITIES (N, C) of N images to the classes; LABELS (N,) their true classes."""
        self.images += torch.bincount(labels, minlength=self.classes)
        # The true class's place in a stable descending sort (argmax's choice among ties), so
        # that a model whose classes all look alike is right for the first class only, not for all.
        true = similarities.gather(1, labels[:, None])
        earlier = torch.arange(self.classes)[None, :] < labels[:, None]
        place = ((similarities > true) | ((similarities == true) & earlier)).sum(dim=1)
        for k in self.ks:
            self.correct[k] += torch.bincount(labels[place < k], minlength=self.classes)

    def accuracy(self, k: int) -> float:
        return self.correct[k].sum().item() / max(self.images.sum().item(), 1)


def _embed_batch(model: Embedder, batch: list[LabelledImage], counters: Counters) -> tuple[torch.Tensor, list[int]]:
    """The embeddings of the images of BATCH that decode, and their labels; one that does not
    is counted (`image_decode`) and skipped."""
    try:
        return model.embed_images([item.image for item in batch]).float(), [item.label for item in batch]
    except InputError:
        pass  # find the image that does not decode: one at a time
    embeddings, labels = [], []
    for item in batch:
        try:
            embeddings.append(model.embed_images([item.image]).float())
        except InputError as error:
            counters.add("image_decode")
            log.warning("%s: skipped (%s)", item.where, error)
            continue
        labels.append(item.label)
    return (torch.cat(embeddings) if embeddings else torch.empty(0)), labels


@dataclasses.dataclass
class ZeroShotResult:
    classes: list[str]
    templates: list[str]
    tally: Tally
    skipped: dict[str, int]

    @property
    def images(self) -> int:
        return int(self.tally.images.sum())

    def as_dict(self) -> dict:
        """The figures as JSON: top-k accuracy, chance, per-class top-1, skipped samples."""
        figures = {"images": self.images, "classes": len(self.classes)}
        figures.update({f"top{k}": self.tally.accuracy(k) for k in self.tally.ks})
        figures["chance_top1"] = 1 / len(self.classes)
        figures["per_class"] = [
            {"class": name, "images": int(n), "top1": (int(c) / int(n)) if n else None}
            for name, n, c in zip(self.classes, self.tally.images, self.tally.correct[1])]
        figures["templates"] = list(self.templates)
        figures["skipped"] = self.skipped
        return figures

    def summary(self) -> str:
        figures = " ".join(f"top-{k} {self.tally.accuracy(k):.4f}" for k in self.tally.ks)
        line = f"{self.images} images, {len(self.classes)} classes: {figures} (chance {1 / len(self.classes):.4f})"
        if self.skipped:
            line += "; skipped " + ", ".join(f"{n} {reason}" for reason, n in self.skipped.items())
        return line


def classify(model: Embedder, images: Iterable[LabelledImage], classes: Classes,
             templates: Sequence[str] = DEFAULT_TEMPLATES, batch_size: int = 64, counters: Counters | None = None,
             progress: bool = False, total: int | None = None) -> ZeroShotResult:
    """Top-1 (and top-5 where there are at least 5 classes) accuracy of zero-shot
    classification of IMAGES among CLASSES. Images are embedded BATCH_SIZE at a time (the
    model batches within that); TOTAL sizes the progress bar where known."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    templates = check_templates(list(templates))
    counters = counters if counters is not None else Counters()
    weights = class_embeddings(model, classes.names, templates, progress)
    tally = Tally(len(classes.names), tuple(k for k in TOP_K if k <= len(classes.names)))
    bar = tqdm(total=total, unit="img", desc="zero-shot", disable=not progress, dynamic_ncols=True)
    batch: list[LabelledImage] = []

    def flush() -> None:
        embeddings, labels = _embed_batch(model, batch, counters)
        if labels:
            tally.add(embeddings @ weights.T, torch.tensor(labels, dtype=torch.long))
        bar.update(len(batch))
        batch.clear()

    try:
        for item in images:
            batch.append(item)
            if len(batch) == batch_size:
                flush()
        if batch:
            flush()
    finally:
        bar.close()
    if tally.images.sum() == 0:
        raise ZeroShotError("no image could be classified" + (f" (skipped: {counters.as_dict()})" if counters.counts else ""))
    return ZeroShotResult(list(classes.names), templates, tally, counters.as_dict())


def write_result(result: ZeroShotResult, out: Path, **about) -> Path:
    """The figures as a JSON file, with ABOUT (model, data) first."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**about, **result.as_dict()}, indent=1) + "\n", encoding="utf-8")
    return out
