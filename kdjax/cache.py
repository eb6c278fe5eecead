r"""The teacher-output cache: record the frozen teacher's logits once, train without running it.

  python -m kdjax.cache --config=configs/<recipe>.py --config.teacher.cache=/data/r34_cache \
      [--config.teacher.cache_views=8] [--config.teacher.cache_top_k=0]
  python -m kdjax.main  --config=configs/<recipe>.py --config.teacher.cache=/data/r34_cache ...

After FKD (Shen and Xing, "A Fast Knowledge Distillation Framework for Visual Recognition",
ECCV 2022). For every training example the cache holds K views (`teacher.cache_views`) and the
teacher's logits for each: view v of example i is the crop window and flip that the recipe's
train op (`input.train_augment`) draws from a seed of its own (`view_seed`; not the run's, so
runs with any seed share a cache), recorded as int32 (top, left, height, width, flip). Training
then gives example i, in epoch e, the view `choose_views(seed, e, i, K)` (a pure function of the
run's seed, e and i, so a resumed run sees the same views),
applies that recorded window to the image (`preprocess.apply_window`) and reads the recorded
logits instead of running the teacher: the step costs about a student step.

Stored per view (`teacher.cache_top_k`):
  0   the full log-softmax of the teacher's logits, float16 [C];
  k   FKD's quantisation: the k largest log-probabilities (float16) with their classes (uint16),
      and one float16 log-probability shared by the other C - k classes, the remaining mass
      spread evenly: log((1 - sum_k p) / (C - k)).
Log-probabilities are logits shifted by a constant, which no softmax-based loss sees, so the full
form gives every logit loss its online value up to float16 rounding, at any temperature; top-k
is exact in the top classes at temperature 1 and approximates the tail.

The store is a folder: ArrayRecord files (`teacher_logits.array_record-PPPPP-of-NNNNN`, one per
process, record i = example i of the train split: windows int32 [K, 5], then the outputs) and
`cache_info.json`, written last, which describes the layout and what the cache was made from. A
run checks that against its own config (dataset, split, train op, image size, normalisation,
teacher and its weights) and refuses a cache made for something else. The cache covers methods
that read only the teacher's logits, and views that can be replayed: mixup/CutMix, RandAugment,
random erasing, unlabeled sources and feature taps of the teacher are refused at set-up.
"""

import dataclasses
import json
import logging
import os
import time

import jax
from jax.experimental import multihost_utils
import numpy as np

from kdjax import methods
from kdjax import mixup
from kdjax.data import input_pipeline
from kdjax.data import on_device
from kdjax.data import preprocess
from kdjax.errors import KdjaxError

log = logging.getLogger('kdjax')

FORMAT_VERSION = 1
INFO_FILE = 'cache_info.json'
FILE_PREFIX = 'teacher_logits.array_record'
# The seed pair of view v of example i is (VIEW_SEED, i * K + v): a stream of its own, apart
# from the epochs' augmentation seeds (seed * 1_000_003 + epoch, position), and independent of
# the run's seed, so that runs with any seed share one cache (as FKD's runs share its labels).
VIEW_SEED = -(1 << 40)
# Log-probabilities are stored as float16; -60 keeps exp() of the floor meaningful (1e-26).
LOGP_FLOOR = -60.0


# --------------------------------------------------------------------------- record layout


@dataclasses.dataclass(frozen=True)
class Layout:
  """The bytes of one record: windows int32 [K, 5], then per view either log-probs float16 [C]
  (top_k = 0) or classes uint16 [k], log-probs float16 [k] and the rest's log-prob float16."""
  views: int
  num_classes: int
  top_k: int = 0

  @property
  def record_bytes(self) -> int:
    per_view = 2 * self.num_classes if not self.top_k else 4 * self.top_k + 2
    return self.views * (5 * 4 + per_view)

  def encode(self, windows, log_probs) -> bytes:
    """windows int32 [K, 5], log_probs float32 [K, C] -> one record."""
    parts = [np.asarray(windows, '<i4').tobytes()]
    if not self.top_k:
      parts.append(np.maximum(log_probs, LOGP_FLOOR).astype('<f2').tobytes())
    else:
      classes, top, rest = quantize(log_probs, self.top_k)
      parts += [classes.astype('<u2').tobytes(), top.astype('<f2').tobytes(),
                rest.astype('<f2').tobytes()]
    return b''.join(parts)

  def decode(self, records, views):
    """Records (bytes [n]) and the view to take of each (int [n]) -> (windows int32 [n, 5],
    logits float32 [n, C])."""
    n, k, c = len(records), self.views, self.num_classes
    raw = np.frombuffer(b''.join(records), np.uint8).reshape(n, self.record_bytes)
    rows = np.arange(n)
    windows = raw[:, :20 * k].copy().view('<i4').reshape(n, k, 5)[rows, views]
    body = raw[:, 20 * k:]
    if not self.top_k:
      log_probs = body.copy().view('<f2').reshape(n, k, c)[rows, views]
      return windows, log_probs.astype(np.float32)
    t = self.top_k
    classes = body[:, :2 * t * k].copy().view('<u2').reshape(n, k, t)[rows, views]
    top = body[:, 2 * t * k:4 * t * k].copy().view('<f2').reshape(n, k, t)[rows, views]
    rest = body[:, 4 * t * k:].copy().view('<f2').reshape(n, k)[rows, views]
    return windows, dequantize(classes, top, rest, c)


def quantize(log_probs, top_k):
  """FKD's top-k form of log-probabilities [..., C]: (classes [..., k] of the k most likely,
  their log-probs [..., k], the log-prob [...] each other class gets when the remaining mass
  is spread evenly over the C - k of them)."""
  log_probs = np.asarray(log_probs, np.float64)
  classes = np.argsort(-log_probs, axis=-1, kind='stable')[..., :top_k]
  top = np.take_along_axis(log_probs, classes, axis=-1)
  rest_mass = np.maximum(1.0 - np.exp(top).sum(-1), 0.0) / (log_probs.shape[-1] - top_k)
  with np.errstate(divide='ignore'):
    rest = np.maximum(np.log(rest_mass), LOGP_FLOOR)
  return classes, np.maximum(top, LOGP_FLOOR), rest


def dequantize(classes, top, rest, num_classes):
  """The inverse of `quantize`: log-probs float32 [..., C], `rest` everywhere but the top k."""
  out = np.repeat(np.asarray(rest, np.float32)[..., None], num_classes, axis=-1)
  np.put_along_axis(out, np.asarray(classes, np.int64), np.asarray(top, np.float32), axis=-1)
  return out


def log_softmax(logits):
  logits = np.asarray(logits, np.float64)
  shifted = logits - logits.max(-1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


# --------------------------------------------------------------------------- views


def view_seed(index, view, views):
  """The augmentation seed (int64 [2]) of view `view` of example `index`."""
  return np.array([VIEW_SEED, index * views + view], np.int64)


def choose_views(seed: int, epoch: int, indices, views: int) -> np.ndarray:
  """Which recorded view each example in `indices` trains on in `epoch`: a hash of (seed,
  epoch, index) modulo K, so every epoch draws afresh and a resumed run draws the same."""
  key = input_pipeline.epoch_key(seed, epoch) ^ np.uint64(0xC2B2AE3D27D4EB4F)
  hashed = input_pipeline.mix64(np.asarray(indices, np.uint64) ^ key)
  return (hashed % np.uint64(views)).astype(np.int64)


# --------------------------------------------------------------------------- the store


def _fingerprint(config, setup) -> dict:
  """What a cache was made from; a run compares it with its own before reading the cache."""
  from kdjax import train  # pylint: disable=g-import-not-at-top  (train imports this module)
  inp = config.input
  return {
      'dataset': config.dataset, 'split': inp.train_split,
      'num_examples': setup.data.builder.info.splits[inp.train_split].num_examples,
      'train_augment': inp.train_augment, 'image_size': inp.image_size,
      'crop_padding': inp.crop_padding, 'mean': list(inp.mean), 'std': list(inp.std),
      'teacher': config.teacher.model, 'teacher_dtype': train.resolve_dtype(config.teacher.dtype),
      'teacher_sha256': setup.networks.teacher_source.get('sha256', ''),
      'num_classes': setup.data.info.num_classes}


class Store:
  """A finished cache folder, read by example index."""

  def __init__(self, path):
    info_path = os.path.join(path, INFO_FILE)
    if not os.path.exists(info_path):
      raise KdjaxError(f"teacher.cache='{path}' holds no finished cache ({INFO_FILE} is "
                       'missing); make it with python -m kdjax.cache --config=<the recipe> '
                       f'--config.teacher.cache={path}')
    with open(info_path) as f:
      self.info = json.load(f)
    self.layout = Layout(self.info['views'], self.info['num_classes'], self.info['top_k'])
    from array_record.python import array_record_data_source  # pylint: disable=g-import-not-at-top
    files = [os.path.join(path, name) for name in self.info['files']]
    self.source = array_record_data_source.ArrayRecordDataSource(files)
    self.path = path

  def rows(self, indices, views):
    """(windows int32 [n, 5], teacher logits float32 [n, C]) of examples `indices`, views
    `views`."""
    return self.layout.decode(self.source.__getitems__(np.asarray(indices).tolist()),
                              np.asarray(views))

  def check(self, config, setup):
    """Refuses a cache made for another dataset, view, teacher or view count."""
    want = {**_fingerprint(config, setup), 'views': config.teacher.cache_views,
            'top_k': config.teacher.cache_top_k}
    have = {k: self.info.get(k) for k in want}
    if not want['teacher_sha256']:
      have['teacher_sha256'] = want['teacher_sha256'] = ''  # a random (smoke) teacher
    diff = [f'{k}: cache {have[k]!r}, run {want[k]!r}' for k in want if have[k] != want[k]]
    if diff:
      raise KdjaxError(f"teacher.cache='{self.path}' was made for another setting "
                       f"({'; '.join(diff)}); make a new cache with python -m kdjax.cache, or "
                       'restore those settings')


def exists(path) -> bool:
  return bool(path) and os.path.exists(os.path.join(path, INFO_FILE))


def check_config(config, terms):
  """One line for a recipe whose teacher outputs cannot come from the cache."""
  inp = config.input
  reason = None
  if mixup.enabled(config.mixup):
    reason = 'mixup/CutMix mixes images after the views were recorded'
  elif inp.randaugment:
    reason = 'RandAugment cannot be replayed from a recorded crop (input.randaugment)'
  elif inp.random_erasing > 0:
    reason = 'random erasing happens after the recorded view (input.random_erasing)'
  elif inp.get('strong_augment'):
    reason = 'the cache records one view per draw, not the strong view (input.strong_augment)'
  elif inp.unlabeled.fraction > 0:
    reason = 'the cache covers the train split only, not input.unlabeled'
  elif config.teacher.cache_views < 1:
    reason = f'teacher.cache_views must be >= 1, got {config.teacher.cache_views}'
  elif not 0 <= config.teacher.cache_top_k < 65536:
    reason = f'teacher.cache_top_k must be in [0, 65535], got {config.teacher.cache_top_k}'
  else:
    extra = [t for t in methods.taps(terms, 'teacher') if t != 'logits']
    if extra:
      reason = (f"the losses read the teacher's {', '.join(extra)}; the cache holds its logits "
                'only (logit methods: kd, dkd, dist, ...)')
  if reason:
    raise KdjaxError(f'teacher.cache cannot serve this recipe: {reason}; set '
                     "--config.teacher.cache=''")


# --------------------------------------------------------------------------- the teacher pass


def build(config, setup=None, mesh=None, *, batch_size=None) -> str:
  """Runs the teacher over K views of every training example and writes the cache folder
  `config.teacher.cache` (this process's share of the examples; process 0 writes the info
  file once every process has written). Returns the folder."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  from kdjax import train  # pylint: disable=g-import-not-at-top  (train imports this module)

  path, views, top_k = config.teacher.cache, config.teacher.cache_views, config.teacher.cache_top_k
  if not path:
    raise KdjaxError('set --config.teacher.cache to the folder the cache is written to')
  setup = setup or train.build(config)
  check_config(config, setup.objective.terms)
  nets, inp = setup.networks, config.input
  if nets.teacher is None:
    raise KdjaxError('teacher.cache: the recipe reads no teacher')
  builder, split = setup.data.builder, inp.train_split
  if not input_pipeline.random_access(config, builder):
    raise KdjaxError(f'teacher.cache reads examples by index: prepare {builder.name} as '
                     f'ArrayRecord ({input_pipeline.prepare_hint(builder.name, builder.data_dir)})')
  layout = Layout(views, setup.data.info.num_classes, top_k)
  num_examples = builder.info.splits[split].num_examples
  index, count = input_pipeline.process_slot()
  first, last = index * num_examples // count, (index + 1) * num_examples // count
  mesh = mesh or train.make_mesh(jax.local_devices())
  rows = batch_size or max(config.batch_size // jax.process_count(), 1)
  rows = -(-rows // mesh.size) * mesh.size  # whole rows per device

  # Host side: every example of this process's range, each as K views drawn from view_seed.
  draw = preprocess.train_window(inp.train_augment, image_size=inp.image_size,
                                 crop_padding=inp.crop_padding)
  apply = preprocess.apply_window(inp.train_augment, image_size=inp.image_size,
                                  crop_padding=inp.crop_padding)
  base = tf.constant(VIEW_SEED, tf.int64)

  def example_views(position, idx, example):
    del position
    seeds = tf.stack([tf.fill([views], base), idx * views + tf.range(views, dtype=tf.int64)], 1)
    windows = tf.map_fn(lambda s: draw(example['image'], s), seeds,
                        fn_output_signature=tf.int32)
    pixels = tf.map_fn(lambda w: preprocess.to_pixels(apply(example['image'], w)), windows,
                       fn_output_signature=tf.uint8)
    return {'index': tf.fill([views], idx), 'window': windows, 'image': pixels}

  indices = np.arange(first, last, dtype=np.int64)
  groups = tf.data.Dataset.from_tensor_slices((indices, indices)).batch(64)
  ds = input_pipeline.read_rows(builder, split,
                                input_pipeline.image_decoders(inp.train_augment), groups)
  ds = ds.map(example_views, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.unbatch().batch(rows).prefetch(2)

  forward = jax.jit(lambda v, x: train.teacher_forward(
      nets.teacher, v, on_device.normalize(x, inp.mean, inp.std), [])['logits'],
      in_shardings=(train.replicated(mesh), train.batch_sharded(mesh)),
      out_shardings=train.replicated(mesh))
  teacher = jax.device_put(nets.teacher_variables, train.replicated(mesh))

  os.makedirs(path, exist_ok=True)
  name = f'{FILE_PREFIX}-{index:05d}-of-{count:05d}'
  writer = array_record_module.ArrayRecordWriter(os.path.join(path, name), 'group_size:1')
  pending_windows, pending_logp = [], []
  done, start, last_log = 0, time.perf_counter(), 0.0
  total_views = (last - first) * views
  for batch in tfds.as_numpy(ds):
    n = len(batch['index'])
    images = batch['image']
    if n < rows:  # the last batch, padded to the compiled shape
      images = np.concatenate([images, np.zeros((rows - n,) + images.shape[1:], images.dtype)])
    logits = np.asarray(forward(teacher, images))[:n]
    pending_windows.append(batch['window'])
    pending_logp.append(log_softmax(logits).astype(np.float32))
    windows, logp = np.concatenate(pending_windows), np.concatenate(pending_logp)
    whole = len(windows) // views * views
    for i in range(0, whole, views):
      writer.write(layout.encode(windows[i:i + views], logp[i:i + views]))
    pending_windows, pending_logp = [windows[whole:]], [logp[whole:]]
    done += n
    now = time.perf_counter()
    if now - last_log > 30 or done == total_views:
      rate = done / (now - start)
      log.info('teacher cache: %d / %d views (%.1f%%), %.1f views/s, ETA %s', done, total_views,
               100 * done / max(total_views, 1), rate,
               time.strftime('%H:%M:%S', time.gmtime((total_views - done) / max(rate, 1e-9))))
      last_log = now
  writer.close()
  if count > 1:
    multihost_utils.sync_global_devices('kdjax teacher cache written')
  if index == 0:
    info = {'format_version': FORMAT_VERSION, **_fingerprint(config, setup), 'views': views,
            'top_k': top_k, 'record_bytes': layout.record_bytes,
            'files': [f'{FILE_PREFIX}-{p:05d}-of-{count:05d}' for p in range(count)],
            'made': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}
    with open(os.path.join(path, INFO_FILE + '.tmp'), 'w') as f:
      json.dump(info, f, indent=1)
    os.replace(os.path.join(path, INFO_FILE + '.tmp'), os.path.join(path, INFO_FILE))
  if count > 1:  # nobody reads the cache before its info file exists
    multihost_utils.sync_global_devices('kdjax teacher cache finished')
  log.info('teacher cache: %d examples x %d views written to %s (%.0f s)', last - first, views,
           path, time.perf_counter() - start)
  return path


def main():
  """python -m kdjax.cache --config=RECIPE --config.teacher.cache=FOLDER: the teacher pass alone
  (on the teachers' hardware, say), then any number of runs read FOLDER."""
  from absl import app  # pylint: disable=g-import-not-at-top
  from kdjax import cli  # pylint: disable=g-import-not-at-top
  from kdjax import logs  # pylint: disable=g-import-not-at-top
  from kdjax import main as kdjax_main  # pylint: disable=g-import-not-at-top  (its flags too)

  def run(argv):
    del argv
    logs.setup(logs.verbosity_flag())
    kdjax_main.initialize_distributed()
    config = kdjax_main.FLAGS.config
    try:
      if exists(config.teacher.cache):
        raise KdjaxError(f"teacher.cache='{config.teacher.cache}' already holds a cache; "
                         'choose another folder or delete it')
      build(config)
    except KdjaxError as e:
      cli.fail(str(e))
  app.run(run, flags_parser=cli.config_flags_parser(kdjax_main._CONFIG, require_workdir=False))  # pylint: disable=protected-access


if __name__ == '__main__':
  main()
