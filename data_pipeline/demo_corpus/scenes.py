"""Random scenes of coloured shapes and the texts that describe them.

A scene is pure data (sizes, shapes, boxes, captions); drawing it is `drawing.py`'s job.
Everything here is a function of the `random.Random` it is given, so a corpus is a
function of its seed.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (240, 210, 20),
    "purple": (140, 50, 180),
    "orange": (245, 130, 20),
}
SHAPES = ("circle", "square", "triangle", "diamond", "star")
DIRECTIONS = ("up", "down", "left", "right")
COUNT_WORDS = {2: "two", 3: "three", 4: "four"}
# A shape whose box side is below this fraction of the image's shorter side is "small".
SMALL_FRACTION = 0.3


@dataclass
class Shape:
    colour: str
    kind: str
    size_word: str
    # Drawing geometry: the square (x, y, side) the shape is inscribed in.
    x: int
    y: int
    side: int
    # Tight pixel box of the drawn shape, [x, y, w, h] in absolute pixels.
    box: list[int] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.colour} {self.kind}"


@dataclass
class ImageScene:
    width: int
    height: int
    background: tuple[int, int, int]
    shapes: list[Shape]
    layout: str  # "single", "pair" (side by side, left/right captions) or "group"
    captions: list[str] = field(default_factory=list)
    phrases: list[str] = field(default_factory=list)  # one region phrase per shape


@dataclass
class VideoScene:
    width: int
    height: int
    frames: int
    fps: int
    background: tuple[int, int, int]
    shape: Shape
    direction: str
    # Top-left corner of the shape's square in each frame.
    path: list[tuple[int, int]]
    captions: list[str] = field(default_factory=list)


def polygon(kind: str, x: int, y: int, side: int) -> list[tuple[int, int]] | None:
    """Integer vertices of a polygonal shape inscribed in the square; None for a circle."""
    s = side - 1
    if kind == "circle":
        return None
    if kind == "square":
        return [(x, y), (x + s, y), (x + s, y + s), (x, y + s)]
    if kind == "triangle":
        return [(x + s // 2, y), (x + s, y + s), (x, y + s)]
    if kind == "diamond":
        return [(x + s // 2, y), (x + s, y + s // 2), (x + s // 2, y + s), (x, y + s // 2)]
    if kind == "star":
        cx, cy, outer = x + s / 2, y + s / 2, s / 2
        points = []
        for i in range(10):
            radius = outer if i % 2 == 0 else outer * 0.45
            angle = -math.pi / 2 + i * math.pi / 5
            points.append((round(cx + radius * math.cos(angle)), round(cy + radius * math.sin(angle))))
        return points
    raise ValueError(f"unknown shape kind {kind!r}")


def tight_box(kind: str, x: int, y: int, side: int) -> list[int]:
    vertices = polygon(kind, x, y, side)
    if vertices is None:
        return [x, y, side, side]
    xs = [p[0] for p in vertices]
    ys = [p[1] for p in vertices]
    return [min(xs), min(ys), max(xs) - min(xs) + 1, max(ys) - min(ys) + 1]


def _background(rng: random.Random) -> tuple[int, int, int]:
    level = rng.randint(185, 235)
    return (level, level, level)


def _make_shape(colour: str, kind: str, x: int, y: int, side: int, short_side: int) -> Shape:
    size_word = "small" if side < SMALL_FRACTION * short_side else "large"
    return Shape(colour, kind, size_word, x, y, side, tight_box(kind, x, y, side))


def _distinct_names(rng: random.Random, n: int) -> list[tuple[str, str]]:
    pairs = [(c, k) for c in COLOURS for k in SHAPES]
    return rng.sample(pairs, n)


def _overlaps(a: tuple[int, int, int], b: tuple[int, int, int], margin: int) -> bool:
    ax, ay, aside = a
    bx, by, bside = b
    return not (ax + aside + margin <= bx or bx + bside + margin <= ax or ay + aside + margin <= by or by + bside + margin <= ay)


def grid_cell(shape: Shape, width: int, height: int) -> tuple[str, str]:
    """(vertical, horizontal) cell of the shape's centre on a 3 x 3 grid: 'top' / '' / 'bottom',
    'left' / '' / 'right'."""
    bx, by, bw, bh = shape.box
    cx, cy = bx + bw / 2, by + bh / 2
    col = min(int(3 * cx / width), 2)
    row = min(int(3 * cy / height), 2)
    return ("top", "", "bottom")[row], ("left", "", "right")[col]


def position_phrase(shape: Shape, width: int, height: int) -> str:
    """Where the shape's centre lies on a 3 x 3 grid: 'at the top left', 'in the center', ..."""
    vertical, horizontal = grid_cell(shape, width, height)
    if horizontal and vertical:
        return f"at the {vertical} {horizontal}"
    if horizontal:
        return f"on the {horizontal}"
    if vertical:
        return f"at the {vertical}"
    return "in the center"


def _join(items: list[str]) -> str:
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _with_article(text: str) -> str:
    return f"{_article(text)} {text}"


def _image_captions(scene: ImageScene) -> list[str]:
    shapes = scene.shapes
    if scene.layout == "pair":
        left, right = sorted(shapes, key=lambda s: s.box[0])
        return [
            f"{_with_article(left.name)} to the left of {_with_article(right.name)}",
            f"{_with_article(right.name)} to the right of {_with_article(left.name)}",
            f"two shapes side by side, {_with_article(left.size_word + ' ' + left.name)} "
            f"and {_with_article(right.size_word + ' ' + right.name)}",
        ]
    if scene.layout == "single":
        shape = shapes[0]
        where = position_phrase(shape, scene.width, scene.height)
        return [
            f"{_with_article(shape.size_word + ' ' + shape.name)} {where}",
            f"a single {shape.name} on a gray background",
        ]
    left_to_right = sorted(shapes, key=lambda s: s.box[0] + s.box[2] / 2)
    by_size = sorted(shapes, key=lambda s: (-s.side, s.name))
    count = COUNT_WORDS[len(shapes)]
    return [
        f"from left to right, {_join([_with_article(s.name) for s in left_to_right])}",
        f"{count} shapes: {_join([_with_article(s.size_word + ' ' + s.name) for s in by_size])}",
    ]


def _phrase(shape: Shape, scene: ImageScene) -> str:
    return f"the {shape.size_word} {shape.name} {position_phrase(shape, scene.width, scene.height)}"


def random_image_scene(rng: random.Random, min_side: int = 128, max_side: int = 256, pair_fraction: float = 0.3) -> ImageScene:
    width = rng.randint(min_side, max_side)
    height = rng.randint(min_side, max_side)
    short = min(width, height)
    background = _background(rng)
    if rng.random() < pair_fraction:
        # Side by side: one shape in each half, so left/right is unambiguous.
        names = _distinct_names(rng, 2)
        half = width // 2
        shapes = []
        for i, (colour, kind) in enumerate(names):
            side = rng.randint(int(0.2 * short), max(int(0.2 * short), min(int(0.45 * short), half - 8)))
            x0 = (0 if i == 0 else half) + 4
            x = rng.randint(x0, x0 + half - 8 - side)
            y = rng.randint(4, height - 4 - side)
            shapes.append(_make_shape(colour, kind, x, y, side, short))
        layout = "pair"
    else:
        count = rng.choice((1, 1, 2, 3, 4))
        names = _distinct_names(rng, count)
        placed: list[tuple[int, int, int]] = []
        shapes = []
        for colour, kind in names:
            for _ in range(200):
                side = rng.randint(int(0.15 * short), int((0.5 if count == 1 else 0.4) * short))
                x = rng.randint(2, width - 2 - side)
                y = rng.randint(2, height - 2 - side)
                if not any(_overlaps((x, y, side), p, margin=4) for p in placed):
                    placed.append((x, y, side))
                    shapes.append(_make_shape(colour, kind, x, y, side, short))
                    break
        layout = "single" if len(shapes) == 1 else "group"
    scene = ImageScene(width, height, background, shapes, layout)
    scene.captions = _image_captions(scene)
    scene.phrases = [_phrase(s, scene) for s in shapes]
    return scene


MOTION_WORDS = {"up": "upward", "down": "downward", "left": "to the left", "right": "to the right"}


def random_video_scene(rng: random.Random, size: int = 128, fps: int = 8) -> VideoScene:
    frames = rng.randint(8, 16)
    colour, kind = _distinct_names(rng, 1)[0]
    side = rng.randint(int(0.18 * size), int(0.3 * size))
    direction = rng.choice(DIRECTIONS)
    lo, hi = 2, size - 2 - side
    across = rng.randint(lo, hi)
    start, end = (hi, lo) if direction in ("up", "left") else (lo, hi)
    path = []
    for f in range(frames):
        along = round(start + (end - start) * f / (frames - 1))
        path.append((along, across) if direction in ("left", "right") else (across, along))
    shape = _make_shape(colour, kind, path[0][0], path[0][1], side, size)
    scene = VideoScene(size, size, frames, fps, _background(rng), shape, direction, path)
    scene.captions = [
        f"{_with_article(shape.name)} moving {direction}",
        f"{_with_article(shape.size_word + ' ' + shape.name)} moves {MOTION_WORDS[direction]}",
    ]
    return scene
