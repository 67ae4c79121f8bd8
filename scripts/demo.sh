#!/usr/bin/env bash
# The demo job: the demo corpus and its shards (scripts/demo_data.sh), then pre-training on 2
# CPU ranks, export, held-out evaluation and the pictures, all under runs/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
out=runs/demo
corpus=$out/corpus
ann=$corpus/annotations
shards=$out/shards
start=$(date +%s)
scripts/demo_data.sh "$out"

# Pre-training: the demo model, 2 CPU ranks, ZeRO-2, held-out evaluation every 100 steps.
# One thread per rank: with several, CPU scatter-adds (the backward of indexing) sum in an order
# that varies from run to run, and the figures with them; 2 ranks on 2 cores use both anyway.
export DS_ACCELERATOR=cpu PATH="$PWD/.venv/bin:$PATH" OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
train=$out/train
rm -rf "$train"
port=$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
.venv/bin/deepspeed --num_gpus 2 --master_port "$port" training/pretrain.py --config configs/runs/demo.yaml --resume none \
    2>&1 | grep -v -E "^\[20[0-9-]+ |UserWarning|warnings.warn|return func" | tee "$out/train.log"
last=$(cat "$train/checkpoints/latest")
.venv/bin/x2vlm-export "$train/checkpoints/$last" --out "$out/export"
# The model folder carries its tokenizer (the run's data.text.tokenizer), which x2vlm-eval uses.
.venv/bin/x2vlm-eval "$out/export" --image-res 64 --itm-top-k 16 \
    --image-shards "$shards/image/eval/*.tar" --region-shards "$shards/region/eval/*.tar" \
    --video-shards "$shards/video/eval/*.tar" --video-frames 3 \
    --out "$out/eval_metrics.json" --grounding-png "$out/grounding.png"
.venv/bin/x2vlm-curves "$train/metrics.jsonl" --out "$out/curves.png"

echo
echo "demo finished in $(( $(date +%s) - start )) s"
echo "  raw demo corpus:   $corpus (annotations in $ann)"
echo "  shards:            $shards/{image,region,video}/{train,eval} (manifest.json, rejected.jsonl each)"
echo "  training run:      $train (checkpoints/, metrics.jsonl, tensorboard/), log $out/train.log"
echo "  model folder:      $out/export (model.safetensors, model.yaml, tokenizer/, card.json, README.md)"
echo "  held-out metrics:  $out/eval_metrics.json"
echo "  pictures:          $out/curves.png (losses, held-out metrics), $out/grounding.png (true box cyan, predicted magenta)"
.venv/bin/python - "$out/eval_metrics.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
print(f"  text->image R@1 {m['image/img_r1']:.3f} (chance {1 / m['image/images']:.3f}), image->text R@1 {m['image/txt_r1']:.3f}")
print(f"  grounding accuracy {m['region/grounding_acc']:.3f} (centre-box baseline {m['region/centre_baseline_acc']:.3f})")
print(f"  region text->region R@1 {m['region/region_text/img_r1']:.3f}, region->text R@1 {m['region/region_text/txt_r1']:.3f}"
      f" (chance {m['region/region_text/img_r1_chance']:.3f} and {m['region/region_text/txt_r1_chance']:.3f})")
print(f"  video text->video R@1 {m['video/img_r1']:.3f} (chance {1 / m['video/videos']:.3f})")
PY
