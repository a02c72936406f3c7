#!/usr/bin/env bash
# (c) SLURM: an array job, one line of <root>/slurm_runs.txt per task, requeue-safe
# (every line resumes from its checkpoint): SIGTERM --slurm_signal_secs (180) before the
# time limit makes a run save and exit 75, and the task is requeued. Add --dry_run to
# print the submission, --hosts=N to train each run on N nodes (one process each).
#   launch/slurm.sh experiments/length_gen.py /shared/runs/length_gen --dry_run
set -euo pipefail
exec python -m artrm suite --suite="$1" --root="$2" --launcher=slurm "${@:3}"
