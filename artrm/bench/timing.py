"""Speed of the seven rungs: compile time, step time, tokens/s, FLOPs, MFU, memory, decoding.

The timed step is the training loop's own (`train_step.make_step_fn`) for one seed
or for the setup's `num_seeds` vmapped as suites run them, on one device or data-parallel over
`devices`, and decoding splits its batch the same way: the numbers are those
`artrm train` runs at. On a CPU host, one device per core (`XLA_FLAGS=
"--xla_force_host_platform_device_count=2 --xla_cpu_multi_thread_eigen=false"`,
`devices=2`) gives each core its half of the batch, where one device's thread pool
gains less than 2x from the second core on a small model's small ops
(docs/performance.md, "One device per core"). Step
times are medians of steps synchronised one by one; `pipelined_step_seconds` is
the mean without syncs, as the loop dispatches. Compile time is measured on its own
(`compile_seconds`, `first_call_seconds` of decoding).
"""

import dataclasses
import functools
import os
import resource
import statistics
import time
from typing import Any, Sequence

import flax
import jax
import numpy as np

from artrm import parallel
from artrm.bench import formatting, profiling
from artrm.bench.flops import backprop_passes, peak_basis, peak_flops, step_flops
from artrm.bench.setups import Setup, run_config
from artrm.data import eval_set, get_task
from artrm.evaluation import decoding
from artrm.models import RUNGS, get_rung, init_params
from artrm.training import builders, train_state, train_step

PROFILED_CALLS = 3  # steps or decoding calls per profiler trace (--profile_dir)


def device_info() -> dict[str, Any]:
  d = jax.devices()[0]
  return dict(
    device_kind=d.device_kind,
    platform=d.platform,
    device_count=jax.device_count(),
    jax=jax.__version__,
    flax=flax.__version__,
    cpu_count=os.cpu_count(),
  )


def peak_memory() -> dict[str, Any]:
  """The process's peak so far: device bytes where the backend reports them, else max RSS."""
  stats = jax.devices()[0].memory_stats() or {}
  if 'peak_bytes_in_use' in stats:
    return dict(
      peak_memory_bytes=int(stats['peak_bytes_in_use']),
      peak_memory_source='device peak_bytes_in_use, process so far',
    )
  rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
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


def bench_train(
  config, model, steps: int, warmup: int, mesh: jax.sharding.Mesh, profile_dir: str | None = None
) -> tuple[dict, Any]:
  """Compile and time the jitted training step, data-parallel over `mesh`; returns
  (numbers, params after training). With `profile_dir`, `PROFILED_CALLS` more steps
  are traced there and summarised (`profiling.summarize`)."""
  optimizer = train_state.make_optimizer(config.optimizer, model.recipe)
  state = jax.device_put(
    train_state.init_seeds(model, optimizer, train_state.seeds_of(config)),
    parallel.replicated(mesh),
  )
  start = time.perf_counter()
  task = train_step.task_indices(config)
  step_fn = train_step.make_step_fn(config, model, optimizer, mesh).lower(state, task).compile()
  compile_seconds = time.perf_counter() - start
  memory = step_fn.memory_analysis()

  def step():
    nonlocal state
    state, metrics = step_fn(state, task)
    return metrics

  times, metrics = _timed(step, steps, warmup)
  metrics = jax.device_get(metrics)
  profiled = {}
  if profile_dir:  # the steps right after the timed ones: ACT's pass count drifts as it trains
    profile, traced = profiling.trace(step, PROFILED_CALLS, profile_dir, hlo_text=step_fn.as_text())
    profile['fwd_passes'] = float(np.mean([m['block_passes'] for m in jax.device_get(traced)]))
    profiled['profile'] = profile
  # As the training loop runs: no sync between steps, unless it must wait for each.
  wait = parallel.one_step_at_a_time(mesh)
  start = time.perf_counter()
  jax.block_until_ready([jax.block_until_ready(step()) if wait else step() for _ in range(steps)])
  pipelined = (time.perf_counter() - start) / steps
  out = _train_numbers(config, model.config, times, metrics)
  out.update(compile_seconds=compile_seconds, pipelined_step_seconds=pipelined, **profiled)
  if memory is not None:
    out['step_program_bytes'] = int(
      memory.argument_size_in_bytes
      + memory.output_size_in_bytes
      + memory.temp_size_in_bytes
      - memory.alias_size_in_bytes
    )
  return out, train_state.seed_slice(state.params, 0)


def _train_numbers(config, mc, times: list[float], metrics: list[dict]) -> dict:
  """Rates and FLOPs of the timed steps: tokens as trained (the task's rows) and as
  padded to block_size, per step over every seed."""
  seq_len = get_task(config.task).seq_len(config.train_length)
  fwd = float(np.mean([m['block_passes'] for m in metrics]))
  seconds = statistics.median(times)
  flops = step_flops(mc, config.batch_size, seq_len, fwd) * config.num_seeds
  tokens = config.batch_size * seq_len * config.num_seeds
  padded = config.batch_size * mc.block_size * config.num_seeds
  return dict(
    step_seconds=seconds,
    step_seconds_all=times,
    seq_len=seq_len,
    tokens_per_step=tokens,
    padded_tokens_per_step=padded,
    tokens_per_sec=tokens / seconds,
    padded_tokens_per_sec=padded / seconds,
    fwd_passes=fwd,
    bwd_passes=backprop_passes(mc, fwd),
    steps_taken=float(np.mean([m['steps_taken'] for m in metrics])),
    flops_per_step=flops,
    flops_per_sec=flops / seconds,
    loss=float(metrics[-1]['loss'][0]),
  )


def bench_decode(
  fn,
  model,
  params,
  prompts_NxP,
  answer_len: int,
  repeats: int,
  full_compute: bool,
  profile_dir: str | None = None,
) -> tuple[dict, np.ndarray]:
  """Greedy answers of one batch: first call (compile + run), the median of `repeats`, answers;
  with `profile_dir`, the summary of more calls traced there."""
  call = lambda: fn(
    model, params, prompts_NxP, answer_len, decoding='greedy', full_compute=full_compute
  )
  start = time.perf_counter()
  answers = jax.block_until_ready(call())
  first_seconds = time.perf_counter() - start
  times, _ = _timed(call, repeats, warmup=0)
  seconds = statistics.median(times)
  out = dict(
    first_call_seconds=first_seconds,
    seconds=seconds,
    seconds_all=times,
    sequences_per_sec=len(prompts_NxP) / seconds,
  )
  if profile_dir:
    out['profile'], _ = profiling.trace(call, PROFILED_CALLS, profile_dir)
  return out, np.asarray(answers)


def bench_eval(
  setup: Setup,
  model,
  params,
  repeats: int,
  full_compute: bool,
  mesh: jax.sharding.Mesh,
  profile_dir: str | None = None,
) -> dict:
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
    by_fn = dict(
      prompt_block_passes=int(forward(params, prompts_NxP)[1]['block_passes']),
      prompt_forward_seconds=statistics.median(
        _timed(functools.partial(forward, params, prompts_NxP), repeats, warmup=0)[0]
      ),
    )
    by_fn['generate'], reference = bench_decode(
      decoding.generate, model, params, prompts_NxP, answer_len, repeats, full_compute
    )
    by_fn['generate_cached'], answers = bench_decode(
      decoding.generate_cached,
      model,
      params,
      prompts_NxP,
      answer_len,
      repeats,
      full_compute,
      profile_dir and os.path.join(profile_dir, f'L{L}'),
    )
    by_fn['generate_cached']['matches_generate'] = bool(np.array_equal(answers, reference))
    out[L] = by_fn
  return out


def _checked_mesh(setup: Setup, rungs, steps: int, warmup: int, eval_repeats: int, devices: int):
  """The data mesh of the first `devices` local devices, once every input is checked."""
  if steps < 1 or warmup < 0 or eval_repeats < 1:
    raise ValueError(
      f'Need steps >= 1, warmup >= 0 and eval_repeats >= 1; got {steps}, {warmup}, {eval_repeats}.'
    )
  if not 1 <= devices <= jax.local_device_count():
    raise ValueError(
      f'devices={devices}, but this process has {jax.local_device_count()} '
      'local devices; on CPU make more with XLA_FLAGS='
      f'--xla_force_host_platform_device_count={devices}.'
    )
  mesh = parallel.data_mesh(jax.local_devices()[:devices])
  if setup.train:
    parallel.check_batch_divisible(setup.batch_size, mesh)
  if setup.eval_lengths:  # else decoding would run unsplit
    parallel.check_batch_divisible(setup.eval_batch, mesh, what='eval_batch')
  for rung in rungs:  # fail before any work
    get_rung(rung)
  task = get_task(setup.task)
  for L in setup.eval_lengths:
    decoding.check_fits(
      setup.block_size, task.prompt_len(L), task.answer_len(L), what=f'{setup.task} at length {L}'
    )
  return mesh


def _bench_rung(
  setup: Setup, rung: str, steps, warmup, eval_repeats, full_compute, peak, mesh, profile_dir
) -> dict:
  """One rung's row: its shape, training step (with MFU against `peak`), decoding, memory."""
  config = run_config(setup, rung)
  model = builders.run_model(config)
  mc = model.config
  H, L = model.rung.cycles(model.config)  # (1, 1) unless nested
  row = dict(
    title=get_rung(rung).title,
    n_layer=mc.n_layer,
    n_outer_loops=H,
    n_inner_loops=L,
    remat=mc.remat,
    dtype=mc.dtype,
    matmul_precision=mc.matmul_precision,
  )
  if setup.train:
    row['train'], params = bench_train(
      config, model, steps, warmup, mesh, profile_dir and os.path.join(profile_dir, rung, 'train')
    )
    if peak:
      row['train']['mfu'] = row['train']['flops_per_sec'] / (mesh.devices.size * peak)
  else:
    params = init_params(model, jax.random.key(config.seed))
  row['n_params'] = sum(x.size for x in jax.tree.leaves(params))
  row['eval'] = bench_eval(
    setup,
    model,
    jax.device_put(params, parallel.replicated(mesh)),
    eval_repeats,
    full_compute,
    mesh,
    profile_dir and os.path.join(profile_dir, rung, 'decode'),
  )
  row.update(peak_memory())
  return row


def run_benchmark(
  setup: Setup,
  rungs: Sequence[str] = tuple(RUNGS),
  steps: int = 20,
  warmup: int = 3,
  eval_repeats: int = 5,
  full_compute: bool = False,
  peak: float | None = None,
  devices: int = 1,
  profile_dir: str | None = None,
  verbose: bool = False,
) -> dict:
  """Measures each rung under `setup`; returns a JSON-ready dict (`formatting.write_results` saves it).

  `peak` (FLOP/s per device) overrides the table of known devices; without either, MFU
  is omitted. Training steps and decoding run data-parallel over the first `devices`
  local devices (MFU against all of their peaks). `profile_dir` adds a profiler trace
  per rung of training (`<profile_dir>/<rung>/train`) and cached decoding, summarised
  under `profile` in the JSON.
  """
  mesh = _checked_mesh(setup, rungs, steps, warmup, eval_repeats, devices)
  device = device_info()
  matmul_type = peak_basis(builders.model_config(run_config(setup, rungs[0])))  # same for all rungs
  basis = 'given' if peak else f'{matmul_type} dense'
  peak = peak or peak_flops(device['device_kind'], matmul_type)
  result = dict(
    device=device,
    setup=dataclasses.asdict(setup),
    settings=dict(
      steps=steps,
      warmup=warmup,
      eval_repeats=eval_repeats,
      full_compute=full_compute,
      peak_flops=peak,
      devices=devices,
      peak_flops_basis=basis if peak else None,
      eval_params='after the timed steps' if setup.train else 'initial',
    ),
    rungs={},
  )
  for rung in rungs:
    row = _bench_rung(
      setup, rung, steps, warmup, eval_repeats, full_compute, peak, mesh, profile_dir
    )
    result['rungs'][rung] = row
    if verbose:
      print(', '.join(f'{k} {v}' for k, v in formatting.summary_row(rung, row).items()), flush=True)
      for what, profile in formatting.profiles(row):
        print(f'  {what}: {profiling.describe(profile)}', flush=True)
  return result
