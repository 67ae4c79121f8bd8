"""Tasks: the task module that holds the model with the objectives of a run (task.py) and the
fine-tuning tasks of x2vlm-finetune (finetuning.py)."""
