#!/usr/bin/env bash
# After run_day3.sh, on the same quiet machine: the study form of the code now (the shared
# copy/reverse step too), its main job, the fresh-state compile per rung, and one run's
# phases before (8d21fbc) and now, a run of each pinned to each core at the same time.
set -u
OUT=results/benchmarks/cpu2_study_form
PY=$PWD/.venv/bin/python
root=/tmp/sf_now_default; rm -rf $root
for task in copy reverse; do
  /usr/bin/time -f "wall=%e" "$PY" -m artrm suite \
    --suite=experiments/why_trm.py:runlocal,only=$task,rows=4 --root=$root > "$OUT/day3_now_default_$task.log" 2>&1
done
"$PY" -m artrm gather --root=$root --out=$OUT/day3_now_default_results.csv > /dev/null 2>&1
rm -rf /tmp/mj_now
/usr/bin/time -f "wall=%e" "$PY" -m artrm --workdir=/tmp/mj_now > "$OUT/day3_main_job_now.log" 2>&1
export XLA_FLAGS=--xla_cpu_multi_thread_eigen=false
taskset -c 0 "$PY" benchmarks/one_off_init.py --width=64 --out=results/benchmarks/cpu2_one_off_init_64.json > /dev/null 2>&1
for run in trm gpt; do
  (cd /tmp/wt_8d21fbc && taskset -c 0 "$PY" /work/main/benchmarks/run_phases.py \
    --suite=experiments/why_trm.py:runlocal,only=copy --run=task=copy,name=$run --workdir=/tmp/ph_before \
    --out=/work/main/$OUT/day3_phases_8d21fbc_$run.json > /dev/null 2>&1) &
  taskset -c 1 "$PY" benchmarks/run_phases.py --suite=experiments/why_trm.py:runlocal,only=copy \
    --run=task=copy,name=$run --workdir=/tmp/ph_now --out=$OUT/day3_phases_now_$run.json > /dev/null 2>&1
  wait
done
echo ALLDONE
