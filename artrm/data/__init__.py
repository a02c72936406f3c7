"""Vocabulary, tasks, training rows and fixed evaluation sets.

The TFDS builder lives in `artrm.data.tfds_builder` and is not re-exported, so
that training, which samples on device, does not pay for importing TFDS.
"""

from artrm.data.tasks import (
  TASKS,
  Task,
  eval_digits,
  eval_set,
  format_example,
  get_task,
  python_batch,
  python_rows,
  rows_from_digits,
  same_layout,
  sample_batch,
  sample_batch_of,
  variable_rows,
)
from artrm.data.vocab import (
  CHARS,
  IGNORE_INDEX,
  NEWLINE_ID,
  PAD_ID,
  VOCAB_SIZE,
  char_id,
  decode,
  encode,
)
