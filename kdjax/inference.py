"""Using a distilled student: classify raw images exactly as the run evaluated them.

  import kdjax
  classifier = kdjax.load('/tmp/export')   # an export folder, or a training workdir
  classifier.predict(images)               # int64 class indices [N]
  classifier.logits(images)                # float32 [N, K]
  classifier.probabilities(images)         # float32 [N, K], softmax of the logits

Images are raw pixels, in any of these forms:
  - a numpy array [N, H, W, C], or one image [H, W, C];
  - a list of images [H, W, C], of different sizes where the eval preprocessing resizes;
  - uint8 in [0, 255], or float (float16/32/64) in [0, 1], which is multiplied by 255: the
    convention of `tf.image.convert_image_dtype` and of PIL images divided by 255.
Any other dtype, or float values outside [0, 1], is a KdjaxError.

Each image goes through the run's own evaluation preprocessing (`data.preprocess.
eval_transform` with the `preprocess` entry of the export metadata, the very function the eval
pipeline maps over the eval split), then the network in inference mode (BatchNorm statistics,
no dropout), in chunks of a fixed `batch_size` (the last one padded) so it compiles once.
"""

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kdjax import checkpoint
from kdjax import models
from kdjax.errors import KdjaxError

DEFAULT_BATCH_SIZE = 128
_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
_PREPROCESS_KEYS = ('image_size', 'eval_preprocess', 'eval_resize_size', 'mean', 'std')


def read(path):
  """(variables, export metadata) of the exported network in `path`: an export folder
  (`python -m kdjax.export`) or a training workdir (its latest checkpoint, as export takes it).
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise KdjaxError(f"'{path}' does not exist; pass an export folder (python -m kdjax.export) "
                     'or a kdjax training workdir')
  is_export = os.path.exists(os.path.join(path, checkpoint.EXPORT_METADATA))
  if not is_export and not os.path.isdir(os.path.join(path, 'checkpoints')):
    raise KdjaxError(f"'{path}' is neither an export folder (no {checkpoint.EXPORT_METADATA}) "
                     'nor a kdjax training workdir (no checkpoints/); pass one of those')
  try:
    if is_export:
      return checkpoint.load_exported(path)
    variables, metadata = checkpoint.restore_student(path)
    return variables, checkpoint.export_metadata(variables, metadata, path)
  except KdjaxError:
    raise
  except Exception as e:  # Orbax/tensorstore errors on unreadable or truncated files.
    raise KdjaxError(f"'{path}' could not be read ({type(e).__name__}: "
                     f'{str(e).splitlines()[0][:200] if str(e) else ""}); re-export or re-train '
                     'it') from e


def network(metadata):
  """The Flax module of an export, built as the run built it (model, classes, compute dtype)."""
  dtype = metadata.get('dtype', 'float32')
  if dtype not in _DTYPES:
    raise KdjaxError(f"unknown compute dtype '{dtype}' in the export metadata; valid: "
                     f'{", ".join(_DTYPES)}')
  return models.get_model(metadata['model'], num_classes=int(metadata['num_classes']),
                          dtype=_DTYPES[dtype])


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  """The eval preprocessing keys, with the attribute names `eval_transform` reads."""
  image_size: int
  eval_preprocess: str
  eval_resize_size: int
  mean: tuple
  std: tuple
  channels: int


def preprocessing(metadata, override=None):
  """The export's eval preprocessing with `override` (a dict) on top, or None if incomplete."""
  entry = {**(metadata.get('preprocess') or {}), **(override or {})}
  entry.setdefault('channels', int(metadata['image_shape'][-1]))
  if any(entry.get(k) is None for k in _PREPROCESS_KEYS):
    return None
  return Preprocessing(image_size=int(entry['image_size']),
                       eval_preprocess=str(entry['eval_preprocess']),
                       eval_resize_size=int(entry['eval_resize_size']),
                       mean=tuple(float(v) for v in entry['mean']),
                       std=tuple(float(v) for v in entry['std']),
                       channels=int(entry['channels']))


def _pixels(image, where):
  """One image or batch as the eval ops read it: uint8 as is, float in [0, 1] times 255."""
  if image.dtype == np.uint8:
    return image
  if image.dtype not in (np.float16, np.float32, np.float64):
    raise KdjaxError(f'{where} has dtype {image.dtype}; pass uint8 pixels in [0, 255] or float '
                     'pixels in [0, 1] (e.g. image.astype(np.uint8), or image / 255.0)')
  if image.size and (np.nanmin(image) < 0 or np.nanmax(image) > 1):
    raise KdjaxError(f'{where} is float with values in [{np.nanmin(image):g}, '
                     f'{np.nanmax(image):g}]; float pixels must be in [0, 1]: divide [0, 255] '
                     'pixels by 255 or pass them as uint8')
  return image.astype(np.float32) * np.float32(255)


def as_pixels(images, pre: Preprocessing):
  """`images` (see the module docstring) as an array [N, H, W, C] or a list of [H, W, C], uint8
  or float32 in [0, 255]; checks their rank, channels and, where nothing resizes, their size."""
  if isinstance(images, (list, tuple)):
    items = [np.asarray(image) for image in images]
    for i, image in enumerate(items):
      _check_image(image.shape, pre, f'image {i}', rank=3)
    items = [_pixels(image, f'image {i}') for i, image in enumerate(items)]
    if len({image.dtype for image in items}) > 1:  # uint8 and float mixed: all float32
      items = [image.astype(np.float32) for image in items]
    return items
  images = np.asarray(images)
  if images.ndim == 3:
    images = images[None]
  _check_image(images.shape[1:], pre, 'images', rank=3, batch_shape=images.shape)
  return _pixels(images, 'images')


def _check_image(shape, pre, where, *, rank, batch_shape=None):
  shape = tuple(shape)
  if len(shape) != rank:
    got = batch_shape if batch_shape is not None else shape
    raise KdjaxError(f'{where} has shape {tuple(got)}; pass [N, H, W, C], one image [H, W, C] '
                     f'or a list of [H, W, C] images (C = {pre.channels})')
  if shape[-1] != pre.channels:
    hint = ('; a batch of grayscale images [N, H, W] needs a channel axis: images[..., None]'
            if pre.channels == 1 else '')
    raise KdjaxError(f'{where} has {shape[-1]} channel(s) (shape {shape}) but the network takes '
                     f'{pre.channels}; convert them (e.g. RGB <-> grayscale) first{hint}')
  if pre.eval_preprocess == 'none' and shape[:2] != (pre.image_size, pre.image_size):
    raise KdjaxError(f'{where} is {shape[0]}x{shape[1]} but this run evaluated '
                     f'{pre.image_size}x{pre.image_size} images without resizing '
                     f"(eval_preprocess 'none'); resize them to {pre.image_size}x"
                     f'{pre.image_size} first')


def _tensorflow():
  """TensorFlow for the preprocessing ops, kept off the accelerators JAX owns (as the input
  pipeline does); imported only once images come."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    tf.config.set_visible_devices([], 'GPU')
  except RuntimeError:  # TensorFlow already initialised its devices (e.g. by the input pipeline).
    pass
  return tf


class Classifier:
  """A trained network with its eval preprocessing: raw images in, classes out.

  Attributes: model_name, num_classes, class_names (list of str or None), image_size,
  metadata (the export metadata), model (the Flax module), variables, batch_size.
  """

  def __init__(self, variables, metadata, *, batch_size=DEFAULT_BATCH_SIZE, preprocess=None):
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
      raise KdjaxError(f'batch_size must be a positive integer, got {batch_size!r}')
    self.metadata = metadata
    self.model_name = metadata['model']
    self.num_classes = int(metadata['num_classes'])
    self.class_names = metadata.get('class_names')
    self.image_shape = tuple(int(v) for v in metadata['image_shape'])
    self.image_size = self.image_shape[0]
    self.batch_size = batch_size
    self.model = network(metadata)
    self.variables = jax.device_put(variables)
    self.preprocessing = preprocessing(metadata, preprocess)
    self._transform = None
    model = self.model
    self._apply = jax.jit(lambda v, x: model.apply(v, x, train=False).astype(jnp.float32))

  def __repr__(self):
    return (f'Classifier({self.model_name}, {self.num_classes} classes, '
            f'{self.image_size}x{self.image_size}, step {self.metadata.get("step")})')

  def required_preprocessing(self) -> Preprocessing:
    """The eval preprocessing, or a KdjaxError for an export written before kdjax kept it."""
    if self.preprocessing is None:
      raise KdjaxError(f'the export of {self.model_name} has no eval preprocessing in its '
                       'metadata (exported before kdjax recorded it): re-export it with python '
                       '-m kdjax.export, or pass preprocess=dict(image_size=..., '
                       "eval_preprocess=..., eval_resize_size=..., mean=..., std=...) to "
                       'kdjax.load')
    return self.preprocessing

  def _eval_transform(self):
    """The tf function image -> normalised float32 [S, S, C] (built once)."""
    if self._transform is None:
      from kdjax.data import preprocess as preprocess_lib  # pylint: disable=g-import-not-at-top
      self._transform = preprocess_lib.eval_transform(self.required_preprocessing(),
                                                      encoded=False)
    return self._transform

  def _preprocessed_chunks(self, images):
    """Yields the preprocessed images in chunks of batch_size: float32 [<= batch_size, S, S, C]."""
    tf = _tensorflow()
    transform = self._eval_transform()
    pixels = as_pixels(images, self.preprocessing)
    if not len(pixels):
      return
    if isinstance(pixels, list):  # Sizes may differ: one image at a time.
      spec = tf.TensorSpec((None, None, self.preprocessing.channels), pixels[0].dtype)
      ds = tf.data.Dataset.from_generator(lambda: iter(pixels), output_signature=spec)
    else:  # Slices of the array, never one constant of it all (TF's 2 GB limit).
      spec = tf.TensorSpec((None,) + pixels.shape[1:], pixels.dtype)
      slices = lambda: (pixels[i:i + self.batch_size]
                        for i in range(0, len(pixels), self.batch_size))
      ds = tf.data.Dataset.from_generator(slices, output_signature=spec).unbatch()
    ds = ds.map(transform, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    yield from ds.batch(self.batch_size).prefetch(1).as_numpy_iterator()

  def preprocess(self, images):
    """The run's eval preprocessing of `images`: float32 [N, S, S, C], what the network (and
    the SavedModel export's signature) takes."""
    chunks = list(self._preprocessed_chunks(images))
    if not chunks:
      return np.zeros((0,) + self.image_shape, np.float32)
    return np.concatenate(chunks)

  def network_logits(self, batch):
    """Logits float32 [N, K] of already preprocessed images float32 [N, S, S, C]."""
    batch = np.asarray(batch, np.float32)
    out = []
    for start in range(0, len(batch), self.batch_size):
      chunk = batch[start:start + self.batch_size]
      padded = np.zeros((self.batch_size,) + chunk.shape[1:], np.float32)
      padded[:len(chunk)] = chunk
      out.append(np.asarray(self._apply(self.variables, padded))[:len(chunk)])
    return np.concatenate(out) if out else np.zeros((0, self.num_classes), np.float32)

  def logits(self, images):
    """Logits float32 [N, K] of raw `images` (see the module docstring for the formats)."""
    out = [self.network_logits(chunk) for chunk in self._preprocessed_chunks(images)]
    return np.concatenate(out) if out else np.zeros((0, self.num_classes), np.float32)

  def probabilities(self, images):
    """Class probabilities float32 [N, K]: the softmax of the logits."""
    return np.asarray(jax.nn.softmax(self.logits(images), axis=-1))

  def predict(self, images):
    """Class indices int64 [N] (the argmax of the logits); names: `class_names[i]`."""
    return np.argmax(self.logits(images), axis=-1).astype(np.int64)


def load(path, *, batch_size: int = DEFAULT_BATCH_SIZE,
         preprocess: dict[str, Any] | None = None) -> Classifier:
  """A `Classifier` for the network exported in `path`: an export folder (`python -m
  kdjax.export`) or a training workdir (its latest checkpoint's exported network, the EMA when
  the run had one).

  Args:
    path: the export folder or workdir.
    batch_size: images per compiled call; every call runs chunks of exactly this many.
    preprocess: keys of the eval preprocessing to set or replace (image_size, eval_preprocess,
      eval_resize_size, mean, std), for exports written before kdjax recorded it.
  """
  variables, metadata = read(path)
  return Classifier(variables, metadata, batch_size=batch_size, preprocess=preprocess)
