"""Everything from raw files to batches, one sub-package per stage of the flow:

  shards/      the shard-building CLI (`x2vlm-shards`) and its readers per source format
  io/          shard lists and the tar reader
  schema.py    the shard sample: members and the `json` layout, read and written
  media/       image and video decoding
  transforms/  per-sample augmentation (crops, flip, RandAugment, boxes, patch masks)
  text/        caption cleaning, tokenising, MLM masking
  loader/      streams, shuffle, reshard, per-corpus DataLoader, mixer, collate
  config.py    the configuration mechanism of every config (sections, checks, YAML loader)
  spec.py      the data configuration
"""
