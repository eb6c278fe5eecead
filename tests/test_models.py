"""Model zoo: shapes, parameter counts, tap aliases, BatchNorm behaviour, init, registry.

Shape-only checks use ``jax.eval_shape`` (no real compute); real forward passes use
tiny inputs.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import layers, taps
from kdjax.errors import KdjaxError
from kdjax.models import MODELS, get_model, model_names
from kdjax.models.common import param_count

IMAGENET = ('resnet18', 'resnet34', 'resnet50')
CIFAR = ('resnet20', 'resnet56', 'resnet110', 'resnet8x4', 'resnet32x4')
SMALL = ('digits_cnn', 'mlp32', 'cnn4', 'digits_vit', 'digits_mixer')

# torchvision (ImageNet, 1000 classes) and mdistiller CIFAR ResNets (100 classes), as
# reported by sum(p.numel() for p in model.parameters()) in PyTorch.
PARAM_COUNTS = {
    'resnet18': 11_689_512,
    'resnet34': 21_797_672,
    'resnet50': 25_557_032,
    'resnet20': 278_324,
    'resnet56': 861_620,
    'resnet110': 1_736_564,
    'resnet8x4': 1_233_540,
    'resnet32x4': 7_433_860,
    'digits_cnn': 19_562,
    'mlp32': 2_410,
    'cnn4': 838,
    # kdjax's own digit-size token students (counted by hand: 4 timm blocks of width 16).
    'digits_vit': 13_690,
    'digits_mixer': 10_170,
}


def _setup(name):
  """(num_classes, NHWC input shape) for a model's home data set."""
  if name in IMAGENET:
    return 1000, (2, 224, 224, 3)
  if name in CIFAR:
    return 100, (2, 32, 32, 3)
  return 10, (2, 8, 8, 1)


def _init_shapes(model, shape):
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  return jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), x)


def _resolve(intermediates, path):
  """The engine's rule: walk the '/'-parts; dict -> node['__call__'][0], tuple -> node[0]."""
  node = intermediates
  for part in path.split('/'):
    node = node[part]
  return node['__call__'][0] if isinstance(node, dict) else node[0]


def _tap_shapes(model, shape):
  """Shapes of every alias in ``model.tap_aliases()`` via eval_shape."""
  variables = _init_shapes(model, shape)
  x = jax.ShapeDtypeStruct(shape, jnp.float32)

  def fwd(variables, x):
    return model.apply(variables, x, capture_intermediates=True, mutable=['intermediates'])

  logits, state = jax.eval_shape(fwd, variables, x)
  inter = state['intermediates']
  taps = {alias: _resolve(inter, path) for alias, path in model.tap_aliases().items()}
  return logits, {alias: tuple(t.shape[1:]) for alias, t in taps.items()}


def _cheap_variables(model, shape):
  """Fresh-init-like variables without running ``init`` (its RNG is slow on CPU).

  Kernels ~ N(0, 2 / fan_in), dense/conv biases small, BN scale 1 / bias 0, running
  mean 0 / var 1.
  """
  rng = np.random.default_rng(0)

  def fill(path, leaf):
    name = path[-1].key
    if name == 'kernel':
      fan_in = math.prod(leaf.shape[:-1])
      return jnp.asarray(rng.normal(0, math.sqrt(2 / fan_in), leaf.shape), jnp.float32)
    if name in ('scale', 'var'):
      return jnp.ones(leaf.shape, jnp.float32)
    if name == 'bias' and path[-2].key == 'fc':
      return jnp.asarray(rng.uniform(-0.05, 0.05, leaf.shape), jnp.float32)
    return jnp.zeros(leaf.shape, jnp.float32)

  return jax.tree_util.tree_map_with_path(fill, _init_shapes(model, shape))


def _get_path(tree, path):
  for part in path.split('/'):
    tree = tree[part]
  return tree


def test_registry_lists_every_model():
  """Every registered model has its reference parameter count checked in one of the model
  tests (here, test_models_cifar.py or kdjax.models.imagenet.PARAM_COUNTS)."""
  import test_models_cifar  # pylint: disable=g-import-not-at-top
  from kdjax.models import imagenet  # pylint: disable=g-import-not-at-top
  counted = set(PARAM_COUNTS) | set(test_models_cifar.PARAM_COUNTS) | set(imagenet.PARAM_COUNTS)
  assert set(model_names()) == set(MODELS) == counted
  assert model_names() == sorted(model_names())


@pytest.mark.parametrize('name', sorted(PARAM_COUNTS))
def test_param_count_and_output_shape(name):
  num_classes, shape = _setup(name)
  model = get_model(name, num_classes=num_classes)
  variables = _init_shapes(model, shape)
  assert param_count(variables['params']) == PARAM_COUNTS[name]
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
  logits = jax.eval_shape(
      lambda v, x: model.apply(v, x), variables, jax.ShapeDtypeStruct(shape, jnp.float32)
  )
  assert logits.shape == (shape[0], num_classes)
  assert logits.dtype == jnp.float32


def test_resnet18_taps_at_224():
  """The torchvision ResNets' tap shapes (docs/design.md#taps)."""
  logits, shapes = _tap_shapes(get_model('resnet18', num_classes=1000), (2, 224, 224, 3))
  stage = {1: (56, 56, 64), 2: (28, 28, 128), 3: (14, 14, 256), 4: (7, 7, 512)}
  expected = {'stem': (112, 112, 64), 'pooled': (512,), 'logits': (1000,)}
  for i, s in stage.items():
    for name in (f'layer{i}', f'layer{i}_pre', f'stage{i}', f'stage{i}_pre',
                 f'block{2 * (i - 1)}', f'block{2 * (i - 1) + 1}'):
      expected[name] = s
  assert shapes == expected
  assert logits.shape == (2, 1000)


def test_resnet34_block_aliases():
  """ResNet-34: 16 blocks, (56,56,64)x3, (28,28,128)x4, (14,14,256)x6, (7,7,512)x3."""
  _, shapes = _tap_shapes(get_model('resnet34', num_classes=1000), (1, 224, 224, 3))
  blocks = [shapes[f'block{j}'] for j in range(16)]
  assert blocks == (
      [(56, 56, 64)] * 3 + [(28, 28, 128)] * 4 + [(14, 14, 256)] * 6 + [(7, 7, 512)] * 3
  )
  assert 'block16' not in shapes


def test_resnet8x4_taps_at_32():
  """resnet8x4: stem 32 ch at 32 px; stages 64, 128, 256 at 32, 16, 8 px."""
  logits, shapes = _tap_shapes(get_model('resnet8x4', num_classes=100), (2, 32, 32, 3))
  stage = {1: (32, 32, 64), 2: (16, 16, 128), 3: (8, 8, 256)}
  expected = {'stem': (32, 32, 32), 'pooled': (256,), 'logits': (100,),
              'stage1': (32, 32, 32), 'stage1_pre': (32, 32, 32)}  # three stages: stage1 = stem
  for i, s in stage.items():
    for name in (f'layer{i}', f'layer{i}_pre', f'stage{i + 1}', f'stage{i + 1}_pre',
                 f'block{i - 1}'):
      expected[name] = s
  assert shapes == expected
  assert logits.shape == (2, 100)


@pytest.mark.parametrize('name, pooled', [('digits_cnn', 64), ('mlp32', 32), ('cnn4', 64)])
def test_small_model_taps(name, pooled):
  logits, shapes = _tap_shapes(get_model(name, num_classes=10), (2, 8, 8, 1))
  shapes = {k: v for k, v in shapes.items() if not k.startswith('stage')}
  assert shapes == {'pooled': (pooled,), 'logits': (10,)}
  assert logits.shape == (2, 10)


def test_digits_cnn_stage_taps_are_its_conv_blocks():
  model = get_model('digits_cnn', num_classes=10)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 8, 1)), jnp.float32)
  variables = model.init(jax.random.key(0), x)
  _, feats, _ = taps.apply(model, variables, x, taps=['stage1', 'stage2'])
  assert feats['stage1'].shape == (2, 8, 8, 32) and feats['stage2'].shape == (2, 4, 4, 64)
  assert float(feats['stage2'].min()) >= 0  # after ReLU


@pytest.mark.parametrize('name', ['digits_vit', 'digits_mixer'])
def test_digit_token_students_have_the_zoo_taps(name):
  model = get_model(name, num_classes=10)
  x = jnp.zeros((2, 8, 8, 1), jnp.float32)
  variables = model.init(jax.random.key(0), x)
  _, feats, _ = taps.apply(model, variables, x,
                           taps=['stage1', 'stage4', 'tokens', 'pooled', 'block3'])
  assert feats['stage1'].shape == feats['stage4'].shape == (2, 4, 4, 16)
  assert feats['tokens'].shape == ((2, 17, 16) if name == 'digits_vit' else (2, 16, 16))
  assert feats['pooled'].shape == (2, 16)
  np.testing.assert_array_equal(feats['tokens'], feats['block3'])


def test_tap_aliases_paths():
  aliases = get_model('resnet34', num_classes=1000).tap_aliases()
  assert aliases['layer2_pre'] == 'layer2/block3/preact'
  assert aliases['block6'] == 'layer2/block3'
  assert aliases['block7'] == 'layer3/block0'
  assert aliases['logits'] == 'fc'
  aliases = get_model('resnet110', num_classes=100).tap_aliases()
  assert aliases['layer3_pre'] == 'layer3/block17/preact'
  assert aliases['block53'] == 'layer3/block17'


@pytest.mark.parametrize(
    'name, expected',
    [
        ('resnet18', [f'layer{i}/block1/bn2' for i in (1, 2, 3, 4)]),
        ('resnet34', ['layer1/block2/bn2', 'layer2/block3/bn2', 'layer3/block5/bn2',
                      'layer4/block2/bn2']),
        ('resnet50', ['layer1/block2/bn3', 'layer2/block3/bn3', 'layer3/block5/bn3',
                      'layer4/block2/bn3']),
        ('resnet8x4', [f'layer{i}/block0/bn2' for i in (1, 2, 3)]),
        ('resnet32x4', [f'layer{i}/block4/bn2' for i in (1, 2, 3)]),
    ],
)
def test_bn_before_relu(name, expected):
  num_classes, shape = _setup(name)
  model = get_model(name, num_classes=num_classes)
  paths = [model.bn_before_relu(i) for i in range(1, len(expected) + 1)]
  assert paths == expected
  params = _init_shapes(model, (1,) + shape[1:])['params']
  for path in paths:
    bn = _get_path(params, path)
    assert set(bn) == {'scale', 'bias'}
  with pytest.raises(ValueError):
    model.bn_before_relu(len(expected) + 1)


@pytest.mark.parametrize('name', ['resnet18', 'resnet50', 'resnet8x4', 'digits_cnn', 'cnn4'])
@pytest.mark.parametrize('train', [False, True])
def test_batchnorm_and_conv_settings(name, train):
  """Every BN has PyTorch's momentum/eps and follows ``train``; every conv pads explicitly."""
  num_classes, shape = _setup(name)
  model = get_model(name, num_classes=num_classes)
  variables = _init_shapes(model, (1,) + shape[1:])
  seen = []

  def record(next_fun, args, kwargs, context):
    if context.method_name == '__call__':
      seen.append(context.module)
    return next_fun(*args, **kwargs)

  x = jax.ShapeDtypeStruct((1,) + shape[1:], jnp.float32)
  with nn.intercept_methods(record):
    jax.eval_shape(
        lambda v, x: model.apply(v, x, train=train, mutable=['batch_stats']), variables, x
    )
  bns = [m for m in seen if isinstance(m, layers.BatchNorm)]
  convs = [m for m in seen if isinstance(m, nn.Conv)]
  assert convs
  assert bool(bns) == (name != 'cnn4')
  for bn in bns:
    assert (bn.momentum, bn.epsilon, bn.use_running_average) == (0.9, 1e-5, not train)
  for c in convs:
    assert not isinstance(c.padding, str)


def test_resnet18_forward_and_batchnorm_modes():
  """Real forward at 32x32: eval leaves batch_stats alone; train updates them with momentum 0.9."""
  model = get_model('resnet18', num_classes=10)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 32, 3))
  variables = _cheap_variables(model, x.shape)

  @jax.jit
  def run(variables, x):
    eval_logits, eval_state = model.apply(variables, x, train=False, mutable=['batch_stats'])
    train_logits, train_state = model.apply(
        variables, x, train=True, capture_intermediates=True,
        mutable=['batch_stats', 'intermediates'],
    )
    return eval_logits, eval_state, train_logits, train_state

  eval_logits, eval_state, train_logits, train_state = run(variables, x)
  assert eval_logits.shape == train_logits.shape == (2, 10)
  assert eval_logits.dtype == jnp.float32
  assert np.all(np.isfinite(eval_logits)) and np.all(np.isfinite(train_logits))
  assert not np.allclose(eval_logits, train_logits)

  old = variables['batch_stats']
  jax.tree.map(np.testing.assert_array_equal, eval_state['batch_stats'], old)
  new = train_state['batch_stats']
  assert not np.allclose(new['bn1']['mean'], old['bn1']['mean'])
  # new = 0.9 * old + 0.1 * batch statistic (biased variance in Flax), old mean 0 / var 1.
  conv1 = np.asarray(train_state['intermediates']['conv1']['__call__'][0], np.float64)
  batch_mean, batch_var = conv1.mean(axis=(0, 1, 2)), conv1.var(axis=(0, 1, 2))
  np.testing.assert_allclose(new['bn1']['mean'], 0.1 * batch_mean, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(new['bn1']['var'], 0.9 + 0.1 * batch_var, rtol=1e-4)


def test_digits_cnn_batchnorm_modes():
  model = get_model('digits_cnn', num_classes=10)
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 8, 8, 1))
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), x)
  apply = jax.jit(model.apply, static_argnames=('train', 'mutable'))
  _, eval_state = apply(variables, x, train=False, mutable=('batch_stats',))
  _, train_state = apply(variables, x, train=True, mutable=('batch_stats',))
  jax.tree.map(np.testing.assert_array_equal, eval_state['batch_stats'], variables['batch_stats'])
  changed = jax.tree.map(
      lambda a, b: not np.allclose(a, b), train_state['batch_stats'], variables['batch_stats']
  )
  assert all(jax.tree.leaves(changed))


def test_resnet20_init_matches_pytorch_recipe():
  """Initialisation (docs/design.md#initialisation): convs kaiming_normal fan_out; BN 1/0; fc
  like nn.Linear's default."""
  model = get_model('resnet20', num_classes=100)
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))
  params = variables['params']
  kernel = np.asarray(params['layer3']['block2']['conv2']['kernel'])  # (3, 3, 64, 64)
  assert abs(kernel.std() / math.sqrt(2.0 / (3 * 3 * 64)) - 1) < 0.02
  assert abs(kernel.mean()) < 2e-3
  bound = 1 / math.sqrt(64)
  fc = params['fc']
  assert np.abs(fc['kernel']).max() <= bound
  assert abs(np.asarray(fc['kernel']).std() / (bound / math.sqrt(3)) - 1) < 0.03
  assert np.abs(fc['bias']).max() <= bound and np.abs(fc['bias']).max() > bound / 2
  bn = params['layer2']['block0']['downsample_bn']
  np.testing.assert_array_equal(bn['scale'], 1.0)
  np.testing.assert_array_equal(bn['bias'], 0.0)
  stats = variables['batch_stats']['bn1']
  np.testing.assert_array_equal(stats['mean'], 0.0)
  np.testing.assert_array_equal(stats['var'], 1.0)


def test_cifar_downsample_placement():
  """mdistiller: 1x1 conv + BN shortcut when the stride is not 1 or the width changes."""
  resnet20 = _init_shapes(get_model('resnet20', num_classes=100), (1, 8, 8, 3))['params']
  assert 'downsample_conv' not in resnet20['layer1']['block0']  # 16 -> 16, stride 1
  assert 'downsample_conv' in resnet20['layer2']['block0']
  assert 'downsample_conv' not in resnet20['layer2']['block1']
  resnet8x4 = _init_shapes(get_model('resnet8x4', num_classes=100), (1, 8, 8, 3))['params']
  assert 'downsample_conv' in resnet8x4['layer1']['block0']  # 32 -> 64, stride 1


@pytest.mark.parametrize('name', ['resnet18', 'resnet8x4', 'digits_cnn', 'mlp32'])
def test_bfloat16_compute_keeps_float32_params_and_logits(name):
  num_classes, shape = _setup(name)
  model = get_model(name, num_classes=num_classes, dtype=jnp.bfloat16)
  variables = _init_shapes(model, shape)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))

  def fwd(v, x):
    return model.apply(v, x, capture_intermediates=True, mutable=['intermediates'])

  logits, state = jax.eval_shape(fwd, variables, jax.ShapeDtypeStruct(shape, jnp.float32))
  assert logits.dtype == jnp.float32
  assert _resolve(state['intermediates'], model.tap_aliases()['pooled']).dtype == jnp.bfloat16


def test_unknown_model_is_a_kdjax_error():
  with pytest.raises(KdjaxError) as info:
    get_model('resnet19', num_classes=10, config_key='student.model')
  message = str(info.value)
  assert '\n' not in message
  assert "'resnet19'" in message and 'student.model' in message
  for name in model_names():
    assert name in message


def test_bad_num_classes_is_a_kdjax_error():
  with pytest.raises(KdjaxError):
    get_model('resnet18', num_classes=0)


@pytest.mark.parametrize('shape, window, stride, padding', [
    ((2, 9, 11, 3), 3, 2, 1),   # the ResNet stem's pool, odd sizes
    ((2, 8, 8, 4), 2, 2, 0),    # VGG's
    ((1, 7, 7, 2), 3, 1, 1)])
def test_max_pool_equals_flax_and_routes_ties_to_the_first_maximum(shape, window, stride,
                                                                   padding):
  from kdjax import layers  # pylint: disable=g-import-not-at-top
  rng = np.random.RandomState(0)
  x = jnp.maximum(jnp.asarray(rng.randn(*shape), jnp.float32), 0.0)  # ReLU zeros: ties
  native = lambda x: nn.max_pool(x, (window,) * 2, strides=(stride,) * 2,
                                 padding=((padding, padding),) * 2)
  mine = jax.jit(lambda x: layers.max_pool(x, window, stride, padding))
  np.testing.assert_array_equal(mine(x), native(x))
  g = jnp.asarray(rng.randn(*native(x).shape), jnp.float32)
  # JAX's own gradient routes each output to its first maximum, as PyTorch's kernels do
  # (checked against torch.nn.functional.max_pool2d on these inputs).
  np.testing.assert_allclose(jax.vjp(mine, x)[1](g)[0], jax.vjp(native, x)[1](g)[0], atol=1e-6)


@pytest.mark.parametrize('shape, dtype, backend', [
    ((4, 5, 6, 8), jnp.float32, 'cpu'),    # NHWC maps
    ((6, 12), jnp.float32, 'cpu'),         # BatchNorm1d
    ((4, 3, 3, 8), jnp.bfloat16, 'cpu'),   # bf16 compute: statistics still in float32
    # The plain sums GPUs and TPUs take (shapes of their own: JAX caches traces by shape).
    ((3, 5, 6, 8), jnp.float32, 'gpu'),
    ((2, 3, 3, 8), jnp.bfloat16, 'tpu')])
def test_batch_norm_equals_flax_in_values_statistics_and_gradients(shape, dtype, backend,
                                                                   monkeypatch):
  """layers.BatchNorm (hand-written training backward) against nn.BatchNorm with the same
  settings (two-pass variance): the same variables, outputs, running-statistics update and
  gradients, in both modes; and the gradient of the returned batch statistics themselves. The
  per-channel sums are products with ones on CPU and plain sums elsewhere: both paths run here
  (on the CPU, with the backend's name faked)."""
  monkeypatch.setattr(jax, 'default_backend', lambda: backend)
  rng = np.random.RandomState(0)
  x = jnp.asarray(rng.randn(*shape) * 3 + 1, jnp.float32).astype(dtype)
  g = jnp.asarray(rng.randn(*shape), jnp.float32)
  c = shape[-1]
  flax_bn = lambda train: nn.BatchNorm(use_running_average=not train, momentum=0.9,
                                       epsilon=1e-5, dtype=dtype, param_dtype=jnp.float32,
                                       use_fast_variance=False)
  mine = lambda train: layers.BatchNorm(use_running_average=not train, dtype=dtype)
  variables = {'params': {'scale': jnp.linspace(0.5, 2.0, c), 'bias': jnp.linspace(-1, 1, c)},
               'batch_stats': {'mean': jnp.linspace(-0.2, 0.3, c),
                               'var': jnp.linspace(0.5, 1.5, c)}}
  init = lambda m: jax.tree.map(jnp.shape, m.init(jax.random.key(0), x))
  assert init(mine(True)) == init(flax_bn(True))

  def run(module, variables, x):
    y, new = module.apply(variables, x, mutable=['batch_stats'])
    return jnp.sum(y.astype(jnp.float32) * g), (y, new)

  tol = 1e-5 if dtype == jnp.float32 else 2e-2
  for train in (True, False):
    (loss_a, (y_a, new_a)), grads_a = jax.value_and_grad(run, (1, 2), has_aux=True)(
        flax_bn(train), variables, x)
    (loss_b, (y_b, new_b)), grads_b = jax.value_and_grad(run, (1, 2), has_aux=True)(
        mine(train), variables, x)
    assert y_b.dtype == y_a.dtype == dtype
    np.testing.assert_allclose(np.float32(y_b), np.float32(y_a), atol=tol, rtol=tol)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=tol, rtol=tol),
                 (new_a, grads_a), (new_b, grads_b))
  if dtype == jnp.float32:  # d(mean, var)/dx, which autodiff of the statistics would give
    stats = lambda f: lambda x: f(x, jnp.ones(c), jnp.zeros(c))
    w = (jnp.arange(c, dtype=jnp.float32), jnp.arange(c, dtype=jnp.float32)[::-1])
    ref = lambda x, s, b: layers._batch_norm_train_fwd(x, s, b, 1e-5)[0][1:]
    mine_stats = lambda x, s, b: layers._batch_norm_train(x, s, b, 1e-5)[1:]
    grad = lambda f: jax.grad(lambda x: sum(jnp.sum(a * b) for a, b in zip(stats(f)(x), w)))(x)
    np.testing.assert_allclose(grad(mine_stats), grad(ref), atol=1e-5)


@pytest.mark.parametrize('size', [7, 8])
def test_strided_1x1_conv_subsamples_with_the_same_parameters_and_values(size):
  from kdjax import layers  # pylint: disable=g-import-not-at-top
  x = jnp.asarray(np.random.RandomState(1).randn(2, size, size, 3), jnp.float32)
  strided = nn.Conv(4, (1, 1), strides=(2, 2), padding=((0, 0), (0, 0)), use_bias=False)

  class Wrap(nn.Module):
    @nn.compact
    def __call__(self, x):
      return layers.torch_conv(4, 1, strides=2, use_bias=False, name='c')(x)
  variables = Wrap().init(jax.random.key(0), x)
  assert jax.tree.map(jnp.shape, variables) == {'params': {'c': {'kernel': (1, 1, 3, 4)}}}
  want = strided.apply({'params': variables['params']['c']}, x)
  assert want.shape == (2, (size + 1) // 2, (size + 1) // 2, 4)
  np.testing.assert_allclose(Wrap().apply(variables, x), want, rtol=1e-6, atol=1e-6)
