"""Benchmark of one X²-VLM pre-training step: forward + backward + AdamW step.

Defaults are X²-VLM's 4M-corpus per-GPU batch: 128 image-text pairs plus 128 region texts
over 50 images, texts of 40 tokens with 12 masked. On a GPU use the base config (bf16
autocast); on CPU the tiny config with smaller batches:

    python bench/bench_model_step.py --config x2vlm_base
    python bench/bench_model_step.py --config tiny --image-batch 16 --region-texts 16 --region-images 8
    python bench/bench_model_step.py ... --momentum-distillation --queue-size 65536   # ALBEF's, its cost

Prints samples/s (image-text pairs + region texts per second), peak memory, FLOPs per step
counted by ``torch.utils.flop_counter.FlopCounterMode`` and, when the device's peak is known
(or given with --peak-tflops), the model FLOPs utilisation.
"""
from __future__ import annotations

import argparse
import resource
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from training.engine.metrics import device_peak_tflops
from training.model import create_model
from training.objectives.settings import parse_loss_settings
from training.tasks.task import Task



def synthetic_batches(args, num_patches: int, grid: int, image_size: int, vocab: int, device) -> tuple[dict, dict]:
    generator = torch.Generator().manual_seed(0)

    def pixels(count: int) -> torch.Tensor:  # uint8, as the loader hands them
        return torch.randint(0, 256, (count, 3, image_size, image_size), generator=generator, dtype=torch.uint8)

    def texts(count: int) -> dict:
        ids = torch.randint(1000, vocab, (count, args.text_length), generator=generator)
        ids[:, 0] = 101
        mask = torch.ones_like(ids)
        labels = torch.full_like(ids, -100)
        positions = torch.rand(count, args.text_length - 1, generator=generator).argsort(dim=1)[:, : args.masks] + 1
        labels.scatter_(1, positions, ids.gather(1, positions))
        mlm_ids = torch.where(labels == -100, ids, torch.full_like(ids, 103))
        return {"text_ids": ids, "text_mask": mask, "mlm_ids": mlm_ids, "mlm_labels": labels}

    image = {"images": pixels(args.image_batch), **texts(args.image_batch)}
    count = args.region_texts
    corner = torch.rand(count, 2, generator=generator) * 0.6
    size = torch.rand(count, 2, generator=generator) * 0.35 + 0.05
    boxes = torch.cat([corner + size / 2, size], dim=1)
    cells = (torch.arange(grid) + 0.5) / grid
    inside_x = ((cells[None] >= corner[:, :1]) & (cells[None] <= corner[:, :1] + size[:, :1]))
    inside_y = ((cells[None] >= corner[:, 1:]) & (cells[None] <= corner[:, 1:] + size[:, 1:]))
    patches = (inside_y[:, :, None] & inside_x[:, None, :]).flatten(1)
    patches[:, 0] |= ~patches.any(dim=1)  # every region covers at least one patch
    region = {
        "images": pixels(args.region_images),
        "image_index": torch.arange(count) % args.region_images,
        "patch_mask": torch.cat([torch.ones(count, 1, dtype=torch.bool), patches], dim=1),
        "boxes": boxes,
        **texts(count),
    }
    image["sample_ids"] = torch.arange(args.image_batch)  # the images' identities (momentum distillation)
    region["sample_ids"] = torch.arange(args.region_images) + args.image_batch
    assert region["patch_mask"].shape[1] == 1 + num_patches
    move = lambda batch: {k: v.to(device, non_blocking=True) for k, v in batch.items()}  # noqa: E731
    return move(image), move(region)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None, help="model config name or path (x2vlm_base on GPU, tiny on CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--image-batch", type=int, default=128)
    parser.add_argument("--region-texts", type=int, default=128)
    parser.add_argument("--region-images", type=int, default=50)
    parser.add_argument("--text-length", type=int, default=40)
    parser.add_argument("--masks", type=int, default=12)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None, help="bf16 autocast (default: on GPU)")
    parser.add_argument("--activation-checkpointing", action="store_true")
    parser.add_argument("--momentum-distillation", action="store_true",
                        help="ALBEF's momentum copy, queues and distilled targets (losses.momentum_distillation)")
    parser.add_argument("--queue-size", type=int, default=65536, help="with --momentum-distillation")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU when not known")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    config = args.config or ("x2vlm_base" if on_gpu else "tiny")
    bf16 = on_gpu if args.bf16 is None else args.bf16
    torch.manual_seed(0)
    model = create_model(config, load_pretrained=False).to(device)
    model.set_activation_checkpointing(args.activation_checkpointing)
    losses = dict(model.config.losses)
    if args.momentum_distillation:
        losses["momentum_distillation"] = {"enabled": True, "queue_size": args.queue_size}
    settings = parse_loss_settings(losses, "model.losses")
    task = Task(model, settings, batches=("image", "region"))
    teacher = None
    if args.momentum_distillation:
        from training.extensions.momentum import MomentumDistillation

        teacher = MomentumDistillation(settings.momentum_distillation, settings.same_text_positive)
        teacher.attach(task)
        teacher.bind(task, device)
        teacher.active, teacher.alpha = True, settings.momentum_distillation.alpha
    trained = [p for p in task.parameters() if p.requires_grad]  # not the momentum copy
    optimizer = torch.optim.AdamW(trained, lr=1e-4, weight_decay=0.01, fused=on_gpu)
    image, region = synthetic_batches(
        args, model.vision.num_patches, model.vision.grid_size, model.config.vision.image_size,
        model.config.text.vocab_size, device,
    )

    def step() -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = task({"image": image, "region": region})["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if teacher is not None:
            teacher.update()
        return loss

    def sync() -> None:
        if on_gpu:
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        step()
    sync()
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    sync()
    seconds = (time.perf_counter() - start) / args.steps

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    flops = counter.get_total_flops()

    samples = args.image_batch + args.region_texts
    parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    device_name = torch.cuda.get_device_name(device) if on_gpu else "CPU"
    print(f"config {config}: {parameters / 1e6:.2f}M parameters on {device_name} ({'bf16 autocast' if bf16 else 'fp32'})")
    print(f"batch: {args.image_batch} image-text + {args.region_texts} region texts over {args.region_images} images, "
          f"{args.text_length} tokens, {args.masks} masked; activation checkpointing {args.activation_checkpointing}")
    if teacher is not None:
        print(f"momentum distillation: queues of {args.queue_size} per kind")
    print(f"step time: {seconds * 1000:.1f} ms   samples/s: {samples / seconds:.1f}   last loss: {loss.item():.4f}")
    if on_gpu:
        print(f"peak memory: {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB (allocated)")
    else:
        print(f"peak memory: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB (process max RSS)")
    print(f"FLOPs per step: {flops / 1e9:,.1f} GFLOP   achieved: {flops / seconds / 1e12:.3f} TFLOP/s")
    peak = args.peak_tflops or device_peak_tflops(device)
    if peak:
        print(f"MFU: {100 * flops / seconds / (peak * 1e12):.1f}% of {peak:.0f} TFLOP/s")
    else:
        print("MFU: device peak unknown (pass --peak-tflops)")


if __name__ == "__main__":
    main()
