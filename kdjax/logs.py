"""Logging set-up: kdjax's own lines at INFO, other libraries' only from WARNING.

kdjax's modules log through `logging.getLogger(__name__)`, so the choice is made by logger name:
the `kdjax` logger and its children show progress, eval lines and warnings; the libraries under
it (Orbax, TFDS and CLU log through the `absl` logger, JAX through its own) are quiet unless
`--verbosity` (absl's flag) asks for more.
"""

import logging
import sys

# absl's --verbosity values and the levels they mean.
_LEVELS = {-3: logging.CRITICAL, -2: logging.ERROR, -1: logging.WARNING, 0: logging.INFO,
           1: logging.DEBUG}
_FORMAT = '%(asctime)s %(levelname).1s %(message)s'


def levels(verbosity: int | None) -> tuple[int, int]:
  """(kdjax's level, the other libraries' level) for a --verbosity value.

  None (not given): kdjax at INFO, libraries at WARNING. A value sets both: 1 debug, 0 info,
  -1 warnings, -2 errors only.
  """
  if verbosity is None:
    return logging.INFO, logging.WARNING
  level = _LEVELS[max(-3, min(1, verbosity))]
  return level, level


def setup(verbosity: int | None = None, *, kdjax_level: int | None = None):
  """Sets the levels of `levels(verbosity)`; `kdjax_level` overrides kdjax's own.

  Under absl's `app.run` (the command-line tools) records go to absl's handler on the root
  logger. Elsewhere (a notebook, a plain script) nothing handles INFO records, so kdjax's logger
  gets a plain handler of its own that writes to stdout.
  """
  mine, others = levels(verbosity)
  if kdjax_level is not None:
    mine = kdjax_level
  kdjax_logger = logging.getLogger('kdjax')
  kdjax_logger.setLevel(mine)
  logging.getLogger('absl').setLevel(others)  # Orbax, TFDS and CLU log through absl.
  logging.root.setLevel(others)
  if not logging.root.handlers and not kdjax_logger.handlers:
    _add_handler(kdjax_logger)


def _add_handler(kdjax_logger):
  handler = logging.StreamHandler(sys.stdout)
  handler.setFormatter(logging.Formatter(_FORMAT, datefmt='%H:%M:%S'))
  kdjax_logger.addHandler(handler)
  kdjax_logger.propagate = False


def setup_for_summaries():
  """For tools that print their own line per run (the quickstart, the harness's CLI): kdjax's
  progress lines too stay quiet (WARNING) unless --verbosity asks for them."""
  verbosity = verbosity_flag()
  setup(verbosity, kdjax_level=logging.WARNING if verbosity is None else None)


def ensure():
  """Unless kdjax's logger was set up already (by a CLI, or by the user): kdjax's lines at INFO,
  with a stdout handler where nothing handles them (a notebook). Other loggers are left as the
  caller has them."""
  kdjax_logger = logging.getLogger('kdjax')
  if kdjax_logger.level != logging.NOTSET:
    return
  kdjax_logger.setLevel(logging.INFO)
  if not logging.root.handlers and not kdjax_logger.handlers:
    _add_handler(kdjax_logger)


def verbosity_flag() -> int | None:
  """absl's --verbosity when the user gave it, else None (absl sets it to 0 after parsing)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  flag = flags.FLAGS['verbosity']
  return flag.value if flag.present else None
