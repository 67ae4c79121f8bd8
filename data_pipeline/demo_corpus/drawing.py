"""Renders scenes to JPEG images and H.264 MP4 videos."""
from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np
from PIL import Image, ImageDraw

from .scenes import COLOURS, ImageScene, Shape, VideoScene, polygon

JPEG_QUALITY = 92


def draw_shape(draw: ImageDraw.ImageDraw, shape: Shape, x: int, y: int) -> None:
    fill = COLOURS[shape.colour]
    vertices = polygon(shape.kind, x, y, shape.side)
    if vertices is None:
        draw.ellipse([x, y, x + shape.side - 1, y + shape.side - 1], fill=fill)
    else:
        draw.polygon(vertices, fill=fill)


def render_image(scene: ImageScene) -> Image.Image:
    image = Image.new("RGB", (scene.width, scene.height), scene.background)
    draw = ImageDraw.Draw(image)
    for shape in scene.shapes:
        draw_shape(draw, shape, shape.x, shape.y)
    return image


def encode_jpeg(image: Image.Image, quality: int = JPEG_QUALITY) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def render_video_frames(scene: VideoScene) -> list[np.ndarray]:
    frames = []
    for x, y in scene.path:
        frame = Image.new("RGB", (scene.width, scene.height), scene.background)
        draw_shape(ImageDraw.Draw(frame), scene.shape, x, y)
        frames.append(np.asarray(frame))
    return frames


def encode_mp4(frames: list[np.ndarray], fps: int) -> bytes:
    """H.264 in MP4, single-threaded so that the bytes depend on the frames alone."""
    buffer = io.BytesIO()
    height, width = frames[0].shape[:2]
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps, 1))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.thread_count = 1
        stream.options = {"crf": "18", "preset": "veryfast"}
        for array in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()
