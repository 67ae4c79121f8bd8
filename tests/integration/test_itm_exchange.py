"""ITM with global hard negatives over gloo ranks: the on-demand exchange of drawn text rows
against the gather-everything computation, the distribution of the draws, and the exchange's
slots (capacity, drops, gradient back to the owner).

The model runs in float64 with every loss weight but ITM's at zero, on batches of unequal size
per rank (padded to the kind's row bound). With the draws fixed (the hardest drawable negative
instead of a random one), the sum over ranks of the ITM losses and the mean over ranks of the
parameter gradients equal those of an independent gather-everything computation: every rank's
vision tokens and text hidden states all-gathered with gradient (torch.distributed.nn), each
rank computing its own pairs, the loss divided by the global number of pairs / world size. Per
rank the two differ: the exchange computes a pair where its vision lives. Both kinds of moved
text row (`losses.itm_exchange`) are compared.
"""
from __future__ import annotations

import functools
import math
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

ROWS = {"image": 4, "region": 6}
EXCHANGES = ("hidden_states", "token_ids")  # losses.itm_exchange
DRAWS = 3000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batches(rank: int) -> dict:
    from tiny_batches import image_batch, region_batch

    # Unequal per rank: 3, 4, 2 image-text pairs; 3, 5, 3 region texts over 1, 2, 1 images.
    image = image_batch(seed=rank, count=(3, 4, 2)[rank])
    region = region_batch(seed=10 + rank, images=(1, 2, 1)[rank])
    return {"image": image, "region": region}


def _model(world: int):
    """The tiny model in float64 and its task with ITM alone weighing."""
    from training.model import create_model
    from training.objectives import default_weights
    from training.objectives.settings import parse_loss_settings
    from training.tasks.task import Task

    torch.manual_seed(0)
    model = create_model("tiny").double()
    weights = {kind: {term: float(term == "itm") for term in terms} for kind, terms in default_weights().items()}
    # every request fits: the comparison is exact
    settings = parse_loss_settings({"weights": weights, "itm_exchange_capacity": float(world),
                                    "itm_receive_margin": 100.0})
    return model, Task(model, settings)


def _hardest(logits: torch.Tensor, excluded: torch.Tensor, generator=None):
    drawable = ~excluded & torch.isfinite(logits)
    return logits.masked_fill(~drawable, float("-inf")).argmax(dim=1), drawable.any(dim=1)


def _encode(model, kind: str, batch: dict):
    if kind == "image":
        return model.encode_image(batch["images"])
    return model.encode_regions(model.vision(batch["images"]), batch["image_index"], batch["patch_mask"])


def _gather_padded(tensor: torch.Tensor, rows: int, world: int, with_grad: bool) -> torch.Tensor:
    padded = torch.cat([tensor, tensor.new_zeros((rows - len(tensor),) + tuple(tensor.shape[1:]))])
    if with_grad:
        return torch.cat(torch.distributed.nn.functional.all_gather(padded))
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat(parts)


def _gather_everything_itm(model, kind: str, batch: dict, rank: int, world: int) -> torch.Tensor:
    """The reference: every rank's tokens and hidden states gathered with gradient."""
    rows, count = ROWS[kind], len(batch["text_ids"])
    vision = _encode(model, kind, batch)
    text = model.encode_text(batch["text_ids"], batch["text_mask"])
    temperature = model.temperature().detach()
    with torch.no_grad():
        valid = _gather_padded(torch.ones(count, dtype=torch.bool), rows, world, False)
        tokens_key = _gather_padded(batch["text_ids"] * batch["text_mask"], rows, world, False)
        image_key = _gather_padded(batch.get("image_index", torch.arange(count)), rows, world, False)
        owner = torch.arange(world * rows) // rows
        own = slice(rank * rows, rank * rows + count)
        positives = ((owner[own, None] == owner[None, :]) & (image_key[own, None] == image_key[None, :])) | (
            tokens_key[own, None, :] == tokens_key[None, :, :]).all(dim=-1)
        excluded = positives | ~valid[None, :]
        vision_features = _gather_padded(vision.features, rows, world, False)
        text_features = _gather_padded(text.features, rows, world, False)
        negative_text, text_valid = _hardest(vision.features @ text_features.t() / temperature, excluded)
        negative_vision, vision_valid = _hardest(text.features @ vision_features.t() / temperature, excluded)
    tokens = _gather_padded(vision.tokens, rows, world, True)
    vision_mask = _gather_padded(vision.mask, rows, world, False)
    hidden = _gather_padded(text.hidden, rows, world, True)
    text_mask = _gather_padded(text.mask, rows, world, False)
    fused = model.fuse(torch.cat([vision.tokens, vision.tokens, tokens[negative_vision]]),
                       torch.cat([vision.mask, vision.mask, vision_mask[negative_vision]]),
                       torch.cat([text.hidden, hidden[negative_text], text.hidden]),
                       torch.cat([text.mask, text_mask[negative_text], text.mask]))
    logits = model.itm_head(fused[:, 0])
    labels = torch.cat([torch.ones(count), torch.zeros(2 * count)]).long()
    weights = torch.cat([torch.ones(count, dtype=torch.bool), text_valid, vision_valid]).double()
    pairs = weights.sum().clone()
    dist.all_reduce(pairs)
    return (F.cross_entropy(logits, labels, reduction="none") * weights).sum() / (pairs / world)


def _recording_sampler(records: list, draw_counts: bool):
    from training.objectives.itm import sample_hard_negatives

    def sampler(logits, excluded, generator=None):
        record = {"logits": logits.clone(), "excluded": excluded.clone()}
        if draw_counts:  # DRAWS draws per row at once, each row repeated
            index, valid = sample_hard_negatives(logits.repeat(DRAWS, 1), excluded.repeat(DRAWS, 1))
            counts = torch.zeros(logits.shape, dtype=torch.float64)
            rows = torch.arange(len(logits)).repeat(DRAWS)
            record["counts"] = counts.index_put_((rows, index), valid.double(), accumulate=True)
        records.append(record)
        return _hardest(logits, excluded)

    return sampler


def _rank_main(rank: int, world: int, port: int, out_dir: str) -> None:
    import training.objectives.itm as itm

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    torch.manual_seed(100 + rank)
    records: list = []
    itm.sample_hard_negatives = _recording_sampler(records, draw_counts=world == 2)
    model, task = _model(world)
    batches = _batches(rank)
    result = {"records": records}
    for exchange in EXCHANGES:
        task.config.itm_exchange = exchange
        out = task({kind: {**batch, "rows": ROWS[kind]} for kind, batch in batches.items()})
        out["loss"].backward()
        result[exchange] = {
            "itm": {kind: out["losses"][kind]["itm"].detach() for kind in ROWS},
            "dropped": {kind: out["figures"][kind]["itm_dropped"] for kind in ROWS},
            "grads": {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}}
        model.zero_grad(set_to_none=True)
        if exchange == EXCHANGES[0]:
            records = records[:]  # the statistical test reads the first computation's draws
            itm.sample_hard_negatives = _recording_sampler(records, draw_counts=False)
    reference = {kind: _gather_everything_itm(model, kind, batches[kind], rank, world) for kind in ROWS}
    sum(reference.values()).backward()
    result["reference_itm"] = {kind: value.detach() for kind, value in reference.items()}
    result["reference_grads"] = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    torch.save(result, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    @functools.cache
    def run(world: int) -> list[dict]:
        out = tmp_path_factory.mktemp(f"itm_exchange_{world}")
        mp.spawn(_rank_main, args=(world, _free_port(), str(out)), nprocs=world, join=True)
        return [torch.load(out / f"rank{r}.pt") for r in range(world)]

    return run


@pytest.mark.parametrize("exchange", EXCHANGES)
@pytest.mark.parametrize("world", [2, 3])
def test_itm_exchange_equals_gather_everything_on_unequal_batches(runs, world, exchange):
    """Hidden states with their gradient sent back, or token ids encoded again where the pair is
    computed: the same losses and summed gradients (the model's dropout is 0)."""
    results = [{**r[exchange], "reference_itm": r["reference_itm"], "reference_grads": r["reference_grads"]}
               for r in runs(world)]
    for kind in ROWS:
        total = sum(r["itm"][kind] for r in results)
        reference = sum(r["reference_itm"][kind] for r in results)
        torch.testing.assert_close(total, reference, rtol=1e-10, atol=1e-12)
        assert all(r["dropped"][kind] == 0 for r in results)
        # Per rank the pairs are placed differently, so the losses themselves differ.
        assert not all(torch.isclose(r["itm"][kind], r["reference_itm"][kind]) for r in results)
    names = set().union(*(r["grads"] for r in results), *(r["reference_grads"] for r in results))
    compared = 0
    for name in sorted(names):
        zero = torch.zeros_like(next(r[g][name] for r in results for g in ("grads", "reference_grads") if name in r[g]))
        mean = sum(r["grads"].get(name, zero) for r in results) / world
        expected = sum(r["reference_grads"].get(name, zero) for r in results) / world
        torch.testing.assert_close(mean, expected, rtol=1e-9, atol=1e-12, msg=name)
        compared += bool(expected.abs().sum() > 0)
    assert compared > 20  # the text tower, fusion layers, ITM head and vision tower all take part


def _independent_draw_distribution(rank: int, kind: str, direction: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits over the padded global columns, softmax probabilities over the non-positives),
    from the model and the batches of both ranks in this process."""
    world, rows = 2, ROWS[kind]
    model, _ = _model(world)
    features, keys = [], []
    with torch.no_grad():
        for r in range(world):
            batch = _batches(r)[kind]
            count = len(batch["text_ids"])
            vision = _encode(model, kind, batch).features
            text = model.encode_text(batch["text_ids"], batch["text_mask"]).features
            features.append((vision, text))
            image = batch.get("image_index", torch.arange(count))
            keys += [(r, int(image[k]), tuple((batch["text_ids"][k] * batch["text_mask"][k]).tolist()))
                     for k in range(count)]
            keys += [None] * (rows - count)
        own = features[rank][0] if direction == "v2t" else features[rank][1]
        columns = [f[1] if direction == "v2t" else f[0] for f in features]
        temperature = model.temperature()
        logits = torch.full((len(own), world * rows), float("-inf"), dtype=torch.float64)
        for r, column in enumerate(columns):
            logits[:, r * rows: r * rows + len(column)] = own @ column.t() / temperature
    probabilities = torch.zeros_like(logits)
    for i in range(len(own)):
        mine = keys[rank * rows + i]
        allowed = [j for j, key in enumerate(keys) if key is not None
                   and not ((key[0] == mine[0] and key[1] == mine[1]) or key[2] == mine[2])]
        probabilities[i, allowed] = torch.softmax(logits[i, allowed], dim=0)
    return logits, probabilities


def test_drawn_negatives_follow_the_softmax_over_the_global_non_positives(runs):
    results = runs(2)
    checked = 0
    for rank, result in enumerate(results):
        # The model draws per kind: image v2t, t2v, then region v2t, t2v.
        for record, (kind, direction) in zip(result["records"], [(k, d) for k in ROWS for d in ("v2t", "t2v")]):
            logits, expected = _independent_draw_distribution(rank, kind, direction)
            real = torch.isfinite(logits)
            # The model draws from fp32 similarities.
            torch.testing.assert_close(record["logits"][real].double(), logits[real], rtol=1e-5, atol=1e-5)
            frequencies = record["counts"] / DRAWS
            assert torch.equal(frequencies[expected == 0], torch.zeros_like(frequencies[expected == 0]))
            # Each cell a binomial proportion: within 5 standard deviations (and 2 draws).
            sigma = (expected * (1 - expected) / DRAWS).sqrt()
            assert ((frequencies - expected).abs() <= 5 * sigma + 2 / DRAWS).all(), (kind, direction)
            # And as a whole, per row: chi-square over the cells expected to get 5 or more draws.
            for row in range(len(expected)):
                cells = expected[row] * DRAWS >= 5
                chi2 = ((record["counts"][row, cells] - expected[row, cells] * DRAWS) ** 2
                        / (expected[row, cells] * DRAWS)).sum()
                dof = int(cells.sum()) - 1
                assert chi2 < dof + 6 * math.sqrt(2 * max(dof, 1)), (kind, direction, row, float(chi2), dof)
            checked += 1
    assert checked == 8


def _exchange_main(rank: int, port: int, out_dir: str) -> None:
    from training.objectives.itm_exchange import fetch_rows, send_rows

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    rows = 4
    # Rows of rank r: 10 r + 0..3 (rank 1 holds 3 real rows), each row (value, 2 x value).
    count = (4, 3)[rank]
    payload = torch.stack([torch.arange(count) + 10.0 * rank, 2 * (torch.arange(count) + 10.0 * rank)], dim=1)
    payload.requires_grad_(True)
    # Rank 0 asks rank 1 for rows 2, 0, 1 and itself for row 3 with 2 slots per pair: the third
    # request to rank 1 does not fit. Rank 1 asks rank 0 for row 1 twice; its last row asks nothing.
    index = {0: torch.tensor([6, 4, 5, 3]), 1: torch.tensor([1, 1, 0])}[rank]
    wanted = {0: torch.tensor([True, True, True, True]), 1: torch.tensor([True, True, False])}[rank]
    fetched, placed = fetch_rows(payload, index, wanted, rows, capacity=2)
    # Both ranks send every row to rank 0's row (index % 2): rank 0 keeps at most 5 of the 7.
    received = send_rows(payload, torch.arange(count) % 2, torch.ones(count, dtype=torch.bool), rows, 4, keep=5)
    weights = torch.arange(1.0, 1 + len(received.rows))[:, None] * received.valid[:, None]
    ((fetched * placed[:, None]).sum() + (received.rows * weights).sum()).backward()
    torch.save({"fetched": fetched.detach(), "placed": placed, "received": received, "grad": payload.grad},
               f"{out_dir}/exchange{rank}.pt")
    dist.destroy_process_group()


def test_exchange_slots_place_drop_and_return_gradients(tmp_path):
    mp.spawn(_exchange_main, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    zero, one = (torch.load(tmp_path / f"exchange{r}.pt", weights_only=False) for r in range(2))
    assert zero["placed"].tolist() == [True, True, False, True]
    assert zero["fetched"][[0, 1, 3]].tolist() == [[12.0, 24.0], [10.0, 20.0], [3.0, 6.0]]
    assert one["placed"].tolist() == [True, True, False]
    assert one["fetched"][:2].tolist() == [[1.0, 2.0], [1.0, 2.0]]
    # Rank 0 receives its own 4 rows, then rank 1's 3, keeps the first 5: rows 0-3 of rank 0 and
    # row 0 of rank 1, to be paired with its rows 0, 1, 0, 1, 0.
    kept = zero["received"]
    assert kept.valid.all() and kept.target.tolist() == [0, 1, 0, 1, 0]
    assert kept.rows.tolist() == [[0.0, 0.0], [1.0, 2.0], [2.0, 4.0], [3.0, 6.0], [10.0, 20.0]]
    assert int(kept.dropped_receiving) == 2 and int(kept.dropped_sending) == 0
    assert not one["received"].valid.any() and int(one["received"].dropped_receiving) == 0
    # Gradients come home: rank 0's rows kept by itself with weights 1-4, its row 1 also fetched
    # twice by rank 1 (+2) and its row 3 by itself (+1); rank 1's row 0 kept by rank 0 with
    # weight 5 and fetched by it (+1), its row 2 fetched (+1), its row 1 asked for but dropped.
    assert zero["grad"].tolist() == [[1.0, 1.0], [4.0, 4.0], [3.0, 3.0], [5.0, 5.0]]
    assert one["grad"].tolist() == [[6.0, 6.0], [0.0, 0.0], [1.0, 1.0]]
