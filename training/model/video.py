"""Video: frames go through the image tower; a frame position embedding, then a mean over frames."""
from __future__ import annotations

import torch
from torch import nn


class FrameTemporalPooling(nn.Module):
    def __init__(self, max_frames: int, width: int):
        super().__init__()
        self.max_frames = max_frames
        # (1, frames, 1, width): one vector per frame position, shared by all tokens of a frame.
        self.frame_pos_embed = nn.Parameter(torch.zeros(1, max_frames, 1, width))
        nn.init.trunc_normal_(self.frame_pos_embed, std=0.02)

    def forward(self, frame_tokens: torch.Tensor) -> torch.Tensor:
        """frame_tokens (B, F, T, D) -> video tokens (B, T, D)."""
        frames = frame_tokens.shape[1]
        if frames > self.max_frames:
            raise ValueError(f"video has {frames} frames; the model was built for at most {self.max_frames}")
        return (frame_tokens + self.frame_pos_embed[:, :frames]).mean(dim=1)
