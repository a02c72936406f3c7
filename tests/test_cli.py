"""The command line: help, each command's own flags, refusals that name the fix."""

import os
import re
import subprocess
import sys

import pytest

from artrm import cli
from artrm.tools import ladder
from artrm.training import preemption, train

CONFIG_FILE = os.path.join(os.path.dirname(__file__), '..', 'artrm', 'configs', 'length_gen.py')


def _refusal(argv) -> str:
  with pytest.raises(SystemExit) as e:
    cli.main(argv)
  return str(e.value.code)


def test_help_lists_every_command(capsys):
  cli.main(['--help'])
  out = capsys.readouterr().out
  listed = re.findall(r'^  (\w+)  +(.+)$', out, re.M)
  assert listed == [(name, c.summary) for name, c in cli.COMMANDS.items()]


@pytest.mark.parametrize('command', list(cli.COMMANDS))
def test_command_help_shows_its_flags_only(command, capsys):
  cli.main([command, '--help'])
  out = capsys.readouterr().out
  shown = re.findall(r'^  --(?:\[no\])?(\w+)', out, re.M)
  assert shown == list(cli.flag_values(command)) and shown
  assert f'example:\n  {cli.COMMANDS[command].example}' in out
  expected = dict(train=['config', 'workdir'], gather=['root', 'out'], report=['root', 'out'])
  assert shown == expected.get(command, shown)


def test_foreign_flag_names_its_commands():
  assert _refusal(['train', '--steps=5']) == (
    '--steps is not a flag of `artrm train`; it belongs to: bench.'
  )
  assert _refusal(['train', '--out=x']).endswith('it belongs to: gather, report, bench.')
  assert _refusal(['gather', '--config.max_steps=3']).endswith('it belongs to: train.')
  assert _refusal(['eval', '--nodry_run']).endswith('it belongs to: suite.')
  assert _refusal(['--nosuch']) == (
    '--nosuch is not a flag of `artrm main`; `artrm main --help` lists its flags.'
  )


def test_unknown_command_and_missing_flags_refused():
  assert _refusal(['trian']).startswith("Unknown command 'trian'; choose one of main, train,")
  assert _refusal(['eval']) == 'artrm eval needs --workdir; see `artrm eval --help`.'
  assert _refusal(['eval', '--workdir=x', 'y']).startswith('artrm eval takes no positional')
  assert 'greedy' in _refusal(['eval', '--workdir=x', '--decoding=beam'])


def test_train_gets_the_config_with_overrides(monkeypatch, tmp_path):
  calls = []
  monkeypatch.setattr(train, 'train_and_evaluate', lambda c, w: calls.append((c, w)))
  cli.main(
    [
      'train',
      f'--config={CONFIG_FILE}:model=trm,runlocal',
      '--config.model.n_embd=48',
      f'--workdir={tmp_path}',
      '--config.eval.lengths=(4,8)',
    ]
  )
  [(config, workdir)] = calls
  assert (config.model.name, config.model.n_embd, tuple(config.eval.lengths)) == ('trm', 48, (4, 8))
  assert workdir == str(tmp_path)


def test_no_command_is_the_main_job(monkeypatch):
  calls = []
  monkeypatch.setattr(ladder, 'run_ladder', lambda *a, **k: calls.append((a, k)))
  cli.main([])
  cli.main(['main', '--task=reverse', '--max_steps=3'])
  assert calls == [
    (('workdirs/ladder',), dict(task='copy', max_steps=None)),
    (('workdirs/ladder',), dict(task='reverse', max_steps=3)),
  ]


def test_python_dash_m_artrm():
  out = subprocess.run(
    [sys.executable, '-m', 'artrm', 'bench', '--help'], check=True, capture_output=True, text=True
  ).stdout
  assert out.startswith('usage: artrm bench') and '--profile_dir' in out
  refused = subprocess.run(
    [sys.executable, '-m', 'artrm', 'train', '--steps=5'], capture_output=True, text=True
  )
  assert refused.returncode == 1 and 'it belongs to: bench' in refused.stderr


def test_user_errors_are_one_line(tmp_path, monkeypatch):
  """A refused recipe (or any bad input the library names) ends the command with one line,
  before any work; ARTRM_TRACEBACK=1 keeps the traceback."""
  argv = [
    'train',
    f'--config={CONFIG_FILE}:model=gpt,runlocal',
    '--config.recipe.n_sup=2',
    f'--workdir={tmp_path / "run"}',
  ]
  message = _refusal(argv)
  assert message.startswith('artrm train: Recipe not valid for gpt') and '\n' not in message
  assert 'n_sup=1' in message and not os.path.exists(tmp_path / 'run')
  monkeypatch.setenv('ARTRM_TRACEBACK', '1')
  with pytest.raises(ValueError, match='deep supervision'):
    cli.main(argv)


def test_config_and_workdir_mistakes_are_one_line(tmp_path, monkeypatch):
  """Each says what to change; ARTRM_TRACEBACK=1 keeps the traceback."""
  a_file = tmp_path / 'a_file'
  a_file.write_text('')
  config, workdir = f'--config={CONFIG_FILE}:model=gpt,runlocal', f'--workdir={tmp_path / "run"}'
  for argv, says in [
    ([f'--config={tmp_path}/missing.py', workdir], f'--config={tmp_path}/missing.py: no such file'),
    (
      [config, '--config.modle.name=gpt', workdir],
      "--config.modle.name: the config has no field 'modle'; did you mean 'model'?",
    ),
    (
      [f'--config={CONFIG_FILE}:model=gpt,runlcal', workdir],
      "Unknown config arg 'runlcal'; did you mean 'runlocal'?",
    ),
    ([config, f'--workdir={a_file}/run'], f'{a_file} is a file, not a directory; choose a'),
  ]:
    message = _refusal(['train', *argv])
    assert message.startswith('artrm train: ') and says in message and '\n' not in message
  monkeypatch.setenv('ARTRM_TRACEBACK', '1')
  with pytest.raises(NotADirectoryError):
    cli.main(['train', config, f'--workdir={a_file}/run'])
  with pytest.raises(AttributeError):
    cli.main(['train', config, '--config.model.nmae=gpt', workdir])


def test_a_preempted_train_exits_with_the_requeue_code(monkeypatch, capsys):
  def preempted(config, workdir):
    raise preemption.Preempted(3, 'SIGTERM')

  monkeypatch.setattr(train, 'train_and_evaluate', preempted)
  with pytest.raises(SystemExit) as e:
    cli.main(['train', f'--config={CONFIG_FILE}:model=gpt,runlocal', '--workdir=unused'])
  assert e.value.code == preemption.EXIT_CODE == 75
  assert capsys.readouterr().err == (
    'artrm train: Stopped by SIGTERM after step 3, whose checkpoint is saved; re-run the same '
    'command to resume (exit code 75 asks a launcher to requeue the run).\n'
  )
