r"""Quickstart: a real distillation on the embedded digits, with and without the teacher.

  python -m kdjax.quickstart [--seeds=3] [--workdir=DIR]

The few-labels setting of docs/design.md#measured-facts (configs/digits_kd.py): the mlp32
student keeps 100 of the 1,200 training labels; the distilled student also reads the shipped
digits_cnn teacher's outputs on every training image. Each variant is trained with every seed
through the same trainer as ImageNet (TFDS input, jit step, Orbax checkpoints), and the table
reports held-out top-1 (597 images) as mean ± standard deviation over seeds.

The runs and the report go through the reproduction harness (`kdjax.harness.QUICKSTART`; the
same table as `python experiments/reproduce.py --experiment=quickstart`): finished runs in
--workdir are kept, and the workdir gets results.md, results.csv, runs.csv and the plots.
`--verbosity=0` shows the runs' own progress lines as well.
"""

import os
import tempfile

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from kdjax import cli  # noqa: E402
from kdjax import harness  # noqa: E402
from kdjax import logs  # noqa: E402
from kdjax import recipes  # noqa: E402
from kdjax.errors import KdjaxError  # noqa: E402

flags.DEFINE_integer('seeds', 3, 'Number of seeds per variant.')
flags.DEFINE_string('workdir', None, 'Where to keep the runs (default: a new temporary folder). '
                    'Re-running with the same folder reuses finished runs.')
FLAGS = flags.FLAGS

def load_recipe(arg=''):
  """The quickstart recipe, configs/digits_kd.py (also after a plain `pip install`)."""
  return recipes.get('digits_kd', arg)


def main(argv):
  del argv
  # The runs' own progress lines stay in their metrics.jsonl; --verbosity=0 shows them too.
  logs.setup_for_summaries()
  workdir = FLAGS.workdir or tempfile.mkdtemp(prefix='kdjax_quickstart_')
  seeds = range(FLAGS.seeds)
  try:
    harness.run(harness.QUICKSTART, seeds, workdir)
    table = harness.report(harness.QUICKSTART, seeds, workdir, workdir)
  except KdjaxError as e:
    cli.fail(str(e))
  seed_text = 'seed 0' if FLAGS.seeds == 1 else f'seeds 0-{FLAGS.seeds - 1}'
  print(f'\nHeld-out top-1 on the embedded digits (597 images), {seed_text}:\n')
  print(table)
  print(f'\nRuns (metrics.jsonl, provenance.json, TensorBoard) and the report (results.md, '
        f'results.csv, runs.csv, plots): {workdir}')


if __name__ == '__main__':
  app.run(main)
