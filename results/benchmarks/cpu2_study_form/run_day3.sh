#!/usr/bin/env bash
# The study form (docs/performance.md, "A study on this CPU") from three checkouts, one
# after the other on a quiet machine: 0ffea38 at its best (--slots=2), the code before the
# one-off init (8d21fbc) and now, each with its default; then the main job of the last two.
# Run from the repository root; worktrees of the older commits at /tmp/wt_<commit>.
set -u
OUT=results/benchmarks/cpu2_study_form
PY=$PWD/.venv/bin/python
form() {  # $1 = name, $2 = checkout, $3 = extra suite args
  local root=/tmp/sf_$1
  rm -rf "$root"
  for task in copy reverse; do
    (cd "$2" && PYTHONPATH="$2" /usr/bin/time -f "wall=%e" "$PY" -m artrm suite \
      --suite=experiments/why_trm.py:runlocal,only=$task,rows=4 --root="$root" $3) \
      > "$OUT/day3_$1_$task.log" 2>&1
  done
}
form 0ffea38_s2 /tmp/wt_0ffea38 --slots=2
form 8d21fbc_default /tmp/wt_8d21fbc ""
form now_default "$PWD" ""
for c in 8d21fbc now; do
  d=$PWD; [ $c = now ] || d=/tmp/wt_$c
  rm -rf /tmp/mj_$c
  (cd "$d" && PYTHONPATH="$d" /usr/bin/time -f "wall=%e" "$PY" -m artrm --workdir=/tmp/mj_$c) \
    > "$OUT/day3_main_job_$c.log" 2>&1
done
echo ALLDONE
