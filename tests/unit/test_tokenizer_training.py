"""Tokenizers trained offline from captions (`x2vlm-shards tokenizer`, data_pipeline.text.tokenizer_training)."""
from __future__ import annotations

import filecmp
import json
import random
import shutil
from pathlib import Path

import pytest
from transformers import AutoTokenizer, BertTokenizerFast, XLMRobertaTokenizerFast

from data_pipeline.shard_tools import tokenizer_command
from data_pipeline.shards import main
from data_pipeline.spec import TextSpec
from data_pipeline.text import TextEncoder, clean_caption
from data_pipeline.text import tokenizer_training
from data_pipeline.text.tokenizer_training import VocabularyTooSmall, train_tokenizer, whole_word_vocabulary

KINDS = ("wordpiece", "unigram")
SPECIALS = {"wordpiece": (BertTokenizerFast, ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]),
            "unigram": (XLMRobertaTokenizerFast, ["<s>", "<pad>", "</s>", "<unk>", "<mask>"])}
VOCAB_SIZE = 150


def demo_annotation_texts(corpus: Path, split: str = "train") -> list[str]:
    """The texts a build of the demo's image and video annotations keeps, read straight from the
    files (not through the shard readers): captions, one category name per instance box, region
    phrases, video captions."""
    ann = corpus / "annotations"
    captions = json.loads((ann / f"coco_captions_{split}.json").read_text())
    instances = json.loads((ann / f"coco_instances_{split}.json").read_text())
    names = {c["id"]: c["name"] for c in instances["categories"]}
    texts = [a["caption"] for a in captions["annotations"]]
    texts += [names[a["category_id"]] for a in instances["annotations"]]
    texts += [r["phrase"] for image in json.loads((ann / f"vg_regions_{split}.json").read_text()) for r in image["regions"]]
    texts += [c for line in (ann / f"videos_{split}.jsonl").read_text().splitlines() for c in json.loads(line)["captions"]]
    return texts


@pytest.fixture(scope="module")
def captions(demo_corpus) -> list[str]:
    """Every text of the small demo corpus, cleaned as training cleans it."""
    return [clean_caption(t, TextSpec.max_words)
            for split in ("train", "eval") for t in demo_annotation_texts(demo_corpus, split)]


@pytest.fixture(scope="module", params=KINDS)
def trained(request, captions, tmp_path_factory):
    """(kind, the tokenizer as trained, its folder moved away from where it was written)."""
    tokenizer = train_tokenizer(captions, request.param, VOCAB_SIZE)
    written = tmp_path_factory.mktemp("written") / "tokenizer"
    tokenizer.save_pretrained(str(written))
    moved = tmp_path_factory.mktemp("moved") / "elsewhere"
    shutil.move(str(written), str(moved))
    return request.param, tokenizer, moved


def test_a_trained_tokenizer_loads_from_a_moved_folder_and_round_trips_every_demo_caption(trained, captions):
    kind, tokenizer, folder = trained
    loaded = AutoTokenizer.from_pretrained(str(folder))
    assert isinstance(loaded, SPECIALS[kind][0]) and loaded.is_fast
    assert len(loaded) == len(tokenizer) <= VOCAB_SIZE
    for caption in captions:
        ids = loaded(caption, add_special_tokens=False)["input_ids"]
        assert ids == tokenizer(caption, add_special_tokens=False)["input_ids"], caption  # what was trained is what loads
        assert loaded.unk_token_id not in ids, caption
        assert loaded.decode(ids) == caption


def test_a_trained_tokenizer_has_the_special_tokens_the_loader_needs(trained):
    kind, _, folder = trained
    loaded = AutoTokenizer.from_pretrained(str(folder))
    specials = SPECIALS[kind][1]
    assert loaded.convert_ids_to_tokens(list(range(len(specials)))) == specials
    pad, unk, cls, sep, mask = ((0, 1, 2, 3, 4) if kind == "wordpiece" else (1, 3, 0, 2, 4))
    assert (loaded.pad_token_id, loaded.unk_token_id, loaded.cls_token_id, loaded.sep_token_id, loaded.mask_token_id) == (
        pad, unk, cls, sep, mask)
    assert loaded("a red star")["input_ids"][0] == cls and loaded("a red star")["input_ids"][-1] == sep


def test_a_trained_tokenizer_works_in_the_text_encoder(trained, captions):
    kind, tokenizer, folder = trained
    encoder = TextEncoder(TextSpec(str(folder), max_tokens=24))
    caption = max(captions, key=len)
    out = encoder.encode(caption.upper() + "!", random.Random(0))
    n = int(out["text_mask"].sum())
    ids = out["text_ids"][:n].tolist()
    assert ids[0] == encoder.cls_id and ids[-1] == encoder.sep_id
    assert ids[1:-1] == tokenizer(caption, add_special_tokens=False)["input_ids"][:22]
    assert all(i == encoder.pad_id for i in out["text_ids"][n:])
    masked = out["mlm_labels"] != -100
    assert masked.any() and (out["mlm_ids"][masked] != out["mlm_labels"][masked]).any()
    # Whole-word masking sees word starts: '##' continuations (wordpiece), '▁' starts (unigram).
    tokens = tokenizer.convert_ids_to_tokens(ids[1:-1])
    starts = [encoder.is_word_start(t, i) for i, t in enumerate(tokens)]
    assert sum(starts) == len(tokenizer.decode(ids[1:-1]).split())


@pytest.mark.parametrize("kind", KINDS)
def test_the_same_texts_give_the_same_vocabulary(kind, captions, tmp_path):
    # tokenizers' trainers number tokens in hash-map order: without the fixes, runs differ. Rare
    # characters with equal scores make the unigram trainer's order differ too.
    texts = captions + [f"a {c}" for c in "0123456789jqxz"]
    runs = [train_tokenizer(texts, kind, VOCAB_SIZE) for _ in range(3)]
    vocabularies = [sorted(t.get_vocab().items(), key=lambda item: item[1]) for t in runs]
    assert vocabularies[0] == vocabularies[1] == vocabularies[2]
    if kind == "wordpiece":  # byte-identical files; unigram scores agree to ~1e-10 (see the module)
        for i, tokenizer in enumerate(runs[:2]):
            tokenizer.save_pretrained(str(tmp_path / str(i)))
        for name in ("tokenizer.json", "tokenizer_config.json"):
            assert filecmp.cmp(tmp_path / "0" / name, tmp_path / "1" / name, shallow=False)
    else:
        tokens = [token for token, _ in vocabularies[0]]
        assert tokens[5:] == sorted(tokens[5:])


def test_unigram_characters_added_back_get_their_scores_in_character_order():
    # As UnigramTrainer's finalize leaves them: dropped characters at the lowest score plus
    # 1e-4 steps, in hash order ('q' and 'z' swapped here), then a piece scored independently.
    lowest, step = -14.25, 0.0
    added = {}
    for char in ("z", "$", "q"):
        added[char] = lowest + step
        step += 0.0001
    scores = {"ab": -3.5, "a": -2.0, "b": -9.0, **added, "x": -14.0}
    tokenizer_training._order_added_characters(scores)
    assert [scores[c] for c in ("$", "q", "z")] == [lowest, lowest + 0.0001, lowest + 0.0001 + 0.0001]
    assert (scores["ab"], scores["a"], scores["b"], scores["x"]) == (-3.5, -2.0, -9.0, -14.0)


def test_whole_word_vocabulary_counts_characters_then_words():
    # Words: the x2, cat x3, dog, a, naps, ',' and '.'; 13 characters.
    chars = [",", ".", "a", "c", "d", "e", "g", "h", "n", "o", "p", "s", "t"]
    vocab = whole_word_vocabulary(["The cat, the dog.", "a CAT", "cat naps"], 5 + 2 * len(chars) + 3)
    assert vocab == (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + [f"##{c}" for c in chars]
                     + ["cat", "the", "dog"])  # by count, then spelling: dog before naps


@pytest.mark.parametrize("kind", KINDS)
def test_a_vocabulary_too_small_for_the_characters_is_refused(kind, captions):
    with pytest.raises(VocabularyTooSmall):
        train_tokenizer(captions, kind, 12)


def test_the_command_names_the_kinds_the_library_trains():
    assert tokenizer_command.KINDS == tokenizer_training.KINDS


# The command -----------------------------------------------------------------------------

def _command(out: Path, kind: str, *inputs: str) -> list[str]:
    return ["tokenizer", "--kind", kind, "--vocab-size", str(VOCAB_SIZE), "--out", str(out), "--quiet", *inputs]


@pytest.mark.parametrize("kind", KINDS)
def test_the_command_gives_the_same_vocabulary_from_shards_and_from_their_annotation_files(kind, engine_shards, demo_corpus,
                                                                                           tmp_path, capsys):
    ann = demo_corpus / "annotations"
    from_shards = _command(tmp_path / "shards", kind, "--shards", str(engine_shards / "image"),
                           "--shards", f"{engine_shards}/video/*.tar", "--shards", str(engine_shards / "region"))
    from_annotations = _command(tmp_path / "annotations", kind,
                                "--annotations", f"coco-captions:{ann / 'coco_captions_train.json'}",
                                "--annotations", f"coco-instances:{ann / 'coco_instances_train.json'}",
                                "--annotations", f"vg-regions:{ann / 'vg_regions_train.json'}",
                                "--annotations", f"video-jsonl:{ann / 'videos_train.jsonl'}",
                                "--annotations", f"refcoco:{ann / 'refcoco' / 'refs(unc).p'}", "--refcoco-split", "train")
    assert main(from_shards) == 0 and main(from_annotations) == 0
    report = capsys.readouterr().out
    assert f"{kind} tokenizer of " in report and "skipped: none" in report
    vocabularies = [AutoTokenizer.from_pretrained(str(tmp_path / name)).get_vocab() for name in ("shards", "annotations")]
    assert vocabularies[0] == vocabularies[1]
    if kind == "wordpiece":
        assert filecmp.cmp(tmp_path / "shards" / "tokenizer.json", tmp_path / "annotations" / "tokenizer.json",
                           shallow=False)

    # The texts the command read are the files' texts, cleaned: compare with the library on
    # texts read independently (RefCOCO left out).
    assert main(_command(tmp_path / "images", kind, "--shards", str(engine_shards / "image"),
                         "--shards", str(engine_shards / "video"))) == 0
    texts = [clean_caption(t, TextSpec.max_words) for t in demo_annotation_texts(demo_corpus)]
    expected = train_tokenizer(texts, kind, VOCAB_SIZE).get_vocab()
    assert AutoTokenizer.from_pretrained(str(tmp_path / "images")).get_vocab() == expected


def test_whole_words_and_max_words_reach_the_vocabulary(demo_corpus, tmp_path):
    ann = demo_corpus / "annotations"
    args = _command(tmp_path / "words", "wordpiece", "--annotations", f"jsonl:{ann / 'captions_train.jsonl'}",
                    "--whole-words", "--max-words", "2")
    assert main(args) == 0
    texts = []
    for line in (ann / "captions_train.jsonl").read_text().splitlines():
        texts += json.loads(line)["captions"]
    expected = whole_word_vocabulary([" ".join(clean_caption(t, 1000).split()[:2]) for t in texts], VOCAB_SIZE)
    loaded = AutoTokenizer.from_pretrained(str(tmp_path / "words"))
    assert loaded.convert_ids_to_tokens(list(range(len(loaded)))) == expected


def test_help_lists_the_kinds_and_inputs(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["tokenizer", "--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    assert all(word in text for word in ("wordpiece", "unigram", "--shards", "FORMAT:FILE", "coco-captions", "--vocab-size"))


def test_bad_inputs_exit_2_naming_what_is_wrong(demo_corpus, tmp_path, capsys):
    ann = demo_corpus / "annotations"
    coco = ann / "coco_captions_train.json"
    out = tmp_path / "out"
    garbage = tmp_path / "broken-000000.tar"
    garbage.write_bytes(b"this is not a tar file" * 40)
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"image": "a.jpg", "captions": ["?!", "..."]}) + "\n")
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    cases = [
        (_command(out, "wordpiece"), "give --shards or --annotations"),
        (_command(out, "wordpiece", "--annotations", f"coco-captions:{tmp_path / 'missing.json'}"),
         f"annotation file not found: {tmp_path / 'missing.json'}"),
        (_command(out, "wordpiece", "--annotations", f"vg-regions:{coco}"), f"{coco}: "),
        (_command(out, "wordpiece", "--shards", f"{tmp_path}/nothing-*.tar"), f"no shard matches '{tmp_path}/nothing-*.tar'"),
        (_command(out, "wordpiece", "--shards", str(garbage)), f"shard {garbage} cannot be read"),
        (_command(out, "unigram", "--annotations", f"jsonl:{empty}"), "the inputs hold no caption or region text"),
        (_command(out, "unigram", "--annotations", f"coco-captions:{coco}", "--whole-words"),
         "--whole-words is for --kind wordpiece"),
        (_command(not_a_dir, "wordpiece", "--annotations", f"coco-captions:{coco}"),
         f"--out {not_a_dir} exists and is not a directory"),
        (_command(out, "unigram", "--annotations", f"coco-captions:{coco}", "--vocab-size", "9"),
         "--vocab-size: vocab_size 9 is below the"),
        (_command(out, "wordpiece", "--annotations", f"coco-captions:{coco}", "--vocab-size", "0"),
         "--vocab-size must be at least 1, got 0"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("x2vlm-shards tokenizer: error: ") and message in err, (argv, err)
    assert not out.exists()

    for value in ("coco-foo:x.json", "captions.json"):  # no such format; no format at all
        with pytest.raises(SystemExit) as stop:
            main(_command(out, "wordpiece", "--annotations", value))
        assert stop.value.code == 2 and f"'{value}': expected FORMAT:FILE" in capsys.readouterr().err
