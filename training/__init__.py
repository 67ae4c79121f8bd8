"""Training, evaluation and inference of X²-VLM, one folder per stage, the commands at the root:

  runtime/      process-level services (process group, counters, weights-only loading, signals, lock)
  model/        the model: towers, fusion layers, heads; no loss
  objectives/   one module per loss term, their registry and settings (`model.losses`)
  tasks/        the task (model + objectives, what DeepSpeed wraps) and the fine-tuning tasks
  folders/      model folders, init_from, official checkpoints' parameter names
  inference/    the predictor API on a model folder
  evaluation/   held-out evaluation
  engine/       the trainer, checkpoints, the run config, plug-ins, metrics, the optimizer
  extensions/   optional training features as trainer extensions
  pretrain.py, finetune.py, export.py, convert.py, eval.py, predict.py, zero_shot.py, curves.py:
                the commands x2vlm-pretrain, x2vlm-finetune, ...

docs/ARCHITECTURE.md draws the flow and which folder may import which.
"""
