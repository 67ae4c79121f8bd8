"""Evaluation on held-out shards: zero-shot retrieval with ITM re-ranking, grounding accuracy,
each set scored by the evaluation its data kind names (``register_evaluation`` adds one)."""
from training.evaluation.evaluator import evaluate, predict_boxes, register_evaluation
from training.evaluation.grounding import box_iou, centre_boxes, grounding_accuracy, grounding_metrics
from training.evaluation.retrieval_metrics import positive_ranks, recalls, retrieval_metrics

__all__ = ["box_iou", "centre_boxes", "evaluate", "grounding_accuracy", "grounding_metrics", "positive_ranks",
           "predict_boxes", "recalls", "register_evaluation", "retrieval_metrics"]
