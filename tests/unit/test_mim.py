"""Masked image modelling and masked-patch dropping (model config `mim`): block masks, the
MIM loss, the vision tower over the kept patches, gradients, configuration."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from data_pipeline.config import ConfigError
from tiny_batches import image_batch, region_batch
from training.runtime import rng_state
from training.runtime.instrumentation import SyncCounter
from training.objectives.mim import masked_image_loss
from training.model import CONFIG_DIR, create_model
from training.model.model_config import VisionConfig, model_config_from_dict
from training.model.patch_masking import block_masks, masked_count
from training.model.preprocessing import normalise
from training.model.vision import VisionTower
from training.engine.optim import parameter_groups
from training.tasks.task import Task

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIP's published constants, written out here
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _tiny(**mim) -> dict:
    config = yaml.safe_load((CONFIG_DIR / "tiny.yaml").read_text())
    config["mim"] = {"decoder_width": 32, "decoder_heads": 2, **mim}
    return config


def _components(grid: np.ndarray) -> list[int]:
    """Sizes of the 4-connected groups of True cells."""
    seen = np.zeros_like(grid)
    sizes = []
    for start in zip(*np.nonzero(grid)):
        if seen[start]:
            continue
        stack, size = [start], 0
        seen[start] = True
        while stack:
            r, c = stack.pop()
            size += 1
            for nr, nc in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
                if 0 <= nr < grid.shape[0] and 0 <= nc < grid.shape[1] and grid[nr, nc] and not seen[nr, nc]:
                    seen[nr, nc] = True
                    stack.append((nr, nc))
        sizes.append(size)
    return sizes


@pytest.mark.parametrize("grid, ratio", [(4, 0.5), (4, 0.75), (14, 0.25), (14, 0.5), (14, 0.75)])
def test_block_masks_mask_the_configured_count_and_keep_the_rest(grid, ratio):
    patches = grid * grid
    count = masked_count(patches, ratio)
    assert count == round(ratio * patches)
    masks = block_masks(64, grid, count, "cpu", torch.Generator().manual_seed(grid))
    assert masks.masked.shape == (64, count) and masks.kept.shape == (64, patches - count)
    for masked, kept in zip(masks.masked.tolist(), masks.kept.tolist()):
        assert masked == sorted(masked) and kept == sorted(kept)
        assert sorted(masked + kept) == list(range(patches))  # each patch once: masked or kept
    assert len({tuple(m) for m in masks.masked.tolist()}) > 32  # images draw their own masks


def test_block_masks_are_contiguous_blocks_where_random_masks_are_scattered():
    grid, count, images = 14, 98, 200
    masks = block_masks(images, grid, count, "cpu", torch.Generator().manual_seed(0))
    blocks = [_components(np.isin(np.arange(grid * grid), m).reshape(grid, grid)) for m in masks.masked.tolist()]
    generator = torch.Generator().manual_seed(0)
    scattered = [_components(np.isin(np.arange(grid * grid), torch.randperm(grid * grid, generator=generator)[:count]
                                     .numpy()).reshape(grid, grid)) for _ in range(images)]
    assert all(sum(sizes) == count for sizes in blocks)
    mean_blocks, mean_scattered = np.mean([len(s) for s in blocks]), np.mean([len(s) for s in scattered])
    print(f"\n4-connected pieces per 50 % mask on 14 x 14: block {mean_blocks:.2f}, uniform {mean_scattered:.2f}")
    assert mean_blocks < 2 < 6 < mean_scattered
    # Nearly every image's masked patches are mostly one piece.
    assert np.mean([max(sizes) >= count / 2 for sizes in blocks]) > 0.95


def test_masks_repeat_after_the_saved_generator_state_is_restored():
    torch.manual_seed(7)
    block_masks(4, 14, 98, "cpu")
    state = rng_state.capture()
    first = block_masks(4, 14, 98, "cpu").masked
    block_masks(4, 14, 98, "cpu")
    rng_state.restore(state)
    assert torch.equal(block_masks(4, 14, 98, "cpu").masked, first)


def test_mim_loss_equals_a_hand_computation_on_the_masked_patches_only():
    # One 8 x 8 image of 4 patches of 4 x 4; patches 1 (top right) and 2 (bottom left) masked.
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (1, 3, 8, 8), generator=generator, dtype=torch.uint8)
    masked = torch.tensor([[1, 2]])
    predicted = torch.randn(1, 2, 48, generator=generator)
    expected = []
    for slot, (top, left) in enumerate([(0, 4), (4, 0)]):
        values = [(images[0, c, y, x].item() / 255 - CLIP_MEAN[c]) / CLIP_STD[c]
                  for y in range(top, top + 4) for x in range(left, left + 4) for c in range(3)]
        values = np.array(values)
        target = (values - values.mean()) / np.sqrt(values.var(ddof=1) + 1e-6)
        expected.extend((predicted[0, slot].double().numpy() - target) ** 2)
    loss = masked_image_loss(predicted, normalise(images), masked, 4)
    assert loss.item() == pytest.approx(np.mean(expected), rel=1e-5)
    # The kept patches are not in it.
    changed = images.clone()
    changed[..., :4, :4] = 255 - changed[..., :4, :4]
    changed[..., 4:, 4:] = 0
    assert masked_image_loss(predicted, normalise(changed), masked, 4).item() == loss.item()


def _keys_masked_to_kept(keep: torch.Tensor, prefix: int, patches: int) -> torch.Tensor:
    """(B, 1, N, N) additive attention bias: every token attends only to the prefix and KEEP."""
    allowed = torch.zeros(keep.shape[0], prefix + patches, dtype=torch.bool)
    allowed[:, :prefix] = True
    allowed.scatter_(1, keep + prefix, True)
    return torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))[:, None, None, :]


TOWERS = [
    VisionConfig("beitv2_base_patch16_224", 32, timm_kwargs={"patch_size": 8, "embed_dim": 16, "depth": 2, "num_heads": 2}),
    VisionConfig("vit_base_patch16_224", 32, timm_kwargs={"patch_size": 8, "embed_dim": 16, "depth": 2, "num_heads": 2}),
]


@pytest.mark.parametrize("config", TOWERS, ids=lambda c: c.name.split("_")[0])
def test_the_tower_over_kept_patches_equals_the_full_tower_with_the_masked_ones_unseen(config):
    """Independent computation: timm's own forward over every patch, each attention forbidden to
    look at the masked patches (their keys at -inf): the kept tokens come out as if the masked
    patches had never been there."""
    torch.manual_seed(0)
    tower = VisionTower(config).eval()
    reference = VisionTower(config).eval()
    reference.load_state_dict(tower.state_dict())
    for block in tower.trunk.blocks:  # BEiT: non-zero relative position biases, so that they matter
        if getattr(block.attn, "relative_position_bias_table", None) is not None:
            torch.nn.init.normal_(block.attn.relative_position_bias_table, std=0.5)
    reference.load_state_dict(tower.state_dict())
    tower.enable_kept_patches()
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    masks = block_masks(3, 4, 6, "cpu", torch.Generator().manual_seed(1))
    with torch.no_grad():
        tokens = tower(images, keep=masks.kept)
        trunk, prefix = reference.trunk, reference.num_prefix_tokens
        bias = _keys_masked_to_kept(masks.kept, prefix, 16)
        if config.name.startswith("beit"):
            x = trunk.patch_embed(normalise(images))
            x = torch.cat([trunk.cls_token.expand(3, -1, -1), x], dim=1)
            for block in trunk.blocks:
                x = block(x, shared_rel_pos_bias=bias)
            full = trunk.norm(x)
        else:
            full = trunk.forward_features(normalise(images), attn_mask=bias)
        if getattr(trunk, "fc_norm", None) is not None:
            full = trunk.fc_norm(full)
        kept = full[:, prefix:].gather(1, masks.kept[..., None].expand(-1, -1, full.shape[-1]))
        torch.testing.assert_close(tokens[:, 1:], kept, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(tokens[:, 0], kept.mean(dim=1), rtol=1e-5, atol=1e-5)
        # Keeping every patch is the usual forward, exactly.
        every = torch.arange(16).expand(3, 16)
        assert torch.equal(tower(images, keep=every), tower(images))
        assert not torch.allclose(tokens[:, 0], tower(images)[:, 0], atol=1e-3)  # leaving patches out matters


def test_dropping_masked_patches_gives_the_itc_features_of_the_kept_patches():
    model = create_model(_tiny(drop_masked=True)).eval()
    assert model.mim.decoder is None  # FLIP without MIM
    images = image_batch(0)["images"]
    masks = block_masks(4, 4, 8, "cpu", torch.Generator().manual_seed(2))
    with torch.no_grad():
        tokens, reconstruction = model.mim(model.vision, images, masks)
        features = model._vision_encoding(tokens, tokens.new_ones(tokens.shape[:2], dtype=torch.bool)).features
        # Independently: timm's BEiT over every patch with the masked patches' keys at -inf (the
        # kept patches keep their grid positions, which BEiT's relative biases are indexed by).
        trunk = model.vision.trunk
        x = torch.cat([trunk.cls_token.expand(4, -1, -1), trunk.patch_embed(normalise(images))], dim=1)
        bias = _keys_masked_to_kept(masks.kept, 1, 16)
        for block in trunk.blocks:
            x = block(x, shared_rel_pos_bias=bias)
        patches = trunk.fc_norm(trunk.norm(x))[:, 1:]
        kept_mean = patches.gather(1, masks.kept[..., None].expand(-1, -1, patches.shape[-1])).mean(dim=1)
        expected = torch.nn.functional.normalize(model.vision_proj(kept_mean), dim=-1)
    assert reconstruction is None and tokens.shape[1] == 1 + 8
    torch.testing.assert_close(features, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("drop", [False, True])
def test_mim_loss_reaches_the_decoder_and_the_tower_and_is_weighted(drop):
    config = _tiny(enabled=True, drop_masked=drop)
    config["losses"]["weights"] = {"image": {"mim": 0.25}}
    model = create_model(config)
    task = Task.for_model(model)
    torch.manual_seed(0)
    out = task({"image": image_batch(0)})
    losses = out["losses"]["image"]
    assert sorted(losses) == ["itc", "itm", "mim", "mlm"]
    torch.testing.assert_close(out["loss"], losses["itc"] + losses["itm"] + losses["mlm"] + 0.25 * losses["mim"])
    losses["mim"].backward()
    decoder = {n: p.grad for n, p in model.mim.decoder.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in decoder.values()), \
        [n for n, g in decoder.items() if g is None or g.abs().sum() == 0]
    assert model.vision.trunk.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert model.text_proj.weight.grad is None  # the MIM loss depends on pixels only
    # The trainer's optimizer groups hold the decoder: one step moves its weights.
    groups = parameter_groups(model.named_parameters(), 1e-3, 0.01, is_new=lambda name: False, new_lr_scale=1.0)
    before = model.mim.decoder.head.weight.detach().clone()
    torch.optim.AdamW(groups).step()
    assert not torch.equal(model.mim.decoder.head.weight, before)


def test_kept_patches_under_activation_checkpointing_give_the_same_gradients():
    config = TOWERS[0]
    torch.manual_seed(0)
    plain, checkpointed = VisionTower(config), VisionTower(config)
    checkpointed.load_state_dict(plain.state_dict())
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    keep = block_masks(2, 4, 8, "cpu", torch.Generator().manual_seed(3)).kept
    for tower in (plain, checkpointed):
        tower.enable_kept_patches()
    checkpointed.set_grad_checkpointing(True)
    for tower in (plain, checkpointed):
        tower(images, keep=keep).square().mean().backward()
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_mim_off_by_default_changes_nothing():
    model = create_model("tiny")
    assert model.config.mim.enabled is False and model.config.mim.drop_masked is False and model.mim is None
    assert not any(name.startswith("mim.") for name, _ in model.named_parameters())
    torch.manual_seed(0)
    assert sorted(Task.for_model(model)({"image": image_batch(0)})["losses"]["image"]) == ["itc", "itm", "mlm"]


def test_a_masked_training_step_makes_the_host_wait_for_nothing():
    model = create_model(_tiny(enabled=True, drop_masked=True))
    batches = {"image": image_batch(0), "region": region_batch(1)}
    task = Task.for_model(model)
    with SyncCounter() as counter:
        task(batches)["loss"].backward()
    assert counter.count("project") == 0, counter.events


@pytest.mark.parametrize(("mim", "message"), [
    ({"decoder_width": 30}, "mim.decoder_width: must be a multiple of 4"),
    ({"mask_ratio": 1.0}, "mim.mask_ratio: must be"),
    ({"decoder_depth": 0}, "mim.decoder_depth: must be in .1, 256."),
    ({"enable": True}, "mim.enable: unknown key"),
])
def test_mim_config_mistakes_name_the_key(mim, message):
    config = _tiny()
    config["mim"].update(mim)
    with pytest.raises(ConfigError, match=message):
        model_config_from_dict(config)


def test_a_swin_tower_is_refused_for_masking():
    config = _tiny(enabled=True)
    config["vision"] = {"name": "swin_tiny_patch4_window7_224", "image_size": 64,
                        "timm_kwargs": {"embed_dim": 8, "depths": [1, 1], "num_heads": [1, 2], "window_size": 4}}
    with pytest.raises(ConfigError, match="mim: .* ViT or BEiT .* 'swin_tiny_patch4_window7_224' cannot"):
        create_model(config)
