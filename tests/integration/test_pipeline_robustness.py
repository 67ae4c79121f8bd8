"""Bad input is skipped and counted, never fatal and never silent: planted bad samples,
a truncated shard, a shard that cannot be opened, files that are not shards, a video decoder
that hangs. What cannot be read around stops the run with a message naming the corpus: a
corpus of mostly bad samples, a corpus with no readable shard, a worker that is stuck."""
from __future__ import annotations

import json
import random
import re
import tarfile
import time
from collections import Counter

import pytest

from data_pipeline.io.shard_list import expand_shards
from data_pipeline.loader import corpus_loader
from data_pipeline.loader.corpus_loader import CorpusLoader, WorkerTimeout, build_transform
from data_pipeline.loader.mixer import MixedLoader
from data_pipeline.loader.stream import CorpusStream, CorpusUnusable, epoch_shard_ids
from data_pipeline.media import video_decode
from data_pipeline.skips import BadSample
from data_pipeline.config import ConfigError
from pipeline_helpers import (coco_samples, data_spec, demo_tokenizer, pipeline_shards, video_samples,  # noqa: F401
                              write_shards)

PLANTED = {  # key -> the reason it must be counted under
    "bad_jpeg": "image_decode",
    "bad_json": "bad_json",
    "no_caption": "no_caption",
    "punctuation_caption": "bad_text",
    "no_media": "missing_media",
}


def planted_samples(good: list[dict]) -> list[dict]:
    template = good[0]
    meta = json.loads(template["json"])
    return [
        {"__key__": "bad_jpeg", "jpg": template["jpg"][: len(template["jpg"]) // 3], "json": template["json"]},
        {"__key__": "bad_json", "jpg": template["jpg"], "json": b"{not json"},
        {"__key__": "no_caption", "jpg": template["jpg"], "json": json.dumps({**meta, "captions": []}).encode()},
        {"__key__": "punctuation_caption", "jpg": template["jpg"],
         "json": json.dumps({**meta, "captions": ["?! ..."]}).encode()},
        {"__key__": "no_media", "json": template["json"]},
    ]


@pytest.fixture(scope="module")
def planted_corpus(demo_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("planted")
    good = coco_samples(demo_corpus)[:36]
    bad = planted_samples(good)
    # Bad samples spread among the good ones, 3 healthy shards.
    mixed = good[:10] + bad[:2] + good[10:22] + bad[2:] + good[22:]
    shards = write_shards(mixed, out, "planted", 3)
    # A shard cut off in the middle of its 4th sample. The first 2 arrive; the 3rd is lost
    # with the rest, because a sample is only known to be whole when the next one begins.
    whole_path = write_shards(coco_samples(demo_corpus)[36:42], out / "whole", "cut", 1)[0]
    with tarfile.open(whole_path) as tar:
        fourth = [m for m in tar.getmembers() if m.name.startswith(coco_samples(demo_corpus)[39]["__key__"] + ".")]
    cut_at = fourth[0].offset_data + 100
    (out / "cut-000000.tar").write_bytes(whole_path.read_bytes()[:cut_at])
    arrive_from_cut = {s["__key__"] for s in coco_samples(demo_corpus)[36:38]}
    urls = [str(p) for p in shards] + [str(out / "cut-000000.tar"), f"pipe:cat {out}/no-such-shard.tar"]
    return urls, {s["__key__"] for s in good} | arrive_from_cut


def test_bad_samples_are_counted_and_good_ones_all_arrive(demo_tokenizer, planted_corpus):
    urls, good_keys = planted_corpus
    spec = data_spec(demo_tokenizer, [{"name": "planted", "kind": "image_text", "shards": urls, "batch_size": 4}])
    corpus = spec.corpora[0]
    keys, counters = Counter(), Counter()
    for worker in range(2):
        stream = CorpusStream(corpus, expand_shards(urls), spec, 0, 1, worker, 2, build_transform(corpus, spec),
                              passes=1)
        for batch, _ in stream.batches_with_state():
            keys.update(batch["keys"])
        counters.update(stream.counters.as_dict())
    assert set(keys) == good_keys and max(keys.values()) == 1
    expected = Counter(PLANTED.values())
    # The missing one (a pipe that fails): retried once (shard_retries 1), then skipped; the cut
    # file is damaged and skipped at once.
    expected.update({"shard_retry": 1, "shard_unreadable": 1, "shard_corrupt": 1})
    assert counters == expected


def test_counters_reach_the_trainer_through_workers(demo_tokenizer, planted_corpus):
    urls, _ = planted_corpus
    spec = data_spec(demo_tokenizer, [{"name": "planted", "kind": "image_text", "shards": urls, "batch_size": 4}])
    loader = MixedLoader(spec, rank=0, world_size=1, num_workers=2)
    for _ in range(14):  # more than one epoch of the 39 good samples
        next(loader)
    skipped = loader.stats()["skipped"]["planted"]
    loader.close()
    for reason in [*PLANTED.values(), "shard_retry", "shard_unreadable", "shard_corrupt"]:
        assert skipped.get(reason, 0) >= 1, (reason, skipped)


def test_broken_video_is_skipped(demo_corpus, demo_tokenizer, tmp_path):
    good = video_samples(demo_corpus)[:4]
    broken = {**good[0], "__key__": "webvid_broken", "mp4": good[0]["mp4"][:300]}
    urls = [str(p) for p in write_shards(good + [broken], tmp_path, "vid", 1)]
    spec = data_spec(demo_tokenizer, [{"name": "v", "kind": "video_text", "shards": urls, "batch_size": 2}])
    corpus = spec.corpora[0]
    stream = CorpusStream(corpus, urls, spec, 0, 1, 0, 1, build_transform(corpus, spec), passes=1)
    keys = [k for batch, _ in stream.batches_with_state() for k in batch["keys"]]
    assert sorted(keys) == sorted(s["__key__"] for s in good)
    assert stream.counters.as_dict() == {"video_decode": 1}


def test_hanging_video_decoder_is_killed(demo_corpus, monkeypatch):
    def hang(*args, **kwargs):  # what decord does on some files (dmlc/decord issue 373)
        while True:
            time.sleep(1)

    monkeypatch.setattr(video_decode, "_decode", hang)
    data = video_samples(demo_corpus)[0]["mp4"]
    decoder = video_decode.ClipDecoder()
    started = time.monotonic()
    with pytest.raises(BadSample) as info:
        decoder.decode(data, 3, None, None, True, 0, timeout_s=0.5)
    assert info.value.reason == "video_timeout"
    assert time.monotonic() - started < 5
    assert decoder.pid is None  # the hung child was killed and reaped
    monkeypatch.undo()
    # The next clip gets a fresh child.
    assert decoder.decode(data, 3, None, None, False, 0, timeout_s=10).shape == (3, 128, 128, 3)
    decoder.close()


def test_video_decode_result_is_a_function_of_the_rng(demo_corpus):
    data = video_samples(demo_corpus)[0]["mp4"]
    a = video_decode.decode_clip(data, 3, None, None, True, random.Random(5), timeout_s=10)
    b = video_decode.decode_clip(data, 3, None, None, True, random.Random(5), timeout_s=10)
    assert a.shape == (3, 128, 128, 3) and (a == b).all()


def drain(stream: CorpusStream) -> list[str]:
    return [k for batch, _ in stream.batches_with_state() for k in batch["keys"]]


def test_a_corpus_whose_every_sample_fails_stops_naming_it(demo_corpus, demo_tokenizer, tmp_path):
    broken = [{**s, "json": b"{not json"} for s in coco_samples(demo_corpus)[:6]]
    urls = [str(p) for p in write_shards(broken, tmp_path, "broken", 2)]
    spec = data_spec(demo_tokenizer, [{"name": "broken", "kind": "image_text", "shards": urls, "batch_size": 2}],
                     loader={"bad_sample_window": 20, "max_bad_fraction": 0.5})
    corpus = spec.corpora[0]
    # 50 passes bound the test should the limit not work; the stream itself never ends.
    stream = CorpusStream(corpus, urls, spec, 0, 1, 0, 1, build_transform(corpus, spec), passes=50)
    with pytest.raises(CorpusUnusable) as info:
        drain(stream)
    message = str(info.value)
    assert message.startswith("corpus broken: 20 of the last 20 samples read by rank 0 worker 0 were skipped")
    assert "loader.bad_sample_window = 20" in message and "(bad_json 20)" in message
    assert stream.counters.as_dict() == {"bad_json": 20}


def test_a_corpus_with_some_bad_samples_goes_on(demo_corpus, demo_tokenizer, tmp_path):
    samples = coco_samples(demo_corpus)[:6]
    samples[1], samples[4] = {**samples[1], "json": b"{"}, {**samples[4], "json": b"["}
    urls = [str(p) for p in write_shards(samples, tmp_path, "some", 2)]
    spec = data_spec(demo_tokenizer, [{"name": "some", "kind": "image_text", "shards": urls, "batch_size": 2}],
                     loader={"bad_sample_window": 10, "max_bad_fraction": 0.5})
    corpus = spec.corpora[0]
    stream = CorpusStream(corpus, urls, spec, 0, 1, 0, 1, build_transform(corpus, spec), passes=10)
    assert len(drain(stream)) == 40  # at most 4 of any 10 samples in a row are bad
    assert stream.counters.as_dict() == {"bad_json": 20}


def not_tar_files(folder, count: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        (folder / f"{i:05d}.parquet").write_bytes(b"PAR1" + bytes(1000) + b"PAR1")
        paths.append(str(folder / f"{i:05d}.parquet"))
    return paths


def test_a_corpus_with_no_readable_shard_stops_naming_it_and_its_counters(demo_tokenizer, tmp_path):
    urls = not_tar_files(tmp_path, 2)
    spec = data_spec(demo_tokenizer, [{"name": "sidecars", "kind": "image_text", "shards": urls}],
                     loader={"retry_delay_s": 5})
    corpus = spec.corpora[0]
    stream = CorpusStream(corpus, urls, spec, 0, 1, 0, 1, build_transform(corpus, spec), passes=3)
    started = time.monotonic()
    with pytest.raises(CorpusUnusable, match="corpus sidecars: rank 0 worker 0 read no sample from any of the "
                                             "corpus's 2 shards .*skipped so far: shard_not_tar 2$"):
        drain(stream)
    assert time.monotonic() - started < 5  # no retry, no retry delay


def test_a_worker_whose_shards_of_an_epoch_are_all_unreadable_goes_on(demo_corpus, demo_tokenizer, tmp_path):
    good = [str(p) for p in write_shards(coco_samples(demo_corpus)[:8], tmp_path, "good", 2)]
    urls = good + not_tar_files(tmp_path / "bad", 2)
    spec = data_spec(demo_tokenizer, [{"name": "mixed", "kind": "image_text", "shards": urls, "batch_size": 2}])
    corpus = spec.corpora[0]
    shards_of = [set(epoch_shard_ids(4, spec.seed, "mixed", e, 0, 2)) for e in range(12)]
    barren = next(e for e, ids in enumerate(shards_of) if ids == {2, 3})  # worker 0 gets only the bad files
    stream = CorpusStream(corpus, urls, spec, 0, 1, 0, 2, build_transform(corpus, spec), passes=barren + 2)
    keys = drain(stream)
    good_reads = sum(len(ids & {0, 1}) for ids in shards_of[:barren + 2])
    assert len(keys) == 4 * good_reads  # 4 samples per good shard
    assert stream.counters.as_dict() == {"shard_not_tar": 2 * (barren + 2) - good_reads}


def test_a_stuck_worker_is_reported_naming_the_corpus(demo_tokenizer, pipeline_shards, monkeypatch):
    real = corpus_loader.build_transform

    def slow_first_sample(corpus, spec):
        transform, calls = real(corpus, spec), []

        def slow(raw, rng):
            if not calls:
                time.sleep(2)  # what a hung read or decode looks like from the main process
            calls.append(1)
            return transform(raw, rng)
        return slow

    monkeypatch.setattr(corpus_loader, "build_transform", slow_first_sample)
    urls = [str(p) for p in pipeline_shards["coco"]]
    spec = data_spec(demo_tokenizer, [{"name": "coco", "kind": "image_text", "shards": urls, "batch_size": 2}],
                     loader={"num_workers": 1, "worker_timeout_s": 0.5})
    loader = CorpusLoader(spec.corpora[0], spec, 0, 1, num_workers=1)
    # The message names the shard the stuck worker was reading (the epoch's first, in its shuffled order).
    shards = "|".join(map(re.escape, urls))
    with pytest.raises(WorkerTimeout, match=rf"^corpus coco: no batch from its loader workers \(rank 0, worker 0's "
                                            rf"turn, reading ({shards})\) within "
                                            r"loader.worker_timeout_s = 0.5 s"):
        loader.next_batch()
    loader.close()


@pytest.mark.parametrize("key, value, problem", [
    ("max_bad_fraction", 0, "must be in (0, 1]"), ("bad_sample_window", 0, "must be >= 1"),
    ("max_member_bytes", -1, "must be >= 1"), ("worker_timeout_s", -1, "must be in [0, 604800]"),
    ("worker_timeout_s", True, "expected float, got bool"),
])
def test_the_limits_are_validated_naming_the_key(demo_tokenizer, key, value, problem):
    with pytest.raises(ConfigError) as info:
        data_spec(demo_tokenizer, [{"name": "c", "kind": "image_text", "shards": ["x.tar"]}], loader={key: value})
    assert str(info.value).startswith(f"loader.{key}: ") and problem in str(info.value)


def test_a_stop_in_a_loader_worker_reaches_the_trainer_as_one_line_naming_the_corpus(demo_corpus, demo_tokenizer,
                                                                                     tmp_path):
    broken = [{**s, "json": b"{not json"} for s in coco_samples(demo_corpus)[:6]]
    urls = [str(p) for p in write_shards(broken, tmp_path, "broken", 2)]
    spec = data_spec(demo_tokenizer, [{"name": "broken", "kind": "image_text", "shards": urls, "batch_size": 2}],
                     loader={"num_workers": 1, "bad_sample_window": 20, "max_bad_fraction": 0.5})
    loader = CorpusLoader(spec.corpora[0], spec, 0, 1, num_workers=1)
    with pytest.raises(CorpusUnusable) as info:
        loader.next_batch()
    assert str(info.value).startswith("corpus broken: 20 of the last 20 samples read by rank 0 worker 0 were skipped")
    assert "\n" not in str(info.value) and "Traceback" not in str(info.value)
