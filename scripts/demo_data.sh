#!/usr/bin/env bash
# The demo data under OUT (default runs/demo): the synthetic demo corpus (OUT/corpus), its tar
# shards (images with captions + boxes, RefCOCO regions, videos; train and eval) under
# OUT/shards, and the demo tokenizer (OUT/tokenizer). configs/data/demo.yaml reads this layout.
#   scripts/demo_data.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/demo}
corpus=$out/corpus
ann=$corpus/annotations
shards=$out/shards
.venv/bin/x2vlm-shards demo --out "$corpus" --images 600 --videos 60 --seed 0

# A rerun rebuilds the shards from scratch; --resume is for interrupted builds.
rm -rf "$shards"
for split in train eval; do
    # One sample per image: COCO captions, COCO instance boxes and VG region phrases merged.
    .venv/bin/x2vlm-shards build --prefix demo-image --output "$shards/image/$split" --media-root "$corpus/images" \
        --format coco-captions --annotations "$ann/coco_captions_$split.json" \
        --format coco-instances --annotations "$ann/coco_instances_$split.json" \
        --format vg-regions --annotations "$ann/vg_regions_$split.json" \
        --samples-per-shard 100 --workers 2
    .venv/bin/x2vlm-shards build --prefix demo-video --output "$shards/video/$split" --media-root "$corpus/videos" \
        --format video-jsonl --annotations "$ann/videos_$split.jsonl" --samples-per-shard 20 --workers 2
done
# RefCOCO names its splits train / val in one refs file.
for split in train val; do
    .venv/bin/x2vlm-shards build --prefix demo-region --output "$shards/region/${split/val/eval}" --media-root "$corpus/images" \
        --format refcoco --annotations "$ann/refcoco/refs(unc).p" --refcoco-split "$split" \
        --samples-per-shard 100 --workers 2
done
.venv/bin/x2vlm-shards verify "$shards/image/train" >/dev/null
.venv/bin/python -m data_pipeline.text.demo_tokenizer --corpus "$corpus" --out "$out/tokenizer"
