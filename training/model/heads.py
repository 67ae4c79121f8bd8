"""Heads on top of the towers: projections, temperature, ITM, box and MLM heads."""
from __future__ import annotations

import torch
from torch import nn
from transformers.models.bert.modeling_bert import BertPredictionHeadTransform


def build_mlp(input_dim: int, output_dim: int) -> nn.Sequential:
    """The two-layer head X²-VLM uses for ITM and boxes (indices 0, 1, 3 carry weights)."""
    return nn.Sequential(
        nn.Linear(input_dim, input_dim * 2),
        nn.LayerNorm(input_dim * 2),
        nn.GELU(),
        nn.Linear(input_dim * 2, output_dim),
    )


class Temperature(nn.Module):
    """A learnable contrastive temperature kept within [minimum, maximum].

    The clamp is applied in the forward with a straight-through gradient instead of an
    in-place write to the parameter: the value used is always in range, the parameter can come
    back from beyond a bound, and nothing writes to a parameter that ZeRO-3 may have sharded.
    """

    def __init__(self, initial: float, minimum: float, maximum: float):
        super().__init__()
        # Shape (1,), not a 0-d scalar: DeepSpeed broadcasts parameters as byte views, which a
        # 0-d tensor cannot give.
        self.temp = nn.Parameter(torch.tensor([float(initial)]))
        self.minimum, self.maximum = minimum, maximum

    def forward(self) -> torch.Tensor:
        clamped = self.temp.clamp(self.minimum, self.maximum)
        return (self.temp + (clamped - self.temp).detach())[0]


class MaskedLanguageModelHead(nn.Module):
    """BERT's MLM head; the decoder weight is the word embedding matrix (tied)."""

    def __init__(self, hf_config, word_embeddings: nn.Embedding):
        super().__init__()
        self.transform = BertPredictionHeadTransform(hf_config)
        self.decoder = nn.Linear(hf_config.hidden_size, hf_config.vocab_size, bias=False)
        self.decoder.weight = word_embeddings.weight
        self.bias = nn.Parameter(torch.zeros(hf_config.vocab_size))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(hidden)) + self.bias
