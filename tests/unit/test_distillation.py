"""ALBEF momentum distillation: the queue, its positives and the distilled ITC and MLM losses
against loop-by-loop computations on small hand-made cases."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from training.extensions.momentum import FeatureQueue
from training.objectives.itc import contrastive_loss, distilled_contrastive_loss
from training.objectives.mlm import distilled_mlm_loss
from training.objectives.positives import queue_positives
from training.objectives.settings import parse_loss_settings
from training.tasks.task import Task


def _distilled_task(model, queue_size: int, **losses):
    """MODEL's task with momentum distillation attached as the trainer attaches it (without
    DeepSpeed, the task is its own module) and its extension."""
    from training.extensions.momentum import MomentumDistillation

    settings = parse_loss_settings({**losses, "momentum_distillation": {"enabled": True, "queue_size": queue_size}})
    task = Task(model, settings)
    extension = MomentumDistillation(settings.momentum_distillation, settings.same_text_positive)
    extension.attach(task)
    extension.bind(task, "cpu")
    return task, extension


def _unit(*shape: int) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, dtype=torch.float64), dim=-1)


def test_queue_is_a_ring_that_keeps_every_entrys_identity():
    queue = FeatureQueue(6, 2)
    for push in range(2):
        ids = torch.arange(4) + 10 * push
        queue.push(ids[:, None].double().expand(4, 2), -ids[:, None].double().expand(4, 2), ids, ids + 100,
                   torch.tensor([True, True, True, push == 0]))
    # 8 entries through 6 slots: the second push's last two overwrote the first push's first two.
    expected_ids = [12, 13, 2, 3, 10, 11]
    assert queue.image_id.tolist() == expected_ids
    assert queue.text_hash.tolist() == [i + 100 for i in expected_ids]
    assert queue.vision[:, 0].tolist() == expected_ids and queue.text[:, 1].tolist() == [-i for i in expected_ids]
    assert queue.valid.tolist() == [True, False, True, True, True, True]
    assert queue.position == 2
    with pytest.raises(ValueError, match="exceed the queue size 6"):
        queue.push(torch.zeros(7, 2), torch.zeros(7, 2), torch.zeros(7, dtype=torch.long),
                   torch.zeros(7, dtype=torch.long), torch.ones(7, dtype=torch.bool))


def _log_softmax(values: list[float], j: int) -> float:
    top = max(values)
    return values[j] - top - math.log(sum(math.exp(v - top) for v in values))


def _softmax(values: list[float], j: int) -> float:
    return math.exp(_log_softmax(values, j))


def naive_distilled(rows, columns, alpha, temperature) -> float:
    """rows: [(vision, text, momentum vision, momentum text, image id, text hash)];
    columns: [(vision, text, image id, text hash, valid, batch row or None)], all momentum
    features. Positives and candidates decided here, one pair at a time."""
    candidates = [c for c in columns if c[4]]
    total = 0.0
    for i, (v, t, mv, mt, image, text_hash) in enumerate(rows):
        positive = [c[5] == i or (c[5] is None and (c[2] == image or c[3] == text_hash)) for c in candidates]
        for own, mine, column in ((v, mv, 1), (t, mt, 0)):  # vision->text, then text->vision
            sims = [float(own @ c[column]) / temperature for c in candidates]
            teacher = [float(mine @ c[column]) / temperature for c in candidates]
            for j in range(len(candidates)):
                target = (1 - alpha) * positive[j] / sum(positive) + alpha * _softmax(teacher, j)
                total -= target * _log_softmax(sims, j)
    return total / (2 * len(rows))


def test_distilled_contrastive_loss_matches_a_loop_with_positives_in_the_queue():
    torch.manual_seed(0)
    dim, temperature, alpha = 6, 0.1, 0.4
    image_id, text_hash = torch.tensor([10, 11, 12]), torch.tensor([500, 501, 502])
    vision, text, momentum_vision, momentum_text = (_unit(3, dim) for _ in range(4))
    queue = FeatureQueue(6, dim)
    queue.vision, queue.text = _unit(6, dim), _unit(6, dim)
    # Slot 0: image 11 (row 1's image, another text); slot 1: row 2's text of another image;
    # slot 2: image 10 but an empty slot (neither positive nor candidate); slots 3-5: negatives.
    queue.image_id = torch.tensor([11, 40, 10, 41, 42, 43])
    queue.text_hash = torch.tensor([600, 502, 500, 601, 602, 603])
    queue.valid = torch.tensor([True, True, False, True, True, True])

    in_queue = queue_positives(image_id, text_hash, queue, same_text=True)
    assert in_queue.tolist() == [[False] * 6, [True] + [False] * 5, [False, True] + [False] * 4]
    positives = torch.cat([torch.eye(3, dtype=torch.bool), in_queue], dim=1)
    loss = distilled_contrastive_loss(
        vision, text, momentum_vision, momentum_text, torch.cat([momentum_vision, queue.vision]),
        torch.cat([momentum_text, queue.text]), torch.tensor(temperature, dtype=torch.float64), positives,
        torch.cat([torch.ones(3, dtype=torch.bool), queue.valid]), alpha)

    rows = [(vision[i], text[i], momentum_vision[i], momentum_text[i], int(image_id[i]), int(text_hash[i]))
            for i in range(3)]
    columns = [(momentum_vision[i], momentum_text[i], None, None, True, i) for i in range(3)]
    columns += [(queue.vision[k], queue.text[k], int(queue.image_id[k]), int(queue.text_hash[k]),
                 bool(queue.valid[k]), None) for k in range(6)]
    assert loss.item() == pytest.approx(naive_distilled(rows, columns, alpha, temperature), rel=1e-9)

    # Without same-text positives, slot 1 is a negative of row 2.
    assert not queue_positives(image_id, text_hash, queue, same_text=False)[2, 1]


def test_distilled_contrastive_loss_without_alpha_and_queue_is_the_plain_loss():
    torch.manual_seed(1)
    vision, text = _unit(4, 5), _unit(4, 5)
    positives = torch.eye(4, dtype=torch.bool)
    positives[0, 1] = positives[1, 0] = True
    temperature = torch.tensor(0.07, dtype=torch.float64)
    valid = torch.ones(4, dtype=torch.bool)
    distilled = distilled_contrastive_loss(vision, text, vision, text, vision, text, temperature, positives, valid, 0.0)
    torch.testing.assert_close(distilled, contrastive_loss(vision, text, temperature, positives))


def test_distilled_mlm_loss_matches_a_loop():
    torch.manual_seed(2)
    logits, teacher = torch.randn(2, 3, 7, dtype=torch.float64), torch.randn(2, 3, 7, dtype=torch.float64)
    labels = torch.tensor([[4, -100, 1], [-100, -100, 6]])
    alpha = 0.4
    total, count = 0.0, 0
    for n in range(2):
        for k in range(3):
            if labels[n, k] == -100:
                continue
            row, soft = logits[n, k].tolist(), teacher[n, k].tolist()
            hard = -_log_softmax(row, int(labels[n, k]))
            distilled = -sum(_softmax(soft, v) * _log_softmax(row, v) for v in range(7))
            total += (1 - alpha) * hard + alpha * distilled
            count += 1
    assert distilled_mlm_loss(logits, teacher, labels, alpha).item() == pytest.approx(total / count, rel=1e-9)


def _fake_zero3(params, rank: int, world: int, whole: list[torch.Tensor] | None = None) -> None:
    """Gives each parameter the attributes ZeRO-3 gives it: ``ds_tensor``, this rank's
    partition of the flattened value (padded to equal parts), and ``ds_numel``."""
    for i, param in enumerate(params):
        flat = (param.data if whole is None else whole[i]).reshape(-1)
        size = math.ceil(flat.numel() / world)
        padded = torch.cat([flat, flat.new_zeros(size * world - flat.numel())])
        param.ds_tensor = padded[rank * size:(rank + 1) * size].clone()
        param.ds_numel = flat.numel()


def _distilled_task_bound(task):
    """A second extension over the same task (a rank of another run), bound to its copy."""
    from training.extensions.momentum import MomentumDistillation

    extension = MomentumDistillation(task.config.momentum_distillation, task.config.same_text_positive)
    extension.bind(task, "cpu")
    return task, extension


def test_a_resume_on_another_world_size_re_deals_the_zero3_averages_and_keeps_the_queues(monkeypatch):
    import training.extensions.momentum as momentum
    from training.model import create_model

    task, _ = _distilled_task(create_model("tiny"), queue_size=8)
    params = list(task.momentum.parameters())
    torch.manual_seed(3)
    whole = [torch.randn_like(param) for param in params]  # the momentum weights of the old run
    queues = task.momentum.queues
    queues["region"].push(torch.ones(5, 16), -torch.ones(5, 16), torch.arange(5), torch.arange(5) + 9,
                          torch.tensor([True, True, False, True, True]))

    states = []
    for rank in range(2):  # the old run: 2 ranks, each saving its partitions
        monkeypatch.setattr(momentum, "world", lambda rank=rank: (rank, 2))
        _fake_zero3(params, rank, 2, whole)
        _, extension = _distilled_task_bound(task)
        states.append(extension.state_dict())
    saved_queue = {name: value.clone() if isinstance(value, torch.Tensor) else value
                   for name, value in queues["region"].state_dict().items()}
    queues["region"].push(torch.zeros(8, 16), torch.zeros(8, 16), torch.zeros(8, dtype=torch.long),
                          torch.zeros(8, dtype=torch.long), torch.zeros(8, dtype=torch.bool))

    monkeypatch.setattr(momentum, "world", lambda: (2, 3))  # rank 2 of the new run's 3
    _fake_zero3(params, 2, 3, [torch.zeros_like(w) for w in whole])
    _, teacher = _distilled_task_bound(task)
    teacher.load_resharded(states)
    for param, value in zip(params, whole):
        size = math.ceil(value.numel() / 3)
        expected = torch.cat([value.reshape(-1), value.new_zeros(3 * size - value.numel())])[2 * size:3 * size]
        assert torch.equal(param.ds_tensor, expected)
    for name, value in queues["region"].state_dict().items():
        assert (torch.equal(value, saved_queue[name]) if isinstance(value, torch.Tensor)
                else value == saved_queue[name])


def test_momentum_settings_are_validated_naming_the_key():
    from data_pipeline.config import ConfigError
    from training.extensions.momentum import alpha_at, check_queue_sizes

    for bad, message in ((("momentum", 1.0), "losses.momentum_distillation.momentum: "),
                         (("queue_size", 0), "losses.momentum_distillation.queue_size: "),
                         (("alpha", 1.5), "losses.momentum_distillation.alpha: ")):
        with pytest.raises(ConfigError, match=message):
            parse_loss_settings({"momentum_distillation": dict([bad])}, "model.losses")
    settings = parse_loss_settings({"momentum_distillation": {
        "enabled": True, "queue_size": 64, "alpha_ramp_steps": 10}}).momentum_distillation
    assert (settings.momentum, settings.alpha) == (0.995, 0.4)
    assert [alpha_at(settings, step) for step in (0, 5, 10, 50)] == pytest.approx([0.0, 0.2, 0.4, 0.4])
    check_queue_sizes(settings, {"image": 64}, "run.yaml")
    with pytest.raises(ConfigError, match="queue_size: 64 is smaller than the 96 region rows"):
        check_queue_sizes(settings, {"image": 64, "region": 96}, "run.yaml")


def test_itc_consistency_beside_momentum_distillation_scores_the_batchs_own_features():
    """With the momentum copy's candidates in ITC, the consistency term still ranks this batch's
    texts and images by the model's own features (no gradient through the columns)."""
    from tiny_batches import image_batch
    from training.model import create_model
    from training.objectives.itc_consistency import consistency_loss

    model = create_model("tiny")
    task, extension = _distilled_task(model, queue_size=8, weights={"image": {"itc_cons": 0.5}})
    extension.active, extension.alpha = True, 0.4
    batch = image_batch()
    batch["sample_ids"] = torch.arange(len(batch["text_ids"]))
    out = task({"image": batch})
    vision = model.encode_image(batch["images"]).features
    text = model.encode_text(batch["text_ids"], batch["text_mask"]).features
    expected = consistency_loss(vision, text, model.temperature(), vision.detach(), text.detach())
    torch.testing.assert_close(out["losses"]["image"]["itc_cons"], expected)
    assert "itc" in out["losses"]["image"] and torch.isfinite(out["loss"])
