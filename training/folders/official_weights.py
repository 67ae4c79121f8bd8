"""An official X²-VLM checkpoint (``.th``) in this model's parameter names: the mapping that
``x2vlm-convert`` (training/convert.py) and ``--init-from OFFICIAL.th`` (init_from.py) apply.

Official names (github zengyan-97/X2-VLM and zengyan-97/X-VLM, ``models/xvlm.py``) map as
follows; ``fs`` is ``text.fusion_start``:

- ``vision_encoder.*`` (X²-VLM's BEiT-v2, named as timm's BEiT) -> ``vision.trunk.*``
- X-VLM's Swin (Microsoft's layout, which merges patches at the end of a stage where timm merges
  at the start of the next): ``vision_encoder.layers.i.downsample.*`` ->
  ``vision.trunk.layers.(i + 1).downsample.*``; the rest keeps its name under ``vision.trunk.``
- ``text_encoder.bert.embeddings.*`` -> ``text.embeddings.*``
- ``text_encoder.bert.encoder.layer.i.*`` -> ``text.encoder.layer.i.*`` for i < fs, else
  ``fusion.layer.(i - fs).*``
- ``text_encoder.cls.predictions.{transform.*, bias}`` -> ``mlm_head.{transform.*, bias}``
  (the decoder is tied to the word embeddings)
- the separate-encoder layout (RoBERTa / XLM-R text): ``text_encoder.*`` -> ``text.*``,
  ``cross_encoder.encoder.layer.i.*`` -> ``fusion.layer.i.*``,
  ``mlm_head.predictions.*`` -> ``mlm_head.*``
- ``vision_proj``, ``text_proj``, ``itm_head``, ``bbox_head`` keep their names; ``temp`` ->
  ``temperature.temp``; ``absolute_frame_pos_embed`` -> ``video.frame_pos_embed``.

Buffers the official code saves (``relative_position_index``, ``position_ids``, Swin's
``attn_mask``) and the tied
decoder copies are dropped. The report lists official keys that found no place and model keys
the checkpoint did not provide.

Image-only checkpoints (the official 4M base and large ones) have no video parameters:
a checkpoint without ``absolute_frame_pos_embed`` is taken as image-only, and this model's
``video.*`` parameters are reported as not in the source architecture, left at their initial
values; ``--strict`` accepts that and refuses any other missing or unmatched key.

"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import torch

from training.model.checkpoint_files import read_state_dict

_DROPPED = re.compile(
    r"(relative_position_index$|position_ids$|attn_mask$|^text_encoder\.cls\.predictions\.decoder\.|"
    r"^mlm_head\.predictions\.decoder\.)"
)
_RENAMES = [
    (re.compile(r"^vision_encoder\."), "vision.trunk."),
    (re.compile(r"^text_encoder\.(bert|roberta)\.embeddings\."), "text.embeddings."),
    (re.compile(r"^text_encoder\.cls\.predictions\."), "mlm_head."),
    (re.compile(r"^mlm_head\.predictions\."), "mlm_head."),
    (re.compile(r"^cross_encoder\.encoder\.layer\."), "fusion.layer."),
    (re.compile(r"^text_encoder\.embeddings\."), "text.embeddings."),
    (re.compile(r"^temp$"), "temperature.temp"),
    (re.compile(r"^absolute_frame_pos_embed$"), "video.frame_pos_embed"),
    (re.compile(r"^(vision_proj|text_proj|itm_head|bbox_head)\."), r"\1."),
]
# Microsoft's Swin merges patches at the end of stage i (stage 0 has one), timm at the start of
# stage i + 1; the weights are the same (timm's merge concatenates the 2x2 neighbours in the
# same order).
_SWIN_OFFICIAL_MERGE = "vision_encoder.layers.0.downsample.reduction.weight"
_SWIN_DOWNSAMPLE = re.compile(r"^vision_encoder\.layers\.(\d+)\.downsample\.")
_TEXT_LAYER = re.compile(r"^text_encoder\.(?:(?:bert|roberta)\.)?encoder\.layer\.(\d+)\.(.*)$")
_VIDEO_PARAMETERS = re.compile(r"^video\.")  # what only a video-trained source has
_OFFICIAL_VIDEO_KEY = "absolute_frame_pos_embed"
_OFFICIAL_PREFIXES = ("vision_encoder.", "text_encoder.", "cross_encoder.")


@dataclasses.dataclass
class ConversionReport:
    converted: int
    dropped: list[str]  # official buffers and tied copies, not parameters of their own
    unmatched_official: list[str]  # official keys with no place in this model
    missing_in_checkpoint: list[str]  # model keys the checkpoint did not provide
    shape_mismatches: list[str]
    # model keys the source architecture never had (video, for an image-only checkpoint): expected
    not_in_source: list[str] = dataclasses.field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"converted {self.converted} tensors; dropped {len(self.dropped)} buffers / tied copies"]
        out += [f"{k}: not in the source architecture (image-only checkpoint), stays at its initial value"
                for k in self.not_in_source]
        for title, keys in (
            ("official keys with no place in this model", self.unmatched_official),
            ("model keys not in the checkpoint (left as initialised)", self.missing_in_checkpoint),
            ("shape mismatches (not loaded)", self.shape_mismatches),
        ):
            out.append(f"{title}: {len(keys)}")
            out += [f"  {k}" for k in keys]
        return out


def official_to_model_name(key: str, fusion_start: int) -> str | None:
    layer = _TEXT_LAYER.match(key)
    if layer:
        index, rest = int(layer.group(1)), layer.group(2)
        if index < fusion_start:
            return f"text.encoder.layer.{index}.{rest}"
        return f"fusion.layer.{index - fusion_start}.{rest}"
    for pattern, replacement in _RENAMES:
        if pattern.search(key):
            return pattern.sub(replacement, key, count=1)
    return None


def _timm_swin_key(key: str) -> str:
    return _SWIN_DOWNSAMPLE.sub(lambda m: f"vision_encoder.layers.{int(m.group(1)) + 1}.downsample.", key, count=1)


def convert_state_dict(official: dict, model: torch.nn.Module) -> tuple[dict, ConversionReport]:
    fusion_start = model.config.text.fusion_start
    target = model.state_dict()
    swin_merges_at_stage_end = _SWIN_OFFICIAL_MERGE in official
    converted, dropped, unmatched, mismatched = {}, [], [], []
    for key, value in official.items():
        if _DROPPED.search(key):
            dropped.append(key)
            continue
        name = official_to_model_name(_timm_swin_key(key) if swin_merges_at_stage_end else key, fusion_start)
        if name is None or name not in target:
            unmatched.append(key)
            continue
        if name == "temperature.temp" and value.dim() == 0:  # the official temperature is a 0-d tensor
            value = value.reshape(1)
        if name == "video.frame_pos_embed" and value.shape != target[name].shape:
            value = _fit_frames(value, target[name])
        if value.shape != target[name].shape:
            mismatched.append(f"{key} {tuple(value.shape)} -> {name} {tuple(target[name].shape)}")
            continue
        converted[name] = value
    tied = {"mlm_head.decoder.weight"}  # the word embedding matrix itself
    absent = sorted(k for k in target if k not in converted and k not in tied)
    image_only = _OFFICIAL_VIDEO_KEY not in official
    not_in_source = [k for k in absent if image_only and _VIDEO_PARAMETERS.search(k)]
    missing = [k for k in absent if k not in not_in_source]
    if "text.embeddings.word_embeddings.weight" in converted:
        converted["mlm_head.decoder.weight"] = converted["text.embeddings.word_embeddings.weight"]
    return converted, ConversionReport(len(converted), dropped, unmatched, missing, mismatched, not_in_source)


def _fit_frames(value: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Frame position embeddings for a different frame count: copy the common leading frames."""
    fitted = target.clone()
    frames = min(value.shape[1], target.shape[1])
    fitted[:, :frames] = value[:, :frames]
    return fitted


def is_official_state_dict(state: dict) -> bool:
    """Whether STATE is named as the official X²-VLM / X-VLM code names its parameters
    (``vision_encoder.*``, ``text_encoder.*``, ``cross_encoder.*``), not as this model does."""
    return any(key.startswith(_OFFICIAL_PREFIXES) for key in state)


def convert_checkpoint(official_path: str | Path, model: torch.nn.Module) -> ConversionReport:
    """Loads an official checkpoint into ``model`` in place."""
    converted, report = convert_state_dict(read_state_dict(official_path), model)
    model.load_state_dict(converted, strict=False)
    return report
