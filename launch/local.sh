#!/usr/bin/env bash
# (a) This machine: the suite's runs one after another (SLOTS=2 runs two side by side).
#   launch/local.sh experiments/length_gen.py:runlocal workdirs/length_gen_cpu
set -euo pipefail
exec python -m artrm suite --suite="$1" --root="$2" --launcher=local --slots="${SLOTS:-1}" "${@:3}"
