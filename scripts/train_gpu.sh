#!/usr/bin/env bash
# Time-boxed IdentityDP renderer (v2, inpainting) training on a CUDA machine, from the repository root:
#
#   scripts/train_gpu.sh OUTDIR [MINUTES] [extra trainer options...]
#
# Needs only python3 with torch (CUDA), numpy, safetensors, opencv and pillow (no pip install) and
# the pre-aligned bundle with 68-point landmarks (scripts/build_train_bundle.py; carry ".data").
# MINUTES (default 9) is the whole wall time of the trainer, start-up and final writes included.
# OUTDIR receives at most 8 files: config.json, log.jsonl, train.log, generator_fp16.safetensors
# (shippable EMA renderer), ckpt_fp16.safetensors (G, EMA, D in fp16: pass it to --init to chain
# the next run), and the last 3 samples_*.png. The fp32+Adam checkpoint goes to /tmp.
#
# Chain from the committed checkpoint (docs/training/…/ckpt_fp16.safetensors) with
#   scripts/train_gpu.sh $OUT 9 --init PATH
# the shipped line (v2zw2 since 2026-12-08: sketch-aware discriminator, the face's own mouth shape on
# a public mouth model, the identity loss weighing swapped and noisy identities twice):
#   scripts/train_gpu.sh $OUT 9 --init docs/training/cpu-2026-12-07j/v2zw2_ckpt_fp16.safetensors --disc-sketch \
#       --w-id 7 --w-id-noisy 2 --w-id-swap 2
# Defaults here: BUNDLE = .data/v2_256.npz if present (256-px crops), else .data/v2_128.npz (128 px),
# batch 32, the GPU channel widths below for a fresh run (NET; a run chained with --init or
# --resume takes its checkpoint's own network), bf16 autocast. COMPILE=--compile adds torch.compile
# (off by default: its first-step compile costs minutes of a short window).
set -euo pipefail
OUT=${1:?usage: scripts/train_gpu.sh OUTDIR [MINUTES] [options]}
MINUTES=${2:-9}
shift $(( $# >= 2 ? 2 : 1 ))
if [ -z "${BUNDLE:-}" ]; then
  BUNDLE=.data/v2_256.npz
  [ -f "$BUNDLE" ] || BUNDLE=.data/v2_128.npz
fi
PY=${PYTHON:-python3}
# Train at the bundle's own resolution unless told otherwise (an upsampled bundle only looks sharp).
SIZE=${SIZE:-$(case "$BUNDLE" in *256*) echo 256;; *) echo 128;; esac)}
# A chained run (--init / --resume) keeps its checkpoint's own network unless NET says otherwise.
case " $* " in *" --init "*|*" --resume "*) NET=${NET:-'{}'} ;; esac
NET=${NET:-'{"channels": [32, 64, 128, 256, 256, 256, 256, 256]}'}
# Tests on a CPU: DEVICE=cpu SIZE=128 BATCH=4 NET='{}' COMPILE= BUNDLE=... scripts/train_gpu.sh OUT 1
COMPILE=${COMPILE:-}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv,noheader || true
"$PY" -c "import torch, numpy, safetensors, cv2, PIL; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
ls -la "$BUNDLE"
PYTHONPATH=src "$PY" -u -m identitydp.training.inpaint \
  --bundle "$BUNDLE" --device "${DEVICE:-cuda}" --size "$SIZE" --batch "${BATCH:-32}" --net "$NET" $COMPILE \
  --minutes "$MINUTES" --out "$OUT" --full-ckpt /tmp/identitydp_ckpt_full.safetensors \
  --log-every-s 20 --eval-every-s 120 --sample-every-s 150 --ckpt-every-s 120 --keep-samples 3 \
  --eval-faces 64 "$@" 2>&1 | tee "$OUT/train.log"
ls -la "$OUT"
