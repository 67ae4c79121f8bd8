"""Image decoding with pillow-simd, crop and resize in one pass.

For JPEG the decoder is asked for a down-scaled image (draft mode: libjpeg's DCT scaling
by 1/2, 1/4 or 1/8) whenever the crop would still cover the output size at that scale,
which skips most of the decoding work for large images and small model inputs. And only
the crop's rectangle (plus the resampling filter's reach) is decoded, by the small
libjpeg-turbo binding in `_jpeg_region.c`: rows below it are not read and the inverse DCT
runs only inside it. The pixels are exactly those of Pillow's whole-image decode, so the
result does not depend on which path ran; other formats, CMYK JPEGs and builds without
the binding take Pillow's path.
"""
from __future__ import annotations

import io
import math
import warnings

import numpy as np
from PIL import Image

from ..skips import BadSample

try:
    from . import _jpeg_region
except ImportError:  # built without the extension (no libjpeg headers): Pillow decodes
    _jpeg_region = None

# The largest image accepted; above it a file is more likely an attack or a mistake.
MAX_PIXELS = 12000 * 12000


class EncodedImage:
    """An image whose size is known and whose pixels have not been decoded. For JPEG the
    size comes from its frame header, read here (Pillow's open parses every marker,
    which costs a tenth of a millisecond per sample); Pillow opens it only when needed."""

    def __init__(self, data: bytes, header: Image.Image | None = None,
                 jpeg_frame: tuple[int, int, int] | None = None):
        self.data = data
        self._header = header
        if jpeg_frame is not None:
            width, height, self.components = jpeg_frame
            self.size, self.format = (width, height), "JPEG"
        else:
            self.size, self.format, self.components = header.size, header.format, len(header.getbands())

    @property
    def header(self) -> Image.Image:
        if self._header is None:
            self._header = Image.open(io.BytesIO(self.data))
        return self._header

    @property
    def width(self) -> int:
        return self.size[0]

    @property
    def height(self) -> int:
        return self.size[1]


# Start-of-frame markers: baseline, extended, progressive, lossless, and their arithmetic-
# coded forms (0xC4 DHT, 0xC8 JPG and 0xCC DAC are not frames).
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def jpeg_frame(data: bytes) -> tuple[int, int, int]:
    """(width, height, components) from a JPEG's start-of-frame segment."""
    pos, end = 2, len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            raise ValueError(f"no JPEG marker at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            pos += 2
            continue
        if marker in _SOF:
            if pos + 10 > end:
                break
            height = int.from_bytes(data[pos + 5:pos + 7], "big")
            width = int.from_bytes(data[pos + 7:pos + 9], "big")
            return width, height, data[pos + 9]
        if marker in (0xD9, 0xDA):  # end of image, or scan data before any frame header
            break
        pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
    raise ValueError("JPEG without a frame header")


def open_image(data: bytes) -> EncodedImage:
    """Reads the header only; pixels are decoded by `crop_resize`."""
    try:
        if data[:3] == b"\xff\xd8\xff":
            image = EncodedImage(data, jpeg_frame=jpeg_frame(data))
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = EncodedImage(data, header=Image.open(io.BytesIO(data)))
    except Image.UnidentifiedImageError:  # its message names the BytesIO object, not the file
        raise BadSample("image_decode", "not in an image format Pillow reads") from None
    except Exception as exn:  # PIL raises many types for a broken file
        raise BadSample("image_decode", f"{type(exn).__name__}: {exn}") from None
    if image.width * image.height > MAX_PIXELS or image.width < 1 or image.height < 1:
        raise BadSample("image_size", f"{image.width}x{image.height}")
    return image


def draft_scale(image_size: tuple[int, int], crop_size: tuple[float, float], size: tuple[int, int]) -> int:
    """The DCT down-scaling (1, 2, 4 or 8) Pillow's draft mode picks for a crop of
    `crop_size` to be resized to `size`: the largest at which the crop keeps >= size pixels."""
    (width, height), (w, h) = image_size, crop_size
    wanted = (math.ceil(width * size[0] / w), math.ceil(height * size[1] / h))
    if wanted[0] >= width or wanted[1] >= height:
        return 1
    most = min(width // wanted[0], height // wanted[1])
    return next(scale for scale in (8, 4, 2, 1) if scale <= most)


def crop_resize(image: EncodedImage, box: tuple[float, float, float, float], size: tuple[int, int],
                region_decode: bool = True) -> Image.Image:
    """Decodes `image` (from `open_image`), crops `box` (x, y, w, h in its pixels) and
    resizes the crop to `size` with bicubic filtering, to an RGB or RGBX image (whose X
    band is padding: `to_uint8_pixels` and RandAugment take either). `region_decode=False`
    forces Pillow's whole-image decode (the reference the region decoder is tested against)."""
    width, height = image.size
    x, y, w, h = box
    is_jpeg = image.format == "JPEG"
    scale = draft_scale(image.size, (w, h), size) if is_jpeg else 1
    if is_jpeg and region_decode and _jpeg_region is not None and image.components in (1, 3):
        return _region_crop_resize(image.data, image.size, box, size, scale)
    try:
        header = image.header
        if scale > 1:
            header.draft("RGB", (width // scale, height // scale))  # Pillow then picks `scale`
        header.load()
        rgb = header if header.mode == "RGB" else header.convert("RGB")
    except Exception as exn:
        raise BadSample("image_decode", f"{type(exn).__name__}: {exn}") from None
    sx, sy = rgb.width / width, rgb.height / height
    return rgb.resize(size, Image.BICUBIC, box=(x * sx, y * sy, (x + w) * sx, (y + h) * sy))


def _region_crop_resize(data: bytes, image_size: tuple[int, int], box: tuple[float, float, float, float],
                        size: tuple[int, int], scale: int) -> Image.Image:
    width, height = image_size
    x, y, w, h = box
    # libjpeg's scaled size, as Pillow's draft mode gets it
    scaled_w, scaled_h = math.ceil(width / scale), math.ceil(height / scale)
    sx, sy = scaled_w / width, scaled_h / height
    left, top, right, bottom = x * sx, y * sy, (x + w) * sx, (y + h) * sy
    # Bicubic resampling reads up to 2 source pixels per output pixel beyond the box edge.
    reach_x = math.ceil(2 * max(1.0, (right - left) / size[0])) + 1
    reach_y = math.ceil(2 * max(1.0, (bottom - top) / size[1])) + 1
    x0, y0 = max(0, math.floor(left) - reach_x), max(0, math.floor(top) - reach_y)
    x1, y1 = min(scaled_w, math.ceil(right) + reach_x), min(scaled_h, math.ceil(bottom) + reach_y)
    try:
        pixels, ox, oy, ow, oh = _jpeg_region.decode_region(
            data, x0 * scale, y0 * scale, (x1 - x0) * scale, (y1 - y0) * scale, scale)
    except _jpeg_region.UnsupportedColour:
        return crop_resize(open_image(data), box, size, region_decode=False)
    except Exception as exn:
        raise BadSample("image_decode", f"{type(exn).__name__}: {exn}") from None
    rgbx = Image.frombuffer("RGBX", (ow, oh), pixels, "raw", "RGBX", 0, 1)  # shares `pixels`
    # Stays RGBX (Pillow stores RGB in 4 bytes per pixel as well): converting would copy
    # every pixel once more, for nothing the later steps need.
    return rgbx.resize(size, Image.BICUBIC, box=(left - ox, top - oy, right - ox, bottom - oy))


def to_uint8_pixels(image: Image.Image) -> np.ndarray:
    """RGB(X) image -> read-only uint8 (H, W, 3) pixels. The training transforms hand these
    to the collate, which makes one tensor per batch: a few torch calls per sample cost
    more than the packing itself once the decoding has evicted torch from the caches."""
    if image.mode not in ("RGB", "RGBX"):
        image = image.convert("RGB")
    # Pillow packs RGB and RGBX alike into 3 bytes per pixel.
    return np.frombuffer(image.tobytes("raw", "RGB"), dtype=np.uint8).reshape(image.height, image.width, 3)
