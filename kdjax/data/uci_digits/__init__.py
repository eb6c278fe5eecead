"""TFDS builder for the 8x8 handwritten digits embedded in the package.

The quickstart and the tests read real images through the same TFDS input path as ImageNet,
without any download: the builder reads `digits.csv.gz` from this folder (licence in LICENSE.md).

Splits: `train` = the first 1,200 rows, `test` = the remaining 597 (the split of
docs/design.md#measured-facts).
Features: `image` uint8 [8, 8, 1] (the 0..16 counts times 16, capped at 255), `label` (10 classes)
and `id` (the row index, int64), which lets a recipe hide labels (few-label distillation) and
lets stateful methods index examples.
"""

import gzip
import os

import numpy as np
import tensorflow_datasets as tfds

NUM_TRAIN = 1200
_CSV = os.path.join(os.path.dirname(__file__), 'digits.csv.gz')


def load_arrays():
  """Returns (images uint8 [N, 8, 8, 1], labels int64 [N]) straight from the embedded file."""
  with gzip.open(_CSV, 'rt') as f:
    rows = np.loadtxt(f, delimiter=',', dtype=np.int64)
  images = np.minimum(rows[:, :64] * 16, 255).astype(np.uint8).reshape(-1, 8, 8, 1)
  return images, rows[:, 64]


class UciDigits(tfds.core.GeneratorBasedBuilder):
  """UCI optical-recognition handwritten digits (8x8, 10 classes), shipped with kdjax."""

  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release: 1,200 train / 597 test.',
                   '1.1.0': 'Prepared as ArrayRecord (read by index) unless another '
                            'file_format is asked for; the same examples.'}

  def __init__(self, *, file_format=None, **kwargs):
    super().__init__(file_format=file_format, **kwargs)
    if file_format is None and not self.is_prepared():  # Prepared: as it was stored.
      self.info.set_file_format('array_record', override=True)

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(8, 8, 1)),
            'label': tfds.features.ClassLabel(num_classes=10),
            'id': tfds.features.Scalar(dtype=np.int64),
        }),
        supervised_keys=('image', 'label'),
        homepage='https://archive.ics.uci.edu/dataset/80',
        license='CC BY 4.0',
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download: the data ships with the package.
    return {'train': self._generate_examples(0, NUM_TRAIN),
            'test': self._generate_examples(NUM_TRAIN, None)}

  def _generate_examples(self, start, stop):
    images, labels = load_arrays()
    for i in range(start, len(labels) if stop is None else stop):
      yield i, {'image': images[i], 'label': int(labels[i]), 'id': i}
