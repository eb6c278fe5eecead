"""Per-example preprocessing ops (tf.data side), chosen by name in the config.

Train ops take a stateless seed so that an example's augmentation depends only on
(seed, epoch, position): a resumed run sees exactly the batches an uninterrupted run would.
"""

import math

import tensorflow as tf

from kdjax.data import augment
from kdjax.errors import KdjaxError


# Every train op is a view of the image: a crop window and a horizontal flip. It is drawn from
# the example's seed (`*_window`: int32 [5] = top, left, height, width, flip) and then applied
# (`apply_window`), so a view can be recorded and replayed exactly (the teacher cache:
# kdjax/cache.py). The draws are TensorFlow's own (stateless_random_crop's offsets,
# stateless_random_flip_left_right's U < 1/2, stateless_sample_distorted_bounding_box).


def _flip_draw(seed):
  """tf.image.stateless_random_flip_left_right's draw: flip when U(seed) < 1/2."""
  return tf.random.stateless_uniform([], seed=seed, minval=0.0, maxval=1.0) < 0.5


def _window(top, left, height, width, flip):
  return tf.stack([tf.cast(v, tf.int32) for v in (top, left, height, width, flip)])


def _crop_window(image, seed, *, size, pad, flip):
  """CIFAR's view: zero-pad by `pad`, a random `size` crop (tf.image.stateless_random_crop's
  offsets, in padded coordinates), and with `flip` a random horizontal flip."""
  seeds = tf.random.experimental.stateless_split(seed, 2) if flip else [seed]
  limit = tf.shape(image) + [2 * pad, 2 * pad, 0] - [size, size, tf.shape(image)[2]] + 1
  offset = tf.random.stateless_uniform([3], seed=seeds[0], maxval=2**31 - 1,
                                       dtype=tf.int32) % limit
  return _window(offset[0], offset[1], size, size, _flip_draw(seeds[1]) if flip else False)


def _inception_window(image_bytes, seed, *, area_range=(0.08, 1.0)):
  """ImageNet's view: a distorted bounding box of the JPEG (its shape read from the header) and
  a random flip."""
  seeds = tf.random.experimental.stateless_split(seed, 2)
  shape = tf.image.extract_jpeg_shape(image_bytes)
  begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
      shape, bounding_boxes=tf.zeros([1, 0, 4]), seed=seeds[0],
      min_object_covered=0.0, aspect_ratio_range=(3 / 4, 4 / 3), area_range=area_range,
      max_attempts=10, use_image_if_no_bounding_boxes=True)
  return _window(begin[0], begin[1], crop_size[0], crop_size[1], _flip_draw(seeds[1]))


def _resize_center_crop(image, *, size, resize_size):
  """ImageNet evaluation on a decoded image [H, W, C] (uint8, or float in [0, 255]): resize the
  shorter side to `resize_size` (bilinear, antialiased), centre-crop `size`. The eval pipeline
  decodes the JPEG bytes first (`eval_op(..., encoded=True)`); `kdjax.load` passes arrays."""
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  scale = resize_size / tf.reduce_min(shape)
  new_shape = tf.cast(tf.round(shape * scale), tf.int32)
  image = tf.image.resize(image, new_shape, method='bilinear', antialias=True)
  top = (new_shape[0] - size) // 2
  left = (new_shape[1] - size) // 2
  return tf.image.crop_to_bounding_box(image, top, left, size, size)


def _random_resized_window(image, seed, *, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                           attempts=10):
  """timm's RandomResizedCropAndInterpolation(size, scale, ratio, 'bicubic') and
  RandomHorizontalFlip on a decoded image [H, W, C] (any size; CIFAR's 32x32 too).

  Up to `attempts` tries of area ~ U(scale) * H W and aspect w / h ~ exp(U(log ratio)),
  w = round(sqrt(area * aspect)), h = round(sqrt(area / aspect)); the first with w <= W and
  h <= H is placed uniformly (top in 0..H - h, left in 0..W - w). If none fits, timm's
  fallback: the centred crop of the whole image clamped to `ratio`; a flip with probability 1/2.
  `apply_window` then resizes the crop to size x size, bicubic (antialiased when shrinking, as
  PIL), rounded and clipped to [0, 255] as PIL's uint8 result.
  """
  seeds = tf.random.experimental.stateless_split(seed, 5)
  shape = tf.shape(image)
  img_h, img_w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
  area = tf.random.stateless_uniform([attempts], seeds[0], *scale) * img_h * img_w
  aspect = tf.exp(tf.random.stateless_uniform([attempts], seeds[1], math.log(ratio[0]),
                                              math.log(ratio[1])))
  ws, hs = tf.round(tf.sqrt(area * aspect)), tf.round(tf.sqrt(area / aspect))
  fits = (ws <= img_w) & (hs <= img_h)
  first = tf.argmax(tf.cast(fits, tf.int32))
  in_ratio = img_w / img_h
  fallback_w = tf.where(in_ratio > ratio[1], tf.round(img_h * ratio[1]), img_w)
  fallback_h = tf.where(in_ratio < ratio[0], tf.round(img_w / ratio[0]), img_h)
  found = tf.reduce_any(fits)
  h = tf.maximum(tf.where(found, hs[first], fallback_h), 1.0)
  w = tf.maximum(tf.where(found, ws[first], fallback_w), 1.0)
  top = tf.where(found, tf.floor(tf.random.stateless_uniform([], seeds[2]) * (img_h - h + 1)),
                 tf.floor((img_h - h) / 2))
  left = tf.where(found, tf.floor(tf.random.stateless_uniform([], seeds[3]) * (img_w - w + 1)),
                  tf.floor((img_w - w) / 2))
  return _window(top, left, h, w, _flip_draw(seeds[4]))


def _bicubic_resize_center_crop(image, *, size, resize_size):
  """timm's evaluation transform on a decoded image [H, W, C]: Resize(resize_size, bicubic)
  (the shorter side becomes resize_size, the longer int(resize_size * long / short), as
  torchvision) and CenterCrop(size) (offsets round((new - size) / 2)); rounded and clipped to
  [0, 255] as PIL's uint8 result. Returns float32 [size, size, C]."""
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  short = tf.reduce_min(shape)
  new_shape = tf.where(shape == short, float(resize_size), tf.floor(resize_size * shape / short))
  new_shape = tf.cast(new_shape, tf.int32)
  image = tf.image.resize(tf.cast(image, tf.float32), new_shape, method='bicubic', antialias=True)
  top, left = tf.unstack(tf.cast(tf.round(tf.cast(new_shape - size, tf.float32) / 2), tf.int32))
  image = tf.image.crop_to_bounding_box(image, top, left, size, size)
  return tf.clip_by_value(tf.round(image), 0.0, 255.0)


TRAIN_OPS = ('none', 'crop', 'crop_flip', 'inception_crop_flip', 'random_resized_crop_flip')
EVAL_OPS = ('none', 'resize_center_crop', 'bicubic_resize_center_crop')


def train_window(name, *, image_size, crop_padding=4):
  """Returns f(encoded_or_decoded_image, seed) -> int32 [5]: the view op `name` draws for that
  seed, (top, left, height, width, flip)."""
  if name == 'none':
    return lambda image, seed: _window(0, 0, tf.shape(image)[0], tf.shape(image)[1], False)
  if name in ('crop', 'crop_flip'):
    return lambda image, seed: _crop_window(image, seed, size=image_size, pad=crop_padding,
                                            flip=name == 'crop_flip')
  if name == 'inception_crop_flip':
    return _inception_window
  if name == 'random_resized_crop_flip':
    return _random_resized_window
  raise KdjaxError(f"unknown train augmentation '{name}' (input.train_augment); "
                   f'valid: {", ".join(TRAIN_OPS)}')


def apply_window(name, *, image_size, crop_padding=4):
  """Returns f(encoded_or_decoded_image, window int32 [5]) -> float32 [S, S, C] in [0, 255]:
  the view of op `name` (crop, resize as the op resizes, flip)."""
  if name not in TRAIN_OPS:
    train_window(name, image_size=image_size)  # raises the error naming the valid ops

  def flip(image, window):
    return tf.cond(window[4] > 0, lambda: tf.reverse(image, [1]), lambda: image)

  def view(image, window):
    if name == 'none':
      return tf.cast(image, tf.float32)
    if name in ('crop', 'crop_flip'):
      image = tf.pad(image, [[crop_padding, crop_padding], [crop_padding, crop_padding], [0, 0]])
      image = tf.image.crop_to_bounding_box(image, window[0], window[1], window[2], window[3])
      return tf.cast(flip(image, window), tf.float32)
    if name == 'inception_crop_flip':
      image = tf.image.decode_and_crop_jpeg(image, window[:4], channels=3)
      image = tf.image.resize(image, [image_size, image_size], method='bilinear',
                              antialias=False)
      return flip(image, window)
    crop = tf.image.crop_to_bounding_box(image, window[0], window[1], window[2], window[3])
    crop = tf.image.resize(tf.cast(crop, tf.float32), [image_size, image_size],
                           method='bicubic', antialias=True)
    return flip(tf.clip_by_value(tf.round(crop), 0.0, 255.0), window)
  return view


def train_op(name, *, image_size, crop_padding=4):
  """Returns f(encoded_or_decoded_image, seed) -> float32 [H, W, C] in [0, 255]: the view the
  op draws for that seed (`train_window`), applied (`apply_window`)."""
  draw = train_window(name, image_size=image_size, crop_padding=crop_padding)
  apply = apply_window(name, image_size=image_size, crop_padding=crop_padding)
  return lambda image, seed: apply(image, draw(image, seed))


def eval_op(name, *, image_size, resize_size, encoded=True):
  """Returns f(image) -> float32 [H, W, C] in [0, 255].

  `image` is what the eval pipeline reads for op `name` (JPEG bytes for resize_center_crop, see
  `needs_encoded_images`), or with `encoded=False` always a decoded [H, W, C] image, uint8 or
  float in [0, 255] (`kdjax.load`): the same resize and crop either way, only the decode differs.
  """
  if name == 'none':
    return lambda image: tf.cast(image, tf.float32)
  if name == 'resize_center_crop':
    decode = ((lambda image: tf.io.decode_jpeg(image, channels=3)) if encoded
              else (lambda image: image))
    return lambda image: _resize_center_crop(decode(image), size=image_size,
                                             resize_size=resize_size)
  if name == 'bicubic_resize_center_crop':
    return lambda image: _bicubic_resize_center_crop(image, size=image_size,
                                                     resize_size=resize_size)
  raise KdjaxError(f"unknown eval preprocessing '{name}' (input.eval_preprocess); "
                   f'valid: {", ".join(EVAL_OPS)}')


def needs_encoded_images(*op_names):
  """The fused-decode ops read the JPEG bytes; the others (random_resized_crop_flip and
  bicubic_resize_center_crop included) take decoded images, from any dataset."""
  return any(n in ('inception_crop_flip', 'resize_center_crop') for n in op_names)


def normalize(image, mean, std):
  """(image / 255 - mean) / std, per channel."""
  return (image / 255.0 - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def eval_transform(inp, *, encoded=True):
  """f(image) -> normalised float32 [S, S, C] for the input.* keys: the eval op
  (`eval_preprocess`, `image_size`, `eval_resize_size`), then normalisation (`mean`, `std`).

  The one definition of evaluation preprocessing: `kdjax.load` maps it over the images it is
  given (`encoded=False`: decoded arrays, see `eval_op`); the eval pipeline maps its first part,
  `eval_pixels`, over the eval split and the devices normalise the same way.
  `inp` is config.input or anything with those attributes (an export's `preprocess` entry).
  """
  pixels = eval_pixels(inp, encoded=encoded)
  mean, std = tuple(inp.mean), tuple(inp.std)
  return lambda image: normalize(tf.cast(pixels(image), tf.float32), mean, std)


def eval_pixels(inp, *, encoded=True):
  """f(image) -> uint8 [S, S, C]: the eval op of `eval_transform`, rounded to uint8 (what PIL's
  result holds), before normalisation. The eval pipeline sends these to the devices, which
  normalise them (`train.eval_images`)."""
  op = eval_op(inp.eval_preprocess, image_size=inp.image_size, resize_size=inp.eval_resize_size,
               encoded=encoded)
  return lambda image: to_pixels(op(image))


def to_pixels(image):
  """float [0, 255] -> uint8, rounded and clipped (what PIL's uint8 result holds)."""
  return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def train_transform(inp):
  """f(image, seed) -> {'image': uint8 [S, S, C]} (+ 'erase': int32 [4]) for the input.* keys:
  the train op (`train_augment`), RandAugment (`randaugment`, on [0, 255] values), in timm's
  order; the images cross to the devices as uint8 (a quarter of float32's bytes), where the
  train step normalises them (`mean`, `std`) and fills the random-erasing box (`random_erasing`,
  drawn here: `augment.random_erasing_box`) with noise in normalised units.

  The later stages draw from seeds folded from the example's seed (fold_in 1 and 2), so the
  crop op sees the same seed whichever stages are on.

  With `strong_augment` set, the row also holds 'image_strong', uint8 [S, S, C]: a second view
  of the same image, its own crop (fold_in 3) then the strong augmentation (fold_in 4), as
  MLKD's data code draws a second, independent transform (docs/design.md#two-views).
  """
  crop = train_op(inp.train_augment, image_size=inp.image_size, crop_padding=inp.crop_padding)
  spec = augment.parse_randaugment(inp.randaugment) if inp.randaugment else None
  fill = augment.fill_value(inp.mean)
  erase = float(inp.random_erasing)
  strong = augment.parse_strong_augment(inp.get('strong_augment', ''))
  fold = tf.random.experimental.stateless_fold_in

  def transform(image, seed):
    image_in = image
    image = crop(image, seed)
    if spec is not None:
      image = augment.rand_augment(image, tf.random.experimental.stateless_fold_in(seed, 1),
                                   spec, fill)
    out = {'image': to_pixels(image)}
    if erase > 0:
      out['erase'] = augment.random_erasing_box(
          tf.shape(image)[0], tf.shape(image)[1],
          tf.random.experimental.stateless_fold_in(seed, 2), probability=erase)
    if strong is not None:
      view = crop(image_in, fold(seed, 3))
      out['image_strong'] = to_pixels(augment.strong_augment(view, fold(seed, 4), strong, fill))
    return out
  return transform
