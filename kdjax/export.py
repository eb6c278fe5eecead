r"""Exports the student of a training workdir: its params and BatchNorm statistics, nothing else.

  python -m kdjax.export --workdir=DIR --output=PATH

No teacher, no connectors, no optimizer state. The export folder is itself a valid
`teacher.checkpoint` for a later distillation.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

from kdjax import checkpoint  # noqa: E402
from kdjax import cli  # noqa: E402
from kdjax import logs  # noqa: E402
from kdjax.errors import KdjaxError  # noqa: E402

flags.DEFINE_string('workdir', None, 'A kdjax training workdir.', required=True)
flags.DEFINE_string('output', None, 'Folder to write the exported student to.', required=True)
FLAGS = flags.FLAGS


def main(argv):
  del argv
  logs.setup(logs.verbosity_flag())
  try:
    meta = checkpoint.export_workdir(FLAGS.workdir, FLAGS.output)
  except KdjaxError as e:
    cli.fail(str(e))
  logging.info('Exported %s (step %d) to %s', meta['model'], meta['step'], FLAGS.output)


if __name__ == '__main__':
  app.run(main)
