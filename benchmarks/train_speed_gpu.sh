#!/usr/bin/env bash
# Cached against online CTM training steps on one GPU: DDPM++ CIFAR-10 student and teacher (55.7M parameters each,
# random weights unless PKL names an EDM pickle), bf16 autocast, the teacher's fast path, pseudo-Huber distance.
# Run from the project root on the GPU machine, with .devpack/site.tar.xz (../shared/tools/device-bundle) carried
# for Ray and Zarr; prints one table per batch size, each with the cached / online ratio and peak CUDA memory.
#   bash benchmarks/train_speed_gpu.sh                        # GPU
#   DEVICE=cpu NET=tiny-edm BATCHES=4 STEPS=2 FAST= bash benchmarks/train_speed_gpu.sh   # CPU smoke test
set -euo pipefail
DEVICE=${DEVICE:-cuda}
if [ "$DEVICE" != cpu ] && [ -z "${DEVPACK_UNPACKED:-}" ] && [ -f .devpack/site.tar.xz ]; then  # Python 3.12's
  mkdir -p /tmp/site && tar -xJf .devpack/site.tar.xz -C /tmp/site
  export PYTHONPATH=/tmp/site:$PWD:${PYTHONPATH:-}
fi
NET=${NET:-cifar10} BATCHES=${BATCHES:-"64 128"} STEPS=${STEPS:-20} FAST=${FAST---fast}
PYTHON=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || true
for batch in $BATCHES; do
  $PYTHON -m benchmarks.train_speed --level step --device "$DEVICE" --net "$NET" --batch "$batch" \
    --steps "$STEPS" --distance pseudo_huber $FAST ${PKL:+--pkl "$PKL"}
done
