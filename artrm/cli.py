"""`artrm <command> [--flag=value ...]`: thin entry points over the library.

`artrm --help` lists the commands, `artrm <command> --help` shows one command's
flags; `artrm` alone runs the main job and `python -m artrm` is the same program.
Each command owns its flags (`artrm.commands`), so a flag given to a command that
does not take it is refused, naming the commands that do. Here: parsing, help and
one-line errors.
"""

import os
import re
import sys
import textwrap
from typing import Sequence

from absl import flags, logging

from artrm.commands import COMMANDS


def flag_values(command: str, argv: Sequence[str] = ()) -> flags.FlagValues:
  """The flags of one command, unparsed."""
  fv = flags.FlagValues()
  COMMANDS[command].define(fv, argv)
  return fv


def _takes(fv: flags.FlagValues, name: str) -> bool:
  """Whether `--name` (or `--noname`) is one of fv's flags."""
  return name in fv or (name.startswith('no') and name[2:] in fv and fv[name[2:]].boolean)


def _foreign_flag(command: str, fv: flags.FlagValues, argv: Sequence[str]) -> str | None:
  """The error for the first flag in argv that `command` does not take, if any."""
  for arg in argv:
    if arg == '--':
      break
    name = arg.lstrip('-').split('=', 1)[0].split('.', 1)[0]  # --config.x.y: config's
    if arg.startswith('-') and not _takes(fv, name):
      owners = [c for c in COMMANDS if c != command and _takes(flag_values(c), name)]
      where = (
        f'it belongs to: {", ".join(owners)}'
        if owners
        else f'`artrm {command} --help` lists its flags'
      )
      return f'--{name} is not a flag of `artrm {command}`; {where}.'
  return None


def command_help(command: str) -> str:
  """Its summary, its flags with their defaults, an example."""
  usage = 'artrm [main]' if command == 'main' else f'artrm {command}'
  summary = COMMANDS[command].summary
  lines = [
    f'usage: {usage} [--flag=value ...]',
    summary[0].upper() + summary[1:] + '.',
    '',
    'flags:',
  ]
  for name in (fv := flag_values(command)):
    flag = fv[name]
    required = ' (required)' if name in COMMANDS[command].required else ''
    default = f' (default: {flag.default_as_str})' if flag.default is not None else ''
    lines.append(f'  --{"[no]" * flag.boolean}{name}{required}')
    lines += textwrap.wrap(
      flag.help + default, 90, initial_indent=' ' * 6, subsequent_indent=' ' * 6
    )
  return '\n'.join(lines + ['', 'example:', f'  {COMMANDS[command].example}'])


def overview() -> str:
  """`artrm --help`: every command in a line."""
  width = max(map(len, COMMANDS))
  lines = [f'  {name:<{width}}  {c.summary}' for name, c in COMMANDS.items()]
  return '\n'.join(
    [
      'usage: artrm [<command>] [--flag=value ...]',
      '',
      'commands:',
      *lines,
      '',
      '`artrm` alone runs `main`; `artrm <command> --help` shows its flags.',
    ]
  )


def main(argv: Sequence[str] | None = None):
  """Runs `artrm <argv>`; argv defaults to the command line."""
  argv = list(sys.argv[1:] if argv is None else argv)
  if argv[:1] in (['--help'], ['-h'], ['help']):
    print(overview())
    return
  command = argv.pop(0) if argv and not argv[0].startswith('-') else 'main'
  if command not in COMMANDS:
    sys.exit(f'Unknown command {command!r}; choose one of {", ".join(COMMANDS)} (`artrm --help`).')
  if '--help' in argv or '-h' in argv:
    print(command_help(command))
    return
  fv = flag_values(command, argv)
  if error := _foreign_flag(command, fv, argv):
    sys.exit(error)
  try:
    extra = fv([f'artrm {command}', *argv])[1:]
  except (flags.Error, KeyError, AttributeError) as e:  # the last two: a --config.<field>
    if os.environ.get('ARTRM_TRACEBACK'):
      raise
    sys.exit(f'artrm {command}: {_parse_error(e, argv)}')
  if extra:
    sys.exit(f'artrm {command} takes no positional arguments; got {extra}.')
  missing = [f'--{n}' for n in COMMANDS[command].required if fv[n].value is None]
  if missing:
    sys.exit(f'artrm {command} needs {" and ".join(missing)}; see `artrm {command} --help`.')
  path = fv['config'].config_filename.split(':')[0] if 'config' in fv else ''
  if path and not os.path.isfile(path) and not os.environ.get('ARTRM_TRACEBACK'):
    sys.exit(
      f'artrm {command}: --config={path}: no such file (from {os.getcwd()}); '
      'give a config file such as artrm/configs/length_gen.py.'
    )
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
  try:
    COMMANDS[command].run(fv)
  except (ValueError, OSError, FloatingPointError, RuntimeError) as e:
    # The library's refusals say what to change: one line, not a traceback.
    if os.environ.get('ARTRM_TRACEBACK') or not _is_user_error(e):
      raise
    sys.exit(f'artrm {command}: {e}')


def _parse_error(e: Exception, argv: Sequence[str]) -> str:
  """One line for a flag that did not parse. config_flags puts a config file's whole
  traceback in its message, and names an overridden field the config lacks in a KeyError
  or AttributeError: "'<field>'" and maybe 'Did you mean "<near>" instead of ...'."""
  if isinstance(e, flags.Error):
    flag, _, trace = str(e).partition(': Error whilst parsing config file:')
    if not trace:
      return str(e)
    raised = trace.strip().splitlines()[-1]  # '<ExceptionType>: <message>'
    return f'{flag}: {raised.partition(": ")[2] or raised}'
  text = str(e.args[0] if e.args else e)
  field = re.search(r'\w+', text)[0]
  flag = next(
    (a.split('=')[0] for a in argv if field in a.split('=')[0].split('.')[1:]), '--config'
  )
  near = re.search(r'Did you mean "([^"]+)"', text)
  hint = f'did you mean {near[1]!r}?' if near else 'the config file lists its fields.'
  return f'{flag}: the config has no field {field!r}; {hint}'


def _is_user_error(e: Exception) -> bool:
  """ValueError / OSError / FloatingPointError (bad input, a missing run, a file that cannot
  be written, a diverged run) and the workdir's and checkpoints' own errors; a RuntimeError
  from anywhere else is a bug and keeps its traceback."""
  return not isinstance(e, RuntimeError) or type(e).__name__ in (
    'CheckpointError',
    'WorkdirBusyError',
  )
