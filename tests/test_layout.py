"""The import graph: no cycles, the library imports no tooling, readers import no jax;
a run's file names are spelled in `artrm.workdir` alone."""

import ast
import importlib
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
LIBRARY = (
  'artrm.models',
  'artrm.data',
  'artrm.configs',
  'artrm.training',
  'artrm.evaluation',
  'artrm.one_off',
  'artrm.parallel',
  'artrm.workdir',
  'artrm.tables',
)
TOOLING = ('artrm.tools', 'artrm.bench', 'artrm.cli', 'artrm.commands')


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(ROOT).with_suffix('').parts
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def _within(name: str, prefixes) -> bool:
  return any(name == p or name.startswith(p + '.') for p in prefixes)


def import_graph() -> dict[str, set[str]]:
  """{module: the artrm modules it imports}, imports inside functions included.

  `from artrm.x import y` counts as importing the module artrm.x.y where there is
  one, else artrm.x.
  """
  paths = {_module_name(p): p for p in (ROOT / 'artrm').rglob('*.py')}
  graph = {}
  for name, path in paths.items():
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      if isinstance(node, ast.Import):
        targets |= {a.name for a in node.names}
      elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        targets |= {
          f'{node.module}.{a.name}' if f'{node.module}.{a.name}' in paths else node.module
          for a in node.names
        }
    graph[name] = {t for t in targets if t in paths and t != name}
  return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One import cycle as [a, b, ..., a], or None."""
  state = {}  # 1: on the current path, 2: done

  def visit(node, path):
    state[node] = 1
    for nxt in sorted(graph[node]):
      if state.get(nxt) == 1:
        return path[path.index(nxt) :] + [nxt]
      if nxt not in state and (cycle := visit(nxt, path + [nxt])):
        return cycle
    state[node] = 2
    return None

  for node in sorted(graph):
    if node not in state and (cycle := visit(node, [node])):
      return cycle
  return None


def test_graph_sees_the_packages():
  graph = import_graph()
  assert 'artrm.training.train' in graph['artrm.commands'] | graph['artrm.tools.ladder']
  assert 'artrm.models.config' in graph['artrm.models']
  assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']


def test_no_import_cycle():
  assert find_cycle(import_graph()) is None


def test_library_imports_no_tooling():
  bad = {
    f'{m} -> {t}'
    for m, targets in import_graph().items()
    if _within(m, LIBRARY)
    for t in targets
    if _within(t, TOOLING)
  }
  assert not bad, sorted(bad)


def test_results_and_report_import_no_jax():
  code = (
    'import sys, artrm.tools.results, artrm.tools.report, artrm.tools.suites; '
    "print(sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'flax', 'orbax')))"
  )
  out = subprocess.run(
    [sys.executable, '-c', code], cwd=ROOT, check=True, capture_output=True, text=True
  ).stdout
  assert out.strip() == '[]'


def test_workdir_file_names_are_spelled_once():
  """Every file or folder name of a run's workdir is a constant of artrm/workdir.py: no other
  module spells it. 'best', 'eval' and 'lock' are left out: they are also the checkpoint
  selector, the metrics kind and config section, and a common word."""
  from artrm import workdir

  names = {v for k, v in vars(workdir).items() if k.isupper() and isinstance(v, str)}
  names -= {'best', 'eval', 'lock'}
  spelled = [
    f'{path.relative_to(ROOT)}:{node.lineno} {node.value!r}'
    for path in (ROOT / 'artrm').rglob('*.py')
    if path.name != 'workdir.py'
    for node in ast.walk(ast.parse(path.read_text()))
    if isinstance(node, ast.Constant) and node.value in names
  ]
  assert names >= {'checkpoints', 'config.json', 'metrics.jsonl'} and not spelled, spelled


MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60


def test_files_and_functions_are_small():
  """No file under artrm/ over MAX_FILE_LINES lines and no function there (library and
  tooling) over MAX_FUNCTION_LINES: a module does one job, a function reads in one screen."""
  too_long = []
  for path in sorted((ROOT / 'artrm').rglob('*.py')):
    name = path.relative_to(ROOT).as_posix()
    text = path.read_text()
    if len(text.splitlines()) > MAX_FILE_LINES:
      too_long.append(f'{name}: {len(text.splitlines())} lines')
    for node in ast.walk(ast.parse(text, name)):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        lines = node.end_lineno - node.lineno + 1
        if lines > MAX_FUNCTION_LINES:
          too_long.append(f'{name}:{node.lineno} {node.name}: {lines} lines')
  assert not too_long, too_long


def test_the_docs_walk_through_cites_what_exists():
  """docs/training.md's "Reading a run end to end": at most seven files from `artrm train`
  to the loss, every `artrm/...py` it cites a file, every `module.name` defined there."""
  text = (ROOT / 'docs' / 'training.md').read_text()
  text = text.split('## Reading a run end to end\n', 1)[1].split('\n## ', 1)[0]
  steps = re.findall(r'^\d+\. `(artrm/[\w/]+\.py)`', text, re.M)
  assert 1 <= len(steps) <= 7, steps
  paths = re.findall(r'`(artrm/[\w/]+\.py)`', text)
  assert paths and all((ROOT / p).is_file() for p in paths), paths
  modules = {}  # short name -> dotted module names
  for path in (ROOT / 'artrm').rglob('*.py'):
    name = _module_name(path)
    modules.setdefault(name.rsplit('.', 1)[-1], set()).add(name)
  cited = re.findall(r'`([a-z_]+)\.([A-Za-z_]\w*)`', text)
  assert cited
  missing = [
    f'{m}.{n}'
    for m, n in cited
    if len(modules.get(m, ())) != 1 or not hasattr(importlib.import_module(*modules[m]), n)
  ]
  assert not missing, missing
