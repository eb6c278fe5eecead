"""timm's RandAugment and RandomErasing (the DeiT / OFA-KD recipe), and FixMatch's RandAugment
with Cutout (MLKD's strong view), as stateless TensorFlow ops.

The semantics are timm 1.0's (`timm/data/auto_augment.py`, `timm/data/random_erasing.py`). timm
runs RandAugment on PIL uint8 images, so every RandAugment op here takes and returns float32
[H, W, C] (C = 1 or 3) holding integers in [0, 255] and rounds where PIL does. Random erasing
runs after normalisation, as in timm. All randomness comes from a stateless seed (int [2]), so
an example's augmentation is a pure function of (seed, epoch, position in the epoch).
"""

import dataclasses
import functools
import math
import re

import tensorflow as tf

from kdjax.errors import KdjaxError

LEVEL_DENOM = 10.0  # timm's magnitude scale: an op's strength is magnitude / 10 of its maximum

# timm's _RAND_TRANSFORMS ('inc0') and _RAND_INCREASING_TRANSFORMS ('inc1'), in timm's order.
RAND_TRANSFORMS = ('AutoContrast', 'Equalize', 'Invert', 'Rotate', 'Posterize', 'Solarize',
                   'SolarizeAdd', 'Color', 'Contrast', 'Brightness', 'Sharpness', 'ShearX',
                   'ShearY', 'TranslateXRel', 'TranslateYRel')
RAND_INCREASING_TRANSFORMS = (
    'AutoContrast', 'Equalize', 'Invert', 'Rotate', 'PosterizeIncreasing', 'SolarizeIncreasing',
    'SolarizeAdd', 'ColorIncreasing', 'ContrastIncreasing', 'BrightnessIncreasing',
    'SharpnessIncreasing', 'ShearX', 'ShearY', 'TranslateXRel', 'TranslateYRel')

RANDAUGMENT_FORM = ('rand-m<M>[-n<N>][-mstd<S>][-inc<0|1>][-p<P>] (timm\'s form, e.g. '
                    'rand-m9-mstd0.5-inc1)')


# --- pixel ops (PIL's ImageOps / ImageEnhance on uint8 values) ---------------------------------


def _channels_first(image):
  """[H, W, C] -> int32 [C, H * W]."""
  return tf.transpose(tf.reshape(tf.cast(image, tf.int32), [-1, image.shape[-1]]))


def _apply_lut(image, lut):
  """out[..., c] = lut[c, image[..., c]] for an integer-valued image and lut int [C, 256]."""
  out = tf.gather(lut, _channels_first(image), batch_dims=1)
  return tf.reshape(tf.transpose(tf.cast(out, tf.float32)), tf.shape(image))


def _histogram(image):
  """int32 [C, 256]: how many pixels of each channel have each value."""
  return tf.math.bincount(_channels_first(image), minlength=256, maxlength=256, axis=-1)


def auto_contrast(image):
  """PIL's ImageOps.autocontrast: per channel, lut(v) = clip(int((v - lo) * 255 / (hi - lo)))
  with lo, hi the channel's smallest and largest value; identity where hi <= lo."""
  hist = _histogram(image)
  values = tf.range(256)
  lo = tf.reduce_min(tf.where(hist > 0, values, 256), axis=1, keepdims=True)
  hi = tf.reduce_max(tf.where(hist > 0, values, -1), axis=1, keepdims=True)
  scale = 255.0 / tf.cast(tf.maximum(hi - lo, 1), tf.float64)  # float64: PIL computes in double
  stretched = tf.cast(tf.cast(values, tf.float64) * scale - tf.cast(lo, tf.float64) * scale,
                      tf.int32)  # int() truncates toward zero, as the cast does
  lut = tf.where(hi > lo, tf.clip_by_value(stretched, 0, 255), values)
  return _apply_lut(image, lut)


def equalize(image):
  """PIL's ImageOps.equalize: per channel, with h the histogram and h_last the count of the
  largest value present, step = (sum(h) - h_last) // 255 and
  lut(v) = (step // 2 + sum(h[:v])) // step; identity where step = 0."""
  hist = _histogram(image)
  last = tf.reduce_max(tf.where(hist > 0, tf.range(256), 0), axis=1)
  h_last = tf.gather(hist, last, batch_dims=1)
  step = ((tf.reduce_sum(hist, axis=1) - h_last) // 255)[:, None]
  lut = (step // 2 + tf.cumsum(hist, axis=1, exclusive=True)) // tf.maximum(step, 1)
  lut = tf.where(step > 0, tf.minimum(lut, 255), tf.range(256))  # PIL's point() clips at 255
  return _apply_lut(image, lut)


def invert(image):
  return 255.0 - image


def posterize(image, bits):
  """Keeps the `bits` most significant bits: floor(v / 2^(8 - bits)) * 2^(8 - bits)."""
  quantum = tf.pow(2.0, 8.0 - tf.cast(tf.minimum(bits, 8), tf.float32))
  return tf.floor(image / quantum) * quantum


def solarize(image, threshold):
  """v < threshold: v, else 255 - v."""
  return tf.where(image < tf.cast(threshold, tf.float32), image, 255.0 - image)


def solarize_add(image, add, threshold=128):
  """v < threshold: min(255, v + add), else v."""
  added = tf.minimum(image + tf.cast(add, tf.float32), 255.0)
  return tf.where(image < tf.cast(threshold, tf.float32), added, image)


def _blend(degenerate, image, factor):
  """PIL's Image.blend(degenerate, image, factor): trunc(clip(d + factor * (v - d), 0, 255)),
  in float32 as PIL computes it."""
  return tf.floor(tf.clip_by_value(degenerate + factor * (image - degenerate), 0.0, 255.0))


def _grayscale(image):
  """PIL's RGB -> L: (19595 R + 38470 G + 7471 B + 2^15) >> 16; a 1-channel image is its own."""
  if image.shape[-1] == 1:
    return image
  rgb = tf.cast(image, tf.int32)
  luma = tf.bitwise.right_shift(
      rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000, 16)
  return tf.cast(luma, tf.float32)[..., None]


def color(image, factor):
  """PIL's ImageEnhance.Color: blend of the grey image and the image."""
  return _blend(tf.broadcast_to(_grayscale(image), tf.shape(image)), image, factor)


def contrast(image, factor):
  """PIL's ImageEnhance.Contrast: blend of a flat image at the grey mean, int(mean + 0.5)."""
  mean = tf.floor(tf.reduce_mean(tf.cast(_grayscale(image), tf.float64)) + 0.5)
  return _blend(tf.cast(mean, tf.float32) * tf.ones_like(image), image, factor)


def brightness(image, factor):
  """PIL's ImageEnhance.Brightness: blend of black and the image."""
  return _blend(tf.zeros_like(image), image, factor)


def sharpness(image, factor):
  """PIL's ImageEnhance.Sharpness: blend of the SMOOTH-filtered image (3x3 kernel
  [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13 inside, border pixels unchanged, rounded) and the image."""
  channels = image.shape[-1]
  kernel = tf.constant([[1., 1., 1.], [1., 5., 1.], [1., 1., 1.]]) / 13.0
  kernel = tf.tile(kernel[:, :, None, None], [1, 1, channels, 1])
  inner = tf.nn.depthwise_conv2d(image[None], kernel, [1, 1, 1, 1], 'VALID')[0]
  inner = tf.clip_by_value(tf.round(inner), 0.0, 255.0)
  smooth = tf.concat([image[:1], tf.concat([image[1:-1, :1], inner, image[1:-1, -1:]], axis=1),
                      image[-1:]], axis=0)
  return _blend(smooth, image, factor)


# --- geometric ops (PIL's Image.transform(AFFINE), bilinear, constant fill) -------------------


def _affine(image, matrix, fill, interpolation='BILINEAR'):
  """PIL's Image.transform(size, AFFINE, (a, b, c, d, e, f), BILINEAR, fillcolor=fill).

  Output pixel (x, y) reads the input at (a x' + b y' + c, d x' + e y' + f) where
  (x', y') = (x + 0.5, y + 0.5) (PIL puts pixel centres at +0.5), interpolating bilinearly
  with the neighbours clamped to the image; where that point lies outside the image the output
  is `fill` (float32 [C]). Values are then truncated to integers, as PIL stores uint8.
  `interpolation='NEAREST'` reads the nearest pixel instead (PIL's default resampling, which
  FixMatch's ops use).
  """
  a, b, c, d, e, f = [tf.cast(v, tf.float32) for v in matrix]
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  # The same map in TF's convention (pixel centres at integers).
  transform = tf.stack([a, b, c + (a + b - 1) / 2, d, e, f + (d + e - 1) / 2, 0.0, 0.0])
  moved = tf.raw_ops.ImageProjectiveTransformV3(
      images=image[None], transforms=transform[None], output_shape=tf.stack([height, width]),
      fill_value=0.0, interpolation=interpolation, fill_mode='NEAREST')[0]
  ys, xs = tf.meshgrid(tf.range(tf.cast(height, tf.float32)) + 0.5,
                       tf.range(tf.cast(width, tf.float32)) + 0.5, indexing='ij')
  x_in, y_in = a * xs + b * ys + c, d * xs + e * ys + f
  inside = ((x_in >= 0) & (x_in < tf.cast(width, tf.float32)) &
            (y_in >= 0) & (y_in < tf.cast(height, tf.float32)))
  return tf.where(inside[..., None], tf.floor(moved), fill)


def rotate(image, degrees, fill, interpolation='BILINEAR'):
  """PIL's Image.rotate(degrees): counter-clockwise about the image centre (w / 2, h / 2)."""
  angle = -tf.cast(degrees, tf.float32) * (math.pi / 180.0)
  cos, sin = tf.cos(angle), tf.sin(angle)
  cx = tf.cast(tf.shape(image)[1], tf.float32) / 2
  cy = tf.cast(tf.shape(image)[0], tf.float32) / 2
  matrix = (cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy)
  return _affine(image, matrix, fill, interpolation)


def shear_x(image, factor, fill):
  return _affine(image, (1.0, factor, 0.0, 0.0, 1.0, 0.0), fill)


def shear_y(image, factor, fill):
  return _affine(image, (1.0, 0.0, 0.0, factor, 1.0, 0.0), fill)


def translate_x_rel(image, fraction, fill):
  """Reads the input `fraction` x width pixels to the right (the content moves left for > 0)."""
  pixels = tf.cast(fraction, tf.float32) * tf.cast(tf.shape(image)[1], tf.float32)
  return _affine(image, (1.0, 0.0, pixels, 0.0, 1.0, 0.0), fill)


def translate_y_rel(image, fraction, fill):
  pixels = tf.cast(fraction, tf.float32) * tf.cast(tf.shape(image)[0], tf.float32)
  return _affine(image, (1.0, 0.0, 0.0, 0.0, 1.0, pixels), fill)


# --- timm's level functions: magnitude (0..10) -> the op's argument ----------------------------


def _signed(value, negate):
  return tf.where(negate, -value, value)


def _int(value):
  return tf.cast(tf.floor(value), tf.int32)  # int() of a non-negative float


def _enhance(m, _):
  return m / LEVEL_DENOM * 1.8 + 0.1


def _enhance_increasing(m, negate):
  return tf.maximum(0.1, 1.0 + _signed(m / LEVEL_DENOM * 0.9, negate))


def _posterize_bits(m, _):
  return _int(m / LEVEL_DENOM * 4)


def _solarize_threshold(m, _):
  return tf.minimum(256, _int(m / LEVEL_DENOM * 256))


# name -> (op(image, *args, fill), level(magnitude, negate) -> the op's argument or None)
OPS = {
    'AutoContrast': (lambda x, fill: auto_contrast(x), None),
    'Equalize': (lambda x, fill: equalize(x), None),
    'Invert': (lambda x, fill: invert(x), None),
    'Rotate': (rotate, lambda m, neg: _signed(m / LEVEL_DENOM * 30.0, neg)),
    'Posterize': (lambda x, a, fill: posterize(x, a), _posterize_bits),
    'PosterizeIncreasing': (lambda x, a, fill: posterize(x, a),
                            lambda m, neg: 4 - _posterize_bits(m, neg)),
    'Solarize': (lambda x, a, fill: solarize(x, a), _solarize_threshold),
    'SolarizeIncreasing': (lambda x, a, fill: solarize(x, a),
                           lambda m, neg: 256 - _solarize_threshold(m, neg)),
    'SolarizeAdd': (lambda x, a, fill: solarize_add(x, a),
                    lambda m, _: tf.minimum(128, _int(m / LEVEL_DENOM * 110))),
    'Color': (lambda x, a, fill: color(x, a), _enhance),
    'ColorIncreasing': (lambda x, a, fill: color(x, a), _enhance_increasing),
    'Contrast': (lambda x, a, fill: contrast(x, a), _enhance),
    'ContrastIncreasing': (lambda x, a, fill: contrast(x, a), _enhance_increasing),
    'Brightness': (lambda x, a, fill: brightness(x, a), _enhance),
    'BrightnessIncreasing': (lambda x, a, fill: brightness(x, a), _enhance_increasing),
    'Sharpness': (lambda x, a, fill: sharpness(x, a), _enhance),
    'SharpnessIncreasing': (lambda x, a, fill: sharpness(x, a), _enhance_increasing),
    'ShearX': (shear_x, lambda m, neg: _signed(m / LEVEL_DENOM * 0.3, neg)),
    'ShearY': (shear_y, lambda m, neg: _signed(m / LEVEL_DENOM * 0.3, neg)),
    'TranslateXRel': (translate_x_rel, lambda m, neg: _signed(m / LEVEL_DENOM * 0.45, neg)),
    'TranslateYRel': (translate_y_rel, lambda m, neg: _signed(m / LEVEL_DENOM * 0.45, neg)),
}


def apply_op(name, image, magnitude, negate, fill):
  """timm's AugmentOp `name` at `magnitude` (float, 0..10) with sign flag `negate` (bool)."""
  op, level = OPS[name]
  if level is None:
    return op(image, fill=fill)
  return op(image, level(tf.cast(magnitude, tf.float32), negate), fill=fill)


# --- RandAugment ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RandAugment:
  """timm's rand_augment_transform settings (defaults: timm's)."""
  magnitude: int = 10         # m: 0..10 (larger is clipped to 10)
  num_layers: int = 2         # n: ops per image, drawn uniformly with replacement
  magnitude_std: float = 0.0  # mstd: gaussian noise on the magnitude per op; > 100: U(0, m)
  increasing: bool = False    # inc1: the 'increasing' op set
  prob: float = 0.5           # p: each drawn op is applied with this probability

  @property
  def ops(self):
    return RAND_INCREASING_TRANSFORMS if self.increasing else RAND_TRANSFORMS


def parse_randaugment(text, key='input.randaugment'):
  """timm's config string 'rand-m9-mstd0.5-inc1' -> RandAugment; sections in any order."""
  parts = text.split('-')
  if parts[0] != 'rand':
    raise KdjaxError(f"{key}='{text}' is not a RandAugment string; use {RANDAUGMENT_FORM}")
  values = {}
  for part in parts[1:]:
    match = re.fullmatch(r'(mstd|inc|m|n|p)(\d+(?:\.\d+)?)', part)
    if match is None or match[1] in values:
      raise KdjaxError(f"{key}='{text}': bad or repeated section '{part}'; use {RANDAUGMENT_FORM}")
    values[match[1]] = float(match[2])
  for name in ('m', 'n', 'inc'):
    if name in values and not values[name].is_integer():
      raise KdjaxError(f"{key}='{text}': {name} must be an integer; use {RANDAUGMENT_FORM}")
  if values.get('inc', 0) not in (0, 1) or values.get('n', 2) < 1 or values.get('p', 0) > 1:
    raise KdjaxError(f"{key}='{text}': need inc 0 or 1, n >= 1 and p <= 1; use {RANDAUGMENT_FORM}")
  return RandAugment(magnitude=int(values.get('m', 10)), num_layers=int(values.get('n', 2)),
                     magnitude_std=values.get('mstd', 0.0), increasing=bool(values.get('inc', 0)),
                     prob=values.get('p', 0.5))


def fill_value(mean):
  """timm's fill for the geometric ops: img_mean = min(255, round(255 * mean)) per channel
  (create_transform's hparams; (124, 116, 104) for the ImageNet mean, 128 for mean 0.5)."""
  return tuple(float(min(255, round(255 * m))) for m in mean)


def _magnitude(spec, seed):
  """timm's AugmentOp magnitude: m, or m + mstd * N(0, 1), or U(0, m) when mstd > 100;
  clipped to [0, 10]."""
  m = float(spec.magnitude)
  if spec.magnitude_std > 100:
    m = tf.random.stateless_uniform([], seed, 0.0, m)
  elif spec.magnitude_std > 0:
    m = m + spec.magnitude_std * tf.random.stateless_normal([], seed)
  return tf.clip_by_value(tf.cast(m, tf.float32), 0.0, LEVEL_DENOM)


def rand_augment(image, seed, spec: RandAugment, fill):
  """timm's RandAugment on a float32 [H, W, C] image in [0, 255] (rounded first: timm's input is
  uint8): `num_layers` times, draw one op uniformly from `spec.ops` and apply it with probability
  `prob`, at a magnitude drawn per op, with a random sign for the signed ops (negate when
  u > 0.5). Every draw comes from `seed` (int [2]); `fill` is float [C]. Returns the same shape,
  integers in [0, 255]."""
  fill = tf.constant(fill, tf.float32)
  image = tf.clip_by_value(tf.round(image), 0.0, 255.0)
  names = spec.ops
  for layer in range(spec.num_layers):
    seeds = tf.random.experimental.stateless_split(
        tf.random.experimental.stateless_fold_in(seed, layer), 4)
    which = tf.random.stateless_uniform([], seeds[0], 0, len(names), dtype=tf.int32)
    applied = tf.random.stateless_uniform([], seeds[1]) < spec.prob
    magnitude = _magnitude(spec, seeds[2])
    negate = tf.random.stateless_uniform([], seeds[3]) > 0.5
    branches = [functools.partial(apply_op, name, image, magnitude, negate, fill)
                for name in names]
    image = tf.switch_case(tf.where(applied, which, len(names)),
                           branches + [lambda x=image: x])
  return image


# --- random erasing ---------------------------------------------------------------------------


def random_erasing_box(height, width, seed, *, probability, min_area=0.02, max_area=1 / 3,
                       min_aspect=0.3, attempts=10):
  """The rectangle timm's RandomErasing(probability, mode='pixel', count 1) erases in an
  [height, width] image: with `probability`, up to `attempts` tries of area ~ U(min_area,
  max_area) * H W and aspect h / w ~ exp(U(log min_aspect, -log min_aspect)),
  h = round(sqrt(area * aspect)), w = round(sqrt(area / aspect)); the first with h < H and
  w < W is placed uniformly (top in 0..H - h, left in 0..W - w). Every draw comes from `seed`
  (int [2]). Returns int32 [4] = (top, left, h, w), all 0 when nothing is erased.

  The host draws the box; the device fills it with N(0, 1) noise in normalised units
  (`kdjax.data.on_device.erase`), so the images can cross to the devices as uint8."""
  seeds = tf.random.experimental.stateless_split(seed, 5)
  h_f, w_f = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
  area = tf.random.stateless_uniform([attempts], seeds[0], min_area, max_area) * h_f * w_f
  aspect = tf.exp(tf.random.stateless_uniform([attempts], seeds[1], math.log(min_aspect),
                                              -math.log(min_aspect)))
  hs, ws = tf.round(tf.sqrt(area * aspect)), tf.round(tf.sqrt(area / aspect))
  fits = (hs < h_f) & (ws < w_f)
  first = tf.argmax(tf.cast(fits, tf.int32))  # the first attempt that fits (0 if none does)
  h, w = hs[first], ws[first]
  top = tf.floor(tf.random.stateless_uniform([], seeds[2]) * (h_f - h + 1))
  left = tf.floor(tf.random.stateless_uniform([], seeds[3]) * (w_f - w + 1))
  erase = (tf.random.stateless_uniform([], seeds[4]) < probability) & tf.reduce_any(fits)
  box = tf.cast(tf.stack([top, left, h, w]), tf.int32)
  return tf.where(erase, box, tf.zeros_like(box))


# --- FixMatch's RandAugment + Cutout (MLKD's strong view) ---------------------------------------

FIXMATCH = 'fixmatch'
# FixMatch's op list as MLKD's dataset code has it: (name, low, high); each drawn op gets a value
# uniform in [low, high].
FIXMATCH_OPS = (('AutoContrast', 0, 1), ('Brightness', 0.05, 0.95), ('Color', 0.05, 0.95),
                ('Contrast', 0.05, 0.95), ('Equalize', 0, 1), ('Identity', 0, 1),
                ('Posterize', 4, 8), ('Rotate', -30, 30), ('Sharpness', 0.05, 0.95),
                ('ShearX', -0.3, 0.3), ('ShearY', -0.3, 0.3), ('Solarize', 0, 256),
                ('TranslateX', -0.3, 0.3), ('TranslateY', -0.3, 0.3))
FIXMATCH_CUTOUT_FILL = (125.0, 123.0, 114.0)
STRONG_AUGMENT_FORM = (f"'' (off), '{FIXMATCH}' (FixMatch's RandAugment(2) + Cutout, MLKD's "
                       f'strong view) or a timm RandAugment string, {RANDAUGMENT_FORM}')


def _fixmatch_op(name, image, v):
  """One FixMatch op at value `v` (PIL semantics; geometric ops nearest, filled with black)."""
  black = tf.zeros([image.shape[-1]], tf.float32)
  width = tf.cast(tf.shape(image)[1], tf.float32)
  height = tf.cast(tf.shape(image)[0], tf.float32)
  ops = {
      'AutoContrast': lambda: auto_contrast(image),
      'Brightness': lambda: brightness(image, v),
      'Color': lambda: color(image, v),
      'Contrast': lambda: contrast(image, v),
      'Equalize': lambda: equalize(image),
      'Identity': lambda: image,
      'Posterize': lambda: posterize(image, tf.maximum(1, _int(v))),
      'Rotate': lambda: rotate(image, v, black, 'NEAREST'),  # PIL's default resampling
      'Sharpness': lambda: sharpness(image, v),
      'ShearX': lambda: _affine(image, (1.0, v, 0.0, 0.0, 1.0, 0.0), black, 'NEAREST'),
      'ShearY': lambda: _affine(image, (1.0, 0.0, 0.0, v, 1.0, 0.0), black, 'NEAREST'),
      'Solarize': lambda: solarize(image, v),
      'TranslateX': lambda: _affine(image, (1.0, 0.0, v * width, 0.0, 1.0, 0.0), black, 'NEAREST'),
      'TranslateY': lambda: _affine(image, (1.0, 0.0, 0.0, 0.0, 1.0, v * height), black,
                                    'NEAREST'),
  }
  return ops[name]()


def cutout(image, seed, fill=FIXMATCH_CUTOUT_FILL):
  """FixMatch's Cutout as MLKD's dataset code runs it: side v = U(0, 0.5) * width; a centre
  (x, y) uniform in the image; corners x0 = int(max(0, x - v / 2)), x1 = min(W, x0 + v) (y the
  same, with the height); PIL's rectangle fills x0..x1 and y0..y1 inclusive (float corners
  truncated) with `fill` (its first C values; a 1-channel image gets their rounded mean)."""
  seeds = tf.random.experimental.stateless_split(seed, 3)
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  h_f, w_f = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
  v = tf.random.stateless_uniform([], seeds[0], 0.0, 0.5) * w_f
  x0 = tf.floor(tf.maximum(0.0, tf.random.stateless_uniform([], seeds[1], 0.0, w_f) - v / 2))
  y0 = tf.floor(tf.maximum(0.0, tf.random.stateless_uniform([], seeds[2], 0.0, h_f) - v / 2))
  x1, y1 = tf.floor(tf.minimum(w_f, x0 + v)), tf.floor(tf.minimum(h_f, y0 + v))
  ys = tf.cast(tf.range(height), tf.float32)[:, None]
  xs = tf.cast(tf.range(width), tf.float32)[None, :]
  inside = (ys >= y0) & (ys <= y1) & (xs >= x0) & (xs <= x1) & (v > 0)
  channels = image.shape[-1]
  values = fill[:channels] if channels == 3 else (float(round(sum(fill) / len(fill))),) * channels
  return tf.where(inside[..., None], tf.constant(values, tf.float32), image)


def fixmatch_augment(image, seed, num_ops=2):
  """FixMatch's RandAugment(n=2) then Cutout, as MLKD's strong view applies them: `num_ops` ops
  drawn uniformly with replacement from FIXMATCH_OPS, each always applied at a value uniform in
  its range; then `cutout`. `image` float32 [H, W, C] in [0, 255] (rounded first); every draw
  comes from `seed` (int [2]). Returns the same shape, integers in [0, 255]."""
  image = tf.clip_by_value(tf.round(image), 0.0, 255.0)
  for layer in range(num_ops):
    seeds = tf.random.experimental.stateless_split(
        tf.random.experimental.stateless_fold_in(seed, layer), 2)
    which = tf.random.stateless_uniform([], seeds[0], 0, len(FIXMATCH_OPS), dtype=tf.int32)
    u = tf.random.stateless_uniform([], seeds[1])
    branches = [functools.partial(_fixmatch_op, name, image, low + (high - low) * u)
                for name, low, high in FIXMATCH_OPS]
    image = tf.switch_case(which, branches)
  return cutout(image, tf.random.experimental.stateless_fold_in(seed, num_ops))


def parse_strong_augment(text, key='input.strong_augment'):
  """input.strong_augment -> None (off), FIXMATCH, or a timm RandAugment."""
  if not text:
    return None
  if text == FIXMATCH:
    return FIXMATCH
  if text.startswith('rand'):
    return parse_randaugment(text, key)
  raise KdjaxError(f"{key}='{text}' is not known; use {STRONG_AUGMENT_FORM}")


def strong_augment(image, seed, spec, fill):
  """The strong view's augmentation `spec` (from parse_strong_augment, not None) of a float32
  [H, W, C] image in [0, 255]; `fill`: timm RandAugment's fill (unused by FixMatch's ops)."""
  if spec == FIXMATCH:
    return fixmatch_augment(image, seed)
  return rand_augment(image, seed, spec, fill)
