"""The `losses` section of the model config (`model.losses`): the weight of every objective's
terms, the settings the built-in objectives share, momentum distillation's settings, and a
section per objective that declares settings of its own (`model.losses.NAME`).

It sits in the model YAML, where runs and model folders have always kept it, but the model reads
none of it: `parse_loss_settings` checks it against the registered objectives, naming the key
of any mistake (`model.losses.weights.image.itcc: unknown loss term (allowed: ...)`).
"""
from __future__ import annotations

import dataclasses
import math

from data_pipeline.config import ConfigError, build, setting, subkey


@dataclasses.dataclass
class MomentumDistillationConfig:
    """ALBEF's momentum distillation (`losses.momentum_distillation`): an exponential moving
    average of the towers, projections, fusion layers and MLM head and queues of its features as
    extra contrastive candidates per batch kind (the training extension
    training/extensions/momentum.py keeps them); ITC and MLM targets mixed with the momentum
    model's predictions (the ITC and MLM objectives)."""
    enabled: bool = False
    # momentum weights <- momentum x momentum weights + (1 - momentum) x weights, once per
    # optimizer step (ALBEF / LAVIS: 0.995).
    momentum: float = setting(0.995, gt=0, lt=1)
    # Entries per queue (one queue per batch kind, each entry a vision and a text feature with
    # their identity). Each step adds world size x rows of the kind (padding rows included,
    # marked invalid), which must fit: the trainer checks. ALBEF: 65536.
    queue_size: int = setting(65536, min=1)
    # The weight of the momentum model's distribution in the ITC and MLM targets.
    alpha: float = setting(0.4, min=0, max=1)
    # alpha grows linearly from 0 over the first alpha_ramp_steps optimizer steps (ALBEF: the
    # first epoch; set it to the run's steps per epoch); 0: the full alpha from step 1.
    alpha_ramp_steps: int = setting(1000, min=0)
    # Mix the MLM targets with the momentum model's fused predictions too (ALBEF does).
    mlm: bool = True
    # The optimizer step from which the momentum copy takes part; before it, the plain losses
    # and no momentum copy to run or update. At that step the copy restarts as the trained
    # weights, and alpha ramps from there. ALBEF starts at 0 from pre-trained towers. From random
    # weights the copy's features are all alike (the demo, from scratch: mean cosine 0.997
    # between its images' features after 400 steps), the ITC targets then say nothing and ITC
    # does not learn: start once the towers tell samples apart.
    start_step: int = setting(0, min=0)


@dataclasses.dataclass
class LossSettings:
    itm_negatives: str = setting("global", choices=("global", "local"))  # where ITM hard negatives are drawn from
    # Global negatives move only the drawn text rows between ranks, in an all-to-all of fixed
    # size: each pair of ranks has ceil(itm_exchange_capacity x rows / world size) slots per
    # step (rows: the kind's texts per rank), so each rank hands about capacity x rows text rows
    # whatever the world size; a draw beyond its pair's slots is left out of the ITM loss and
    # counted (`<kind>/itm_dropped`). With world size <= capacity nothing is ever left out.
    itm_exchange_capacity: float = setting(2.0, min=1, max=1000)
    # What a moved text row is. `hidden_states`: the owner's text-tower output (bf16, length x
    # hidden: 61 KB at base shapes), with its gradient sent back. `token_ids`: its token ids and
    # mask (int32, 320 B at length 40), encoded again by the text tower where it is paired, so
    # nothing goes back; about 1/200 of the bytes for about 2 x rows more text-tower passes a
    # step (+18 % of an image-text step's FLOPs at base shapes). docs/PERFORMANCE.md gives the
    # interconnect speed below which token_ids is the faster choice. The re-encoded rows see their
    # own dropout draw; with dropout 0 both give the same losses and summed gradients.
    itm_exchange: str = setting("hidden_states", choices=("hidden_states", "token_ids"))
    # The texts other ranks send a rank, to pair with a hard-negative vision of its own, number
    # about `rows` on average; it computes at most rows + itm_receive_margin x sqrt(rows) of
    # them (a margin in standard deviations of that count); beyond, left out and counted.
    itm_receive_margin: float = setting(4.0, min=0, max=1000)
    # Which pairs count as positives (besides the pair itself) in ITC targets and are never
    # drawn as ITM negatives: identical texts, and of a region batch, the texts of the same
    # image (`image`: each image's texts are positives of all its regions) or of the same region
    # (`region`: texts whose boxes are the same box of the same image; the image's other regions
    # are negatives, as in X-VLM's region-level alignment).
    same_text_positive: bool = True
    region_positives: str = setting("image", choices=("image", "region"))
    # losses.weights.<batch>.<term>: a term not given weighs 1.0, an optional one 0; a term of
    # weight 0 is not computed.
    weights: dict[str, dict[str, float]] = setting({})
    momentum_distillation: MomentumDistillationConfig = setting(MomentumDistillationConfig)
    # The sections of objectives with settings of their own, by objective name (not a YAML key:
    # each is `losses.NAME`).
    sections: dict = dataclasses.field(default_factory=dict, init=False)


def parse_loss_settings(raw: dict | None, where: str = "losses") -> LossSettings:
    """`model.losses` (RAW, as the YAML gives it) checked and completed: every weight of every
    registered objective's terms (defaults filled in) and every objective's section."""
    from training.objectives import default_weights, objective_classes, terms_by_batch

    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {raw!r}")
    raw = dict(raw or {})
    with_settings = {cls.name: cls.settings for cls in objective_classes() if cls.settings is not None}
    own = {f.name for f in dataclasses.fields(LossSettings) if f.init}
    for key in raw:
        if key not in own and key not in with_settings:
            allowed_keys = ", ".join(sorted(own | set(with_settings)))
            raise ConfigError(f"{subkey(where, key)}: unknown key (allowed: {allowed_keys})")
    sections = {name: raw.pop(name, {}) for name in with_settings}
    settings = build(LossSettings, raw, where)
    settings.sections = {name: build(cls, sections[name], subkey(where, name)) for name, cls in with_settings.items()}

    allowed = terms_by_batch()
    weights = default_weights()
    for kind, terms in settings.weights.items():
        if kind not in allowed:
            raise ConfigError(f"{subkey(where, f'weights.{kind}')}: no objective applies to {kind!r} batches "
                              f"(weighted batches: {', '.join(allowed)})")
        for term, weight in terms.items():
            key = subkey(where, f"weights.{kind}.{term}")
            if term not in allowed[kind]:
                raise ConfigError(f"{key}: unknown loss term (allowed: {', '.join(allowed[kind])})")
            if not (math.isfinite(weight) and weight >= 0):
                raise ConfigError(f"{key}: must be a finite number >= 0, got {weight!r}")
            weights[kind][term] = weight
    settings.weights = weights
    return settings
