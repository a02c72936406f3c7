#!/usr/bin/env bash
# $1 = core, $2 = round; opt2 and fast_compile interleaved, twice
cd "$(dirname "$0")/../../.." && . .venv/bin/activate
declare -A F=( [opt2]="" [fast_compile]="--xla_cpu_opt_preset=CPU_OPT_PRESET_FAST_COMPILE" )
for i in a b; do for n in fast_compile opt2; do
  echo "$(date +%T) $n r$2$i" >> /tmp/xla_compile_log$2.txt
  XLA_FLAGS="--xla_cpu_multi_thread_eigen=false ${F[$n]}" taskset -c $1 artrm bench --setup=small --rungs=trm,gpt_level1 --steps=10 --warmup=2 --out=results/benchmarks/cpu2_small_xla_compile/rerun_${n}_r$2$i.json >> /tmp/xla_compile_log$2.txt 2>&1
done; done
echo ALLDONE >> /tmp/xla_compile_log$2.txt
