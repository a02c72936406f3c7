"""Speed of the seven rungs: compile time, step time, tokens/s, FLOPs, MFU, memory, decoding.

The timed step is the training loop's own (`train.make_step_fn`) for one seed
(run unvmapped, so early stops skip work), on one device or data-parallel over
`devices`, and decoding splits its batch the same way: the numbers are those
`artrm train` runs at. On a CPU host, one device per core (`XLA_FLAGS=
"--xla_force_host_platform_device_count=2 --xla_cpu_multi_thread_eigen=false"`,
`devices=2`) gives each core its half of the batch, where one device's thread pool
gets 1.3-1.7×, not 2×, from the second core on a small model's small ops. Step
times are medians of steps synchronised one by one; `pipelined_step_seconds` is
the mean without syncs, as the loop dispatches.

The setups are the paper-comparison table's: `small` and `paper` train on
addition at L = 10 (rows of the examples' 34 tokens; the paper's code pads rows
to block_size, so both token counts are kept), `eval` decodes at L = 10 and 50
with `decoding.generate` and `decoding.generate_cached`.

Model FLOPs are counted analytically (`step_flops`), not read from XLA, whose
cost analysis counts a scan body once however many steps it runs.
"""

import dataclasses
import json
import os
import re
import resource
import statistics
import time
from typing import Any, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np

from artrm.evaluation import decoding
from artrm import parallel
from artrm.bench import profiling
from artrm.training import train
from artrm.configs import length_gen
from artrm.data import eval_set, get_task
from artrm.models import RUNGS, ModelConfig, build_model, get_rung, init_params
from artrm.tables import markdown_table


@dataclasses.dataclass(frozen=True)
class Setup:
  """One benchmark setting; `train=False` measures decoding only."""

  name: str
  n_embd: int
  n_head: int
  budget: int
  batch_size: int
  block_size: int
  train: bool = True
  eval_lengths: tuple[int, ...] = ()
  eval_batch: int = 100
  task: str = 'addition'
  train_length: int = 10
  dropout: float = 0.1
  remat: str | None = None   # model.remat; None: the training config's
  dtype: str | None = None   # model.dtype; None: the training config's (float32)

  def replace(self, **overrides) -> 'Setup':
    """A copy with the overrides that are not None (unset CLI flags)."""
    return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})


SETUPS = {
    'small': Setup('small', n_embd=128, n_head=4, budget=12, batch_size=32, block_size=34),
    'paper': Setup('paper', n_embd=384, n_head=6, budget=24, batch_size=64, block_size=180),
    'eval': Setup('eval', n_embd=128, n_head=4, budget=12, batch_size=32, block_size=180,
                  train=False, eval_lengths=(10, 50)),
}

PROFILED_CALLS = 3   # steps or decoding calls per profiler trace (--profile_dir)

# Dense peak FLOP/s per device by matmul input type (`peak_basis`: bf16 for
# model.dtype bfloat16; for float32, tf32 at JAX's default matmul precision on
# Hopper, fp32 at matmul_precision 'float32').
_PEAKS = {
    'H100 PCIe': dict(bf16=756e12, tf32=378e12, fp32=51.2e12),
    'H100': dict(bf16=989e12, tf32=494.7e12, fp32=66.9e12),
    'H200': dict(bf16=989e12, tf32=494.7e12, fp32=66.9e12),
}


def get_setup(name: str) -> Setup:
  if name not in SETUPS:
    raise ValueError(f'Unknown benchmark setup {name!r}; choose one of {list(SETUPS)}.')
  return SETUPS[name]


def run_config(setup: Setup, rung: str):
  """The training config of `rung` under `setup`: the paper's base config, one seed."""
  c = length_gen.base_config()
  c.model.update(name=rung, n_embd=setup.n_embd, n_head=setup.n_head,
                 block_size=setup.block_size, dropout=setup.dropout)
  if setup.remat is not None:
    c.model.remat = setup.remat
  if setup.dtype is not None:
    c.model.dtype = setup.dtype
  c.update(task=setup.task, train_length=setup.train_length, batch_size=setup.batch_size,
           budget=setup.budget, num_seeds=1)
  return c


# ------------------------------------------------------------------ FLOPs ---

def pass_flops(batch: int, seq_len: int, n_embd: int) -> int:
  """Matmul FLOPs of one block pass forward, 2 per multiply-add.

  2*B*T*12*C^2 for q, k, v, out (4 C^2) and the MLP (8 C^2), plus 2*2*B*T^2*C
  for q k^T and weights @ v over the full T x T (the causal mask saves no work).
  """
  B, T, C = batch, seq_len, n_embd
  return 2 * B * T * 12 * C * C + 2 * 2 * B * T * T * C


def head_flops(batch: int, seq_len: int, n_embd: int, vocab_size: int) -> int:
  """The LM head's forward FLOPs, once per forward whatever the rung."""
  return 2 * batch * seq_len * n_embd * vocab_size


def backprop_passes(config: ModelConfig, fwd_passes: float) -> float:
  """Passes of a forward that gradients flow through.

  Nested rungs (ut_level2, trm) run H cycles per step but back-propagate only
  the last (the first H - 1 run under stop_gradient); the others, all passes.
  """
  return fwd_passes / config.n_outer_loops if get_rung(config.name).nested else fwd_passes


def step_flops(config: ModelConfig, batch: int, seq_len: int, fwd_passes: float) -> float:
  """Model FLOPs of one training step: forward of every executed pass, backward (2x) of
  back-propagated ones, and the head's forward + backward.

    pass_flops * (fwd + 2 * bwd) + 3 * head_flops

  Without early stop and no-grad cycles this is the usual 6 * N * D, with N the
  12 C^2 matmul weights of a pass and D the tokens. Layer norms, embeddings, the
  halting heads and the optimizer are left out (all O(B*T*C) or O(params)).
  """
  per_pass = pass_flops(batch, seq_len, config.n_embd)
  bwd = backprop_passes(config, fwd_passes)
  return per_pass * (fwd_passes + 2 * bwd) + 3 * head_flops(batch, seq_len, config.n_embd,
                                                            config.vocab_size)


def peak_basis(config: ModelConfig) -> str:
  """The input type the model's matmuls run at on a GPU: the row of `_PEAKS` for its MFU."""
  if config.dtype == 'bfloat16':
    return 'bf16'
  return 'fp32' if config.matmul_precision == 'float32' else 'tf32'


def peak_flops(device_kind: str, dtype: str = 'tf32') -> float | None:
  """Dense peak FLOP/s of a known accelerator, else None (no MFU)."""
  for kind, peaks in _PEAKS.items():   # 'H100 PCIe' before 'H100'
    if kind.lower() in device_kind.lower():
      return peaks[dtype]
  return None


# ------------------------------------------------------------ measurement ---

def device_info() -> dict[str, Any]:
  d = jax.devices()[0]
  return dict(device_kind=d.device_kind, platform=d.platform, device_count=jax.device_count(),
              jax=jax.__version__, flax=flax.__version__, cpu_count=os.cpu_count())


def peak_memory() -> dict[str, Any]:
  """The process's peak so far: device bytes where the backend reports them, else max RSS."""
  stats = jax.devices()[0].memory_stats() or {}
  if 'peak_bytes_in_use' in stats:
    return dict(peak_memory_bytes=int(stats['peak_bytes_in_use']),
                peak_memory_source='device peak_bytes_in_use, process so far')
  rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss   # KiB on Linux
  return dict(peak_memory_bytes=int(rss_kib) * 1024, peak_memory_source='max RSS, process so far')


def _timed(fn, n: int, warmup: int) -> tuple[list[float], list[Any]]:
  """Seconds and outputs of `n` calls of `fn()` after `warmup` calls, each synchronised."""
  times, outs = [], []
  for i in range(warmup + n):
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    if i >= warmup:
      times.append(time.perf_counter() - start)
      outs.append(out)
  return times, outs


def bench_train(config, model, steps: int, warmup: int, mesh: jax.sharding.Mesh,
                profile_dir: str | None = None) -> tuple[dict, Any]:
  """Compile and time the jitted training step, data-parallel over `mesh`; returns
  (numbers, params after training). With `profile_dir`, `PROFILED_CALLS` more steps
  are traced there and summarised (`profiling.summarize`)."""
  optimizer = train.make_optimizer(config.optimizer)
  state = jax.device_put(train.init_seeds(model, optimizer, train.seeds_of(config)),
                         parallel.replicated(mesh))
  start = time.perf_counter()
  step_fn = train.make_step_fn(config, model, optimizer, mesh).lower(state).compile()
  compile_seconds = time.perf_counter() - start
  memory = step_fn.memory_analysis()

  def step():
    nonlocal state
    state, metrics = step_fn(state)
    return metrics

  times, metrics = _timed(step, steps, warmup)
  metrics = jax.device_get(metrics)
  profiled = {}
  if profile_dir:   # the steps right after the timed ones: ACT's pass count drifts as it trains
    profile, traced = profiling.trace(step, PROFILED_CALLS, profile_dir,
                                      hlo_text=step_fn.as_text())
    profile['fwd_passes'] = float(np.mean([m['block_passes'] for m in jax.device_get(traced)]))
    profiled['profile'] = profile
  start = time.perf_counter()   # as the training loop runs: no sync between steps
  jax.block_until_ready([step() for _ in range(steps)])
  pipelined = (time.perf_counter() - start) / steps
  mc = model.config
  seq_len = get_task(config.task).seq_len(config.train_length)
  fwd = float(np.mean([m['block_passes'] for m in metrics]))
  seconds = statistics.median(times)
  flops = step_flops(mc, config.batch_size, seq_len, fwd)
  tokens = config.batch_size * seq_len
  padded = config.batch_size * mc.block_size
  out = dict(
      compile_seconds=compile_seconds, step_seconds=seconds, step_seconds_all=times,
      pipelined_step_seconds=pipelined,
      seq_len=seq_len, tokens_per_step=tokens, padded_tokens_per_step=padded,
      tokens_per_sec=tokens / seconds, padded_tokens_per_sec=padded / seconds,
      fwd_passes=fwd, bwd_passes=backprop_passes(mc, fwd),
      steps_taken=float(np.mean([m['steps_taken'] for m in metrics])),
      flops_per_step=flops, flops_per_sec=flops / seconds,
      loss=float(metrics[-1]['loss'][0]), **profiled)
  if memory is not None:
    out['step_program_bytes'] = int(memory.argument_size_in_bytes + memory.output_size_in_bytes
                                    + memory.temp_size_in_bytes - memory.alias_size_in_bytes)
  return out, train.seed_slice(state.params, 0)


def bench_decode(fn, model, params, prompts_NxP, answer_len: int, repeats: int,
                 full_compute: bool, profile_dir: str | None = None) -> tuple[dict, np.ndarray]:
  """Greedy answers of one batch: first call (compile + run), the median of `repeats`, answers;
  with `profile_dir`, the summary of more calls traced there."""
  call = lambda: fn(model, params, prompts_NxP, answer_len, decoding='greedy',
                    full_compute=full_compute)
  start = time.perf_counter()
  answers = jax.block_until_ready(call())
  first_seconds = time.perf_counter() - start
  times, _ = _timed(call, repeats, warmup=0)
  seconds = statistics.median(times)
  out = dict(first_call_seconds=first_seconds, seconds=seconds, seconds_all=times,
             sequences_per_sec=len(prompts_NxP) / seconds)
  if profile_dir:
    out['profile'], _ = profiling.trace(call, PROFILED_CALLS, profile_dir)
  return out, np.asarray(answers)


def bench_eval(setup: Setup, model, params, repeats: int, full_compute: bool,
               mesh: jax.sharding.Mesh, profile_dir: str | None = None) -> dict:
  """{L: numbers of `generate` and `generate_cached`} at each eval length, the batch of
  prompts split over `mesh` as the evaluator splits it; with `profile_dir`, cached
  decoding traced there (`<profile_dir>/L<L>`) and summarised.

  `prompt_block_passes` is what one forward over the batch of prompts executed:
  with early stop (ACT, TRM) decoding cost depends on the params' halting;
  `prompt_forward_seconds` its median time, the prefill part of decoding.
  """
  # Logits and aux: aux alone would let XLA drop the work being timed.
  forward = jax.jit(lambda p, x: model.apply({'params': p}, x, full_compute=full_compute))
  out = {}
  for L in setup.eval_lengths:
    prompts_NxP, answers_NxA = eval_set(setup.task, L, setup.eval_batch, 0)
    prompts_NxP, answer_len = parallel.shard_batch(prompts_NxP, mesh), answers_NxA.shape[1]
    by_fn = dict(prompt_block_passes=int(forward(params, prompts_NxP)[1]['block_passes']),
                 prompt_forward_seconds=statistics.median(
                     _timed(lambda: forward(params, prompts_NxP), repeats, warmup=0)[0]))
    by_fn['generate'], reference = bench_decode(decoding.generate, model, params, prompts_NxP,
                                                answer_len, repeats, full_compute)
    by_fn['generate_cached'], answers = bench_decode(
        decoding.generate_cached, model, params, prompts_NxP, answer_len, repeats, full_compute,
        profile_dir and os.path.join(profile_dir, f'L{L}'))
    by_fn['generate_cached']['matches_generate'] = bool(np.array_equal(answers, reference))
    out[L] = by_fn
  return out


def run_benchmark(setup: Setup, rungs: Sequence[str] = tuple(RUNGS), steps: int = 20,
                  warmup: int = 3, eval_repeats: int = 5, full_compute: bool = False,
                  peak: float | None = None, devices: int = 1, profile_dir: str | None = None,
                  verbose: bool = False) -> dict:
  """Measures each rung under `setup`; returns a JSON-ready dict (see `write_results`).

  `peak` (FLOP/s per device) overrides the table of known devices; without either, MFU
  is omitted. Training steps and decoding run data-parallel over the first `devices`
  local devices (MFU against all of their peaks). `profile_dir` adds a profiler trace
  per rung of training (`<profile_dir>/<rung>/train`) and cached decoding, summarised
  under `profile` in the JSON.
  """
  if steps < 1 or warmup < 0 or eval_repeats < 1:
    raise ValueError(f'Need steps >= 1, warmup >= 0 and eval_repeats >= 1; got {steps}, '
                     f'{warmup}, {eval_repeats}.')
  if not 1 <= devices <= jax.local_device_count():
    raise ValueError(f'devices={devices}, but this process has {jax.local_device_count()} '
                     'local devices; on CPU make more with XLA_FLAGS='
                     f'--xla_force_host_platform_device_count={devices}.')
  mesh = parallel.data_mesh(jax.local_devices()[:devices])
  if setup.train:
    parallel.check_batch_divisible(setup.batch_size, mesh)
  if setup.eval_lengths:   # else decoding would run unsplit
    parallel.check_batch_divisible(setup.eval_batch, mesh, what='eval_batch')
  for rung in rungs:   # fail before any work
    get_rung(rung)
  task = get_task(setup.task)
  for L in setup.eval_lengths:
    decoding.check_fits(setup.block_size, task.prompt_len(L), task.answer_len(L),
                        what=f'{setup.task} at length {L}')
  device = device_info()
  matmul_type = peak_basis(train.model_config(run_config(setup, rungs[0])))   # same for all rungs
  basis = 'given' if peak else f'{matmul_type} dense'
  peak = peak or peak_flops(device['device_kind'], matmul_type)
  result = dict(device=device, setup=dataclasses.asdict(setup),
                settings=dict(steps=steps, warmup=warmup, eval_repeats=eval_repeats,
                              full_compute=full_compute, peak_flops=peak, devices=devices,
                              peak_flops_basis=basis if peak else None,
                              eval_params='after the timed steps' if setup.train else 'initial'),
                rungs={})
  for rung in rungs:
    config = run_config(setup, rung)
    mc = train.model_config(config)
    model = build_model(mc)
    H, L = model.rung.cycles(model.config)   # (1, 1) unless nested
    row = dict(title=get_rung(rung).title, n_layer=mc.n_layer, n_outer_loops=H, n_inner_loops=L,
               remat=mc.remat, dtype=mc.dtype, matmul_precision=mc.matmul_precision)
    if setup.train:
      row['train'], params = bench_train(config, model, steps, warmup, mesh,
                                         profile_dir and os.path.join(profile_dir, rung, 'train'))
      if peak:
        row['train']['mfu'] = row['train']['flops_per_sec'] / (devices * peak)
    else:
      params = init_params(model, jax.random.key(config.seed))
    row['n_params'] = sum(x.size for x in jax.tree.leaves(params))
    row['eval'] = bench_eval(setup, model, jax.device_put(params, parallel.replicated(mesh)),
                             eval_repeats, full_compute, mesh,
                             profile_dir and os.path.join(profile_dir, rung, 'decode'))
    row.update(peak_memory())
    result['rungs'][rung] = row
    if verbose:
      print(', '.join(f'{k} {v}' for k, v in summary_row(rung, row).items()), flush=True)
      for what, profile in _profiles(row):
        print(f'  {what}: {profiling.describe(profile)}', flush=True)
  return result


# ----------------------------------------------------------------- output ---

def _profiles(row: dict) -> list[tuple[str, dict]]:
  """(what, summary) of each profiler trace a rung's row holds."""
  out = [('train step', row['train']['profile'])] if 'profile' in row.get('train', {}) else []
  return out + [(f'generate_cached L={L}', by_fn['generate_cached']['profile'])
                for L, by_fn in row['eval'].items() if 'profile' in by_fn['generate_cached']]


def summary_row(rung: str, row: dict) -> dict[str, str]:
  """One table row of formatted cells."""
  cells = {'rung': rung, 'params': f'{row["n_params"]:,}'}
  t = row.get('train')
  if t:
    cells.update({'passes fwd/bwd': f'{t["fwd_passes"]:g}/{t["bwd_passes"]:g}',
                  'compile s': f'{t["compile_seconds"]:.1f}',
                  'step ms': f'{1e3 * t["step_seconds"]:.2f}',
                  'tokens/s': f'{t["tokens_per_sec"]:,.0f}',
                  'padded tokens/s': f'{t["padded_tokens_per_sec"]:,.0f}',
                  'TFLOP/s': f'{t["flops_per_sec"] / 1e12:.3f}',
                  'MFU': f'{100 * t["mfu"]:.1f}%' if 'mfu' in t else '-'})
  for L, by_fn in row['eval'].items():
    for fn in ('generate', 'generate_cached'):
      if fn in by_fn:
        cells[f'{fn} seq/s L={L}'] = f'{by_fn[fn]["sequences_per_sec"]:,.1f}'
  cells['peak MiB'] = f'{row["peak_memory_bytes"] / 2**20:,.0f}'
  return cells


def markdown(result: dict, rows: list[dict] | None = None) -> str:
  """The setup in a line, then the table of `rows` (default: `summary_row` of each rung)."""
  s, d = result['setup'], result['device']
  header = (f'{s["name"]}: n_embd {s["n_embd"]}, {s["n_head"]} heads, budget {s["budget"]}, '
            f'batch {s["batch_size"]}, {s["task"]} L={s["train_length"]}, block_size '
            f'{s["block_size"]} on {d["device_kind"]} ({d["platform"]}, jax {d["jax"]}).')
  rows = rows or [summary_row(rung, row) for rung, row in result['rungs'].items()]
  return header + '\n\n' + markdown_table(rows)


# The paper's PyTorch code on a 2-core CPU like this one (torch, 2 threads,
# untrained weights, addition L = 10, dropout 0.1): median ms per training step
# in `small` and `paper` (rows padded to block_size), ms per sequence of its
# evaluator (one sequence at a time, sampled, full forward per token) in `eval`.
PAPER_CPU_MS = {
    'small': dict(gpt=291, gpt_level1=250, gpt_level2=255, ut=71, ut_level1=129, ut_level2=200,
                  trm=177),
    'paper': dict(gpt=23649, gpt_level1=21825, gpt_level2=24171, ut=3044, ut_level1=6006,
                  ut_level2=21148, trm=11581),
    'eval': {10: dict(gpt=128, gpt_level1=108, gpt_level2=86, ut=29, ut_level1=46, ut_level2=116,
                      trm=124),
             50: dict(gpt=1023, gpt_level1=1170, gpt_level2=1055, ut=250, ut_level1=476,
                      ut_level2=1016, trm=1102)},
}


def versus_paper(result: dict) -> list[dict[str, str]]:
  """Rows of ms (ours, the paper's code's) and speedup, per rung, for a CPU result."""
  name, rows = result['setup']['name'], []
  for rung, row in result['rungs'].items():
    cells = {'rung': rung}
    if 'train' in row and name in ('small', 'paper'):
      ours, theirs = 1e3 * row['train']['step_seconds'], PAPER_CPU_MS[name][rung]
      cells.update({'passes fwd/bwd': f'{row["train"]["fwd_passes"]:g}/{row["train"]["bwd_passes"]:g}',
                    'ms/step': f'{ours:,.1f}', 'paper ms/step': f'{theirs:,}',
                    'speedup': f'{theirs / ours:.2f}x'})
    for L, by_fn in row['eval'].items():
      theirs = PAPER_CPU_MS['eval'].get(int(L), {}).get(rung)
      for fn in [fn for fn in ('generate', 'generate_cached') if fn in by_fn]:
        ours = 1e3 / by_fn[fn]['sequences_per_sec']
        cells[f'{fn} ms/seq L={L}'] = f'{ours:.3f}'
        if theirs:
          cells[f'{fn} speedup L={L}'] = f'{theirs / ours:,.0f}x'
      if theirs:
        cells[f'paper ms/seq L={L}'] = f'{theirs:,}'
      if 'generate_cached' in by_fn:
        cells[f'cached = full L={L}'] = str(by_fn['generate_cached']['matches_generate'])
    rows.append(cells)
  return rows


def default_path(result: dict) -> str:
  device = re.sub(r'[^a-z0-9]+', '_', result['device']['device_kind'].lower()).strip('_')
  return os.path.join('benchmarks', 'results', f'{device}_{result["setup"]["name"]}.json')


def write_results(result: dict, path: str | None = None) -> str:
  path = path or default_path(result)
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  with open(path, 'w') as f:
    json.dump(result, f, indent=1)
  return path
