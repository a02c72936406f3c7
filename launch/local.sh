#!/usr/bin/env bash
# (a) This machine: on a CPU, one run per core, each pinned to its core
#   (SLOTS=1: one run at a time on every core; SLOTS=N: N side by side).
#   launch/local.sh experiments/length_gen.py:runlocal workdirs/length_gen_cpu
set -euo pipefail
exec python -m artrm suite --suite="$1" --root="$2" --launcher=local ${SLOTS:+--slots="$SLOTS"} "${@:3}"
