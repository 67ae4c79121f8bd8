"""Where shards come from and who wrote them: http(s) and pipe: URLs stream identically
to local files; img2dataset and video2dataset shards are read as they are."""
from __future__ import annotations

import functools
import http.server
import json
import threading

import pytest
import torch

from data_pipeline.loader.corpus_loader import build_transform
from data_pipeline.loader.mixer import MixedLoader
from data_pipeline.loader.stream import CorpusStream
from pipeline_helpers import data_spec, demo_tokenizer, pipeline_shards, video_samples, write_shards  # noqa: F401


@pytest.fixture()
def http_server(pipeline_shards):
    """A loopback HTTP server over the shard folder, stopped after the test."""
    folder = pipeline_shards["coco"][0].parent
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.timeout = 5
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)
    assert not thread.is_alive()


def run_steps(spec, steps: int) -> list[dict]:
    loader = MixedLoader(spec, rank=0, world_size=1, num_workers=2)
    out = [next(loader)["image_text"] for _ in range(steps)]
    loader.close()
    return out


def test_http_and_pipe_shards_stream_like_local_files(demo_tokenizer, pipeline_shards, http_server):
    local = [str(p) for p in pipeline_shards["coco"]]
    sources = {
        "local": local,
        "http": [f"{http_server}/{p.name}" for p in pipeline_shards["coco"]],
        "pipe": [f"pipe:cat {p}" for p in local],
    }
    results = {}
    for name, urls in sources.items():
        spec = data_spec(demo_tokenizer, [{"name": "coco", "kind": "image_text", "shards": urls, "batch_size": 5}])
        results[name] = run_steps(spec, 6)
    for name in ("http", "pipe"):
        for want, got in zip(results["local"], results[name]):
            assert want["keys"] == got["keys"]
            for field in ("images", "text_ids", "text_mask", "mlm_ids", "mlm_labels"):
                assert torch.equal(want[field], got[field]), (name, field)


def test_unreachable_http_shard_is_retried_then_skipped(demo_tokenizer, pipeline_shards, http_server):
    urls = [str(pipeline_shards["coco"][0]), f"{http_server}/missing-000000.tar"]
    spec = data_spec(demo_tokenizer, [{"name": "coco", "kind": "image_text", "shards": urls, "batch_size": 4}])
    corpus = spec.corpora[0]
    stream = CorpusStream(corpus, urls, spec, 0, 1, 0, 1, build_transform(corpus, spec), passes=1)
    keys = [k for batch, _ in stream.batches_with_state() for k in batch["keys"]]
    assert len(keys) == 12  # the first shard's samples (split_sizes: 10 + 2 moved)
    assert stream.counters.as_dict() == {"shard_retry": 1, "shard_unreadable": 1}


WORDS = ["red", "green", "blue", "yellow", "purple", "orange"]  # in the demo vocabulary, unlike digits


def test_img2dataset_and_video2dataset_shards(demo_corpus, demo_tokenizer, tmp_path):
    images = sorted((demo_corpus / "images").glob("*.jpg"))[:6]
    img2dataset = []
    for i, path in enumerate(images):
        key = f"{i:09d}"  # img2dataset's keys: shard and index digits, no prefix
        meta = {"url": f"https://example.com/{path.name}", "key": key, "status": "success", "error_message": None,
                "caption": f"photo {WORDS[i]}", "width": 64, "height": 64, "original_width": 200,
                "original_height": 150, "exif": "{}", "sha256": "0" * 64}
        img2dataset.append({"__key__": key, "jpg": path.read_bytes(), "txt": f"photo {WORDS[i]}".encode(),
                            "json": json.dumps(meta).encode()})
    video2dataset = []
    for i, sample in enumerate(video_samples(demo_corpus)[:4]):
        key = f"{i:09d}"
        meta = {"url": f"https://example.com/{i}.mp4", "key": key, "status": "success", "caption": f"clip {WORDS[i]}",
                "duration": 1.5, "video_metadata": {"streams": []}}
        video2dataset.append({"__key__": key, "mp4": sample["mp4"], "txt": f"clip {WORDS[i]}".encode(),
                              "json": json.dumps(meta).encode()})
    spec = data_spec(demo_tokenizer, [
        {"name": "laion", "kind": "image_text", "batch_size": 3,
         "shards": [str(p) for p in write_shards(img2dataset, tmp_path, "laion", 1)]},
        {"name": "webvid", "kind": "video_text", "batch_size": 2,
         "shards": [str(p) for p in write_shards(video2dataset, tmp_path, "webvid", 1)]},
    ])
    for corpus, count, prefix in ((spec.corpora[0], 6, "photo"), (spec.corpora[1], 4, "clip")):
        stream = CorpusStream(corpus, corpus.shards, spec, 0, 1, 0, 1, build_transform(corpus, spec), passes=1)
        texts, keys = [], []
        encoder = build_transform(corpus, spec).text
        for batch, _ in stream.batches_with_state():
            keys += batch["keys"]
            texts += [encoder.tokenizer.decode(ids, skip_special_tokens=True) for ids in batch["text_ids"].tolist()]
        assert sorted(keys) == [f"{i:09d}" for i in range(count)]
        assert sorted(texts) == sorted(f"{prefix} {WORDS[i]}" for i in range(count))
        assert stream.counters.as_dict() == {}
