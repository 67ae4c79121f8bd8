"""Image checks and the optional downscale. An image passes through byte for byte unless it
is larger than --max-image-side; then it is re-encoded in its own format."""
from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from .records import MediaError

# Stored formats and their member extension; anything else is rejected, since the loader
# decodes only these.
MEMBER_EXTENSION = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}


@dataclass
class StoredImage:
    data: bytes
    extension: str
    width: int
    height: int


def _open(data: bytes) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        # Pillow's own message names a buffer address, which would make rejected.jsonl differ run to run.
        raise MediaError("cannot decode image: not a recognisable image file") from None
    except Exception as error:  # Pillow signals bad data with OSError, SyntaxError, ValueError, ...
        raise MediaError(f"cannot decode image: {type(error).__name__}: {error}") from None
    if image.format not in MEMBER_EXTENSION:
        raise MediaError(f"unsupported image format {image.format} (jpeg, png and webp are stored)")
    return image


def _load(image: Image.Image) -> None:
    """Decodes every pixel: a truncated or corrupt stream fails here, not in the loader."""
    try:
        image.load()
    except Exception as error:
        raise MediaError(f"cannot decode image: {type(error).__name__}: {error}") from None


def fitted_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """Size with the longer side equal to `max_side`, aspect ratio kept to the nearest pixel."""
    if width >= height:
        return max_side, max(1, round(height * max_side / width))
    return max(1, round(width * max_side / height)), max_side


def store_image(data: bytes, max_side: int | None, jpeg_quality: int) -> tuple[StoredImage, tuple[int, int]]:
    """(the image as it goes into the shard, the original (width, height)); `MediaError` when unusable."""
    image = _open(data)
    fmt, original = image.format, image.size
    if max_side is None or max(original) <= max_side:
        _load(image)
        return StoredImage(data, MEMBER_EXTENSION[fmt], *original), original
    size = fitted_size(*original, max_side)
    if fmt == "JPEG":
        # The decoder scales down by a power of two, to no less than `size`, while it
        # decodes: far cheaper than a full-size decode before the resize.
        image.draft(image.mode, size)
    _load(image)
    resized = image.resize(size, Image.Resampling.LANCZOS)
    return StoredImage(_encode(resized, fmt, jpeg_quality, image.info), MEMBER_EXTENSION[fmt], *size), original


def _encode(image: Image.Image, fmt: str, jpeg_quality: int, info: dict) -> bytes:
    buffer = io.BytesIO()
    if fmt == "JPEG":
        if image.mode not in ("L", "RGB", "CMYK"):
            image = image.convert("RGB")
        image.save(buffer, "JPEG", quality=jpeg_quality, icc_profile=info.get("icc_profile"))
    elif fmt == "WEBP":
        if image.mode not in ("RGB", "RGBA"):
            image = image.convert("RGBA" if "A" in image.mode else "RGB")
        image.save(buffer, "WEBP", quality=jpeg_quality)
    else:
        image.save(buffer, "PNG")
    return buffer.getvalue()
