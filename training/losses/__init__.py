"""Pre-training losses of X²-VLM: ITC, ITM with hard negatives, MLM, box regression and captioning."""
from training.losses.box import box_losses, generalized_iou
from training.losses.captioning import captioning_loss, next_token_labels
from training.losses.contrastive import consistency_loss, contrastive_loss
from training.losses.gather import gather_rows, gather_with_grad
from training.losses.matching import matching_loss, sample_hard_negatives
from training.losses.mlm import masked_language_model_loss
from training.losses.positives import PairKeys, pair_positives

__all__ = [
    "PairKeys",
    "box_losses",
    "captioning_loss",
    "consistency_loss",
    "contrastive_loss",
    "gather_rows",
    "gather_with_grad",
    "generalized_iou",
    "masked_language_model_loss",
    "matching_loss",
    "next_token_labels",
    "pair_positives",
    "sample_hard_negatives",
]
