"""The X²-VLM model: sizes, visual concepts, the encoders and heads; the package's imports."""
from __future__ import annotations

import pytest
import torch

from tiny_batches import image_batch, region_batch, video_batch
from training.model import create_model
from training.model.fusion import QueryKeyValue
from training.model.regions import region_tokens
from training.model.video import FrameTemporalPooling
from training.tasks.task import Task


def _count(name: str) -> int:
    with torch.device("meta"):
        model = create_model(name)
    return sum(p.numel() for p in model.parameters())


def test_parameter_counts_of_base_and_large():
    base, large = _count("x2vlm_base"), _count("x2vlm_large")
    print(f"\nX2-VLM base: {base:,} parameters ({base / 1e6:.2f}M); large: {large:,} ({large / 1e6:.2f}M)")
    assert abs(base - 254.8e6) / 254.8e6 < 0.02
    assert abs(large - 593e6) / 593e6 < 0.03


def test_region_token_zero_is_the_masked_mean_of_its_patches():
    image_tokens = torch.arange(2 * 5 * 2, dtype=torch.float32).reshape(2, 5, 2)
    image_index = torch.tensor([1, 0])
    patch_mask = torch.tensor([[True, True, False, True, False], [True, False, False, False, True]])
    tokens = region_tokens(image_tokens, image_index, patch_mask)
    # Region 0 is on image 1 (tokens 10..19) over patches 1 and 3: rows [12, 13] and [16, 17].
    assert tokens[0, 0].tolist() == [14.0, 15.0]
    # Region 1 is on image 0 over patch 4 only: row [8, 9].
    assert tokens[1, 0].tolist() == [8.0, 9.0]
    assert torch.equal(tokens[0, 1:], image_tokens[1, 1:])
    assert torch.equal(tokens[1, 1:], image_tokens[0, 1:])


def test_vision_tokens_start_with_the_mean_of_patch_tokens_for_beit_vit_and_swin():
    from training.model.model_config import VisionConfig
    from training.model.vision import VisionTower

    towers = [
        VisionConfig("beitv2_base_patch16_224", 32, timm_kwargs={"patch_size": 8, "embed_dim": 16, "depth": 1, "num_heads": 2}),
        VisionConfig("vit_base_patch16_224", 32, timm_kwargs={"patch_size": 8, "embed_dim": 16, "depth": 1, "num_heads": 2}),
        VisionConfig("swin_tiny_patch4_window7_224", 64, timm_kwargs={"embed_dim": 8, "depths": (1, 1), "num_heads": (1, 2), "window_size": 4}),
    ]
    for config in towers:
        tower = VisionTower(config).eval()
        tokens = tower(torch.randint(0, 256, (2, 3, config.image_size, config.image_size), dtype=torch.uint8))
        assert tokens.shape == (2, 1 + tower.num_patches, tower.width), config.name
        torch.testing.assert_close(tokens[:, 0], tokens[:, 1:].mean(dim=1))


def test_vision_tower_normalises_uint8_pixels_with_clip_mean_and_std():
    from data_pipeline.kinds.collate import collate_image_text
    from training.model.model_config import VisionConfig
    from training.model.vision import VisionTower

    torch.manual_seed(0)
    config = VisionConfig("vit_base_patch16_224", 32, timm_kwargs={"patch_size": 8, "embed_dim": 16, "depth": 1, "num_heads": 2})
    tower = VisionTower(config).eval()
    hwc = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8)
    text = {name: torch.zeros(4, dtype=torch.int64).numpy() for name in ("text_ids", "text_mask", "mlm_ids", "mlm_labels")}
    batch = collate_image_text([{"image": image.numpy(), **text, "key": str(i)} for i, image in enumerate(hwc)])
    # CLIP's published constants, written out here: independent of the model's own copy.
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073], dtype=torch.float64).view(3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711], dtype=torch.float64).view(3, 1, 1)
    plain = ((hwc.permute(0, 3, 1, 2).double() / 255 - mean) / std).float().contiguous()
    trunk_input = {}
    tower.trunk.patch_embed.register_forward_pre_hook(lambda module, args: trunk_input.update(images=args[0]))
    tokens = tower(batch["images"])
    torch.testing.assert_close(trunk_input["images"], plain)
    patches = tower.trunk.forward_features(plain)[:, tower.num_prefix_tokens:]
    torch.testing.assert_close(tokens, torch.cat([patches.mean(dim=1, keepdim=True), patches], dim=1))


def test_vision_tower_refuses_float_pixels_naming_what_it_takes():
    from training.model.model_config import VisionConfig
    from training.model.vision import VisionTower

    config = VisionConfig("vit_base_patch16_224", 32, timm_kwargs={"patch_size": 8, "embed_dim": 16, "depth": 1, "num_heads": 2})
    tower = VisionTower(config).eval()
    with pytest.raises(TypeError, match=r"takes uint8 pixels .* got a torch.float32 tensor of shape \(2, 3, 32, 32\)"):
        tower(torch.rand(2, 3, 32, 32))


def test_normalisation_is_cached_per_device_and_keeps_float32():
    from training.model.preprocessing import _mean_std_on, normalise

    white = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    out = normalise(torch.cat([white, torch.zeros_like(white)]))
    assert out.dtype == torch.float32
    for c, (m, s) in enumerate(zip([0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711])):
        assert torch.allclose(out[0, c], torch.tensor((1 - m) / s)) and torch.allclose(out[1, c], torch.tensor(-m / s))
    assert _mean_std_on(torch.device("cpu"))[0] is _mean_std_on(torch.device("cpu"))[0]


def test_attention_is_masked_softmax_attention():
    torch.manual_seed(0)
    attention = QueryKeyValue(width=4, key_value_width=6, num_heads=2, dropout=0.0)
    hidden, context = torch.randn(1, 3, 4), torch.randn(1, 5, 6)
    mask = torch.tensor([[True, False, True, True, False]])
    with torch.no_grad():
        out = attention(hidden, context, mask)
        q, k, v = attention.query(hidden[0]), attention.key(context[0]), attention.value(context[0])
    for head in range(2):
        cols = slice(2 * head, 2 * head + 2)  # 2 dims per head
        for i in range(3):
            scores = [float(q[i, cols] @ k[j, cols]) / 2**0.5 if mask[0, j] else float("-inf") for j in range(5)]
            weights = torch.tensor(scores).softmax(dim=0)
            expected = sum(weights[j] * v[j, cols] for j in range(5))
            torch.testing.assert_close(out[0, i, cols], expected)


def test_region_patch_mask_limits_cross_attention_to_the_box():
    model = create_model("tiny").eval()
    batch = region_batch()
    image_tokens = model.vision(batch["images"])
    text = model.encode_text(batch["text_ids"], batch["text_mask"])
    regions = model.encode_regions(image_tokens, batch["image_index"], batch["patch_mask"])
    before = model.itm_score(regions, text)
    outside = ~batch["patch_mask"][0]
    changed = regions.tokens.clone()
    changed[0, outside] += 5.0
    regions.tokens = changed
    after = model.itm_score(regions, text)
    assert torch.equal(before, after)
    changed[0, 1 + batch["patch_mask"][0, 1:].nonzero()[0]] += 5.0
    assert not torch.equal(before[0], model.itm_score(regions, text)[0])


def test_video_tokens_are_the_frame_mean_after_frame_positions():
    pooling = FrameTemporalPooling(max_frames=4, width=2)
    frames = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    out = pooling(frames)
    position = pooling.frame_pos_embed.detach()
    for b in range(2):
        for t in range(2):
            expected = sum(frames[b, f, t] + position[0, f, 0] for f in range(3)) / 3
            torch.testing.assert_close(out[b, t], expected)
    with pytest.raises(ValueError, match="at most 4"):
        pooling(torch.zeros(1, 5, 2, 2))


def test_temperature_is_clamped_but_keeps_its_gradient():
    model = create_model("tiny")
    with torch.no_grad():
        model.temperature.temp.fill_(0.9)
    value = model.temperature()
    assert value.item() == pytest.approx(0.5)
    value.backward()
    assert model.temperature.temp.grad.item() == 1.0


def test_evaluation_interface():
    model = create_model("tiny").eval()
    batch = region_batch()
    with torch.no_grad():
        image = model.encode_image(batch["images"])
        text = model.encode_text(batch["text_ids"], batch["text_mask"])
        regions = model.encode_regions(image.tokens, batch["image_index"], batch["patch_mask"])
        video = model.encode_video(video_batch()["frames"])
        score = model.itm_score(regions, text)
        boxes = model.predict_box(image.tokens[batch["image_index"]], text)
    assert image.features.shape == (2, 16) and video.features.shape == (2, 16) and text.features.shape == (5, 16)
    torch.testing.assert_close(text.features.norm(dim=-1), torch.ones(5))
    assert ((score > 0) & (score < 1)).all()
    assert boxes.shape == (5, 4) and ((boxes > 0) & (boxes < 1)).all()


def test_roberta_text_tower_swaps_in():
    config = {
        "vision": {"name": "beitv2_base_patch16_224", "image_size": 64, "timm_kwargs": {"embed_dim": 32, "depth": 1, "num_heads": 2}},
        "text": {"kind": "roberta", "vocab_size": 3000, "hidden_size": 32, "num_layers": 3, "fusion_start": 2, "num_heads": 2,
                 "intermediate_size": 64, "max_position_embeddings": 130, "pad_token_id": 1},
        "embed_dim": 16,
    }
    model = create_model(config)
    assert type(model.text).__name__ == "RobertaModel"
    out = Task.for_model(model)({"image": image_batch(length=8)})
    assert torch.isfinite(out["loss"])


def test_the_model_package_imports_nothing_from_the_loader():
    """The model owns its preprocessing; of the data pipeline it uses only the project's
    configuration mechanism and logging set-up, which import nothing else of the project."""
    import ast
    from pathlib import Path

    import training.model

    allowed = {"data_pipeline.config", "data_pipeline.logging_setup"}

    def imports(path: Path) -> list[str]:
        names = []
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names.append("." * node.level + (node.module or ""))
        return names

    for path in Path(training.model.__file__).parent.glob("*.py"):
        names = imports(path)
        assert all(n.split(".")[0] != "data_pipeline" or n in allowed for n in names), f"{path.name} imports {names}"
    root = Path(training.model.__file__).parents[2]
    for module in allowed:
        names = imports(root / (module.replace(".", "/") + ".py"))
        assert not any(n.startswith((".", "data_pipeline", "training", "launch")) for n in names), (module, names)
