"""Which input digit a copy run writes where it errs at twice its training length.

Prompts are permutations of the ten digits (copy at length 10), so every digit a run
writes names the one input index it was read from. The token that writes answer digit
k is answer digit k - 1 (abacus index k - 1; for k = 1 the separator, index 0) and the
right digit has index k; an error that writes input digit j read index j instead.
Trained on lengths 1..L (L = 5), an answer digit at index a and an input digit at
index b share a training sequence only while b - a lies in -(L - 2)..L - 1, whatever
the offset (with rotations, the separator meets distances 1..L only). If the holes in the per-position tables (one or two answer positions of a
recursive rung far below the others) are such pairs, training never having set the
reading index beside the one read, the errors read digits outside that range; if a
lookup slips to a neighbour, j - k = +-1.

  python experiments/length_errors.py workdirs/length_beyond_cpu_4k workdirs/length_beyond_rope_4k > results/studies/length_beyond_copy_errors.md

Reads every finished copy run with abacus positions (table or rotation) under the roots,
no training: greedy decoding with the KV cache, 256 permutations, each seed apart.
"""

import sys

import jax
import numpy as np

from artrm.data.vocab import encode
from artrm.evaluation import decoding
from artrm.tables import markdown_table
from artrm.tools import results
from artrm.training import eval_checkpoint, train_state

LENGTH, N_PROMPTS, TRAINED = 10, 256, 5


def unseen(j: int, k: int, rotation: bool = False) -> bool:
  """Whether training never set the token writing answer digit k (1-based) beside input
  digit j: for an answer digit, at this index distance; for the separator (k = 1, index
  0), never with the table (whose row 0 meets every digit) and, with rotations, past
  distance TRAINED."""
  if k == 1:
    return rotation and j > TRAINED
  return not -(TRAINED - 2) <= j - (k - 1) <= TRAINED - 1


def permutation_prompts(n: int, seed: int = 0) -> np.ndarray:
  """n copy prompts of length 10, each a permutation of the ten digits, as ids."""
  rng = np.random.default_rng(seed)
  texts = [''.join(map(str, rng.permutation(10))) + '|' for _ in range(n)]
  return encode(''.join(texts)).reshape(n, LENGTH + 1)


def errors(pred_NxA: np.ndarray, prompts_NxP: np.ndarray) -> list[tuple[int, int]]:
  """(j, k), 1-based, for every wrong answer digit at position k that is input digit j;
  a written token that is no input digit is left out."""
  digits_NxL = prompts_NxP[:, :LENGTH]
  out = []
  for n, k in zip(*np.nonzero(pred_NxA != digits_NxL)):
    j = np.nonzero(digits_NxL[n] == pred_NxA[n, k])[0]
    out += [(int(j[0]) + 1, int(k) + 1)] if len(j) else []
  return out


def summary(e: list[tuple[int, int]], rotation: bool = False) -> dict:
  """What the errors (j, k) read: the pairs unseen in training, the neighbours, the
  commonest move."""
  if not e:
    return {'pair unseen in training': '–', 'j - k = +-1': '–', 'commonest j - k (share)': '–'}
  moves, counts = np.unique([j - k for j, k in e], return_counts=True)
  return {
    'pair unseen in training': f'{np.mean([unseen(j, k, rotation) for j, k in e]):.2f}',
    'j - k = +-1': f'{np.mean([abs(j - k) == 1 for j, k in e]):.2f}',
    'commonest j - k (share)': f'{moves[counts.argmax()]:+d} ({counts.max() / len(e):.2f})',
  }


def run_row(workdir: str) -> list[dict]:
  config, model, state, step = eval_checkpoint.load_checkpoint(workdir)
  prompts_NxP = permutation_prompts(N_PROMPTS)
  rows = []
  for i, seed in enumerate(train_state.seeds_of(config)):
    params = jax.tree.map(lambda a, i=i: a[i], train_state.eval_params(state))
    pred_NxA = np.asarray(decoding.generate_cached(model, params, prompts_NxP, LENGTH))
    e = errors(pred_NxA, prompts_NxP)
    rows.append(
      {
        'model': config.model.name,
        'positions': config.model.pos_encoding,
        'seed': seed,
        'seq_acc': f'{(pred_NxA == prompts_NxP[:, :LENGTH]).all(1).mean():.3f}',
        'wrong digits': int((pred_NxA != prompts_NxP[:, :LENGTH]).sum()),
        'read an input digit': len(e),
        **summary(e, rotation=config.model.pos_encoding == 'abacus_rope'),
      }
    )
  return rows


def main(roots: list[str]):
  runs = {
    (root, r['run'], r['train_length'])
    for root in roots
    for r in results.gather(root)
    if r['task'] == 'copy' and r['pos_encoding'] in ('abacus', 'abacus_rope')
  }
  if any(L != TRAINED for _, _, L in runs):
    raise SystemExit(f'Runs trained to a length other than {TRAINED}: give roots of the CPU form.')
  rows = [row for root, run, _ in sorted(runs) for row in run_row(f'{root}/{run}')]
  print(f'# Where copy runs err at length {LENGTH}: the distance of the digit they read\n')
  print(f'    python experiments/length_errors.py {" ".join(roots)}\n')
  print(
    f'{N_PROMPTS} prompts, each a permutation of the ten digits; an error at answer '
    f'position k that writes input digit j read index j. Trained on lengths 1..{TRAINED}. '
    'Chance (the wrong digit drawn uniformly from the other nine): the pair unseen in '
    f'training for {chance(unseen):.2f} of the errors (table; rotations '
    f'{chance(lambda j, k: unseen(j, k, rotation=True)):.2f}), j - k = +-1 for '
    f'{chance(lambda j, k: abs(j - k) == 1):.2f}.\n'
  )
  print(markdown_table(rows))


def chance(hit) -> float:
  """The share of (j, k) pairs with hit(j, k), k uniform and j uniform over the others."""
  pairs = [(j, k) for k in range(1, LENGTH + 1) for j in range(1, LENGTH + 1) if j != k]
  return float(np.mean([hit(j, k) for j, k in pairs]))


if __name__ == '__main__':
  main(sys.argv[1:])
