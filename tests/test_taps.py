"""Feature taps: aliases and raw module paths of a CIFAR ResNet through `kdjax.taps`.

Shapes follow docs/design.md#taps: for resnet8x4 at 32x32 the stem has 32 channels at 32 px and
the stages 64 / 128 / 256 channels at 32 / 16 / 8 px. The model is initialised once per module.
"""

from unittest import mock

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax import taps
from kdjax.errors import KdjaxError
from kdjax.models import get_model
from kdjax.models.cifar_resnet import CifarResNet

B = 2
INPUT_SHAPE = (B, 32, 32, 3)

EXPECTED_SHAPES = {
    'stem': (B, 32, 32, 32),
    'layer1': (B, 32, 32, 64),
    'layer2': (B, 16, 16, 128),
    'layer3': (B, 8, 8, 256),
    'layer1_pre': (B, 32, 32, 64),
    'layer2_pre': (B, 16, 16, 128),
    'layer3_pre': (B, 8, 8, 256),
    'block0': (B, 32, 32, 64),
    'block1': (B, 16, 16, 128),
    'block2': (B, 8, 8, 256),
    'pooled': (B, 256),
    'logits': (B, 100),
}

RAW_SHAPES = {
    'layer2/block0': (B, 16, 16, 128),
    'layer2/block0/preact': (B, 16, 16, 128),
    'layer1/block0/bn2': (B, 32, 32, 64),
    'bn1': (B, 32, 32, 32),
    'fc': (B, 100),
}


def close(a, b, **kw):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5, **kw)


@pytest.fixture(scope='module')
def model():
  return get_model('resnet8x4', num_classes=100)


@pytest.fixture(scope='module')
def x():
  return jax.random.normal(jax.random.key(1), INPUT_SHAPE, jnp.float32)


@pytest.fixture(scope='module')
def variables(model, x):
  v = jax.jit(lambda key, x: model.init(key, x, train=False))(jax.random.key(0), x)  # faster
  # Non-trivial running statistics, so that eval-mode BN is not the identity.
  stats = jax.tree_util.tree_map_with_path(
      lambda p, s: s + 0.1 if p[-1].key == 'mean' else s * 1.5, v['batch_stats'])
  return {'params': v['params'], 'batch_stats': stats}


@pytest.fixture(scope='module')
def eval_taps(model, variables, x):
  """One eval-mode run with every alias and the raw paths."""
  names = list(EXPECTED_SHAPES) + list(RAW_SHAPES)
  return taps.apply(model, variables, x, taps=names)


def test_alias_shapes_match_the_documented_taps(eval_taps):
  _, features, state = eval_taps
  assert state == {}
  for name, shape in EXPECTED_SHAPES.items():
    assert features[name] is not None, name
    assert features[name].shape == shape, name
    assert features[name].dtype == jnp.float32, name


def test_raw_path_shapes(eval_taps):
  _, features, _ = eval_taps
  for name, shape in RAW_SHAPES.items():
    assert features[name] is not None, name
    assert features[name].shape == shape, name


def test_returns_exactly_the_requested_taps(eval_taps):
  _, features, _ = eval_taps
  assert set(features) == set(EXPECTED_SHAPES) | set(RAW_SHAPES)


def test_post_relu_is_relu_of_pre_relu(eval_taps):
  _, f, _ = eval_taps
  for i in (1, 2, 3):
    close(f[f'layer{i}'], nn.relu(f[f'layer{i}_pre']))
    assert float(jnp.min(f[f'layer{i}_pre'])) < 0  # the pre-ReLU map really is pre-ReLU
  close(f['layer2/block0'], nn.relu(f['layer2/block0/preact']))
  # resnet8x4 has one block per stage: the block taps are the stage outputs.
  close(f['block0'], f['layer1'])
  close(f['block1'], f['layer2'])
  close(f['block2'], f['layer3'])
  close(f['layer2/block0'], f['layer2'])


def test_pooled_is_spatial_mean_of_layer3(eval_taps):
  _, f, _ = eval_taps
  close(f['pooled'], jnp.mean(f['layer3'], axis=(1, 2)))


def test_stem_is_relu_of_bn1(eval_taps):
  _, f, _ = eval_taps
  close(f['stem'], nn.relu(f['bn1']))


def test_logits_match_model_apply(model, variables, x, eval_taps):
  logits, f, _ = eval_taps
  want = model.apply(variables, x, train=False)
  assert logits.shape == (B, 100) and logits.dtype == jnp.float32
  close(logits, want)
  close(f['logits'], want)
  close(f['fc'], want)


def test_fc_is_the_classifier_of_pooled(variables, eval_taps):
  _, f, _ = eval_taps
  fc = variables['params']['fc']
  close(f['fc'], f['pooled'] @ fc['kernel'] + fc['bias'])


def test_single_tap_matches_the_joint_run(model, variables, x, eval_taps):
  _, joint, _ = eval_taps
  logits, f, state = taps.apply(model, variables, x, taps=['layer2'])
  assert set(f) == {'layer2'} and state == {}
  close(f['layer2'], joint['layer2'])
  close(logits, eval_taps[0])


def test_train_mode_updates_batch_stats(model, variables, x):
  logits, f, state = taps.apply(model, variables, x, taps=['layer3', 'layer3_pre', 'pooled'],
                                train=True, mutable=('batch_stats',))
  assert set(state) == {'batch_stats'}
  new_stats = state['batch_stats']
  assert (jax.tree_util.tree_structure(new_stats)
          == jax.tree_util.tree_structure(variables['batch_stats']))
  changed = jax.tree_util.tree_map(lambda a, b: bool(jnp.any(a != b)), new_stats,
                                   variables['batch_stats'])
  assert all(jax.tree_util.tree_leaves(changed)), 'every running statistic should move'
  assert f['layer3'].shape == (B, 8, 8, 256) and f['pooled'].shape == (B, 256)
  close(f['layer3'], nn.relu(f['layer3_pre']))
  close(f['pooled'], jnp.mean(f['layer3'], axis=(1, 2)))
  # Same as a plain train-mode apply.
  want_logits, want_state = model.apply(variables, x, train=True, mutable=['batch_stats'])
  close(logits, want_logits)
  jax.tree_util.tree_map(close, new_stats, want_state['batch_stats'])
  # Train-mode features differ from eval-mode ones (batch statistics vs running statistics).
  _, f_eval, _ = taps.apply(model, variables, x, taps=['layer3'])
  assert not np.allclose(np.asarray(f['layer3']), np.asarray(f_eval['layer3']), atol=1e-3)


def test_no_taps_returns_empty_dict_and_captures_nothing(model, variables, x):
  original = CifarResNet.apply
  with mock.patch.object(CifarResNet, 'apply', autospec=True, side_effect=original) as spy:
    logits, f, state = taps.apply(model, variables, x)
    assert f == {} and state == {}
    kwargs = spy.call_args.kwargs
    assert kwargs['capture_intermediates'] is False
    assert kwargs['mutable'] is False
    close(logits, original(model, variables, x, train=False))

    logits, f, state = taps.apply(model, variables, x, taps=(), train=True,
                                  mutable=('batch_stats',))
    assert f == {} and set(state) == {'batch_stats'}
    kwargs = spy.call_args.kwargs
    assert kwargs['capture_intermediates'] is False
    assert 'intermediates' not in tuple(kwargs['mutable'])


def test_requested_module_outputs_only_are_captured(model, variables, x):
  """Only the wanted modules' __call__ outputs go into the intermediates collection."""
  original = CifarResNet.apply
  captured = {}

  def spy(self, *args, **kwargs):
    out = original(self, *args, **kwargs)
    captured.update(out[1])
    return out
  with mock.patch.object(CifarResNet, 'apply', autospec=True, side_effect=spy):
    taps.apply(model, variables, x, taps=['layer2'])
  inter = captured['intermediates']
  assert '__call__' in inter['layer2']
  assert '__call__' not in inter  # not the whole model
  assert '__call__' not in inter['layer1'] and '__call__' not in inter['layer3']
  assert 'conv1' not in inter and 'fc' not in inter


def test_taps_under_jit(model, variables, x, eval_taps):
  run = jax.jit(lambda v, x: taps.apply(model, v, x, taps=('layer3', 'pooled')))
  logits, f, _ = run(variables, x)
  close(logits, eval_taps[0])
  close(f['layer3'], eval_taps[1]['layer3'])
  close(f['pooled'], eval_taps[1]['pooled'])


# --- available / check ------------------------------------------------------------------------


@pytest.fixture(scope='module')
def available(model):
  return taps.available(model, INPUT_SHAPE)


def test_available_lists_aliases_then_raw_paths(model, available):
  aliases = list(model.tap_aliases())
  assert available[:len(aliases)] == aliases
  assert set(EXPECTED_SHAPES) <= set(aliases)
  for path in ('layer2/block0', 'layer2/block0/preact', 'layer1/block0/bn2', 'fc', 'conv1',
               'bn1', 'stem', 'pooled', 'layer1', 'layer3/block0/downsample_bn'):
    assert path in available[len(aliases):], path
  raw = available[len(aliases):]
  assert raw == sorted(raw) and len(set(raw)) == len(raw)
  assert '' not in available and not any(p.endswith('__call__') for p in available)


def test_every_available_tap_resolves(model, variables, x, available):
  _, f, _ = taps.apply(model, variables, x, taps=available)
  missing = [name for name, value in f.items() if value is None]
  assert missing == []


def test_check_accepts_aliases_and_raw_paths(model):
  taps.check(model, ['layer2', 'layer3_pre', 'block0', 'pooled', 'logits', 'layer2/block0',
                     'layer1/block0/bn2', 'fc'], INPUT_SHAPE, where='student')
  taps.check(model, [], INPUT_SHAPE, where='teacher')


def test_check_rejects_unknown_tap(model):
  with pytest.raises(KdjaxError) as e:
    taps.check(model, ['layer2', 'nope'], INPUT_SHAPE, where='student')
  msg = str(e.value)
  assert "'nope'" in msg and 'student' in msg and 'CifarResNet' in msg
  assert 'valid taps' in msg and 'layer2' in msg and 'pooled' in msg


def test_check_rejects_partial_path(model):
  with pytest.raises(KdjaxError, match='layer2/block7'):
    taps.check(model, ['layer2/block7'], INPUT_SHAPE, where='teacher')


# --- a small model ----------------------------------------------------------------------------


def test_digits_cnn_taps():
  model = get_model('digits_cnn', num_classes=10)
  xs = jax.random.normal(jax.random.key(2), (3, 8, 8, 1))
  variables = model.init(jax.random.key(0), xs)
  logits, f, _ = taps.apply(model, variables, xs, taps=['pooled', 'logits', 'bn2'])
  assert f['pooled'].shape == (3, 64) and f['bn2'].shape == (3, 4, 4, 64)
  close(f['pooled'], jnp.mean(nn.relu(f['bn2']), axis=(1, 2)))
  close(f['logits'], logits)
  close(logits, model.apply(variables, xs))
  assert {'pooled', 'logits', 'conv1', 'bn2', 'fc'} <= set(taps.available(model, (1, 8, 8, 1)))


def test_mutable_as_a_plain_string():
  """Flax's apply accepts mutable='batch_stats'; taps.apply must not split it into letters."""
  model = get_model('digits_cnn', num_classes=10)
  xs = jnp.ones((2, 8, 8, 1))
  variables = model.init(jax.random.key(0), xs)
  for names in (['pooled'], []):
    _, _, state = taps.apply(model, variables, xs, taps=names, train=True, mutable='batch_stats')
    assert set(state) == {'batch_stats'}
