r"""Reproduce a results table: run recipes over seeds, then tabulate and plot what they reached.

  python experiments/reproduce.py --experiment=quickstart              # the README's first table
  python experiments/reproduce.py --experiment=digits_ofa --seeds=0,1,2
  python experiments/reproduce.py --recipes=kd_r32x4_r8x4,dkd_r32x4_r8x4 --seeds=0,1,2 \
      --root=/data/runs/cifar --print_commands        # one command per run, for a cluster
  python experiments/reproduce.py --recipes=... --root=/data/runs/cifar --collect_only

Runs live in `--root/<recipe>/seed<S>/` (default experiments/runs/<experiment>); a finished run is
kept, an interrupted one resumes. The report goes to `--out` (default experiments/results/
<experiment>): results.md and results.csv (one row per entry: top-1 and top-5 mean ± std over n
seeds, the expected top-1 and its source), runs.csv (one row per run with its commit, devices and
wall time), curves.png (training loss and held-out top-1 per run) and comparison.png. For
`--recipes`, the expected number is read from each recipe's docstring ("Expected top-1: ...").
"""

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from kdjax import cli  # noqa: E402
from kdjax import harness  # noqa: E402
from kdjax import logs  # noqa: E402
from kdjax.errors import KdjaxError  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))

flags.DEFINE_string('experiment', None, f'A named table: {", ".join(harness.EXPERIMENTS)}.')
flags.DEFINE_list('recipes', [], 'Recipes to run instead, as name[:arg] (configs/name.py).')
flags.DEFINE_list('seeds', ['0', '1', '2'], 'Seeds of every recipe.')
flags.DEFINE_string('root', None, 'Folder of the runs (default experiments/runs/<experiment>).')
flags.DEFINE_string('out', None, 'Folder of the report (default experiments/results/<experiment>).')
flags.DEFINE_bool('print_commands', False, 'Print the command of every run and stop.')
flags.DEFINE_bool('collect_only', False, 'Do not train; report the runs found under --root.')
FLAGS = flags.FLAGS


def entries_and_name():
  if bool(FLAGS.experiment) == bool(FLAGS.recipes):
    cli.fail('give --experiment=NAME or --recipes=a,b (one of them)')
  if FLAGS.experiment:
    if FLAGS.experiment not in harness.EXPERIMENTS:
      cli.fail(f"unknown --experiment '{FLAGS.experiment}'; known: {', '.join(harness.EXPERIMENTS)}")
    return harness.EXPERIMENTS[FLAGS.experiment], FLAGS.experiment
  return harness.entries_from_recipes(FLAGS.recipes), 'recipes'


def main(argv):
  del argv
  logs.setup_for_summaries()
  try:
    entries, name = entries_and_name()
    seeds = [int(s) for s in FLAGS.seeds]
    root = FLAGS.root or os.path.join(HERE, 'runs', name)
    out = FLAGS.out or os.path.join(HERE, 'results', name)
    if FLAGS.print_commands:
      print('\n'.join(harness.commands(entries, seeds, root)))
      return
    if not FLAGS.collect_only:
      harness.run(entries, seeds, root)
    table = harness.report(entries, seeds, root, out)
  except (KdjaxError, ValueError) as e:
    cli.fail(str(e))
  print(table)
  print(f'\nReport: {out} (results.md, results.csv, runs.csv, curves.png, comparison.png)',
        file=sys.stderr)


if __name__ == '__main__':
  app.run(main)
