"""Text to the model's input fields: clean, tokenise to `[CLS] tokens [SEP]`, pad to
`max_tokens`, and mask for MLM."""
from __future__ import annotations

import json
import random
import re
from pathlib import Path

import numpy as np
from transformers import AutoTokenizer

from ..config import ConfigError
from ..skips import BadSample
from .text_spec import TextSpec
from .cleaning import BadText, clean_caption
from .masking import IGNORE_INDEX, mask_tokens


_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def is_cjk_piece(token: str) -> bool:
    """A piece of Chinese / Japanese text (Han, Kana), with or without its '▁' word start."""
    return _CJK.match(token.lstrip("▁")) is not None


def word_start_rule(tokenizer):
    """How to tell a word's first token, by the tokenizer's model: WordPiece marks
    continuations with '##' (BERT's pre-tokenizer makes every CJK character a word of its
    own); byte-level BPE (RoBERTa) and SentencePiece (XLM-R) mark word starts with 'Ġ' / '▁'.
    Chinese has no spaces, so a SentencePiece '▁' would make a whole clause one word and
    whole-word masking would mask it all or nothing: there each CJK piece is a word."""
    model = type(tokenizer.backend_tokenizer.model).__name__
    if model == "WordPiece":
        return lambda token, i: not token.startswith("##")
    return lambda token, i: i == 0 or token.startswith(("Ġ", "▁")) or is_cjk_piece(token)


def load_tokenizer(directory: str):
    """The tokenizer saved in DIRECTORY, by transformers' own classes only: a tokenizer_config.json
    that names custom code (`auto_map`) is refused, since loading it would run code from the
    folder or fetch it from the hub (and with no network the error names a made-up hub address)."""
    config_path = Path(directory) / "tokenizer_config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    except (OSError, ValueError) as error:
        raise ConfigError(f"text.tokenizer: {config_path}: unreadable ({error})") from None
    if isinstance(config, dict) and config.get("auto_map"):
        raise ConfigError(f"text.tokenizer: {config_path} names custom tokenizer code (auto_map: "
                          f"{json.dumps(config['auto_map'])[:120]}); only transformers' own tokenizer classes are "
                          f"loaded: save the tokenizer as one (e.g. PreTrainedTokenizerFast) without auto_map")
    return AutoTokenizer.from_pretrained(directory, local_files_only=True, trust_remote_code=False)


class TextEncoder:
    def __init__(self, spec: TextSpec):
        self.spec = spec
        self.tokenizer = load_tokenizer(spec.tokenizer)
        t = self.tokenizer
        if not t.is_fast:
            raise ConfigError(f"text.tokenizer: {spec.tokenizer} has no fast (tokenizers) version; the loader needs one")
        # The Rust tokenizer itself: the transformers wrapper costs more per call than the
        # tokenising, and its Encoding already carries the tokens the masking needs.
        self.backend = t.backend_tokenizer
        if t.mask_token_id is None or t.pad_token_id is None:
            raise ConfigError(f"text.tokenizer: {spec.tokenizer} has no mask or pad token; MLM needs both")
        self.cls_id = t.cls_token_id if t.cls_token_id is not None else t.bos_token_id
        self.sep_id = t.sep_token_id if t.sep_token_id is not None else t.eos_token_id
        self.pad_id, self.mask_id = t.pad_token_id, t.mask_token_id
        special = set(t.all_special_ids)
        self.random_ids = [i for i in range(len(t)) if i not in special]
        self.is_word_start = word_start_rule(t)

    def encode(self, caption: str, rng: random.Random) -> dict[str, np.ndarray]:
        try:
            text = clean_caption(caption, self.spec.max_words)
        except BadText as exn:
            raise BadSample("bad_text", str(exn)) from None
        encoding = self.backend.encode(text, add_special_tokens=False)
        ids = encoding.ids[: self.spec.max_tokens - 2]
        if not ids:
            raise BadSample("bad_text", f"text {caption!r} has no tokens")
        tokens = encoding.tokens[: len(ids)]
        word_start = [True] + [self.is_word_start(tok, i) for i, tok in enumerate(tokens)] + [True]
        ids = [self.cls_id] + ids + [self.sep_id]
        mlm_ids, labels = mask_tokens(ids, word_start, rng, self.spec, self.mask_id, self.random_ids)
        pad = self.spec.max_tokens - len(ids)
        return {
            "text_ids": np.array(ids + [self.pad_id] * pad, dtype=np.int64),
            "text_mask": np.array([1] * len(ids) + [0] * pad, dtype=np.int64),
            "mlm_ids": np.array(mlm_ids + [self.pad_id] * pad, dtype=np.int64),
            "mlm_labels": np.array(labels + [IGNORE_INDEX] * pad, dtype=np.int64),
        }
