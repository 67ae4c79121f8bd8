"""ITC over 2 gloo ranks equals the single-process computation on the concatenated batch.

Each rank scores its own rows against every rank's samples (gathered at a fixed shape, padded
to the row bound), so the mean of the ranks' losses is the global loss and the mean of their
parameter gradients is its gradient."""
from __future__ import annotations

import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from training.objectives.gather import gather_with_grad
from training.objectives.itc import contrastive_loss
from training.objectives.positives import PairKeys, pair_positives
from training.objectives.gather import pad_rows

WORLD = 2
TEMPERATURE = 0.1
ROWS = 3  # the bound on samples per rank: rank 1's two are padded to it


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
    keys = PairKeys.local(ids[rank], masks[rank], images[rank])
    all_keys = keys.gathered(ROWS)
    positives = pair_positives(keys, all_keys, same_text=True)
    loss = contrastive_loss(
        vision_features, text_features, torch.tensor(TEMPERATURE), positives,
        gather_with_grad(pad_rows(vision_features, ROWS)), gather_with_grad(pad_rows(text_features, ROWS)),
        column_valid=all_keys.valid, normaliser=all_keys.valid.sum() / WORLD,
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

    # Rank r's rows against the padded global columns: rank 0's three, then rank 1's two and a pad.
    columns = [0, 1, 2, 3, 4]
    padded = torch.zeros(5, 2 * ROWS, dtype=torch.bool)
    padded[:, columns] = positives
    assert torch.equal(results[0]["positives"], padded[:3])
    assert torch.equal(results[1]["positives"], padded[3:])
    torch.testing.assert_close(sum(result["loss"] for result in results) / WORLD, loss.detach(), rtol=1e-12, atol=1e-12)
    # Data-parallel training averages parameter gradients over ranks.
    for name, expected in expected_grads.items():
        averaged = sum(result["grads"][name] for result in results) / WORLD
        torch.testing.assert_close(averaged, expected, rtol=1e-10, atol=1e-12)


def _model_batches(rank: int):
    from tiny_batches import image_batch, region_batch

    # Rank 1 has fewer image-text pairs and more regions: the gathers pad to the row bounds.
    image, region = image_batch(seed=rank, count=4 - rank), region_batch(seed=10 + rank, images=1 + rank)
    image["rows"], region["rows"] = 4, 5
    return image, region


def _model_rank_main(rank: int, port: int, out_dir: str) -> None:
    from training.model import create_model
    from training.tasks.task import Task

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    torch.manual_seed(0)
    task = Task.for_model(create_model("tiny"))
    image, region = _model_batches(rank)
    out = task({"image": image, "region": region})
    out["loss"].backward()
    finite = all(torch.isfinite(p.grad).all() for p in task.parameters() if p.grad is not None)
    task.config.itm_negatives = "local"
    local = task({"image": image, "region": region})["losses"]
    torch.save({"losses": out["losses"], "local_negatives": local, "finite": finite}, f"{out_dir}/model{rank}.pt")
    dist.destroy_process_group()


def test_model_with_global_itm_negatives_trains_over_two_ranks_with_uneven_batches(tmp_path):
    from training.model import create_model
    from training.tasks.task import Task

    mp.spawn(_model_rank_main, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    results = [torch.load(tmp_path / f"model{r}.pt") for r in range(WORLD)]
    assert all(r["finite"] for r in results)
    for kind in ("losses", "local_negatives"):
        assert all(torch.isfinite(v) for r in results for terms in r[kind].values() for v in terms.values())

    # The image ITC of both ranks is the single-process ITC of the concatenated batch.
    torch.manual_seed(0)
    task = Task.for_model(create_model("tiny"))
    batches = [_model_batches(r)[0] for r in range(WORLD)]
    joined = {k: torch.cat([b[k] for b in batches]) for k in batches[0] if k != "rows"}
    with torch.no_grad():
        expected = task({"image": joined})["losses"]["image"]["itc"]
    for kind in ("losses", "local_negatives"):
        mean = sum(result[kind]["image"]["itc"] for result in results) / WORLD
        torch.testing.assert_close(mean, expected, rtol=1e-5, atol=1e-5)
