"""The evaluator on real eval shards from the demo corpus, with the tiny model's random weights:
the eval stream's batches, the metrics' keys and ranges, determinism, the CLI and the picture."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from data_pipeline.config import ConfigError
from data_pipeline.spec import DataSpec
from pipeline_helpers import coco_samples, data_spec, demo_tokenizer, video_samples, vg_samples, write_shards  # noqa: F401
from training.evaluation import evaluate
from training.evaluation import evaluator
from training.eval import main as eval_main
from training.evaluation.eval_sets import eval_batches, eval_data_spec, eval_spec_like_training, eval_stream
from training.evaluation.evaluator import encode_retrieval_set, retrieval_scores
from training.evaluation.plots import PREDICTED_COLOUR, TRUE_COLOUR, box_pixels, draw_grounding, grounding_grid_size
from training.folders.model_folder import ModelCard, write_model_folder
from training.model import CONFIG_DIR, TextEncoding, VisionEncoding, create_model

RES = 64  # the tiny model's resolution
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def eval_shards(demo_corpus, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("eval_shards")
    write_shards(coco_samples(demo_corpus, "eval"), out / "image", "coco", 2)
    write_shards(vg_samples(demo_corpus, "eval"), out / "region", "vg", 2)
    write_shards(video_samples(demo_corpus, "eval"), out / "video", "webvid", 1)
    return out


def _spec(eval_shards: Path, tokenizer: Path, image_res: int = RES, batch_size: int = 8,
          video_frames: int | None = None, **shards) -> DataSpec:
    """The held-out sets image, region and video (SHARDS: `image_shards=[...]` etc. replace them)."""
    sets = [(name, kind, shards.get(f"{name}_shards", [f"{eval_shards}/{name}/*.tar"]))
            for name, kind in (("image", "image_text"), ("region", "region"), ("video", "video_text"))]
    options = {"video_text": {"frames": video_frames}} if video_frames else None
    return eval_data_spec(str(tokenizer), image_res, 16, sets, batch_size=batch_size, max_tokens=MAX_TOKENS,
                          options=options)


def _batches(spec: DataSpec, kind: str, max_samples: int | None = None):
    corpus, = spec.corpora_of(kind)
    return eval_batches(eval_stream(spec, corpus, max_samples))


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return create_model("tiny", load_pretrained=False)


# The eval stream -------------------------------------------------------------------------------

def test_image_batches_hold_every_caption_in_shard_order_and_the_whole_resized_image(eval_shards, demo_tokenizer,
                                                                                      demo_corpus):
    samples = coco_samples(demo_corpus, "eval")
    batches = list(_batches(_spec(eval_shards, demo_tokenizer), "image_text"))
    assert [len(b["keys"]) for b in batches] == [8, 8, len(samples) - 16]
    assert [k for b in batches for k in b["keys"]] == [s["__key__"] for s in samples]
    captions = [json.loads(s["json"])["captions"] for s in samples]
    first = batches[0]
    assert first["texts"] == [c for caps in captions[:8] for c in caps]
    assert first["text_sample"].tolist() == [i for i, caps in enumerate(captions[:8]) for _ in caps]
    assert first["images"].shape == (8, 3, RES, RES) and first["text_ids"].shape == (len(first["texts"]), MAX_TOKENS)
    # No crop and no augmentation: the whole image, bicubic-resized, uint8 (the model normalises).
    image = Image.open(io.BytesIO(samples[0]["jpg"])).convert("RGB").resize((RES, RES), Image.BICUBIC)
    expected = torch.from_numpy(np.array(image)).permute(2, 0, 1)
    assert first["images"].dtype == torch.uint8
    # (JPEG draft decoding at a reduced scale differs from a full decode by a few grey levels.)
    assert (first["images"][0].float() - expected.float()).abs().mean() < 3


def test_region_boxes_are_the_stored_boxes_normalised_to_the_image(eval_shards, demo_tokenizer, demo_corpus):
    sample = vg_samples(demo_corpus, "eval")[0]
    meta = json.loads(sample["json"])
    batch = next(_batches(_spec(eval_shards, demo_tokenizer), "region"))
    regions = meta["regions"]
    count = sum(len(r["captions"]) for r in regions)
    assert batch["keys"][0] == sample["__key__"]
    assert batch["texts"][:count] == [t for r in regions for t in r["captions"]]
    expected = [[(x + w / 2) / meta["width"], (y + h / 2) / meta["height"], w / meta["width"], h / meta["height"]]
                for r in regions for (x, y, w, h) in [r["box"]] for _ in r["captions"]]
    assert torch.allclose(batch["boxes"][:count], torch.tensor(expected), atol=1e-5)
    assert batch["patch_mask"].shape == (len(batch["texts"]), 1 + (RES // 16) ** 2)
    assert batch["patch_mask"][:, 0].all() and (batch["image_index"][:count] == 0).all()


def test_video_batches_are_the_same_frames_every_read(eval_shards, demo_tokenizer):
    spec = _spec(eval_shards, demo_tokenizer)
    first, second = (next(_batches(spec, "video_text")) for _ in range(2))
    assert first["frames"].shape == (3, 3, 3, RES, RES)
    assert torch.equal(first["frames"], second["frames"])
    # Three distinct frames: the middles of three segments, not one frame repeated.
    assert not torch.equal(first["frames"][0, 0], first["frames"][0, 2])


def test_max_samples_reads_the_first_samples_only(eval_shards, demo_tokenizer, demo_corpus):
    keys = [k for b in _batches(_spec(eval_shards, demo_tokenizer), "image_text", max_samples=5) for k in b["keys"]]
    assert keys == [s["__key__"] for s in coco_samples(demo_corpus, "eval")[:5]]


def test_eval_settings_follow_the_training_data_spec(eval_shards, demo_tokenizer):
    training = data_spec(demo_tokenizer, [{"name": "clips", "kind": "video_text", "shards": f"{eval_shards}/video/*.tar",
                                           "options": {"frames": 2}}], image_res=96)
    training.loader.shard_read_timeout_s = 7.0
    spec = eval_spec_like_training(training, [("video", "video_text", [f"{eval_shards}/video/*.tar"])], batch_size=4)
    assert (spec.text.tokenizer, spec.text.max_tokens) == (str(demo_tokenizer), MAX_TOKENS)
    assert spec.loader.shard_read_timeout_s == 7.0  # evaluation reads in the trainer's process: bounded as training
    corpus, = spec.corpora
    assert (spec.image_res, spec.patch_size, corpus.options.frames, corpus.batch_size) == (96, 16, 2, 4)
    assert not spec.training
    batch = next(_batches(spec, "video_text"))
    assert batch["frames"].shape[1:] == (2, 3, 96, 96)


def test_bad_eval_settings_are_errors_naming_the_setting(eval_shards, demo_tokenizer):
    with pytest.raises(ConfigError, match="image_res 60 is not a multiple of patch_size 16"):
        _spec(eval_shards, demo_tokenizer, image_res=60)
    with pytest.raises(ConfigError, match=r"corpora\[0\]\.batch_size: must be >= 1"):
        _spec(eval_shards, demo_tokenizer, batch_size=0)
    with pytest.raises(ValueError, match="eval corpus video: 5 video frames exceed the model's vision.max_frames 4"):
        evaluate(create_model("tiny", load_pretrained=False), _spec(eval_shards, demo_tokenizer, video_frames=5))


def test_no_shards_or_missing_shards_are_errors_naming_them(eval_shards, demo_tokenizer):
    with pytest.raises(ConfigError, match="corpora: must not be empty"):
        _spec(eval_shards, demo_tokenizer, image_shards=[], region_shards=[], video_shards=[])
    with pytest.raises(FileNotFoundError, match="eval image_text shards"):
        evaluate(create_model("tiny", load_pretrained=False),
                 _spec(eval_shards, demo_tokenizer, image_shards=["/nonexistent/*.tar"]))


# The evaluator ----------------------------------------------------------------------------

RETRIEVAL_KEYS = {"txt_r1", "txt_r5", "txt_r10", "img_r1", "img_r5", "img_r10", "txt_r_mean", "img_r_mean", "r_mean"}
REGION_TEXT_KEYS = {f"region_text/{k}" for k in ("img_r1", "img_r5", "txt_r1", "txt_r5", "img_r1_chance", "img_r5_chance",
                                                 "txt_r1_chance", "txt_r5_chance", "regions", "texts")}


def test_tiny_model_evaluates_every_kind_deterministically(eval_shards, demo_tokenizer, tiny_model):
    spec = _spec(eval_shards, demo_tokenizer)
    tiny_model.train()
    metrics = evaluate(tiny_model, spec, itm_top_k=4)
    assert tiny_model.training  # put back in the mode it came in
    expected = ({f"image/{k}" for k in RETRIEVAL_KEYS | {"images", "texts", "skipped"}}
                | {f"video/{k}" for k in RETRIEVAL_KEYS | {"videos", "texts", "skipped"}}
                | {f"region/{k}" for k in ("grounding_acc", "centre_baseline_acc", "mean_iou", "queries", "skipped")}
                | {f"region/{k}" for k in REGION_TEXT_KEYS})
    assert set(metrics) == expected
    assert metrics["image/images"] == 20 and metrics["video/videos"] == 3 and metrics["region/queries"] > 20
    for key, value in metrics.items():
        if key.endswith(("images", "videos", "texts", "queries", "skipped", "regions")):
            continue
        assert 0.0 <= value <= 1.0, key
    assert evaluate(tiny_model, spec, itm_top_k=4) == metrics


def test_identical_encoders_give_recall_one_end_to_end(eval_shards, demo_tokenizer, tiny_model, monkeypatch):
    """With each text's features replaced by its own image's features, the whole path (reader,
    encoding, similarity, recall) reports R@1 = 1 in both directions."""
    spec = _spec(eval_shards, demo_tokenizer, region_shards=[], video_shards=[])
    encode_image, encode_text, read_batches = tiny_model.encode_image, tiny_model.encode_text, eval_batches
    current: dict = {}

    def batches_noting_owners(stream):
        for batch in read_batches(stream):
            current["owner"] = batch["text_sample"]
            yield batch

    def image_encoding_noted(images):
        current["image"] = encode_image(images)
        return current["image"]

    def text_as_its_image(text_ids, text_mask):
        encoding = encode_text(text_ids, text_mask)
        encoding.features = current["image"].features[current["owner"]]
        return encoding

    monkeypatch.setattr(evaluator, "eval_batches", batches_noting_owners)
    monkeypatch.setattr(tiny_model, "encode_image", image_encoding_noted)
    monkeypatch.setattr(tiny_model, "encode_text", text_as_its_image)
    metrics = evaluate(tiny_model, spec, itm_top_k=0)
    assert metrics["image/img_r1"] == 1.0 and metrics["image/txt_r1"] == 1.0
    assert metrics["image/texts"] > metrics["image/images"]  # several captions per image


def test_itm_top_k_changes_the_ranking_only_through_the_itm_head(eval_shards, demo_tokenizer):
    spec = _spec(eval_shards, demo_tokenizer, region_shards=[], video_shards=[])
    torch.manual_seed(1)
    tiny_model = create_model("tiny", load_pretrained=False)  # its ITM head is changed below
    itc_only = evaluate(tiny_model, spec, itm_top_k=0)
    reranked = evaluate(tiny_model, spec, itm_top_k=20)  # every image re-ranked: ITC plays no part
    with torch.no_grad():
        tiny_model.itm_head[-1].bias.copy_(torch.tensor([0.0, 0.0]))
        tiny_model.itm_head[-1].weight.zero_()  # ITM says 0.5 for every pair: all tied
    flat = evaluate(tiny_model, spec, itm_top_k=20)
    assert flat["image/img_r1"] == 0.0 and flat["image/txt_r1"] == 0.0
    assert reranked != itc_only


def test_reranked_scores_are_the_itm_probability_of_each_image_with_each_text(eval_shards, demo_tokenizer, tiny_model):
    spec = _spec(eval_shards, demo_tokenizer, batch_size=4)
    tiny_model.eval()
    features = encode_retrieval_set(tiny_model, eval_stream(spec, spec.corpora_of("image_text")[0], max_samples=4))
    # top k above the candidate counts: every pair is re-scored in both directions.
    text_to_image, image_to_text = retrieval_scores(tiny_model, features, itm_top_k=100, itm_batch_size=5)
    batch = next(_batches(spec, "image_text", max_samples=4))
    with torch.no_grad():
        vision = tiny_model.encode_image(batch["images"])
        text = tiny_model.encode_text(batch["text_ids"], batch["text_mask"])
        for t, i in [(0, 0), (0, 3), (len(batch["texts"]) - 1, 1)]:
            pair = tiny_model.itm_score(
                VisionEncoding(vision.tokens[i:i + 1], vision.mask[i:i + 1], vision.features[i:i + 1]),
                TextEncoding(text.hidden[t:t + 1], text.mask[t:t + 1], text.features[t:t + 1]))
            assert text_to_image[t, i] == pytest.approx(2 + float(pair), abs=1e-5)
            assert image_to_text[i, t] == pytest.approx(2 + float(pair), abs=1e-5)


# The CLI and the picture ------------------------------------------------------------------

def _cli_args(eval_shards: Path, tokenizer: Path | None) -> list[str]:
    return [*(["--tokenizer", str(tokenizer)] if tokenizer else []), "--max-tokens", str(MAX_TOKENS), "--itm-top-k", "4",
            "--batch-size", "8", "--image-shards", f"{eval_shards}/image/*.tar",
            "--region-shards", f"{eval_shards}/region/*.tar", "--video-shards", f"{eval_shards}/video/*.tar"]


def test_cli_on_an_exported_model_matches_the_library_and_writes_json(eval_shards, demo_tokenizer, tmp_path, capsys):
    torch.manual_seed(3)
    model = create_model("tiny", load_pretrained=False)
    export = tmp_path / "export"
    # As the trainer's export writes it: each parameter once, the tied MLM decoder left out, and
    # the tokenizer, which x2vlm-eval takes from the folder when --tokenizer is not given.
    write_model_folder(export, dict(model.named_parameters()), yaml.safe_load((CONFIG_DIR / "tiny.yaml").read_text()),
                       demo_tokenizer, ModelCard(source={"kind": "test"}))
    out = tmp_path / "metrics.json"
    png = tmp_path / "grounding.png"
    assert eval_main([str(export), *_cli_args(eval_shards, None), "--out", str(out),
                      "--grounding-png", str(png)]) == 0
    written = json.loads(out.read_text())
    assert written == evaluate(model, _spec(eval_shards, demo_tokenizer), itm_top_k=4)
    table = capsys.readouterr().out
    assert table.splitlines()[0].startswith("image") and "img_r1" in table
    assert Image.open(png).size == grounding_grid_size(8, 4, 192)


def test_cli_errors_name_the_bad_input(eval_shards, demo_tokenizer, tmp_path, capsys):
    args = _cli_args(eval_shards, demo_tokenizer)
    assert eval_main([str(tmp_path), *args]) == 2
    assert f"{tmp_path}: not a model folder, missing model.safetensors, model.yaml" in capsys.readouterr().err
    assert eval_main(["--model-config", "tiny", *_cli_args(eval_shards, None)]) == 2
    assert "--model-config needs --tokenizer" in capsys.readouterr().err
    assert eval_main(["--model-config", "tiny", "--tokenizer", str(demo_tokenizer)]) == 2
    assert "nothing to evaluate" in capsys.readouterr().err
    assert eval_main(["--model-config", "tiny", "--tokenizer", str(demo_tokenizer), "--image-shards", "x.tar",
                      "--grounding-png", str(tmp_path / "g.png")]) == 2
    assert "--grounding-png needs --region-shards" in capsys.readouterr().err
    assert eval_main(["--model-config", "tiny", *args, "--image-res", "96"]) == 2
    assert "--image-res 96: the model was built for 64 px" in capsys.readouterr().err
    # A shard that never sends a byte: given up at --shard-timeout, one line, exit 2.
    assert eval_main(["--model-config", "tiny", "--tokenizer", str(demo_tokenizer), "--image-shards",
                      "pipe:sleep 100000", "--shard-timeout", "1"]) == 2
    assert "x2vlm-eval: eval image_text shards ['pipe:sleep 100000']...: no usable sample (skipped: " \
           "{'shard_timeout': 1})" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        eval_main(["--model-config", "tiny", *args, "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert f"argument --out: {tmp_path} is a folder; give a file name inside it" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        eval_main(["--help"])
    assert exit_info.value.code == 0
    assert "--itm-top-k" in capsys.readouterr().out


def test_grounding_picture_draws_both_boxes_where_they_are(tmp_path):
    images = torch.full((2, 3, 32, 32), 128, dtype=torch.uint8)
    true = torch.tensor([[0.25, 0.25, 0.3, 0.3], [0.5, 0.5, 0.5, 0.5]])
    predicted = torch.tensor([[0.7, 0.7, 0.3, 0.3], [0.5, 0.5, 0.9, 0.9]])
    tile = 100
    path = draw_grounding(images, predicted, true, ["the left one", "the middle one"], tmp_path / "g.png",
                          columns=2, tile=tile)
    picture = np.array(Image.open(path).convert("RGB"))
    assert (picture.shape[1], picture.shape[0]) == grounding_grid_size(2, 2, tile)
    for index, (box, colour) in enumerate([(true[0], TRUE_COLOUR), (predicted[0], PREDICTED_COLOUR),
                                           (true[1], TRUE_COLOUR), (predicted[1], PREDICTED_COLOUR)]):
        x0, y0, x1, y1 = box_pixels(box, tile)
        left = (index // 2) * tile
        middle_y = (y0 + y1) // 2
        assert tuple(picture[middle_y, left + x0]) == colour  # left edge
        assert tuple(picture[middle_y, left + (x0 + x1) // 2]) not in (TRUE_COLOUR, PREDICTED_COLOUR)  # inside
