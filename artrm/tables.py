"""Plain-text tables for terminals and markdown files."""

from typing import Any, Sequence


def _cell(value: Any) -> str:
  if isinstance(value, float):
    return f'{value:.3f}'
  return str(value)


def markdown_table(rows: Sequence[dict], columns: Sequence[str] | None = None) -> str:
  """A GitHub-markdown table of `rows` (dicts), columns in the given order."""
  columns = list(columns or rows[0].keys())
  cells = [[_cell(r.get(c, '')) for c in columns] for r in rows]
  widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
  line = lambda values: '| ' + ' | '.join(v.ljust(w) for v, w in zip(values, widths)) + ' |'
  return '\n'.join([line(columns), line(['-' * w for w in widths])] + [line(r) for r in cells])
