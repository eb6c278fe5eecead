r"""Exports the student of a training workdir: its params and BatchNorm statistics, nothing else.

  python -m kdjax.export --workdir=DIR --output=PATH [--format=orbax|saved_model]

No teacher, no connectors, no optimizer state. The default format (`orbax`) writes
PATH/variables (Orbax) and PATH/kdjax_export.json; that folder is itself a valid
`teacher.checkpoint` for a later distillation and what `kdjax.load` and `python -m
kdjax.evaluate` read. `saved_model` writes a TensorFlow SavedModel of the network through jax2tf
(float32 preprocessed images in, logits out; see kdjax/saved_model.py) with the same
kdjax_export.json next to it.
"""

import logging
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from kdjax import checkpoint  # noqa: E402
from kdjax import cli  # noqa: E402
from kdjax import logs  # noqa: E402
from kdjax.errors import KdjaxError  # noqa: E402

flags.DEFINE_string('workdir', None, 'A kdjax training workdir.')
flags.DEFINE_string('output', None, 'Folder to write the exported student to.')
flags.DEFINE_enum('format', 'orbax', ['orbax', 'saved_model'],
                  'orbax: the variables for kdjax (kdjax.load, teacher.checkpoint); '
                  'saved_model: a TensorFlow SavedModel (jax2tf).')
FLAGS = flags.FLAGS
log = logging.getLogger('kdjax.export')  # under 'kdjax': shown at INFO (kdjax/logs.py)


def main(argv):
  del argv
  logs.setup(logs.verbosity_flag())
  for name in ('workdir', 'output'):
    if not FLAGS[name].value:
      cli.fail(f'--{name} is required: python -m kdjax.export --workdir=DIR --output=PATH')
  try:
    if FLAGS.format == 'saved_model':
      from kdjax import saved_model  # pylint: disable=g-import-not-at-top
      meta = saved_model.export_workdir(FLAGS.workdir, FLAGS.output)
    else:
      meta = checkpoint.export_workdir(FLAGS.workdir, FLAGS.output)
  except KdjaxError as e:
    cli.fail(str(e))
  log.info('Exported %s (step %d) to %s (%s)', meta['model'], meta['step'], FLAGS.output,
               FLAGS.format)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.flags_parser)
