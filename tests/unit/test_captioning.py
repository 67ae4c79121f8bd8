"""Captioning: the causal mode of the text and fusion layers, the image/lm loss, greedy and beam
generation (training/model/{causal,generation}.py, training/objectives/lm.py)."""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
import yaml

from data_pipeline.config import ConfigError
from tiny_batches import image_batch
from training.objectives.lm import next_token_labels
from training.model import CONFIG_DIR, create_model
from training.model.causal import causal_mask
from training.model.generation import generate
from training.objectives.settings import parse_loss_settings
from training.tasks.task import Task

BOS, EOS, PAD, MASK = 1, 2, 0, 3
BANNED = (PAD, BOS, MASK)


def _small_vocab_model(vocab: int = 10, seed: int = 0):
    """The tiny model with a vocabulary small enough to enumerate its captions."""
    config = yaml.safe_load((CONFIG_DIR / "tiny.yaml").read_text())
    config["text"]["vocab_size"] = vocab
    torch.manual_seed(seed)
    model = create_model(config, load_pretrained=False).eval()
    # Larger output weights: the head of a fresh model gives nearly uniform next-token
    # probabilities, where greedy and beam search could not be told apart.
    with torch.no_grad():
        model.mlm_head.bias.normal_(0, 2.0)
        model.text.embeddings.word_embeddings.weight.normal_(0, 1.0)
    return model


def test_causal_mask_by_hand():
    mask = causal_mask(torch.tensor([[1, 1, 1], [1, 1, 0]]))
    assert mask.shape == (2, 1, 3, 3)
    assert mask[0, 0].int().tolist() == [[1, 0, 0], [1, 1, 0], [1, 1, 1]]
    assert mask[1, 0].int().tolist() == [[1, 0, 0], [1, 1, 0], [1, 1, 0]]


def test_decoder_positions_do_not_see_later_tokens_but_see_the_image():
    model = create_model("tiny", load_pretrained=False).eval()
    batch = image_batch(count=2, length=8)
    vision = model.encode_image(batch["images"])
    ids, mask = batch["text_ids"][1:], batch["text_mask"][1:]
    changed = ids.clone()
    changed[:, 5:] = 1234
    with torch.no_grad():
        before = model.decode(vision.tokens[1:], vision.mask[1:], ids, mask)
        after = model.decode(vision.tokens[1:], vision.mask[1:], changed, mask)
        other_image = model.decode(vision.tokens[:1], vision.mask[:1], ids, mask)
        bidirectional = model.fuse(vision.tokens[1:], vision.mask[1:], model.text_hidden(ids, mask), mask)
    torch.testing.assert_close(before[:, :5], after[:, :5])
    assert not torch.allclose(before[:, 5:], after[:, 5:])
    assert not torch.allclose(before[:, :5], other_image[:, :5])
    # The encoder (ITC, ITM, MLM) stays bidirectional: its early positions see the later tokens.
    assert not torch.allclose(bidirectional[:, :5], before[:, :5])


def test_next_token_labels_by_hand():
    ids = torch.tensor([[101, 7, 8, 102, 0], [101, 9, 102, 0, 0]])
    mask = (ids != 0).long()
    assert next_token_labels(ids, mask).tolist() == [[7, 8, 102, -100, -100], [9, 102, -100, -100, -100]]


def _task(model, image_weights: dict | None = None) -> Task:
    return Task(model, parse_loss_settings({"weights": {"image": image_weights} if image_weights else {}}))


def test_image_lm_loss_is_off_by_default_and_is_the_next_token_cross_entropy():
    model = create_model("tiny", load_pretrained=False)
    assert parse_loss_settings(model.config.losses).weights["image"]["lm"] == 0.0
    batch = image_batch()
    assert "lm" not in _task(model)({"image": batch})["losses"]["image"]
    out = _task(model, {"itc": 0.0, "itm": 0.0, "mlm": 0.0, "lm": 2.0, "itc_cons": 0.0})({"image": batch})
    vision = model.encode_image(batch["images"])
    logits = model.mlm_head(model.decode(vision.tokens, vision.mask, batch["text_ids"], batch["text_mask"]))
    # Independently: position t of each text predicts its token t + 1, over the real tokens.
    terms = [F.cross_entropy(logits[i, t], batch["text_ids"][i, t + 1], reduction="sum")
             for i in range(len(logits)) for t in range(logits.shape[1] - 1) if batch["text_mask"][i, t + 1]]
    expected = torch.stack(terms).mean()
    torch.testing.assert_close(out["losses"]["image"]["lm"], expected)
    torch.testing.assert_close(out["loss"], 2.0 * expected)
    out["loss"].backward()
    assert model.fusion.layer[0].crossattention.self.query.weight.grad.abs().sum() > 0
    assert model.vision_proj.weight.grad is None or model.vision_proj.weight.grad.abs().sum() == 0


def test_itc_consistency_is_off_by_default_and_is_the_consistency_of_the_batch_features():
    from training.objectives.itc_consistency import consistency_loss

    model = create_model("tiny", load_pretrained=False)
    batch = image_batch()
    assert "itc_cons" not in _task(model)({"image": batch})["losses"]["image"]
    out = _task(model, {"itc": 0.0, "itm": 0.0, "mlm": 0.0, "lm": 0.0, "itc_cons": 2.0})({"image": batch})
    vision = model.encode_image(batch["images"]).features
    text = model.encode_text(batch["text_ids"], batch["text_mask"]).features
    expected = consistency_loss(vision, text, model.temperature())
    torch.testing.assert_close(out["losses"]["image"]["itc_cons"], expected)
    torch.testing.assert_close(out["loss"], 2.0 * expected)


def test_lm_weight_is_a_loss_term_of_image_batches_only():
    config = yaml.safe_load((CONFIG_DIR / "tiny.yaml").read_text())
    config["losses"]["weights"] = {"image": {"lm": 0.5}}
    assert parse_loss_settings(config["losses"]).weights["image"] == {"itc": 1.0, "itc_cons": 0.0, "itm": 1.0,
                                                                     "mlm": 1.0, "mim": 1.0, "lm": 0.5}
    config["losses"]["weights"] = {"video": {"lm": 0.5}}
    with pytest.raises(ConfigError, match="losses.weights.video.lm: unknown loss term"):
        parse_loss_settings(config["losses"], "model.losses")


def test_greedy_caption_is_the_argmax_of_one_forward_over_it():
    model = _small_vocab_model()
    vision = model.encode_image(image_batch(count=3)["images"])
    captions = generate(model, vision, bos_id=BOS, eos_id=EOS, pad_id=PAD, max_len=6, banned=BANNED)
    assert len(captions) == 3 and any(captions)
    for row, caption in enumerate(captions):
        ended = len(caption) < 6
        ids = torch.tensor([[BOS, *caption, *([EOS] if ended else [])]])
        with torch.no_grad():
            logits = model.mlm_head(model.decode(vision.tokens[row:row + 1], vision.mask[row:row + 1], ids[:, :-1],
                                                 torch.ones_like(ids[:, :-1])))
        logits[..., list(BANNED)] = float("-inf")
        assert logits.argmax(dim=-1)[0].tolist() == ids[0, 1:].tolist()
        assert not set(caption) & {*BANNED, EOS}
    assert generate(model, vision, bos_id=BOS, eos_id=EOS, pad_id=PAD, max_len=6, banned=BANNED, beam=1) == captions


def _log_prob(model, vision, row: int, sequence: list[int]) -> float:
    ids = torch.tensor([[BOS, *sequence]])
    with torch.no_grad():
        logits = model.mlm_head(model.decode(vision.tokens[row:row + 1], vision.mask[row:row + 1], ids[:, :-1],
                                             torch.ones_like(ids[:, :-1]))).float()
    logits[..., list(BANNED)] = float("-inf")
    log_probs = logits.log_softmax(dim=-1)[0]
    return sum(float(log_probs[t, token]) for t, token in enumerate(sequence))


def test_beam_search_as_wide_as_the_vocabulary_finds_the_most_likely_caption():
    """With beam = every allowed token and two steps, beam search cannot prune the best; check
    it against every caption of at most two tokens, by its summed log probability."""
    model = _small_vocab_model(vocab=8, seed=1)
    vision = model.encode_image(image_batch(count=2)["images"])
    allowed = [t for t in range(8) if t not in BANNED]
    found = generate(model, vision, bos_id=BOS, eos_id=EOS, pad_id=PAD, max_len=2, beam=len(allowed),
                     banned=BANNED, length_penalty=0.0)
    greedy = generate(model, vision, bos_id=BOS, eos_id=EOS, pad_id=PAD, max_len=2, banned=BANNED)
    for row in range(2):
        candidates = [[EOS]] + [[a, EOS] if a != EOS else None for a in allowed]
        candidates += [[a, b] for a, b in itertools.product(allowed, allowed) if a != EOS]
        candidates = [c for c in candidates if c]
        scored = {tuple(c): _log_prob(model, vision, row, c) for c in candidates}
        best = max(scored, key=scored.get)
        expected = list(best[:best.index(EOS)] if EOS in best else best)
        assert found[row] == expected
        greedy_sequence = tuple(greedy[row] + ([EOS] if len(greedy[row]) < 2 else []))
        assert scored[best] >= scored[greedy_sequence]


def test_beam_search_runs_batched_with_a_prompt():
    model = _small_vocab_model()
    vision = model.encode_image(image_batch(count=3)["images"])
    batched = generate(model, vision, bos_id=BOS, eos_id=EOS, pad_id=PAD, max_len=5, beam=3, prompt=[5, 6],
                       banned=BANNED)
    one_by_one = [generate(model, type(vision)(vision.tokens[i:i + 1], vision.mask[i:i + 1], vision.features[i:i + 1]),
                           bos_id=BOS, eos_id=EOS, pad_id=PAD, max_len=5, beam=3, prompt=[5, 6], banned=BANNED)[0]
                  for i in range(3)]
    assert batched == one_by_one
    with pytest.raises(ValueError, match="beam 9 exceeds"):
        generate(model, vision, bos_id=BOS, eos_id=EOS, pad_id=PAD, max_len=5, beam=9, banned=BANNED)
