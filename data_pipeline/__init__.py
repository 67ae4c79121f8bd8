"""Everything from raw files to batches, one sub-package per stage of the flow:

  shards.py      the shard command line (`x2vlm-shards`); its subcommands in shard_tools/
  shard_tools/   building, checking and showing shards; the readers per source format
  io/            shard lists, the tar reader, file digests
  schema.py      the shard sample: members and the `json` layout, read and written
  media/         image and video decoding
  transforms/    per-sample augmentation (crops, flip, RandAugment, boxes, patch masks), and
                 each kind's corpus options
  text/          caption cleaning, tokenising, MLM masking, the `text:` settings
  kinds/         the registry of data kinds (image_text, region, video_text, plug-ins') and
                 their collate functions
  loader/        streams, shuffle, reshard, per-corpus DataLoader, mixer
  config.py      the configuration mechanism of every config (sections, checks, YAML loader)
  spec.py        the data configuration

docs/ARCHITECTURE.md draws the whole flow.
"""
