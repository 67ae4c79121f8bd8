"""Model configs are validated on load, and their `losses` section by the objectives' settings
(training/objectives/settings.py) when a run reads it; errors name the key."""
from __future__ import annotations

import pytest
import yaml

from data_pipeline.config import ConfigError
from training.model import CONFIG_DIR, load_model_config
from training.model.model_config import model_config_from_dict
from training.objectives.settings import parse_loss_settings


def _checked(config: dict, where: str = ""):
    """CONFIG as a run reads it: the model config, then its losses section."""
    model = model_config_from_dict(config, where)
    return model, parse_loss_settings(model.losses, f"{where}.losses" if where else "losses")


def test_shipped_configs_load():
    base = load_model_config(CONFIG_DIR / "x2vlm_base.yaml")
    large = load_model_config(CONFIG_DIR / "x2vlm_large.yaml")
    tiny = load_model_config(CONFIG_DIR / "tiny.yaml")
    assert (base.text.num_layers, base.text.fusion_start, base.num_fusion_layers) == (18, 12, 6)
    assert (large.vision.name, large.text.hidden_size) == ("beitv2_large_patch16_224", 1024)
    assert parse_loss_settings(tiny.losses).weights["region"] == {"itc": 1.0, "itm": 1.0, "mlm": 1.0, "bbox": 1.0,
                                                                  "giou": 1.0, "itc_cons": 0.0}


def _tiny() -> dict:
    return yaml.safe_load((CONFIG_DIR / "tiny.yaml").read_text())


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c["text"].update(fusion_star=1), "text.fusion_star: unknown key"),
        (lambda c: c["text"].update(fusion_start=3), "text.fusion_start: must lie between"),
        (lambda c: c["text"].update(hidden_size="32"), "text.hidden_size: expected int, got str"),
        (lambda c: c["text"].update(kind="gpt2"), "text.kind: must be one of bert, roberta, xlm-roberta"),
        (lambda c: c.pop("vision"), "vision: missing required key"),
        (lambda c: c.update(temperature=0.9), "temperature_min: need 0 < temperature_min"),
        (lambda c: c["losses"].update(itm_negatives="everywhere"), "losses.itm_negatives: must be one of global, local"),
        (lambda c: c["losses"].update(weights={"region": {"box": 1.0}}), "losses.weights.region.box: unknown loss term"),
        (lambda c: c["losses"].update(weights={"audio": {}}), "losses.weights.audio: no objective applies to 'audio'"),
        (lambda c: c["losses"].update(weights={"image": {"itc": -1}}), "losses.weights.image.itc: must be a finite number >= 0"),
        (lambda c: c["vision"].update(image_size=True), "vision.image_size: expected int, got bool"),
        # Sizes that would take the machine's memory while the model is built, before any check.
        (lambda c: c["text"].update(num_layers=10_000_000), "text.num_layers: must be in .2, 256., got 10000000"),
        (lambda c: c["text"].update(hidden_size=2**20), "text.hidden_size: must be in .1, 16384."),
        (lambda c: c["vision"]["timm_kwargs"].update(depth=10_000_000),
         "vision.timm_kwargs.depth: must be a number .or a list of numbers. in .0, 256., got 10000000"),
        (lambda c: c["vision"]["timm_kwargs"].update(depths=[2, 300]), "vision.timm_kwargs.depths: 302 blocks in all"),
        (lambda c: c["vision"]["timm_kwargs"].update(num_heads=[1, "x"]), "vision.timm_kwargs.num_heads: must be a number"),
        # Files are read through the project's checks only (weights-only, inside their roots).
        (lambda c: c["vision"]["timm_kwargs"].update(checkpoint_path="/etc/hostname"),
         "vision.timm_kwargs.checkpoint_path: timm may not read files named in the model config"),
    ],
)
def test_invalid_config_names_the_key(edit, message):
    config = _tiny()
    edit(config)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        _checked(config)


def test_file_errors_name_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    config = _tiny()
    config["embed_dim"] = 0
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=f"{path}: embed_dim: must be in .1, 16384., got 0"):
        load_model_config(path)


def test_loss_weights_not_given_default_to_one():
    config = _tiny()
    config["losses"]["weights"] = {"video": {"mlm": 0.25}}
    weights = _checked(config)[1].weights
    assert weights["video"] == {"itc": 1.0, "itm": 1.0, "mlm": 0.25, "itc_cons": 0.0}
    # An optional term (image/lm, captioning; <kind>/itc_cons, ITC consistency) is off unless given.
    assert weights["image"] == {"itc": 1.0, "itm": 1.0, "mlm": 1.0, "mim": 1.0, "lm": 0.0, "itc_cons": 0.0}


def test_a_timm_argument_the_tower_does_not_take_is_a_config_error():
    from training.model import create_model

    config = _tiny()
    config["vision"]["timm_kwargs"]["no_such_argument"] = 1
    with pytest.raises(ConfigError, match=r"^vision\.timm_kwargs: timm's .* refuses them: .*no_such_argument"):
        create_model(model_config_from_dict(config), load_pretrained=False)
