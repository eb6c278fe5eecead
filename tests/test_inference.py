"""Using a distilled student: kdjax.load, python -m kdjax.evaluate, the SavedModel export.

One short distillation on the embedded digits (the quickstart recipe, 30 steps) is shared by
every test; its final eval line in metrics.jsonl is the reference each path must reproduce.
"""

import json
import os
import shutil
import types

import numpy as np
import pytest

import conftest
import kdjax
from kdjax import checkpoint
from kdjax import recipes
from kdjax.errors import KdjaxError

# The shipped teacher's preprocessing (configs/digits_teacher.py), named by hand for an export
# without the `preprocess` entry.
DIGITS_PREPROCESS = dict(image_size=8, eval_preprocess='none', eval_resize_size=8, mean=(0.3,),
                         std=(0.4,))


@pytest.fixture(scope='module')
def run(tmp_path_factory, digits_data_dir):
  """A 30-step KD run of mlp32 from the shipped teacher, its export, and its last eval line."""
  from kdjax import quickstart  # pylint: disable=g-import-not-at-top
  from kdjax import train  # pylint: disable=g-import-not-at-top
  config = quickstart.load_recipe('smoke')
  with config.unlocked():
    config.data_dir = digits_data_dir
    config.num_train_steps = 30
  root = tmp_path_factory.mktemp('inference')
  workdir, export = str(root / 'run'), str(root / 'export')
  train.train_and_evaluate(config, workdir)
  checkpoint.export_workdir(workdir, export)
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    evals = [r for r in map(json.loads, f) if r.get('model') == 'student']
  return types.SimpleNamespace(workdir=workdir, export=export, eval=evals[-1],
                               data_dir=digits_data_dir, root=root)


@pytest.fixture(scope='module')
def test_split(run):
  """The raw uint8 held-out images [597, 8, 8, 1] and their labels, read by TFDS (by index)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  source = tfds.data_source('uci_digits', split='test', data_dir=run.data_dir, download=False)
  examples = source.__getitems__(range(len(source)))
  images = np.stack([ex['image'] for ex in examples])
  assert images.dtype == np.uint8
  return images, np.array([ex['label'] for ex in examples])


def _correct(fraction, count=597):
  return round(fraction * count)


def test_load_export_reproduces_the_runs_eval_top1(run, test_split):
  images, labels = test_split
  classifier = kdjax.load(run.export)
  assert int(np.sum(classifier.predict(images) == labels)) == _correct(run.eval['top1'])
  assert classifier.model_name == 'mlp32' and classifier.image_size == 8
  assert classifier.class_names == [str(i) for i in range(10)]
  assert classifier.metadata['preprocess'] == dict(
      image_size=8, eval_preprocess='none', eval_resize_size=256, mean=[0.3], std=[0.4],
      channels=1)
  assert (classifier.metadata['dataset'], classifier.metadata['eval_split']) == ('uci_digits',
                                                                                 'test')
  step, manager, meta = checkpoint.latest_metadata(run.workdir)
  manager.close()
  assert step == 30 and meta['class_names'] == classifier.class_names


def test_workdir_float_list_and_chunked_inputs_give_the_same_predictions(run, test_split):
  images, _ = test_split
  reference = kdjax.load(run.export)
  want = reference.predict(images)
  from_workdir = kdjax.load(run.workdir, batch_size=7)  # 597 = 85 chunks of 7 + a padded one
  np.testing.assert_array_equal(from_workdir.predict(images), want)
  as_float = images.astype(np.float32) / 255.0  # float pixels are in [0, 1]
  np.testing.assert_array_equal(reference.predict(as_float), want)
  np.testing.assert_allclose(reference.logits(as_float), reference.logits(images), atol=1e-5)
  np.testing.assert_array_equal(reference.predict(list(images[:40])), want[:40])
  np.testing.assert_array_equal(reference.predict(images[3]), want[3:4])  # one image [H, W, C]
  probabilities = reference.probabilities(images[:5])
  assert probabilities.shape == (5, 10) and probabilities.dtype == np.float32
  np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-5)
  assert reference.predict(images[:0]).shape == (0,)


@pytest.mark.parametrize('images, fragment', [
    (np.zeros((2, 8, 8, 1), np.int32), 'dtype int32'),
    (np.full((2, 8, 8, 1), 255.0, np.float32), 'must be in [0, 1]'),
    (np.zeros((2, 9, 9, 1), np.uint8), 'resize them to 8x8'),
    (np.zeros((2, 8, 8), np.uint8), 'images[..., None]'),
])
def test_bad_images_are_one_clear_error(run, images, fragment):
  with pytest.raises(KdjaxError) as error:
    kdjax.load(run.export).predict(images)
  assert fragment in str(error.value)


def test_bad_paths_are_one_clear_error(run, tmp_path):
  with pytest.raises(KdjaxError, match='does not exist'):
    kdjax.load(tmp_path / 'nope')
  with pytest.raises(KdjaxError, match='neither an export folder'):
    kdjax.load(tmp_path)


def test_the_shipped_teacher_predicts_and_an_old_export_needs_its_preprocessing_named(
    test_split, tmp_path):
  images, labels = test_split
  teacher = kdjax.load(recipes.DIGITS_TEACHER)
  assert teacher.class_names == [str(i) for i in range(10)]
  assert int(np.sum(teacher.predict(images) == labels)) == 585  # 98.0%, as the README says
  # An export written before kdjax recorded the preprocessing.
  old = tmp_path / 'old_export'
  shutil.copytree(recipes.DIGITS_TEACHER, old)
  with open(old / checkpoint.EXPORT_METADATA) as f:
    meta = json.load(f)
  for key in ('preprocess', 'class_names', 'dataset', 'eval_split'):
    meta.pop(key)
  with open(old / checkpoint.EXPORT_METADATA, 'w') as f:
    json.dump(meta, f)
  with pytest.raises(KdjaxError, match='re-export'):
    kdjax.load(str(old)).predict(images)
  teacher = kdjax.load(str(old), preprocess=DIGITS_PREPROCESS)
  assert teacher.class_names is None
  assert int(np.sum(teacher.predict(images) == labels)) == 585


def test_saved_model_logits_match_the_jax_student(run, test_split):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from kdjax import saved_model  # pylint: disable=g-import-not-at-top
  output = str(run.root / 'saved_model')
  meta = saved_model.export_workdir(run.workdir, output)
  with open(os.path.join(output, checkpoint.EXPORT_METADATA)) as f:
    assert json.load(f) == meta
  assert meta['format'] == 'saved_model' and meta['serving']['input_shape'] == [None, 8, 8, 1]
  student = kdjax.load(run.export)
  assert meta['sha256'] == student.metadata['sha256']
  serve = tf.saved_model.load(output).signatures['serving_default']
  for n in (37, 5):  # the batch dimension is symbolic
    batch = student.preprocess(test_split[0][:n])
    logits = serve(images=tf.constant(batch))['logits'].numpy()
    np.testing.assert_allclose(logits, student.network_logits(batch), atol=1e-4)
  with pytest.raises(KdjaxError, match='tf.saved_model.load'):
    kdjax.load(output)


def test_evaluate_cli_prints_the_runs_top1_and_agreement(run):
  proc = conftest.run_cli('kdjax.evaluate', f'--checkpoint={run.export}',
                          f'--data_dir={run.data_dir}', f'--teacher={recipes.DIGITS_TEACHER}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.strip().splitlines()
  assert len(lines) == 3, proc.stdout
  assert lines[0].startswith('mlp32 (step 30) on uci_digits test: top-1 ')
  assert f"({_correct(run.eval['top1'])}/597), top-5" in lines[0]
  assert f"({_correct(run.eval['top5'])}/597)" in lines[0].split('top-5')[1]
  assert lines[1].startswith('teacher digits_cnn: top-1 ') and '(585/597)' in lines[1]
  assert lines[2].startswith('agreement') and f"({_correct(run.eval['agreement'])}/597)" in lines[2]


def test_evaluate_cli_bad_path_is_one_line(tmp_path):
  proc = conftest.run_cli('kdjax.evaluate', f'--checkpoint={tmp_path / "nope"}')
  assert proc.returncode == 2
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert 'Traceback' not in proc.stderr, proc.stderr[-2000:]
  assert lines[-1].startswith('kdjax: error: ') and 'does not exist' in lines[-1], lines


def test_metadata_of_older_checkpoints_gives_none():
  old = {'student_model': 'mlp32', 'num_classes': 10, 'image_shape': [8, 8, 1], 'step': 1}
  meta = checkpoint.export_metadata({'params': {}}, old, '/tmp/old_run')
  assert meta['preprocess'] is None and meta['class_names'] is None
  assert meta['dataset'] is None and meta['dtype'] == 'float32'
  no_label = types.SimpleNamespace(info=types.SimpleNamespace(features={}))
  assert checkpoint.class_names(no_label) is None


def test_resizing_preprocessing_of_arrays_matches_the_jpeg_eval_pipeline():
  """Differently sized images through `resize_center_crop`: kdjax.load's path on decoded arrays
  gives exactly what the eval pipeline computes from the JPEG bytes."""
  import jax  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from kdjax import inference  # pylint: disable=g-import-not-at-top
  from kdjax import models  # pylint: disable=g-import-not-at-top
  from kdjax.data import preprocess  # pylint: disable=g-import-not-at-top
  meta = dict(model='mlp32', num_classes=10, image_shape=[8, 8, 3], preprocess=dict(
      image_size=8, eval_preprocess='resize_center_crop', eval_resize_size=10,
      mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.3], channels=3))
  variables = models.get_model('mlp32', num_classes=10).init(
      jax.random.key(0), np.zeros((1, 8, 8, 3), np.float32), train=False)
  classifier = inference.Classifier(variables, meta, batch_size=4)
  rng = np.random.default_rng(0)
  jpegs = [tf.io.encode_jpeg(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
           for h, w in ((12, 20), (31, 9), (10, 10))]
  pipeline = preprocess.eval_transform(classifier.preprocessing)  # what eval_batches maps
  want = np.stack([pipeline(jpeg).numpy() for jpeg in jpegs])
  decoded = [tf.io.decode_jpeg(jpeg).numpy() for jpeg in jpegs]
  np.testing.assert_array_equal(classifier.preprocess(decoded), want)
  np.testing.assert_array_equal(classifier.predict(decoded),
                                np.argmax(classifier.network_logits(want), -1))
