r"""Writes an ImageNet-shaped TFDS dataset for measuring the input pipeline without ImageNet.

  python benchmarks/imagenet_like.py --data_dir=/tmp/inet --num_train=1024 \
      [--file_format=array_record|tfrecord]

The dataset is `imagenet2012` with the real builder's features (JPEG `image`, 1000-class
`label`, `file_name`) and version, so the ImageNet recipes read it unchanged
(`--config.data_dir=/tmp/inet`). Its images are RGB JPEGs (quality 90) of 300-500 px per side,
ImageNet's typical size, a smooth colour gradient with pixel noise: they take about as long to
decode, crop and resize as photographs of that size. They are not photographs; use the figures
for the input rate only. Then, for example:

  python -m kdjax.bench --config=configs/kd_r34_r18.py --config.data_dir=/tmp/inet \
      --input_only --steps=40
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import numpy as np  # noqa: E402

flags.DEFINE_string('data_dir', None, 'Where to write the dataset.', required=True)
flags.DEFINE_integer('num_train', 1024, 'Training images.')
flags.DEFINE_integer('num_validation', 256, 'Validation images.')
flags.DEFINE_enum('file_format', 'array_record', ['array_record', 'tfrecord'], 'Record files.')
FLAGS = flags.FLAGS


def jpeg(rng, tf):
  """A 300-500 px RGB JPEG: a random colour gradient plus N(0, 20) pixel noise."""
  height, width = (int(v) for v in rng.integers(300, 501, 2))
  y = np.linspace(0.0, 1.0, height)[:, None, None]
  x = np.linspace(0.0, 1.0, width)[None, :, None]
  a, b, c = (rng.uniform(0, 255, 3) for _ in range(3))
  image = a + (b - a) * y + (c - a) * x + rng.normal(0, 20, (height, width, 3))
  return tf.io.encode_jpeg(np.clip(image, 0, 255).astype(np.uint8), quality=90).numpy()


def main(argv):
  del argv
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], 'GPU')
  reference = tfds.builder('imagenet2012', data_dir=FLAGS.data_dir)
  rng = np.random.default_rng(0)

  def split(name, n):
    return [(i, {'image': jpeg(rng, tf), 'label': int(rng.integers(0, 1000)),
                 'file_name': f'{name}_{i:08d}.JPEG'}) for i in range(n)]
  tfds.dataset_builders.store_as_tfds_dataset(
      name='imagenet2012', version=str(reference.info.version),
      features=reference.info.features, data_dir=FLAGS.data_dir,
      split_datasets={'train': split('train', FLAGS.num_train),
                      'validation': split('validation', FLAGS.num_validation)},
      file_format=FLAGS.file_format)
  print(f'imagenet2012 ({FLAGS.num_train} + {FLAGS.num_validation} JPEGs, {FLAGS.file_format}) '
        f'in {FLAGS.data_dir}')


if __name__ == '__main__':
  app.run(main)
