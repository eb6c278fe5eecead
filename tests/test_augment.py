"""timm's RandAugment, random erasing and the decoded-image crop ops (kdjax/data/augment.py,
kdjax/data/preprocess.py): every op against NumPy (and PIL, timm's backend, where installed),
the whole transforms' determinism, and the augmented pipelines' exact resume.

Data: fixed random images, the embedded digits and a small fake cifar100 (no network).
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from kdjax import recipes
from kdjax.data import augment
from kdjax.data import input_pipeline
from kdjax.data import on_device
from kdjax.data import preprocess
from kdjax.errors import KdjaxError

FILL = (124.0, 116.0, 104.0)  # timm's img_mean for the ImageNet mean


@pytest.fixture(autouse=True)
def _no_gcs(monkeypatch):
  from tensorflow_datasets.core.utils import gcs_utils  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(gcs_utils, '_is_gcs_disabled', True)


@pytest.fixture(scope='module')
def rgb():
  """uint8 [20, 24, 3]: values 30..219 in R and B (so AutoContrast has work), 0..255 in G."""
  rng = np.random.default_rng(0)
  image = rng.integers(30, 220, (20, 24, 3)).astype(np.uint8)
  image[..., 1] = rng.integers(0, 256, (20, 24))
  return image


def run(fn, image, *args, **kwargs):
  out = fn(tf.constant(image, tf.float32), *args, **kwargs).numpy()
  assert out.shape == image.shape and out.dtype == np.float32
  return out


# --- single ops against NumPy -----------------------------------------------------------------


def test_invert_posterize_solarize(rgb):
  x = rgb.astype(np.int64)
  np.testing.assert_array_equal(run(augment.invert, rgb), 255 - x)
  np.testing.assert_array_equal(run(augment.posterize, rgb, 2), x & 0b11000000)
  np.testing.assert_array_equal(run(augment.posterize, rgb, 8), x)
  np.testing.assert_array_equal(run(augment.posterize, rgb, 0), 0)  # PIL < 13: black
  np.testing.assert_array_equal(run(augment.solarize, rgb, 100), np.where(x < 100, x, 255 - x))
  np.testing.assert_array_equal(run(augment.solarize, rgb, 256), x)
  np.testing.assert_array_equal(run(augment.solarize_add, rgb, 50),
                                np.where(x < 128, np.minimum(x + 50, 255), x))


def test_auto_contrast_stretches_each_channel(rgb):
  x = rgb.astype(np.int64)
  lo, hi = x.min(axis=(0, 1)), x.max(axis=(0, 1))
  scale = 255.0 / (hi - lo)
  # PIL's formula and order, in double: int(v * scale + (-lo * scale)); the top value may land
  # on 254.99999..., which int() makes 254, as in PIL.
  want = np.clip((x * scale + (-lo * scale)).astype(np.int64), 0, 255)
  got = run(augment.auto_contrast, rgb)
  np.testing.assert_array_equal(got, want)
  assert got[..., 0].min() == 0 and got[..., 0].max() >= 254
  flat = np.full((4, 4, 1), 77, np.uint8)  # one value: unchanged
  np.testing.assert_array_equal(run(augment.auto_contrast, flat), flat)


def _equalize_numpy(channel):
  """PIL's ImageOps.equalize for one uint8 channel, written out."""
  hist = np.bincount(channel.ravel(), minlength=256)
  present = hist[hist > 0]
  step = (present.sum() - present[-1]) // 255
  if len(present) <= 1 or step == 0:
    return channel.astype(np.int64)
  lut = np.minimum((step // 2 + np.concatenate([[0], np.cumsum(hist)[:-1]])) // step, 255)
  return lut[channel]


def test_equalize(rgb):
  big = np.tile(rgb, (4, 4, 1))  # 80x96: enough pixels for step > 0
  want = np.stack([_equalize_numpy(big[..., c]) for c in range(3)], axis=-1)
  np.testing.assert_array_equal(run(augment.equalize, big), want)
  small = rgb[:2, :2]  # 4 pixels: step 0, unchanged
  np.testing.assert_array_equal(run(augment.equalize, small), small)


def test_enhance_ops(rgb):
  x = rgb.astype(np.float32)
  np.testing.assert_array_equal(run(augment.brightness, rgb, 0.5), np.floor(x * np.float32(0.5)))
  np.testing.assert_array_equal(run(augment.brightness, rgb, 1.9),
                                np.floor(np.clip(x * np.float32(1.9), 0, 255)))
  for op in (augment.color, augment.contrast, augment.sharpness, augment.brightness):
    np.testing.assert_array_equal(run(op, rgb, 1.0), x)  # factor 1: the image
  gray = np.full_like(rgb, 100)
  np.testing.assert_array_equal(run(augment.color, gray, 0.1), gray)  # grey stays grey
  # Contrast 0: a flat image at the rounded mean of PIL's luma.
  luma = (x[..., 0] * 19595 + x[..., 1] * 38470 + x[..., 2] * 7471 + 0x8000) // 65536
  np.testing.assert_array_equal(run(augment.contrast, rgb, 0.0), np.floor(luma.mean() + 0.5))


def test_translate_by_a_known_amount():
  image = np.arange(64, dtype=np.uint8).reshape(8, 8, 1) * 3
  # 0.25 of 8 px = 2 px: output column x reads input column x + 2; the last two are fill.
  got = run(augment.translate_x_rel, image, 0.25, (128.0,))
  np.testing.assert_array_equal(got[:, :6], image[:, 2:])
  np.testing.assert_array_equal(got[:, 6:], 128)
  got = run(augment.translate_y_rel, image, -0.25, (128.0,))
  np.testing.assert_array_equal(got[2:], image[:6])
  np.testing.assert_array_equal(got[:2], 128)


def test_geometric_identities(rgb):
  np.testing.assert_array_equal(run(augment.rotate, rgb, 0.0, FILL), rgb)
  np.testing.assert_array_equal(run(augment.shear_x, rgb, 0.0, FILL), rgb)
  got = run(augment.shear_x, rgb, 0.3, FILL)  # rows move by 0.3 px per row: the bottom fills
  assert np.all(got[-1, -1] == FILL)


PIL_CASES = [
    ('auto_contrast', (), 'ImageOps.autocontrast(p)'),
    ('equalize', (), 'ImageOps.equalize(p)'),
    ('posterize', (3,), 'ImageOps.posterize(p, 3)'),
    ('solarize', (97,), 'ImageOps.solarize(p, 97)'),
    ('color', (0.37,), 'ImageEnhance.Color(p).enhance(0.37)'),
    ('color', (1.73,), 'ImageEnhance.Color(p).enhance(1.73)'),
    ('contrast', (0.37,), 'ImageEnhance.Contrast(p).enhance(0.37)'),
    ('contrast', (1.73,), 'ImageEnhance.Contrast(p).enhance(1.73)'),
    ('brightness', (1.55,), 'ImageEnhance.Brightness(p).enhance(1.55)'),
    ('sharpness', (0.1,), 'ImageEnhance.Sharpness(p).enhance(0.1)'),
    ('sharpness', (1.9,), 'ImageEnhance.Sharpness(p).enhance(1.9)'),
    ('rotate', (13.7, FILL), 'p.rotate(13.7, **kw)'),
    ('rotate', (-27.0, FILL), 'p.rotate(-27.0, **kw)'),
    ('shear_x', (-0.17, FILL), 'p.transform(p.size, Image.AFFINE, (1, -0.17, 0, 0, 1, 0), **kw)'),
    ('shear_y', (0.3, FILL), 'p.transform(p.size, Image.AFFINE, (1, 0, 0, 0.3, 1, 0), **kw)'),
    ('translate_x_rel', (0.405, FILL),
     'p.transform(p.size, Image.AFFINE, (1, 0, 0.405 * 24, 0, 1, 0), **kw)'),
    ('translate_y_rel', (-0.1234, FILL),
     'p.transform(p.size, Image.AFFINE, (1, 0, 0, 0, 1, -0.1234 * 20), **kw)'),
]


@pytest.mark.parametrize('name,args,pil_expr', PIL_CASES, ids=[c[2][:40] for c in PIL_CASES])
def test_ops_match_pil(rgb, name, args, pil_expr):
  """timm runs these ops through PIL: equal values, except float32 vs double coordinates in the
  affine ops (kdjax uses bilinear there; DeiT's timm config uses bicubic)."""
  pil = pytest.importorskip('PIL')
  from PIL import Image, ImageEnhance, ImageOps  # pylint: disable=g-import-not-at-top
  del pil
  p = Image.fromarray(rgb)
  kw = dict(resample=Image.BILINEAR, fillcolor=tuple(int(v) for v in FILL))
  want = np.asarray(eval(pil_expr, dict(p=p, kw=kw, Image=Image, ImageOps=ImageOps,  # pylint: disable=eval-used
                                        ImageEnhance=ImageEnhance)), np.int64)
  got = run(getattr(augment, name), rgb, *args).astype(np.int64)
  diff = np.abs(got - want)
  assert diff.max() <= 1 and (diff > 0).mean() <= 0.03, (diff.max(), (diff > 0).mean())
  if name not in ('rotate', 'shear_x', 'shear_y', 'translate_x_rel', 'translate_y_rel'):
    assert diff.max() == 0


# --- timm's level functions and the whole RandAugment -------------------------------------------


def test_timm_levels_at_magnitude_9():
  level = lambda name, negate=False: augment.OPS[name][1](tf.constant(9.0), tf.constant(negate))
  np.testing.assert_allclose(level('Rotate'), 27.0, rtol=1e-6)
  np.testing.assert_allclose(level('Rotate', True), -27.0, rtol=1e-6)
  assert int(level('PosterizeIncreasing')) == 4 - int(9 / 10 * 4) == 1
  assert int(level('SolarizeIncreasing')) == 256 - int(9 / 10 * 256) == 26
  assert int(level('SolarizeAdd')) == min(128, int(9 / 10 * 110)) == 99
  np.testing.assert_allclose(level('ColorIncreasing'), 1.81, rtol=1e-6)
  np.testing.assert_allclose(level('ContrastIncreasing', True), 0.19, rtol=1e-5)
  np.testing.assert_allclose(level('Sharpness'), 9 / 10 * 1.8 + 0.1, rtol=1e-6)
  np.testing.assert_allclose(level('ShearX', True), -0.27, rtol=1e-6)
  np.testing.assert_allclose(level('TranslateYRel'), 0.405, rtol=1e-6)
  assert int(augment.OPS['PosterizeIncreasing'][1](tf.constant(10.0), False)) == 0


@pytest.mark.parametrize('name', sorted(augment.OPS))
def test_every_op_keeps_shape_and_uint8_values(rgb, name):
  for magnitude, negate in ((9.0, False), (10.0, True), (0.0, False)):
    got = augment.apply_op(name, tf.constant(rgb, tf.float32), magnitude, negate,
                           tf.constant(FILL)).numpy()
    assert got.shape == rgb.shape
    assert got.min() >= 0 and got.max() <= 255 and np.all(got == np.round(got)), name


def test_parse_randaugment():
  assert augment.parse_randaugment('rand-m9-mstd0.5-inc1') == augment.RandAugment(
      magnitude=9, num_layers=2, magnitude_std=0.5, increasing=True, prob=0.5)
  assert augment.parse_randaugment('rand-inc0-n3-m7-p0.3') == augment.RandAugment(
      magnitude=7, num_layers=3, increasing=False, prob=0.3)
  assert augment.parse_randaugment('rand') == augment.RandAugment()
  assert augment.parse_randaugment('rand-m9-inc1').ops == augment.RAND_INCREASING_TRANSFORMS
  for bad in ('m9-inc1', 'rand-m9-x3', 'rand-m9.5', 'rand-inc2', 'rand-n0', 'rand-m9-m8',
              'rand-mstd', 'rand-p1.5', 'augmix-m5'):
    with pytest.raises(KdjaxError, match='rand-m<M>'):
      augment.parse_randaugment(bad)


def test_rand_augment_is_a_pure_function_of_the_seed(rgb):
  spec = augment.parse_randaugment('rand-m9-mstd0.5-inc1')
  image = tf.constant(rgb, tf.float32)
  outs = [augment.rand_augment(image, tf.constant([7, s], tf.int64), spec, FILL).numpy()
          for s in range(12)]
  again = augment.rand_augment(image, tf.constant([7, 0], tf.int64), spec, FILL).numpy()
  np.testing.assert_array_equal(again, outs[0])
  for out in outs:
    assert out.shape == rgb.shape and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 255 and np.all(out == np.round(out))
  distinct = {out.tobytes() for out in outs}
  assert len(distinct) >= 8, 'different seeds should mostly give different images'
  assert sum(np.array_equal(out, rgb) for out in outs) <= 5  # P(no op applied) = 1/4


# --- random erasing ---------------------------------------------------------------------------


@tf.function
def _boxes(size, seeds, probability):
  return tf.map_fn(lambda s: augment.random_erasing_box(size, size, s, probability=probability),
                   seeds, fn_output_signature=tf.int32)


def _erase_many(image, seeds, probability):
  """The host's boxes, filled on the device (kdjax/data/on_device.py), for each seed."""
  size = image.shape[0]
  boxes = _boxes(size, seeds, probability).numpy()
  images = jnp.broadcast_to(jnp.asarray(image), (len(boxes),) + tuple(image.shape))
  return np.asarray(on_device.erase(images, jnp.asarray(boxes), jax.random.key(0)))


def test_random_erasing_statistics():
  n, size = 400, 32
  image = np.full([size, size, 3], 5.0, np.float32)  # far from N(0, 1): erased pixels stand out
  seeds = tf.stack([tf.fill([n], 3), tf.range(n)], axis=1)
  out = _erase_many(image, seeds, 0.25)
  erased = out != 5.0
  per_image = erased.any(axis=(1, 2, 3))
  # Fraction of erased images: 0.25 +- 4 sigma (sigma = 0.022).
  assert abs(per_image.mean() - 0.25) < 0.087, per_image.mean()
  # The erased part is a rectangle through all channels, of 2%..1/3 of the image (rounding
  # of h and w moves the ends a little), with N(0, 1) values.
  areas = []
  for e in erased[per_image]:
    assert np.all(e == e[..., :1])
    rows, cols = np.nonzero(e[..., 0])
    h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    assert e[..., 0].sum() == h * w, 'not a rectangle'
    assert h < size and w < size
    areas.append(h * w / size**2)
  assert 0.01 < min(areas) and max(areas) < 0.4
  assert abs(np.mean(areas) - (0.02 + 1 / 3) / 2) < 0.04, np.mean(areas)
  noise = out[erased]
  assert abs(noise.mean()) < 0.05 and abs(noise.std() - 1) < 0.05
  np.testing.assert_array_equal(_erase_many(image, seeds, 0.0), 5.0)
  assert (_erase_many(image, seeds, 1.0) != 5.0).any(axis=(1, 2, 3)).all()


def test_normalisation_on_the_device_matches_the_host_formula():
  pixels = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, -1)
  mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
  got = np.asarray(on_device.normalize(jnp.asarray(pixels), mean, std))
  want = preprocess.normalize(tf.constant(pixels, tf.float32), mean, std).numpy()
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
  floats = jnp.ones((1, 2, 2, 3))
  assert on_device.normalize(floats, mean, std) is floats  # already normalised: unchanged


# --- random-resized crop and the bicubic eval op on decoded images ------------------------------


def test_random_resized_crop_flip_on_decoded_images(rgb):
  op = preprocess.train_op('random_resized_crop_flip', image_size=224)
  cifar = np.random.default_rng(1).integers(0, 256, (32, 32, 3)).astype(np.uint8)
  outs = [op(tf.constant(cifar), tf.constant([0, s], tf.int64)).numpy() for s in range(6)]
  for out in outs:
    assert out.shape == (224, 224, 3) and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 255 and np.all(out == np.round(out))
  np.testing.assert_array_equal(op(tf.constant(cifar), tf.constant([0, 0], tf.int64)), outs[0])
  assert len({o.tobytes() for o in outs}) == 6
  assert op(tf.constant(rgb), tf.constant([0, 0], tf.int64)).shape == (224, 224, 3)  # 20x24
  flat = np.full((32, 32, 3), 90, np.uint8)
  np.testing.assert_array_equal(op(tf.constant(flat), tf.constant([1, 2], tf.int64)), 90)
  # scale = ratio = 1 on a square image: the whole image, resized to itself, maybe flipped.
  view = preprocess.apply_window('random_resized_crop_flip', image_size=32)
  draw = preprocess._random_resized_window  # pylint: disable=protected-access
  whole = [view(tf.constant(cifar), draw(tf.constant(cifar), tf.constant([0, s], tf.int64),
                                         scale=(1.0, 1.0), ratio=(1.0, 1.0))).numpy()
           for s in range(8)]
  for out in whole:
    assert np.array_equal(out, cifar) or np.array_equal(out, cifar[:, ::-1])
  assert any(np.array_equal(out, cifar[:, ::-1]) for out in whole)


def test_bicubic_resize_center_crop_on_decoded_images():
  op = preprocess.eval_op('bicubic_resize_center_crop', image_size=224, resize_size=256)
  cifar = np.random.default_rng(2).integers(0, 256, (32, 32, 3)).astype(np.uint8)
  got = op(tf.constant(cifar)).numpy()
  want = tf.image.resize(tf.constant(cifar, tf.float32), [256, 256], 'bicubic',
                         antialias=True)[16:240, 16:240]
  np.testing.assert_array_equal(got, np.clip(np.round(want.numpy()), 0, 255))
  # 40 x 20 (portrait): the width becomes 16, the height int(16 * 40 / 20) = 32, crop 8 down.
  tall = np.random.default_rng(3).integers(0, 256, (40, 20, 1)).astype(np.uint8)
  op = preprocess.eval_op('bicubic_resize_center_crop', image_size=16, resize_size=16)
  want = tf.image.resize(tf.constant(tall, tf.float32), [32, 16], 'bicubic', antialias=True)
  np.testing.assert_array_equal(op(tf.constant(tall)).numpy(),
                                np.clip(np.round(want.numpy()[8:24]), 0, 255))


# --- pipelines: deterministic, resumable, checked at set-up ------------------------------------


def cifar_config(data_dir, **input_overrides):
  config = recipes.cifar100_mdistiller('smoke', student='resnet8x4')
  config.data_dir = data_dir
  config.input.update(input_overrides)
  return config


def take(config, builder, start_step, n, steps_per_epoch):
  it = input_pipeline.train_batches(config, builder, start_step=start_step,
                                    local_batch_size=config.batch_size,
                                    steps_per_epoch=steps_per_epoch)
  return list(itertools.islice(it, n))


def test_cifar_at_224_with_deit_augmentation_resumes_exactly(cifar_data_dir):
  """OFA-KD's CIFAR recipe input: random-resized crop to 224 + flip, RandAugment, erasing."""
  config = cifar_config(cifar_data_dir, image_size=224, train_augment='random_resized_crop_flip',
                        randaugment='rand-m9-mstd0.5-inc1', random_erasing=0.25,
                        eval_preprocess='bicubic_resize_center_crop', eval_resize_size=256)
  config.batch_size = 16
  builder = input_pipeline.get_builder(config)
  input_pipeline.check_options(config, builder, None)
  steps = input_pipeline.steps_per_epoch(config, input_pipeline.dataset_info(config, builder))
  assert steps == 6  # 96 // 16
  full = take(config, builder, 0, 8, steps)
  for b in full:
    assert b['image'].shape == (16, 224, 224, 3) and b['image'].dtype == np.uint8
    assert b['erase'].shape == (16, 4)
  resumed = take(config, builder, 5, 3, steps)  # crosses the epoch boundary
  for got, want in zip(resumed, full[5:]):
    np.testing.assert_array_equal(got['image'], want['image'])
    np.testing.assert_array_equal(got['erase'], want['erase'])
    np.testing.assert_array_equal(got['label'], want['label'])
  evals = list(input_pipeline.eval_batches(config, builder, local_batch_size=8))
  assert [b['image'].shape for b in evals] == [(8, 224, 224, 3)] * 3


def test_check_options_rejects_bad_values(cifar_data_dir):
  builder = input_pipeline.get_builder(cifar_config(cifar_data_dir))
  cases = [
      (dict(random_erasing=1.5), 'input.random_erasing'),
      (dict(random_erasing=-0.1), 'input.random_erasing'),
      (dict(random_erasing=float('nan')), 'input.random_erasing'),
      (dict(randaugment='rand-m9-mstd0.5-inc1-foo'), "section 'foo'"),
      (dict(randaugment='randaugment'), 'rand-m<M>'),
      (dict(image_size=224, eval_preprocess='bicubic_resize_center_crop', eval_resize_size=200),
       'input.eval_resize_size'),
      (dict(eval_preprocess='bicubic'), 'bicubic_resize_center_crop'),
  ]
  for overrides, message in cases:
    with pytest.raises(KdjaxError, match=message) as e:
      input_pipeline.check_options(cifar_config(cifar_data_dir, **overrides), builder, None)
    assert '\n' not in str(e.value)
  input_pipeline.check_options(cifar_config(cifar_data_dir, randaugment='rand-m9-mstd0.5-inc1',
                                            random_erasing=0.25), builder, None)
