"""The mixer: one batch per kind per step, kinds by ratio, corpora within a kind by
weight, realised proportions reported, equal batch counts on every rank."""
from __future__ import annotations

from collections import Counter

from data_pipeline.loader.mixer import MixedLoader
from pipeline_helpers import data_spec, demo_tokenizer, pipeline_shards  # noqa: F401  (fixtures)


def test_kinds_ratios_weights_and_ranks(demo_tokenizer, pipeline_shards):
    coco = [str(p) for p in pipeline_shards["coco"]]
    spec = data_spec(demo_tokenizer, [
        {"name": "coco_a", "kind": "image_text", "shards": coco[:3], "batch_size": 1, "weight": 3.0},
        {"name": "coco_b", "kind": "image_text", "shards": coco[3:], "batch_size": 1, "weight": 1.0},
        {"name": "webvid", "kind": "video_text", "shards": [str(p) for p in pipeline_shards["webvid"]],
         "batch_size": 1},
    ], image_res=32, kinds={"video_text": {"ratio": 0.25}})
    per_rank = []
    for rank in range(2):
        loader = MixedLoader(spec, rank=rank, world_size=2, num_workers=0)
        drawn, video_steps = Counter(), []
        for step in range(120):
            out = next(loader)
            assert set(out) <= {"image_text", "video_text"} and "image_text" in out
            drawn[out["image_text"]["corpus"]] += 1
            if "video_text" in out:
                video_steps.append(step)
                assert out["video_text"]["corpus"] == "webvid"
        assert video_steps == list(range(3, 120, 4))  # ratio 0.25: every 4th step, on every rank
        shares = loader.stats()["proportions"]["image_text"]
        assert shares == {"coco_a": drawn["coco_a"] / 120, "coco_b": drawn["coco_b"] / 120}
        assert 0.65 < shares["coco_a"] < 0.85  # weight 3:1
        assert loader.stats()["batches"] == {"coco_a": drawn["coco_a"], "coco_b": drawn["coco_b"], "webvid": 30}
        per_rank.append(sum(loader.stats()["batches"].values()))
        loader.close()
    assert per_rank == [150, 150]
