"""The built-in data kinds: image-text pairs, region texts with boxes, and video-text pairs."""
from __future__ import annotations

from ..transforms import (ImageTextOptions, ImageTextTransform, RegionOptions, RegionTransform, VideoTextOptions,
                          VideoTextTransform)
from . import DataKind, register_kind
from .collate import (collate_image_text, collate_image_text_eval, collate_region, collate_region_eval,
                      collate_video_text, collate_video_text_eval)

RETRIEVAL_HEADLINE = ("img_r1", "txt_r1", "r_mean")

register_kind(DataKind(
    name="image_text", batch="image", vision="image", options=ImageTextOptions,
    transform=ImageTextTransform.for_spec, collate=collate_image_text, eval_collate=collate_image_text_eval,
    evaluation="retrieval", headline=RETRIEVAL_HEADLINE))

# A region sample is an image with up to `max_regions` texts, each with its box.
register_kind(DataKind(
    name="region", batch="region", vision="regions", options=RegionOptions,
    transform=RegionTransform.for_spec, collate=collate_region, eval_collate=collate_region_eval,
    evaluation="grounding", headline=("grounding_acc",), texts_per_sample=lambda options: options.max_regions))

register_kind(DataKind(
    name="video_text", batch="video", vision="video", options=VideoTextOptions,
    transform=VideoTextTransform.for_spec, collate=collate_video_text, eval_collate=collate_video_text_eval,
    evaluation="retrieval", headline=RETRIEVAL_HEADLINE))
