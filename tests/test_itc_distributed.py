"""ITC over 2 gloo ranks equals the single-process computation on the concatenated batch."""
from __future__ import annotations

import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from training.losses import PairKeys, contrastive_loss, gather_with_grad, pair_positives

WORLD = 2
TEMPERATURE = 0.1


def _inputs():
    """Per-rank batches of unequal size and text length; rank 1's last text equals rank 0's
    first, and rank 0's first two samples share an image."""
    torch.manual_seed(0)
    vision = [torch.randn(3, 6), torch.randn(2, 6)]
    text = [torch.randn(3, 6), torch.randn(2, 6)]
    ids = [torch.tensor([[101, 5, 6, 0], [101, 7, 0, 0], [101, 8, 9, 10]]), torch.tensor([[101, 3, 0, 0, 0, 0], [101, 5, 6, 0, 0, 0]])]
    masks = [(i > 0).long() for i in ids]
    images = [torch.tensor([0, 0, 1]), torch.tensor([0, 1])]
    return vision, text, ids, masks, images


def _projections():
    torch.manual_seed(1)
    return torch.nn.Linear(6, 4).double(), torch.nn.Linear(6, 4).double()


def _rank_main(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    vision, text, ids, masks, images = _inputs()
    vision_proj, text_proj = _projections()
    vision_features = F.normalize(vision_proj(vision[rank].double()), dim=-1)
    text_features = F.normalize(text_proj(text[rank].double()), dim=-1)
    keys = PairKeys.local(ids[rank], masks[rank], images[rank]).gathered()
    positives = pair_positives(keys, keys, same_image=True, same_text=True)
    loss = contrastive_loss(
        gather_with_grad(vision_features), gather_with_grad(text_features), torch.tensor(TEMPERATURE), positives
    )
    loss.backward()
    grads = {name: p.grad for name, p in [*vision_proj.named_parameters("v"), *text_proj.named_parameters("t")]}
    torch.save({"loss": loss.detach(), "grads": grads, "positives": positives}, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_itc_over_two_gloo_ranks_equals_single_process_on_concatenated_batch(tmp_path):
    mp.spawn(_rank_main, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    vision, text, _, _, _ = _inputs()
    vision_proj, text_proj = _projections()
    vision_features = F.normalize(vision_proj(torch.cat(vision).double()), dim=-1)
    text_features = F.normalize(text_proj(torch.cat(text).double()), dim=-1)
    # Global sample order: rank 0's three, then rank 1's two. Positives: each pair itself,
    # samples 0 and 1 (same image on rank 0), samples 0 and 4 (identical text across ranks).
    positives = torch.eye(5, dtype=torch.bool)
    for a, b in ((0, 1), (0, 4)):
        positives[a, b] = positives[b, a] = True
    loss = contrastive_loss(vision_features, text_features, torch.tensor(TEMPERATURE), positives)
    loss.backward()
    expected_grads = {name: p.grad for name, p in [*vision_proj.named_parameters("v"), *text_proj.named_parameters("t")]}

    for result in results:
        assert torch.equal(result["positives"], positives)
        torch.testing.assert_close(result["loss"], loss.detach(), rtol=1e-12, atol=1e-12)
    # Data-parallel training averages parameter gradients over ranks.
    for name, expected in expected_grads.items():
        averaged = sum(result["grads"][name] for result in results) / WORLD
        torch.testing.assert_close(averaged, expected, rtol=1e-10, atol=1e-12)
