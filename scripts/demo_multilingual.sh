#!/usr/bin/env bash
# The multilingual demo: X²-VLM with an XLM-R text tower trained on English and Chinese captions,
# evaluated with Chinese queries on held-out images. Everything goes under runs/demo_multilingual:
#   corpus/     the demo corpus, 600 images: training texts 40 % English, 30 % Chinese, 30 % both;
#               every held-out image's texts in Chinese (x2vlm-shards demo --languages)
#   shards/     image (captions + boxes + region phrases) and RefCOCO region shards, train and eval
#   tokenizer/  a unigram (XLM-R style) tokenizer trained on the training shards' texts
#   train/      the run (configs/runs/demo_multilingual.yaml, 2 CPU ranks), export/ its model folder
#   eval_metrics.json  held-out retrieval (Chinese queries) and grounding (Chinese expressions)
#   scripts/demo_multilingual.sh [--reuse-data]
set -euo pipefail
cd "$(dirname "$0")/.."
out=runs/demo_multilingual
corpus=$out/corpus
ann=$corpus/annotations
shards=$out/shards
start=$(date +%s)
export PATH="$PWD/.venv/bin:$PATH"

# The data (scripts/demo_data.sh --multilingual); --reuse-data keeps what an earlier run built.
[ "${1:-}" = --reuse-data ] || scripts/demo_data.sh "$out" --multilingual

# Pre-training on 2 CPU ranks, one thread each (see scripts/demo.sh).
export DS_ACCELERATOR=cpu OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
train=$out/train
rm -rf "$train"
port=$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
.venv/bin/deepspeed --num_gpus 2 --master_port "$port" training/pretrain.py --config configs/runs/demo_multilingual.yaml \
    --resume none 2>&1 | grep --line-buffered -v -E "^\[20[0-9-]+ |UserWarning|warnings.warn|return func" | tee "$out/train.log"
last=$(cat "$train/checkpoints/latest")
.venv/bin/x2vlm-export "$train/checkpoints/$last" --out "$out/export"
.venv/bin/python -m training.eval "$out/export" --image-res 64 --itm-top-k 16 \
    --image-shards "$shards/image/eval/*.tar" --region-shards "$shards/region/eval/*.tar" \
    --out "$out/eval_metrics.json"

echo
echo "multilingual demo finished in $(( $(date +%s) - start )) s"
echo "  corpus $corpus, shards $shards, tokenizer $out/tokenizer, run $train, model folder $out/export"
.venv/bin/python - "$out/eval_metrics.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
chance = 1 / m["image/images"]
print(f"  Chinese queries, held-out images: text->image R@1 {m['image/img_r1']:.3f} "
      f"(chance {chance:.3f}, 5x chance {5 * chance:.3f}: {'above' if m['image/img_r1'] > 5 * chance else 'NOT above'}), "
      f"image->text R@1 {m['image/txt_r1']:.3f}")
print(f"  Chinese referring expressions: grounding accuracy {m['region/grounding_acc']:.3f} "
      f"(centre-box baseline {m['region/centre_baseline_acc']:.3f})")
PY
