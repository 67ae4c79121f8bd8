"""The task: the model with the objectives of a run. Its forward over every batch kind, which
objectives run, the loss settings' checks, and the names of its parameters (those of a
checkpoint written before tasks existed included)."""
from __future__ import annotations

import pytest
import torch

from data_pipeline.config import ConfigError
from tiny_batches import image_batch, region_batch, video_batch
from training.model import create_model
from training.objectives import default_weights, objective_classes
from training.objectives.settings import parse_loss_settings
from training.tasks.task import Task, upgraded_parameter_name


def test_the_built_in_objectives_and_their_default_weights():
    assert [cls.name for cls in objective_classes()[:7]] == ["itc", "itc_cons", "itm", "mlm", "box", "mim", "lm"]
    weights = default_weights()
    assert weights["image"] == {"itc": 1.0, "itc_cons": 0.0, "itm": 1.0, "mlm": 1.0, "mim": 1.0, "lm": 0.0}
    assert weights["region"] == {"itc": 1.0, "itc_cons": 0.0, "itm": 1.0, "mlm": 1.0, "bbox": 1.0, "giou": 1.0}
    assert weights["video"] == {"itc": 1.0, "itc_cons": 0.0, "itm": 1.0, "mlm": 1.0}


@pytest.mark.parametrize("losses, problem", [
    ({"weights": {"image": {"itcc": 1.0}}}, r"model.losses.weights.image.itcc: unknown loss term \(allowed: itc, "),
    ({"weights": {"image": {"itc": float("nan")}}}, r"model.losses.weights.image.itc: must be a finite number"),
    ({"weights": {"image": {"itc": -1}}}, r"model.losses.weights.image.itc: must be a finite number >= 0"),
    ({"weights": {"pictures": {"itc": 1}}}, r"model.losses.weights.pictures: no objective applies to 'pictures'"),
    ({"itm_negative": "local"}, r"model.losses.itm_negative: unknown key \(allowed: .*itm_negatives"),
    ({"momentum_distillation": {"alpha": 2}}, r"model.losses.momentum_distillation.alpha: must be in \[0, 1\]"),
])
def test_loss_settings_are_checked_naming_the_key(losses, problem):
    with pytest.raises(ConfigError, match=problem):
        parse_loss_settings(losses, "model.losses")


def test_which_objectives_run_follows_the_weights_and_the_batches():
    model = create_model("tiny")
    task = Task.for_model(model, batches=("image", "region"))
    assert task.plan == {"image": ["itc", "itm", "mlm"], "region": ["itc", "itm", "mlm", "box"]}
    grounding = Task(model, parse_loss_settings({"weights": {"region": {"itc": 0, "itm": 0, "mlm": 0}}}),
                     batches=("region",))
    assert grounding.plan == {"region": ["box"]} and list(grounding.objectives) == ["box"]
    captioning = Task(model, parse_loss_settings({"weights": {"image": {"lm": 1.0, "itc_cons": 0.5}}}))
    assert captioning.plan["image"] == ["itc", "itc_cons", "itm", "mlm", "lm"]
    assert "mim" not in captioning.plan["image"]  # no MIM decoder in the tiny model


def test_parameters_are_the_models_under_model_and_old_names_load():
    model = create_model("tiny")
    task = Task.for_model(model)
    assert {name for name, _ in task.named_parameters()} == {f"model.{name}" for name, _ in model.named_parameters()}
    assert upgraded_parameter_name("vision.trunk.patch_embed.proj.weight") == "model.vision.trunk.patch_embed.proj.weight"
    assert upgraded_parameter_name("momentum.vision.trunk.cls_token") == "momentum.vision.trunk.cls_token"
    # A state dict named as a version-0.1.0 checkpoint names it: the model's parts at the top.
    torch.manual_seed(5)
    source = create_model("tiny")
    fresh = Task.for_model(create_model("tiny"))
    fresh.load_state_dict(source.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(fresh.model.state_dict().values(), source.state_dict().values()))


def test_itm_negatives_drawn_are_never_positives(monkeypatch):
    import training.objectives.itm as itm

    draws, sample = [], itm.sample_hard_negatives

    def recording(logits, positives, generator=None):
        index, valid = sample(logits, positives, generator)
        draws.append((positives, index, valid))
        return index, valid

    monkeypatch.setattr(itm, "sample_hard_negatives", recording)
    task = Task.for_model(create_model("tiny"))
    batch = region_batch()
    for seed in range(5):
        torch.manual_seed(seed)
        task({"region": batch})
    assert len(draws) == 10
    for positives, index, valid in draws:
        # Regions 0, 1 share image 0 and regions 2, 3, 4 share image 1: all of them positives.
        assert positives.sum().item() == 2 * 2 + 3 * 3
        assert valid.all()
        assert not positives[torch.arange(len(index)), index].any()


def _all_kinds(task):
    torch.manual_seed(0)
    return task({"image": image_batch(0), "region": region_batch(1), "video": video_batch(2)})


def test_forward_over_all_kinds_weights_losses_and_reaches_every_parameter():
    task = Task.for_model(create_model("tiny"))
    task.config.weights["region"]["giou"] = 2.0
    task.config.weights["video"]["mlm"] = 0.5
    out = _all_kinds(task)
    losses = out["losses"]
    assert {k: sorted(v) for k, v in losses.items()} == {
        "image": ["itc", "itm", "mlm"],
        "region": ["bbox", "giou", "itc", "itm", "mlm"],
        "video": ["itc", "itm", "mlm"],
    }
    expected = sum(v for terms in losses.values() for v in terms.values())
    expected = expected + losses["region"]["giou"] - 0.5 * losses["video"]["mlm"]
    torch.testing.assert_close(out["loss"], expected)
    assert out["features"]["region"]["vision"].shape == (5, 16)
    out["loss"].backward()
    no_grad = [n for n, p in task.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert no_grad == []


def test_bf16_autocast_forward_and_backward_are_finite():
    task = Task.for_model(create_model("tiny"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = _all_kinds(task)
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in task.parameters() if p.grad is not None)


def test_bf16_weights_take_fp32_pixels_and_give_fp32_losses():
    task = Task.for_model(create_model("tiny").to(torch.bfloat16))
    out = _all_kinds(task)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for terms in out["losses"].values() for v in terms.values())
    out["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in task.parameters() if p.grad is not None)


def test_activation_checkpointing_gives_the_same_loss_and_gradients():
    torch.manual_seed(3)
    plain = create_model("tiny")
    checkpointed = create_model("tiny")
    checkpointed.load_state_dict(plain.state_dict())
    checkpointed.set_activation_checkpointing(True)
    results = []
    for model in (plain, checkpointed):
        out = _all_kinds(Task.for_model(model))
        out["loss"].backward()
        results.append((out["loss"], {n: p.grad for n, p in model.named_parameters()}))
    torch.testing.assert_close(results[0][0], results[1][0])
    for name, grad in results[0][1].items():
        torch.testing.assert_close(grad, results[1][1][name], msg=name)


