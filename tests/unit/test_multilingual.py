"""Multilingual: the demo corpus in Chinese, CJK text through cleaning, tokenizer training and
masking, and an XLM-R text tower on a Chinese batch."""
from __future__ import annotations

import hashlib
import json
import pickle
import random
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from data_pipeline.config import ConfigError
from data_pipeline.demo_corpus import DemoCorpusSpec, generate
from data_pipeline.shards import main as shards_main
from data_pipeline.spec import TextSpec
from data_pipeline.text import TextEncoder, clean_caption
from data_pipeline.text.tokenizer_training import train_tokenizer
from data_pipeline.transforms.flip import swap_sides
from training.model import create_model
from training.model.text import tokenizer_problem
from training.tasks.task import Task

MIXED = {"en": 0.4, "zh": 0.3, "en+zh": 0.3}
# Written down here, apart from the generator's table: what a Chinese text must call each
# colour, kind and size, and the place of each cell of the 3 x 3 grid (row, column).
COLOUR_ZH = {"red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色", "purple": "紫色", "orange": "橙色"}
KIND_ZH = {"circle": "圆形", "square": "正方形", "triangle": "三角形", "diamond": "菱形", "star": "星形"}
SIZE_ZH = {"small": "小", "large": "大"}
PLACE_ZH = [["左上角", "上方", "右上角"], ["左边", "中间", "右边"], ["左下角", "下方", "右下角"]]
CJK_TEXT = re.compile(r"^[\u4e00-\u9fff，：、]+$")
# sha256 of the annotation files and corpus.json of DemoCorpusSpec(images=24, videos=4, seed=5),
# written by the generator before the language option existed.
ENGLISH_ANNOTATIONS_SHA256 = "41f71bbe76378e53bfe35a262ab63bc8ebc91c2e8419e37fb6bba39c73b2ddd2"


def annotation_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix not in (".jpg", ".mp4"):
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def media_digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.suffix in (".jpg", ".mp4")}


def load(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def bilingual(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bilingual")
    generate(DemoCorpusSpec(out, images=40, videos=6, seed=5, eval_fraction=0.25, languages=MIXED,
                            eval_languages={"zh": 1.0}), progress=False)
    return out


def test_the_default_corpus_is_the_english_one_written_before_the_option(tmp_path):
    generate(DemoCorpusSpec(tmp_path, images=24, videos=4, seed=5), progress=False)
    assert annotation_digest(tmp_path) == ENGLISH_ANNOTATIONS_SHA256
    assert "languages" not in load(tmp_path / "corpus.json")


def test_languages_change_the_texts_only_and_the_same_seed_gives_the_same_bytes(bilingual, tmp_path):
    generate(DemoCorpusSpec(tmp_path / "again", images=40, videos=6, seed=5, eval_fraction=0.25, languages=MIXED,
                            eval_languages={"zh": 1.0}), progress=False)
    generate(DemoCorpusSpec(tmp_path / "english", images=40, videos=6, seed=5, eval_fraction=0.25), progress=False)
    assert annotation_digest(tmp_path / "again") == annotation_digest(bilingual)
    assert media_digests(tmp_path / "again") == media_digests(bilingual) == media_digests(tmp_path / "english")
    english = load(tmp_path / "english/annotations/coco_instances_train.json")
    assert load(bilingual / "annotations/coco_instances_train.json") == english  # boxes and categories too


def _language(captions: list[str]) -> str:
    kinds = ["zh" if CJK_TEXT.match(c) else "en" if c.isascii() else "mixed" for c in captions]
    assert "mixed" not in kinds, captions
    half = len(kinds) // 2
    if kinds == ["en"] * half + ["zh"] * half and half:
        return "en+zh"
    assert len(set(kinds)) == 1, captions
    return kinds[0]


def test_each_image_has_its_texts_in_the_drawn_languages_and_chinese_names_what_is_drawn(bilingual, tmp_path):
    generate(DemoCorpusSpec(tmp_path, images=40, videos=6, seed=5, eval_fraction=0.25), progress=False)
    summary = load(bilingual / "corpus.json")
    counts = {split: {} for split in ("train", "eval")}
    for split in ("train", "eval"):
        english = {}
        for a in load(tmp_path / f"annotations/coco_captions_{split}.json")["annotations"]:
            english.setdefault(a["image_id"], []).append(a["caption"])
        captions = {}
        for a in load(bilingual / f"annotations/coco_captions_{split}.json")["annotations"]:
            captions.setdefault(a["image_id"], []).append(a["caption"])
        images = {i["id"]: i for i in load(bilingual / f"annotations/coco_instances_{split}.json")["images"]}
        instances = load(bilingual / f"annotations/coco_instances_{split}.json")["annotations"]
        phrases = {r["region_id"]: r for image in load(bilingual / f"annotations/vg_regions_{split}.json")
                   for r in image["regions"]}
        by_box = {}
        for region in phrases.values():
            by_box.setdefault((region["image_id"], region["x"], region["y"], region["width"], region["height"]), []).append(
                region["phrase"])
        for image_id, texts in captions.items():
            language = _language(texts)
            counts[split][language] = counts[split].get(language, 0) + 1
            if language != "zh":  # the English captions are the English corpus's
                assert texts[:len(english[image_id])] == english[image_id]
            if language != "en":
                assert len(texts) == len(english[image_id]) * (2 if language == "en+zh" else 1)
        for ann in instances:
            image = images[ann["image_id"]]
            x, y, w, h = ann["bbox"]
            row, col = min(int(3 * (y + h / 2) / image["height"]), 2), min(int(3 * (x + w / 2) / image["width"]), 2)
            kind = {1: "circle", 2: "square", 3: "triangle", 4: "diamond", 5: "star"}[ann["category_id"]]
            expected = (f"{PLACE_ZH[row][col]}那个{SIZE_ZH[ann['attributes']['size']]}的"
                        f"{COLOUR_ZH[ann['attributes']['colour']]}{KIND_ZH[kind]}")
            region_phrases = by_box[(ann["image_id"], x, y, w, h)]
            language = _language(captions[ann["image_id"]])
            assert (expected in region_phrases) == (language != "en")
            assert len(region_phrases) == (2 if language == "en+zh" else 1)
    assert counts["eval"] == {"zh": 10}
    assert set(counts["train"]) == {"en", "zh", "en+zh"}
    assert summary["languages"]["train"]["images"] == counts["train"]
    refs = pickle.loads((bilingual / "annotations/refcoco/refs(unc).p").read_bytes())
    for ref in refs:
        chinese = [s for s in ref["sentences"] if not s["raw"].isascii()]
        for sentence in chinese:
            assert CJK_TEXT.match(sentence["raw"]) and sentence["tokens"] == list(sentence["raw"])
    assert all(len(ref["sentences"]) == 1 for ref in refs if ref["split"] == "val")
    for line in (bilingual / "annotations/videos_eval.jsonl").read_text(encoding="utf-8").splitlines():
        assert all(CJK_TEXT.match(c) and "移动" in c for c in json.loads(line)["captions"])


def test_the_command_takes_languages_and_refuses_unknown_ones(tmp_path, capsys):
    assert shards_main(["demo", "--out", str(tmp_path / "a"), "--images", "3", "--videos", "0", "--quiet",
                        "--languages", "zh"]) == 0
    texts = [a["caption"] for a in load(tmp_path / "a/annotations/coco_captions_train.json")["annotations"]]
    assert texts and all(CJK_TEXT.match(t) for t in texts)
    for flag, value, message in (("--languages", "en=1,fr=1", "unknown language 'fr'"),
                                 ("--eval-languages", "zh=x", "the share of 'zh' is not a number"),
                                 ("--languages", "zh=0", "needs a language with a share above 0")):
        assert shards_main(["demo", "--out", str(tmp_path / "b"), flag, value]) == 2
        assert message in capsys.readouterr().err


def test_cleaning_drops_full_width_punctuation_and_keeps_cjk_runs_whole():
    assert clean_caption("两个并排的形状，一个“小的”星形、和一个。", 40) == "两个并排的形状 一个 小的 星形 和一个"
    assert clean_caption("A red circle, on the LEFT.", 40) == "a red circle on the left"
    assert clean_caption("红色圆形 on the left", 2) == "红色圆形 on"


def test_a_flip_swaps_left_and_right_in_chinese_too():
    assert swap_sides("从左到右依次是红色圆形和蓝色星形") == "从右到左依次是红色圆形和蓝色星形"
    assert swap_sides("左上角那个大的红色圆形在右边") == "右上角那个大的红色圆形在左边"
    assert swap_sides("a Left turn, the rightmost") == "a Right turn, the leftmost"


@pytest.fixture(scope="module")
def mixed_texts(bilingual) -> list[str]:
    texts = []
    for split in ("train", "eval"):
        texts += [a["caption"] for a in load(bilingual / f"annotations/coco_captions_{split}.json")["annotations"]]
        texts += [r["phrase"] for image in load(bilingual / f"annotations/vg_regions_{split}.json") for r in image["regions"]]
    return [clean_caption(t, TextSpec.max_words) for t in texts]


@pytest.fixture(scope="module")
def unigram(mixed_texts, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("unigram") / "tokenizer"
    train_tokenizer(mixed_texts, "unigram", 160, max_piece_length=6).save_pretrained(str(folder))
    return folder


def test_a_unigram_tokenizer_of_english_and_chinese_captions_round_trips_them(unigram, mixed_texts):
    tokenizer = AutoTokenizer.from_pretrained(str(unigram))
    assert sum(not t.isascii() for t in mixed_texts) > 50 and sum(t.isascii() for t in mixed_texts) > 50
    for text in mixed_texts:
        ids = tokenizer(text)["input_ids"]
        assert tokenizer.unk_token_id not in ids, text
        assert tokenizer.decode(ids, skip_special_tokens=True) == text
    pieces = [p.lstrip("▁") for p in tokenizer.get_vocab()]
    assert max(len(p) for p in pieces if not p.startswith("<")) <= 6
    assert any(len(p) >= 2 and CJK_TEXT.match(p) for p in pieces)  # multi-character Chinese pieces


def test_unigram_pieces_never_join_chinese_to_latin_text_or_digits(tmp_path):
    # A product name glued to Chinese, as in web captions: without the split by script the
    # trainer learns pieces such as '▁新iphone手机'.
    texts = [f"{a}iphone手机{b}" for a in ("新", "旧", "买", "卖", "修") for b in ("壳", "套", "膜", "贴", "")] * 4
    tokenizer = train_tokenizer(texts, "unigram", 60)
    mixed = [p for p in tokenizer.get_vocab() if re.search(r"[a-z0-9]", p) and re.search(r"[\u4e00-\u9fff]", p)]
    assert mixed == []
    assert "手机" in tokenizer.tokenize("新iphone手机壳")
    assert tokenizer.decode(tokenizer("新iphone手机壳")["input_ids"], skip_special_tokens=True) == "新iphone手机壳"


def test_whole_word_masking_treats_each_chinese_piece_as_a_word(unigram):
    spec = TextSpec(tokenizer=str(unigram), max_tokens=64, mask_prob=0.5, max_masks=12, span_prob=0.0)
    encoder = TextEncoder(spec)
    caption = "从左到右依次是红色圆形、蓝色正方形和黄色星形"
    tokens = encoder.backend.encode(clean_caption(caption, 40), add_special_tokens=False).tokens
    assert len(tokens) >= 6 and all(encoder.is_word_start(t, i) for i, t in enumerate(tokens))
    masked = [int((encoder.encode(caption, random.Random(seed))["mlm_labels"] != -100).sum()) for seed in range(5)]
    # Half of the pieces: a clause taken as one '▁' word could only ever lose a single token.
    assert masked == [round(len(tokens) * 0.5)] * 5
    english = encoder.backend.encode("a large red circle", add_special_tokens=False).tokens
    starts = [encoder.is_word_start(t, i) for i, t in enumerate(english)]
    assert sum(starts) == 4 and starts == [t.startswith("▁") for t in english]


def test_an_xlm_roberta_tower_trains_mlm_on_a_chinese_batch(unigram):
    encoder = TextEncoder(TextSpec(tokenizer=str(unigram), max_tokens=24, mask_prob=0.3))
    captions = ["一个大的红色圆形在左上角", "左上角那个大的红色圆形", "从左到右依次是红色圆形、蓝色正方形和黄色星形",
                "两个并排的形状，一个小的黄色星形和一个大的蓝色三角形"]
    rows = [encoder.encode(c, random.Random(i)) for i, c in enumerate(captions)]
    batch = {k: torch.from_numpy(np.stack([r[k] for r in rows])) for k in rows[0]}
    batch["images"] = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    assert (batch["text_ids"][:, 0] == 0).all() and encoder.pad_id == 1 and encoder.mask_id == 4
    config = {
        "vision": {"name": "beitv2_base_patch16_224", "image_size": 64, "timm_kwargs": {"embed_dim": 32, "depth": 1, "num_heads": 2}},
        "text": {"kind": "xlm-roberta", "vocab_size": 160, "hidden_size": 32, "num_layers": 3, "fusion_start": 2,
                 "num_heads": 2, "intermediate_size": 64, "max_position_embeddings": 26, "type_vocab_size": 1,
                 "pad_token_id": 1, "layer_norm_eps": 1e-5},
        "embed_dim": 16,
    }
    torch.manual_seed(0)
    model = create_model(config)
    assert type(model.text).__name__ == "XLMRobertaModel"
    assert tokenizer_problem(model.config.text, encoder.pad_id) is None
    # RoBERTa positions: the first token at pad_token_id + 1, padding at pad_token_id.
    positions = model.text.embeddings.create_position_ids_from_input_ids(batch["text_ids"], 1)
    lengths = batch["text_mask"].sum(dim=1)
    for row, length in zip(positions, lengths):
        assert row[:length].tolist() == list(range(2, 2 + int(length))) and (row[length:] == 1).all()
    out = Task.for_model(model)({"image": batch})
    mlm = out["losses"]["image"]["mlm"]
    assert torch.isfinite(out["loss"]) and torch.isfinite(mlm) and mlm > 0
    # <s> (id 0) is a real token; <pad> (id 1) has the zero padding row.
    words = model.text.embeddings.word_embeddings
    assert words.padding_idx == 1 and (words.weight[1] == 0).all() and (words.weight[0] != 0).any()
    out["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_a_tower_whose_padding_or_positions_do_not_fit_the_tokenizer_is_refused():
    from training.model.model_config import TextConfig
    from training.engine.run_config import _check_across_sections

    # An XLM-R tokenizer pads with 1; a tower left at pad_token_id 0 would take <s> for padding.
    xlmr = TextConfig(kind="xlm-roberta", vocab_size=160, max_position_embeddings=66, pad_token_id=0)
    assert "set text.pad_token_id: 1" in tokenizer_problem(xlmr, 1)
    xlmr.pad_token_id = 1
    assert tokenizer_problem(xlmr, 1) is None
    # Positions 2 .. max_tokens + 1: 64 tokens fit 66 position embeddings, 65 do not.
    model = SimpleNamespace(text=xlmr, vision=None)
    _check_across_sections(model, SimpleNamespace(text=SimpleNamespace(max_tokens=64), corpora=[]))
    with pytest.raises(ConfigError, match=r"data.text.max_tokens: 65 exceeds the model's text.max_position_embeddings "
                                          r"\(66\) less the xlm-roberta position offset \(text.pad_token_id \+ 1 = 2\)"):
        _check_across_sections(model, SimpleNamespace(text=SimpleNamespace(max_tokens=65), corpora=[]))
    bert = TextConfig(kind="bert", vocab_size=80, max_position_embeddings=40)
    _check_across_sections(SimpleNamespace(text=bert, vision=None), SimpleNamespace(text=SimpleNamespace(max_tokens=40), corpora=[]))
