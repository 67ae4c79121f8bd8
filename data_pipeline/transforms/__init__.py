"""Per-sample transforms: raw shard sample + a per-sample RNG -> model inputs; each kind's
transform beside the dataclass of its corpus options."""
from .image_text import ImageTextOptions, ImageTextTransform
from .region import RegionOptions, RegionTransform
from .video_text import VideoTextOptions, VideoTextTransform

__all__ = ["ImageTextOptions", "ImageTextTransform", "RegionOptions", "RegionTransform", "VideoTextOptions",
           "VideoTextTransform"]
