"""Writes the synthetic demo corpus as raw files in the formats public corpora ship in.

Layout of OUT:
  images/<id>.jpg, videos/<id>.mp4
  annotations/coco_captions_<split>.json    COCO captions (images + annotations[caption])
  annotations/coco_instances_<split>.json   COCO instances (bbox + category per shape)
  annotations/vg_regions_<split>.json       Visual Genome region descriptions (phrase + x, y, w, h)
  annotations/vg_image_data.json            Visual Genome image metadata
  annotations/refcoco/refs(unc).p           RefCOCO refs (pickle, as the refer toolkit reads it)
  annotations/refcoco/instances.json        the COCO instances the refs point at
  annotations/captions_<split>.jsonl / .csv the generic image path + caption(s) route
  annotations/videos_<split>.jsonl          video path + captions (+ start / end seconds)
  corpus.json                               seed, counts and the list of files
Image paths are relative to OUT/images, video paths to OUT/videos. Splits: train, eval.

Languages: each image's (and video's) texts are in English, in Chinese (`chinese.py`) or in
both, drawn per item with the shares of `languages` (`eval_languages` for the eval split);
an image in both has each caption twice, each region a phrase in each language (two VG
regions with the same box, two RefCOCO sentences). The draw has an RNG of its own, so the
pixels and boxes do not depend on the languages, and the default (English only) writes the
same bytes as before the option existed.
"""
from __future__ import annotations

import csv
import json
import math
import pickle
import random
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from . import chinese
from .drawing import encode_jpeg, encode_mp4, render_image, render_video_frames
from .scenes import SHAPES, ImageScene, VideoScene, random_image_scene, random_video_scene

SPLITS = ("train", "eval")
CATEGORIES = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(SHAPES)]
CATEGORY_ID = {c["name"]: c["id"] for c in CATEGORIES}
# What an item's texts can be in: English, Chinese, or both (English first).
LANGUAGES = ("en", "zh", "en+zh")
ENGLISH_ONLY = {"en": 1.0}


@dataclass
class DemoCorpusSpec:
    out: Path
    images: int = 600
    videos: int = 60
    seed: int = 0
    eval_fraction: float = 0.1
    # Share of the items whose texts are in each of LANGUAGES (relative weights).
    languages: dict[str, float] = field(default_factory=lambda: dict(ENGLISH_ONLY))
    eval_languages: dict[str, float] | None = None  # the eval split's; None: as `languages`

    def __post_init__(self):
        check_languages(self.languages, "languages")
        if self.eval_languages is not None:
            check_languages(self.eval_languages, "eval_languages")

    def shares(self, split: str) -> dict[str, float]:
        return self.eval_languages if split == "eval" and self.eval_languages is not None else self.languages


def check_languages(shares: dict[str, float], what: str) -> None:
    for language, share in shares.items():
        if language not in LANGUAGES:
            raise ValueError(f"{what}: unknown language {language!r} (allowed: {', '.join(LANGUAGES)})")
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share < math.inf:
            raise ValueError(f"{what}: the share of {language} must be a finite number >= 0, got {share!r}")
    if not sum(shares.values()) > 0:
        raise ValueError(f"{what}: needs a language with a share above 0, got {shares!r}")


def english_only(shares: dict[str, float]) -> bool:
    return [language for language, share in shares.items() if share > 0] == ["en"]


def parse_languages(text: str, what: str = "languages") -> dict[str, float]:
    """'en', 'zh' or shares such as 'en=0.4,zh=0.3,en+zh=0.3' (relative weights)."""
    shares: dict[str, float] = {}
    for part in text.split(","):
        language, _, share = part.strip().partition("=")
        try:
            shares[language] = float(share) if share else 1.0
        except ValueError:
            raise ValueError(f"{what}: the share of {language!r} is not a number: {share!r}") from None
    check_languages(shares, what)
    return shares


def draw_language(seed: int, item: str, index: int, shares: dict[str, float]) -> str:
    """The language of an item's texts; its own RNG, so the scenes do not depend on it."""
    chosen = [language for language in LANGUAGES if shares.get(language, 0) > 0]
    if len(chosen) == 1:
        return chosen[0]
    point = random.Random(f"{seed}/language/{item}/{index}").random() * sum(shares[k] for k in chosen)
    for language in chosen:
        point -= shares[language]
        if point < 0:
            return language
    return chosen[-1]


def image_texts(scene: ImageScene, language: str) -> tuple[list[str], list[list[str]]]:
    """(captions, phrases of each shape) in the item's language(s)."""
    captions, phrases = [], [[] for _ in scene.shapes]
    for part in language.split("+"):
        captions += scene.captions if part == "en" else chinese.image_captions(scene)
        for shape_phrases, shape, english in zip(phrases, scene.shapes, scene.phrases):
            shape_phrases.append(english if part == "en" else chinese.phrase(shape, scene))
    return captions, phrases


def video_texts(scene: VideoScene, language: str) -> list[str]:
    return [c for part in language.split("+")
            for c in (scene.captions if part == "en" else chinese.video_captions(scene))]


def referring_expression(phrase: str) -> str:
    """A RefCOCO sentence: the region phrase without its English article."""
    return phrase[len("the "):] if phrase.startswith("the ") else phrase


def expression_tokens(expression: str) -> list[str]:
    # The refer toolkit's tokens are words; Chinese has no spaces, so its characters.
    return expression.split() if " " in expression or expression.isascii() else list(expression)


def split_of(index: int, count: int, eval_fraction: float) -> str:
    """The last `eval_fraction` of the items form the eval split."""
    return "eval" if index >= count - round(count * eval_fraction) else "train"


def image_scene(seed: int, index: int) -> ImageScene:
    return random_image_scene(random.Random(f"{seed}/image/{index}"))


def video_scene(seed: int, index: int) -> VideoScene:
    return random_video_scene(random.Random(f"{seed}/video/{index}"))


def _write_json(path: Path, payload) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def generate(spec: DemoCorpusSpec, progress: bool = True) -> dict:
    out = Path(spec.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    ann = out / "annotations"
    ann.mkdir(parents=True, exist_ok=True)

    coco_images = {s: [] for s in SPLITS}
    coco_captions = {s: [] for s in SPLITS}
    coco_instances = {s: [] for s in SPLITS}
    vg_regions = {s: [] for s in SPLITS}
    vg_image_data = []
    generic = {s: [] for s in SPLITS}
    refs = []
    all_instances = []
    caption_id = instance_id = region_id = ref_id = sentence_id = 0
    drawn = {s: {"images": {}, "videos": {}} for s in SPLITS}

    for index in tqdm(range(spec.images), desc="demo images", unit="img", disable=not progress):
        scene = image_scene(spec.seed, index)
        image_id = index + 1
        file_name = f"{image_id}.jpg"
        split = split_of(index, spec.images, spec.eval_fraction)
        (out / "images" / file_name).write_bytes(encode_jpeg(render_image(scene)))
        language = draw_language(spec.seed, "image", index, spec.shares(split))
        drawn[split]["images"][language] = drawn[split]["images"].get(language, 0) + 1
        captions, phrases = image_texts(scene, language)

        image_entry = {"id": image_id, "file_name": file_name, "width": scene.width, "height": scene.height}
        coco_images[split].append(image_entry)
        vg_image_data.append({"image_id": image_id, "width": scene.width, "height": scene.height, "url": f"images/{file_name}"})
        for caption in captions:
            caption_id += 1
            coco_captions[split].append({"id": caption_id, "image_id": image_id, "caption": caption})
        generic[split].append({"image": file_name, "captions": list(captions)})

        regions = []
        for shape, shape_phrases in zip(scene.shapes, phrases):
            x, y, w, h = shape.box
            instance_id += 1
            instance = {
                "id": instance_id, "image_id": image_id, "category_id": CATEGORY_ID[shape.kind],
                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0,
                "attributes": {"colour": shape.colour, "size": shape.size_word},
            }
            coco_instances[split].append(instance)
            all_instances.append(instance)
            sentences = []
            for phrase in shape_phrases:
                region_id += 1
                regions.append({"region_id": region_id, "image_id": image_id, "phrase": phrase,
                                "x": x, "y": y, "width": w, "height": h})
                sentence_id += 1
                expression = referring_expression(phrase)
                sentences.append({"sent_id": sentence_id, "raw": expression, "sent": expression,
                                  "tokens": expression_tokens(expression)})
            ref_id += 1
            refs.append({
                "ref_id": ref_id, "ann_id": instance_id, "image_id": image_id, "category_id": CATEGORY_ID[shape.kind],
                "split": "train" if split == "train" else "val", "file_name": file_name,
                "sentences": sentences, "sent_ids": [s["sent_id"] for s in sentences],
            })
        vg_regions[split].append({"id": image_id, "regions": regions})

    videos = {s: [] for s in SPLITS}
    for index in tqdm(range(spec.videos), desc="demo videos", unit="video", disable=not progress):
        scene = video_scene(spec.seed, index)
        file_name = f"{index + 1}.mp4"
        (out / "videos" / file_name).write_bytes(encode_mp4(render_video_frames(scene), scene.fps))
        split = split_of(index, spec.videos, spec.eval_fraction)
        language = draw_language(spec.seed, "video", index, spec.shares(split))
        drawn[split]["videos"][language] = drawn[split]["videos"].get(language, 0) + 1
        entry = {"video": file_name, "captions": video_texts(scene, language), "fps": scene.fps, "frames": scene.frames,
                 "duration": scene.frames / scene.fps}
        if index % 4 == 3:
            # Some lines name a clip inside the file, as WebVid-style lists with timestamps do.
            entry["start"] = 1 / scene.fps
            entry["end"] = scene.frames / scene.fps
        videos[split].append(entry)

    files = []
    info = {"description": "x2vlm synthetic demo corpus", "seed": spec.seed}
    for split in SPLITS:
        _write_json(ann / f"coco_captions_{split}.json",
                    {"info": info, "images": coco_images[split], "annotations": coco_captions[split]})
        _write_json(ann / f"coco_instances_{split}.json",
                    {"info": info, "images": coco_images[split], "annotations": coco_instances[split], "categories": CATEGORIES})
        _write_json(ann / f"vg_regions_{split}.json", vg_regions[split])
        with open(ann / f"captions_{split}.jsonl", "w", encoding="utf-8") as f:
            for line in generic[split]:
                f.write(json.dumps(line, sort_keys=True) + "\n")
        with open(ann / f"captions_{split}.csv", "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["image", "caption"])
            for line in generic[split]:
                for caption in line["captions"]:
                    writer.writerow([line["image"], caption])
        with open(ann / f"videos_{split}.jsonl", "w", encoding="utf-8") as f:
            for line in videos[split]:
                f.write(json.dumps(line, sort_keys=True) + "\n")
        files += [f"annotations/{name}_{split}.{ext}" for name, ext in
                  (("coco_captions", "json"), ("coco_instances", "json"), ("vg_regions", "json"),
                   ("captions", "jsonl"), ("captions", "csv"), ("videos", "jsonl"))]
    _write_json(ann / "vg_image_data.json", vg_image_data)
    all_images = coco_images["train"] + coco_images["eval"]
    _write_json(ann / "refcoco" / "instances.json",
                {"info": info, "images": all_images, "annotations": all_instances, "categories": CATEGORIES})
    # protocol 2 and a plain list of dicts: the refer toolkit's own format.
    (ann / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    files += ["annotations/vg_image_data.json", "annotations/refcoco/instances.json", "annotations/refcoco/refs(unc).p"]

    summary = {
        "seed": spec.seed,
        "images": {s: len(coco_images[s]) for s in SPLITS},
        "videos": {s: len(videos[s]) for s in SPLITS},
        "regions": instance_id,
        "captions": caption_id,
        "image_root": "images",
        "video_root": "videos",
        "files": sorted(files),
    }
    if not all(english_only(spec.shares(split)) for split in SPLITS):
        # Items per language; absent for an English-only corpus, whose corpus.json predates the option.
        summary["languages"] = drawn
    _write_json(out / "corpus.json", summary)
    return summary
