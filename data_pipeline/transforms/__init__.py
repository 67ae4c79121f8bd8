"""Per-sample transforms: raw shard sample + a per-sample RNG -> model inputs."""
from .image_text import ImageTextTransform
from .region import RegionTransform
from .video_text import VideoTextTransform

__all__ = ["ImageTextTransform", "RegionTransform", "VideoTextTransform"]
