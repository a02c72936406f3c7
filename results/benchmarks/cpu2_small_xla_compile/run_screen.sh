#!/usr/bin/env bash
# $1 = core, $2 = round
cd "$(dirname "$0")/../../.." && . .venv/bin/activate
declare -A F=( [opt2]="" [opt1]="--xla_backend_optimization_level=1" [no_expensive]="--xla_llvm_disable_expensive_passes=true" [fast_compile]="--xla_cpu_opt_preset=CPU_OPT_PRESET_FAST_COMPILE" )
for n in opt2 opt1 no_expensive fast_compile; do
  echo "$(date +%T) $n r$2" >> /tmp/xla_compile_log$2.txt
  XLA_FLAGS="--xla_cpu_multi_thread_eigen=false ${F[$n]}" taskset -c $1 artrm bench --setup=small --rungs=trm,gpt_level1 --steps=10 --warmup=2 --out=results/benchmarks/cpu2_small_xla_compile/${n}_r$2.json >> /tmp/xla_compile_log$2.txt 2>&1
done
echo ALLDONE >> /tmp/xla_compile_log$2.txt
