"""Answer metrics of the paper (paper-spec "Evaluation"), in plain numpy."""

import numpy as np

QUARTERS = 4


def answer_metrics(pred_NxA: np.ndarray, answer_NxA: np.ndarray) -> dict:
  """Accuracies of predicted answers against the true ones.

  char_acc: correct characters / all; seq_acc: exact matches; first_char_acc
  and last_char_acc: the answer's first and last character; q1..q4: accuracy
  over four contiguous chunks of answer positions as `np.array_split` cuts
  them (the first A % 4 chunks are one longer: A = 11 gives 3, 3, 3, 2
  positions); a chunk with no position (A < 4) is left out rather than NaN;
  per_position: the accuracy at each answer position, a list of A floats.
  """
  pred_NxA, answer_NxA = np.asarray(pred_NxA), np.asarray(answer_NxA)
  if pred_NxA.shape != answer_NxA.shape or pred_NxA.ndim != 2 or not pred_NxA.size:
    raise ValueError(
      f'Predictions {pred_NxA.shape} and answers {answer_NxA.shape} must have '
      'the same non-empty [N, A] shape.'
    )
  correct_NxA = pred_NxA == answer_NxA
  A = correct_NxA.shape[1]
  metrics = dict(
    char_acc=correct_NxA.mean(),
    seq_acc=correct_NxA.all(axis=1).mean(),
    first_char_acc=correct_NxA[:, 0].mean(),
    last_char_acc=correct_NxA[:, -1].mean(),
  )
  for q, positions in enumerate(np.array_split(np.arange(A), QUARTERS), start=1):
    if positions.size:
      metrics[f'q{q}'] = correct_NxA[:, positions].mean()
  metrics = {k: float(v) for k, v in metrics.items()}
  metrics['per_position'] = correct_NxA.mean(axis=0).tolist()
  return metrics
