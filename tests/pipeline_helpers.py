"""Shards and a tokenizer for the data-pipeline tests, made from the demo corpus.

Shards are written with webdataset's TarWriter in the agreed sample layout, the way the
shard CLI writes them: `<prefix>_<id>` keys, `jpg` / `mp4`, a `json` with source, size,
captions and regions, and a `txt` with the first caption.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import webdataset as wds

from data_pipeline import schema
from data_pipeline.spec import parse_data_spec
from data_pipeline.text.demo_tokenizer import build_demo_tokenizer


def split_sizes(total: int, shards: int) -> list[int]:
    """Uneven shard sizes on purpose (the first shards get more), summing to `total`."""
    base = [total // shards] * shards
    for i in range(total - sum(base)):
        base[i] += 1
    # Move a few samples from the last shard to the first, so sizes really differ.
    move = min(2, base[-1] - 1)
    base[0] += move
    base[-1] -= move
    return base


def write_shards(samples: list[dict], out: Path, prefix: str, shards: int) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths, start = [], 0
    for index, size in enumerate(split_sizes(len(samples), shards)):
        path = out / f"{prefix}-{index:06d}.tar"
        with wds.TarWriter(str(path)) as writer:
            for sample in samples[start:start + size]:
                writer.write(sample)
        paths.append(path)
        start += size
    return paths


def image_sample(prefix: str, image_id, data: bytes, width: int, height: int, captions: list[str],
                 regions: list[dict], source: str) -> dict:
    info = schema.image_info(source, width, height, captions, regions, {"image_id": image_id})
    return schema.sample_dict(f"{prefix}_{image_id}", "jpg", data, info)


def coco_samples(demo: Path, split: str = "train") -> list[dict]:
    coco = json.loads((demo / "annotations" / f"coco_captions_{split}.json").read_text())
    captions: dict[int, list[str]] = {}
    for a in coco["annotations"]:
        captions.setdefault(a["image_id"], []).append(a["caption"])
    return [image_sample("coco", im["id"], (demo / "images" / im["file_name"]).read_bytes(), im["width"],
                         im["height"], captions[im["id"]], [], "coco")
            for im in coco["images"]]


def vg_samples(demo: Path, split: str = "train") -> list[dict]:
    coco = json.loads((demo / "annotations" / f"coco_captions_{split}.json").read_text())
    sizes = {im["id"]: (im["width"], im["height"], im["file_name"]) for im in coco["images"]}
    captions: dict[int, list[str]] = {}
    for a in coco["annotations"]:
        captions.setdefault(a["image_id"], []).append(a["caption"])
    out = []
    for image in json.loads((demo / "annotations" / f"vg_regions_{split}.json").read_text()):
        width, height, name = sizes[image["id"]]
        regions = [schema.region_entry([r["x"], r["y"], r["width"], r["height"]], [r["phrase"]], None)
                   for r in image["regions"]]
        out.append(image_sample("vg", image["id"], (demo / "images" / name).read_bytes(), width, height,
                                captions[image["id"]], regions, "vg"))
    return out


def video_samples(demo: Path, split: str = "train") -> list[dict]:
    out = []
    for line in (demo / "annotations" / f"videos_{split}.jsonl").read_text().splitlines():
        entry = json.loads(line)
        video_id = entry["video"].split(".")[0]
        info = schema.video_info("demo_videos", 128, 128, entry["captions"], entry["duration"], entry["fps"],
                                 entry.get("start"), entry.get("end"), entry["frames"], {"video": entry["video"]})
        out.append(schema.sample_dict(f"webvid_{video_id}", "mp4", (demo / "videos" / entry["video"]).read_bytes(),
                                      info))
    return out


def data_spec(tokenizer: Path, corpora: list[dict], **overrides):
    raw = {"seed": 11, "image_res": 64, "patch_size": 16,
           "text": {"tokenizer": str(tokenizer), "max_tokens": 24},
           "loader": {"num_workers": 0, "shuffle_buffer": 8, "shard_retries": 1, "retry_delay_s": 0}}
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    raw["corpora"] = corpora
    return parse_data_spec(raw)


@pytest.fixture(scope="session")
def demo_tokenizer(demo_corpus, tmp_path_factory) -> Path:
    return build_demo_tokenizer(demo_corpus, tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def pipeline_shards(demo_corpus, tmp_path_factory) -> dict[str, list[Path]]:
    """coco (image-text, 6 uneven shards), vg (region, 4), webvid (video, 4)."""
    out = tmp_path_factory.mktemp("pipeline_shards")
    return {
        "coco": write_shards(coco_samples(demo_corpus), out, "coco", 6),
        "vg": write_shards(vg_samples(demo_corpus), out, "vg", 4),
        "webvid": write_shards(video_samples(demo_corpus), out, "webvid", 4),
    }


@pytest.fixture(scope="module")
def mixed_spec(demo_tokenizer, pipeline_shards):
    """All three kinds over the pipeline shards, video on every other step."""
    return data_spec(demo_tokenizer, [
        {"name": "coco", "kind": "image_text", "shards": [str(p) for p in pipeline_shards["coco"]], "batch_size": 4},
        {"name": "vg", "kind": "region", "shards": [str(p) for p in pipeline_shards["vg"]], "batch_size": 3},
        {"name": "webvid", "kind": "video_text", "shards": [str(p) for p in pipeline_shards["webvid"]],
         "batch_size": 2},
    ], kinds={"video_text": {"ratio": 0.5}})
