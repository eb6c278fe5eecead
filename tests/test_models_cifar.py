"""The CIFAR-100 model zoo (mdistiller / RepDistiller models): parameter counts, output shapes,
the common taps, set-up errors, init and BatchNorm settings, and a jitted train step.

Shape-only checks use ``jax.eval_shape`` (no compute). Real compute runs on the test-size
variants (``tiny_*`` functions, not registered) and on resnet8, at 16x16 with a batch of 2;
the train step on one full-size model per family is ``@pytest.mark.slow``.
"""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kdjax import layers, taps
from kdjax.errors import KdjaxError
from kdjax.models import MODELS, get_model
from kdjax.models import cifar_resnet, cifar_resnetv2, mobilenetv2_cifar, shufflenet, vgg, wrn
from kdjax.models.cifar import CIFAR_MODELS
from kdjax.models.common import param_count

# sum(p.numel() for p in model.parameters()) of mdistiller's own PyTorch classes
# (megvii-research/mdistiller, mdistiller/models/cifar/*.py, torch 2.14) at num_classes=100:
# resnet.resnet8 .. resnet32x4, wrn.wrn_16_1 .. wrn_40_2, vgg.vgg8_bn .. vgg19_bn,
# mobilenetv2.mobile_half(100), ShuffleNetv1.ShuffleV1, ShuffleNetv2.ShuffleV2,
# resnetv2.ResNet50. Loading those models' weights into ours reproduces their logits to
# within 3e-6 x the logits' std at 32x32 (checked once with torch installed).
PARAM_COUNTS = {
    'resnet8': 83_892,
    'resnet14': 181_108,
    'resnet20': 278_324,
    'resnet32': 472_756,
    'resnet44': 667_188,
    'resnet56': 861_620,
    'resnet110': 1_736_564,
    'resnet8x4': 1_233_540,
    'resnet32x4': 7_433_860,
    'wrn_16_1': 180_916,
    'wrn_16_2': 703_284,
    'wrn_40_1': 569_780,
    'wrn_40_2': 2_255_156,
    'vgg8': 3_965_028,
    'vgg11': 9_277_284,
    'vgg13': 9_462_180,
    'vgg16': 14_774_436,
    'vgg19': 20_086_692,
    'mobilenetv2_cifar': 812_836,
    'shufflev1': 949_258,
    'shufflev2': 1_355_528,
    'resnet50_cifar': 23_705_252,
}

# (H, W, C) of stage1..stage4 at 32x32 (see each family's module docstring).
_R16 = ((32, 32, 16), (32, 32, 16), (16, 16, 32), (8, 8, 64))
_R64 = ((32, 32, 32), (32, 32, 64), (16, 16, 128), (8, 8, 256))
_WRN2 = ((32, 32, 16), (32, 32, 32), (16, 16, 64), (8, 8, 128))
_VGG = ((16, 16, 128), (8, 8, 256), (4, 4, 512), (4, 4, 512))
STAGES = {
    **{f'resnet{d}': _R16 for d in (8, 14, 20, 32, 44, 56, 110)},
    'resnet8x4': _R64, 'resnet32x4': _R64,
    'wrn_16_1': _R16, 'wrn_40_1': _R16, 'wrn_16_2': _WRN2, 'wrn_40_2': _WRN2,
    **{f'vgg{d}': _VGG for d in (8, 11, 13, 16, 19)},
    'mobilenetv2_cifar': ((16, 16, 12), (8, 8, 16), (4, 4, 48), (2, 2, 1280)),
    'shufflev1': ((32, 32, 24), (16, 16, 240), (8, 8, 480), (4, 4, 960)),
    'shufflev2': ((32, 32, 24), (16, 16, 116), (8, 8, 232), (4, 4, 1024)),
    'resnet50_cifar': ((32, 32, 256), (16, 16, 512), (8, 8, 1024), (4, 4, 2048)),
}
# The stages with a pre-ReLU tap (stageN_pre), and the ones bn_before_relu(i) accepts.
PRE_STAGES = {'wrn': (2, 3, 4), 'mobilenetv2': ()}
BN_STAGES = {'resnet50_cifar': (1, 2, 3, 4), 'vgg': (1, 2, 3, 4), 'wrn': (2, 3, 4)}

TINY = {
    'resnet8': lambda: cifar_resnet.resnet8(num_classes=10),
    'tiny_wrn': wrn.tiny_wrn,
    'tiny_vgg': vgg.tiny_vgg,
    'tiny_mobilenetv2_cifar': mobilenetv2_cifar.tiny_mobilenetv2_cifar,
    'tiny_shufflev1': shufflenet.tiny_shufflev1,
    'tiny_shufflev2': shufflenet.tiny_shufflev2,
    'tiny_resnet50_cifar': cifar_resnetv2.tiny_resnet50_cifar,
}


def _family(name, table, default):
  return next((v for k, v in table.items() if k in name), default)


def _sds(shape, dtype=jnp.float32):
  return jax.ShapeDtypeStruct(shape, dtype)


def _init_shapes(model, shape):
  return jax.eval_shape(lambda x: model.init(jax.random.key(0), x), _sds(shape))


def _get(tree, path):
  for part in path.split('/'):
    tree = tree[part]
  return tree


def test_registry_holds_every_cifar_model():
  assert set(CIFAR_MODELS) == set(PARAM_COUNTS) == set(STAGES)
  for name, fn in CIFAR_MODELS.items():
    assert MODELS[name] is fn, name


@pytest.mark.parametrize('name', sorted(PARAM_COUNTS))
def test_param_count_shapes_and_taps(name):
  """Reference parameter count; float32 logits [B, 100]; every common tap with its shape."""
  model = get_model(name, num_classes=100)
  variables = _init_shapes(model, (2, 32, 32, 3))
  assert param_count(variables['params']) == PARAM_COUNTS[name]
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))

  aliases = model.tap_aliases()
  assert {'stage1', 'stage2', 'stage3', 'stage4', 'pooled', 'logits'} <= set(aliases)
  names = list(aliases)
  logits, feats, state = jax.eval_shape(
      lambda v, x: taps.apply(model, v, x, taps=names), variables, _sds((2, 32, 32, 3)))
  assert (logits.shape, logits.dtype) == ((2, 100), jnp.float32)
  assert state == {}
  assert all(feats[k] is not None for k in names), [k for k in names if feats[k] is None]
  for i, shape in enumerate(STAGES[name], start=1):
    assert feats[f'stage{i}'].shape == (2,) + shape, (name, i)
    if f'stage{i}_pre' in aliases:
      assert feats[f'stage{i}_pre'].shape == (2,) + shape, (name, i)
  assert feats['pooled'].shape == (2, STAGES[name][-1][-1])
  assert feats['logits'].shape == (2, 100)
  pre = sorted(int(k[5]) for k in aliases if k.startswith('stage') and k.endswith('_pre'))
  assert tuple(pre) == _family(name, PRE_STAGES, (1, 2, 3, 4))


@pytest.mark.parametrize('name', sorted(PARAM_COUNTS))
def test_bn_before_relu(name):
  """The BN whose output is the pre-ReLU tap mdistiller's OFD reads (where it defines one)."""
  model = get_model(name, num_classes=100)
  if name.startswith('resnet') and name != 'resnet50_cifar':
    stages = (1, 2, 3)  # mdistiller indexing: layer{i} = stage{i + 1}
    pre = lambda i: f'stage{i + 1}_pre'
  else:
    stages = _family(name, BN_STAGES, ())
    pre = lambda i: f'stage{i}_pre'
  if not stages:
    assert not hasattr(model, 'bn_before_relu')
    return
  params = _init_shapes(model, (1, 32, 32, 3))['params']
  channels = dict(zip(range(1, 5), (s[-1] for s in STAGES[name])))
  for i in stages:
    bn = _get(params, model.bn_before_relu(i))
    assert set(bn) == {'scale', 'bias'}
    assert bn['scale'].shape == (channels[int(pre(i)[5])],)
    assert pre(i) in model.tap_aliases()
  for bad in {0, 1, 2, 3, 4, 5} - set(stages):
    with pytest.raises(ValueError):
      model.bn_before_relu(bad)


def test_cifar_resnet_keeps_its_tap_names():
  aliases = get_model('resnet32', num_classes=100).tap_aliases()
  for name in ('stem', 'layer1', 'layer2', 'layer3', 'layer1_pre', 'layer3_pre', 'block0',
               'block14', 'pooled', 'logits'):
    assert name in aliases, name
  assert aliases['stage1'] == 'stem' and aliases['stage1_pre'] == 'bn1'
  assert aliases['stage2'] == 'layer1' and aliases['stage4'] == 'layer3'
  assert aliases['stage3_pre'] == aliases['layer2_pre'] == 'layer2/block4/preact'
  assert 'block15' not in aliases


@pytest.mark.parametrize('name, smallest', [
    ('resnet8', 4), ('wrn_16_1', 4), ('vgg8', 8), ('mobilenetv2_cifar', 16), ('shufflev1', 8),
    ('shufflev2', 8), ('resnet50_cifar', 8)])
def test_input_too_small_is_one_line_error(name, smallest):
  model = get_model(name, num_classes=100)
  _init_shapes(model, (1, smallest, smallest, 3))
  for shape in ((1, smallest - 1, smallest, 3), (1, smallest, smallest // 2, 3)):
    with pytest.raises(KdjaxError) as info:
      _init_shapes(model, shape)
    message = str(info.value)
    assert '\n' not in message and name in message and f'{smallest}x{smallest}' in message


@pytest.mark.parametrize('name', sorted(TINY))
def test_bf16_compute_keeps_float32_params_and_logits(name):
  model = TINY[name]().clone(dtype=jnp.bfloat16)
  variables = _init_shapes(model, (2, 16, 16, 3))
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
  logits, feats, _ = jax.eval_shape(
      lambda v, x: taps.apply(model, v, x, taps=['pooled', 'stage4']), variables,
      _sds((2, 16, 16, 3)))
  assert logits.dtype == jnp.float32
  assert feats['pooled'].dtype == feats['stage4'].dtype == jnp.bfloat16


@pytest.mark.parametrize('name', sorted(TINY))
@pytest.mark.parametrize('train', [False, True])
def test_batchnorm_and_conv_settings(name, train):
  """Every BN has PyTorch's momentum / eps and follows ``train``; every conv pads explicitly."""
  model = TINY[name]()
  variables = _init_shapes(model, (1, 16, 16, 3))
  seen = []

  def record(next_fun, args, kwargs, context):
    if context.method_name == '__call__':
      seen.append(context.module)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    jax.eval_shape(lambda v, x: model.apply(v, x, train=train, mutable=['batch_stats']),
                   variables, _sds((1, 16, 16, 3)))
  bns = [m for m in seen if isinstance(m, layers.BatchNorm)]
  convs = [m for m in seen if isinstance(m, nn.Conv)]
  assert bns and convs
  for bn in bns:
    assert (bn.momentum, bn.epsilon, bn.use_running_average) == (0.9, 1e-5, not train)
  for c in convs:
    assert not isinstance(c.padding, str)


def _run_jitted(fn, *args):
  """``jax.jit(fn)(*args)``, compiled with XLA's backend optimisation off: compiling is most of
  these tests' time on CPU, and the level changes nothing they check."""
  lowered = jax.jit(fn).lower(*args)
  try:
    compiled = lowered.compile({'xla_backend_optimization_level': 0})
  except Exception:  # pylint: disable=broad-except  (an XLA without that option)
    compiled = lowered.compile()
  return compiled(*args)


@functools.lru_cache(maxsize=None)
def _real_init(name):
  """A test-size model's real init (the 'rbg' key compiles faster than threefry on CPU)."""
  model = TINY[name]()
  return _run_jitted(lambda key, x: model.init(key, x), jax.random.key(0, impl='rbg'),
                     jnp.zeros((2, 16, 16, 3)))


def _cheap_variables(model, shape):
  """Fresh-init-like variables without compiling ``init`` (slow on CPU): kernels
  N(0, 2 / fan_in), biases U(+-0.05), BN scale 1, running mean 0 / var 1."""
  rng = np.random.default_rng(0)

  def fill(path, leaf):
    name = path[-1].key
    if name == 'kernel':
      std = math.sqrt(2 / math.prod(leaf.shape[:-1]))
      return jnp.asarray(rng.normal(0, std, leaf.shape), jnp.float32)
    if name in ('scale', 'var'):
      return jnp.ones(leaf.shape, jnp.float32)
    if name == 'bias':
      return jnp.asarray(rng.uniform(-0.05, 0.05, leaf.shape), jnp.float32)
    return jnp.zeros(leaf.shape, jnp.float32)

  return jax.tree_util.tree_map_with_path(fill, _init_shapes(model, shape))


def _check_std(kernel, std, tol=0.15):
  assert abs(float(np.std(kernel)) / std - 1) < tol, (float(np.std(kernel)), std)


def test_init_follows_the_reference():
  """mdistiller's inits: kaiming fan_out convs (VGG with zero bias), VGG / MobileNetV2
  classifiers N(0, 0.01) with zero bias, WRN's fc a zero bias, ShuffleNet convs PyTorch's
  default U(+-1/sqrt(fan_in)) with fan_in counted per group."""
  p = _real_init('tiny_vgg')['params']
  _check_std(p['block3']['conv1']['kernel'], math.sqrt(2 / (9 * 32)))
  np.testing.assert_array_equal(p['block3']['conv1']['bias'], 0)
  _check_std(p['classifier']['kernel'], 0.01)
  np.testing.assert_array_equal(p['classifier']['bias'], 0)

  p = _real_init('tiny_wrn')['params']
  np.testing.assert_array_equal(p['fc']['bias'], 0)
  assert np.abs(p['fc']['kernel']).max() <= 1 / math.sqrt(64)
  _check_std(p['block3']['layer0']['conv2']['kernel'], math.sqrt(2 / (9 * 64)))

  block = mobilenetv2_cifar.InvertedResidual(features=16, strides=1, expand_ratio=6)
  p = _run_jitted(block.init, jax.random.key(0, impl='rbg'), jnp.zeros((1, 4, 4, 16)))['params']
  assert p['dw_conv']['kernel'].shape == (3, 3, 1, 96)  # depthwise: fan_out = 9 * 96
  _check_std(p['dw_conv']['kernel'], math.sqrt(2 / (9 * 96)))
  _check_std(p['pw_conv']['kernel'], math.sqrt(2 / 96))

  p = _real_init('tiny_shufflev1')['params']
  conv3 = p['layer2']['block0']['conv3']['kernel']  # 1x1, groups 3: 12 -> 48
  assert conv3.shape == (1, 1, 4, 48) and 'bias' not in p['layer2']['block0']['conv3']
  bound = 1 / math.sqrt(4)
  assert np.abs(conv3).max() <= bound and np.abs(conv3).max() > 0.8 * bound
  bound = 1 / math.sqrt(192)
  assert np.abs(p['linear']['bias']).max() <= bound
  assert np.abs(p['linear']['bias']).max() > bound / 2


def test_bottleneck_shortcut_placement():
  params = _init_shapes(cifar_resnetv2.resnet50_cifar(), (1, 8, 8, 3))['params']
  assert set(params['layer1']['block0']) >= {'shortcut_conv', 'shortcut_bn'}  # 64 -> 256
  assert 'shortcut_conv' not in params['layer1']['block1']
  assert set(params['layer2']['block0']) >= {'shortcut_conv', 'shortcut_bn'}
  params = _init_shapes(wrn.wrn_16_2(), (1, 8, 8, 3))['params']
  assert 'convShortcut' in params['block1']['layer0']  # 16 -> 32
  assert 'convShortcut' not in params['block1']['layer1']
  params = _init_shapes(wrn.wrn_16_1(), (1, 8, 8, 3))['params']
  assert 'convShortcut' not in params['block1']['layer0']  # 16 -> 16


@pytest.mark.parametrize('name', sorted(TINY))
def test_train_step_and_taps(name):
  """One jitted SGD step (CE, BatchNorm in train mode, batch 2 at 16x16) that also returns
  the stage taps of its forward pass."""
  model = TINY[name]()
  variables = _cheap_variables(model, (2, 16, 16, 3))
  x = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
  y = jnp.array([1, 7])
  opt = optax.sgd(0.1)
  names = [k for k in model.tap_aliases() if k.startswith('stage')] + ['pooled']

  def step(variables, opt_state):
    def loss_fn(params):
      logits, feats, state = taps.apply(
          model, {'params': params, 'batch_stats': variables['batch_stats']}, x, taps=names,
          train=True, mutable=['batch_stats'])
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
      return loss, (feats, state)

    (loss, (feats, state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        variables['params'])
    updates, opt_state = opt.update(grads, opt_state)
    params = optax.apply_updates(variables['params'], updates)
    return loss, grads, {'params': params, 'batch_stats': state['batch_stats']}, feats

  loss, grads, new, feats = _run_jitted(step, variables, opt.init(variables['params']))
  assert np.isfinite(loss) and loss > 0
  # Every parameter is used. (A VGG conv bias feeds a train-mode BN, which removes it: its
  # gradient is zero up to rounding, so it is not checked.)
  vgg_bias = lambda p: name == 'tiny_vgg' and p[-1].key == 'bias' and p[-2].key[:4] == 'conv'
  dead = [jax.tree_util.keystr(p) for p, g in jax.tree_util.tree_leaves_with_path(grads)
          if not np.any(np.asarray(g)) and not vgg_bias(p)]
  assert not dead, dead
  # Running variances all move; a running mean can stay 0 where a BN reads a bias-free 1x1
  # conv of another BN's output (zero batch mean), e.g. ShuffleV2's bn3.
  changed = jax.tree_util.tree_map_with_path(
      lambda p, a, b: p[-1].key == 'mean' or not np.allclose(a, b), new['batch_stats'],
      variables['batch_stats'])
  assert all(jax.tree.leaves(changed))
  np.testing.assert_allclose(feats['pooled'], np.mean(feats['stage4'], axis=(1, 2)),
                             rtol=1e-5, atol=1e-6)
  assert float(np.min(feats['stage4'])) >= 0  # post-activation: what pooling reads
  for i in range(1, 5):
    assert feats[f'stage{i}'].ndim == 4 and feats[f'stage{i}'].shape[0] == 2
    pre = feats.get(f'stage{i}_pre')
    # WRN's stage2/3 are pre-activation sums (their _pre is the next BN's output);
    # ShuffleV2's mid-stage preact is the reference's unshuffled concatenation.
    if pre is not None and not (name in ('tiny_wrn', 'tiny_shufflev2') and i in (2, 3)):
      np.testing.assert_allclose(feats[f'stage{i}'], np.maximum(pre, 0), rtol=1e-5,
                                 atol=1e-5)
      assert float(np.min(pre)) < 0


# One full-size model per family (the tiny variants above cover every family's code; all 22
# full-size steps cost ~4 minutes of compilation on 2 cores, too much for CI's slow suite).
FULL_SIZE = ('resnet32x4', 'wrn_40_2', 'vgg13', 'mobilenetv2_cifar', 'shufflev1', 'shufflev2',
             'resnet50_cifar')


@pytest.mark.slow
@pytest.mark.parametrize('name', FULL_SIZE)
def test_full_size_train_step(name):
  """The same SGD step on a full-size model of each family at 32x32 (slow: compile time)."""
  model = get_model(name, num_classes=100)
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  y = jnp.array([3, 42])
  variables = _run_jitted(model.init, jax.random.key(0, impl='rbg'), x)

  def step(params, batch_stats):
    def loss_fn(params):
      logits, state = model.apply({'params': params, 'batch_stats': batch_stats}, x,
                                  train=True, mutable=['batch_stats'])
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), state

    (loss, state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return loss, jax.tree.map(lambda p, g: p - 0.1 * g, params, grads), state

  loss, params, state = _run_jitted(step, variables['params'], variables['batch_stats'])
  assert np.isfinite(loss)
  assert all(np.all(np.isfinite(p)) for p in jax.tree.leaves(params))
  assert jax.tree.structure(state['batch_stats']) == jax.tree.structure(variables['batch_stats'])
