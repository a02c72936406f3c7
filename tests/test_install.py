"""Installs: a built wheel holds every package and runs `artrm train` from outside the
source tree; the library runs without the TFDS extra; the wheels script asks for exactly
what a jax + flax image lacks, and the GPU script keeps to its deadline. (Its SMOKE=1
form runs every step at a tiny scale in minutes on CPU: docs/performance.md, "On a GPU".)"""

import configparser
import fnmatch
import json
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import setuptools

from artrm import workdir

ROOT = os.path.join(os.path.dirname(__file__), '..')

# Makes tensorflow_datasets and array_record unimportable, then imports every entry point.
WITHOUT_TFDS = """
import importlib, sys
class Block:
  def find_spec(self, name, path=None, target=None):
    if name.split('.')[0] in ('tensorflow_datasets', 'array_record', 'tensorflow'):
      raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
for m in ('artrm.cli', 'artrm.training.train', 'artrm.training.eval_checkpoint', 'artrm.bench',
          'artrm.tools.launch', 'artrm.tools.report', 'artrm.tools.ladder', 'artrm.data'):
  importlib.import_module(m)
try:
  import artrm.data.tfds_builder
except ImportError as e:
  print(e)
"""


def test_library_imports_without_tfds():
  out = subprocess.run(
    [sys.executable, '-c', WITHOUT_TFDS],
    cwd=ROOT,
    capture_output=True,
    text=True,
    env={**os.environ, 'PYTHONPATH': ROOT},
  )
  assert out.returncode == 0, out.stderr
  assert 'pip install -e ".[tfds]"' in out.stdout, out.stdout


def test_gpu_wheels_lists_what_the_image_lacks():
  out = subprocess.run(
    ['bash', 'launch/gpu_wheels.sh', 'list'],
    cwd=ROOT,
    capture_output=True,
    text=True,
    env={**os.environ, 'PYTHON': sys.executable},
  )
  assert out.returncode == 0, out.stderr
  assert out.stdout.split() == ['ml-collections>=0.1.1', 'tqdm>=4.66']
  bad = subprocess.run(['bash', 'launch/gpu_wheels.sh'], cwd=ROOT, capture_output=True, text=True)
  assert bad.returncode == 2 and 'usage' in bad.stderr


def test_gpu_script_stops_at_its_deadline_and_says_so(tmp_path):
  """With 3 seconds, every step past the import check is skipped, not run over time,
  and the summary still records each."""
  out = subprocess.run(
    ['bash', 'launch/gpu_paper_table.sh'],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
    env={
      **os.environ,
      'PYTHON': sys.executable,
      'OUT': str(tmp_path),
      'DEADLINE_S': '3',
      'SMOKE': '1',
      'REPORT_S': '0',
    },
  )
  assert out.returncode == 0, out.stdout + out.stderr
  summary = json.loads((tmp_path / 'summary.json').read_text())
  steps = {s['step']: s['exit_code'] for s in summary['steps']}
  assert steps == {
    'smoke': 'skipped',
    'bench_bfloat16_gpt': 'skipped',
    'bench_float32_gpt': 'skipped',
    'grid': 'skipped',
  }, steps
  assert summary['finished_runs'] == [] and summary['wall_seconds'] < 60


def _setup_cfg() -> configparser.ConfigParser:
  cfg = configparser.ConfigParser()
  cfg.read(os.path.join(ROOT, 'setup.cfg'))
  return cfg


def _packaged() -> set[str]:
  """The packages setuptools finds with setup.cfg's [options.packages.find]."""
  find = _setup_cfg()['options.packages.find']
  split = lambda key: find.get(key, '').split() or ()
  return set(setuptools.find_packages(ROOT, include=split('include'), exclude=split('exclude')))


def _folders_with_python() -> set[str]:
  root = pathlib.Path(ROOT).resolve()
  return {
    '.'.join(p.parent.relative_to(root).parts)
    for p in (root / 'artrm').rglob('*.py')
    if '__pycache__' not in p.parts
  }


def test_every_folder_with_python_files_is_packaged():
  assert _folders_with_python() - _packaged() == set()
  assert {'artrm.training', 'artrm.evaluation', 'artrm.tools'} <= _packaged()


def test_every_data_file_in_the_package_ships():
  """A file the package reads at run time that setup.cfg's [options.package_data] does not
  name would be missing from a wheel install."""
  cfg = _setup_cfg()
  section = cfg['options.package_data'] if cfg.has_section('options.package_data') else {}
  patterns = {package: value.split() for package, value in section.items()}
  root = pathlib.Path(ROOT).resolve()
  unshipped = [
    str(p.relative_to(root))
    for p in (root / 'artrm').rglob('*')
    if p.is_file() and p.suffix not in ('.py', '.pyc') and '__pycache__' not in p.parts
    if not any(
      fnmatch.fnmatch(p.name, pattern)
      for pattern in patterns.get('.'.join(p.parent.relative_to(root).parts), ())
    )
  ]
  assert unshipped == []


# Flags for an `artrm train` of 2 steps of a 32-wide gpt at L = 3.
TINY_TRAIN_FLAGS = [
  '--config.model.n_embd=32',
  '--config.model.n_head=2',
  '--config.model.block_size=24',
  '--config.budget=2',
  '--config.train_length=3',
  '--config.batch_size=8',
  '--config.max_steps=2',
  '--config.eval.lengths=(3,)',
  '--config.eval.every_steps=2',
  '--config.eval.n_samples=8',
  '--config.eval.batch_size=8',
  '--config.checkpoint.every_steps=2',
  '--config.log.progress_bar=False',
]


def test_the_wheel_installs_and_trains(tmp_path):
  """The wheel, built from a copy of the sources, installed without dependencies into a
  fresh venv that sees this env's site-packages (but not its editable artrm), runs
  `artrm --help` and a tiny `artrm train` from outside the source tree."""
  src = tmp_path / 'src'
  shutil.copytree(
    os.path.join(ROOT, 'artrm'), src / 'artrm', ignore=shutil.ignore_patterns('__pycache__')
  )
  for name in ('setup.cfg', 'pyproject.toml', 'README.md'):
    shutil.copy(os.path.join(ROOT, name), src)
  run = lambda *cmd, **kw: subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)
  run(sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-w',
      str(tmp_path / 'dist'), str(src))  # fmt: skip
  [wheel] = (tmp_path / 'dist').glob('artrm-*.whl')
  with zipfile.ZipFile(wheel) as z:
    names = set(z.namelist())
  assert {os.path.dirname(n).replace('/', '.') for n in names if n.endswith('.py')} == _packaged()

  venv = tmp_path / 'venv'
  run(sys.executable, '-m', 'venv', '--without-pip', str(venv))
  python = str(venv / 'bin' / 'python')
  purelib = run(python, '-c', 'import sysconfig; print(sysconfig.get_path("purelib"))')
  # A path line, not site.addsitedir: the .pth files there (the editable artrm) stay unread.
  pathlib.Path(purelib.stdout.strip(), 'parent_env.pth').write_text(
    sysconfig.get_path('purelib') + '\n'
  )
  run(sys.executable, '-m', 'pip', '--python', python, 'install', '--no-deps', '--no-index',
      str(wheel))  # fmt: skip

  outside = tmp_path / 'elsewhere'
  outside.mkdir()
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  here = lambda *cmd: run(*cmd, cwd=outside, env=env).stdout
  config_file = here(python, '-c', 'import artrm.configs.length_gen as m; print(m.__file__)')
  assert config_file.startswith(purelib.stdout.strip()), config_file
  artrm = str(venv / 'bin' / 'artrm')
  assert here(artrm, '--help').startswith('usage: artrm')
  here(
    artrm,
    'train',
    f'--config={config_file.strip()}:model=gpt,task=copy,runlocal',
    f'--workdir={outside / "run"}',
    *TINY_TRAIN_FLAGS,
  )
  assert (outside / 'run' / workdir.FINAL_EVAL).exists()
