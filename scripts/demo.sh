#!/usr/bin/env bash
# The demo job: generates the synthetic demo corpus into runs/demo/, then builds its tar
# shards (images with captions + boxes, RefCOCO regions, videos), train and eval.
set -euo pipefail
cd "$(dirname "$0")/.."
out=runs/demo
corpus=$out/corpus
ann=$corpus/annotations
shards=$out/shards
start=$(date +%s)
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

echo
echo "demo finished in $(( $(date +%s) - start )) s"
echo "  raw demo corpus: $corpus (annotations in $ann)"
for kind in image region video; do
    for split in train eval; do
        echo "  $kind shards ($split): $shards/$kind/$split ($(ls "$shards/$kind/$split"/*.tar | wc -l) shards, manifest.json, rejected.jsonl)"
    done
done
echo "  look at them: .venv/bin/x2vlm-shards inspect $shards/image/train; .venv/bin/x2vlm-shards show $shards/image/train --out $out/grid.png"
