r"""Quickstart: a real distillation on the embedded digits, with and without the teacher.

  python -m kdjax.quickstart [--seeds=3] [--workdir=DIR]

The few-labels setting of docs/design.md#measured-facts (configs/digits_kd.py): the mlp32
student keeps 100 of the 1,200 training labels; the distilled student also reads the shipped
digits_cnn teacher's outputs on every training image. Each variant is trained with every seed
through the same trainer as ImageNet (TFDS input, jit step, Orbax checkpoints), and the table
reports held-out top-1 (597 images) as mean ± standard deviation over seeds.
"""

import os
import tempfile

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import numpy as np  # noqa: E402

from kdjax import cli  # noqa: E402
from kdjax import logs  # noqa: E402
from kdjax import train  # noqa: E402
from kdjax.errors import KdjaxError  # noqa: E402

flags.DEFINE_integer('seeds', 3, 'Number of seeds per variant.')
flags.DEFINE_string('workdir', None, 'Where to keep the runs (default: a new temporary folder). '
                    'Re-running with the same folder reuses finished runs.')
FLAGS = flags.FLAGS

_RECIPE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       'configs', 'digits_kd.py')


def load_recipe(arg=''):
  """The quickstart recipe (configs/digits_kd.py), importable without the CLI."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  if not os.path.exists(_RECIPE):
    raise KdjaxError(f'{_RECIPE} not found; run the quickstart from a kdjax source checkout')
  spec = importlib.util.spec_from_file_location('digits_kd', _RECIPE)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def run(seeds, workdir):
  """Trains every (variant, seed); returns {variant: [top1 per seed]} and the teacher's top-1."""
  results = {'student without teacher': [], 'student distilled (KD, T=4)': []}
  teacher_top1 = None
  runs = [(v, s) for s in range(seeds) for v in results]
  for i, (variant, seed) in enumerate(runs, 1):
    config = load_recipe('baseline' if 'without' in variant else '')
    with config.unlocked():
      config.seed = seed
      config.log_every_steps = 500
    name = ('baseline' if 'without' in variant else 'kd') + f'_seed{seed}'
    print(f'[{i}/{len(runs)}] {variant}, seed {seed} ...', flush=True)
    result = train.train_and_evaluate(config, os.path.join(workdir, name))
    results[variant].append(result['top1'])
    if teacher_top1 is None and 'without' not in variant:
      teacher_top1 = _teacher_top1(os.path.join(workdir, name))
  return results, teacher_top1


def _teacher_top1(workdir):
  import json  # pylint: disable=g-import-not-at-top
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    for line in f:
      record = json.loads(line)
      if record.get('model') == 'teacher':
        return record['top1']
  return None


def table(results, teacher_top1, seeds):
  lines = [f'Held-out top-1 on the embedded digits (597 images), {seeds} seed(s), 100 labels:',
           '',
           '| model | top-1 (%) |',
           '|---|---|']
  if teacher_top1 is not None:
    lines.append(f'| teacher digits_cnn (shipped, all 1,200 labels) | {100 * teacher_top1:.1f} |')
  for variant, values in results.items():
    values = 100 * np.asarray(values)
    spread = f' ± {values.std(ddof=1):.1f}' if len(values) > 1 else ''
    lines.append(f'| {variant} (mlp32) | {values.mean():.1f}{spread} |')
  return '\n'.join(lines)


def main(argv):
  del argv
  logs.setup()
  workdir = FLAGS.workdir or tempfile.mkdtemp(prefix='kdjax_quickstart_')
  try:
    results, teacher_top1 = run(FLAGS.seeds, workdir)
  except KdjaxError as e:
    cli.fail(str(e))
  print()
  print(table(results, teacher_top1, FLAGS.seeds))
  print(f'\nRuns, metrics.jsonl and TensorBoard logs: {workdir}')


if __name__ == '__main__':
  app.run(main)
