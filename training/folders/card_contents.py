"""What a model card says for a reader without the code: the model as built, how it was
trained, its held-out figures under plain names with chance beside them, and every command that
takes the folder. model_folder.py writes these into card.json and renders them as README.md.

Nothing here names a place on the machine that wrote the card: absolute paths in a run config
are cut to their last component (`machine_free`).
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import torch

from training.model import X2VLM
from training.model.model_config import ModelConfig

# Held-out metric names (the part after the set's name) in plain words; `{noun}` is the set's
# medium (image or video). Counts and timings are kept apart (COUNTS).
PLAIN_NAMES = {
    **{f"img_r{k}": f"text->{{noun}} R@{k}" for k in (1, 5, 10)},
    **{f"txt_r{k}": f"{{noun}}->text R@{k}" for k in (1, 5, 10)},
    "img_r_mean": "text->{noun} mean recall", "txt_r_mean": "{noun}->text mean recall", "r_mean": "mean recall",
    "grounding_acc": "grounding accuracy (IoU >= 0.5)", "mean_iou": "grounding mean IoU",
    **{f"region_text/img_r{k}": f"region text->region R@{k}" for k in (1, 5)},
    **{f"region_text/txt_r{k}": f"region->region text R@{k}" for k in (1, 5)},
    "bleu4": "captioning BLEU-4", "cider": "captioning CIDEr-D",
}
COUNTS = ("images", "videos", "texts", "queries", "regions", "region_text/regions", "region_text/texts", "skipped",
          "eval_s", "captioned", "unusable")
# Every command that takes a model folder (README.md of the folder lists them).
USAGE = (
    "x2vlm-eval FOLDER --image-shards 'eval-{000000..000009}.tar'   # retrieval (and --region-shards, --video-shards)",
    "x2vlm-predict rank FOLDER IMAGE_DIR \"a red circle\"            # also score, ground, caption",
    "x2vlm-zero-shot FOLDER --images DIR                           # zero-shot classification",
    "x2vlm-finetune --task retrieval --config PRESET.yaml --model FOLDER   # or grounding, captioning",
    "x2vlm-pretrain --config RUN.yaml --set model.init_from=FOLDER          # continue pre-training",
    "python -c \"from training.inference import X2VLMPredictor; X2VLMPredictor('FOLDER')\"",
)


def _count_blocks(trunk) -> int | None:
    if hasattr(trunk, "blocks"):  # ViT, BEiT
        return len(trunk.blocks)
    if hasattr(trunk, "layers"):  # Swin: stages of blocks
        return sum(len(stage.blocks) for stage in trunk.layers)
    return None


def architecture(config: ModelConfig, parameters: int) -> dict:
    """The model as built from CONFIG (the vision tower's real patch grid, width and blocks, not
    its timm name's), with its PARAMETERS count."""
    with torch.device("meta"):  # structure only: no memory, no initialisation
        model = X2VLM(config)
    vision, text = model.vision, config.text
    blocks = _count_blocks(vision.trunk)
    grid = vision.grid_size
    described = {
        "parameters": parameters,
        "vision": {"timm_name": config.vision.name, "image_size": config.vision.image_size,
                   "patch_size": vision.patch_size, "patch_grid": f"{grid}x{grid}", "width": vision.width,
                   "blocks": blocks, "max_frames": config.vision.max_frames},
        "text": {"kind": text.kind, "text_layers": text.fusion_start, "fusion_layers": text.num_layers - text.fusion_start,
                 "width": text.hidden_size, "heads": text.num_heads, "vocab_size": text.vocab_size,
                 "max_positions": text.max_position_embeddings},
        "embed_dim": config.embed_dim,
    }
    described["summary"] = (
        f"X²-VLM, {parameters / 1e6:.1f}M parameters: a vision tower of {blocks} blocks (timm "
        f"{config.vision.name}, as configured: width {vision.width}) on {config.vision.image_size} px images cut into "
        f"a {grid} x {grid} grid of {vision.patch_size} px patches; a {text.kind} text tower of "
        f"{_many(text.fusion_start, 'layer')} and {_many(text.num_layers - text.fusion_start, 'fusion layer')} "
        f"(width {text.hidden_size}, "
        f"{text.vocab_size}-token vocabulary); {config.embed_dim}-d image-text embedding")
    return described


def _many(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def machine_free(value):
    """VALUE (nested dicts and lists) with every absolute path cut to its last component."""
    if isinstance(value, dict):
        return {key: machine_free(item) for key, item in value.items()}
    if isinstance(value, list):
        return [machine_free(item) for item in value]
    if isinstance(value, str) and os.path.isabs(value):
        return Path(value).name
    return value


def project_commit() -> str | None:
    """The git commit of the project's checkout, where it runs from one (None otherwise), with
    `-dirty` when tracked files differ from it."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        done = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    commit = done.stdout.strip() if done.returncode == 0 else ""
    if not commit:
        return None
    status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                            capture_output=True, text=True, timeout=10, check=False)
    return commit + ("-dirty" if status.returncode == 0 and status.stdout.strip() else "")


def training_summary(run_config: dict, global_batch: dict[str, int], world_size: int, grad_accum: int,
                     steps: int) -> dict:
    """How the weights were trained: the run config as written (machine paths cut), the world
    size, samples per optimizer step of each corpus (GLOBAL_BATCH), the optimisation settings."""
    optim = run_config.get("optim") or {}
    return {"steps": steps, "world_size": world_size, "grad_accum": grad_accum, "global_batch": dict(global_batch),
            "lr": optim.get("lr"), "schedule": optim.get("schedule"), "warmup_steps": optim.get("warmup_steps"),
            "precision": optim.get("precision"), "commit": project_commit(), "run_config": machine_free(run_config)}


def figures(metrics: dict | None) -> list[dict]:
    """The held-out METRICS as rows {set, name, key, value, chance}: plain names, rounded to 4
    decimals, chance (or the centre-box baseline) where it is known exactly; counts and timings
    are left out."""
    rows = []
    for key, value in (metrics or {}).items():
        held_out, _, metric = key.partition("/")
        if metric in COUNTS or metric.endswith("_chance") or metric == "centre_baseline_acc" or metric not in PLAIN_NAMES:
            continue
        noun = "video" if "video" in held_out else "image"
        rows.append({"set": held_out, "name": PLAIN_NAMES[metric].format(noun=noun), "key": key,
                     "value": round(float(value), 4), "chance": _chance(metrics, held_out, metric, noun)})
    sets = list(dict.fromkeys(row["set"] for row in rows))
    order = list(PLAIN_NAMES)
    return sorted(rows, key=lambda row: (sets.index(row["set"]), order.index(row["key"].partition("/")[2])))


def _chance(metrics: dict, held_out: str, metric: str, noun: str) -> dict | None:
    if metric.startswith("region_text/"):
        chance = metrics.get(f"{held_out}/{metric}_chance")
        return None if chance is None else {"what": "random ranking", "value": round(float(chance), 4)}
    if metric in ("bleu4", "cider") and f"{held_out}/constant_{metric}" in metrics:
        return {"what": "the set's most frequent caption for every image",
                "value": round(float(metrics[f"{held_out}/constant_{metric}"]), 4)}
    if metric == "grounding_acc" and f"{held_out}/centre_baseline_acc" in metrics:
        return {"what": "a centre box", "value": round(float(metrics[f"{held_out}/centre_baseline_acc"]), 4)}
    count = metrics.get(f"{held_out}/{noun}s")
    if metric.startswith("img_r") and metric[5:].isdigit() and count:
        return {"what": "random ranking", "value": round(min(1.0, int(metric[5:]) / count), 4)}
    return None


def counts(metrics: dict | None) -> dict:
    """The held-out sets' sizes (and evaluation time) among METRICS."""
    return {key: value for key, value in (metrics or {}).items() if key.partition("/")[2] in COUNTS}


def figures_table(rows: list[dict]) -> list[str]:
    lines = ["| held-out set | figure | value | chance or baseline |", "|---|---|---|---|"]
    for row in rows:
        chance = f"{row['chance']['value']:.4f} ({row['chance']['what']})" if row["chance"] else "-"
        lines.append(f"| {row['set']} | {row['name']} | {row['value']:.4f} | {chance} |")
    return lines


def captioning_trained(card) -> bool | None:
    """Whether the weights' own training ran the captioning loss (`losses.weights.image.lm` > 0
    in the run config the card keeps): False for a pre-training run without it, None where the
    card cannot say (no run config; fine-tuning, which starts from another folder's weights)."""
    training = getattr(card, "training", None) or {}
    config = training.get("run_config")
    if not isinstance(config, dict) or card.source.get("kind") == "fine-tuning":
        return None
    weights = ((config.get("model") or {}).get("losses") or {}).get("weights") or {}
    lm = (weights.get("image") or {}).get("lm", 0)
    return isinstance(lm, (int, float)) and lm > 0
