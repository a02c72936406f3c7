#!/usr/bin/env bash
# Installs artrm on a GPU machine without internet whose image already has jax (with CUDA),
# flax, optax, orbax-checkpoint, chex and numpy: the rest travels as wheels in .whl/.
#
#   connected machine:  launch/gpu_wheels.sh download   # the target's wheels into .whl/ (~2 MB)
#   GPU machine:        launch/gpu_wheels.sh install    # pip --no-index from .whl/, then -e .
#   either:             launch/gpu_wheels.sh list       # the requirements the image lacks
#
# Downloaded: setup.cfg's install_requires less the image's packages (IMAGE), with their
# dependencies, plus setuptools and wheel to build the editable install offline. The target
# is PYTHON_VERSION (3.12) on PLATFORM (manylinux2014_x86_64); WHEELS moves the folder.
# TFDS is an extra (`.[tfds]`) that training and evaluation never import.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS="${WHEELS:-.whl}"
PYTHON="${PYTHON:-python3}"
IMAGE="${IMAGE:-jax flax optax orbax-checkpoint chex numpy}"

missing() {   # install_requires of setup.cfg whose names are not in $IMAGE, one per line
  IMAGE="$IMAGE" "$PYTHON" - <<'PY'
import configparser, os, re
cfg = configparser.ConfigParser()
cfg.read('setup.cfg')
image = set(os.environ['IMAGE'].split())
for req in cfg['options']['install_requires'].split():
  if re.split(r'[<>=!~\[; ]', req)[0].lower() not in image:
    print(req)
PY
}

case "${1:-}" in
  list)
    missing
    ;;
  download)
    mapfile -t reqs < <(missing)
    "$PYTHON" -m pip download --dest "$WHEELS" --only-binary=:all: \
      --python-version "${PYTHON_VERSION:-3.12}" --platform "${PLATFORM:-manylinux2014_x86_64}" \
      --platform manylinux_2_17_x86_64 "${reqs[@]}" 'setuptools>=68' wheel
    ;;
  install)
    mapfile -t reqs < <(missing)
    "$PYTHON" -m pip install --no-index --find-links "$WHEELS" "${reqs[@]}"
    # --no-deps: the image's packages are used as they are, whatever pip thinks of them.
    "$PYTHON" -m pip install --no-index --find-links "$WHEELS" --no-deps -e .
    "$PYTHON" -c 'import artrm.training.train, artrm.bench; print("artrm imports")'
    ;;
  *)
    echo "usage: $0 list|download|install (see the comment at the top)" >&2
    exit 2
    ;;
esac
