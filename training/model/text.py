"""The text tower: a transformers BERT / RoBERTa / XLM-R encoder built from config.

It holds the first ``text.fusion_start`` layers; the remaining layers of X²-VLM's one BERT
stack are the fusion layers (``training/model/fusion.py``), which add cross-attention.
"""
from __future__ import annotations

from transformers import (
    BertConfig,
    BertModel,
    PretrainedConfig,
    RobertaConfig,
    RobertaModel,
    XLMRobertaConfig,
    XLMRobertaModel,
)

from training.model.model_config import TextConfig

_KINDS = {
    "bert": (BertConfig, BertModel),
    "roberta": (RobertaConfig, RobertaModel),
    "xlm-roberta": (XLMRobertaConfig, XLMRobertaModel),
}


def transformers_config(config: TextConfig, num_layers: int) -> PretrainedConfig:
    config_class, _ = _KINDS[config.kind]
    hf_config = config_class(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=config.num_heads,
        intermediate_size=config.intermediate_size,
        max_position_embeddings=config.max_position_embeddings,
        type_vocab_size=config.type_vocab_size,
        pad_token_id=config.pad_token_id,
        layer_norm_eps=config.layer_norm_eps,
        hidden_dropout_prob=config.dropout,
        attention_probs_dropout_prob=config.dropout,
        use_cache=False,
    )
    hf_config._attn_implementation = "sdpa"
    return hf_config


def tokenizer_problem(config: TextConfig, pad_id: int | None) -> str | None:
    """Why texts of a tokenizer padding with `pad_id` would not fit the tower; None when they
    do. The tower takes padding from `text.pad_token_id` (its embedding row stays zero; for
    RoBERTa / XLM-R also where positions start, see `TextConfig.position_offset`), so it must
    be the tokenizer's: an XLM-R tokenizer pads with 1 and begins with <s> = 0, which a tower
    left at the default 0 would take for padding."""
    if pad_id != config.pad_token_id:
        return (f"the model's 'text.pad_token_id' is {config.pad_token_id} but the tokenizer pads with id {pad_id}; "
                f"set text.pad_token_id: {pad_id}")
    return None


def build_text_encoder(config: TextConfig):
    _, model_class = _KINDS[config.kind]
    return model_class(transformers_config(config, config.fusion_start), add_pooling_layer=False)


# Prefixes under which Hugging Face checkpoints nest the encoder, and their MLM head names.
HF_ENCODER_PREFIXES = ("bert.", "roberta.")
HF_MLM_HEAD_NAMES = {
    "cls.predictions.transform.dense.weight": "transform.dense.weight",
    "cls.predictions.transform.dense.bias": "transform.dense.bias",
    "cls.predictions.transform.LayerNorm.weight": "transform.LayerNorm.weight",
    "cls.predictions.transform.LayerNorm.bias": "transform.LayerNorm.bias",
    "cls.predictions.bias": "bias",
    "lm_head.dense.weight": "transform.dense.weight",
    "lm_head.dense.bias": "transform.dense.bias",
    "lm_head.layer_norm.weight": "transform.LayerNorm.weight",
    "lm_head.layer_norm.bias": "transform.LayerNorm.bias",
    "lm_head.bias": "bias",
}
