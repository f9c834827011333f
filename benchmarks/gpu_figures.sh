#!/usr/bin/env bash
# Every GPU figure in one run, each part under its own time limit so that one slow part leaves the others their
# figures: (1) the teacher's Heun, fp32 eager against the fast path; (2) cached against online training steps;
# (3) generation through Ray Data into Zarr against the bare fast solver. DDPM++ CIFAR-10 (55.7M parameters, random
# weights unless PKL names an EDM pickle). Run from the project root on the GPU machine with .devpack carried
# (../shared/tools/device-bundle builds it); each part's output also goes to $OUT (default: gpu-figures/).
#   bash benchmarks/gpu_figures.sh
#   DEVICE=cpu SMOKE=1 bash benchmarks/gpu_figures.sh      # CPU smoke test of the script, tiny networks
set -uo pipefail
PYTHON=${PYTHON:-python3} DEVICE=${DEVICE:-cuda}
if [ "$DEVICE" != cpu ] && [ -f .devpack/site.tar.xz ]; then  # built for the GPU machine's Python 3.12
  mkdir -p /tmp/site && tar -xJf .devpack/site.tar.xz -C /tmp/site
  export PYTHONPATH=/tmp/site:$PWD:${PYTHONPATH:-} DEVPACK_UNPACKED=1
fi
export PYTHONUNBUFFERED=1
OUT=${OUT:-gpu-figures}; mkdir -p "$OUT"
if [ -n "${SMOKE:-}" ]; then
  heun=(--net tiny --batch 4 --repeats 1) train=(DEVICE=cpu NET=tiny-edm BATCHES=4 STEPS=2 FAST=)
  cache=(--net tiny --records 64 --shard 16 --batch 16 --actors-per-gpu 1) limit=(300 300 300)
else
  heun=(--device cuda --net cifar10 --batch 64 256 --fast) train=(BATCHES=64 STEPS=20)
  cache=(--records 4096 --shard 512 --batch 256) limit=(160 180 240)
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee "$OUT/device.txt"
$PYTHON -c 'import torch; print("torch", torch.__version__)' | tee -a "$OUT/device.txt"
status=0
run() {  # name, seconds, command...
  local name=$1 seconds=$2; shift 2
  echo "== $name (limit ${seconds}s)"
  local start=$SECONDS
  timeout "$seconds" "$@" 2>&1 | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc after $((SECONDS - start))s"
  [ "$rc" -eq 0 ] || status=1
}
run heun "${limit[0]}" $PYTHON -m benchmarks.heun_throughput "${heun[@]}" ${PKL:+--pkl "$PKL"}
run train "${limit[1]}" env "${train[@]}" PYTHON="$PYTHON" bash benchmarks/train_speed_gpu.sh
run cache "${limit[2]}" $PYTHON -m benchmarks.cache_gpu "${cache[@]}" ${PKL:+--pkl "$PKL"}
exit $status
