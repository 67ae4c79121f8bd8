"""Fusion layers: BERT layers that add cross-attention from text tokens to vision tokens.

Parameter names follow Hugging Face BERT (``attention.self.query``, ``crossattention.*``,
``intermediate.dense``, ``output.LayerNorm``), so BERT layers load into them by renaming only.
Attention runs through ``torch.nn.functional.scaled_dot_product_attention``; masks are boolean
(True = attend) so they work unchanged under bf16 autocast.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers.models.bert.modeling_bert import BertIntermediate, BertOutput, BertSelfOutput

from training.model.causal import causal_mask
from training.model.model_config import TextConfig
from training.model.text import transformers_config


class QueryKeyValue(nn.Module):
    def __init__(self, width: int, key_value_width: int, num_heads: int, dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.dropout = dropout
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(key_value_width, width)
        self.value = nn.Linear(key_value_width, width)

    def forward(self, hidden: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor) -> torch.Tensor:
        """context_mask: (N, K) bool over the context, or a prepared (N, 1, L or 1, K) one (causal
        self-attention gives each query its own row)."""
        batch, length, width = hidden.shape
        if context_mask.dim() == 2:
            context_mask = context_mask[:, None, None, :]

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch, x.shape[1], self.num_heads, -1).transpose(1, 2)

        out = F.scaled_dot_product_attention(
            heads(self.query(hidden)),
            heads(self.key(context)),
            heads(self.value(context)),
            attn_mask=context_mask,
            dropout_p=self.dropout if self.training else 0.0,
        )
        return out.transpose(1, 2).reshape(batch, length, width)


class Attention(nn.Module):
    def __init__(self, hf_config, key_value_width: int):
        super().__init__()
        self.self = QueryKeyValue(
            hf_config.hidden_size, key_value_width, hf_config.num_attention_heads, hf_config.attention_probs_dropout_prob
        )
        self.output = BertSelfOutput(hf_config)

    def forward(self, hidden, context, context_mask):
        return self.output(self.self(hidden, context, context_mask), hidden)


class FusionLayer(nn.Module):
    def __init__(self, hf_config, vision_width: int):
        super().__init__()
        self.attention = Attention(hf_config, hf_config.hidden_size)
        self.crossattention = Attention(hf_config, vision_width)
        self.intermediate = BertIntermediate(hf_config)
        self.output = BertOutput(hf_config)

    def forward(self, text, text_mask, vision, vision_mask):
        hidden = self.attention(text, text, text_mask)
        hidden = self.crossattention(hidden, vision, vision_mask)
        return self.output(self.intermediate(hidden), hidden)


class FusionEncoder(nn.Module):
    def __init__(self, config: TextConfig, num_layers: int, vision_width: int):
        super().__init__()
        hf_config = transformers_config(config, num_layers)
        self.layer = nn.ModuleList(FusionLayer(hf_config, vision_width) for _ in range(num_layers))
        self.grad_checkpointing = False
        self.apply(_init_like_bert)

    def forward(
        self, text: torch.Tensor, text_mask: torch.Tensor, vision: torch.Tensor, vision_mask: torch.Tensor,
        causal: bool = False,
    ) -> torch.Tensor:
        """text (N, L, H), text_mask (N, L) bool/long, vision (N, P, D), vision_mask (N, P) bool.
        ``causal``: each text position attends to itself and the positions before it only (the
        captioning decoder, training/model/causal.py); the cross-attention to vision is unchanged."""
        text_mask, vision_mask = text_mask.bool(), vision_mask.bool()
        if causal:
            text_mask = causal_mask(text_mask)
        for layer in self.layer:
            if self.grad_checkpointing and self.training:
                text = checkpoint(layer, text, text_mask, vision, vision_mask, use_reentrant=False)
            else:
                text = layer(text, text_mask, vision, vision_mask)
        return text


def _init_like_bert(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
