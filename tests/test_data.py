"""TFDS input pipeline: dataset info, deterministic resumable training order, eval padding, errors.

Everything runs on the embedded 8x8 digits (prepared once per session in a temporary data_dir,
never in ~/tensorflow_datasets) or on a small fake prepared copy of cifar100 (tests/fake_tfds.py).
Nothing touches the network.
"""

import itertools
import socket

import numpy as np
import pytest

import fake_tfds  # tests/ is on sys.path (pytest's default rootdir-based `prepend` import mode)
from kdjax import recipes
from kdjax.data import input_pipeline
from kdjax.data import uci_digits
from kdjax.errors import KdjaxError

BATCH = 256                 # 1200 // 256 = 4 steps per epoch
STEPS_PER_EPOCH = 4
EVAL_BATCH = 64             # 597 -> 10 batches, 43 padding rows


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
  """TFDS must not reach GCS, and no Python socket may connect anywhere."""
  from tensorflow_datasets.core.utils import gcs_utils
  monkeypatch.setattr(gcs_utils, '_is_gcs_disabled', True)

  def refuse(self, address, *args, **kwargs):
    if self.family == socket.AF_UNIX:
      return _connect(self, address, *args, **kwargs)
    raise AssertionError(f'test tried to open a network connection to {address!r}')
  _connect = socket.socket.connect
  monkeypatch.setattr(socket.socket, 'connect', refuse)


@pytest.fixture(scope='module', params=['array_record', 'tfrecord'])
def digits_dir(request, tmp_path_factory):
  """The embedded digits as kdjax prepares them (ArrayRecord: the random-access reader), and
  stored as TFRecord (the sequential reader): every test below runs on both."""
  data_dir = str(tmp_path_factory.mktemp(f'tfds_digits_{request.param}'))
  if request.param == 'tfrecord':
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    tfds.builder('uci_digits', data_dir=data_dir, file_format='tfrecord').download_and_prepare()
  return data_dir


def digits_config(data_dir, **input_overrides):
  config, _ = recipes.digits('')
  config.data_dir = data_dir
  config.batch_size = BATCH
  config.eval_batch_size = EVAL_BATCH
  config.input.update(input_overrides)
  return config


@pytest.fixture(scope='module')
def builder(digits_dir):
  return input_pipeline.get_builder(digits_config(digits_dir))


@pytest.fixture(scope='module')
def raw_digits():
  """(images uint8 [N, 8, 8, 1], labels [N]) indexed by `id`, straight from the package file."""
  return uci_digits.load_arrays()


def take(config, builder, start_step, n):
  it = input_pipeline.train_batches(config, builder, start_step=start_step,
                                    local_batch_size=config.batch_size,
                                    steps_per_epoch=STEPS_PER_EPOCH)
  return list(itertools.islice(it, n))


@pytest.fixture(scope='module')
def reference_run(digits_dir, builder):
  """Two epochs (8 steps) of an uninterrupted run from step 0, seed 0, no augmentation."""
  return take(digits_config(digits_dir), builder, 0, 2 * STEPS_PER_EPOCH)


# --- dataset info ---------------------------------------------------------------------------


def test_dataset_info_uci_digits(digits_dir, builder):
  config = digits_config(digits_dir)
  info = input_pipeline.dataset_info(config, builder)
  assert info == input_pipeline.DatasetInfo(num_classes=10, image_shape=(8, 8, 1),
                                            num_train=1200, num_eval=597)
  assert input_pipeline.dataset_info(config) == info  # builds its own builder when not given
  assert input_pipeline.steps_per_epoch(config, info) == STEPS_PER_EPOCH


def test_embedded_digits_prepared_in_the_given_data_dir(digits_dir, builder):
  assert builder.is_prepared()
  assert str(builder.data_dir).startswith(digits_dir)
  # 'auto' reads ArrayRecord by index and TFRecord sequentially.
  stored = builder.info.file_format.value
  assert input_pipeline.random_access(digits_config(digits_dir), builder) == (
      stored == 'array_record')


def test_steps_per_epoch_rejects_batch_larger_than_split(digits_dir, builder):
  config = digits_config(digits_dir)
  info = input_pipeline.dataset_info(config, builder)
  config.batch_size = 1201
  with pytest.raises(KdjaxError, match='batch_size 1201'):
    input_pipeline.steps_per_epoch(config, info)
  config.batch_size = 1200
  assert input_pipeline.steps_per_epoch(config, info) == 1


# --- training order: determinism and exact resume ---------------------------------------------


def test_train_batch_format(reference_run):
  batch = reference_run[0]
  assert set(batch) == {'image', 'label', 'id'}
  # uint8 to the devices (normalised there: kdjax/data/on_device.py).
  assert batch['image'].shape == (BATCH, 8, 8, 1) and batch['image'].dtype == np.uint8
  assert batch['label'].shape == (BATCH,) and batch['label'].dtype == np.int32
  assert batch['id'].shape == (BATCH,) and batch['id'].dtype == np.int32


def assert_batches_equal(got, want):
  assert len(got) == len(want)
  for g, w in zip(got, want):
    assert set(g) == set(w)
    for key in w:
      np.testing.assert_array_equal(g[key], w[key], err_msg=key)


def test_same_config_gives_same_batches(digits_dir, builder, reference_run):
  again = take(digits_config(digits_dir), builder, 0, 2 * STEPS_PER_EPOCH)
  assert_batches_equal(again, reference_run)


@pytest.mark.parametrize('start_step', [1, 3, 4, 5])
def test_resume_yields_the_uninterrupted_batches(digits_dir, builder, reference_run, start_step):
  # start 3 crosses the epoch boundary (steps 3 | 4, 5, 6); start 4 resumes exactly at one.
  n = 2 * STEPS_PER_EPOCH - start_step
  resumed = take(digits_config(digits_dir), builder, start_step, n)
  assert_batches_equal(resumed, reference_run[start_step:])


@pytest.mark.parametrize('augmentation', [
    dict(train_augment='crop', crop_padding=1),
    dict(train_augment='crop_flip', crop_padding=1, randaugment='rand-m9-mstd0.5-inc1',
         random_erasing=0.25),  # DeiT's RandAugment and erasing
])
def test_resume_with_augmentation_is_exact(digits_dir, builder, augmentation):
  # The augmentation seed depends on (seed, epoch, position), not on where the run started.
  config = digits_config(digits_dir, **augmentation)
  full = take(config, builder, 0, 7)
  resumed = take(config, builder, 3, 4)
  assert_batches_equal(resumed, full[3:7])


def test_each_epoch_visits_distinct_examples(reference_run):
  for epoch in range(2):
    batches = reference_run[epoch * STEPS_PER_EPOCH:(epoch + 1) * STEPS_PER_EPOCH]
    ids = np.concatenate([b['id'] for b in batches])
    assert len(ids) == STEPS_PER_EPOCH * BATCH
    assert len(np.unique(ids)) == len(ids), 'an example repeats within an epoch'
    assert ids.min() >= 0 and ids.max() < 1200


def test_epochs_have_different_orders(reference_run):
  epoch0 = np.concatenate([b['id'] for b in reference_run[:STEPS_PER_EPOCH]])
  epoch1 = np.concatenate([b['id'] for b in reference_run[STEPS_PER_EPOCH:]])
  assert not np.array_equal(epoch0, epoch1)
  # The dropped remainder differs too, or at least the first batches are different sets.
  assert set(reference_run[0]['id']) != set(reference_run[STEPS_PER_EPOCH]['id'])


def test_different_seeds_give_different_orders(digits_dir, builder, reference_run):
  config = digits_config(digits_dir)
  config.seed = 1
  other = take(config, builder, 0, 1)[0]
  assert not np.array_equal(other['id'], reference_run[0]['id'])
  assert set(other['id']) != set(reference_run[0]['id'])


def test_labels_and_images_match_the_embedded_data(digits_dir, reference_run, raw_digits):
  images, labels = raw_digits
  config = digits_config(digits_dir)
  for batch in reference_run[:2]:
    ids = batch['id']
    np.testing.assert_array_equal(batch['label'], labels[ids])
    np.testing.assert_array_equal(batch['image'], images[ids])


# --- augmentation -----------------------------------------------------------------------------


def test_crop_shifts_images_and_keeps_shape(digits_dir, builder, raw_digits):
  images, _ = raw_digits
  config = digits_config(digits_dir, train_augment='crop', crop_padding=1)
  batch = take(config, builder, 0, 1)[0]
  assert batch['image'].shape == (BATCH, 8, 8, 1) and batch['image'].dtype == np.uint8
  changed = np.any(batch['image'] != images[batch['id']], axis=(1, 2, 3))
  assert changed.mean() > 0.5, 'crop with padding 1 should move most images'
  assert not changed.all(), 'the unshifted crop (probability 1/9) should occur in 256 draws'
  # Each image is the zero-padded (pad 1) raw image, cut at an offset in {0, 1, 2}^2.
  padded = np.pad(images[batch['id']], ((0, 0), (1, 1), (1, 1), (0, 0)))
  for i in range(BATCH):
    assert any(np.array_equal(batch['image'][i], padded[i, dy:dy + 8, dx:dx + 8])
               for dy in range(3) for dx in range(3)), f'example {i} is not a 1-pixel shift'


def test_randaugment_and_erasing_change_images_from_the_same_crops(digits_dir, builder):
  """The new stages draw from their own seeds: the crop of each example stays the same, and
  erasing boxes (filled on the device, after normalisation) come with about its probability's
  share of the examples."""
  base = dict(train_augment='crop_flip', crop_padding=1)
  plain = take(digits_config(digits_dir, **base), builder, 0, 4)
  erased = take(digits_config(digits_dir, **base, random_erasing=0.5), builder, 0, 4)
  ra = take(digits_config(digits_dir, **base, randaugment='rand-m9-mstd0.5-inc1'), builder, 0, 1)
  assert 'erase' not in plain[0]
  boxes = np.concatenate([e['erase'] for e in erased])
  assert boxes.shape == (4 * BATCH, 4) and boxes.dtype == np.int32
  changed = boxes[:, 2] > 0
  assert abs(changed.mean() - 0.5) < 0.07, changed.mean()  # 1,024 examples: 4.5 sigma
  for e, p in zip(erased, plain):
    np.testing.assert_array_equal(e['id'], p['id'])
    np.testing.assert_array_equal(e['image'], p['image'])
  assert np.any(ra[0]['image'] != plain[0]['image'], axis=(1, 2, 3)).mean() > 0.5


def test_no_augmentation_keeps_the_pixels(digits_dir, builder, raw_digits):
  images, _ = raw_digits
  config = digits_config(digits_dir, train_augment='none')
  batch = take(config, builder, 0, 1)[0]
  np.testing.assert_array_equal(batch['image'], images[batch['id']])


def test_unknown_augmentation_is_a_kdjax_error(digits_dir, builder):
  config = digits_config(digits_dir, train_augment='mixup')
  with pytest.raises(KdjaxError, match='mixup'):
    take(config, builder, 0, 1)


# --- few labels -------------------------------------------------------------------------------


def test_num_labeled_hides_labels_of_ids_from_num_labeled_on(digits_dir, builder, raw_digits):
  _, labels = raw_digits
  config = digits_config(digits_dir, num_labeled=100)
  batches = take(config, builder, 0, STEPS_PER_EPOCH)
  ids = np.concatenate([b['id'] for b in batches])
  got = np.concatenate([b['label'] for b in batches])
  assert (ids < 100).sum() > 20 and (ids >= 100).sum() > 500
  np.testing.assert_array_equal(got, np.where(ids < 100, labels[ids], -1))
  assert np.all(got[ids >= 100] == -1)
  assert np.all(got[ids < 100] >= 0)


# --- evaluation -------------------------------------------------------------------------------


def _rows(images, labels):
  """Sortable (label, image bytes) rows, for multiset comparison."""
  return sorted((int(l), np.asarray(im, np.float32).tobytes()) for im, l in zip(images, labels))


def test_eval_batches_cover_every_example_once_with_padding(digits_dir, builder, raw_digits):
  images, labels = raw_digits
  config = digits_config(digits_dir)
  batches = list(input_pipeline.eval_batches(config, builder, local_batch_size=EVAL_BATCH))
  assert len(batches) == 10
  for b in batches:
    assert set(b) >= {'image', 'label', 'mask'}
    assert b['image'].shape == (EVAL_BATCH, 8, 8, 1) and b['image'].dtype == np.uint8
    assert b['label'].shape == (EVAL_BATCH,) and b['label'].dtype == np.int32
    assert b['mask'].shape == (EVAL_BATCH,) and b['mask'].dtype == np.float32
  mask = np.concatenate([b['mask'] for b in batches])
  assert set(np.unique(mask)) <= {0.0, 1.0}
  assert mask.sum() == 597 and (mask == 0).sum() == 43
  # The padding is at the end of the last batch only.
  np.testing.assert_array_equal(mask[:597], 1.0)
  np.testing.assert_array_equal(batches[-1]['mask'][597 - 9 * EVAL_BATCH:], 0.0)
  image = np.concatenate([b['image'] for b in batches])
  label = np.concatenate([b['label'] for b in batches])
  real = mask == 1
  want = _rows(images[1200:], labels[1200:])
  got = _rows(image[real], label[real])
  assert len(got) == 597
  assert got == want, 'the eval split is not covered exactly once'
  np.testing.assert_array_equal(image[~real], 0.0)


def test_eval_batch_dividing_the_split_has_no_padding(digits_dir, builder):
  config = digits_config(digits_dir)
  batches = list(input_pipeline.eval_batches(config, builder, local_batch_size=199))
  assert len(batches) == 3
  assert all(b['mask'].shape == (199,) and b['mask'].min() == 1.0 for b in batches)


def test_sliced_splits(digits_dir):
  """TFDS split slices work as train / eval splits (e.g. a held-out part of train)."""
  config = digits_config(digits_dir, train_split='train[:600]', eval_split='train[600:]')
  config.batch_size = 100
  sliced = input_pipeline.get_builder(config)
  info = input_pipeline.dataset_info(config, sliced)
  assert (info.num_train, info.num_eval) == (600, 600)
  steps = input_pipeline.steps_per_epoch(config, info)
  assert steps == 6
  it = input_pipeline.train_batches(config, sliced, start_step=0, local_batch_size=100,
                                    steps_per_epoch=steps)
  ids = np.concatenate([b['id'] for b in itertools.islice(it, steps)])
  assert len(np.unique(ids)) == 600 and ids.min() >= 0 and ids.max() < 1200
  batches = list(input_pipeline.eval_batches(config, sliced, local_batch_size=64))
  assert len(batches) == 10 and sum(b['mask'].sum() for b in batches) == 600


# --- missing or wrong data --------------------------------------------------------------------


def test_unprepared_dataset_says_how_to_build_it(tmp_path):
  config, _ = recipes.digits('')
  config.dataset = 'cifar100'
  config.data_dir = str(tmp_path)
  with pytest.raises(KdjaxError) as e:
    input_pipeline.get_builder(config)
  msg = str(e.value)
  assert 'python -m kdjax.prepare cifar100 --data_dir=' in msg and str(tmp_path) in msg
  assert list(tmp_path.glob('**/*.tfrecord*')) == []  # nothing was downloaded or prepared


def test_unknown_dataset_is_a_kdjax_error(tmp_path):
  config, _ = recipes.digits('')
  config.dataset = 'no_such_dataset_kdjax'
  config.data_dir = str(tmp_path)
  with pytest.raises(KdjaxError, match='no_such_dataset_kdjax'):
    input_pipeline.get_builder(config)


@pytest.mark.parametrize('key', ['train_split', 'eval_split'])
def test_unknown_split_is_a_kdjax_error(digits_dir, builder, key):
  config = digits_config(digits_dir, **{key: 'validation'})
  with pytest.raises(KdjaxError) as e:
    input_pipeline.get_builder(config)
  assert "'validation'" in str(e.value)
  assert 'train' in str(e.value) and 'test' in str(e.value)  # names the available splits


# --- a fake prepared cifar100 -----------------------------------------------------------------


@pytest.fixture(scope='module')
def cifar_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp('tfds_cifar100')
  fake_tfds.prepare('cifar100', d, splits={'train': 64, 'test': 20})
  return str(d)


def cifar_config(data_dir):
  config = recipes.cifar100_mdistiller('smoke', student='resnet8x4')
  config.data_dir = data_dir
  assert config.input.train_augment == 'crop_flip'
  return config


def test_fake_cifar100_train_batches(cifar_dir):
  config = cifar_config(cifar_dir)
  builder = input_pipeline.get_builder(config)
  info = input_pipeline.dataset_info(config, builder)
  assert info == input_pipeline.DatasetInfo(num_classes=100, image_shape=(32, 32, 3),
                                            num_train=64, num_eval=20)
  steps = input_pipeline.steps_per_epoch(config, info)
  assert steps == 64 // config.batch_size == 8
  it = input_pipeline.train_batches(config, builder, start_step=0,
                                    local_batch_size=config.batch_size, steps_per_epoch=steps)
  batches = list(itertools.islice(it, steps + 1))  # into the second epoch
  for b in batches:
    assert set(b) == {'image', 'label'}, "cifar100's string id must be ignored"
    assert b['image'].shape == (8, 32, 32, 3) and b['image'].dtype == np.uint8
    assert b['label'].shape == (8,) and b['label'].dtype == np.int32
    assert np.all((b['label'] >= 0) & (b['label'] < 100))
    assert np.isfinite(b['image']).all()
  # crop_flip resumes exactly too.
  resumed = list(itertools.islice(
      input_pipeline.train_batches(config, builder, start_step=7,
                                   local_batch_size=config.batch_size, steps_per_epoch=steps), 2))
  assert_batches_equal(resumed, batches[7:9])


def test_fake_cifar100_eval_batches(cifar_dir):
  config = cifar_config(cifar_dir)
  builder = input_pipeline.get_builder(config)
  batches = list(input_pipeline.eval_batches(config, builder, local_batch_size=8))
  assert len(batches) == 3
  assert all(b['image'].shape == (8, 32, 32, 3) for b in batches)
  assert all('id' not in b for b in batches)
  mask = np.concatenate([b['mask'] for b in batches])
  assert mask.sum() == 20 and (mask == 0).sum() == 4


def test_num_labeled_needs_an_integer_id(cifar_dir):
  config = cifar_config(cifar_dir)
  config.input.num_labeled = 10
  builder = input_pipeline.get_builder(config)
  with pytest.raises(KdjaxError, match="integer 'id'"):
    next(input_pipeline.train_batches(config, builder, start_step=0, local_batch_size=8,
                                      steps_per_epoch=8))
