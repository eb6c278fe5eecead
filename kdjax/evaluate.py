r"""Evaluates a trained network on a TFDS split, exactly as training evaluates.

  python -m kdjax.evaluate --checkpoint=EXPORT_OR_WORKDIR [--dataset=NAME] [--split=SPLIT]
      [--data_dir=DIR] [--batch_size=256] [--teacher=EXPORT_OR_WORKDIR]

Prints top-1 and top-5 over every example of the split once (the eval pipeline of training:
`input_pipeline.eval_batches` with the checkpoint's own eval preprocessing, the last batch padded
and masked) and, with --teacher, the teacher's top-1 and the agreement: the fraction of examples
where student and teacher predict the same class. The teacher reads the same preprocessed
batches as the student, as during distillation. Defaults: the run's dataset and eval split when
its metadata has them, else --dataset is required and the split is 'test'.
"""

import logging
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from kdjax import cli  # noqa: E402
from kdjax import logs  # noqa: E402
from kdjax.errors import KdjaxError  # noqa: E402

flags.DEFINE_string('checkpoint', None, 'An export folder or a kdjax training workdir.')
flags.DEFINE_string('dataset', None, "TFDS name (default: the run's dataset).")
flags.DEFINE_string('split', None, "Split to evaluate (default: the run's eval split, else test).")
flags.DEFINE_string('data_dir', None, 'TFDS data dir (default: TFDS default).')
flags.DEFINE_integer('batch_size', 256, 'Examples per evaluation batch.')
flags.DEFINE_string('teacher', None, 'Optional: an export folder or workdir to compare with.')
FLAGS = flags.FLAGS
log = logging.getLogger('kdjax.evaluate')  # under 'kdjax': shown at INFO (kdjax/logs.py)


def eval_config(classifier, *, dataset, split, data_dir):
  """The config keys `input_pipeline.eval_batches` reads, from the checkpoint's metadata."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  pre = classifier.required_preprocessing()
  return ml_collections.ConfigDict(dict(
      dataset=dataset, data_dir=data_dir,
      input=dict(eval_split=split, image_size=pre.image_size,
                 eval_preprocess=pre.eval_preprocess, eval_resize_size=pre.eval_resize_size,
                 mean=pre.mean, std=pre.std, prefetch_batches=2,
                 holdout_fraction=classifier.metadata.get('holdout_fraction') or 0.1)))


def _check_data(classifier, builder, config, flag):
  """The dataset must give what the network takes: its classes, channels and image size."""
  num_classes = builder.info.features['label'].num_classes
  if num_classes != classifier.num_classes:
    raise KdjaxError(f'{flag} {classifier.model_name} has {classifier.num_classes} classes but '
                     f'{config.dataset} has {num_classes}; evaluate it on the dataset it was '
                     'trained on (--dataset)')
  height, width, channels = builder.info.features['image'].shape
  pre = classifier.preprocessing
  if channels and channels != pre.channels:
    raise KdjaxError(f'{config.dataset} images have {channels} channel(s) but {flag} '
                     f'{classifier.model_name} takes {pre.channels}; choose another --dataset')
  if pre.eval_preprocess == 'none' and height and (height, width) != (pre.image_size,) * 2:
    raise KdjaxError(f'{config.dataset} images are {height}x{width} but {flag} '
                     f'{classifier.model_name} was evaluated on {pre.image_size}x'
                     f"{pre.image_size} images without resizing (eval_preprocess 'none'); "
                     'choose another --dataset')


def _check_teacher(student, teacher):
  if teacher.image_shape != student.image_shape or teacher.num_classes != student.num_classes:
    raise KdjaxError(f'--teacher {teacher.model_name} takes {teacher.image_shape} images and has '
                     f'{teacher.num_classes} classes but --checkpoint {student.model_name} takes '
                     f'{student.image_shape} and has {student.num_classes}; pass a teacher of '
                     'the same task')
  if teacher.preprocessing is not None and teacher.preprocessing != student.preprocessing:
    log.warning('The teacher was evaluated with other preprocessing (%s) than the student '
                    '(%s); like during distillation it reads the student\'s batches here.',
                    teacher.preprocessing, student.preprocessing)


def evaluate(checkpoint, *, dataset=None, split=None, data_dir=None, batch_size=256,
             teacher=None):
  """{model, dataset, split, count, top1, top5[, teacher_model, teacher_top1, agreement]}
  (fractions) of the network in `checkpoint` (and `teacher`) on every example of the split."""
  import jax  # pylint: disable=g-import-not-at-top
  from kdjax import inference  # pylint: disable=g-import-not-at-top
  from kdjax import train  # pylint: disable=g-import-not-at-top
  from kdjax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  if batch_size < 1:
    raise KdjaxError(f'--batch_size must be positive, got {batch_size}')
  student = inference.load(checkpoint, batch_size=batch_size)
  dataset = dataset or student.metadata.get('dataset')
  if not dataset:
    raise KdjaxError(f"the metadata of '{checkpoint}' does not name its dataset (exported "
                     'before kdjax recorded it); pass --dataset')
  same = dataset == student.metadata.get('dataset')
  if same and data_dir is None:
    data_dir = student.metadata.get('data_dir')  # where the run read it
  if not split:
    split = (same and student.metadata.get('eval_split')) or ('' if dataset.startswith(
        'folder:') else 'test')
  config = eval_config(student, dataset=dataset, split=split, data_dir=data_dir)
  if not split:  # Another image folder: its held-out split, as a run on it would take.
    from kdjax.data import image_folder  # pylint: disable=g-import-not-at-top
    builder, _ = input_pipeline.open_builder(
        dataset, data_dir, 'dataset', config.input.holdout_fraction, '--data_dir')
    config.input.eval_split = split = image_folder.default_eval_split(builder)
  builder = input_pipeline.get_eval_builder(config, data_dir_flag='--data_dir')
  _check_data(student, builder, config, '--checkpoint')
  mesh = train.make_mesh(jax.local_devices()[:1])  # One device: any batch size works.
  pixels = (tuple(config.input.mean), tuple(config.input.std))
  batches = lambda: input_pipeline.eval_batches(config, builder, local_batch_size=batch_size)
  result = {'model': student.model_name, 'step': student.metadata.get('step'),
            'dataset': dataset, 'split': split,
            'count': builder.info.splits[split].num_examples}
  if teacher is None:
    step = jax.jit(train.make_eval_step(student.model, pixels=pixels))
    metrics = train.evaluate(step, student.variables, None, batches(), mesh)
    return {**result, 'top1': metrics['top1'], 'top5': metrics['top5']}
  teacher = inference.load(teacher, batch_size=batch_size)
  _check_teacher(student, teacher)
  step = jax.jit(train.make_eval_step(student.model, teacher.model, pixels=pixels))
  metrics = train.evaluate(step, student.variables, teacher.variables, batches(), mesh)
  teacher_step = jax.jit(train.make_eval_step(teacher.model, pixels=pixels))
  teacher_metrics = train.evaluate(teacher_step, teacher.variables, None, batches(), mesh)
  return {**result, 'top1': metrics['top1'], 'top5': metrics['top5'],
          'teacher_model': teacher.model_name, 'teacher_top1': teacher_metrics['top1'],
          'agreement': metrics['agreement']}


def report(result):
  """The lines `python -m kdjax.evaluate` prints: percentages with the counts behind them."""
  n = result['count']
  share = lambda key: f'{100 * result[key]:.2f}% ({round(result[key] * n)}/{n})'
  lines = [f"{result['model']} (step {result['step']}) on {result['dataset']} "
           f"{result['split']}: top-1 {share('top1')}, top-5 {share('top5')}"]
  if 'teacher_model' in result:
    lines.append(f"teacher {result['teacher_model']}: top-1 {share('teacher_top1')}")
    lines.append(f"agreement (student and teacher predict the same class): {share('agreement')}")
  return '\n'.join(lines)


def main(argv):
  del argv
  logs.setup(logs.verbosity_flag())
  if not FLAGS.checkpoint:
    cli.fail('--checkpoint is required: an export folder (python -m kdjax.export) or a kdjax '
             'training workdir')
  for flag in ('checkpoint', 'teacher'):  # Before JAX and TensorFlow load: a typo fails at once.
    path = FLAGS[flag].value
    if path and not os.path.exists(path):
      cli.fail(f"--{flag} '{path}' does not exist; pass an export folder (python -m "
               'kdjax.export) or a kdjax training workdir')
  try:
    result = evaluate(FLAGS.checkpoint, dataset=FLAGS.dataset, split=FLAGS.split,
                      data_dir=FLAGS.data_dir, batch_size=FLAGS.batch_size,
                      teacher=FLAGS.teacher)
  except KdjaxError as e:
    cli.fail(str(e))
  print(report(result), flush=True)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.flags_parser)
