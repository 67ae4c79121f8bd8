"""ALBEF's momentum distillation as a training extension (``model.losses.momentum_distillation``):
an exponential moving average (EMA) of X²-VLM's vision tower, frame pooling, text tower, fusion
layers, projections and MLM head, and the feature queues of its outputs. On the steps where it
takes part it is the task's teacher: the ITC and MLM objectives (training/objectives/itc.py,
mlm.py) then mix their targets with its predictions, and ITC takes the queue's entries as extra
candidates.

The copy is a no-grad submodule of the task DeepSpeed wraps (``task.momentum``), so ZeRO-3
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
It and the queues are the extension's state, saved with every checkpoint under its name: fp32
partitions per rank under ZeRO-3 (re-dealt on another world size), whole on every rank
otherwise; the queues are the same on every rank, stored by each, and any rank's copy serves a
new world size.

A queue of a batch kind holds the momentum model's vision and text features of earlier batches,
from every rank, with their identities: the id of the image (a hash of the sample key, the same
wherever and whenever that image comes again), the hash of the text and whether the row is real.
Everything runs at fixed shapes: a queue is a ring buffer whose write position is a Python
integer that advances by the same amount on every rank, and padding entries stay in it, marked
invalid. Nothing reads a device value on the host.
"""
from __future__ import annotations

import copy
import hashlib

import torch
from torch import nn

from data_pipeline.config import ConfigError
from data_pipeline.kinds import KINDS, data_kind
from data_pipeline.kinds.collate import rows_per_batch
from training.engine.checkpoint import CheckpointError
from training.engine.extension import Extension
from training.model.x2vlm import X2VLM
from training.objectives.gather import world

PARTS = ("vision", "video", "text", "fusion", "vision_proj", "text_proj", "mlm_head")


class FeatureQueue:
    """A ring buffer of (vision, text) feature pairs with their identities; the same on every
    rank (each push is of every rank's rows, gathered)."""

    def __init__(self, size: int, dim: int, device: torch.device | str = "cpu"):
        self.size = size
        self.vision = torch.zeros(size, dim, device=device)
        self.text = torch.zeros(size, dim, device=device)
        self.image_id = torch.zeros(size, dtype=torch.long, device=device)
        self.text_hash = torch.zeros(size, dtype=torch.long, device=device)
        self.valid = torch.zeros(size, dtype=torch.bool, device=device)  # empty slots are invalid
        self.position = 0  # where the next push writes

    def to(self, device: torch.device | str) -> FeatureQueue:
        for name in ("vision", "text", "image_id", "text_hash", "valid"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def push(self, vision: torch.Tensor, text: torch.Tensor, image_id: torch.Tensor, text_hash: torch.Tensor,
             valid: torch.Tensor) -> None:
        """Writes N entries after the last ones, overwriting the oldest (in place: callers that
        built a tensor from the queue for autograd hold a copy, see ``columns``)."""
        count = vision.shape[0]
        if count > self.size:
            raise ValueError(f"{count} entries per push exceed the queue size {self.size}")
        index = torch.arange(self.position, self.position + count, device=self.valid.device) % self.size
        self.vision.index_copy_(0, index, vision.detach().to(self.vision.dtype))
        self.text.index_copy_(0, index, text.detach().to(self.text.dtype))
        self.image_id.index_copy_(0, index, image_id)
        self.text_hash.index_copy_(0, index, text_hash)
        self.valid.index_copy_(0, index, valid)
        self.position = (self.position + count) % self.size

    def state_dict(self) -> dict:
        # Copies: the queue goes on changing in place after the state is taken.
        return {**{name: getattr(self, name).to("cpu", copy=True)
                   for name in ("vision", "text", "image_id", "text_hash", "valid")}, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        if state["vision"].shape != self.vision.shape:
            raise ValueError(f"a saved queue of shape {tuple(state['vision'].shape)} does not fit "
                             f"{tuple(self.vision.shape)} (model.losses.momentum_distillation.queue_size or "
                             f"embed_dim changed)")
        for name in ("vision", "text", "image_id", "text_hash", "valid"):
            getattr(self, name).copy_(state[name])
        self.position = int(state["position"])


class MomentumEncoders(nn.Module):
    """The momentum copy of MODEL's PARTS, with X²-VLM's encoders (the same functions, run on
    the copy's parts), and one feature queue per batch kind. Frozen, and always in eval mode:
    its predictions are targets, without dropout."""

    _vision_encoding = X2VLM._vision_encoding
    encode_image = X2VLM.encode_image
    encode_video = X2VLM.encode_video
    encode_regions = X2VLM.encode_regions
    text_hidden = X2VLM.text_hidden
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
        # Plain attributes, not buffers: DeepSpeed would cast them to the compute dtype. One
        # queue per batch kind that is registered.
        self.queues = {kind.batch: FeatureQueue(queue_size, model.config.embed_dim, device) for kind in KINDS.values()}
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
    for kind, rows in rows_per_step.items():
        if rows > settings.queue_size:
            raise ConfigError(f"{where}: model.losses.momentum_distillation.queue_size: {settings.queue_size} is "
                              f"smaller than the {rows} {kind} rows all ranks add per micro-step (world size x "
                              f"rows per batch); make it at least {rows}")


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


class MomentumDistillation(Extension):
    """The momentum copy of the task's model, its moving-average update and its checkpointed
    state; the task's teacher on the steps where it takes part."""

    name = "momentum_distillation"
    stateful = True

    def __init__(self, settings, same_text_positive: bool):
        self.settings = settings  # model.losses.momentum_distillation
        self.same_text_positive = same_text_positive
        self.coefficient = settings.momentum
        self.active = False  # whether it takes part in the step under way
        self.alpha = 0.0  # its weight in the targets of that step
        self.encoders: MomentumEncoders | None = None

    # -- the run ------------------------------------------------------------------------------
    def before_engine(self, trainer, task) -> None:
        """A frozen copy of the weights just loaded (pre-trained towers, init_from), attached to
        the task before DeepSpeed wraps it: in no optimizer group."""
        rows = {data_kind(kind).batch: trainer.world_size * rows_per_batch(trainer.data_spec.corpora_of(kind))
                for kind in trainer.data_spec.kinds()}
        check_queue_sizes(self.settings, rows, trainer.config.source)
        self.attach(task)

    def attach(self, task) -> None:
        """Registers the momentum copy of TASK's model as ``task.momentum``, and itself as the
        task's teacher."""
        task.momentum = MomentumEncoders(task.model, self.settings.queue_size)
        task.teacher = self

    def after_engine(self, trainer) -> None:
        self.bind(trainer.engine.module, trainer.device)

    def bind(self, module, device) -> None:
        """The copy's parameters and their trained twins as MODULE (the task, as DeepSpeed holds
        it) has them; the queues on DEVICE."""
        self.encoders = module.momentum
        for queue in self.encoders.queues.values():
            queue.to(device)
        trained = dict(module.model.named_parameters())
        self.names, self.trained, self.copies = [], [], []
        for name, param in self.encoders.named_parameters():
            self.names.append(name)
            self.trained.append(trained[name])
            self.copies.append(param)
        self.persistent = [param for param in self.copies if getattr(param, "ds_persist", False)]
        with torch.no_grad():
            self.average = [_local(param).float().clone() for param in self.copies]

    def before_step(self, trainer) -> None:
        step = trainer.step
        if step == self.settings.start_step > 0:
            self.restart()  # from here on the momentum copy follows the trained weights
        self.active = self.active_at(step)
        self.alpha = self.alpha_at(step)

    def before_forward(self, trainer, batches: dict, inputs: dict) -> None:
        for kind, batch in batches.items():  # the images' identities, kept in the feature queues
            inputs[data_kind(kind).batch]["sample_ids"] = sample_ids(batch["keys"]).to(trainer.device,
                                                                                      non_blocking=True)

    def after_optimizer_step(self, trainer) -> None:
        if self.active:
            self.update()  # on the device, nothing read

    # -- the teacher the objectives read -------------------------------------------------------
    @torch.no_grad()
    def vision_encoding(self, batch):
        """The momentum copy's encoding of a batch (a KindBatch), as the model encodes it."""
        fields, encoders, vision = batch.fields, self.encoders, batch.kind.vision
        if vision == "image":
            return encoders.encode_image(fields["images"])
        if vision == "regions":
            tokens = encoders.vision(fields["images"])
            return encoders.encode_regions(tokens, fields["image_index"], fields["patch_mask"])
        return encoders.encode_video(fields["frames"])

    def queue(self, batch: str) -> FeatureQueue:
        return self.encoders.queues[batch]

    def alpha_at(self, step: int) -> float:
        """The distillation weight for optimizer step STEP + 1: ramped up over its first steps."""
        return alpha_at(self.settings, step)

    def active_at(self, step: int) -> bool:
        """Whether optimizer step STEP + 1 (STEP steps done) runs and updates the momentum copy."""
        return step >= self.settings.start_step

    @torch.no_grad()
    def restart(self) -> None:
        """The momentum copy becomes the trained weights as they are now (at ``start_step``)."""
        torch._foreach_copy_(self.average, [_local(param).float() for param in self.trained])
        self._write()

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

    def load_state_dict(self, state: dict | None) -> None:
        self._load(self._present(state)["average"], state)

    def load_resharded(self, states: list[dict | None]) -> None:
        """The states of every rank of a run with another world size: each parameter's average
        made whole again (ZeRO-3 partitions are laid end to end, in rank order) and this rank's
        part taken; the queues from any rank (they are the same on all)."""
        states = [self._present(state) for state in states]
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
            if kind in state["queues"]:  # a kind registered since the checkpoint starts with an empty queue
                queue.load_state_dict(state["queues"][kind])

    @staticmethod
    def _present(state: dict | None) -> dict:
        if state is None:
            raise CheckpointError("the checkpoint holds no momentum weights or queues, but "
                                  "model.losses.momentum_distillation is enabled")
        return state
