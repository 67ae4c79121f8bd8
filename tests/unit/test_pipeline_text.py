"""Caption cleaning, tokenisation and MLM masking as X²-VLM does them."""
from __future__ import annotations

import filecmp
import random
from collections import Counter

import numpy as np
import pytest

from data_pipeline.spec import TextSpec
from data_pipeline.text import TextEncoder, clean_caption
from data_pipeline.text.cleaning import BadText
from data_pipeline.text.demo_tokenizer import build_demo_tokenizer
from data_pipeline.text.masking import IGNORE_INDEX, mask_tokens
from pipeline_helpers import demo_tokenizer  # noqa: F401  (fixture)


def test_clean_caption():
    assert clean_caption("A Man's  dog, (running)!  on a half-pipe/ramp.", 40) == "a man s dog running on a half pipe ramp"
    assert clean_caption("<person> rides a bike", 40) == "person rides a bike"
    assert clean_caption("one two three four", 3) == "one two three"
    with pytest.raises(BadText):
        clean_caption(" ?!. ", 40)


def test_demo_tokenizer_is_deterministic(demo_corpus, demo_tokenizer, tmp_path):
    again = build_demo_tokenizer(demo_corpus, tmp_path / "again")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert filecmp.cmp(demo_tokenizer / name, again / name, shallow=False)


def test_encoding_layout(demo_tokenizer):
    encoder = TextEncoder(TextSpec(str(demo_tokenizer), max_tokens=12))
    t = encoder.tokenizer
    out = encoder.encode("A large red circle, moving upward!", random.Random(0))
    tokens = t.convert_ids_to_tokens([int(i) for i in out["text_ids"]])
    assert tokens[0] == "[CLS]" and "[SEP]" in tokens
    n = int(out["text_mask"].sum())
    assert tokens[n - 1] == "[SEP]" and all(tok == "[PAD]" for tok in tokens[n:])
    assert len(tokens) == 12 and n == 12  # truncated to max_tokens, [SEP] kept
    assert t.convert_tokens_to_string(tokens[1:n - 1]).startswith("a large red circle moving")
    for name in ("text_ids", "text_mask", "mlm_ids", "mlm_labels"):
        assert out[name].dtype == np.int64 and out[name].shape == (12,)


def word_spans(word_start: list[bool]) -> list[range]:
    starts = [i for i, s in enumerate(word_start) if s] + [len(word_start)]
    return [range(a, b) for a, b in zip(starts, starts[1:])]


def test_mask_tokens_rules():
    spec = TextSpec("unused", mask_prob=0.5, max_masks=12, span_prob=0.2, span_max=3, whole_word=True)
    # [CLS] + 30 tokens in words of 1-3 pieces + [SEP]
    ids = [2] + list(range(10, 40)) + [3]
    pieces = [1, 2, 3, 1, 1, 2, 1, 3, 1, 1, 2, 1, 1, 3, 1, 2, 1, 1, 1, 1]
    word_start = [True]
    for p in pieces:
        word_start += [True] + [False] * (p - 1)
    word_start += [True]
    assert len(word_start) == len(ids)
    random_ids = list(range(10, 60))
    counts, replaced, kept, masks = Counter(), 0, 0, 0
    spans = word_spans(word_start[:-1])[1:]
    for seed in range(400):
        masked, labels = mask_tokens(ids, word_start, random.Random(seed), spec, mask_id=4, random_ids=random_ids)
        chosen = [i for i, label in enumerate(labels) if label != IGNORE_INDEX]
        assert 1 <= len(chosen) <= 12
        assert 0 not in chosen and len(ids) - 1 not in chosen  # never [CLS] or [SEP]
        for i in range(len(ids)):
            if i in chosen:
                assert labels[i] == ids[i]
            else:
                assert masked[i] == ids[i]
        for span in spans:  # whole words: all pieces of a word or none
            inside = [i in chosen for i in span]
            assert all(inside) or not any(inside), (seed, list(span), chosen)
        counts[len(chosen)] += 1
        for i in chosen:
            masks += 1
            replaced += masked[i] == 4
            kept += masked[i] == ids[i]
    # round(30 * 0.5) = 15 > 12: the cap binds, and whole words can leave it one or two short.
    assert counts[12] > 200 and min(counts) >= 10
    assert 0.75 < replaced / masks < 0.85
    assert 0.05 < kept / masks < 0.15


def test_mask_spans_and_short_texts():
    spec = TextSpec("unused", mask_prob=0.5, max_masks=12, span_prob=1.0, span_max=3, whole_word=False)
    ids = [2] + list(range(10, 22)) + [3]
    word_start = [True] * len(ids)
    # With span_prob 1, every choice is a run of 2 or 3 tokens: some chosen token has a chosen neighbour.
    for seed in range(50):
        _, labels = mask_tokens(ids, word_start, random.Random(seed), spec, 4, list(range(10, 30)))
        chosen = [i for i, label in enumerate(labels) if label != IGNORE_INDEX]
        assert len(chosen) == 6 or len(chosen) == 5
        assert any(i + 1 in chosen for i in chosen)
    # One text token: exactly it is masked.
    _, labels = mask_tokens([2, 17, 3], [True] * 3, random.Random(0), TextSpec("unused"), 4, [17])
    assert labels == [IGNORE_INDEX, 17, IGNORE_INDEX]


def test_encoder_masks_whole_words_with_demo_vocabulary(demo_tokenizer):
    encoder = TextEncoder(TextSpec(str(demo_tokenizer), max_tokens=40))
    caption = "a small green star moving downward and two shapes side by side"
    tokens = encoder.tokenizer.tokenize(caption)
    assert any(t.startswith("##") for t in tokens)  # the demo vocabulary splits rarer words
    for seed in range(50):
        out = encoder.encode(caption, random.Random(seed))
        pieces = encoder.tokenizer.convert_ids_to_tokens([int(i) for i in out["text_ids"]])
        chosen = {i for i, label in enumerate(out["mlm_labels"]) if label != IGNORE_INDEX}
        for i in chosen:
            if pieces[i].startswith("##"):
                assert i - 1 in chosen
            if i + 1 < len(pieces) and pieces[i + 1].startswith("##"):
                assert i + 1 in chosen


def byte_level_bpe_tokenizer(texts: list[str], out) -> str:
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=300, special_tokens=specials)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>",
                                      pad_token="<pad>", unk_token="<unk>", mask_token="<mask>")
    wrapped.save_pretrained(out)
    return str(out)


def test_encoder_tokenises_as_the_transformers_tokenizer(demo_tokenizer, tmp_path):
    # The encoder calls the Rust tokenizer directly; the ids must be the wrapper's.
    texts = ["A large red circle, moving upward!", "the small blue square left of the star",
             "Ünïcode café naïve — dash", "x" * 90, "two  spaces\tand tab"]
    bpe = byte_level_bpe_tokenizer(texts * 3, tmp_path / "bpe")
    for path in (str(demo_tokenizer), bpe):
        encoder = TextEncoder(TextSpec(path, max_tokens=40))
        for text in texts:
            cleaned = clean_caption(text, 30)
            expected = encoder.tokenizer(cleaned, add_special_tokens=False)["input_ids"][:38]
            out = encoder.encode(text, random.Random(0))
            n = int(out["text_mask"].sum())
            assert out["text_ids"][1:n - 1].tolist() == expected, (path, text)
            assert out["text_ids"][0] == encoder.cls_id and out["text_ids"][n - 1] == encoder.sep_id


def test_a_tokenizer_that_names_custom_code_is_refused(demo_tokenizer, tmp_path):
    import json
    import shutil

    from data_pipeline.config import ConfigError

    custom = tmp_path / "custom"
    shutil.copytree(demo_tokenizer, custom)
    config = json.loads((custom / "tokenizer_config.json").read_text())
    config["auto_map"] = {"AutoTokenizer": ["someone/repo--tok.MyTokenizer", None]}
    (custom / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=r"^text\.tokenizer: .*tokenizer_config\.json names custom tokenizer code "
                                          r"\(auto_map: .*only transformers' own tokenizer classes are loaded"):
        TextEncoder(TextSpec(tokenizer=str(custom)))
