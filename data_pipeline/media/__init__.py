"""Decoding media: images (pillow-simd, the libjpeg-turbo region decoder) and videos (decord)."""
