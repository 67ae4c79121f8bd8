"""The inference API against the evaluator on the demo corpus's eval shards: the same
embeddings, ITM scores, boxes and rankings for the same images and texts; images as paths,
bytes or PIL images; bad inputs named.

The model's results depend on the shapes of a batch in the last bits (the CPU kernels sum in
another order for another number of rows), so where the evaluator batches ITM pairs or
grounding queries, the predictor is given batches of the same size."""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline_helpers import coco_samples, demo_tokenizer, vg_samples, write_shards  # noqa: F401
from training.evaluation.eval_sets import eval_batches, eval_data_spec, eval_stream
from training.evaluation.evaluator import encode_retrieval_set, predict_boxes, retrieval_scores
from training.inference import InputError, X2VLMPredictor
from training.model import create_model
from training.folders.model_folder import ModelCard, ModelFolderError, load_model_folder, write_model_folder

MAX_TOKENS = 24


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Bitwise equality across batch sizes holds on one thread: on several, the CPU kernels split
    a matrix product by its batch dimension, and a row can round differently in batches of
    other sizes (seen on a 2-core AMD EPYC machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def folder(demo_tokenizer, tmp_path_factory) -> Path:
    torch.manual_seed(3)
    model = create_model("tiny", load_pretrained=False)
    # The card says the text length the model was trained with; the predictor takes it from there.
    card = ModelCard(source={"kind": "test"}, data={"corpora": [], "text": {"max_tokens": MAX_TOKENS, "max_words": 40}})
    return write_model_folder(tmp_path_factory.mktemp("model") / "export", dict(model.named_parameters()),
                              model.config, demo_tokenizer, card)


@pytest.fixture(scope="module")
def shards(demo_corpus, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("inference_shards")
    images, regions = coco_samples(demo_corpus, "eval"), vg_samples(demo_corpus, "eval")
    write_shards(images, out / "image", "coco", 2)
    write_shards(regions, out / "region", "vg", 2)
    return {"dir": out, "images": images, "regions": regions}


@pytest.fixture(scope="module")
def evaluated(folder, shards):
    """The evaluator's model (the folder's, loaded as x2vlm-eval loads it) and its eval spec."""
    model = load_model_folder(folder).model
    spec = eval_data_spec(str(folder / "tokenizer"), 64, 16, [("image", "image_text", [f"{shards['dir']}/image/*.tar"]),
                                                             ("region", "region", [f"{shards['dir']}/region/*.tar"])],
                          batch_size=8, max_tokens=MAX_TOKENS)
    features = encode_retrieval_set(model, eval_stream(spec, spec.corpora_of("image_text")[0]))
    return model, spec, features


def _captions(samples) -> list[str]:
    return [caption for sample in samples for caption in json.loads(sample["json"])["captions"]]


def test_embeddings_equal_the_evaluators(folder, shards, evaluated):
    _, _, features = evaluated
    predictor = X2VLMPredictor(folder, device="cpu", batch_size=5)  # the evaluator encodes 8 images at a time
    images = [sample["jpg"] for sample in shards["images"]]
    assert torch.equal(predictor.embed_images(images), features.vision_features)
    assert torch.equal(predictor.embed_texts(_captions(shards["images"])), features.text_features)


def test_itm_scores_and_rankings_equal_the_evaluators(folder, shards, evaluated):
    model, _, features = evaluated
    images, texts = [sample["jpg"] for sample in shards["images"]], _captions(shards["images"])
    top_k = 6
    # The evaluator scores each text's top k images by ITC in one call of k pairs.
    text_to_image, _ = retrieval_scores(model, features, itm_top_k=top_k, itm_batch_size=top_k)
    predictor = X2VLMPredictor(folder, device="cpu", batch_size=top_k)
    for t in range(0, len(texts), 7):
        ranked = predictor.rank(images, texts[t], top_k=len(images), itm_top_k=top_k)
        assert [r.index for r in ranked] == text_to_image[t].argsort(descending=True, stable=True).tolist()
        for place, entry in enumerate(ranked):
            assert entry.itc == pytest.approx(float(features.text_features[t] @ features.vision_features[entry.index]),
                                              abs=1e-6)
            if place < top_k:
                assert torch.tensor(2.0) + torch.tensor(entry.itm) == text_to_image[t, entry.index]  # exactly
            else:
                assert entry.itm is None
        # score() on those pairs gives those probabilities
        candidates = [r.index for r in ranked[:top_k]]
        scores = predictor.score([images[i] for i in candidates], texts[t])
        assert scores.tolist() == [r.itm for r in ranked[:top_k]]


def test_boxes_equal_the_evaluators(folder, shards, evaluated):
    model, spec, _ = evaluated
    region_corpus = spec.corpora_of("region")[0]
    expected = predict_boxes(model, eval_stream(spec, region_corpus))["predicted"]
    by_key = {sample["__key__"]: sample for sample in shards["regions"]}
    predictor = X2VLMPredictor(folder, device="cpu", batch_size=1000)
    boxes = []
    for batch in eval_batches(eval_stream(spec, region_corpus)):  # one call per eval batch, as the evaluator makes
        images = [by_key[batch["keys"][i]]["jpg"] for i in batch["image_index"].tolist()]
        boxes += predictor.ground_batch(images, batch["texts"])
        owners = [json.loads(by_key[batch["keys"][i]]["json"]) for i in batch["image_index"].tolist()]
        for box, meta in zip(boxes[-len(owners):], owners):  # pixels of the image as stored, clipped to it
            cx, cy, w, h = box.relative
            width, height = meta["width"], meta["height"]
            x0, y0 = max(0, (cx - w / 2) * width), max(0, (cy - h / 2) * height)
            x1, y1 = min(width, (cx + w / 2) * width), min(height, (cy + h / 2) * height)
            assert (box.x, box.y, box.w, box.h) == pytest.approx((x0, y0, x1 - x0, y1 - y0))
    assert len(boxes) == len(expected) > 20
    assert torch.equal(torch.tensor([box.relative for box in boxes]), expected)


def test_images_as_paths_bytes_and_pil_images_give_the_same_pixels(folder, demo_corpus, tmp_path):
    predictor = X2VLMPredictor(folder, device="cpu")
    jpeg = sorted((demo_corpus / "images").glob("*.jpg"))[0]
    from_path, (size,) = predictor.pixels([jpeg])
    from_bytes, _ = predictor.pixels([jpeg.read_bytes()])
    assert torch.equal(from_path, from_bytes) and from_path.shape == (1, 3, 64, 64) and from_path.dtype == torch.uint8
    assert size == Image.open(jpeg).size
    # A PIL image is decoded already: it gives the pixels of the same image stored losslessly.
    picture = Image.open(jpeg).convert("RGB")
    png = io.BytesIO()
    picture.save(png, format="PNG")
    assert torch.equal(predictor.pixels([picture])[0], predictor.pixels([png.getvalue()])[0])
    assert torch.equal(predictor.pixels([picture.convert("CMYK")])[0],
                       predictor.pixels([picture.convert("CMYK").convert("RGB")])[0])
    # The whole image, bicubic-resized to the model's 64 px, as evaluation reads it.
    expected = torch.from_numpy(np.array(picture.resize((64, 64), Image.BICUBIC))).permute(2, 0, 1)
    assert torch.equal(predictor.pixels([png.getvalue()])[0][0], expected)


def test_bad_inputs_are_named(folder, demo_corpus, tmp_path):
    predictor = X2VLMPredictor(folder, device="cpu")
    jpeg = sorted((demo_corpus / "images").glob("*.jpg"))[0]
    with pytest.raises(InputError, match=r"image 1 \(bytes\): not a readable image"):
        predictor.embed_images([jpeg, b"not an image"])
    with pytest.raises(InputError, match=f"{tmp_path / 'missing.jpg'}: not a file"):
        predictor.score(tmp_path / "missing.jpg", "a red circle")
    with pytest.raises(InputError, match="text 1 '   ': bad_text"):
        predictor.embed_texts(["a red circle", "   "])
    with pytest.raises(InputError, match="2 images and 3 texts"):
        predictor.score([jpeg, jpeg], ["a", "b", "c"])
    with pytest.raises(InputError, match="image 0: expected a path, bytes or a PIL image, got int"):
        predictor.embed_images([3])
    with pytest.raises(ModelFolderError, match="not a model folder"):
        X2VLMPredictor(tmp_path)
    with open(tmp_path / "huge.jpg", "wb") as file:
        file.truncate(40 * 2**30)  # sparse
    with pytest.raises(InputError, match=f"{tmp_path / 'huge.jpg'}: larger than 512 MiB; not an image to read"):
        predictor.embed_images([tmp_path / "huge.jpg"])


def test_a_card_cannot_size_the_texts_beyond_the_model(folder, tmp_path):
    # A card saying 10^9 tokens would pad every text to that many (gigabytes) before anything else.
    import json
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    card = json.loads((copy / "card.json").read_text())
    for max_tokens, problem in ((10**9, "must be in"), (200, "exceeds the model's 128 text positions")):
        card["data"]["text"]["max_tokens"] = max_tokens
        (copy / "card.json").write_text(json.dumps(card))
        with pytest.raises(ModelFolderError, match=rf"card\.json: data\.text\.max_tokens: .*{problem}"):
            X2VLMPredictor(copy, device="cpu")


# x2vlm-predict ----------------------------------------------------------------------------------

def _run(capsys, *argv) -> tuple[int, str, str]:
    from training.predict import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def image_dir(demo_corpus, tmp_path_factory) -> Path:
    """Six demo images, one of them a PNG in a subfolder, and a file that is no image."""
    out = tmp_path_factory.mktemp("images")
    jpegs = sorted((demo_corpus / "images").glob("*.jpg"))[:6]
    for path in jpegs[:5]:
        (out / path.name).write_bytes(path.read_bytes())
    (out / "more").mkdir()
    Image.open(jpegs[5]).save(out / "more" / f"{jpegs[5].stem}.png")
    (out / "notes.txt").write_text("not an image")
    return out


def test_predict_rank_prints_the_apis_ranking(folder, image_dir, capsys):
    query = "a large red circle"
    code, out, _ = _run(capsys, "rank", folder, image_dir, query, "--top-k", 4, "--itm-top-k", 3, "--device", "cpu")
    assert code == 0
    header, *rows = out.splitlines()
    assert header == "rank\titm\titc\timage" and len(rows) == 4
    files = sorted(p for p in image_dir.rglob("*") if p.suffix in (".jpg", ".png"))
    assert len(files) == 6
    expected = X2VLMPredictor(folder, device="cpu").rank(files, query, top_k=4, itm_top_k=3)
    for place, (row, entry) in enumerate(zip(rows, expected), start=1):
        itm = "-" if entry.itm is None else f"{entry.itm:.4f}"
        assert row == f"{place}\t{itm}\t{entry.itc:.4f}\t{files[entry.index]}"
    assert [row.split("\t")[1] == "-" for row in rows] == [False, False, False, True]


def test_predict_score_reads_tsv_and_jsonl_pairs(folder, image_dir, capsys, tmp_path):
    first, second = sorted(image_dir.glob("*.jpg"))[:2]
    pairs = [(first, "a red circle"), (second, "two blue squares"), (first, "two blue squares")]
    (image_dir / "pairs.tsv").write_text("# image\ttext\n" + "".join(f"{p.name}\t{t}\n" for p, t in pairs[:2])
                                         + f"\n{first}\t{pairs[2][1]}\n")  # a relative and an absolute path
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps({"image": str(p), "text": t}) + "\n" for p, t in pairs))
    expected = X2VLMPredictor(folder, device="cpu").score([p for p, _ in pairs], [t for _, t in pairs]).tolist()
    code, out, _ = _run(capsys, "score", folder, image_dir / "pairs.tsv", "--device", "cpu")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "image\ttext\titm"
    assert [line.split("\t")[1:] for line in lines[1:]] == [[t, f"{s:.6f}"] for (_, t), s in zip(pairs, expected)]
    code, out, _ = _run(capsys, "score", folder, tmp_path / "pairs.jsonl", "--out", tmp_path / "scores.tsv",
                        "--device", "cpu")
    assert code == 0 and out == f"3 scores written to {tmp_path / 'scores.tsv'}\n"
    assert (tmp_path / "scores.tsv").read_text().splitlines()[1:] == lines[1:]


def test_predict_ground_prints_the_box_and_draws_it(folder, image_dir, capsys, tmp_path):
    from training.evaluation.plots import PREDICTED_COLOUR

    image = sorted(image_dir.glob("*.jpg"))[0]
    code, out, err = _run(capsys, "ground", folder, image, "the red circle", "--out", tmp_path / "box.png",
                          "--device", "cpu")
    assert code == 0 and err.strip().endswith(f"drawn into {tmp_path / 'box.png'}")
    box = X2VLMPredictor(folder, device="cpu").ground(image, "the red circle")
    assert out == f"{box.x:.1f} {box.y:.1f} {box.w:.1f} {box.h:.1f}\n"
    drawn = np.array(Image.open(tmp_path / "box.png").convert("RGB"))
    assert (drawn.shape[1], drawn.shape[0]) == Image.open(image).size
    left, middle = round(box.x), round(box.y + box.h / 2)
    assert tuple(drawn[middle, left]) == PREDICTED_COLOUR  # the box's left edge
    assert tuple(drawn[middle, round(box.x + box.w / 2)]) != PREDICTED_COLOUR  # its inside left as it was


def test_predict_errors_exit_2_naming_the_input(folder, image_dir, capsys, tmp_path):
    code, _, err = _run(capsys, "rank", folder, tmp_path / "nowhere", "a query")
    assert code == 2 and err == f"x2vlm-predict: {tmp_path / 'nowhere'}: not a directory\n"
    code, _, err = _run(capsys, "rank", tmp_path, image_dir, "a query")
    assert code == 2 and err.startswith(f"x2vlm-predict: {tmp_path}: not a model folder")
    (tmp_path / "bad.tsv").write_text("a.jpg\tfine\nno tab here\n")
    code, _, err = _run(capsys, "score", folder, tmp_path / "bad.tsv")
    assert code == 2 and err == f"x2vlm-predict: {tmp_path / 'bad.tsv'}:2: expected IMAGE<TAB>TEXT, found 0 tabs\n"
    (tmp_path / "bad.jsonl").write_text('{"image": "a.jpg"}\n')
    code, _, err = _run(capsys, "score", folder, tmp_path / "bad.jsonl")
    assert code == 2 and "bad.jsonl:1: expected an object with \"image\" and \"text\" strings" in err
    code, _, err = _run(capsys, "ground", folder, image_dir / "notes.txt", "a phrase", "--out", tmp_path / "x.png")
    assert code == 2 and err.startswith(f"x2vlm-predict: {image_dir / 'notes.txt'}: not a readable image")
    for command in ("rank", "score", "ground"):
        with pytest.raises(SystemExit) as exit_info:
            _run(capsys, command, "--help")
        assert exit_info.value.code == 0 and "MODEL_FOLDER" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        _run(capsys, "rank", folder, image_dir, "q", "--top-k", 0)
    assert exit_info.value.code == 2 and "--top-k: must be >= 1, got 0" in capsys.readouterr().err


def test_predict_rank_skips_and_counts_an_unreadable_image(folder, image_dir, capsys, tmp_path):
    """One corrupt image among good ones: ranked without it, counted and named; --strict stops."""
    images = tmp_path / "images"
    shutil.copytree(image_dir, images)
    (images / "broken.jpg").write_bytes(b"not a JPEG at all")
    files = sorted(p for p in images.rglob("*") if p.suffix in (".jpg", ".png") and p.name != "broken.jpg")
    code, out, err = _run(capsys, "rank", folder, images, "a red circle", "--device", "cpu", "--threads", "1")
    assert code == 0
    expected = X2VLMPredictor(folder, device="cpu").rank(files, "a red circle", top_k=10)
    assert [row.split("\t")[3] for row in out.splitlines()[1:]] == [str(files[e.index]) for e in expected]
    assert err.splitlines() == [
        "skipped 1 of 7 images that cannot be read (--strict stops instead):",
        f"  {images / 'broken.jpg'}: not a readable image (image_decode: not in an image format Pillow reads)"]
    code, out, err = _run(capsys, "rank", folder, images, "a red circle", "--device", "cpu", "--strict")
    assert code == 2 and out == ""
    assert err == (f"x2vlm-predict: {images / 'broken.jpg'}: not a readable image (image_decode: not in an image "
                   f"format Pillow reads)\n")


def test_predict_names_a_missing_device_an_empty_query_and_a_checkpoint_in_one_line(folder, image_dir, capsys,
                                                                                    tmp_path):
    if not torch.cuda.is_available():
        code, out, err = _run(capsys, "rank", folder, image_dir, "a query", "--device", "cuda")
        assert (code, out) == (2, "")
        assert err == "x2vlm-predict: --device cuda: no CUDA device is visible on this machine; use --device cpu\n"
    code, _, err = _run(capsys, "rank", folder, image_dir, "a query", "--device", "tpu:x")
    assert code == 2 and err == "x2vlm-predict: --device tpu:x: not a device name (cpu, cuda, cuda:N)\n"
    code, _, err = _run(capsys, "rank", folder, image_dir, " ?! ", "--device", "cpu")
    assert code == 2 and err == ("x2vlm-predict: text 0 ' ?! ': bad_text: text ' ?! ' is empty after cleaning "
                                 "(punctuation and spaces only)\n")
    checkpoint = tmp_path / "run/checkpoints/step_00000400"
    checkpoint.mkdir(parents=True)
    (checkpoint / "COMPLETE").write_text("{}")
    code, _, err = _run(capsys, "rank", checkpoint, image_dir, "a query", "--device", "cpu")
    assert code == 2 and err == (f"x2vlm-predict: {checkpoint}: a training checkpoint, not a model folder; write one "
                                 f"with `x2vlm-export {checkpoint} --out MODEL_FOLDER`\n")
    code, _, err = _run(capsys, "rank", tmp_path / "run", image_dir, "a query", "--device", "cpu")
    assert code == 2 and err.startswith(f"x2vlm-predict: {tmp_path / 'run'}: a training run's folder, not a model "
                                        f"folder; its export is {tmp_path / 'run/export'}")
