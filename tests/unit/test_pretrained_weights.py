"""Vision and text weights load from local files the tests write themselves."""
from __future__ import annotations

import torch
from transformers import BertConfig, BertForMaskedLM

from training.model import create_model
from training.model.model_config import VisionConfig
from training.model.vision import VisionTower

TINY_BEIT = VisionConfig("beitv2_base_patch16_224", 32, timm_kwargs={"patch_size": 8, "embed_dim": 16, "depth": 2, "num_heads": 2})


def test_vision_tower_loads_a_wrapped_beit_checkpoint_with_a_classifier_head(tmp_path):
    torch.manual_seed(0)
    source = VisionTower(TINY_BEIT).eval()
    state = dict(source.trunk.state_dict())
    state["head.weight"], state["head.bias"] = torch.randn(10, 16), torch.randn(10)
    torch.save({"model": state}, tmp_path / "beit.pth")

    torch.manual_seed(1)
    target = VisionTower(TINY_BEIT).eval()
    missing, unexpected = target.load_pretrained(tmp_path / "beit.pth")
    assert (missing, unexpected) == ([], [])
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    assert torch.equal(source(images), target(images))


def test_shared_relative_position_table_of_beit_pretraining_goes_to_every_block(tmp_path):
    source = VisionTower(TINY_BEIT)
    state = {k: v for k, v in source.trunk.state_dict().items() if "relative_position_bias_table" not in k}
    shared = torch.randn_like(source.trunk.blocks[0].attn.relative_position_bias_table)
    state["rel_pos_bias.relative_position_bias_table"] = shared
    torch.save(state, tmp_path / "beit_pretrain.pth")
    target = VisionTower(TINY_BEIT)
    assert target.load_pretrained(tmp_path / "beit_pretrain.pth") == ([], [])
    for block in target.trunk.blocks:
        assert torch.equal(block.attn.relative_position_bias_table, shared)


def test_text_fusion_and_mlm_head_start_from_a_local_bert_directory(tmp_path):
    torch.manual_seed(0)
    bert = BertForMaskedLM(
        BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                   max_position_embeddings=128)
    )
    bert.save_pretrained(tmp_path / "bert")
    model = create_model(
        {
            "vision": {"name": "beitv2_base_patch16_224", "image_size": 64, "timm_kwargs": {"embed_dim": 32, "depth": 1, "num_heads": 2}},
            "text": {"hidden_size": 32, "num_layers": 3, "fusion_start": 2, "num_heads": 2, "intermediate_size": 64,
                     "max_position_embeddings": 128, "pretrained": str(tmp_path / "bert")},
        }
    )
    report = model.load_pretrained_towers()
    assert report["text_missing"] == [] and report["mlm_head_missing"] == [] and report["unused"] == []
    assert sorted({k.split(".")[2] for k in report["fusion_missing"]}) == ["crossattention"]

    source = bert.state_dict()
    for name, value in model.text.state_dict().items():
        assert torch.equal(value, source[f"bert.{name}"]), name
    # The one fusion layer starts from BERT layer 1 (fusion_start - number of fusion layers).
    for name, value in model.fusion.layer[0].state_dict().items():
        if not name.startswith("crossattention."):
            assert torch.equal(value, source[f"bert.encoder.layer.1.{name}"]), name
    assert torch.equal(model.mlm_head.transform.dense.weight, source["cls.predictions.transform.dense.weight"])
    assert torch.equal(model.mlm_head.bias, source["cls.predictions.bias"])
    assert model.mlm_head.decoder.weight is model.text.embeddings.word_embeddings.weight

    # Everything of text, fusion and the MLM head came from BERT except the cross-attention;
    # vision, projections and heads stayed random (no vision checkpoint was named).
    loaded = model.pretrained_parameter_names(report)
    params = {name for name, _ in model.named_parameters()}
    expected = {n for n in params if n.startswith(("text.", "fusion.", "mlm_head.")) and ".crossattention." not in n}
    assert loaded == expected
    assert not any(n.startswith(("vision.", "itm_head.", "bbox_head.", "text_proj.", "temperature.")) for n in loaded)
