"""Writes small prepared TFDS datasets with a registered dataset's name, features and version.

`tfds.builder(name, data_dir=...)` then reads them like the real thing, in this process or in a
subprocess (the CLI), which `tfds.testing.mock_data` cannot offer. Nothing touches the network.
"""

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds


def _random_example(features, rng, index):
  """A random value for every feature of a FeaturesDict (images, class labels, ids, text)."""
  example = {}
  for key, feature in features.items():
    if isinstance(feature, tfds.features.Image):
      shape = tuple(d or 32 for d in feature.shape)
      example[key] = rng.integers(0, 256, shape, dtype=np.uint8)
    elif isinstance(feature, tfds.features.ClassLabel):
      example[key] = int(rng.integers(0, feature.num_classes))
    elif isinstance(feature, tfds.features.Text):
      example[key] = f'{key}_{index}'
    elif isinstance(feature, tfds.features.Tensor):
      example[key] = np.asarray(index, dtype=feature.np_dtype)
    else:
      raise ValueError(f'fake_tfds has no fake data for feature {key}: {type(feature).__name__}')
  return example


def prepare(name, data_dir, *, splits, seed=0, file_format='array_record'):
  """Prepares `name` (a registered TFDS dataset) in `data_dir` with `splits={split: count}`,
  stored as `file_format` (ArrayRecord: read by index; tfrecord: read sequentially)."""
  builder = tfds.builder(name, data_dir=data_dir)
  features = builder.info.features
  rng = np.random.default_rng(seed)
  split_data = {split: [(i, _random_example(features, rng, i)) for i in range(n)]
                for split, n in splits.items()}
  tfds.dataset_builders.store_as_tfds_dataset(
      name=name, version=str(builder.info.version), features=features,
      split_datasets=split_data, data_dir=data_dir, file_format=file_format)
  return data_dir
