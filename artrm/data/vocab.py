"""The paper's 14-character vocabulary; ids follow the character order of the reference."""

import numpy as np

CHARS = '0123456789|+=\n'
VOCAB_SIZE = len(CHARS)
NEWLINE_ID = CHARS.index('\n')  # ends every answer and pads every row
PAD_ID = NEWLINE_ID
IGNORE_INDEX = -100  # torch's cross-entropy ignore_index, kept for parity

_ID_OF = {c: i for i, c in enumerate(CHARS)}


def char_id(char: str) -> int:
  return _ID_OF[char]


def encode(text: str) -> np.ndarray:
  """Text -> int32 ids; names the offending characters instead of a bare KeyError."""
  unknown = sorted(set(text) - set(CHARS))
  if unknown:
    raise ValueError(f'Characters {unknown} are not in the vocabulary {CHARS!r}.')
  return np.fromiter((_ID_OF[c] for c in text), dtype=np.int32, count=len(text))


def decode(ids) -> str:
  return ''.join(CHARS[int(i)] for i in np.asarray(ids).reshape(-1))
