#!/usr/bin/env bash
cd /work/main && . .venv/bin/activate
declare -A F=( [default]="" [ynn_off]="--xla_cpu_experimental_ynn_fusion_type=" [ynn_dot_only]="--xla_cpu_experimental_ynn_fusion_type=dot" [ynn_plus_eltwise]="--xla_cpu_experimental_ynn_fusion_type=+eltwise" [xnn_graph_greedy]="--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY" [onednn]="--xla_cpu_use_onednn=true" )
for r in 1 2; do for n in default ynn_off ynn_dot_only ynn_plus_eltwise xnn_graph_greedy onednn; do
  echo "$(date +%T) $n r$r" >> /tmp/sweep/log.txt
  XLA_FLAGS="${F[$n]}" artrm bench --setup=small --rungs=gpt,ut,trm --steps=10 --warmup=2 --out=/tmp/sweep/${n}_r$r.json >> /tmp/sweep/log.txt 2>&1
done; done
echo ALLDONE >> /tmp/sweep/log.txt
