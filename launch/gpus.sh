#!/usr/bin/env bash
# (b) One machine, several GPUs: a queue, one run per GPU (SLOTS runs per GPU).
#   GPUS=0,1,2,3 launch/gpus.sh experiments/length_gen.py workdirs/length_gen
set -euo pipefail
GPUS="${GPUS:-$(nvidia-smi --query-gpu=index --format=csv,noheader | paste -sd,)}"
exec python -m artrm suite --suite="$1" --root="$2" --launcher=local --gpus="$GPUS" \
  --slots="${SLOTS:-1}" "${@:3}"
