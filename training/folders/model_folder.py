"""The model folder: the one form in which a model leaves and enters the project.

  model.safetensors   every parameter once, fp32 (the MLM decoder is tied to the word
                      embeddings and not stored twice)
  model.yaml          the model config, complete (every default written out), without paths
                      to files outside the folder
  tokenizer/          the Hugging Face tokenizer folder the model was trained with, copied
  card.json           the model card for programs: source, steps, data, metrics, project
                      version, creation time; the model as built, how it was trained and the
                      metrics under plain names with chance (training/folders/card_contents.py)
  README.md           the same card for people, with every command that takes the folder

Only names relative to the folder are used, so a folder can be moved or copied anywhere.
`x2vlm-export`, `x2vlm-convert`, the trainer's `run.export_on_finish` (and fine-tuning)
write it with `write_model_folder`; `x2vlm-eval`, `x2vlm-predict`, the inference API (and
fine-tuning) read it with `load_model_folder`; `model.init_from` reads its weights with
`read_folder_weights`.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shutil
from importlib import metadata
from pathlib import Path

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from data_pipeline.config import ConfigError, read_yaml_file
from training.model import X2VLM, create_model
from training.model.model_config import ModelConfig, model_config_from_dict

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "model.yaml"
TOKENIZER_DIR = "tokenizer"
CARD_FILE = "card.json"
README_FILE = "README.md"
FORMAT = "x2vlm-model-folder"
FORMAT_VERSION = 1
# The MLM decoder shares its matrix with the word embeddings; named_parameters() lists it once.
TIED_PARAMETERS = ("mlm_head.decoder.weight",)


class ModelFolderError(ValueError):
    """A folder that cannot be written or read as a model folder; the message names the path."""


def project_version() -> str:
    try:
        return metadata.version("x2vlm-pretrain")
    except metadata.PackageNotFoundError:  # running from a checkout that was never installed
        return "unknown"


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# The types of the card's fields, checked on reading: a mistyped card is refused in one line.
_CARD_TYPES = {"steps": (int, "a whole number"), "data": (dict, "an object"), "metrics": (dict, "an object"),
               "project_version": (str, "a string"), "created": (str, "a string"), "model": (dict, "an object"),
               "training": (dict, "an object"), "figures": (list, "a list")}


@dataclasses.dataclass
class ModelCard:
    # Where the weights came from: {"kind": "checkpoint" | "training run" | "official checkpoint" |
    # ..., "path": ..., and whatever else identifies it}.
    source: dict
    steps: int | None = None  # optimizer steps of this project's training, where known
    data: dict | None = None  # the corpora and text settings it was trained on (`data_summary`)
    metrics: dict | None = None  # held-out metrics of these weights, where known
    project_version: str = dataclasses.field(default_factory=project_version)
    created: str = dataclasses.field(default_factory=_now)
    # For readers (card_contents.py): the model as built, how it was trained (run config, world
    # size, global batch, optimisation, commit), the metrics under plain names with chance.
    # `write_model_folder` fills `model` and `figures`; the writer of the weights gives `training`.
    model: dict | None = None
    training: dict | None = None
    figures: list | None = None

    def to_json(self) -> dict:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, data, where: str) -> "ModelCard":
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ModelFolderError(f"{where}: not a model card (no \"format\": \"{FORMAT}\")")
        if data.get("format_version") != FORMAT_VERSION:
            raise ModelFolderError(f"{where}: format_version {data.get('format_version')!r}; this version of the "
                                   f"project reads {FORMAT_VERSION}")
        fields = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(data.get("source"), dict):
            raise ModelFolderError(f"{where}: 'source' must be an object")
        for name, (kind, described) in _CARD_TYPES.items():
            value = data.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, kind)):
                raise ModelFolderError(f"{where}: '{name}' must be {described} or null, got {type(value).__name__}")
        metrics = data.get("metrics") or {}
        bad = [key for key, value in metrics.items() if isinstance(value, bool) or not isinstance(value, (int, float))]
        if bad:
            raise ModelFolderError(f"{where}: metrics.{bad[0]}: must be a number")
        return cls(**{k: v for k, v in data.items() if k in fields})

    def readme(self) -> str:
        from training.folders.card_contents import USAGE, counts, figures_table

        source = {k: v for k, v in self.source.items() if k not in ("metrics_before", "model_source")}
        lines = ["# X²-VLM model", "",
                 f"Weights of an X²-VLM model (`{WEIGHTS_FILE}`, fp32), its config (`{CONFIG_FILE}`) and its "
                 f"tokenizer (`{TOKENIZER_DIR}/`); `{CARD_FILE}` holds this card for programs.", "",
                 "## What it is", ""]
        if self.model:
            lines.append(self.model["summary"] + ".")
            lines.append("")
        lines += ["## How it was trained", "",
                  "- Source: " + ", ".join(f"{k}: {v}" for k, v in source.items()),
                  f"- Training steps: {self.steps if self.steps is not None else 'unknown'}"]
        if self.training:
            t = self.training
            batch = ", ".join(f"{name} {n}" for name, n in t["global_batch"].items())
            lines += [f"- World size {t['world_size']} (x grad_accum {t['grad_accum']}); samples per optimizer step "
                      f"when a corpus is drawn: {batch}",
                      f"- Learning rate {t['lr']} ({t['schedule']} schedule, {t['warmup_steps']} warm-up steps), "
                      f"precision {t['precision']}",
                      f"- Project version {self.project_version}, commit {t['commit'] or 'unknown'}; the run config as "
                      f"written is `training.run_config` in `{CARD_FILE}`"]
        if self.data:
            corpora = ", ".join(f"{c.get('name')} ({c.get('kind')})" for c in self.data.get("corpora", []))
            lines.append(f"- Data: {corpora or 'unknown'}")
        written_by = "x2vlm-finetune" if source.get("kind") == "fine-tuning" else "x2vlm-pretrain"
        lines.append(f"- Written by {written_by} {self.project_version} on {self.created}")
        lines += ["", "## Held-out figures", ""]
        if self.figures:
            before = self.source.get("metrics_before") or {}
            if before:
                lines.append("Before fine-tuning: " + ", ".join(f"{k} {v:.4f}" for k, v in before.items()) + ".")
                lines.append("")
            lines += figures_table(self.figures)
            sizes = counts(self.metrics)
            if sizes:
                lines += ["", "Sets and evaluation time: " + ", ".join(
                    f"{k} {v:.1f} s" if k.endswith("eval_s") else f"{k} {v}" for k, v in sizes.items())]
        else:
            lines.append("None recorded.")
        lines += ["", "## How to use it", "", "```bash", *(u.replace("FOLDER", "THIS_FOLDER") for u in USAGE), "```", ""]
        return "\n".join(lines)


@dataclasses.dataclass
class ModelFolder:
    path: Path
    model: X2VLM  # on the CPU, fp32, in eval mode
    tokenizer: Path  # the folder's tokenizer/ (a directory for AutoTokenizer / the data spec)
    card: ModelCard
    config: ModelConfig


def data_summary(spec) -> dict:
    """What a card says of a data spec (data_pipeline.spec.DataSpec): its corpora (shard paths
    are left out: they name places on the machine that trained) and the text settings
    inference should use."""
    return {"corpora": [{"name": c.name, "kind": c.kind, "weight": c.weight} for c in spec.corpora],
            "image_res": spec.image_res,
            "text": {"max_tokens": spec.text.max_tokens, "max_words": spec.text.max_words}}


def folder_model_config(config: ModelConfig | dict) -> dict:
    """The config written to model.yaml: validated and complete, without paths to files
    outside the folder (its weights replace the pre-trained towers and `init_from`)."""
    if isinstance(config, dict):
        config = model_config_from_dict(config, "model")
    data = dataclasses.asdict(config)
    data["vision"]["pretrained"] = None
    data["text"]["pretrained"] = None
    data["init_from"] = None
    return data


def parameter_shapes(config: ModelConfig) -> dict[str, torch.Size]:
    """The model's parameters (each once) and their shapes, without building its weights."""
    with torch.device("meta"):  # names and shapes only: no memory, no initialisation
        model = X2VLM(config)
    return {name: p.shape for name, p in model.named_parameters()}


def check_weights(weights: dict[str, torch.Tensor], config: ModelConfig, where: str) -> None:
    """The weights hold exactly the model's parameters, each of its shape."""
    shapes = parameter_shapes(config)
    missing = sorted(set(shapes) - set(weights))
    unexpected = sorted(set(weights) - set(shapes) - set(TIED_PARAMETERS))
    if missing or unexpected:
        raise ModelFolderError(f"{where}: the weights do not fit the model config: missing {missing[:5]}"
                               f"{' ...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                               f"{' ...' if len(unexpected) > 5 else ''}")
    for name, shape in shapes.items():
        if weights[name].shape != shape:
            raise ModelFolderError(f"{where}: {name}: shape {tuple(weights[name].shape)} in the weights, "
                                   f"{tuple(shape)} in the model")


def _check_tokenizer(directory: Path, vocab_size: int, where: str) -> None:
    from data_pipeline.text.encoder import load_tokenizer

    try:
        tokens = len(load_tokenizer(str(directory)))
    except ConfigError as error:
        raise ModelFolderError(f"{where}: {str(error).removeprefix('text.tokenizer: ')}") from None
    except (OSError, ValueError) as error:
        raise ModelFolderError(f"{where}: not a tokenizer folder AutoTokenizer can read ({error})") from None
    if tokens > vocab_size:
        raise ModelFolderError(f"{where}: the tokenizer has {tokens} tokens but the model's text.vocab_size is "
                               f"{vocab_size}; its ids would not fit the embeddings")


def _copy_tokenizer(source: Path, target: Path) -> None:
    """The tokenizer folder's files (symbolic links, as in the Hugging Face cache, copied as
    the files they point to); subfolders are no part of a tokenizer."""
    target.mkdir()
    copied = 0
    for entry in sorted(source.iterdir()):
        if entry.is_file():
            shutil.copyfile(entry, target / entry.name)
            copied += 1
    if not copied:
        raise ModelFolderError(f"tokenizer {source}: the folder holds no files")


def _as_umask_allows(path: Path) -> None:
    """PATH readable as the process's umask allows, like the folder's other files (0644 under the
    usual 022): safetensors writes through a temporary file of mode 0600."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _replace_folder(tmp: Path, out: Path) -> None:
    """TMP becomes OUT; an OUT already there (a model folder written before) goes."""
    old = out.with_name(f".{out.name}.old.{os.getpid()}")
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def write_model_folder(out: str | Path, weights: dict[str, torch.Tensor], model_config: ModelConfig | dict,
                       tokenizer: str | Path, card: ModelCard) -> Path:
    """Writes the model folder OUT: WEIGHTS (name -> tensor, each parameter of the model once;
    a tied MLM decoder copy is dropped), MODEL_CONFIG, a copy of the TOKENIZER folder and
    CARD. The folder is built beside OUT and moved into place whole; an OUT that exists must
    be empty or a model folder, which is replaced."""
    out = Path(out)
    config = model_config_from_dict(folder_model_config(model_config), "model")
    tokenizer = Path(tokenizer)
    if not tokenizer.is_dir():
        raise ModelFolderError(f"tokenizer {tokenizer}: not a directory (a tokenizer saved with save_pretrained)")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / WEIGHTS_FILE).exists())):
        raise ModelFolderError(f"{out}: exists and is not a model folder; choose another output folder")
    weights = {name: tensor.detach().to("cpu", torch.float32).contiguous()
               for name, tensor in weights.items() if name not in TIED_PARAMETERS}
    check_weights(weights, config, str(out))
    _check_tokenizer(tokenizer, config.text.vocab_size, f"tokenizer {tokenizer}")
    from training.folders.card_contents import architecture, figures

    card = dataclasses.replace(card, model=architecture(config, sum(t.numel() for t in weights.values())),
                               figures=figures(card.metrics))

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_file(weights, str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT})
        _as_umask_allows(tmp / WEIGHTS_FILE)
        (tmp / CONFIG_FILE).write_text(yaml.safe_dump(folder_model_config(config), sort_keys=False), encoding="utf-8")
        _copy_tokenizer(tokenizer, tmp / TOKENIZER_DIR)
        (tmp / CARD_FILE).write_text(json.dumps(card.to_json(), indent=2) + "\n", encoding="utf-8")
        (tmp / README_FILE).write_text(card.readme(), encoding="utf-8")
        _replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _inside(path: Path, root: Path) -> Path:
    """PATH resolved, refused when a link takes it outside ROOT."""
    resolved = path.resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise ModelFolderError(f"{path}: leads outside the model folder (to {resolved})")
    return resolved


def read_folder_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The weights of a model folder, by parameter name (for `model.init_from`); reads any
    folder with a model.safetensors, also one written before tokenizer/ and card.json existed."""
    path = Path(path)
    weights = _inside(path / WEIGHTS_FILE, path)
    if not weights.is_file():
        raise ModelFolderError(f"{path}: not a model folder (no {WEIGHTS_FILE})")
    try:
        return load_file(str(weights))
    except (SafetensorError, OSError) as error:
        raise ModelFolderError(f"{weights}: unreadable safetensors file ({error})") from None


def load_model_folder(path: str | Path) -> ModelFolder:
    """The model of a model folder on the CPU in fp32 (eval mode), its tokenizer folder and card."""
    path = Path(path)
    if not path.is_dir():
        raise ModelFolderError(f"{path}: not a directory (a model folder written by x2vlm-export or x2vlm-convert)")
    present = {name: (path / name).exists() for name in (WEIGHTS_FILE, CONFIG_FILE, TOKENIZER_DIR, CARD_FILE)}
    if present[WEIGHTS_FILE] and present[CONFIG_FILE] and not (present[TOKENIZER_DIR] and present[CARD_FILE]):
        raise ModelFolderError(
            f"{path}: an export of an earlier version ({WEIGHTS_FILE} and {CONFIG_FILE}, but no {TOKENIZER_DIR}/ "
            f"or {CARD_FILE}); write it again: `x2vlm-export CHECKPOINT --out {path}` (or `x2vlm-convert "
            f"OFFICIAL.th --model-config ... --tokenizer DIR --out {path}`)")
    missing = [name for name, there in present.items() if not there]
    if missing:
        # A training checkpoint (training/engine/checkpoint.py: step_NNNNNNNN/ with a COMPLETE
        # marker) or a run's output folder (its checkpoints/ beside metrics.jsonl) is a common mix-up.
        if (path / "COMPLETE").is_file():
            raise ModelFolderError(f"{path}: a training checkpoint, not a model folder; write one with "
                                   f"`x2vlm-export {path} --out MODEL_FOLDER`")
        if (path / "checkpoints").is_dir():
            raise ModelFolderError(f"{path}: a training run's folder, not a model folder; its export is "
                                   f"{path / 'export'} when the run ended with export_on_finish, or write one with "
                                   f"`x2vlm-export {path / 'checkpoints' / 'step_NNNNNNNN'} --out MODEL_FOLDER`")
        raise ModelFolderError(f"{path}: not a model folder, missing {', '.join(missing)}")
    try:
        card = ModelCard.from_json(json.loads(_inside(path / CARD_FILE, path).read_text(encoding="utf-8")),
                                   str(path / CARD_FILE))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelFolderError(f"{path / CARD_FILE}: not valid JSON ({error})") from None
    try:
        config = model_config_from_dict(read_yaml_file(_inside(path / CONFIG_FILE, path), "model config"))
    except ConfigError as error:
        raise ModelFolderError(f"{path / CONFIG_FILE}: {error}") from None
    tokenizer = _inside(path / TOKENIZER_DIR, path)
    if not tokenizer.is_dir():
        raise ModelFolderError(f"{path / TOKENIZER_DIR}: not a directory")
    for file in tokenizer.rglob("*"):  # the tokenizer reads every file of its folder it knows
        _inside(file, path)
    weights = read_folder_weights(path)
    check_weights(weights, config, str(path / WEIGHTS_FILE))
    model = create_model(config, load_pretrained=False)
    model.load_state_dict(weights, strict=False)  # the buffers are the model's own; the decoder is tied
    return ModelFolder(path, model.eval(), tokenizer, card, config)
