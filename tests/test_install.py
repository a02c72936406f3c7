"""The offline GPU install and the prepared GPU run: the library runs without the TFDS
extra, the wheels script asks for exactly what a jax + flax image lacks, and the GPU
script keeps to its deadline. (Its SMOKE=1 form runs every step at a tiny scale in
minutes on CPU: docs/performance.md, "On a GPU".)"""

import json
import os
import subprocess
import sys

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
