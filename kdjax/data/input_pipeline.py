"""TFDS input pipelines: per-process reads, deterministic resumable training order, exact eval.

Two readers serve the same batches' contract (`input.reader`):

- random access (datasets prepared as ArrayRecord; `auto` picks it for them): epoch `e` visits
  the split in the order `epoch_order(seed, e, N)`, a pure function of (seed, epoch). Global
  batch `b` is positions [b G, (b + 1) G) of that order; process `p` of `P` reads only rows
  [p L, (p + 1) L) of it (G = P L), i.e. 1/P of the records, decodes and augments them in
  parallel threads. Resuming at any step starts reading at that step's records: nothing already
  consumed is read again, so resuming costs the same at every step.
- sequential (TFRecord): epoch `e` reads the split with file order and shuffle buffer seeded by
  (seed, e); resuming skips the consumed examples (before decoding). With several processes,
  `input.shard_by='example'` has every process read the whole stream and keep its rows (batches
  identical to one process, I/O of the whole split on every host) and 'file' gives each process
  its own files (batches then depend on the process count).

Either way example `i` of an epoch's order gets a stateless augmentation seed from (seed, epoch,
i), batches use `drop_remainder` (every process runs the same number of steps), and a resumed run
sees exactly the batches an uninterrupted run would.

Evaluation: every example of the eval split exactly once; the last batch is padded with
`mask = 0` examples, and every process yields the same number of batches.

Batches are dicts of numpy arrays: `image` uint8 [b, H, W, C] (the steps normalise it on the
device), `erase` int32 [b, 4] with input.random_erasing (the boxes the train step fills), `label`
int32 [b] (-1 where a label is hidden), `id` int32 [b] where the dataset has one, `index` int32
[b] with input.add_index, and `mask` float32 [b] in eval.
"""

import dataclasses
import functools
import logging
import math
from typing import Iterator

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from kdjax.data import augment
from kdjax.data import image_folder
from kdjax.data import preprocess
from kdjax.data import uci_digits  # noqa: F401  (registers the embedded TFDS dataset)
from kdjax.errors import KdjaxError

log = logging.getLogger(__name__)

# tf.data runs on the host only; keep TensorFlow off the accelerators JAX owns.
tf.config.set_visible_devices([], 'GPU')

# Datasets whose data ships with kdjax: prepared on first use, no download involved.
EMBEDDED_DATASETS = ('uci_digits',)
# TFDS file formats the random-access reader reads by index (`tfds.data_source`).
RANDOM_ACCESS_FORMATS = ('array_record',)
READERS = ('auto', 'random_access', 'sequential')


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  num_classes: int
  image_shape: tuple  # (H, W, C) after preprocessing
  num_train: int      # examples in the train split (all processes)
  num_eval: int       # examples in the eval split (all processes)


def prepare_hint(name, data_dir) -> str:
  """How to prepare TFDS dataset `name` in `data_dir`, for error messages; kdjax's own command,
  since `tfds build` needs apache_beam, which kdjax does not install."""
  hint = f'run `python -m kdjax.prepare {name} --data_dir={data_dir}`'
  if name.startswith('imagenet2012'):
    hint += (' after putting ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in '
             f'{data_dir}/downloads/manual')
  return hint


def tfds_builder(name, data_dir, where='', **kwargs):
  """`tfds.builder(name, **kwargs)`, or a KdjaxError listing what names work (`where`: the
  config key)."""
  try:
    return tfds.builder(name, data_dir=data_dir, **kwargs)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise KdjaxError(f"unknown TFDS dataset '{name}'{where}; use a name from "
                     'tfds.list_builders(), uci_digits, or folder:/path/to/images') from e


def open_builder(name, data_dir, key, holdout_fraction, data_dir_flag='--config.data_dir'):
  """(builder, folder summary or None) of `name`: a `folder:` dataset converted if needed, the
  embedded dataset prepared if needed, any other TFDS dataset as prepared in data_dir; or a
  KdjaxError saying how to get it."""
  if not name:
    raise KdjaxError(f'{key} is empty; set --config.{key}=folder:/path/to/images or a TFDS name')
  if image_folder.is_folder(name):
    return image_folder.prepare(name, data_dir, holdout_fraction, key=key)
  builder = tfds_builder(name, data_dir, f' ({key})')
  if name in EMBEDDED_DATASETS and not _is_prepared(builder):
    builder.download_and_prepare()
  if not _is_prepared(builder):
    where = data_dir or tfds.core.constants.DATA_DIR
    raise KdjaxError(f"dataset '{name}' is not prepared in data_dir '{where}' ({key}, "
                     f'data_dir): {prepare_hint(name, where)}, or point {data_dir_flag} at a '
                     'folder that holds it')
  return builder, None


def _check_splits(builder, name, splits, key):
  for split in splits:
    try:
      builder.info.splits[split].num_examples
    except (KeyError, ValueError) as e:
      raise KdjaxError(f"split '{split}' not found in {name} ({key} splits); available: "
                       f'{", ".join(builder.info.splits)}') from e


def _prepared_builder(name, data_dir, splits, key, holdout_fraction=0.1,
                      data_dir_flag='--config.data_dir'):
  """The prepared TFDS builder `name` with `splits`, or a KdjaxError saying how to get it."""
  builder, _ = open_builder(name, data_dir, key, holdout_fraction, data_dir_flag)
  _check_splits(builder, name, splits, key)
  return builder


def get_builder(config):
  """The prepared builder of `config.dataset` (train and eval splits checked).

  For a `folder:` dataset this also fills in, in `config` itself, what the recipe left to the
  data (`infer_from_folder`), so the values are saved with the run like any other.
  """
  builder, summary = open_builder(config.dataset, config.data_dir, 'dataset',
                                   config.input.holdout_fraction)
  if summary is not None:
    infer_from_folder(config, builder, summary)
  _check_splits(builder, config.dataset, (config.input.train_split, config.input.eval_split),
                'dataset')
  return builder


def get_eval_builder(config, data_dir_flag='--config.data_dir'):
  """The prepared builder of `config.dataset` with only the eval split checked (evaluating a
  trained network: `python -m kdjax.evaluate`)."""
  return _prepared_builder(config.dataset, config.data_dir, (config.input.eval_split,),
                           'dataset', config.input.get('holdout_fraction', 0.1), data_dir_flag)


def infer_from_folder(config, builder, summary):
  """Sets the options a folder recipe leaves empty: input.eval_split '' -> the held-out split
  (validation, val or test); input.mean / input.std () -> the per-channel values computed over
  the training images at conversion. Explicit values are kept."""
  inp = config.input
  inferred = {}
  absolute = f'folder:{image_folder.folder_root(config.dataset)}'
  if config.dataset != absolute:  # An export evaluated from elsewhere finds the same folder.
    config.dataset = absolute
  if not inp.eval_split:
    inferred['eval_split'] = image_folder.default_eval_split(builder)
  for key in ('mean', 'std'):
    if not tuple(inp[key]):
      inferred[key] = tuple(round(v, 6) for v in summary[key])
  for key, value in inferred.items():
    inp[key] = value
  if inferred:
    log.info('From the image folder %s: %s', summary['folder'],
             ', '.join(f'input.{k}={v}' for k, v in inferred.items()))


def get_unlabeled_builder(config):
  """The builder of the unlabeled source mixed into training batches, or None."""
  unl = config.input.unlabeled
  if unl.fraction <= 0:
    return None
  if not 0 < unl.fraction < 1:
    raise KdjaxError(f'input.unlabeled.fraction must be in [0, 1), got {unl.fraction}')
  return _prepared_builder(unl.dataset or config.dataset, unl.data_dir or config.data_dir,
                           (unl.split,), 'input.unlabeled', config.input.holdout_fraction)


def _is_prepared(builder):
  return builder.is_prepared()


def _has_integer_id(builder):
  """Whether examples carry an integer `id` (uci_digits does; cifar100's ids are strings)."""
  features = builder.info.features
  return 'id' in features and np.issubdtype(features['id'].np_dtype, np.integer)


def dataset_info(config, builder=None) -> DatasetInfo:
  builder = builder or get_builder(config)
  size = config.input.image_size
  image_feature = builder.info.features['image']
  channels = image_feature.shape[-1] or 3
  num_classes = builder.info.features['label'].num_classes
  return DatasetInfo(
      num_classes=num_classes, image_shape=(size, size, channels),
      num_train=builder.info.splits[config.input.train_split].num_examples,
      num_eval=builder.info.splits[config.input.eval_split].num_examples)


def check_options(config, builder, unlabeled_builder):
  """Fails at set-up, not at the first batch, on input options that cannot work."""
  inp = config.input
  if inp.reader not in READERS:
    raise KdjaxError(f"input.reader must be one of {', '.join(READERS)}, got '{inp.reader}'")
  for source in (builder, unlabeled_builder):  # a reader the source's format cannot serve
    if source is not None:
      random_access(config, source)
  if inp.shard_by not in ('example', 'file'):
    raise KdjaxError(f"input.shard_by must be 'example' or 'file', got '{inp.shard_by}'")
  if inp.image_size <= 0:
    raise KdjaxError(f'input.image_size must be a positive number of pixels, got {inp.image_size}')
  height, width, channels = builder.info.features['image'].shape
  for key in ('mean', 'std'):
    if channels and len(inp[key]) != channels:
      empty = (' (an empty value is computed from the data only for folder: datasets)'
               if not len(inp[key]) else '')
      raise KdjaxError(f'input.{key} has {len(inp[key])} values but {builder.name} images have '
                       f'{channels} channel(s); give one value per channel{empty}')
  if not len(inp.std) or min(inp.std) <= 0:
    raise KdjaxError(f'input.std must be positive, got {tuple(inp.std)}')
  # Ops that keep the stored size: the images must already have the size the networks expect.
  for key, op in (('train_augment', inp.train_augment), ('eval_preprocess', inp.eval_preprocess)):
    resizing = ('random_resized_crop_flip' if key == 'train_augment'
                else 'bicubic_resize_center_crop')
    if op == 'none' and not height:
      raise KdjaxError(f"{builder.name} images vary in size and input.{key}='none' keeps each "
                       f"image's size, so they cannot be batched; set input.{key}={resizing} "
                       'or another op that resizes')
    if op == 'none' and (height, width) != (inp.image_size, inp.image_size):
      raise KdjaxError(f'input.image_size={inp.image_size} but {builder.name} images stay '
                       f"{height}x{width} with input.{key}='none'; set input.image_size={height} "
                       f'or choose an op that resizes (input.{key}={resizing})')
    if preprocess.needs_encoded_images(op) and builder.name == image_folder.NAME:
      raise KdjaxError(f"input.{key}='{op}' decodes JPEG bytes into 3 channels but image "
                       f'folders are stored as PNG; set input.{key}={resizing} (its '
                       'counterpart on decoded images)')
  preprocess.train_op(inp.train_augment, image_size=inp.image_size)
  preprocess.eval_op(inp.eval_preprocess, image_size=inp.image_size,
                     resize_size=inp.eval_resize_size)
  if inp.eval_preprocess in ('resize_center_crop', 'bicubic_resize_center_crop') and (
      inp.eval_resize_size < inp.image_size):
    raise KdjaxError(f'input.eval_resize_size={inp.eval_resize_size} is smaller than '
                     f'input.image_size={inp.image_size}: the centre crop would not fit; set '
                     f'input.eval_resize_size >= {inp.image_size} (timm: image_size / 0.875)')
  if inp.randaugment:
    augment.parse_randaugment(inp.randaugment)
    if channels not in (None, 1, 3):
      raise KdjaxError(f'input.randaugment needs images with 1 or 3 channels; {builder.name} has '
                       f"{channels}: set input.randaugment=''")
  if augment.parse_strong_augment(inp.strong_augment) and channels not in (None, 1, 3):
    raise KdjaxError(f'input.strong_augment needs images with 1 or 3 channels; {builder.name} '
                     f"has {channels}: set input.strong_augment=''")
  if not 0.0 <= inp.random_erasing <= 1.0:  # also rejects NaN
    raise KdjaxError(f'input.random_erasing is a probability, got {inp.random_erasing}; set a '
                     'value in [0, 1] (DeiT: 0.25, 0 = off)')
  if inp.num_labeled > 0 and not _has_integer_id(builder):
    raise KdjaxError(f"input.num_labeled needs an integer 'id' feature; {builder.name} has none")
  if unlabeled_builder is not None:
    if inp.add_index:
      raise KdjaxError('input.add_index (CRD) cannot be combined with input.unlabeled: the '
                       'unlabeled source has no rows in the memory bank')
    n_unlabeled = batch_split(config, config.batch_size)[1]
    available = unlabeled_builder.info.splits[inp.unlabeled.split].num_examples
    if available < n_unlabeled:
      raise KdjaxError(f'input.unlabeled.split {inp.unlabeled.split} has {available} examples, '
                       f'fewer than the {n_unlabeled} unlabeled examples per batch')


def batch_split(config, batch_size, num_processes=None):
  """(labelled, unlabeled) examples in a batch of `batch_size` (input.unlabeled.fraction).

  Split on the global batch, then divided by the process count, so the mix does not depend on
  how many processes there are.
  """
  num_processes = num_processes or jax.process_count()
  unlabeled = round(config.batch_size * max(config.input.unlabeled.fraction, 0.0))
  if unlabeled % num_processes:
    raise KdjaxError(f'input.unlabeled.fraction gives {unlabeled} unlabeled examples per global '
                     f'batch, not divisible by the {num_processes} processes; change the fraction')
  unlabeled = unlabeled * batch_size // config.batch_size
  return batch_size - unlabeled, unlabeled


def steps_per_epoch(config, info: DatasetInfo) -> int:
  """Optimizer steps per epoch (of the train split; unlabeled sources cycle on their own)."""
  per_process = info.num_train // jax.process_count()
  local_batch = batch_split(config, config.batch_size // jax.process_count())[0]
  steps = per_process // max(local_batch, 1)
  if steps == 0 or local_batch == 0:
    raise KdjaxError(f'batch_size {config.batch_size} is larger than the train split '
                     f'({info.num_train} examples over {jax.process_count()} processes); '
                     'lower --config.batch_size')
  return steps


def image_decoders(op_name):
  """JPEG bytes for the fused decode-and-crop ops, decoded images for the others."""
  if preprocess.needs_encoded_images(op_name):
    return {'image': tfds.decode.SkipDecoding()}
  return None


def _hide_labels(example, num_labeled):
  """Few-label setting: keep the labels of the examples with id < num_labeled, -1 elsewhere;
  num_labeled -1 hides every label (an unlabeled source), 0 keeps them all."""
  if num_labeled < 0:
    return tf.constant(-1, tf.int32)
  label = tf.cast(example['label'], tf.int32)
  if num_labeled > 0:
    label = tf.where(example['id'] < num_labeled, label, -1)
  return label


def process_slot():
  """(index, count) of this process among the run's processes: whose rows it reads."""
  return jax.process_index(), jax.process_count()


def random_access(config, builder) -> bool:
  """Whether `builder` is read by index (input.reader; 'auto': when prepared as ArrayRecord)."""
  reader = config.input.get('reader', 'auto')  # configs saved before the key existed: auto
  stored = str(getattr(builder.info.file_format, 'value', builder.info.file_format) or 'tfrecord')
  if reader == 'auto':
    return stored in RANDOM_ACCESS_FORMATS
  if reader == 'sequential' and stored in RANDOM_ACCESS_FORMATS:
    raise KdjaxError(f"input.reader='sequential' but {builder.name} is stored as {stored}, "
                     "which is read by index only; set input.reader='auto'")
  if reader == 'random_access' and stored not in RANDOM_ACCESS_FORMATS:
    raise KdjaxError(f"input.reader='random_access' but {builder.name} is stored as {stored}; "
                     f'prepare it as ArrayRecord ({prepare_hint(builder.name, builder.data_dir)})'
                     " or set input.reader='auto'")
  return reader == 'random_access'


def warn_about_sequential_reads(config, builder, unlabeled_builder=None):
  """One line when several processes read a TFRecord dataset: each reads the whole split."""
  for source in (builder, unlabeled_builder):
    if source is not None:
      _warn_if_sequential(config, source)


def _warn_if_sequential(config, builder):
  if jax.process_count() > 1 and not random_access(config, builder):
    whole = config.input.shard_by == 'example'
    log.warning('%s is stored as TFRecord and read sequentially: %s; prepare it as ArrayRecord '
                '(python -m kdjax.prepare %s) to have each process read only its 1/%d.',
                builder.name, 'every process reads the whole split every epoch' if whole
                else 'each process reads its own files (batches depend on the process count)',
                builder.name, jax.process_count())


def train_batches(config, builder, *, start_step: int, local_batch_size: int,
                  steps_per_epoch: int, unlabeled_builder=None, process=None,
                  teacher_cache=None) -> Iterator[dict]:
  """Yields this process's training batches from `start_step` on, forever (epoch after epoch).

  With `input.unlabeled.fraction > 0`, that fraction of every batch comes from the unlabeled
  source (labels -1), appended after the labelled examples; both streams are resumable.
  `process`: (index, count), this process's slot (default `process_slot()`).
  `teacher_cache`: a `kdjax.cache.Store`; each example then takes the view the cache recorded
  for this epoch (`cache.choose_views`) and its batch row carries the recorded teacher logits
  (`teacher_logits` float32 [C]).
  """
  inp = config.input
  process = process or process_slot()
  n_labeled, n_unlabeled = batch_split(config, local_batch_size, process[1])
  labeled = _epochs(config, builder, inp.train_split, start_step=start_step, batch=n_labeled,
                    steps_per_epoch=steps_per_epoch, seed=config.seed,
                    num_labeled=inp.num_labeled, process=process, teacher_cache=teacher_cache)
  if not n_unlabeled:
    yield from labeled
    return
  if unlabeled_builder is None:
    unlabeled_builder = get_unlabeled_builder(config)
  split = inp.unlabeled.split
  per_process = unlabeled_builder.info.splits[split].num_examples // process[1]
  if per_process < n_unlabeled:
    raise KdjaxError(f'input.unlabeled.split {split} has fewer examples ({per_process} per '
                     f'process) than the {n_unlabeled} unlabeled examples per batch')
  unlabeled = _epochs(config, unlabeled_builder, split, start_step=start_step,
                      batch=n_unlabeled, steps_per_epoch=per_process // n_unlabeled,
                      seed=config.seed + 7919, num_labeled=-1, process=process)
  for a, b in zip(labeled, unlabeled):
    yield {k: np.concatenate([a[k], b[k]]) for k in a if k in b}


def _example_fn(config, builder, num_labeled, add_index, replay=False):
  """prepare(position, example, epoch_seed, index[, window]) -> the batch row of one training
  example: augmented with the stateless seed (epoch_seed, position), or with `replay` the
  recorded view `window` (the teacher cache), its label hidden as `num_labeled` says, its
  integer `id` and (add_index) its dataset `index` kept."""
  transform = preprocess.train_transform(config.input)
  inp = config.input
  view = preprocess.apply_window(inp.train_augment, image_size=inp.image_size,
                                 crop_padding=inp.crop_padding)
  has_id = _has_integer_id(builder)
  if num_labeled > 0 and not has_id:
    raise KdjaxError(f"input.num_labeled needs an integer 'id' feature; {builder.name} has none")

  def prepare(position, example, epoch_seed, index, window=None):
    if replay:
      out = {'image': preprocess.to_pixels(view(example['image'], window))}
    else:
      seed = tf.stack([epoch_seed, tf.cast(position, tf.int64)])
      out = transform(example['image'], seed)
    out['label'] = _hide_labels(example, num_labeled)
    if has_id:
      out['id'] = tf.cast(example['id'], tf.int32)
    if add_index:
      out['index'] = tf.cast(index, tf.int32)
    return out
  return prepare


def _epoch_seed(seed, epoch):
  return seed * 1_000_003 + epoch


def _epochs(config, builder, split_name, *, start_step, batch, steps_per_epoch, seed,
            num_labeled, process, teacher_cache=None):
  """Batches of one source, epoch after epoch; `num_labeled` -1 hides every label."""
  add_index = config.input.add_index and num_labeled >= 0
  prepare = _example_fn(config, builder, num_labeled, add_index, replay=teacher_cache is not None)
  if random_access(config, builder):
    read = functools.partial(_random_access_epoch, teacher_cache=teacher_cache)
  elif teacher_cache is not None:
    raise KdjaxError(f'teacher.cache reads examples by index: prepare {builder.name} as '
                     f'ArrayRecord ({prepare_hint(builder.name, builder.data_dir)})')
  else:
    read = _sequential_epoch
  epoch, skip_batches = divmod(start_step, steps_per_epoch)
  while True:
    yield from read(config, builder, split_name, prepare, epoch=epoch, seed=seed, batch=batch,
                    first_batch=skip_batches, steps_per_epoch=steps_per_epoch, process=process,
                    add_index=add_index)
    epoch, skip_batches = epoch + 1, 0


def mix64(x):
  """splitmix64's finaliser on uint64: a fixed bijective hash (arithmetic modulo 2**64)."""
  with np.errstate(over='ignore'):
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def epoch_order(seed: int, epoch: int, size: int) -> np.ndarray:
  """The random-access reader's order of a split of `size` examples in `epoch`: a permutation of
  0..size-1 that is a pure function of (seed, epoch), defined here (a hash, then a stable sort)
  rather than by a library's generator, so it never changes under a resumed run."""
  key = mix64(np.uint64(_epoch_seed(seed, epoch) % 2**64) ^ np.uint64(0x9E3779B97F4A7C15))
  return np.argsort(mix64(np.arange(size, dtype=np.uint64) ^ key), kind='stable')


def epoch_key(seed: int, epoch: int) -> np.uint64:
  """A 64-bit hash of (seed, epoch): the key of the teacher cache's view draws."""
  return mix64(np.uint64(_epoch_seed(seed, epoch) % 2**64))


def process_positions(*, process, batch, first_batch, num_batches) -> np.ndarray:
  """Positions in the epoch's order of process `process` = (p, P)'s rows of global batches
  first_batch .. num_batches - 1: rows [p batch, (p + 1) batch) of each global batch of P batch
  rows. int64 [num_batches - first_batch, batch]."""
  index, count = process
  starts = np.arange(first_batch, num_batches, dtype=np.int64) * batch * count + index * batch
  return starts[:, None] + np.arange(batch, dtype=np.int64)[None, :]


def record_source(builder, split):
  """Random access to the serialized examples of a split: f(indices int64 [n]) -> bytes [n].
  TFDS's ArrayRecord data source, returning the records undecoded (TensorFlow parses them)."""
  source = builder.as_data_source(split=split,
                                  deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)

  def read(indices):
    return np.array(source.__getitems__(indices.tolist()), dtype=object)
  read.size = len(source)
  return read


def read_rows(builder, split, decoders, groups):
  """(position, index, example) for each row of `groups`, a tf.data dataset of (positions,
  indices) int64 [b] pairs: each group's records read in one call (in parallel host threads),
  then parsed one by one, in order."""
  read = record_source(builder, split)
  features = builder.info.features

  def fetch(positions, indices):
    records = tf.numpy_function(read, [indices], tf.string, stateful=False)
    return positions, indices, tf.ensure_shape(records, indices.shape)

  ds = groups.map(fetch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).unbatch()
  return ds.map(lambda pos, idx, rec: (pos, idx, features.deserialize_example(rec,
                                                                              decoders=decoders)),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _random_access_epoch(config, builder, split, prepare, *, epoch, seed, batch, first_batch,
                         steps_per_epoch, process, add_index, teacher_cache=None):
  """One epoch of this process's batches from `first_batch` on, read by index (with
  `teacher_cache`, each example's recorded view for the epoch and its teacher logits)."""
  del add_index  # The record's index in the split is the dataset index.
  size = builder.info.splits[split].num_examples
  order = epoch_order(seed, epoch, size)
  positions = process_positions(process=process, batch=batch, first_batch=first_batch,
                                num_batches=steps_per_epoch)
  if not positions.size:
    return
  epoch_seed = tf.constant(_epoch_seed(seed, epoch), tf.int64)
  groups = tf.data.Dataset.from_tensor_slices((positions, order[positions]))
  ds = read_rows(builder, split, image_decoders(config.input.train_augment), groups)
  if teacher_cache is None:
    ds = ds.map(lambda pos, idx, ex: prepare(pos, ex, epoch_seed, idx),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  else:
    ds = tf.data.Dataset.zip(ds, _cached_rows(teacher_cache, seed, epoch, order[positions]))

    def replay(row, cached):
      (pos, idx, ex), (window, logits) = row, cached
      return {**prepare(pos, ex, epoch_seed, idx, window), 'teacher_logits': logits}
    ds = ds.map(replay, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(batch, drop_remainder=True).prefetch(config.input.prefetch_batches)
  yield from tfds.as_numpy(ds)


def _cached_rows(store, seed, epoch, indices):
  """(window int32 [5], teacher logits float32 [C]) of each index of `indices` [n, b], the view
  `cache.choose_views` picks for the epoch, read one group of b per call."""
  from kdjax import cache  # pylint: disable=g-import-not-at-top  (cache imports this module)
  views = cache.choose_views(seed, epoch, indices, store.layout.views)
  num_classes = store.layout.num_classes

  def fetch(idx, view):
    windows, logits = tf.numpy_function(store.rows, [idx, view], (tf.int32, tf.float32),
                                        stateful=False)
    return (tf.ensure_shape(windows, [idx.shape[0], 5]),
            tf.ensure_shape(logits, [idx.shape[0], num_classes]))
  ds = tf.data.Dataset.from_tensor_slices((indices, views))
  return ds.map(fetch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).unbatch()


def _sequential_epoch(config, builder, split_name, prepare, *, epoch, seed, batch, first_batch,
                      steps_per_epoch, process, add_index):
  """One epoch of this process's batches from `first_batch` on, read in (shuffled) file order."""
  inp = config.input
  index, num_processes = process
  # 'example': every process reads the same globally shuffled stream and keeps its own rows of
  # each global batch (before decoding), so batches do not depend on the process count.
  # 'file': every process reads its own files only; the batches then depend on the count.
  by_example = inp.shard_by == 'example' and num_processes > 1
  by_file = inp.shard_by == 'file' and num_processes > 1
  split = (tfds.split_for_jax_process(split_name, process_index=index,
                                      process_count=num_processes, drop_remainder=True)
           if by_file else split_name)
  global_batch = batch * num_processes if by_example else batch
  to_index = example_index(builder, split_name) if add_index else None

  def mine(position, example):
    del example
    return (position % global_batch) // batch == index

  epoch_seed = _epoch_seed(seed, epoch)
  read_config = tfds.ReadConfig(shuffle_seed=epoch_seed, interleave_cycle_length=16,
                                skip_prefetch=True, add_tfds_id=add_index)
  ds = builder.as_dataset(split=split, shuffle_files=True, read_config=read_config,
                          decoders=image_decoders(inp.train_augment))
  ds = ds.shuffle(inp.shuffle_buffer, seed=epoch_seed, reshuffle_each_iteration=False)
  ds = ds.enumerate().skip(first_batch * global_batch)  # position within the epoch
  if by_example:
    ds = ds.filter(mine)
  seed_t = tf.constant(epoch_seed, tf.int64)
  ds = ds.map(lambda i, ex: prepare(i, ex, seed_t, to_index(ex['tfds_id']) if add_index else 0),
              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(batch, drop_remainder=True)
  ds = ds.take(steps_per_epoch - first_batch).prefetch(inp.prefetch_batches)
  yield from tfds.as_numpy(ds)


def index_space(builder, split_name) -> int:
  """How many distinct example indices `example_index` gives for a split: the whole base split."""
  return builder.info.splits[split_name.split('[')[0]].num_examples


def example_index(builder, split_name):
  """A tf function: an example's `tfds_id` -> its position in the (base) split, 0 <= i < N.

  `tfds_id` names the record file's shard and the record within it
  (`cifar100-train.tfrecord-00003-of-00008__17`); adding the sizes of the shards before it gives
  a dataset index that is stable across shuffling and processes (CRD's memory rows).
  """
  lengths = builder.info.splits[split_name.split('[')[0]].shard_lengths
  offsets = tf.constant(np.concatenate([[0], np.cumsum(lengths)[:-1]]), tf.int64)

  def index(tfds_id):
    parts = tf.strings.split(tfds_id, '__')
    shard = tf.strings.regex_replace(parts[0], r'^.*-(\d+)-of-\d+$', r'\1')
    return (tf.gather(offsets, tf.strings.to_number(shard, tf.int64))
            + tf.strings.to_number(parts[1], tf.int64))
  return index


def eval_batches(config, builder, *, local_batch_size: int, process=None) -> Iterator[dict]:
  """Yields this process's eval batches, the same number on every process, padded and masked.

  Process p of P evaluates a contiguous 1/P of the split (read by index, or TFDS's
  `split_for_jax_process` for TFRecord datasets); the sums over all processes cover every
  example once."""
  inp = config.input
  index, count = process or process_slot()
  transform = preprocess.eval_pixels(inp)
  decoders = image_decoders(inp.eval_preprocess)
  total = builder.info.splits[inp.eval_split].num_examples
  num_batches = math.ceil(math.ceil(total / count) / local_batch_size)
  if random_access(config, builder):
    share = math.ceil(total / count)
    indices = np.arange(index * share, min(total, (index + 1) * share), dtype=np.int64)
    groups = tf.data.Dataset.from_tensor_slices(indices).batch(local_batch_size)
    examples = read_rows(builder, inp.eval_split, decoders, groups.map(lambda i: (i, i)))
    examples = examples.map(lambda pos, idx, ex: ex)
  else:
    split = tfds.split_for_jax_process(inp.eval_split, process_index=index, process_count=count,
                                       drop_remainder=False)
    examples = builder.as_dataset(split=split, shuffle_files=False, decoders=decoders)
  ds = examples.map(lambda ex: {'image': transform(ex['image']),
                                'label': tf.cast(ex['label'], tf.int32),
                                'mask': tf.constant(1.0, tf.float32)},
                    num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(local_batch_size).prefetch(inp.prefetch_batches)
  n = 0
  for batch in tfds.as_numpy(ds):
    yield _pad(batch, local_batch_size)
    n += 1
  if n < num_batches:  # Processes with a smaller shard still join every collective step.
    shape = (local_batch_size,) + tuple(ds.element_spec['image'].shape[1:])
    empty = {'image': np.zeros(shape, np.uint8), 'label': np.zeros(shape[:1], np.int32),
             'mask': np.zeros(shape[:1], np.float32)}
    for _ in range(num_batches - n):
      yield empty


def _pad(batch, size):
  """Pads every array to `size` rows with zeros (mask 0)."""
  pad = size - len(batch['mask'])
  if pad == 0:
    return batch
  return {k: np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)]) for k, v in batch.items()}
