"""Scaling of the pre-training losses with the number of ranks: what each rank sends per step
by category, the peak memory of the loss computation and the host synchronisations, on 1 to 8
gloo ranks on CPU, for the losses as they are ("new": ITM's drawn text rows exchanged as hidden
states, `losses.itm_exchange: hidden_states`; "ids": as token ids encoded again where they are
paired, `token_ids`) and as they were ("old": every rank's vision tokens and text hidden states
all-gathered with gradient for ITM, the gathered gradient all-reduced, shapes exchanged before
each gather); then a projection to 8, 64 and 512 GPUs for the base and large configs against
the gradient traffic of ZeRO-2 and ZeRO-3, with the FLOPs the token-id exchange adds.

    python bench/bench_scaling.py                      # 1, 2, 4, 8 ranks; image and region kinds
    python bench/bench_scaling.py --ranks 2 4 --kinds image --modes new ids
    python bench/bench_scaling.py --projection-only

Each rank runs one step of the real model and loss code (training/model/x2vlm.py and the
objectives, training/objectives/) at the base model's widths and X²-VLM base's per-GPU batch (128 image-text
pairs; a region batch of 50 images padded to its bound of 250 texts, of which 200-250 are real;
texts of 40 tokens, 12 masked; bf16), with stand-ins where the CPU cannot afford the real thing:
the vision tower is a linear map of 16x16-pixel patch means to the base tower's 197 tokens of
width 768, the text stack has one BERT layer, the fusion layers are a pooling stand-in
(`--fusion-layers N`: N real ones) and the vocabulary has 2,048 words. Nothing that crosses
ranks changes shape, so the bytes are the base model's. Kinds run one at a time (their bytes
add up) to bound memory: 8 ranks share this machine's memory.

Bytes are counted by training/instrumentation.py (ring model: what leaves a rank); `payload`
is what a rank hands to the collective, for the ITM all-to-all its whole buffer. After the
backward each rank runs ZeRO-2's exchange (reduce-scatter + all-gather, bf16) of the stand-in's
gradients, scaled in `grads base` to the real parameter count. Peak memory is MemTracker's
count of the tensors the step holds at its peak beyond weights and gradients. Host syncs are
the SyncCounter's in the forward and backward. docs/PERFORMANCE.md explains the method and
holds the results.
"""
from __future__ import annotations

import argparse
import json
import math
import socket
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

MB = 1e6
# X²-VLM's per-GPU batches (configs/runs/x2vlm_{base,large}_4m.yaml: region texts are the bound,
# 5 per image) and text shape.
SHAPES = {
    "base": {"width": 768, "hidden": 768, "tokens": 197, "length": 40, "embed": 256,
             "rows": {"image": 128, "region": 250, "video": 32}},
    "large": {"width": 1024, "hidden": 1024, "tokens": 197, "length": 40, "embed": 256,
              "rows": {"image": 64, "region": 125, "video": 16}},
}
BF16 = 2
INT32 = 4
# The bench's modes that run the current losses, and the losses.itm_exchange each sets.
EXCHANGE = {"new": "hidden_states", "ids": "token_ids"}


# -- the model at base width with stand-in towers ------------------------------------------

class StandInVision(nn.Module):
    """Emits the base vision tower's token layout (1 + 196 tokens of width 768) from uint8
    pixels at the cost of a linear map: each token a projection of its patch's mean colour."""

    def __init__(self, width: int, image_size: int = 224, patch: int = 16):
        super().__init__()
        self.width, self.grid_size, self.patch = width, image_size // patch, patch
        self.num_patches = self.grid_size**2
        self.proj = nn.Linear(3, width)
        self.position = nn.Parameter(torch.randn(self.num_patches, width) * 0.02)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.proj.weight.dtype) / 255.0
        x = F.avg_pool2d(x, self.patch).flatten(2).transpose(1, 2)  # (B, 196, 3)
        patches = self.proj(x) + self.position
        return torch.cat([patches.mean(dim=1, keepdim=True), patches], dim=1)

    def set_grad_checkpointing(self, enable: bool) -> None:
        pass


class StandInFusion(nn.Module):
    """The fusion layers' interface at the cost of a pooling: each text token plus a projection
    of the mean of the vision tokens it may attend to. The real layers' cross-attention projects
    every one of the 197 vision tokens of every pair (three pairs a sample for ITM), the bulk of
    a step's arithmetic, and moves no byte between ranks."""

    def __init__(self, text_width: int, vision_width: int):
        super().__init__()
        self.proj = nn.Linear(vision_width, text_width)
        self.grad_checkpointing = False

    def forward(self, text, text_mask, vision, vision_mask):
        weights = vision_mask.to(vision.dtype)
        weights = weights / weights.sum(dim=1, keepdim=True).clamp(min=1)
        pooled = torch.bmm(weights[:, None, :], vision).squeeze(1)  # a matmul: cheap in bf16 on CPU
        return text + self.proj(pooled)[:, None, :] * text_mask.to(text.dtype)[..., None]


def build_task(size: str, fusion_layers: int, capacity: float, vocab: int, exchange: str = "hidden_states"):
    """The task of X2VLM of SIZE's widths with the stand-in vision tower, one text layer,
    FUSION_LAYERS real fusion layers (0: the stand-in fusion) and a VOCAB-word vocabulary (the MLM
    head's cost; no token id crosses ranks)."""
    from training.model import load_model_config
    from training.model.x2vlm import X2VLM
    from training.tasks.task import Task

    config = load_model_config(REPO_ROOT / f"configs/model/x2vlm_{size}.yaml")
    config.text.num_layers, config.text.fusion_start = 1 + max(fusion_layers, 1), 1
    config.text.dropout = 0.0
    config.text.vocab_size = vocab
    config.vision.timm_kwargs = {"depth": 1}  # replaced below; only its width is used
    config.losses = {**config.losses, "itm_exchange_capacity": capacity, "itm_exchange": exchange}
    model = X2VLM(config)
    model.vision = StandInVision(model.vision.width)
    if fusion_layers == 0:
        model.fusion = StandInFusion(config.text.hidden_size, model.vision.width)
    return Task.for_model(model.to(torch.bfloat16))


def make_batch(kind: str, rows: int, rank: int, length: int = 40, images: int | None = None,
               vocab: int = 30522) -> dict:
    """A synthetic batch as the loader hands it: ROWS texts (region: 80-100 % of ROWS, over
    IMAGES images), uint8 pixels at 224 px, 12 masked tokens a text at most."""
    from data_pipeline.kinds.collate import mlm_positions

    generator = torch.Generator().manual_seed(1000 + rank)
    count = rows if kind != "region" else int(torch.randint(rows * 4 // 5, rows + 1, (1,), generator=generator))
    ids = torch.randint(min(1000, vocab // 2), vocab, (count, length), generator=generator)
    ids[:, 0] = 101
    lengths = torch.randint(8, length + 1, (count,), generator=generator)
    mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    ids = ids * mask
    labels = torch.full_like(ids, -100)
    for i in range(count):
        chosen = torch.randperm(int(lengths[i]) - 2, generator=generator)[:min(12, int(lengths[i]) // 2)] + 1
        labels[i, chosen] = ids[i, chosen]
    texts = {"text_ids": ids, "text_mask": mask, "mlm_ids": torch.where(labels == -100, ids, 103),
             "mlm_labels": labels, "mlm_positions": torch.from_numpy(mlm_positions(labels.numpy())), "rows": rows}

    def pixels(n):
        return torch.randint(0, 256, (n, 3, 224, 224), generator=generator, dtype=torch.uint8)

    if kind == "image":
        return {"images": pixels(count), **texts}
    if kind == "video":
        return {"frames": torch.randint(0, 256, (count, 3, 3, 224, 224), generator=generator, dtype=torch.uint8),
                **texts}
    image_index = torch.sort(torch.randint(0, images, (count,), generator=generator)).values
    corner = torch.randint(0, 10, (count, 2), generator=generator)
    size = torch.randint(2, 5, (count, 2), generator=generator)
    cells = torch.arange(14)
    inside_x = (cells[None] >= corner[:, :1]) & (cells[None] < corner[:, :1] + size[:, :1])
    inside_y = (cells[None] >= corner[:, 1:]) & (cells[None] < corner[:, 1:] + size[:, 1:])
    patches = (inside_y[:, :, None] & inside_x[:, None, :]).flatten(1)
    boxes = torch.cat([(corner + size / 2) / 14, size / 14], dim=1).float()
    return {"images": pixels(images), "image_index": image_index,
            "patch_mask": torch.cat([torch.ones(count, 1, dtype=torch.bool), patches], dim=1), "boxes": boxes, **texts}


# -- the old losses (the gather-everything code this change replaced), for comparison --------

def _old_gather(tensor: torch.Tensor):
    world = dist.get_world_size()
    shape = torch.tensor(tensor.shape, dtype=torch.long)
    shapes = [torch.empty_like(shape) for _ in range(world)]
    dist.all_gather(shapes, shape)
    shapes = torch.stack(shapes).tolist()  # the shape exchange: read on the host
    padded_shape = [max(s[d] for s in shapes) for d in range(tensor.dim())]
    padded = tensor
    if list(tensor.shape) != padded_shape:
        padded = tensor.new_zeros(padded_shape)
        padded[tuple(slice(0, n) for n in tensor.shape)] = tensor
    parts = [torch.empty(padded_shape, dtype=tensor.dtype) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous())
    sizes = [s[0] for s in shapes]
    return torch.cat([part[:n] for part, n in zip(parts, sizes)]), sizes


class _OldGatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor, category):
        from training.runtime.instrumentation import traffic_category

        ctx.category = category
        with traffic_category(category):
            gathered, sizes = _old_gather(tensor)
        ctx.shape, ctx.offset = tensor.shape, sum(sizes[: dist.get_rank()])
        return gathered

    @staticmethod
    def backward(ctx, grad):
        from training.runtime.instrumentation import traffic_category

        grad = grad.contiguous()
        with traffic_category(ctx.category):
            dist.all_reduce(grad)
        return grad[ctx.offset: ctx.offset + ctx.shape[0]], None


def _old_gather_padded(tensor, category):
    from training.runtime.instrumentation import traffic_category

    with traffic_category(category):
        return _old_gather(tensor)[0]


def old_alignment_losses(model, vision, batch, image_index):
    """The losses before this change, for one kind: full-matrix ITC on every rank, ITM from
    every rank's gathered tokens and hidden states, MLM selecting masked positions by mask."""
    from training.model.x2vlm import TextEncoding
    from training.objectives.itm import matching_loss, sample_hard_negatives

    hidden = model.text(input_ids=batch["text_ids"], attention_mask=batch["text_mask"]).last_hidden_state  # 2D mask
    text = TextEncoding(hidden, batch["text_mask"], F.normalize(model.text_proj(hidden[:, 0]), dim=-1))
    n = text.hidden.shape[0]
    rank = torch.full((n,), dist.get_rank())
    index = torch.arange(n)
    image = index if image_index is None else image_index
    ids = batch["text_ids"] * batch["text_mask"]
    keys = [_old_gather_padded(k, "features") for k in (rank, index, image, ids)]
    temperature = model.temperature()
    vision_all = _OldGatherWithGrad.apply(vision.features, "features")
    text_all = _OldGatherWithGrad.apply(text.features, "features")

    def positives_of(rank_, image_, ids_):
        same = (rank_[:, None] == keys[0][None, :]) & (image_[:, None] == keys[2][None, :])
        return same | (ids_[:, None, :] == keys[3][None, :, :]).all(dim=-1)

    positives = positives_of(keys[0], keys[2], keys[3])
    logits = vision_all.float() @ text_all.float().t() / temperature
    targets = positives.float()
    itc = (-(F.log_softmax(logits, 1) * targets / targets.sum(1, keepdim=True)).sum(1).mean()
           - (F.log_softmax(logits.t(), 1) * targets.t() / targets.t().sum(1, keepdim=True)).sum(1).mean()) / 2

    tokens_all = _OldGatherWithGrad.apply(vision.tokens, "itm_exchange")
    vision_mask_all = _old_gather_padded(vision.mask, "itm_exchange")
    hidden_all = _OldGatherWithGrad.apply(text.hidden, "itm_exchange")
    text_mask_all = _old_gather_padded(text.mask, "itm_exchange")
    with torch.no_grad():
        local_positives = positives_of(rank, image, ids)
        v2t = vision.features.float() @ text_all.float().t() / temperature.detach()
        t2v = text.features.float() @ vision_all.float().t() / temperature.detach()
        negative_text, text_valid = sample_hard_negatives(v2t, local_positives)
        negative_vision, vision_valid = sample_hard_negatives(t2v, local_positives)
    fused = model.fuse(torch.cat([vision.tokens, tokens_all[negative_vision], vision.tokens]),
                       torch.cat([vision.mask, vision_mask_all[negative_vision], vision.mask]),
                       torch.cat([text.hidden, text.hidden, hidden_all[negative_text]]),
                       torch.cat([text.mask, text.mask, text_mask_all[negative_text]]))
    itm_logits = model.itm_head(fused[:, 0])
    labels = (torch.arange(3 * n) < n).long()
    itm = matching_loss(itm_logits, labels, torch.cat([torch.ones(n, dtype=torch.bool), vision_valid, text_valid]))

    masked_hidden = model.text(input_ids=batch["mlm_ids"], attention_mask=batch["text_mask"]).last_hidden_state
    fused = model.fuse(vision.tokens, vision.mask, masked_hidden, batch["text_mask"])
    selected = batch["mlm_labels"] != -100
    mlm = F.cross_entropy(model.mlm_head(fused[selected]).float(), batch["mlm_labels"][selected])
    return itc + itm + mlm, text


def old_forward(model, kind: str, batch: dict) -> torch.Tensor:
    from training.objectives.box import box_losses

    if kind == "image":
        loss, _ = old_alignment_losses(model, model.encode_image(batch["images"]), batch, None)
        return loss
    if kind == "video":
        loss, _ = old_alignment_losses(model, model.encode_video(batch["frames"]), batch, None)
        return loss
    image_tokens = model.vision(batch["images"])
    vision = model.encode_regions(image_tokens, batch["image_index"], batch["patch_mask"])
    loss, text = old_alignment_losses(model, vision, batch, batch["image_index"])
    box = model.predict_box(image_tokens[batch["image_index"]], text)
    return loss + sum(box_losses(box, batch["boxes"]))


# -- one rank -------------------------------------------------------------------------------

def exchange_gradients(model: nn.Module) -> None:
    """ZeRO-2's per-step traffic for this model: the bf16 gradients reduce-scattered to their
    partition owners, then the updated bf16 parameters all-gathered (here the gradients stand in
    for them: the same bytes)."""
    from training.runtime.instrumentation import traffic_category

    world = dist.get_world_size()
    # every parameter, as ZeRO partitions them all (one a kind leaves unused has a zero gradient)
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                      for p in model.parameters()])
    flat = torch.cat([flat, flat.new_zeros(-len(flat) % world)])
    shard = flat.new_empty(len(flat) // world)
    with traffic_category("gradients"):
        dist.reduce_scatter_tensor(shard, flat)
        dist.all_gather_into_tensor(flat, shard)


def _loss(task, args: dict, batch: dict):
    """The step's loss and the kind's ITM pairs left out (a tensor: read after the counters)."""
    kind = args["kind"]
    if args["mode"] in EXCHANGE:
        task.config.itm_exchange = EXCHANGE[args["mode"]]
        out = task({kind: batch})
        return out["loss"], out["figures"][kind]["itm_dropped"].detach()
    return old_forward(task.model, kind, batch), torch.zeros(())


def _rank_main(rank: int, world: int, port: int, args: dict, out: str, model: nn.Module) -> None:
    from torch.distributed._tools.mem_tracker import MemTracker

    from training.runtime.instrumentation import SyncCounter, TrafficCounter

    torch.set_num_threads(1)
    # The ring-model counters wrap the *_tensor collectives, which this torch calls deprecated.
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    shape = SHAPES[args["size"]]
    kind = args["kind"]
    batch = make_batch(kind, shape["rows"][kind], rank, shape["length"], shape["rows"]["region"] // 5,
                       args["vocab"])
    torch.manual_seed(rank)

    # MemTracker follows every tensor the step allocates (parameters, gradients, activations,
    # temporaries), whatever the allocator does with freed memory.
    tracker = MemTracker()
    tracker.track_external(model)
    started = time.perf_counter()
    with SyncCounter() as syncs, TrafficCounter() as traffic:
        with tracker:
            loss, dropped = _loss(model, args, batch)
            loss.backward()
        if world > 1:
            exchange_gradients(model)
    seconds = time.perf_counter() - started
    peak = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]
    # At the peak: what the loss computation holds beyond the stand-in model's weights and
    # gradients (activations, temporaries, gathered and exchanged rows).
    held = sum(v for k, v in peak.items() if k != "Total" and getattr(k, "name", "") not in ("PARAM", "GRAD"))
    result = {"seconds": seconds, "syncs": syncs.count("project"), "sync_where": syncs.summary("project"),
              "peak_total": peak["Total"], "peak_loss": held,
              "parameters": sum(p.numel() for p in model.parameters()),
              "dropped": float(dropped), "texts": len(batch["text_ids"]),
              "traffic": {k: [v.calls, v.sent, v.payload] for k, v in traffic.by_category.items()}}
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    if world > 1:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(world: int, args: dict, model: nn.Module) -> list[dict]:
    """One step of MODEL on WORLD forked ranks (they share the parent's weights and imports)."""
    context = mp.get_context("fork")
    port = _free_port()
    with tempfile.TemporaryDirectory() as out:
        ranks = [context.Process(target=_rank_main, args=(rank, world, port, args, out, model)) for rank in range(world)]
        for process in ranks:
            process.start()
        for process in ranks:
            process.join()
        failed = [rank for rank, process in enumerate(ranks) if process.exitcode != 0]
        if failed:
            raise SystemExit(f"bench_scaling: ranks {failed} of {world} failed (see above)")
        return [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(world)]


# -- the projection -------------------------------------------------------------------------

def parameter_count(size: str) -> int:
    from training.model import create_model

    with torch.device("meta"):
        model = create_model(f"x2vlm_{size}", load_pretrained=False)
    return sum(p.numel() for p in model.parameters())


def slot_capacity(rows: int, world: int, factor: float) -> int:
    return max(1, min(rows, math.ceil(factor * rows / world)))


def new_bytes(shape: dict, kind: str, world: int, factor: float, exchange: str = "hidden_states") -> dict[str, float]:
    """Bytes each rank sends per step for one kind with the new losses (ring model)."""
    n, length, hidden, embed = shape["rows"][kind], shape["length"], shape["hidden"], shape["embed"]
    others = world - 1
    features = others * n * (3 * 8 + 4 * embed * BF16)  # keys; 2 feature gathers; 2 reduce-scatters
    c = slot_capacity(n, world, factor)
    if exchange == "hidden_states":  # answers and sent rows (hidden + mask), each with its gradient
        rows = 4 * length * (hidden + 1) * BF16
    else:  # answers and sent rows (ids + mask), no gradient
        rows = 2 * 2 * length * INT32
    # plus the requests and targets (int64) and the pair count
    itm = others * c * (2 * 8 + rows) + 2 * others / world * 8 if world > 1 else 0.0
    return {"features": features, "itm_exchange": itm}


def flops_per_item(size: str) -> dict[str, float]:
    """Forward + backward FLOPs of X²-VLM SIZE's vision tower per image, text tower per text and
    fusion layers per pair at the bench's shapes (torch's FlopCounterMode on meta tensors)."""
    from torch.utils.flop_counter import FlopCounterMode

    from training.model import create_model

    shape, m = SHAPES[size], 2
    with torch.device("meta"):
        model = create_model(f"x2vlm_{size}", load_pretrained=False)
        images = torch.zeros(m, 3, 224, 224, dtype=torch.uint8)
        ids = torch.zeros(m, shape["length"], dtype=torch.long)
        mask = torch.ones(m, shape["length"], dtype=torch.long)
        tokens = torch.zeros(m, shape["tokens"], shape["width"], requires_grad=True)
        hidden = torch.zeros(m, shape["length"], shape["hidden"], requires_grad=True)
        vision_mask = torch.ones(m, shape["tokens"], dtype=torch.bool)

    def count(compute) -> float:
        with FlopCounterMode(display=False) as counter:
            compute().float().sum().backward()
        return counter.get_total_flops() / m

    return {"vision": count(lambda: model.vision(images)), "text": count(lambda: model.text_hidden(ids, mask)),
            "fusion": count(lambda: model.fuse(tokens, vision_mask, hidden, mask))}


def step_flops(size: str, flops: dict, kind: str) -> tuple[float, float]:
    """(FLOPs of a step of KIND's towers and fusion layers, FLOPs the token-id exchange adds):
    the vision tower on the batch's images; the text tower on the texts and on their masked copies
    (MLM); the fusion layers on each text's pair, its two ITM negatives and its MLM pass, and for
    regions its box. The exchange encodes again the fetched and the received texts: 2 x rows."""
    rows = SHAPES[size]["rows"][kind]
    images = rows // 5 if kind == "region" else rows
    fusions = 5 if kind == "region" else 4
    return (images * flops["vision"] + rows * (2 * flops["text"] + fusions * flops["fusion"]),
            2 * rows * flops["text"])


def old_bytes(shape: dict, kind: str, world: int) -> dict[str, float]:
    n, length, hidden, embed = shape["rows"][kind], shape["length"], shape["hidden"], shape["embed"]
    tokens, width = shape["tokens"], shape["width"]
    others = world - 1
    # keys: rank, index, image (int64) and the (N, L) ids; each feature gathered then its
    # gathered gradient all-reduced (2 (W-1)/W x W N rows); shapes exchanged (small)
    features = others * n * (3 * 8 + length * 8) + 2 * 3 * others * n * embed * BF16
    itm = others * n * (tokens * width + length * hidden) * BF16 * 3 + others * n * (tokens + length * 8)
    return {"features": features, "itm_exchange": itm}


def expected_dropped(rows: int, world: int, factor: float, margin: float = 4.0) -> float:
    """Fraction of hard-negative pairs left out when draws land uniformly over the ranks:
    per pair of ranks beyond its slots (X ~ Binomial(rows, 1/W)), and beyond what a receiving
    rank computes (Y ~ Binomial(W rows, 1/W), kept rows + margin sqrt(rows))."""
    if world == 1:
        return 0.0
    c = slot_capacity(rows, world, factor)

    def excess(trials: int, p: float, limit: int) -> float:
        total = 0.0
        for k in range(limit + 1, trials + 1):
            log_pmf = (math.lgamma(trials + 1) - math.lgamma(k + 1) - math.lgamma(trials - k + 1)
                       + k * math.log(p) + (trials - k) * math.log1p(-p))
            term = math.exp(log_pmf) * (k - limit)
            total += term
            if k > trials * p and term < 1e-15:
                break
        return total

    per_pair = world * excess(rows, 1 / world, c) / rows  # a rank's requests spread over W destinations
    keep = min(world * c, rows + math.ceil(margin * math.sqrt(rows)))
    receiving = excess(world * rows, 1 / world, keep) / rows
    # Direction A drops at the pair slots only; direction B at the slots and at the receiver.
    return (2 * per_pair + receiving) / 2


def itc_memory(shape: dict, kind: str, world: int) -> tuple[float, float]:
    """Bytes of the ITC similarity matrices (fp32): (new: this rank's rows x every column,
    two directions and their softmax; old: the global square, both directions)."""
    n = shape["rows"][kind]
    return 4 * 4 * n * world * n, 8 * 4 * (world * n) ** 2


def projection(kinds: list[str], factor: float) -> list[str]:
    lines = []
    header = (f"{'config':6} {'GPUs':>5} {'rows as':>6} | {'features':>9} {'ITM exch':>9} {'new total':>9} | "
              f"{'old total':>9} | {'ZeRO-2':>8} {'ZeRO-3':>8} | {'new/Z2':>7} {'new/Z3':>7} {'old/Z2':>7} | "
              f"{'dropped':>7} | {'ITC mem new':>11} {'old':>9} | {'+FLOPs':>6}")
    lines += ["bytes each rank sends per optimizer step (grad_accum 1), MB; kinds: " + ", ".join(kinds)
              + f"; itm_exchange_capacity {factor}", header, "-" * len(header)]
    breakeven = []
    for size in ("base", "large"):
        params = parameter_count(size)
        shape = SHAPES[size]
        flops = flops_per_item(size)
        step, extra = (sum(values) for values in zip(*(step_flops(size, flops, k) for k in kinds)))
        for world in (8, 64, 512):
            old = sum(sum(old_bytes(shape, k, world).values()) for k in kinds)
            zero2 = 2 * (world - 1) / world * params * BF16
            zero3 = 3 * (world - 1) / world * params * BF16
            dropped = sum(expected_dropped(shape["rows"][k], world, factor) * shape["rows"][k] for k in kinds) / sum(
                shape["rows"][k] for k in kinds)
            memory = [itc_memory(shape, k, world) for k in kinds]
            totals = {}
            for exchange, label in (("hidden_states", "hidden"), ("token_ids", "ids")):
                new = [new_bytes(shape, k, world, factor, exchange) for k in kinds]
                features = sum(b["features"] for b in new)
                itm = sum(b["itm_exchange"] for b in new)
                total = totals[exchange] = features + itm
                lines.append(
                    f"{size:6} {world:5d} {label:>7} | {features / MB:9.1f} {itm / MB:9.1f} {total / MB:9.1f} | "
                    f"{old / MB:9.1f} | {zero2 / MB:8.0f} {zero3 / MB:8.0f} | {100 * total / zero2:6.1f}% "
                    f"{100 * total / zero3:6.1f}% {100 * old / zero2:6.0f}% | {100 * dropped:6.2f}% | "
                    f"{max(m[0] for m in memory) / MB:11.1f} {max(m[1] for m in memory) / MB:9.0f} | "
                    f"{100 * extra / step if exchange == 'token_ids' else 0:5.1f}%")
            breakeven.append((size, world, totals["hidden_states"] - totals["token_ids"], extra))
        lines.append(f"{size}: {params / 1e6:.1f}M parameters; a step's towers and fusion layers {step / 1e12:.1f} "
                     f"TFLOP, of which the token-id exchange adds {extra / 1e12:.2f}")
    lines.append("rows as: what ITM's exchanged text rows are (losses.itm_exchange: hidden_states, token_ids); "
                 "+FLOPs: the text-tower passes token_ids adds, of the step's tower and fusion FLOPs")
    lines.append("token_ids is the faster choice when a GPU's share of the interconnect moves fewer bytes a second "
                 "than the bytes it saves in the time its extra FLOPs take; at 400 TFLOP/s achieved:")
    for size, world, saved, extra in breakeven:
        lines.append(f"  {size:5} {world:4d} GPUs: saves {saved / MB:6.1f} MB for {extra / 1e12:.2f} TFLOP "
                     f"({1e3 * extra / 400e12:.1f} ms): below {saved / (extra / 400e12) / 1e9:5.1f} GB/s per GPU")
    return lines


# -- the measured table ---------------------------------------------------------------------

def measured_table(args) -> list[str]:
    lines = []
    header = (f"{'mode':4} {'kind':6} {'ranks':>5} | {'features':>8} {'ITM sent':>8} {'ITM payld':>9} "
              f"{'grads':>7} {'other':>6} | {'formula':>8} | {'grads base':>10} | {'peak MB':>7} {'syncs':>5} "
              f"{'dropped':>7} {'step s':>6}")
    lines += ["measured, per rank per step, MB (1e6 bytes); bytes are rank 0's (the same on every rank unless "
              "noted)", header, "-" * len(header)]
    for line in lines:
        print(line, flush=True)
    shape = SHAPES[args.size]
    base_parameters = parameter_count(args.size)
    torch.set_num_threads(1)  # before the parent computes anything: forked ranks inherit no thread pool
    torch.manual_seed(0)
    task = build_task(args.size, args.fusion_layers, args.capacity, args.vocab)
    task.model.set_activation_checkpointing(args.activation_checkpointing)
    for mode in args.modes:
        for kind in args.kinds:
            for world in args.ranks:
                options = {"size": args.size, "fusion_layers": args.fusion_layers, "capacity": args.capacity,
                           "vocab": args.vocab,
                           "checkpointing": args.activation_checkpointing, "kind": kind, "mode": mode}
                if world == 1 and mode == "old":
                    continue  # the old code gathered through a process group
                ranks = measure(world, options, task)
                first = ranks[0]

                def sent(rank_result, name):
                    return rank_result["traffic"].get(name, [0, 0.0, 0])[1]

                def payload(rank_result, name):
                    return rank_result["traffic"].get(name, [0, 0.0, 0])[2]

                named = ("features", "itm_exchange", "gradients")
                other = sum(v[1] for k, v in first["traffic"].items() if k not in named)
                formula = (new_bytes(shape, kind, world, args.capacity, EXCHANGE[mode]) if mode in EXCHANGE
                           else old_bytes(shape, kind, world))
                # ZeRO-2's traffic for the base model's parameters, at the bytes per parameter
                # measured on the stand-in's gradients
                grads_base = sent(first, "gradients") / first["parameters"] * base_parameters
                lines.append(
                    f"{mode:4} {kind:6} {world:5d} | {sent(first, 'features') / MB:8.2f} "
                    f"{sent(first, 'itm_exchange') / MB:8.2f} {payload(first, 'itm_exchange') / MB:9.2f} "
                    f"{sent(first, 'gradients') / MB:7.1f} {other / MB:6.3f} | {sum(formula.values()) / MB:8.2f} | "
                    f"{grads_base / MB:10.1f} | {max(r['peak_loss'] for r in ranks) / MB:7.0f} "
                    f"{max(r['syncs'] for r in ranks):5d} {sum(r['dropped'] for r in ranks):7.0f} "
                    f"{max(r['seconds'] for r in ranks):6.1f}")
                print(lines[-1], flush=True)
                for name in named:
                    values = {round(sent(r, name)) for r in ranks}
                    if len(values) > 1:
                        print(f"     {name}: ranks differ: {sorted(values)}", flush=True)
                if max(r["syncs"] for r in ranks):
                    print(f"     syncs on rank 0: {first['sync_where']}", flush=True)
    lines += [f"features, ITM sent, grads, other: bytes that leave the rank (ring model); ITM payld: the "
              f"all-to-all buffers handed in; formula: the projection's features + ITM for these shapes; grads: "
              f"ZeRO-2 (reduce-scatter + all-gather, bf16) of the stand-in's {first['parameters'] / 1e6:.1f}M "
              f"parameters; grads base: the same for the {base_parameters / 1e6:.1f}M of x2vlm_{args.size}; peak: "
              f"what the loss computation holds at the step's peak beyond weights and gradients; dropped: ITM "
              f"pairs left out, all ranks"]
    print(lines[-1], flush=True)
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--kinds", nargs="+", default=["image", "region"], choices=["image", "region", "video"])
    parser.add_argument("--modes", nargs="+", default=["new", "ids", "old"], choices=["new", "ids", "old"],
                        help="new: ITM rows moved as hidden states; ids: as token ids; old: the replaced losses")
    parser.add_argument("--size", default="base", choices=list(SHAPES))
    parser.add_argument("--fusion-layers", type=int, default=0,
                        help="real fusion layers (X²-VLM: 6); 0: the stand-in fusion (default)")
    parser.add_argument("--vocab", type=int, default=2048, help="vocabulary of the stand-in (base: 30522)")
    parser.add_argument("--capacity", type=float, default=2.0, help="losses.itm_exchange_capacity")
    parser.add_argument("--activation-checkpointing", action="store_true", help="checkpoint the fusion layers")
    parser.add_argument("--projection-only", action="store_true")
    parser.add_argument("--projection-kinds", nargs="+", default=["image", "region"],
                        choices=["image", "region", "video"], help="the kinds of a step (base 4M: image and region)")
    args = parser.parse_args(argv)

    if not args.projection_only:
        measured_table(args)
        print()
    for line in projection(args.projection_kinds, args.capacity):
        print(line)


if __name__ == "__main__":
    main()
