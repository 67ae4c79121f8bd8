"""ALBEF's momentum model: an exponential moving average (EMA) of X²-VLM's vision tower, frame
pooling, text tower, fusion layers, projections and MLM head, and the feature queues of its
outputs (``model.losses.momentum_distillation``; the losses are in
training/losses/distillation.py).

The copy is a no-grad submodule of the model DeepSpeed wraps (``model.momentum``), so ZeRO-3
partitions it like the rest and gathers its layers on the fly in forward; it is in no
optimizer group, so weight decay and gradient clipping never see it. Once per optimizer step,
``MomentumTeacher.update`` moves each momentum parameter towards its trained twin on the part
each rank holds, never gathering the model:

- ZeRO-0/1/2: every rank holds the whole compute-dtype parameter and updates all of it;
- ZeRO-3: ``param.ds_tensor``, the rank's partition of the flattened parameter; both twins have
  the same shape, so their partitions line up element for element. The parameters small enough
  that ZeRO-3 keeps them whole on every rank between steps (``ds_persist``) are then gathered
  again from their partitions, as DeepSpeed does for the trained ones after each step (one
  coalesced all-gather of the small parameters only).

The moving average is kept in fp32 beside the compute-dtype weights (in bf16 a step of
(1 - 0.995) x the difference would mostly round away) and copied into them after each update.
It and the queues are the teacher's state, saved with every checkpoint: fp32 partitions per
rank under ZeRO-3 (re-dealt on another world size), whole on every rank otherwise; the queues
are the same on every rank, stored by each, and any rank's copy serves a new world size.
"""
from __future__ import annotations

import copy
import hashlib

import torch
from torch import nn

from training.losses.distillation import FeatureQueue
from training.losses.gather import world
from training.model.model_config import LOSS_KINDS
from training.model.x2vlm import X2VLM

PARTS = ("vision", "video", "text", "fusion", "vision_proj", "text_proj", "mlm_head")


class MomentumEncoders(nn.Module):
    """The momentum copy of MODEL's PARTS, with X²-VLM's encoders (the same functions, run on
    the copy's parts), and one feature queue per batch kind. Frozen, and always in eval mode:
    its predictions are targets, without dropout."""

    _vision_encoding = X2VLM._vision_encoding
    encode_image = X2VLM.encode_image
    encode_video = X2VLM.encode_video
    encode_regions = X2VLM.encode_regions
    _text_hidden = X2VLM._text_hidden
    encode_text = X2VLM.encode_text
    fuse = X2VLM.fuse

    def __init__(self, model: X2VLM, queue_size: int):
        super().__init__()
        memo = {}  # one memo for all parts keeps the MLM decoder tied to the copied word embeddings
        for name in PARTS:
            setattr(self, name, copy.deepcopy(getattr(model, name), memo))
        for param in self.parameters():
            param.requires_grad_(False)
        self.vision.set_grad_checkpointing(False)
        self.text.activation_checkpointing_disable()
        self.fusion.grad_checkpointing = False
        device = next(model.parameters()).device
        # Plain attributes, not buffers: DeepSpeed would cast them to the compute dtype.
        self.queues = {kind: FeatureQueue(queue_size, model.config.embed_dim, device) for kind in LOSS_KINDS}
        self.train(False)

    def train(self, mode: bool = True):
        return super().train(False)


def alpha_at(settings, step: int) -> float:
    """The distillation weight for optimizer step STEP + 1 (STEP steps done): ramped linearly
    from 0 over the first ``alpha_ramp_steps`` from ``start_step`` (SETTINGS:
    losses.momentum_distillation)."""
    if not settings.alpha_ramp_steps:
        return settings.alpha
    return settings.alpha * min(1.0, max(0, step - settings.start_step) / settings.alpha_ramp_steps)


def check_queue_sizes(settings, rows_per_step: dict[str, int], where: str) -> None:
    """Each step adds every rank's rows of a kind to its queue; they must fit in it."""
    from data_pipeline.config import ConfigError

    for kind, rows in rows_per_step.items():
        if rows > settings.queue_size:
            raise ConfigError(f"{where}: model.losses.momentum_distillation.queue_size: {settings.queue_size} is "
                              f"smaller than the {rows} {kind} rows all ranks add per micro-step (world size x "
                              f"rows per batch); make it at least {rows}")


def attach_momentum(model: X2VLM) -> MomentumEncoders:
    """Registers the momentum copy of MODEL's current weights as ``model.momentum``: after every
    weight that is to be trained was loaded (pre-trained towers, init_from), before DeepSpeed."""
    settings = model.config.losses.momentum_distillation
    model.momentum = MomentumEncoders(model, settings.queue_size)
    return model.momentum


def sample_ids(keys: list[str]) -> torch.Tensor:
    """(B,) int64: a 64-bit hash of each sample key, the image's identity in the queues (the
    same image wherever and whenever it comes again)."""
    return torch.tensor([int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little",
                                        signed=True) for key in keys], dtype=torch.long)


def _is_partitioned(param: torch.Tensor) -> bool:
    """A ZeRO-3 parameter."""
    return hasattr(param, "ds_tensor")


def _local(param: torch.Tensor) -> torch.Tensor:
    """The flat part of PARAM this rank holds and updates."""
    return (param.ds_tensor if _is_partitioned(param) else param.data).view(-1)


def _partition_of(flat: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """This rank's ZeRO-3 partition of a whole flat value of PARAM (zeros past its end)."""
    size = param.ds_tensor.numel()
    start = world()[0] * size
    part = flat.new_zeros(size)
    piece = flat[start:start + size]
    part[:piece.numel()] = piece
    return part


class MomentumTeacher:
    """The moving-average update and the checkpointed state of the momentum copy of MODULE
    (the model DeepSpeed wraps, after ``deepspeed.initialize``)."""

    def __init__(self, module: X2VLM, device: torch.device):
        self.encoders = module.momentum
        for queue in self.encoders.queues.values():
            queue.to(device)
        self.settings = module.config.losses.momentum_distillation
        self.coefficient = self.settings.momentum
        trained = {name: param for name, param in module.named_parameters() if not name.startswith("momentum.")}
        self.names, self.trained, self.copies = [], [], []
        for name, param in self.encoders.named_parameters():
            self.names.append(name)
            self.trained.append(trained[name])
            self.copies.append(param)
        self.persistent = [param for param in self.copies if getattr(param, "ds_persist", False)]
        with torch.no_grad():
            self.average = [_local(param).float().clone() for param in self.copies]

    def alpha_at(self, step: int) -> float:
        return alpha_at(self.settings, step)

    def active_at(self, step: int) -> bool:
        """Whether optimizer step STEP + 1 (STEP steps done) runs and updates the momentum copy."""
        return step >= self.settings.start_step

    @torch.no_grad()
    def restart(self) -> None:
        """The momentum copy becomes the trained weights as they are now (at ``start_step``)."""
        torch._foreach_copy_(self.average, [_local(param).float() for param in self.trained])
        self._write()

    sample_ids = staticmethod(sample_ids)

    @torch.no_grad()
    def update(self) -> None:
        """average <- c x average + (1 - c) x trained weights, on this rank's part; then the
        momentum copy's weights <- average. Call after each optimizer step."""
        sources = [_local(param).float() for param in self.trained]
        torch._foreach_mul_(self.average, self.coefficient)
        torch._foreach_add_(self.average, sources, alpha=1 - self.coefficient)
        self._write()

    def _write(self) -> None:
        torch._foreach_copy_([_local(param) for param in self.copies], self.average)
        if self.persistent:  # drop the stale whole values, gather the new ones from the partitions
            self.persistent[0].partition(self.persistent)
            self.persistent[0].all_gather(self.persistent)

    # -- state that survives a restart -----------------------------------------------------------
    def state_dict(self) -> dict:
        return {"average": {name: average.to("cpu", copy=True) for name, average in zip(self.names, self.average)},
                "partitioned": [name for name, param in zip(self.names, self.copies) if _is_partitioned(param)],
                "queues": {kind: queue.state_dict() for kind, queue in self.encoders.queues.items()}}

    def load_state_dict(self, state: dict) -> None:
        self._load(state["average"], state)

    def load_resharded(self, states: list[dict]) -> None:
        """The states of every rank of a run with another world size: each parameter's average
        made whole again (ZeRO-3 partitions are laid end to end, in rank order) and this rank's
        part taken; the queues from any rank (they are the same on all)."""
        partitioned = set(states[0]["partitioned"])
        whole = {}
        for name, param in zip(self.names, self.copies):
            if name in partitioned:
                numel = param.ds_numel if hasattr(param, "ds_numel") else param.numel()
                whole[name] = torch.cat([state["average"][name] for state in states])[:numel]
            else:
                whole[name] = states[0]["average"][name]
        averages = {name: (_partition_of(whole[name], param) if _is_partitioned(param) else whole[name])
                    for name, param in zip(self.names, self.copies)}
        self._load(averages, states[0])

    def _load(self, averages: dict, state: dict) -> None:
        if set(averages) != set(self.names):
            raise ValueError("the saved momentum weights do not name the model's momentum parameters")
        with torch.no_grad():
            for name, average in zip(self.names, self.average):
                if averages[name].shape != average.shape:
                    raise ValueError(f"momentum.{name}: saved {tuple(averages[name].shape)}, expected "
                                     f"{tuple(average.shape)}")
                average.copy_(averages[name])
            self._write()
        for kind, queue in self.encoders.queues.items():
            queue.load_state_dict(state["queues"][kind])
