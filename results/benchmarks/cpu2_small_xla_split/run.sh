#!/usr/bin/env bash
# $1 = core, $2 = round. XLA:CPU's codegen split count, at LLVM level 2 and 1, in the
# study's arrangement (one single-threaded run pinned to each core, both busy).
cd "$(dirname "$0")/../../.." && . .venv/bin/activate
declare -A F=( [opt2]="" [opt2_split1]="--xla_cpu_parallel_codegen_split_count=1" [opt1]="--xla_backend_optimization_level=1" [opt1_split1]="--xla_backend_optimization_level=1 --xla_cpu_parallel_codegen_split_count=1" )
for n in opt2 opt2_split1 opt1 opt1_split1; do
  echo "$(date +%T) $n r$2" >> /tmp/xla_split_log$2.txt
  XLA_FLAGS="--xla_cpu_multi_thread_eigen=false ${F[$n]}" taskset -c $1 artrm bench --setup=small --rungs=trm,gpt_level1 --steps=10 --warmup=2 --out=results/benchmarks/cpu2_small_xla_split/${n}_r$2.json >> /tmp/xla_split_log$2.txt 2>&1
done
echo ALLDONE >> /tmp/xla_split_log$2.txt
