"""Captioning in the inference API (X2VLMPredictor.caption), `x2vlm-predict caption` and
`x2vlm-eval --captioning`, on demo images with the tiny model's random weights (whether the
captions are right is tests/integration/test_captioning_demo.py's question)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pipeline_helpers import coco_samples, demo_tokenizer, write_shards  # noqa: F401
from training.evaluation.caption_metrics import caption_metrics
from training.evaluation.captioning import CaptioningSettings, generate_eval_captions, special_ids
from training.evaluation.eval_sets import eval_data_spec, eval_stream
from training.inference import InputError, X2VLMPredictor
from training.model import create_model
from training.model.generation import generate
from training.folders.model_folder import ModelCard, load_model_folder, write_model_folder


@pytest.fixture(scope="module")
def folder(demo_tokenizer, tmp_path_factory) -> Path:
    torch.manual_seed(5)
    model = create_model("demo", load_pretrained=False)
    card = ModelCard(source={"kind": "test"}, data={"corpora": [], "text": {"max_tokens": 24, "max_words": 40}})
    return write_model_folder(tmp_path_factory.mktemp("model") / "export", dict(model.named_parameters()),
                              model.config, demo_tokenizer, card)


@pytest.fixture(scope="module")
def images(demo_corpus) -> list[Path]:
    return sorted((demo_corpus / "images").glob("*.jpg"))[:5]


def test_captions_are_the_decoded_generation_batched_or_not(folder, images):
    predictor = X2VLMPredictor(folder, device="cpu", batch_size=2)
    captions = predictor.caption(images, max_len=6)
    assert len(captions) == 5 and all(isinstance(c, str) for c in captions)
    # Independently of the predictor's batching: the model on all five images at once.
    vision = predictor.model.encode_image(predictor.pixels(images)[0])
    ids = generate(predictor.model, vision, max_len=6, **special_ids(predictor.text))
    assert captions == [predictor.text.tokenizer.decode(row, skip_special_tokens=True).strip() for row in ids]
    assert predictor.caption([images[0].read_bytes()], max_len=6) == captions[:1]
    assert len(predictor.caption(images[:2], max_len=6, beam=3)) == 2
    # A prompt starts every caption and is left out of the result.
    prompt = predictor.text.backend.encode("a picture of", add_special_tokens=False).ids
    first = type(vision)(vision.tokens[:1], vision.mask[:1], vision.features[:1])
    ids = generate(predictor.model, first, max_len=4, prompt=prompt, **special_ids(predictor.text))
    assert predictor.caption(images[:1], max_len=4, prompt="a picture of") == [
        predictor.text.tokenizer.decode(ids[0], skip_special_tokens=True).strip()]
    with pytest.raises(InputError, match="max_len 0"):
        predictor.caption(images[:1], max_len=0)
    with pytest.raises(InputError, match="beam 0"):
        predictor.caption(images[:1], beam=0)


def test_predict_caption_prints_and_writes_the_apis_captions(folder, images, capsys, tmp_path):
    from training.predict import main

    expected = X2VLMPredictor(folder, device="cpu").caption(images[:3], max_len=5, beam=2)
    assert main(["caption", str(folder), *map(str, images[:3]), "--max-len", "5", "--beam", "2", "--device", "cpu"]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{p}\t{c}" for p, c in zip(images[:3], expected)]
    out = tmp_path / "captions.json"
    assert main(["caption", str(folder), *map(str, images[:3]), "--max-len", "5", "--beam", "2", "--out", str(out),
                 "--device", "cpu"]) == 0
    assert json.loads(out.read_text()) == [{"image": str(p), "caption": c} for p, c in zip(images[:3], expected)]
    assert main(["caption", str(folder), str(tmp_path / "nowhere.jpg")]) == 2
    assert capsys.readouterr().err == f"x2vlm-predict: {tmp_path / 'nowhere.jpg'}: not a file or directory\n"


def test_eval_captioning_scores_each_images_caption_against_its_own_texts(folder, demo_corpus, tmp_path):
    from training.eval import main as eval_main

    samples = coco_samples(demo_corpus, "eval")[:6]
    write_shards(samples, tmp_path / "image", "coco", 2)
    pattern = f"{tmp_path}/image/*.tar"
    assert eval_main([str(folder), "--image-shards", pattern, "--captioning", "--caption-max-len", "5",
                      "--itm-top-k", "0", "--max-tokens", "24", "--out", str(tmp_path / "m.json"), "--device", "cpu"]) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["image/captioned"] == 6
    spec = eval_data_spec(str(folder / "tokenizer"), 64, 16, [("image", "image_text", [pattern])], max_tokens=24)
    model = load_model_folder(folder).model.eval()
    candidates, references = generate_eval_captions(model, eval_stream(spec, spec.corpora[0]), CaptioningSettings(5))
    assert references == {s["__key__"]: json.loads(s["json"])["captions"] for s in samples}
    expected = caption_metrics(candidates, references)
    assert metrics["image/bleu4"] == pytest.approx(expected["bleu4"]) and metrics["image/cider"] == pytest.approx(expected["cider"])
    assert eval_main([str(folder), "--region-shards", pattern, "--captioning"]) == 2


def test_predict_caption_refuses_a_model_whose_training_never_ran_the_captioning_loss(images, demo_tokenizer,
                                                                                        capsys, tmp_path):
    from training.predict import main

    model = create_model("demo", load_pretrained=False)
    for lm, expected in ((0.0, 2), (0.5, 0)):
        run_config = {"model": {"losses": {"weights": {"image": {"itc": 1.0, "lm": lm}}}}, "optim": {"lr": 1e-3}}
        card = ModelCard(source={"kind": "training run", "run": "demo"}, steps=400,
                         training={"run_config": run_config, "world_size": 2, "grad_accum": 1, "global_batch": {},
                                   "lr": 1e-3, "schedule": "cosine", "warmup_steps": 30, "precision": "fp32",
                                   "commit": None, "steps": 400})
        folder = write_model_folder(tmp_path / f"lm{lm}", dict(model.named_parameters()), model.config,
                                    demo_tokenizer, card)
        assert main(["caption", str(folder), str(images[0]), "--max-len", "3", "--device", "cpu"]) == expected
        err = capsys.readouterr().err
        if expected == 2:
            assert err == (f"x2vlm-predict: {folder}: its card says its training never ran the captioning loss "
                           f"(losses.weights.image.lm is 0 in its run config), so its decoder writes no words; "
                           f"train it with that loss (README: Captioning), or give --force\n")
            assert main(["caption", str(folder), str(images[0]), "--max-len", "3", "--device", "cpu", "--force"]) == 0
