"""A miniature ILSVRC2012, prepared by the real TFDS `imagenet2012` builder.

`prepare(data_dir)` writes tiny manual-download archives in the real format into
`<data_dir>/downloads/manual/` and runs `tfds.builder('imagenet2012', data_dir=data_dir)
.download_and_prepare(...)` on them, so `data_dir` then holds an `imagenet2012/5.1.0` dataset
with the real features (`image` JPEG, `label` ClassLabel over the 1000 synsets of the builder's
`labels.txt`, `file_name`), written by the real generation code. Nothing touches the network.

The archives (what the builder in `tensorflow_datasets/datasets/imagenet2012/` reads):

* `ILSVRC2012_img_train.tar`: a flat tar of one uncompressed tar per synset, `n01751748.tar`
  ..., each a flat tar of `<synset>_<n>.JPEG` images. The builder labels an image with the name
  of the inner tar it comes from (`fname[:-4]`). Train synsets are the first `num_synsets`
  distinct synsets of the builder's `validation_labels.txt`, so they all occur in validation.
* `ILSVRC2012_img_val.tar`: a flat tar of `ILSVRC2012_val_00000001.JPEG` ... (added in a shuffled
  order, like the real one). The builder labels the k-th image *in sorted name order* with
  line k of its `validation_labels.txt`, whatever the number in the name is; using the first
  `num_val` names keeps each name's number and its label consistent, as in the real archive.
  So validation labels are fixed by that file: with 8 images they are 8 distinct synsets
  (n01751748, n09193705, n02105855, n04263257, n03125729, n01735189, n02346627, n02776631),
  of which the first 4 are the default train synsets.
* `ILSVRC2012_img_test.tar` (only when `num_test > 0`): a flat tar of
  `ILSVRC2012_test_00000001.JPEG` ...; the builder labels them -1. Without it the builder logs a
  warning and prepares no test split.

Images are baseline RGB JPEGs (noise over a colour gradient) of varied sizes, square and not,
24..80 pixels a side; the builder stores their bytes unchanged. File names the builder
special-cases (CMYK -> RGB, PNG -> JPEG re-encoding) are never used.

`examples(...)` returns what `prepare(...)` with the same arguments writes (names, labels,
sizes, JPEG bytes), for tests to compare against.
"""

import dataclasses
import io
import os
import tarfile
from typing import Optional

import numpy as np

NAME = 'imagenet2012'
TRAIN_TAR = 'ILSVRC2012_img_train.tar'
VAL_TAR = 'ILSVRC2012_img_val.tar'
TEST_TAR = 'ILSVRC2012_img_test.tar'
_MIN_SIDE, _MAX_SIDE = 24, 80


@dataclasses.dataclass(frozen=True)
class Example:
  file_name: str          # name inside the archive, e.g. 'n01751748_1234.JPEG'
  synset: Optional[str]   # None in the test split
  label: int              # index of `synset` in the builder's labels.txt; -1 in the test split
  height: int
  width: int
  jpeg: bytes


def _package_lines(name):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  path = tfds.core.tfds_path(f'datasets/imagenet2012/{name}')
  return path.read_text().strip().splitlines()


def _special_file_names():
  """Train file names the builder re-encodes (CMYK and PNG images of the real archive)."""
  from tensorflow_datasets.datasets.imagenet2012 import imagenet2012_dataset_builder as b  # pylint: disable=g-import-not-at-top
  return set(b.CMYK_IMAGES) | set(b.PNG_IMAGES)


def _jpeg(rng, height, width):
  """Baseline RGB JPEG bytes: noise over a random colour gradient (deterministic given rng)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  y = np.linspace(0.0, 1.0, height)[:, None, None]
  x = np.linspace(0.0, 1.0, width)[None, :, None]
  a, b, c = (rng.uniform(0, 255, 3) for _ in range(3))
  image = a + (b - a) * y + (c - a) * x + rng.normal(0, 20, (height, width, 3))
  image = np.clip(image, 0, 255).astype(np.uint8)
  return tf.io.encode_jpeg(image, format='rgb', quality=90).numpy()


def _sizes(rng, n):
  """n (height, width) pairs; the first three are portrait, landscape and square."""
  sizes = [tuple(int(v) for v in rng.integers(_MIN_SIDE, _MAX_SIDE + 1, 2)) for _ in range(n)]
  fixed = [(48, 32), (30, 40), (36, 36)]
  return fixed[:n] + sizes[len(fixed):]


def examples(*, num_synsets=4, train_per_synset=4, num_val=8, num_test=0, seed=0):
  """{split: [Example]} written by `prepare` with the same arguments (same order as written)."""
  val_synsets = _package_lines('validation_labels.txt')
  names = _package_lines('labels.txt')
  index = {synset: i for i, synset in enumerate(names)}
  if not 1 <= num_synsets <= len(names):
    raise ValueError(f'num_synsets must be in [1, {len(names)}], got {num_synsets}')
  if not 0 <= num_val <= len(val_synsets):
    raise ValueError(f'num_val must be in [0, {len(val_synsets)}], got {num_val}')
  synsets = list(dict.fromkeys(val_synsets))[:num_synsets]
  rng = np.random.default_rng(seed)
  special = _special_file_names()

  train = []
  for synset in synsets:
    numbers = rng.choice(np.arange(1, 30000), size=train_per_synset + 4, replace=False)
    file_names = [f'{synset}_{n}.JPEG' for n in numbers]
    file_names = [f for f in file_names if f not in special][:train_per_synset]
    for file_name, (h, w) in zip(file_names, _sizes(rng, train_per_synset)):
      train.append(Example(file_name, synset, index[synset], h, w, _jpeg(rng, h, w)))

  validation = []
  for k, (h, w) in zip(range(1, num_val + 1), _sizes(rng, num_val)):
    synset = val_synsets[k - 1]
    validation.append(Example(f'ILSVRC2012_val_{k:08d}.JPEG', synset, index[synset], h, w,
                              _jpeg(rng, h, w)))

  test = [Example(f'ILSVRC2012_test_{k:08d}.JPEG', None, -1, h, w, _jpeg(rng, h, w))
          for k, (h, w) in zip(range(1, num_test + 1), _sizes(rng, num_test))]

  splits = {'train': train, 'validation': validation}
  if num_test:
    splits['test'] = test
  return splits


def _tar_bytes(members):
  """An uncompressed tar holding `members` [(name, bytes)] at its top level, in that order."""
  buf = io.BytesIO()
  with tarfile.open(fileobj=buf, mode='w', format=tarfile.GNU_FORMAT) as tar:
    for name, data in members:
      info = tarfile.TarInfo(name)
      info.size = len(data)
      info.mtime = 1335830400  # 2012-05-01, fixed so the archives are reproducible
      info.mode = 0o644
      tar.addfile(info, io.BytesIO(data))
  return buf.getvalue()


def write_archives(manual_dir, *, num_synsets=4, train_per_synset=4, num_val=8, num_test=0,
                   seed=0):
  """Writes the manual-download tars into `manual_dir`; returns `examples(...)` of them."""
  splits = examples(num_synsets=num_synsets, train_per_synset=train_per_synset,
                    num_val=num_val, num_test=num_test, seed=seed)
  os.makedirs(manual_dir, exist_ok=True)
  per_synset = {}
  for ex in splits['train']:
    per_synset.setdefault(ex.synset, []).append((ex.file_name, ex.jpeg))
  archives = {
      TRAIN_TAR: _tar_bytes([(f'{s}.tar', _tar_bytes(m)) for s, m in per_synset.items()]),
  }
  if splits['validation']:
    # The real validation tar is not in name order; the builder sorts the names itself.
    order = np.random.default_rng(seed + 1).permutation(len(splits['validation']))
    archives[VAL_TAR] = _tar_bytes(
        [(splits['validation'][i].file_name, splits['validation'][i].jpeg) for i in order])
  if 'test' in splits:
    archives[TEST_TAR] = _tar_bytes([(ex.file_name, ex.jpeg) for ex in splits['test']])
  for name in (TRAIN_TAR, VAL_TAR, TEST_TAR):
    path = os.path.join(manual_dir, name)
    if name in archives:
      with open(path, 'wb') as f:
        f.write(archives[name])
    elif os.path.exists(path):
      os.remove(path)  # a split left over from an earlier call would be prepared too
  return splits


def prepare(data_dir, *, num_synsets=4, train_per_synset=4, num_val=8, num_test=0, seed=0,
            file_format='array_record'):
  """Writes the mini archives to `<data_dir>/downloads/manual/` and prepares them; returns data_dir.

  The result is `tfds.builder('imagenet2012', data_dir=data_dir)`, prepared, with splits
  train (`num_synsets * train_per_synset` examples), validation (`num_val`) and, when
  `num_test > 0`, test (`num_test`, labels -1), stored as `file_format` (as `python -m
  kdjax.prepare` does). An already prepared data_dir is left as it is.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  data_dir = os.fspath(data_dir)
  manual_dir = os.path.join(data_dir, 'downloads', 'manual')
  write_archives(manual_dir, num_synsets=num_synsets, train_per_synset=train_per_synset,
                 num_val=num_val, num_test=num_test, seed=seed)
  builder = tfds.builder(NAME, data_dir=data_dir, file_format=file_format)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return data_dir
