"""The one error type users can cause, with a message that names the fix."""


class KdjaxError(Exception):
  """Bad input from the user: a config key, a name, a file, data.

  The CLI prints ``str(error)`` as one line and exits with a non-zero code, so the
  message must name the offending key or file and say what would fix it.
  """


class Preempted(KdjaxError):
  """The run stopped on SIGTERM or SIGINT after saving a checkpoint; the same command resumes.

  The CLI exits with `128 + signal number` (143 for SIGTERM, 130 for Ctrl-C).
  """

  def __init__(self, signum, step, workdir):
    import signal  # pylint: disable=g-import-not-at-top
    self.signum, self.step, self.workdir = int(signum), int(step), workdir
    super().__init__(f'stopped by {signal.Signals(signum).name} at step {step}; a checkpoint '
                     f"of that step is in '{workdir}': run the same command to resume")
