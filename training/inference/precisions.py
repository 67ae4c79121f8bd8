"""The precisions inference runs in, by name, and the torch dtype each stands for (named, so that
a command's --help can list them without loading torch)."""

DTYPE_NAMES = {"bf16": "bfloat16", "fp32": "float32"}
