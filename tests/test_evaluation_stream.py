"""TEMPORARY: the evaluation-mode stream against EvalReader, batch for batch."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from data_pipeline.eval_data import EvalDataSpec, EvalReader
from data_pipeline.media.image_decode import normalise
from data_pipeline.spec import TextSpec
from pipeline_helpers import coco_samples, demo_tokenizer, video_samples, vg_samples, write_shards  # noqa: F401
from training.evaluation.data import eval_batches, eval_data_spec, eval_stream

RES, MAX_TOKENS = 64, 24


@pytest.fixture(scope="module")
def eval_shards(demo_corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eval_shards")
    write_shards(coco_samples(demo_corpus, "eval"), out / "image", "coco", 2)
    regions = vg_samples(demo_corpus, "eval")
    # A region sample with a box outside the image and a text that cleans to nothing; one with only bad boxes.
    bad = json.loads(regions[1]["json"])
    bad["regions"][0]["box"] = [1000, 1000, 5, 5]
    bad["regions"][1]["captions"] = ["!!!"]
    regions[1] = {**regions[1], "json": json.dumps(bad).encode()}
    worse = json.loads(regions[2]["json"])
    for r in worse["regions"]:
        r["box"] = [-50, 0, 10, 10]
    regions[2] = {**regions[2], "json": json.dumps(worse).encode()}
    write_shards(regions, out / "region", "vg", 2)
    videos = video_samples(demo_corpus, "eval")
    write_shards(videos, out / "video", "webvid", 1)
    images = coco_samples(demo_corpus, "eval")
    meta = json.loads(images[0]["json"])
    meta["captions"] = ["!!!", *meta["captions"]]
    images[0] = {**images[0], "json": json.dumps(meta).encode()}
    write_shards(images, out / "image_bad", "coco", 2)
    return out


@pytest.mark.parametrize("kind,folder,batch_size,max_samples", [
    ("image_text", "image", 8, None), ("image_text", "image_bad", 3, 7), ("region", "region", 4, None),
    ("video_text", "video", 2, None)])
def test_stream_matches_eval_reader(eval_shards, demo_tokenizer, kind, folder, batch_size, max_samples):
    patterns = [f"{eval_shards}/{folder}/*.tar"]
    key = {"image_text": "image_shards", "region": "region_shards", "video_text": "video_shards"}[kind]
    old = EvalReader(kind, EvalDataSpec(text=TextSpec(str(demo_tokenizer), max_tokens=MAX_TOKENS), image_res=RES,
                                        batch_size=batch_size, max_samples=max_samples, **{key: patterns}))
    spec = eval_data_spec(str(demo_tokenizer), RES, 16, batch_size=batch_size, max_tokens=MAX_TOKENS, **{key: patterns})
    stream = eval_stream(spec, spec.corpora[0], max_samples)
    old_batches, new_batches = list(old.batches()), list(eval_batches(stream))
    assert len(old_batches) == len(new_batches) > 0
    for a, b in zip(old_batches, new_batches):
        media = "frames" if kind == "video_text" else "images"
        assert b[media].dtype == torch.uint8
        assert torch.equal(a[media], normalise(b[media])), "pixels"
        for name, value in a.items():
            if name == media:
                continue
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, b[name]), name
            else:
                assert value == b[name], name
    assert old.counters.as_dict() == stream.counters.as_dict()
    print(kind, folder, old.counters.as_dict())
