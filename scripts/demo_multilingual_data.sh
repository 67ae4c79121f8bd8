#!/usr/bin/env bash
# The multilingual demo data under OUT (default runs/demo_multilingual): the demo corpus with
# English and Chinese texts (OUT/corpus), its image and RefCOCO shards (OUT/shards) and the
# unigram tokenizer of the training shards' texts (OUT/tokenizer), which
# configs/data/demo_multilingual.yaml reads.
#   scripts/demo_multilingual_data.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/demo_multilingual}
corpus=$out/corpus
ann=$corpus/annotations
shards=$out/shards
.venv/bin/x2vlm-shards demo --out "$corpus" --images 600 --videos 0 --seed 0 --quiet \
    --languages en=0.4,zh=0.3,en+zh=0.3 --eval-languages zh
rm -rf "$shards"
for split in train eval; do
    .venv/bin/x2vlm-shards build --prefix demo-image --output "$shards/image/$split" --media-root "$corpus/images" \
        --format coco-captions --annotations "$ann/coco_captions_$split.json" \
        --format coco-instances --annotations "$ann/coco_instances_$split.json" \
        --format vg-regions --annotations "$ann/vg_regions_$split.json" \
        --samples-per-shard 100 --workers 2 >/dev/null
done
for split in train val; do
    .venv/bin/x2vlm-shards build --prefix demo-region --output "$shards/region/${split/val/eval}" --media-root "$corpus/images" \
        --format refcoco --annotations "$ann/refcoco/refs(unc).p" --refcoco-split "$split" \
        --samples-per-shard 100 --workers 2 >/dev/null
done
# The tokenizer sees the training texts only. Pieces of at most 6 characters: on this small
# corpus of repeated sentences longer Chinese pieces grow into whole phrases of the templates.
.venv/bin/x2vlm-shards tokenizer --kind unigram --vocab-size 256 --max-piece-length 6 --quiet \
    --shards "$shards/image/train" --shards "$shards/region/train" --out "$out/tokenizer"
