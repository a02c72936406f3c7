"""Evaluators (big_vision style): small classes that score params on fixed eval sets."""

import csv
import dataclasses
import json
import os

import jax
import numpy as np

from artrm import parallel
from artrm import workdir as workdir_lib
from artrm.data import eval_set, get_task
from artrm.evaluation import decoding
from artrm.evaluation.metrics import answer_metrics


@dataclasses.dataclass(frozen=True)
class LengthEvaluator:
  """Answer accuracy of one task at several lengths, on the fixed sets of `seed`.

  Prompts go through in chunks of `batch_size`, the last one padded to a full
  chunk so that each length compiles once, and every chunk padded to a multiple
  of the mesh's devices so that it splits over them. Sampled decoding draws with
  keys from (`sample_seed`, length, chunk), so its results also depend on
  `batch_size`; greedy results do not. Neither depends on the padding: threefry
  is partitionable, so a row's draws do not depend on the rows after it.
  """

  task: str
  lengths: tuple[int, ...]
  n_samples: int = 100
  seed: int = 0
  batch_size: int = 100
  decoding: str = 'greedy'
  inference_steps: int | None = None
  full_compute: bool = False
  sample_seed: int = 0
  # Decode with a KV cache (`decoding.generate_cached`): the same tokens as the
  # reference's full recompute, at one position of work per answer token.
  kv_cache: bool = False

  def __post_init__(self):
    object.__setattr__(self, 'lengths', tuple(int(L) for L in self.lengths))
    decoding.check_decoding(self.decoding)
    get_task(self.task)

  def check_fits(self, block_size: int):
    """Fails before any work when some length needs more positions than the model has."""
    task = get_task(self.task)
    for L in self.lengths:
      decoding.check_fits(
        block_size, task.prompt_len(L), task.answer_len(L), what=f'{self.task} at length {L}'
      )

  def predict(self, model, params, L: int, mesh=None) -> tuple[np.ndarray, np.ndarray]:
    """(predicted, true) answers [n_samples, A] at length L; with `mesh` (params replicated
    on it) each chunk is split over its devices (`parallel.shard_batch`)."""
    prompts_NxP, answers_NxA = eval_set(self.task, L, self.n_samples, self.seed)
    B = min(self.batch_size, self.n_samples)
    n_devices = 1 if mesh is None else mesh.devices.size
    padded_rows = -(-B // n_devices) * n_devices
    length_key = jax.random.fold_in(jax.random.key(self.sample_seed), L)
    generate = decoding.generate_cached if self.kv_cache else decoding.generate
    preds = []
    for chunk, start in enumerate(range(0, self.n_samples, B)):
      prompts_BxP = prompts_NxP[start : start + B]
      padded_BxP = np.pad(prompts_BxP, ((0, padded_rows - len(prompts_BxP)), (0, 0)), mode='edge')
      pred_BxA = generate(
        model,
        params,
        parallel.shard_batch(padded_BxP, mesh),
        answers_NxA.shape[1],
        decoding=self.decoding,
        key=jax.random.fold_in(length_key, chunk),
        inference_steps=self.inference_steps,
        full_compute=self.full_compute,
      )
      preds.append(parallel.gather(pred_BxA)[: len(prompts_BxP)])
    return np.concatenate(preds), answers_NxA

  def run(self, model, params, mesh=None) -> dict[int, dict]:
    """{length: metrics} (see `artrm.metrics.answer_metrics`)."""
    self.check_fits(model.config.block_size)
    return {L: answer_metrics(*self.predict(model, params, L, mesh)) for L in self.lengths}

  def settings(self) -> dict:
    """What an evaluation's numbers depend on, beyond the params."""
    return {k: v for k, v in dataclasses.asdict(self).items() if k != 'lengths'}

  def write(
    self, results: dict[int, dict], workdir: str, step: int, name: str = 'eval'
  ) -> tuple[str, str]:
    """Writes eval/{name}_step_{step:06d}.json and updates eval/metrics.csv.

    The CSV holds tidy rows (`metric_rows`) of every evaluation in the
    workdir; rows of the same (name, step, settings, eval_length, metric) are replaced,
    so a resumed run that repeats an evaluation does not duplicate it.
    Returns the two paths.
    """
    out_dir = workdir_lib.path(workdir, workdir_lib.EVAL_DIR)
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, f'{name}_step_{step:06d}.json')
    with workdir_lib.replacing(json_path) as f:
      json.dump(dict(name=name, step=step, settings=self.settings(), results=results), f, indent=1)

    csv_path = os.path.join(out_dir, workdir_lib.EVAL_CSV)
    new_rows = workdir_lib.metric_rows(results, name=name, step=step, **self.settings())
    columns = list(new_rows[0])
    as_text = lambda v: '' if v is None else str(v)  # as csv writes and reads back
    key = lambda row: tuple(as_text(row[c]) for c in columns if c != 'value')
    rows = {}
    if os.path.exists(csv_path):
      with open(csv_path, newline='') as f:
        rows = {key(r): r for r in csv.DictReader(f)}
    rows.update((key(r), r) for r in new_rows)
    with workdir_lib.replacing(csv_path, newline='') as f:  # a full disk keeps the old rows
      writer = csv.DictWriter(f, fieldnames=columns)
      writer.writeheader()
      writer.writerows(rows.values())
    return json_path, csv_path
