"""Logging set-up shared by the command-line entry points."""

from absl import logging


class _QuietLibraries(logging.logging.Filter):
  """Keeps INFO lines of kdjax; from other libraries (Orbax is chatty) only warnings."""

  def filter(self, record):
    return record.levelno >= logging.logging.WARNING or '/kdjax/' in record.pathname


def setup():
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_QuietLibraries())
