#!/usr/bin/env bash
# Time-boxed IdentityDP generator training on a CUDA machine, from the repository root:
#
#   scripts/train_gpu.sh OUTDIR [MINUTES] [extra trainer options...]
#
# Needs only python3 with torch (CUDA), numpy, safetensors, opencv and pillow (no pip install) and
# the pre-aligned bundle .data/train128.npz (scripts/build_train_bundle.py; carry ".data").
# MINUTES (default 9) is the whole wall time of the trainer, start-up and final writes included.
# OUTDIR receives at most 8 files, each < 16 MB: config.json, log.jsonl, train.log,
# generator_fp16.safetensors (shippable EMA generator), ckpt_fp16.safetensors (G + D, fp16),
# and the last 3 samples_*.png. The fp32+Adam checkpoint goes to /tmp (too big to ship back).
set -euo pipefail
OUT=${1:?usage: scripts/train_gpu.sh OUTDIR [MINUTES] [options]}
MINUTES=${2:-9}
shift $(( $# >= 2 ? 2 : 1 ))
BUNDLE=${BUNDLE:-.data/train128.npz}
PY=${PYTHON:-python3}
# Tests on a CPU: DEVICE=cpu SIZE=64 BATCH=8 BUNDLE=... scripts/train_gpu.sh OUT 1
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv,noheader || true
"$PY" -c "import torch, numpy, safetensors, cv2, PIL; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
ls -la "$BUNDLE"
PYTHONPATH=src "$PY" -u -m identitydp.generate.train \
  --bundle "$BUNDLE" --device "${DEVICE:-cuda}" --size "${SIZE:-128}" --batch "${BATCH:-64}" \
  --minutes "$MINUTES" --out "$OUT" --full-ckpt /tmp/identitydp_ckpt_full.safetensors \
  --log-every-s 20 --eval-every-s 90 --sample-every-s 150 --ckpt-every-s 120 --keep-samples 3 \
  --eval-faces 64 "$@" 2>&1 | tee "$OUT/train.log"
ls -la "$OUT"
