"""What the command-line entry points share: one-line errors and config flag parsing."""

import os
import re
import sys

from absl import flags

from kdjax.errors import KdjaxError


def fail(message: str):
  """One clear line on stderr and a non-zero exit; never a traceback for user errors."""
  print(f'kdjax: error: {message}', file=sys.stderr)
  sys.exit(2)


def unknown_key_message(error, argv):
  """Names the unknown key, the override that used it, and ml_collections' suggestion."""
  text = str(error.args[0] if error.args else error)
  key = re.search(r'[A-Za-z_][A-Za-z0-9_]*', text)  # The message quotes (and escapes) the key.
  key = key.group(0) if key else text.splitlines()[0]
  hint = re.search(r'Did you mean "([^"]+)"', text)
  overrides = [a for a in argv if a.startswith('--config.')]
  culprit = next((a for a in overrides
                  if re.search(rf'(^|\.){re.escape(key)}(\.|=|$)', a[len('--config.'):])),
                 ' '.join(overrides) or '--config')
  fix = f'did you mean {hint.group(1)!r}?' if hint else 'check the keys in the recipe file'
  return f"unknown config key '{key}' in {culprit}; the recipe declares no such key ({fix})"


def resolve_recipe_paths(argv):
  """`argv` with `--config=NAME[:arg]` pointed at the installed recipe file when NAME is not a
  file here: `--config=configs/dkd_r34_r18.py` then works outside a checkout too, and so does
  the short `--config=dkd_r34_r18:smoke`."""
  from kdjax import recipes  # pylint: disable=g-import-not-at-top
  resolved = []
  for a in argv:
    if a.startswith('--config='):
      file, colon, arg = a[len('--config='):].partition(':')
      # Only a bare name or configs/NAME.py: a missing file elsewhere (a typo, an unmounted
      # share) must stay an error, never silently become the shipped recipe of that name.
      if file and not os.path.isfile(file) and os.path.dirname(file) in ('', 'configs'):
        try:
          a = f'--config={recipes.path(file)}{colon}{arg}'
        except KdjaxError:
          pass  # Reported below as a missing file.
    resolved.append(a)
  return resolved


def config_flags_parser(config_flag, *, require_workdir):
  """An absl `flags_parser` that loads the recipe at once and turns every mistake into one line.

  Args:
    config_flag: the holder returned by `config_flags.DEFINE_config_file('config', ...)`.
    require_workdir: whether --workdir must be given.
  """
  def parse(argv):
    try:
      rest = flags.FLAGS(resolve_recipe_paths(argv))
      if not flags.FLAGS['config'].present:
        fail('--config is required, e.g. --config=configs/kd_r32x4_r8x4.py')
      path = flags.FLAGS['config'].serialize().split('=', 1)[-1].split(':', 1)[0]
      if not path:
        fail('--config is required, e.g. --config=configs/kd_r32x4_r8x4.py')
      if not os.path.isfile(path):
        fail(f"config file '{path}' not found (--config); give a file or a recipe name from "
             'configs/ (kdjax.recipes.names()), e.g. --config=dkd_r34_r18:smoke')
      if require_workdir and not flags.FLAGS.workdir:
        fail('--workdir is required: the folder for checkpoints and metrics')
      config_flag.value  # noqa: B018  Loads the recipe now, so its errors surface here.
      return rest
    except KdjaxError as e:
      fail(str(e))
    except flags.Error as e:
      fail(str(e).splitlines()[0])
    except (AttributeError, KeyError) as e:
      fail(unknown_key_message(e, argv))
  return parse


def flags_parser(argv):
  """An absl `flags_parser` for tools without a recipe (export, evaluate): a missing or bad flag
  is one `kdjax: error:` line, not absl's usage text."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(str(e).splitlines()[0])
