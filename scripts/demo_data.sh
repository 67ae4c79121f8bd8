#!/usr/bin/env bash
# The demo data under OUT: the synthetic demo corpus (OUT/corpus), its tar shards under
# OUT/shards and a tokenizer (OUT/tokenizer).
#   scripts/demo_data.sh [OUT]                   English (default OUT runs/demo): images with
#       captions + boxes, RefCOCO regions and videos, train and eval; the demo tokenizer.
#       configs/data/demo.yaml reads this layout.
#   scripts/demo_data.sh OUT --multilingual      English and Chinese texts, Chinese held-out
#       queries, no videos; a unigram tokenizer of the training shards' texts.
#       configs/data/demo_multilingual.yaml reads it (OUT: runs/demo_multilingual).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/demo}
multilingual=$([ "${2:-}" = --multilingual ] && echo 1 || echo 0)
corpus=$out/corpus
ann=$corpus/annotations
shards=$out/shards
if [ "$multilingual" = 1 ]; then
    .venv/bin/x2vlm-shards demo --out "$corpus" --images 600 --videos 0 --seed 0 --quiet \
        --languages en=0.4,zh=0.3,en+zh=0.3 --eval-languages zh
else
    .venv/bin/x2vlm-shards demo --out "$corpus" --images 600 --videos 60 --seed 0
fi

# A rerun rebuilds the shards from scratch; --resume is for interrupted builds.
rm -rf "$shards"
for split in train eval; do
    # One sample per image: COCO captions, COCO instance boxes and VG region phrases merged.
    .venv/bin/x2vlm-shards build --prefix demo-image --output "$shards/image/$split" --media-root "$corpus/images" \
        --format coco-captions --annotations "$ann/coco_captions_$split.json" \
        --format coco-instances --annotations "$ann/coco_instances_$split.json" \
        --format vg-regions --annotations "$ann/vg_regions_$split.json" \
        --samples-per-shard 100 --workers 2
    [ "$multilingual" = 1 ] || .venv/bin/x2vlm-shards build --prefix demo-video --output "$shards/video/$split" \
        --media-root "$corpus/videos" --format video-jsonl --annotations "$ann/videos_$split.jsonl" \
        --samples-per-shard 20 --workers 2
done
# RefCOCO names its splits train / val in one refs file.
for split in train val; do
    .venv/bin/x2vlm-shards build --prefix demo-region --output "$shards/region/${split/val/eval}" --media-root "$corpus/images" \
        --format refcoco --annotations "$ann/refcoco/refs(unc).p" --refcoco-split "$split" \
        --samples-per-shard 100 --workers 2
done
.venv/bin/x2vlm-shards verify "$shards/image/train" >/dev/null
if [ "$multilingual" = 1 ]; then
    # The tokenizer sees the training texts only. Pieces of at most 6 characters: on this small
    # corpus of repeated sentences longer Chinese pieces grow into whole phrases of the templates.
    .venv/bin/x2vlm-shards tokenizer --kind unigram --vocab-size 256 --max-piece-length 6 --quiet \
        --shards "$shards/image/train" --shards "$shards/region/train" --out "$out/tokenizer"
else
    .venv/bin/x2vlm-shards demo-tokenizer --corpus "$corpus" --out "$out/tokenizer"
fi
