#!/usr/bin/env bash
# (d) Cloud TPU VM / pod: the same suite command on every host (jax.distributed).
# <root> must be visible to every host (NFS or a gcsfuse mount). Add --dry_run to print.
#   TPU_NAME=my-v4-32 ZONE=us-central2-b launch/tpu.sh experiments/length_gen.py /mnt/runs/lg
set -euo pipefail
exec python -m artrm suite --suite="$1" --root="$2" --launcher=tpu \
  --tpu_name="${TPU_NAME:?set TPU_NAME}" --zone="${ZONE:?set ZONE}" "${@:3}"
