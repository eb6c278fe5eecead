"""Per-example preprocessing ops (tf.data side), chosen by name in the config.

Train ops take a stateless seed so that an example's augmentation depends only on
(seed, epoch, position): a resumed run sees exactly the batches an uninterrupted run would.
"""

import tensorflow as tf

from kdjax.errors import KdjaxError


def _random_crop(image, seed, *, size, pad):
  """Zero-pad by `pad`, then a random `size` x `size` crop (a random shift of up to `pad`)."""
  image = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
  return tf.image.stateless_random_crop(image, [size, size, image.shape[-1]], seed=seed)


def _random_crop_flip(image, seed, *, size, pad):
  """CIFAR augmentation: zero-pad by `pad`, random `size` crop, random horizontal flip."""
  seeds = tf.random.experimental.stateless_split(seed, 2)
  image = _random_crop(image, seeds[0], size=size, pad=pad)
  return tf.image.stateless_random_flip_left_right(image, seed=seeds[1])


def _inception_crop_flip(image_bytes, seed, *, size, area_range=(0.08, 1.0)):
  """ImageNet training augmentation: fused JPEG decode + random-resized crop + flip."""
  seeds = tf.random.experimental.stateless_split(seed, 2)
  shape = tf.image.extract_jpeg_shape(image_bytes)
  begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
      shape, bounding_boxes=tf.zeros([1, 0, 4]), seed=seeds[0],
      min_object_covered=0.0, aspect_ratio_range=(3 / 4, 4 / 3), area_range=area_range,
      max_attempts=10, use_image_if_no_bounding_boxes=True)
  window = tf.stack([begin[0], begin[1], crop_size[0], crop_size[1]])
  image = tf.image.decode_and_crop_jpeg(image_bytes, window, channels=3)
  image = tf.image.resize(image, [size, size], method='bilinear', antialias=False)
  return tf.image.stateless_random_flip_left_right(image, seed=seeds[1])


def _resize_center_crop(image_bytes, *, size, resize_size):
  """ImageNet evaluation: resize the shorter side to `resize_size`, centre-crop `size`."""
  image = tf.io.decode_jpeg(image_bytes, channels=3)
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  scale = resize_size / tf.reduce_min(shape)
  new_shape = tf.cast(tf.round(shape * scale), tf.int32)
  image = tf.image.resize(image, new_shape, method='bilinear', antialias=True)
  top = (new_shape[0] - size) // 2
  left = (new_shape[1] - size) // 2
  return tf.image.crop_to_bounding_box(image, top, left, size, size)


TRAIN_OPS = ('none', 'crop', 'crop_flip', 'inception_crop_flip')
EVAL_OPS = ('none', 'resize_center_crop')


def train_op(name, *, image_size, crop_padding=4):
  """Returns f(encoded_or_decoded_image, seed) -> float32 [H, W, C] in [0, 255]."""
  if name == 'none':
    return lambda image, seed: tf.cast(image, tf.float32)
  if name == 'crop':
    return lambda image, seed: tf.cast(
        _random_crop(image, seed, size=image_size, pad=crop_padding), tf.float32)
  if name == 'crop_flip':
    return lambda image, seed: tf.cast(
        _random_crop_flip(image, seed, size=image_size, pad=crop_padding), tf.float32)
  if name == 'inception_crop_flip':
    return lambda image, seed: _inception_crop_flip(image, seed, size=image_size)
  raise KdjaxError(f"unknown train augmentation '{name}' (input.train_augment); "
                   f'valid: {", ".join(TRAIN_OPS)}')


def eval_op(name, *, image_size, resize_size):
  """Returns f(encoded_or_decoded_image) -> float32 [H, W, C] in [0, 255]."""
  if name == 'none':
    return lambda image: tf.cast(image, tf.float32)
  if name == 'resize_center_crop':
    return lambda image: _resize_center_crop(image, size=image_size, resize_size=resize_size)
  raise KdjaxError(f"unknown eval preprocessing '{name}' (input.eval_preprocess); "
                   f'valid: {", ".join(EVAL_OPS)}')


def needs_encoded_images(*op_names):
  """The fused-decode ops read the JPEG bytes; the others take decoded images."""
  return any(n in ('inception_crop_flip', 'resize_center_crop') for n in op_names)


def normalize(image, mean, std):
  """(image / 255 - mean) / std, per channel."""
  return (image / 255.0 - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)
