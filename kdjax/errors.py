"""The one error type users can cause, with a message that names the fix."""


class KdjaxError(Exception):
  """Bad input from the user: a config key, a name, a file, data.

  The CLI prints ``str(error)`` as one line and exits with a non-zero code, so the
  message must name the offending key or file and say what would fix it.
  """
