"""MLKD (docs/methods.md#mlkd): the loss against the reference's code path (values and
gradients), its identities and numerics; the method's groups; the strong view (input.strong_augment)
through the pipeline and the step.

Golden values: /tmp transcription (not in the repository) of the reference's loss path in
PyTorch float64 -- Jin-Ying/Multi-Level-Logit-Distillation `mdistiller/distillers/KD_ours.py`
(`KD_ours.forward_train` from the four logit tensors on: `kd_loss`, `cc_loss`, `bc_loss`, the
np.percentile(.., 50) confidence masks, KD_WEIGHT = 1, CE left out) and, for the `standardize`
case, the `kd_loss(.., logit_stand=True)` of sunshangquan/logit-standardization-KD
`mdistiller/distillers/MLKD.py`. Gradients are torch autograd's w.r.t. the student's weak and
strong logits. The two-group case runs the reference once per contiguous half of the batch and
averages, as `torch.nn.DataParallel` with two replicas and the trainer's `l.mean()` do.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import losses
from kdjax import methods
from kdjax.errors import KdjaxError

# Inputs: 4 rows, 5 classes (weak student, weak teacher, strong student, strong teacher).
SW = [[-1.6, -1.6, -1.0, -3.3, -0.0], [-2.5, -0.7, 0.4, 0.9, -0.1], [-4.5, -1.1, 0.7, -1.1, -2.4],
      [0.7, 2.2, -3.5, -0.5, -1.0]]
TW = [[-3.7, -2.3, -0.6, -1.5, 4.6], [-0.3, 0.7, -5.2, 2.1, -2.7], [0.4, 2.5, 2.6, 1.6, -2.3],
      [-0.3, 0.9, -2.4, -2.5, 1.1]]
SS = [[1.0, 0.1, 3.8, 1.6, 2.8], [-0.4, 0.3, -0.7, -1.5, 1.2], [3.3, 1.2, -2.8, -0.4, 1.0],
      [3.0, -2.4, 0.8, 2.5, 1.5]]
TS = [[-1.3, -1.6, 1.8, -1.3, -1.6], [-0.7, 1.3, -2.1, 0.1, -0.1], [0.8, -0.6, 2.8, 3.2, -1.2],
      [0.6, 2.1, -2.6, -2.4, -0.8]]
FOUR = tuple(np.array(x, np.float32) for x in (SW, TW, SS, TS))
# 3 rows (odd: the median is a row's own confidence, 2 of 3 rows at or below it).
THREE = tuple(np.array(x, np.float32) for x in (
    [[2.4, 1.6, 0.3, 0.7, -1.6], [1.9, -2.4, -0.6, 0.7, -2.1], [0.2, -0.5, -2.9, -1.4, 1.8]],
    [[0.2, -3.3, 1.0, 1.0, -1.8], [0.3, -1.3, 2.6, -1.1, 0.3], [-0.3, 2.0, -0.8, -1.9, 2.6]],
    [[-1.8, -2.9, -1.7, -0.8, -0.5], [-0.8, 1.4, 1.3, 1.2, 4.2], [-0.2, -1.4, 0.3, -0.6, 3.6]],
    [[-2.2, 1.0, 1.0, -2.1, -3.7], [0.2, 4.0, 1.3, 0.5, -2.3], [-0.4, -2.7, -0.6, 1.7, -0.7]]))
# 8 rows, computed as two groups of 4.
EIGHT = tuple(np.array(x, np.float32) for x in (
    [[1.3, -0.8, 0.2, 1.7, -3.2], [-0.2, 0.3, 0.4, -1.8, -0.6], [-2.1, 1.5, 0.2, 0.7, -0.9],
     [-3.7, -1.9, 0.5, -1.4, -0.9], [2.3, -4.0, -2.4, 1.1, -2.2], [0.8, 1.6, 1.4, -0.5, 0.4],
     [0.1, 3.2, -0.4, -0.0, -0.3], [-3.3, 1.7, 0.6, -1.0, 0.8]],
    [[1.6, -0.9, 0.4, -2.2, -4.9], [-1.2, -2.4, 0.2, 0.9, -3.7], [-3.4, -0.7, -1.3, -0.7, 2.0],
     [-0.3, 0.6, -3.7, -3.2, -0.4], [-5.7, 0.3, -2.1, -0.7, -0.5], [0.6, 1.0, 0.8, 1.8, 1.0],
     [1.3, 1.4, -4.5, 0.4, -0.5], [1.1, -2.7, 1.1, -0.3, -1.1]],
    [[1.0, 3.7, -2.6, 1.8, 1.2], [-1.9, 1.3, 1.6, 2.7, -1.7], [-0.5, 0.5, -0.3, 1.7, -0.1],
     [-1.4, 1.4, 2.0, 0.9, 0.6], [-1.1, 0.6, -1.2, 4.5, -1.5], [2.5, -1.1, -3.2, -1.2, -0.8],
     [-0.8, 0.7, 1.4, -0.2, -4.6], [-0.5, -1.4, -0.2, 1.3, 0.6]],
    [[-0.6, -2.5, 4.7, -1.3, -2.9], [-3.5, 0.7, -1.9, 0.2, 2.0], [-2.5, 1.3, -2.4, 0.8, 1.2],
     [0.7, -0.6, -3.0, -3.3, -1.6], [-1.1, 0.4, -0.3, 1.5, -0.3], [0.2, 1.1, 0.5, -1.3, 0.8],
     [2.5, 1.1, -1.5, -0.1, -0.7], [2.8, -1.9, -3.2, -1.9, 3.8]]))

# The reference's (loss_kd weak part, loss_kd strong part, loss_cc, loss_bc), their sum.
GOLDEN = {
    'b4_t4': (FOUR, 4.0, False, (4.73865577560, 12.6397843091, 0.115868444027, 0.0675577426204),
              17.5618662713),
    'b4_t1': (FOUR, 1.0, False, (4.04401226297, 11.7611427554, 0.265209232988, 0.176662845958),
              16.2470270973),
    'b4_ls_t2': (FOUR, 2.0, True, (0.963340019681, 3.24488697448, 0.176336076981,
                                   0.109527559097), 4.49409063024),
    'b3_t4': (THREE, 4.0, False, (5.20493719439, 13.325404751, 0.0782667591488,
                                  0.00277823061001), 18.6113869351),
}
GRADS = {  # d total / d (student weak, student strong), torch autograd
    'b4_t4': (
        [[0.48748251, 0.3721509, 0.32180125, 0.012494283, -1.1939289],
         [-0.36122632, -0.33743728, 0.75440318, -0.45499616, 0.39925658],
         [-0.28276247, -0.26657506, 0.28363384, -0.021976748, 0.28768043],
         [0.15157805, 0.34593653, -0.14548846, 0.24118971, -0.59321583]],
        [[-0.038349295, -0.093725859, -0.15913698, 0.034976556, 0.25623558],
         [0.035572964, -0.19813957, 0.14781677, -0.21263558, 0.22738541],
         [0.56669313, 0.27120976, -0.61310523, -0.51476945, 0.28997179],
         [0.1480601, -0.83698387, 0.17503194, 0.42665764, 0.087234195]]),
    'b4_ls_t2': (
        [[0.1404402, 0.078933918, 0.097309325, -0.11405826, -0.20262518],
         [-0.0031852058, -0.11057372, 0.22388864, -0.18702254, 0.076892821],
         [-0.040001106, -0.082879105, 0.037522084, -0.025060197, 0.11041832],
         [0.017218507, 0.0096523511, 0.031032423, 0.084932728, -0.14283601]],
        [[-0.011987013, -0.032397628, -0.08692734, 0.018435729, 0.11287625],
         [0.036515249, -0.20404981, 0.14863029, -0.058213764, 0.077118035],
         [-0.025546063, 0.03275214, 0.011528349, -0.068580917, 0.049846491],
         [-0.067377715, -0.028626409, 0.062598501, 0.03324257, 0.00016305271]]),
}
TWO_GROUPS_TOTAL = 23.2742155168
TWO_GROUPS_GRAD_STRONG_ROW0 = [0.045059046, 0.38306873, -0.71775976, 0.13768577, 0.15194622]
TWO_GROUPS_GRAD_WEAK_ROW4 = [0.70113581, -0.4676103, -0.090807939, 0.11012259, -0.25284016]


def close(got, want, rtol=2e-6, atol=2e-7):
  np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=rtol, atol=atol)


# Compile time dominates on a small CPU (~2 s per shape): every check goes through this one
# jitted function, on few shapes.
@functools.partial(jax.jit, static_argnames=('standardize',))
def evaluate(sw, tw, ss, ts, temperature, standardize=False):
  """(value, d value / d (sw, tw, ss, ts), [instance_weak, instance_strong, class, batch])."""
  fn = lambda *x: losses.mlkd(*x, temperature=temperature, standardize=standardize)
  value, grads = jax.value_and_grad(fn, argnums=(0, 1, 2, 3))(sw, tw, ss, ts)
  parts = losses.mlkd_parts(sw, tw, ss, ts, temperature=temperature, standardize=standardize)
  return value, grads, [parts[k] for k in ('instance_weak', 'instance_strong', 'class', 'batch')]


def kd64(s, t, tau):
  """mdistiller's kd_loss in numpy float64."""
  log_softmax = lambda z: z - np.log(np.sum(np.exp(z - z.max(1, keepdims=True)), 1,
                                            keepdims=True)) - z.max(1, keepdims=True)
  lp_t, lp_s = log_softmax(np.float64(t) / tau), log_softmax(np.float64(s) / tau)
  return tau**2 * np.mean(np.sum(np.exp(lp_t) * (lp_t - lp_s), 1))


@pytest.mark.parametrize('case', sorted(GOLDEN))
def test_golden_values_and_gradients(case):
  inputs, temperature, standardize, parts, total = GOLDEN[case]
  value, grads, got = evaluate(*inputs, temperature, standardize)
  assert value.dtype == jnp.float32 and value.shape == ()
  close(got, parts)
  close(value, total)
  if case in GRADS:
    close(grads[0], GRADS[case][0], atol=1e-6)
    close(grads[2], GRADS[case][1], atol=1e-6)
  # The teachers are stop-gradiented.
  close(grads[1], np.zeros_like(inputs[1]))
  close(grads[3], np.zeros_like(inputs[3]))


def test_groups_match_the_reference_under_data_parallel():
  term = methods.build_terms({'mlkd': dict(weight=1.0, group_size=4)}, batch_size=8)[0]
  sw, tw, ss, ts = EIGHT

  def total(a, b):
    outputs = {'student': {'logits': a, 'logits@strong': b},
               'teacher': {'logits': tw, 'logits@strong': ts}}
    return term(outputs, jnp.zeros(8, jnp.int32))
  value, (g_weak, g_strong) = jax.jit(jax.value_and_grad(total, argnums=(0, 1)))(sw, ss)
  close(value, TWO_GROUPS_TOTAL)
  close(g_strong[0], TWO_GROUPS_GRAD_STRONG_ROW0, atol=1e-6)
  close(g_weak[4], TWO_GROUPS_GRAD_WEAK_ROW4, atol=1e-6)


def test_identities():
  sw, tw, ss, ts = FOUR
  # Student equal to teacher on both views: every part is 0, with zero gradient.
  value, grads, _ = evaluate(tw, tw, ts, ts, 4.0)
  close(value, 0.0, atol=1e-6)
  close(grads[0], np.zeros((4, 5)), atol=1e-6)
  # The instance terms are the share times kd at each temperature.
  _, _, parts = evaluate(*FOUR, 4.0)
  share = 0.5  # 4 distinct confidences: 2 at or below the median
  close(parts[0], share * sum(kd64(sw, tw, tau) for tau in (4, 3, 5, 2, 6)), rtol=1e-5)
  close(parts[1], sum(kd64(ss, ts, tau) for tau in (4, 3, 5)) +
        sum(kd64(sw, tw, tau) for tau in (2, 6)), rtol=1e-5)
  # Standardize: invariant to a per-row shift and positive scale of a side's logits in the
  # instance terms (the class and batch terms see the raw logits).
  a = evaluate(*FOUR, 2.0, True)[2]
  b = evaluate(3 * sw + 1, tw, 2 * ss - 4, ts, 2.0, True)[2]
  close(b[:2], a[:2], rtol=1e-5)
  # Without it, adding a constant to each side changes nothing at all (softmax).
  close(evaluate(sw + 5, tw - 2, ss + 1, ts, 4.0)[0], evaluate(*FOUR, 4.0)[0], rtol=1e-5)


def test_numerics_large_gaps_bf16_and_batch_of_one():
  eye = 1e4 * np.eye(5, dtype=np.float32)
  big = (np.stack([eye[0], eye[1] - eye[2], eye[2], -eye[3]]),
         np.stack([eye[1], eye[1], eye[2] - eye[0], eye[3]]),
         np.stack([-eye[4], eye[0], eye[3], eye[2]]),
         np.stack([eye[4], eye[4], -eye[1], eye[0]]))
  for standardize in (False, True):
    value, grads, _ = evaluate(*big, 1.0, standardize)
    assert np.isfinite(value) and np.isfinite(np.asarray(grads)).all()
  as16 = [x.astype(jnp.bfloat16) for x in FOUR]
  value, grads, _ = evaluate(*as16, 4.0)
  assert value.dtype == jnp.float32 and grads[0].dtype == jnp.bfloat16
  close(value, evaluate(*[x.astype(jnp.float32) for x in as16], 4.0)[0], rtol=1e-6)
  one = [x[:1] for x in FOUR]
  value, grads, parts = evaluate(*one, 4.0)
  assert np.isfinite(value) and np.isfinite(np.asarray(grads)).all()
  # One row: its confidence is the median (share 1).
  close(parts[0], sum(kd64(one[0], one[1], tau) for tau in (4, 3, 5, 2, 6)), rtol=1e-5)


def test_gradients_match_finite_differences():
  sw, tw, ss, ts = FOUR
  rng = np.random.default_rng(1)
  value, grads, _ = evaluate(*FOUR, 4.0)
  for _ in range(3):
    dw, ds = rng.normal(size=(2, 4, 5)).astype(np.float32)
    h = 1e-2
    plus = evaluate(sw + h * dw, tw, ss + h * ds, ts, 4.0)[0]
    minus = evaluate(sw - h * dw, tw, ss - h * ds, ts, 4.0)[0]
    want = np.sum(np.asarray(grads[0]) * dw) + np.sum(np.asarray(grads[2]) * ds)
    np.testing.assert_allclose((float(plus) - float(minus)) / (2 * h), want, rtol=1e-2,
                               atol=1e-3)


# --------------------------------------------------------------------------- the strong view


def _digits_config(data_dir, strong_augment='fixmatch', **losses_):
  from kdjax.quickstart import load_recipe  # pylint: disable=g-import-not-at-top
  config = load_recipe()
  with config.unlocked():
    config.data_dir = data_dir
    config.input.num_labeled = 0
    config.input.shuffle_buffer = 64
    config.batch_size = 16
    config.input.strong_augment = strong_augment
    config.losses = losses_ or dict(
        ce=dict(weight=0.1), ce_strong=dict(method='ce', view='strong', weight=0.1),
        mlkd=dict(weight=0.9, group_size=16))
  return config


def _first_batches(config, builder, start_step=0, n=1):
  from kdjax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  import itertools  # pylint: disable=g-import-not-at-top
  return list(itertools.islice(input_pipeline.train_batches(
      config, builder, start_step=start_step, local_batch_size=config.batch_size,
      steps_per_epoch=input_pipeline.steps_per_epoch(
          config, input_pipeline.dataset_info(config, builder))), n))


def test_strong_view_is_deterministic_and_differs_from_the_main_view(digits_data_dir):
  from kdjax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  config = _digits_config(digits_data_dir)
  builder = input_pipeline.get_builder(config)
  first, second = _first_batches(config, builder, n=2)
  again = _first_batches(config, builder, start_step=1)[0]  # resumed at step 1
  assert first['image_strong'].shape == first['image'].shape
  assert first['image_strong'].dtype == np.uint8
  for key in second:
    np.testing.assert_array_equal(again[key], second[key])
  # Another view of the same examples: most pixels differ, the labels are the same rows.
  assert np.mean(first['image_strong'] != first['image']) > 0.3
  # Turning the strong view on leaves the main view and everything else as it was.
  with config.unlocked():
    config.input.strong_augment = ''
  plain = _first_batches(config, builder)[0]
  assert set(first) - set(plain) == {'image_strong'}
  for key in plain:
    np.testing.assert_array_equal(first[key], plain[key])


def test_fixmatch_augment_is_a_pure_function_of_the_seed():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from kdjax.data import augment  # pylint: disable=g-import-not-at-top
  image = tf.constant(np.random.default_rng(0).integers(0, 256, (16, 16, 3)), tf.float32)
  outs = [augment.fixmatch_augment(image, tf.constant(s, tf.int64)).numpy()
          for s in ([1, 2], [1, 2], [3, 4])]
  np.testing.assert_array_equal(outs[0], outs[1])
  assert not np.array_equal(outs[0], outs[2])
  for out in outs:
    assert out.shape == (16, 16, 3) and out.min() >= 0 and out.max() <= 255
    assert np.array_equal(out, np.round(out))
  # Cutout alone: one axis-aligned box of the fill, the rest untouched.
  cut = augment.cutout(image, tf.constant([5, 6], tf.int64)).numpy()
  box = np.all(cut == np.array(augment.FIXMATCH_CUTOUT_FILL), axis=-1)
  rows, cols = np.nonzero(box)
  assert box.sum() == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1) > 0
  np.testing.assert_array_equal(cut[~box], image.numpy()[~box])


def test_strong_view_errors(digits_data_dir):
  from kdjax import train  # pylint: disable=g-import-not-at-top
  with pytest.raises(KdjaxError, match='input.strong_augment'):
    train.build(_digits_config(digits_data_dir, strong_augment=''))
  with pytest.raises(KdjaxError, match="input.strong_augment='autoaugment'"):
    train.build(_digits_config(digits_data_dir, strong_augment='autoaugment'))
  config = _digits_config(digits_data_dir)
  with config.unlocked():
    config.mixup.update(mixup_alpha=0.8, prob=1.0)
  with pytest.raises(KdjaxError, match='mixup.prob=0'):
    train.build(config)
  with pytest.raises(KdjaxError, match="unknown view 'weak'"):
    methods.build_terms({'ce': dict(weight=1.0, view='weak')})


@pytest.mark.slow
def test_eight_devices_give_the_same_steps_as_one_with_two_views(digits_data_dir):
  """CE on both views + MLKD over groups of 16 (each spanning two of the 8 devices' rows),
  BatchNorm statistics over both views' forwards: the same losses and variables as 1 device."""
  import json  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  import conftest  # pylint: disable=g-import-not-at-top
  env = conftest.cli_env()
  env['XLA_FLAGS'] = '--xla_force_host_platform_device_count=8'
  out = subprocess.run([sys.executable, os.path.join(conftest.ROOT, 'tests', 'sharding_check.py'),
                        digits_data_dir, 'mlkd'], env=env, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert result['num_devices'] == 8
  for one, many in zip(result['one'], result['many'], strict=True):
    assert {'loss/ce', 'loss/ce_strong', 'loss/mlkd'} <= set(one) and one.keys() == many.keys()
    for key in one:
      np.testing.assert_allclose(many[key], one[key], rtol=2e-5, err_msg=key)
  assert result['max_abs_variable_diff'] < 1e-5
  assert result['replicas_agree']


