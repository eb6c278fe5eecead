"""The miniature ILSVRC2012 (tests/mini_imagenet.py), prepared by the real TFDS imagenet2012 builder.

Runs in the normal suite: preparing takes a few seconds (most of it importing TensorFlow).
"""

import socket
import tarfile

import numpy as np
import pytest

import mini_imagenet

ARGS = dict(num_synsets=4, train_per_synset=4, num_val=8, seed=0)


def _no_network(*args, **kwargs):
  raise AssertionError(f'mini_imagenet touched the network: {args}')


def _prepare_offline(data_dir, **kwargs):
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(socket.socket, 'connect', _no_network)
    mp.setattr(socket, 'create_connection', _no_network)
    return mini_imagenet.prepare(data_dir, **kwargs)


@pytest.fixture(scope='module')
def imagenet_dir(tmp_path_factory):
  return _prepare_offline(str(tmp_path_factory.mktemp('tfds_mini_imagenet')), **ARGS)


def _read(builder, split, **kwargs):
  """{file name: example} of a split, read by index (the mini archive is stored as ArrayRecord)."""
  source = builder.as_data_source(split=split, **kwargs)
  examples = (source[i] for i in range(len(source)))
  return {ex['file_name'].decode() if isinstance(ex['file_name'], bytes) else ex['file_name']: ex
          for ex in examples}


def _check_split(builder, split, expected):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  assert builder.info.splits[split].num_examples == len(expected)
  want = {ex.file_name: ex for ex in expected}

  decoded = _read(builder, split)
  assert sorted(decoded) == sorted(want)
  for name, ex in decoded.items():
    assert ex['label'] == want[name].label, name
    assert ex['image'].shape == (want[name].height, want[name].width, 3), name
    assert ex['image'].dtype == np.uint8

  encoded = _read(builder, split, decoders={'image': tfds.decode.SkipDecoding()})
  assert sorted(encoded) == sorted(want)
  for name, ex in encoded.items():
    jpeg = ex['image']
    assert isinstance(jpeg, bytes) and jpeg[:3] == b'\xff\xd8\xff', name  # JPEG SOI marker
    assert jpeg == want[name].jpeg, name  # the builder stores the archive's bytes unchanged
    shape = tf.io.extract_jpeg_shape(jpeg).numpy().tolist()
    assert shape == [want[name].height, want[name].width, 3], name
    crop = tf.image.decode_and_crop_jpeg(jpeg, [2, 3, 16, 20], channels=3)
    assert crop.shape == (16, 20, 3), name


def test_prepared_by_real_builder(imagenet_dir):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  expected = mini_imagenet.examples(**ARGS)
  builder = tfds.builder('imagenet2012', data_dir=imagenet_dir)
  assert builder.is_prepared()
  assert str(builder.info.version) == '5.1.0'
  assert set(builder.info.splits) == {'train', 'validation'}  # no test tar, no test split
  label_feature = builder.info.features['label']
  assert label_feature.num_classes == 1000

  # The archives are in the real layout: a tar of per-synset tars, a flat validation tar.
  manual = f'{imagenet_dir}/downloads/manual'
  synsets = list(dict.fromkeys(ex.synset for ex in expected['train']))
  assert len(synsets) == ARGS['num_synsets']
  with tarfile.open(f'{manual}/{mini_imagenet.TRAIN_TAR}') as tar:
    assert tar.getnames() == [f'{s}.tar' for s in synsets]
  with tarfile.open(f'{manual}/{mini_imagenet.VAL_TAR}') as tar:
    assert sorted(tar.getnames()) == [f'ILSVRC2012_val_{k:08d}.JPEG' for k in range(1, 9)]

  train = expected['train']
  assert len(train) == ARGS['num_synsets'] * ARGS['train_per_synset']
  assert all(ex.file_name.startswith(f'{ex.synset}_') for ex in train)
  assert {ex.label for ex in train} == {label_feature.str2int(s) for s in synsets}
  assert all(label_feature.int2str(ex.label) == ex.synset for ex in train)
  _check_split(builder, 'train', train)

  # Validation labels come from the builder's validation_labels.txt, by sorted name order.
  validation = expected['validation']
  assert [ex.synset for ex in validation] == [
      'n01751748', 'n09193705', 'n02105855', 'n04263257',
      'n03125729', 'n01735189', 'n02346627', 'n02776631']
  assert [ex.synset for ex in validation[:4]] == synsets  # every train synset is in validation
  _check_split(builder, 'validation', validation)

  sizes = {(ex.height, ex.width) for ex in train + validation}
  assert any(h > w for h, w in sizes) and any(h < w for h, w in sizes)
  assert any(h == w for h, w in sizes)


def test_test_split_and_other_sizes(tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  args = dict(num_synsets=2, train_per_synset=3, num_val=3, num_test=2, seed=5)
  data_dir = _prepare_offline(str(tmp_path), **args)
  expected = mini_imagenet.examples(**args)
  builder = tfds.builder('imagenet2012', data_dir=data_dir)
  assert builder.is_prepared()
  assert {s: builder.info.splits[s].num_examples for s in builder.info.splits} == {
      'train': 6, 'validation': 3, 'test': 2}
  assert [ex.label for ex in expected['test']] == [-1, -1]
  for split in ('train', 'validation', 'test'):
    _check_split(builder, split, expected[split])
