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

# Pre-training: the tiny model, 2 CPU ranks, ZeRO-2, held-out evaluation every 100 steps.
export DS_ACCELERATOR=cpu PATH="$PWD/.venv/bin:$PATH"
train=$out/train
rm -rf "$train"
port=$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
.venv/bin/deepspeed --num_gpus 2 --master_port "$port" training/pretrain.py --config configs/runs/demo.yaml --resume none \
    2>&1 | grep -v -E "^\[20[0-9-]+ |UserWarning|warnings.warn|return func" | tee "$out/train.log"
last=$(cat "$train/checkpoints/latest")
.venv/bin/x2vlm-export "$train/checkpoints/$last" --out "$out/export"
.venv/bin/x2vlm-eval "$out/export" --tokenizer "$out/tokenizer" --image-res 64 --itm-top-k 16 \
    --image-shards "$shards/image/eval/*.tar" --region-shards "$shards/region/eval/*.tar" \
    --video-shards "$shards/video/eval/*.tar" --video-frames 3 \
    --out "$out/eval_metrics.json" --grounding-png "$out/grounding.png"
.venv/bin/python -m training.evaluation.curves "$train/metrics.jsonl" --out "$out/curves.png"

echo
echo "demo finished in $(( $(date +%s) - start )) s"
echo "  raw demo corpus:   $corpus (annotations in $ann)"
echo "  shards:            $shards/{image,region,video}/{train,eval} (manifest.json, rejected.jsonl each)"
echo "  training run:      $train (checkpoints/, metrics.jsonl, tensorboard/), log $out/train.log"
echo "  exported model:    $out/export (model.safetensors, model.yaml)"
echo "  held-out metrics:  $out/eval_metrics.json"
echo "  pictures:          $out/curves.png (losses, held-out metrics), $out/grounding.png (true box cyan, predicted magenta)"
.venv/bin/python - "$out/eval_metrics.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
print(f"  text->image R@1 {m['image/img_r1']:.3f} (chance {1 / m['image/images']:.3f}), image->text R@1 {m['image/txt_r1']:.3f}")
print(f"  grounding accuracy {m['region/grounding_acc']:.3f} (centre-box baseline {m['region/centre_baseline_acc']:.3f})")
print(f"  video text->video R@1 {m['video/img_r1']:.3f} (chance {1 / m['video/videos']:.3f})")
PY
