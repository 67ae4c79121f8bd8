"""The training stream in evaluation mode (data spec `training: false`), on hand-made shards:
stored order, every text of a sample with its sample as positive, whole images resized to
uint8 pixels, region boxes in the resized image, middle video frames, counted skips, the
max_samples cap, and no randomness."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data_pipeline import schema
from data_pipeline.demo_corpus.drawing import encode_mp4
from data_pipeline.spec import parse_data_spec
from pipeline_helpers import demo_tokenizer, write_shards  # noqa: F401  (fixture)
from training.evaluation.eval_sets import eval_batches, eval_data_spec, eval_stream

RES, PATCH, MAX_TOKENS = 64, 16, 24


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def noise(seed: int, width: int = 100, height: int = 80) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def image_sample(key: str, data: bytes, extension: str, captions: list[str], regions=(), width=100, height=80):
    info = schema.image_info("test", width, height, captions, list(regions), {})
    return schema.sample_dict(key, extension, data, info)


def stream_of(tokenizer: Path, kind: str, patterns: list[str], batch_size: int, max_samples=None):
    spec = eval_data_spec(str(tokenizer), RES, PATCH, [(kind, kind, patterns)], batch_size=batch_size,
                          max_tokens=MAX_TOKENS)
    return eval_stream(spec, spec.corpora[0], max_samples)


@pytest.fixture(scope="module")
def image_shards(tmp_path_factory) -> tuple[list[Path], list[dict]]:
    """7 image samples over 3 shards (PNG and JPEG), one with an unusable caption."""
    captions = [["a red cat", "a cat that is red"], ["one dog"], ["!!!", "two birds"], ["a tree", "a big tree", "tall"],
                ["the sea"], ["a car"], ["a house", "a small house"]]
    samples = []
    for i, caps in enumerate(captions):
        pixels = noise(i)
        data, extension = (png(pixels), "png") if i % 2 else (jpeg(pixels), "jpg")
        samples.append(image_sample(f"img_{i}", data, extension, caps))
    return write_shards(samples, tmp_path_factory.mktemp("eval_images"), "img", 3), samples


def test_image_texts_every_caption_in_stored_order_and_whole_image_pixels(demo_tokenizer, image_shards):
    paths, samples = image_shards
    # Listed out of order on purpose: the stream reads them as listed, never shuffled.
    order = [paths[2], paths[0], paths[1]]
    stream = stream_of(demo_tokenizer, "image_text", [str(p) for p in order], batch_size=3)
    batches = list(eval_batches(stream))
    by_shard = {p: [k for k in _keys_in(p)] for p in paths}
    assert [k for b in batches for k in b["keys"]] == [k for p in order for k in by_shard[p]]
    assert [len(b["keys"]) for b in batches] == [3, 3, 1]
    captions = {s["__key__"]: json.loads(s["json"])["captions"] for s in samples}
    media = {s["__key__"]: s.get("png", s.get("jpg")) for s in samples}
    for batch in batches:
        usable = [[c for c in captions[k] if c != "!!!"] for k in batch["keys"]]
        assert batch["texts"] == [c for caps in usable for c in caps]
        assert batch["text_sample"].tolist() == [i for i, caps in enumerate(usable) for _ in caps]
        assert batch["text_ids"].shape == batch["text_mask"].shape == (len(batch["texts"]), MAX_TOKENS)
        assert batch["images"].dtype == torch.uint8 and batch["images"].shape == (len(batch["keys"]), 3, RES, RES)
        for i, key in enumerate(batch["keys"]):
            expected = np.asarray(Image.open(io.BytesIO(media[key])).convert("RGB").resize((RES, RES), Image.BICUBIC))
            assert np.array_equal(batch["images"][i].permute(1, 2, 0).numpy(), expected), key
    assert stream.counters.as_dict() == {"bad_text": 1}


def _keys_in(path: Path) -> list[str]:
    import tarfile

    with tarfile.open(path) as tar:
        return list(dict.fromkeys(m.name.split(".")[0] for m in tar.getmembers()))


def test_max_samples_reads_the_first_samples_only(demo_tokenizer, image_shards):
    paths, samples = image_shards
    stream = stream_of(demo_tokenizer, "image_text", [str(p) for p in paths], batch_size=2, max_samples=5)
    keys = [k for b in eval_batches(stream) for k in b["keys"]]
    assert keys == [s["__key__"] for s in samples[:5]]


def test_no_randomness_whatever_the_seed(demo_tokenizer, image_shards):
    paths, _ = image_shards
    spec = eval_data_spec(str(demo_tokenizer), RES, PATCH, [("image", "image_text", [str(p) for p in paths])],
                          batch_size=4, max_tokens=MAX_TOKENS)
    reseeded = parse_data_spec({"seed": 12345, "training": False, "image_res": RES, "patch_size": PATCH,
                                "text": {"tokenizer": str(demo_tokenizer), "max_tokens": MAX_TOKENS},
                                "loader": {"shuffle_buffer": 1000},
                                "corpora": [{"name": "image", "kind": "image_text",
                                             "shards": [str(p) for p in paths], "batch_size": 4}]})
    first = list(eval_batches(eval_stream(spec, spec.corpora[0])))
    second = list(eval_batches(eval_stream(reseeded, reseeded.corpora[0])))
    assert len(first) == len(second) == 2
    for a, b in zip(first, second):
        assert a["keys"] == b["keys"] and a["texts"] == b["texts"]
        for name in ("images", "text_ids", "text_mask", "text_sample"):
            assert torch.equal(a[name], b[name]), name


def test_region_texts_carry_their_boxes_in_the_resized_image(demo_tokenizer, tmp_path):
    regions = [
        schema.region_entry([10, 20, 30, 40], ["a red square", "the red one"], None),
        schema.region_entry([150, 10, 20, 20], ["off the image"], None),  # a bad box: dropped, counted
        schema.region_entry([50, 0, 50, 80], ["!!!", "the right half"], None),  # a bad text: dropped, counted
    ]
    pixels = noise(7)
    good = image_sample("reg_good", png(pixels), "png", ["a caption is no region"], regions)
    hopeless = image_sample("reg_bad", png(noise(8)), "png", ["caption"],
                            [schema.region_entry([-40, 0, 10, 10], ["gone"], None),
                             schema.region_entry([0, 0, 0, 10], ["flat"], None)])
    paths = write_shards([good, hopeless], tmp_path, "reg", 1)
    stream = stream_of(demo_tokenizer, "region", [str(p) for p in paths], batch_size=4)
    batch, = list(eval_batches(stream))
    assert batch["keys"] == ["reg_good"]
    assert batch["texts"] == ["a red square", "the red one", "the right half"]  # no caption as a full box
    assert batch["image_index"].tolist() == [0, 0, 0]
    # (cx, cy, w, h) of the 100 x 80 image, whatever the resize.
    expected = torch.tensor([[25 / 100, 40 / 80, 30 / 100, 40 / 80]] * 2 + [[75 / 100, 40 / 80, 50 / 100, 80 / 80]])
    assert batch["boxes"].dtype == torch.float32
    torch.testing.assert_close(batch["boxes"], expected, rtol=0, atol=1e-7)
    # On the 4 x 4 grid of 16 px patches of the 64 px image: box 1 spans x 6.4-25.6, y 16-48
    # (columns 0-1, rows 1-2); box 2 the right half (columns 2-3, every row). Index 0 is [CLS].
    first = [0, 1 + 4, 1 + 5, 1 + 8, 1 + 9]
    second = [0] + [1 + row * 4 + col for row in range(4) for col in (2, 3)]
    assert [torch.nonzero(m).flatten().tolist() for m in batch["patch_mask"]] == [first, first, sorted(second)]
    expected_pixels = np.asarray(Image.fromarray(pixels).resize((RES, RES), Image.BICUBIC))
    assert np.array_equal(batch["images"][0].permute(1, 2, 0).numpy(), expected_pixels)
    # The hopeless sample: both boxes and then the sample; the good one: a box and a text.
    assert stream.counters.as_dict() == {"bad_box": 3, "bad_text": 1, "no_region": 1}


def test_video_frames_are_the_middle_frame_of_each_segment(demo_tokenizer, tmp_path):
    # 9 frames of distinct greys (0, 30, ..., 240): segments [0, 3), [3, 6), [6, 9) -> frames 1, 4, 7.
    greys = [30 * i for i in range(9)]
    clip = [np.full((48, 80, 3), g, dtype=np.uint8) for g in greys]
    info = schema.video_info("test", 80, 48, ["a grey clip", "greys"], 1.125, 8, None, None, 9, {})
    sample = schema.sample_dict("vid_0", "mp4", encode_mp4(clip, 8), info)
    paths = write_shards([sample], tmp_path, "vid", 1)
    batch, = list(eval_batches(stream_of(demo_tokenizer, "video_text", [str(p) for p in paths], batch_size=2)))
    assert batch["frames"].dtype == torch.uint8 and batch["frames"].shape == (1, 3, 3, RES, RES)
    assert batch["texts"] == ["a grey clip", "greys"] and batch["text_sample"].tolist() == [0, 0]
    means = batch["frames"][0].float().mean(dim=(1, 2, 3))
    for mean, grey in zip(means.tolist(), [greys[1], greys[4], greys[7]]):
        assert abs(mean - grey) < 6  # H.264 keeps a flat grey within a few levels


def test_evaluation_mode_is_refused_a_training_spec_and_names_missing_shards(demo_tokenizer, image_shards):
    paths, _ = image_shards
    training = parse_data_spec({"text": {"tokenizer": str(demo_tokenizer)},
                                "corpora": [{"name": "c", "kind": "image_text", "shards": [str(paths[0])]}]})
    with pytest.raises(ValueError, match="evaluation mode"):
        eval_stream(training, training.corpora[0])
    with pytest.raises(FileNotFoundError, match="eval image_text shards"):
        stream_of(demo_tokenizer, "image_text", ["/nonexistent/*.tar"], batch_size=2)
    with pytest.raises(ValueError, match="max_samples must be a positive int"):
        stream_of(demo_tokenizer, "image_text", [str(paths[0])], batch_size=2, max_samples=0)
