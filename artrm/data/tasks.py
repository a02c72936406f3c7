"""Copy, reverse and addition: layouts, loss masks, a readable reference, an on-device sampler.

A training row is the example's ids padded with newline to T + 1; inputs are
row[:-1] and targets row[1:]. Targets are kept from the one predicted at the
prompt's last character (`|` or `=`, predicting the first answer digit) up to
and including the first newline after the answer; all others are
IGNORE_INDEX. Every example of a task at length L has the same layout, so on
device the mask is a function of position alone, while the Python reference
finds it from the text; the tests make the two paths check each other. A
batch may mix lengths (`variable_rows`): a shorter example starts at
position 0 too, and its padding is out of the loss.

Operands are given as digit arrays [..., N, L] (N = number of operands, most
significant digit first), so the same digits can be fed to both paths.
"""

import dataclasses
import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from artrm.data.vocab import IGNORE_INDEX, NEWLINE_ID, char_id, encode


def _add_digitwise(digits_BxNxL: jax.Array) -> jax.Array:
  """a + b as L + 1 digits by ripple carry, so L = 50 needs no 50-digit integers."""
  a_LxB = digits_BxNxL[:, 0, ::-1].T  # least significant digit first
  b_LxB = digits_BxNxL[:, 1, ::-1].T

  def step(carry_B, ab):
    total_B = ab[0] + ab[1] + carry_B
    return total_B // 10, total_B % 10

  carry_B, sum_LxB = jax.lax.scan(step, jnp.zeros_like(a_LxB[0]), (a_LxB, b_LxB))
  return jnp.concatenate([carry_B[:, None], sum_LxB[::-1].T], axis=1)


@dataclasses.dataclass(frozen=True)
class Task:
  """One task: `operators` holds the character written after each operand."""

  name: str
  task_id: int  # stable seed component; never renumber
  operators: str  # '|' or '+='; its last char ends the prompt
  extra_answer_digits: int  # answer has L + this many digits
  answer_text: Callable[[tuple[str, ...]], str]  # reference, on strings
  answer_digits: Callable[[jax.Array], jax.Array]  # [B, N, L] -> [B, A]

  @property
  def n_operands(self) -> int:
    return len(self.operators)

  def prompt_len(self, L: int) -> int:
    return self.n_operands * (L + 1)

  def answer_len(self, L: int) -> int:
    return L + self.extra_answer_digits

  def example_len(self, L: int) -> int:
    """Characters of one example, without its closing newline."""
    return self.prompt_len(L) + self.answer_len(L)

  def seq_len(self, L: int) -> int:
    """Shortest model input length T for a training row.

    The last kept target (the closing newline, row[example_len]) is predicted
    at input position example_len - 1, so T = example_len: the input is the
    example itself and the target row is the example shifted plus one newline.
    """
    return self.example_len(L)


def _sum_text(ops: tuple[str, ...]) -> str:
  return str(int(ops[0]) + int(ops[1])).zfill(len(ops[0]) + 1)


TASKS: dict[str, Task] = {
  'copy': Task('copy', 0, '|', 0, lambda ops: ops[0], lambda d: d[:, 0]),
  'reverse': Task('reverse', 1, '|', 0, lambda ops: ops[0][::-1], lambda d: d[:, 0, ::-1]),
  'addition': Task('addition', 2, '+=', 1, _sum_text, _add_digitwise),
  # Every number least-significant digit first, operands and sum (as McLeish et al.
  # 2024 write addition): each answer digit follows the carry that makes it, and a
  # digit's place within its number is its significance (what abacus positions count).
  'addition_rev': Task(
    'addition_rev',
    3,
    '+=',
    1,
    lambda ops: _sum_text((ops[0][::-1], ops[1][::-1]))[::-1],
    lambda d: _add_digitwise(d[:, :, ::-1])[:, ::-1],
  ),
}


def get_task(task_name: str, L: Optional[int] = None) -> Task:
  """Looks a task up, validating L when given (errors name what is allowed)."""
  if task_name not in TASKS:
    raise ValueError(f'Unknown task {task_name!r}; known tasks: {sorted(TASKS)}.')
  if L is not None and (not isinstance(L, (int, np.integer)) or L < 1):
    raise ValueError(f'Length L must be an integer >= 1, got {L!r}.')
  return TASKS[task_name]


def _resolve_seq_len(task: Task, L: int, seq_len: Optional[int]) -> int:
  if seq_len is None:
    return task.seq_len(L)
  if seq_len < task.seq_len(L):
    raise ValueError(
      f'seq_len {seq_len} cannot hold a {task.name} row at L={L}; need at least {task.seq_len(L)}.'
    )
  return seq_len


def _check_digits(task: Task, digits: np.ndarray, batched: bool) -> int:
  """Returns L after checking the operand axis; digits are [(B,) N, L]."""
  shape = np.shape(digits)
  if len(shape) != 2 + batched or shape[-2] != task.n_operands:
    lead = '[B, ' if batched else '['
    raise ValueError(f'{task.name} digits must be {lead}{task.n_operands}, L], got {shape}.')
  get_task(task.name, int(shape[-1]))
  return int(shape[-1])


# ---------------------------------------------------------------- reference ---


def format_example(task_name: str, digits_NxL) -> str:
  """The example text (no newline), by plain string formatting."""
  task = get_task(task_name)
  _check_digits(task, digits_NxL, batched=False)
  digits_NxL = np.asarray(digits_NxL)
  if digits_NxL.min() < 0 or digits_NxL.max() > 9:
    raise ValueError(f'Operand digits must lie in 0..9, got {digits_NxL.tolist()}.')
  operands = tuple(''.join(str(int(d)) for d in row) for row in digits_NxL)
  prompt = ''.join(op + sym for op, sym in zip(operands, task.operators))
  return prompt + task.answer_text(operands)


def python_rows(
  task_name: str, digits_BxNxL, seq_len: Optional[int] = None
) -> dict[str, np.ndarray]:
  """Readable reference rows: format, pad, shift, then mask by searching the text."""
  task = get_task(task_name)
  L = _check_digits(task, digits_BxNxL, batched=True)
  T = _resolve_seq_len(task, L, seq_len)
  inputs, targets = [], []
  for digits_NxL in np.asarray(digits_BxNxL):
    text = format_example(task_name, digits_NxL)
    row = text + '\n' * (T + 1 - len(text))
    sep = row.index(task.operators[-1])  # predicts the first answer char
    newline = row.index('\n', sep)  # first newline after the answer
    ids_R = encode(row)
    targets_T = ids_R[1:].copy()
    targets_T[:sep] = IGNORE_INDEX
    targets_T[newline:] = IGNORE_INDEX  # keeps t = newline - 1, predicting it
    inputs.append(ids_R[:-1])
    targets.append(targets_T)
  return dict(inputs=np.stack(inputs), targets=np.stack(targets))


def python_batch(
  task_name: str, L: int, rng: np.random.Generator, batch_size: int, seq_len: Optional[int] = None
) -> dict[str, np.ndarray]:
  task = get_task(task_name, L)
  digits_BxNxL = rng.integers(0, 10, size=(batch_size, task.n_operands, L))
  return python_rows(task_name, digits_BxNxL, seq_len)


# ------------------------------------------------------------------ device ---


@functools.partial(jax.jit, static_argnames=('task_name', 'seq_len'))
def rows_from_digits(
  task_name: str, digits_BxNxL: jax.Array, seq_len: Optional[int] = None
) -> dict[str, jax.Array]:
  """Training rows from operand digits in jax.numpy; shapes are static, so it traces once."""
  task = get_task(task_name)
  L = _check_digits(task, digits_BxNxL, batched=True)
  T = _resolve_seq_len(task, L, seq_len)
  digits_BxNxL = jnp.asarray(digits_BxNxL, jnp.int32)
  B = digits_BxNxL.shape[0]
  operators_N = jnp.array([char_id(c) for c in task.operators], jnp.int32)
  operators_BxNx1 = jnp.broadcast_to(operators_N[None, :, None], (B, task.n_operands, 1))
  prompt_BxP = jnp.concatenate([digits_BxNxL, operators_BxNx1], axis=2).reshape(B, -1)
  padding_BxR = jnp.full((B, T + 1 - task.example_len(L)), NEWLINE_ID, jnp.int32)
  row_BxR = jnp.concatenate([prompt_BxP, task.answer_digits(digits_BxNxL), padding_BxR], axis=1)
  position_T = jnp.arange(T)
  keep_T = (position_T >= task.prompt_len(L) - 1) & (position_T <= task.example_len(L) - 1)
  return dict(inputs=row_BxR[:, :-1], targets=jnp.where(keep_T[None], row_BxR[:, 1:], IGNORE_INDEX))


def variable_rows(
  task_name: str,
  digits_BxNxL: jax.Array,
  lengths_B: jax.Array,
  min_length: int,
  seq_len: Optional[int] = None,
) -> dict[str, jax.Array]:
  """Rows of several lengths in one batch: row b is the row of the first lengths_B[b]
  digits of its operands (min_length <= lengths_B[b] <= L), laid out from position 0 and
  padded with newlines, which its targets ignore, to the rows of L."""
  task = get_task(task_name)
  L = _check_digits(task, digits_BxNxL, batched=True)
  if not 1 <= min_length <= L:
    raise ValueError(
      f'Shortest training length {min_length} must lie in 1..{L}: set train_length_min '
      'in that range (0: every row at train_length).'
    )
  T = _resolve_seq_len(task, L, seq_len)
  by_length = [
    rows_from_digits(task_name, digits_BxNxL[..., :n], T) for n in range(min_length, L + 1)
  ]
  rows_B = jnp.arange(digits_BxNxL.shape[0])
  return jax.tree.map(lambda *r: jnp.stack(r)[lengths_B - min_length, rows_B], *by_length)


@functools.partial(
  jax.jit, static_argnames=('task_name', 'L', 'batch_size', 'seq_len', 'min_length')
)
def sample_batch(
  key: jax.Array,
  task_name: str,
  L: int,
  batch_size: int,
  seq_len: Optional[int] = None,
  min_length: int = 0,
) -> dict[str, jax.Array]:
  """A fresh batch of uniform-digit rows, generated where the model runs; with
  `min_length` > 0, each row's length is drawn uniformly from min_length..L
  (`variable_rows`)."""
  task = get_task(task_name, L)
  digits_key, lengths_key = jax.random.split(key) if min_length else (key, None)
  digits_BxNxL = jax.random.randint(digits_key, (batch_size, task.n_operands, L), 0, 10, jnp.int32)
  if not min_length:
    return rows_from_digits(task_name, digits_BxNxL, seq_len)
  lengths_B = jax.random.randint(lengths_key, (batch_size,), min_length, L + 1)
  return variable_rows(task_name, digits_BxNxL, lengths_B, min_length, seq_len)


def same_layout(task_name: str) -> tuple[str, ...]:
  """The tasks whose rows have `task_name`'s layout (operators and answer length), in
  `TASKS` order: ('copy', 'reverse') for either, ('addition', 'addition_rev') for either."""
  t = get_task(task_name)
  layout = lambda task: (task.operators, task.extra_answer_digits)
  return tuple(name for name, task in TASKS.items() if layout(task) == layout(t))


def sample_batch_of(
  key: jax.Array,
  tasks: tuple[str, ...],
  task_index: jax.Array,
  L: int,
  batch_size: int,
  min_length: int = 0,
  seq_len: Optional[int] = None,
) -> dict[str, jax.Array]:
  """`sample_batch` of `tasks[task_index]`, the task picked at run time: a program that
  samples this way serves all of them. Tasks of one layout (`same_layout`) have rows of one
  length; others need `seq_len`, a length that fits them all."""
  branches = [
    functools.partial(
      sample_batch, task_name=t, L=L, batch_size=batch_size, seq_len=seq_len, min_length=min_length
    )
    for t in tasks
  ]
  return jax.lax.switch(task_index, branches, key)


# -------------------------------------------------------------- eval sets ---


def _eval_rng(task: Task, L: int, seed: int) -> np.random.Generator:
  """PCG64 from (seed, L, task_id): stable across runs, machines and processes."""
  if not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f'Evaluation seed must be an integer >= 0, got {seed!r}.')
  return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, L, task.task_id])))


def _read_only(array: np.ndarray) -> np.ndarray:
  array.flags.writeable = False  # cached results are shared between callers
  return array


@functools.lru_cache(maxsize=128)
def eval_digits(task_name: str, L: int, n: int, seed: int) -> np.ndarray:
  """Operand digits [n, N, L] of a fixed set; a smaller n gives a prefix of a larger one."""
  task = get_task(task_name, L)
  rng = _eval_rng(task, L, seed)
  return _read_only(rng.integers(0, 10, size=(n, task.n_operands, L)).astype(np.int32))


@functools.lru_cache(maxsize=128)
def eval_set(task_name: str, L: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(prompts [n, prompt_len], answers [n, answer_len]) int32, formatted by the reference."""
  task = get_task(task_name, L)
  texts = [
    format_example(task_name, digits_NxL) for digits_NxL in eval_digits(task_name, L, n, seed)
  ]
  ids_SxE = encode(''.join(texts)).reshape(n, task.example_len(L))
  P = task.prompt_len(L)
  return _read_only(ids_SxE[:, :P].copy()), _read_only(ids_SxE[:, P:].copy())
