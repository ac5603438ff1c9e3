#!/usr/bin/env bash
# GPU figures for the README's performance section, as one prepared run:
#   1. decode (emojich.generate.sampling) with random weights in the Malevich shape, bf16, batch 1 / 16 / 64:
#      ms per step, images/s and GB/s against the device's peak bandwidth;
#   2. one fine-tuning step with the report's recipe (attention and feed-forward frozen, 8-bit
#      Adam, bf16) at batch 2 and at the largest batch that fits: s/step, peak memory, and the
#      projected hours for 2,749 images x 40 epochs;
#   3. U-Net (EfficientNet-B7, 512 px) images/s, batch 1 against batch 16.
#
# Usage: benchmarks/gpu.sh [OUT_DIR]   (default gpu-figures/; writes OUT_DIR/gpu.json and the parts)
# Without a GPU, or with EMOJICH_BENCH_TINY=1, every step runs on CPU at tiny shapes in seconds:
# that is how CI keeps the script working. PEAK_GBPS overrides the device's peak bandwidth.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${1:-gpu-figures}
mkdir -p "$OUT"

if [[ "${EMOJICH_BENCH_TINY:-0}" != 1 ]] && "$PY" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
  MODE=gpu DEVICE=cuda
  DECODE=(--preset malevich --dtype bf16 --images 1 --repeats 3 --probes 3 --probe-steps 2)
  DECODE_BATCHES=(1 16 64)
  FINETUNE=(--preset malevich --freeze attention-and-mlp --precision bf16 --optimizer adam8bit --steps 5 --warmup 2)
  FINETUNE_BATCHES=(2 4 8 16 32 64 128)
  UNET=(--preset paper --side 512 --images 64 --batch-size 16 --repeats 3)
  PEAK_GBPS=${PEAK_GBPS:-$("$PY" -c '
import torch
name = torch.cuda.get_device_name(0)
# Published HBM bandwidths (GB/s) of the usual training GPUs; others: set PEAK_GBPS.
peaks = {"H200": 4800, "H100": 3350, "A100": 2039, "L40S": 864, "A10": 600}
print(next((v for k, v in peaks.items() if k in name), 0))')}
else
  MODE=cpu-tiny DEVICE=cpu
  DECODE=(--preset tiny --dtype bf16 --images 1 --repeats 1 --probes 2 --probe-steps 1)
  DECODE_BATCHES=(1)
  FINETUNE=(--preset tiny --freeze attention-and-mlp --precision bf16 --optimizer adam8bit --steps 2 --warmup 1 --threads 1)
  FINETUNE_BATCHES=(2)
  UNET=(--preset tiny --side 32 --images 4 --batch-size 4 --repeats 1 --threads 1)
  PEAK_GBPS=${PEAK_GBPS:-0}
fi
echo "benchmarks/gpu.sh: $MODE on $DEVICE -> $OUT" >&2

PEAK=()
if [[ "$PEAK_GBPS" != 0 ]]; then PEAK=(--peak-gbps "$PEAK_GBPS"); fi
for batch in "${DECODE_BATCHES[@]}"; do
  "$PY" benchmarks/generate.py --device "$DEVICE" "${DECODE[@]}" --batch "$batch" "${PEAK[@]}" \
    > "$OUT/decode-b$batch.json"
done

# Batch 2 is the report's; larger batches run until one does not fit (its run fails).
for batch in "${FINETUNE_BATCHES[@]}"; do
  if ! "$PY" benchmarks/finetune.py --device "$DEVICE" "${FINETUNE[@]}" --batch "$batch" \
    > "$OUT/finetune-b$batch.json" 2> "$OUT/finetune-b$batch.err"; then
    echo "finetune batch $batch does not fit; stopping the search" >&2
    mv "$OUT/finetune-b$batch.json" "$OUT/finetune-b$batch.failed.json"
    break
  fi
done

"$PY" benchmarks/segment.py --device "$DEVICE" "${UNET[@]}" > "$OUT/unet.json"

"$PY" benchmarks/gpu_report.py "$OUT" "$MODE" > "$OUT/gpu.json"
cat "$OUT/gpu.json"
