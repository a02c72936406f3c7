#!/usr/bin/env bash
# The paper's length-generalisation table at the paper's scale on one GPU, inside a time box.
#
#   OUT=/results DEADLINE_S=540 launch/gpu_paper_table.sh      # on the GPU machine, repo root
#   SMOKE=1 OUT=/tmp/smoke DEADLINE_S=150 launch/gpu_paper_table.sh   # the same steps, tiny, CPU
# BENCH_RUNGS, F32_RUNGS and LEVERS set empty skip those benches.
#
# Each step runs under what is left of DEADLINE_S (seconds from the start) and keeps its output
# when stopped, so whatever finished is in OUT:
#   1. install   launch/gpu_wheels.sh install, when ml-collections is missing (wheels in .whl/)
#   2. smoke     nvidia-smi, jax.devices() and one bf16 training step of a tiny trm -> smoke.json
#   3. bench     `artrm bench --setup=paper` one rung at a time (BENCH_S in all): bf16 for
#                BENCH_RUNGS (all seven), float32 for F32_RUNGS (gpt trm) -> bench/*.json
#                (compile seconds, step ms, tokens/s, MFU against the GPU's bf16 / fp32 peak);
#                then LEVERS, `rung:flag[,flag]` benched in bf16 with those flags added (the
#                stack sizes as --seeds=N, --remat=none) and with XLA command buffers
#                -> bench/lever_<rung>_<flags>.json
#   4. grid      SUITE (experiments/length_gen.py in bf16, 3 seeds) stacked (STACK=all: one
#                program per rung trains its 3 tasks x 3 seeds, rows padded to addition's),
#                SLOTS programs in flight on the GPU, 1/SLOTS of its memory each -> grid/<run>/.
#                grid_plan.json estimates each task's time from the bench (serial, unstacked:
#                an upper bound, artrm/tools/time_box.py) and, when not all tasks fit, the
#                suite runs only the tasks that do (`only=`). A cut run resumes from its
#                checkpoint when the script runs again with the same OUT.
#   5. report    artrm gather + artrm report on the finished runs -> grid/results.csv, report/
#   summary.json: every step's exit code and wall seconds, the runs finished; dmon.txt: the
#   GPU's load every 5 s. PACK_TO=DIR: OUT (less checkpoints) also as DIR/results.tgz, one
#   file for a machine that returns only a few.
# SMOKE=1 shrinks 3 and 4 (small bench setup, runlocal suite of a few steps) and skips the GPU.
set -uo pipefail
cd "$(dirname "$0")/.."

START=$(date +%s)
DEADLINE_S="${DEADLINE_S:-540}"
OUT="${OUT:-workdirs/gpu_paper_table}"
PY="${PYTHON:-python3}"
SMOKE="${SMOKE:-0}"
REPORT_S="${REPORT_S:-45}"                # kept back for step 5
STACK="${STACK:-all}"                     # artrm suite --stack: a rung's 3 tasks x seeds at once
if [[ "$SMOKE" == 1 ]]; then
  BENCH=(--setup=small --steps=1 --warmup=0 --eval_repeats=1)
  BENCH_RUNGS="${BENCH_RUNGS-gpt}" F32_RUNGS="${F32_RUNGS-gpt}" BENCH_S="${BENCH_S:-150}"
  LEVERS="${LEVERS:-}"
  SUITE="${SUITE:-experiments/length_gen.py:runlocal,seeds=2,steps=2,dtype=bfloat16}"
  SLOTS="${SLOTS:-1}" GPUS=()
else
  BENCH=(--setup=paper --steps=10 --warmup=2 --eval_repeats=1)
  BENCH_RUNGS="${BENCH_RUNGS-gpt gpt_level1 gpt_level2 ut ut_level1 ut_level2 trm}"
  F32_RUNGS="${F32_RUNGS-gpt trm}" BENCH_S="${BENCH_S:-150}"
  # The stack sizes (a stack of N runs is one program over N members, as --seeds=N times
  # it), recomputation off, and XLA's command buffers (CUDA graphs) over the scan bodies.
  LEVERS="${LEVERS-gpt:--seeds=3 gpt:--seeds=9 gpt:--seeds=21 trm:--seeds=9 gpt:--remat=none gpt:--seeds=9,--remat=none}"
  SUITE="${SUITE:-experiments/length_gen.py:seeds=3,dtype=bfloat16}"
  # One stack per rung (3 tasks x 3 seeds, rows padded to addition's) at a time: runs side
  # by side on one GPU overlapped little (docs/performance.md, "On a GPU").
  SLOTS="${SLOTS:-1}" GPUS=(--gpus=0)
fi
mkdir -p "$OUT/bench"
OUT="$(cd "$OUT" && pwd)"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# Runs and the bench compile the same programs: compile each once.
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-/tmp/artrm_jax_cache}"
: > "$OUT/steps.tsv"

left() { echo $((DEADLINE_S - ($(date +%s) - START))); }

# step NAME SECONDS CMD...: CMD under `timeout` (its whole process group), logged to
# OUT/NAME.log; appends NAME, exit code (124: stopped at its limit) and wall seconds.
step() {
  local name="$1" limit="$2" t0 rc
  shift 2
  if ((limit < 5)); then
    printf '%s\tskipped\t0\n' "$name" >> "$OUT/steps.tsv"
    echo "== $name: skipped (no time left)"
    return 1
  fi
  echo "== $name (at most ${limit}s, $(left)s left)"
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$(($(date +%s) - t0))" >> "$OUT/steps.tsv"
  tail -n 3 "$OUT/$name.log"
  return $rc
}

# 1. install
if ! "$PY" -c 'import ml_collections, tqdm' 2>/dev/null; then
  step install "$(left)" bash launch/gpu_wheels.sh install
fi

# 2. smoke
DMON=
if [[ "$SMOKE" != 1 ]]; then
  nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || echo 'no nvidia-smi' > "$OUT/nvidia-smi.txt"
  nvidia-smi dmon -s um -d 5 > "$OUT/dmon.txt" 2>&1 &
  DMON=$!
fi
step smoke "$(left)" "$PY" - "$OUT/smoke.json" <<'EOF'
import json, math, sys, time
import jax
from artrm import parallel
from artrm.configs import length_gen
from artrm.training import builders, train_state, train_step
t0 = time.perf_counter()
c = length_gen.get_config('model=trm,task=addition,runlocal')
c.model.update(n_embd=32, n_head=2, dtype='bfloat16')
c.update(budget=4, batch_size=8)
model = builders.run_model(c)
optimizer = train_state.make_optimizer(c.optimizer, model.recipe, c.max_steps)
state = train_state.init_seeds(model, optimizer, train_state.seeds_of(c))
step = train_step.make_step_fn(c, model, optimizer, parallel.data_mesh())
state, metrics = step(state, train_step.task_indices(c))
loss = float(metrics['loss'][0])
out = dict(devices=[str(d) for d in jax.devices()], device_kind=jax.devices()[0].device_kind,
           jax=jax.__version__, bf16_step_loss=loss, seconds=time.perf_counter() - t0)
print(json.dumps(out))
json.dump(out, open(sys.argv[1], 'w'), indent=1)
sys.exit(0 if math.isfinite(loss) else 1)
EOF

# 3. bench, one rung per process: each JSON is kept however far the others get
BENCH_END=$(($(date +%s) + BENCH_S))
for spec in $(for r in $BENCH_RUNGS; do echo "bfloat16:$r"; done; for r in $F32_RUNGS; do echo "float32:$r"; done); do
  dtype="${spec%%:*}" rung="${spec#*:}"
  limit=$((BENCH_END - $(date +%s)))
  ((limit > $(left))) && limit=$(left)
  step "bench_${dtype}_$rung" "$limit" "$PY" -m artrm bench "${BENCH[@]}" --dtype="$dtype" \
    --rungs="$rung" --out="$OUT/bench/paper_${dtype}_$rung.json"
done
for lever in $LEVERS; do   # not named *bfloat16*: the grid's plan reads only the plain rows
  rung="${lever%%:*}" flags="${lever#*:}" name="${lever#*:--}" name="${name//,--/_}"
  limit=$((BENCH_END - $(date +%s)))
  ((limit > $(left))) && limit=$(left)
  step "lever_${rung}_${name//=/_}" "$limit" "$PY" -m artrm bench "${BENCH[@]}" \
    --dtype=bfloat16 --rungs="$rung" ${flags//,/ } --out="$OUT/bench/lever_${rung}_${name//=/_}.json"
done
if [[ "$SMOKE" != 1 && -n "$LEVERS" ]]; then  # the 9-run stack with command buffers over scans
  limit=$((BENCH_END - $(date +%s)))
  ((limit > $(left))) && limit=$(left)
  XLA_FLAGS="--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,WHILE,CONDITIONAL" \
    step lever_gpt_seeds_9_cmdbuf "$limit" "$PY" -m artrm bench "${BENCH[@]}" --dtype=bfloat16 \
    --rungs=gpt --seeds=9 --out="$OUT/bench/lever_gpt_seeds_9_cmdbuf.json"
fi

# 4. grid: the estimate from the bench's step times, then the suite until the deadline
(($(left) - REPORT_S > 5)) && "$PY" -m artrm.tools.time_box "$OUT/bench" "$SUITE" "$SLOTS" \
  "$(($(left) - REPORT_S))" "$OUT/grid_plan.json"
ONLY="$("$PY" -c "import json; print(json.load(open('$OUT/grid_plan.json'))['only'])" 2>/dev/null)"
[[ -n "$ONLY" ]] && SUITE="$SUITE,only=$ONLY" && echo "== grid: only $ONLY fits the time left"
export XLA_PYTHON_CLIENT_MEM_FRACTION
XLA_PYTHON_CLIENT_MEM_FRACTION="$("$PY" -c "print(round(0.9 / $SLOTS, 3))")"
step grid $(($(left) - REPORT_S)) "$PY" -m artrm suite --suite="$SUITE" --root="$OUT/grid" \
  --slots="$SLOTS" --stack="$STACK" "${GPUS[@]}"
unset XLA_PYTHON_CLIENT_MEM_FRACTION

# 5. report on the finished runs
if ls "$OUT"/grid/*/final_eval.json > /dev/null 2>&1; then
  step gather "$(left)" "$PY" -m artrm gather --root="$OUT/grid"
  step report "$(left)" "$PY" -m artrm report --root="$OUT/grid" --out="$OUT/report"
fi

[[ -n "$DMON" ]] && kill "$DMON" 2> /dev/null
"$PY" - "$OUT" "$START" <<'EOF'
import glob, json, os, sys, time
out, start = sys.argv[1], int(sys.argv[2])
steps = [dict(zip(('step', 'exit_code', 'seconds'), line.split('\t')))
         for line in open(os.path.join(out, 'steps.tsv')).read().splitlines()]
finished = sorted(os.path.basename(os.path.dirname(p))
                  for p in glob.glob(os.path.join(out, 'grid', '*', 'final_eval.json')))
summary = dict(wall_seconds=time.time() - start, steps=steps, finished_runs=finished)
json.dump(summary, open(os.path.join(out, 'summary.json'), 'w'), indent=1)
print(f'{len(finished)} runs finished in {summary["wall_seconds"]:.0f}s; see {out}/summary.json')
EOF
if [[ -n "${PACK_TO:-}" ]]; then
  tar czf "$PACK_TO/results.tgz" --exclude=checkpoints --exclude=best --exclude=.jax_cache \
    -C "$(dirname "$OUT")" "$(basename "$OUT")" && echo "packed $PACK_TO/results.tgz"
fi
