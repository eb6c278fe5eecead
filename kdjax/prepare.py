r"""Prepares a dataset ahead of a run, so the run finds it ready.

  python -m kdjax.prepare NAME [--data_dir=DIR] [--manual_dir=DIR]
  python -m kdjax.prepare folder:/path/to/images [--data_dir=DIR] [--holdout_fraction=0.1]

NAME is any TFDS dataset: `tfds.builder(NAME, data_dir=DIR).download_and_prepare()`, the same
preparation as `tfds build` without its apache_beam requirement, stored as ArrayRecord (read by
index: each process of a multi-host run reads only its share; --file_format=tfrecord for
TFRecord files, read sequentially). Datasets whose files must be
downloaded by hand (imagenet2012: ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar) are
checked for those files first, in DIR/downloads/manual or --manual_dir. `folder:/path`
converts an image folder (kdjax/data/image_folder.py) and prints its classes, counts, channels
and per-channel mean and std. Failures end with one `kdjax: error:` line and exit code 2.
"""

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from kdjax import cli  # noqa: E402
from kdjax import logs  # noqa: E402
from kdjax.errors import KdjaxError  # noqa: E402

flags.DEFINE_string('data_dir', None, 'TFDS data dir; default: TFDS_DATA_DIR or '
                    '~/tensorflow_datasets.')
flags.DEFINE_string('manual_dir', None, 'Files downloaded by hand; default DATA_DIR/downloads/'
                    'manual.')
flags.DEFINE_float('holdout_fraction', 0.1, 'folder: datasets without val/ or test/ folders: '
                   'the share of each class held out (as input.holdout_fraction).')
flags.DEFINE_enum('file_format', 'array_record', ['array_record', 'tfrecord'],
                  'How TFDS stores the records: array_record (random access, the fast path for '
                  'multi-host runs) or tfrecord (sequential reads).')
FLAGS = flags.FLAGS

# The files a manual-download dataset needs before preparing (the others: a non-empty folder).
MANUAL_FILES = {'imagenet2012': ('ILSVRC2012_img_train.tar', 'ILSVRC2012_img_val.tar')}


def check_manual_files(builder, name, manual_dir):
  """Raises a KdjaxError naming the folder and files when a hand-downloaded dataset lacks them
  (instead of TFDS's multi-line assertion, and before anything is written)."""
  if not builder.MANUAL_DOWNLOAD_INSTRUCTIONS:
    return
  needed = MANUAL_FILES.get(name.split('/')[0].split(':')[0], ())
  present = set(os.listdir(manual_dir)) if os.path.isdir(manual_dir) else set()
  missing = [f for f in needed if f not in present]
  if missing or not present:
    what = ' and '.join(missing) if missing else 'the files its instructions name'
    raise KdjaxError(f'{name} must be downloaded by hand: put {what} in {manual_dir} (or pass '
                     f'--manual_dir), then run this command again')


def prepare_tfds(name, data_dir, manual_dir, file_format='array_record'):
  """Prepares TFDS dataset `name` stored as `file_format`; returns its builder. A dataset
  already prepared in `data_dir` is kept as it was stored (`describe_tfds` says which format;
  another data_dir holds another copy)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from kdjax.data import input_pipeline  # pylint: disable=g-import-not-at-top  (registers uci_digits)
  builder = input_pipeline.tfds_builder(name, data_dir)
  if builder.is_prepared():
    return builder
  where = data_dir or tfds.core.constants.get_default_data_dir()
  manual_dir = manual_dir or os.path.join(where, 'downloads', 'manual')
  check_manual_files(builder, name, manual_dir)
  try:
    builder.download_and_prepare(
        file_format=file_format,
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  except Exception as e:  # pylint: disable=broad-except  TFDS and its downloads raise anything
    first = (str(e).strip().splitlines() or [''])[0][:300]
    raise KdjaxError(f'preparing {name} in {where} failed ({type(e).__name__}: {first}); '
                     'check the network or the files in the manual folder') from e
  return builder


def describe_tfds(builder) -> str:
  splits = ', '.join(f'{k} {v.num_examples}' for k, v in builder.info.splits.items())
  fmt = getattr(builder.info.file_format, "value", builder.info.file_format) or "tfrecord"
  return f"{builder.name} prepared in {builder.data_dir} as {fmt}: {splits}"


def describe_folder(summary) -> str:
  """The conversion's summary as a few lines: classes with counts per split, channels, size,
  mean and std."""
  classes = summary['classes']
  counts = summary['counts']
  lines = [f"{summary['folder']}: {len(classes)} classes, {summary['channels']} channel(s), "
           + (f"{summary['image_size'][0]}x{summary['image_size'][1]} images"
              if summary['image_size'] else 'images of varying sizes'),
           'splits: ' + ', '.join(f'{s} {sum(c)}' for s, c in counts.items())
           + (' (validation held out)' if summary['held_out'] else '')]
  for i, name in enumerate(classes):
    lines.append(f'  {name}: ' + ', '.join(f'{s} {c[i]}' for s, c in counts.items()))
  fmt = lambda v: '(' + ', '.join(f'{x:.4f}' for x in v) + ')'
  lines.append(f"mean {fmt(summary['mean'])} std {fmt(summary['std'])} (training images, "
               '[0, 1] pixels)')
  lines.append(f"stored in {summary['stored']}")
  return '\n'.join(lines)


def main(argv):
  logs.setup(logs.verbosity_flag())
  if len(argv) != 2:
    cli.fail('give one dataset: python -m kdjax.prepare NAME [--data_dir=DIR] or '
             'python -m kdjax.prepare folder:/path/to/images')
  name = argv[1]
  try:
    from kdjax.data import image_folder  # pylint: disable=g-import-not-at-top
    if image_folder.is_folder(name):
      _, summary = image_folder.prepare(name, FLAGS.data_dir, FLAGS.holdout_fraction)
      print(describe_folder(summary))
    else:
      print(describe_tfds(prepare_tfds(name, FLAGS.data_dir, FLAGS.manual_dir, FLAGS.file_format)))
  except KdjaxError as e:
    cli.fail(str(e))
  sys.stdout.flush()


if __name__ == '__main__':
  app.run(main)
