"""The demo's texts in Chinese: a fixed, hand-written table of the words and the sentence
templates, one for each English template of `scenes.py`.

Every text is a function of the scene alone (no randomness), so a scene's Chinese captions
are the same whichever language the corpus draws for it. Chinese has no articles and no
spaces; a shape is named colour + kind ("红色圆形"), a size comes before it with 的
("大的红色圆形"), a place is a location noun ("左上角") used after 在 as a predicate and before
那个 as a modifier. Left and right are the characters 左 and 右 wherever they occur, so a
flipped image's captions stay true when the loader swaps them (data_pipeline/transforms/flip.py).
"""
from __future__ import annotations

from .scenes import COUNT_WORDS, ImageScene, Shape, VideoScene, grid_cell

COLOURS = {"red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色", "purple": "紫色", "orange": "橙色"}
SHAPES = {"circle": "圆形", "square": "正方形", "triangle": "三角形", "diamond": "菱形", "star": "星形"}
SIZES = {"small": "小", "large": "大"}
COUNTS = {2: "两", 3: "三", 4: "四"}
# (vertical, horizontal) cell of the 3 x 3 grid -> location noun.
PLACES = {
    ("top", "left"): "左上角", ("top", ""): "上方", ("top", "right"): "右上角",
    ("", "left"): "左边", ("", ""): "中间", ("", "right"): "右边",
    ("bottom", "left"): "左下角", ("bottom", ""): "下方", ("bottom", "right"): "右下角",
}
DIRECTIONS = {"up": "向上", "down": "向下", "left": "向左", "right": "向右"}

assert set(COUNTS) == set(COUNT_WORDS)


def name(shape: Shape) -> str:
    return COLOURS[shape.colour] + SHAPES[shape.kind]


def sized_name(shape: Shape) -> str:
    return f"{SIZES[shape.size_word]}的{name(shape)}"


def place(shape: Shape, width: int, height: int) -> str:
    return PLACES[grid_cell(shape, width, height)]


def _join(items: list[str]) -> str:
    if len(items) == 1:
        return items[0]
    return "、".join(items[:-1]) + "和" + items[-1]


def image_captions(scene: ImageScene) -> list[str]:
    """The Chinese counterpart of each English caption of the scene, in the same order."""
    shapes = scene.shapes
    if scene.layout == "pair":
        left, right = sorted(shapes, key=lambda s: s.box[0])
        return [
            f"{name(left)}在{name(right)}的左边",
            f"{name(right)}在{name(left)}的右边",
            f"两个并排的形状，一个{sized_name(left)}和一个{sized_name(right)}",
        ]
    if scene.layout == "single":
        shape = shapes[0]
        return [
            f"一个{sized_name(shape)}在{place(shape, scene.width, scene.height)}",
            f"灰色背景上只有一个{name(shape)}",
        ]
    left_to_right = sorted(shapes, key=lambda s: s.box[0] + s.box[2] / 2)
    by_size = sorted(shapes, key=lambda s: (-s.side, s.name))
    return [
        f"从左到右依次是{_join([name(s) for s in left_to_right])}",
        f"{COUNTS[len(shapes)]}个形状：{_join(['一个' + sized_name(s) for s in by_size])}",
    ]


def phrase(shape: Shape, scene: ImageScene) -> str:
    """The region phrase: 'the large red circle at the top left' -> '左上角那个大的红色圆形'."""
    return f"{place(shape, scene.width, scene.height)}那个{sized_name(shape)}"


def video_captions(scene: VideoScene) -> list[str]:
    shape, direction = scene.shape, DIRECTIONS[scene.direction]
    return [f"一个{direction}移动的{name(shape)}", f"一个{sized_name(shape)}{direction}移动"]
