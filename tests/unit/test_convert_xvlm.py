"""x2vlm-convert on X-VLM checkpoints: Swin in Microsoft's layout (zengyan-97/X-VLM,
models/swin_transformer.py), BERT with 6 text and 6 fusion layers, at the demo's scale
(configs/model/xvlm_demo.yaml: 2 text + 2 fusion layers)."""
from __future__ import annotations

import re

import torch
import torch.nn.functional as F

from official_layout import official_name
from pipeline_helpers import demo_tokenizer  # noqa: F401
from tiny_batches import region_batch, video_batch
from training.model import create_model
from training.convert import main
from training.folders.model_folder import load_model_folder

VOCAB = 128  # xvlm_demo's text.vocab_size
PATCHES = 64  # xvlm_demo's output tokens: an 8 x 8 grid


def official_xvlm_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """MODEL's weights named as X-VLM's code names them. X-VLM has no video parameters.
    Microsoft's Swin merges patches at the end of stage i where timm merges at the start of
    stage i + 1, and saves the buffers attn_mask (shifted blocks) and relative_position_index."""
    official = {}
    for name, value in model.state_dict().items():
        if name.startswith("video."):
            continue
        name = official_name(name)
        name = re.sub(r"^vision_encoder\.layers\.(\d+)\.downsample\.",
                      lambda m: f"vision_encoder.layers.{int(m.group(1)) - 1}.downsample.", name)
        official[name] = value
    official["temp"] = official["temp"].reshape(())
    for stage, depth in enumerate(model.config.vision.timm_kwargs["depths"]):
        for block in range(depth):
            prefix = f"vision_encoder.layers.{stage}.blocks.{block}."
            official[prefix + "attn.relative_position_index"] = torch.zeros(16, 16, dtype=torch.long)
            if block % 2:
                official[prefix + "attn_mask"] = torch.zeros(4, 16, 16)
    return official


def _outputs(model):
    batch = region_batch(seed=4, patches=PATCHES)
    ids, mask = batch["text_ids"] % VOCAB, batch["text_mask"]
    with torch.no_grad():
        image = model.encode_image(batch["images"])
        text = model.encode_text(ids, mask)
        regions = model.encode_regions(image.tokens, batch["image_index"], batch["patch_mask"])
        video = model.encode_video(video_batch(seed=5)["frames"])
        return [image.tokens, image.features, text.features, regions.features, video.features,
                model.itm_score(regions, text), model.predict_box(image.tokens[batch["image_index"]], text),
                model.mlm_head(text.hidden)]


def test_an_official_xvlm_checkpoint_converts_to_identical_outputs(tmp_path, capsys, demo_tokenizer):
    torch.manual_seed(0)
    source = create_model("xvlm_demo", load_pretrained=False).eval()
    official = official_xvlm_state_dict(source)
    assert "vision_encoder.layers.0.downsample.reduction.weight" in official  # Microsoft's layout
    torch.save({"model": official}, tmp_path / "xvlm.th")

    assert main([str(tmp_path / "xvlm.th"), "--model-config", "xvlm_demo", "--tokenizer", str(demo_tokenizer),
                 "--out", str(tmp_path / "converted"), "--strict"]) == 0
    report = capsys.readouterr().out
    assert "official keys with no place in this model: 0" in report
    assert "model keys not in the checkpoint (left as initialised): 0" in report
    # An X-VLM checkpoint is image-only: the video frame positions stay as initialised.
    assert "video.frame_pos_embed: not in the source architecture" in report

    target = load_model_folder(tmp_path / "converted").model.eval()
    target.video.frame_pos_embed.data.copy_(source.video.frame_pos_embed)
    for expected, actual in zip(_outputs(source), _outputs(target)):
        assert torch.equal(expected, actual)


def test_the_converted_patch_merge_is_microsofts(tmp_path, capsys, demo_tokenizer):
    """The one place the layouts could disagree in meaning: the order in which a patch merge
    concatenates its 2x2 neighbours. Microsoft's PatchMerging, written out here, on the
    official stage-0 weights equals the converted model's stage-1 downsample."""
    torch.manual_seed(1)
    official = official_xvlm_state_dict(create_model("xvlm_demo", load_pretrained=False))
    torch.save(official, tmp_path / "xvlm.th")
    assert main([str(tmp_path / "xvlm.th"), "--model-config", "xvlm_demo", "--tokenizer", str(demo_tokenizer),
                 "--out", str(tmp_path / "converted")]) == 0
    merge = load_model_folder(tmp_path / "converted").model.vision.trunk.layers[1].downsample

    x = torch.randn(2, 16, 16, 32)  # (B, H, W, C) after stage 0 of xvlm_demo
    neighbours = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
    prefix = "vision_encoder.layers.0.downsample."
    normed = F.layer_norm(neighbours, (128,), official[prefix + "norm.weight"], official[prefix + "norm.bias"])
    expected = normed @ official[prefix + "reduction.weight"].T
    with torch.no_grad():
        assert torch.allclose(merge(x), expected, atol=1e-6)


def test_the_xvlm_base_config_has_the_papers_size():
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        model = create_model("xvlm_base", load_pretrained=False)
    params = sum(p.numel() for p in model.parameters())
    assert 214e6 < params < 218e6  # X-VLM base: 216M
    assert (model.vision.grid_size, model.vision.width) == (7, 1024)
    assert (model.config.text.num_layers, model.config.text.fusion_start) == (12, 6)
