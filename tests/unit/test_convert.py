"""x2vlm-convert: a checkpoint with the official X²-VLM names loads back to identical outputs."""
from __future__ import annotations

import torch

from official_layout import official_name, write_official_checkpoint
from pipeline_helpers import demo_tokenizer  # noqa: F401
from tiny_batches import region_batch, video_batch
from training.model import create_model
from training.convert import main
from training.folders.model_folder import load_model_folder, read_folder_weights


def _outputs(model):
    batch = region_batch(seed=4)
    with torch.no_grad():
        image = model.encode_image(batch["images"])
        text = model.encode_text(batch["text_ids"], batch["text_mask"])
        regions = model.encode_regions(image.tokens, batch["image_index"], batch["patch_mask"])
        video = model.encode_video(video_batch(seed=5)["frames"])
        return [
            image.features, text.features, regions.features, video.features, model.temperature(),
            model.itm_score(regions, text), model.predict_box(image.tokens[batch["image_index"]], text),
            model.mlm_head(text.hidden),
        ]


def test_official_checkpoint_round_trips_to_identical_outputs(tmp_path, capsys, demo_tokenizer):
    torch.manual_seed(0)
    source = create_model("tiny").eval()
    official = {official_name(k): v for k, v in source.state_dict().items()}
    official["temp"] = official["temp"].reshape(())  # the official temperature is a 0-d tensor
    # What the official code also saves: buffers and the decoder tied to the word embeddings.
    official["text_encoder.bert.embeddings.position_ids"] = torch.arange(128)[None]
    official["vision_encoder.blocks.0.attn.relative_position_index"] = torch.zeros(17, 17, dtype=torch.long)
    official["text_encoder.cls.predictions.decoder.bias"] = official["text_encoder.cls.predictions.bias"]
    assert "text_encoder.cls.predictions.decoder.weight" in official
    torch.save({"model": official, "epoch": 3}, tmp_path / "official.th")

    assert main([str(tmp_path / "official.th"), "--model-config", "tiny", "--tokenizer", str(demo_tokenizer),
                 "--out", str(tmp_path / "converted"), "--strict"]) == 0
    report = capsys.readouterr().out
    assert "official keys with no place in this model: 0" in report
    assert "model keys not in the checkpoint (left as initialised): 0" in report

    target = load_model_folder(tmp_path / "converted").model
    for expected, actual in zip(_outputs(source), _outputs(target)):
        assert torch.equal(expected, actual)


def test_unmatched_keys_are_reported_and_strict_refuses(tmp_path, capsys, demo_tokenizer):
    source = create_model("tiny")
    official = {official_name(k): v for k, v in source.state_dict().items() if not k.startswith("bbox_head.")}
    official["text_encoder.bert.pooler.dense.weight"] = torch.zeros(32, 32)
    torch.save(official, tmp_path / "official.th")
    args = [str(tmp_path / "official.th"), "--model-config", "tiny", "--tokenizer", str(demo_tokenizer),
            "--out", str(tmp_path / "out")]

    assert main(args + ["--strict"]) == 1
    assert not (tmp_path / "out").exists()
    report = capsys.readouterr().out
    assert "official keys with no place in this model: 1\n  text_encoder.bert.pooler.dense.weight" in report
    assert "model keys not in the checkpoint (left as initialised): 6\n  bbox_head.0.bias" in report
    assert main(args) == 0 and (tmp_path / "out/model.safetensors").exists()


def test_strict_accepts_an_image_only_checkpoint_and_leaves_its_video_parameters_as_initialised(tmp_path, capsys,
                                                                                                   demo_tokenizer):
    # The official 4M base / large checkpoints: trained on images, no absolute_frame_pos_embed.
    torch.manual_seed(0)
    source = create_model("tiny", load_pretrained=False)
    write_official_checkpoint(source, tmp_path / "image_only.th", drop=("video.",))

    torch.manual_seed(5)
    args = [str(tmp_path / "image_only.th"), "--model-config", "tiny", "--tokenizer", str(demo_tokenizer),
            "--out", str(tmp_path / "out"), "--strict"]
    assert main(args) == 0
    report = capsys.readouterr().out
    assert ("video.frame_pos_embed: not in the source architecture (image-only checkpoint), stays at its initial value"
            in report)
    assert "model keys not in the checkpoint (left as initialised): 0" in report

    converted = load_model_folder(tmp_path / "out").model.state_dict()
    torch.manual_seed(5)
    initial = create_model("tiny", load_pretrained=False).state_dict()
    assert torch.equal(converted["video.frame_pos_embed"], initial["video.frame_pos_embed"])
    assert not torch.equal(converted["video.frame_pos_embed"], source.state_dict()["video.frame_pos_embed"])
    for name, value in source.state_dict().items():
        if not name.startswith("video."):
            assert torch.equal(converted[name], value.reshape(converted[name].shape)), name


def test_strict_takes_the_video_parameter_from_a_video_checkpoint_and_still_refuses_other_missing_keys(tmp_path, capsys,
                                                                                                     demo_tokenizer):
    torch.manual_seed(0)
    source = create_model("tiny", load_pretrained=False)
    write_official_checkpoint(source, tmp_path / "video.th")
    assert main([str(tmp_path / "video.th"), "--model-config", "tiny", "--tokenizer", str(demo_tokenizer),
                 "--out", str(tmp_path / "video"), "--strict"]) == 0
    assert "not in the source architecture" not in capsys.readouterr().out
    assert torch.equal(read_folder_weights(tmp_path / "video")["video.frame_pos_embed"],
                       source.state_dict()["video.frame_pos_embed"])

    # Image-only, and the box head missing too: only the video parameter is expected to be absent.
    write_official_checkpoint(source, tmp_path / "no_box_head.th", drop=("video.", "bbox_head."))
    args = [str(tmp_path / "no_box_head.th"), "--model-config", "tiny", "--tokenizer", str(demo_tokenizer),
            "--out", str(tmp_path / "x"), "--strict"]
    assert main(args) == 1
    assert not (tmp_path / "x").exists()
    report = capsys.readouterr().out
    assert "video.frame_pos_embed: not in the source architecture" in report
    assert "model keys not in the checkpoint (left as initialised): 6\n  bbox_head.0.bias" in report
    assert "  video.frame_pos_embed\n" not in report


def test_the_folder_names_its_source_and_unreadable_inputs_exit_2(tmp_path, capsys, demo_tokenizer):
    import hashlib

    torch.manual_seed(0)
    path = write_official_checkpoint(create_model("tiny", load_pretrained=False), tmp_path / "official.th", drop=("video.",))
    base = ["--tokenizer", str(demo_tokenizer), "--out", str(tmp_path / "folder")]
    assert main([str(path), "--model-config", "tiny", *base]) == 0
    card = load_model_folder(tmp_path / "folder").card
    assert card.source == {"kind": "official checkpoint", "file": "official.th",
                           "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "missing_in_checkpoint": [],
                           "not_in_source": ["video.frame_pos_embed"]}
    assert card.steps is None and card.data is None
    capsys.readouterr()

    (tmp_path / "notes.th").write_text("not a checkpoint")
    assert main([str(tmp_path / "notes.th"), "--model-config", "tiny", *base]) == 2
    assert capsys.readouterr().err.startswith(f"x2vlm-convert: {tmp_path / 'notes.th'}: ")
    assert main([str(tmp_path / "missing.th"), "--model-config", "tiny", *base]) == 2
    assert "checkpoint file not found" in capsys.readouterr().err
    assert main([str(path), "--model-config", "no_such_model", *base]) == 2
    assert capsys.readouterr().err.startswith("x2vlm-convert: --model-config no_such_model: ")
    assert main([str(path), "--model-config", "tiny", "--tokenizer", str(tmp_path / "none"), "--out",
                 str(tmp_path / "other")]) == 2
    assert "tokenizer" in capsys.readouterr().err and not (tmp_path / "other").exists()
