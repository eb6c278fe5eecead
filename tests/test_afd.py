"""AFD (Show, Attend and Distill, docs/methods.md#afd): connector, method wiring and training.

The trainer case uses the mismatched pair resnet8x4 (teacher; 32/64/128/256 channels, 3 blocks)
-> resnet20 (student; 16/16/32/64, 9 blocks), tapping every block of each; no channel count is
set by hand anywhere.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import conftest
from kdjax import methods
from kdjax import models
from kdjax import train
from kdjax.methods import afd


def _blocks(name, **kwargs):
  model = models.get_model(name, **kwargs)
  return tuple(k for k in model.tap_aliases() if k.startswith('block'))


def _moved(a, b):
  return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.abs(x - y).max()), a, b)))


@pytest.mark.slow
def test_afd_trains_a_step_on_a_mismatched_cifar_pair(cifar_data_dir):
  s_taps, t_taps = _blocks('resnet20', num_classes=100), _blocks('resnet8x4', num_classes=100)
  assert len(s_taps) == 9 and len(t_taps) == 3
  run = conftest.Run(conftest.cifar_pair_config(cifar_data_dir, {
      'ce': dict(weight=1.0), 'kd': dict(weight=0.9, temperature=4.0),
      'afd': dict(weight=200.0, student_taps=s_taps, teacher_taps=t_taps)}))
  setup = run.setup
  teacher_before = jax.tree.map(np.copy, setup.networks.teacher_variables)
  before = jax.device_get(run.state.params)
  stats_before = jax.device_get(run.state.batch_stats['connectors']['afd'])
  connector = before['connectors']['afd']
  # Channels inferred from the taps: query per teacher block, key per student block.
  for j, tap in enumerate(t_taps):
    assert connector[f'query_layer{j}']['linear']['kernel'].shape == (
        setup.networks.tap_shapes['teacher'][tap].shape[-1], 128)
  for i, tap in enumerate(s_taps):
    assert connector[f'key_layer{i}']['linear']['kernel'].shape == (
        setup.networks.tap_shapes['student'][tap].shape[-1], 128)
  assert connector['bilinear']['linear']['kernel'].shape == (128, 128 * 3)
  assert connector['p_t'].shape == (3, 128) and connector['p_s'].shape == (9, 128)

  metrics = run.step()
  state = run.state
  after = jax.device_get(state.params)
  value = float(metrics['loss/afd'])
  assert np.isfinite(value) and value > 0, value
  assert _moved(before['student'], after['student']) > 0
  for name in ('p_t', 'p_s', 'bilinear', 'query_layer0', 'key_layer0'):
    assert _moved(before['connectors']['afd'][name], after['connectors']['afd'][name]) > 0, name
  # BatchNorm1d ran in training mode: its running statistics moved.
  assert _moved(stats_before, jax.device_get(state.batch_stats['connectors']['afd'])) > 0
  jax.tree.map(np.testing.assert_array_equal, teacher_before, setup.networks.teacher_variables)


def test_afd_connector_shapes_for_r34_to_r18_at_224():
  zeros = lambda tree: jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), tree)
  term = methods.build_terms({'afd': dict(weight=50.0)})[0]
  taps = term.reads
  assert taps['student'] == tuple(f'block{i}' for i in range(8))
  assert taps['teacher'] == tuple(f'block{j}' for j in range(16))
  shape = (2, 224, 224, 3)
  s_shapes = train.tap_shapes(models.get_model('resnet18', num_classes=1000), taps['student'],
                              shape)
  t_shapes = train.tap_shapes(models.get_model('resnet34', num_classes=1000), taps['teacher'],
                              shape)
  shapes = {'student': s_shapes, 'teacher': t_shapes}
  module = term.build_connector(methods.BuildContext(), shapes)
  s_zeros = zeros(term.select(shapes, 'student'))
  t_zeros = zeros(term.select(shapes, 'teacher'))
  assert module.student_channels == (64, 64, 128, 128, 256, 256, 512, 512)
  assert module.teacher_channels == (64,) * 3 + (128,) * 4 + (256,) * 6 + (512,) * 3
  out, variables = jax.eval_shape(
      lambda s, t: module.init_with_output(jax.random.key(0), s, t, False), s_zeros, t_zeros)
  assert out.attention.shape == (2, 16, 8)
  params, stats = variables['params'], variables['batch_stats']
  for j, c in enumerate(module.teacher_channels):
    assert params[f'query_layer{j}']['linear']['kernel'].shape == (c, 128)
    assert params[f'query_layer{j}']['linear']['bias'].shape == (128,)
    assert params[f'query_layer{j}']['bn']['scale'].shape == (128,)
    assert stats[f'query_layer{j}']['bn']['mean'].shape == (128,)
  for i, c in enumerate(module.student_channels):
    assert params[f'key_layer{i}']['linear']['kernel'].shape == (c, 128)
  assert params['bilinear']['linear']['kernel'].shape == (128, 128 * 16)
  assert params['bilinear']['bn']['scale'].shape == (128 * 16,)
  assert stats['bilinear']['bn']['var'].shape == (128 * 16,)
  assert params['p_t'].shape == (16, 128) and params['p_s'].shape == (8, 128)
  assert set(params) == ({f'query_layer{j}' for j in range(16)}
                         | {f'key_layer{i}' for i in range(8)} | {'bilinear', 'p_t', 'p_s'})

  # PyTorch inits: Linear U(+-1/sqrt(fan_in)) weight and bias, BN 1/0, xavier_normal_
  # (untruncated, std sqrt(2 / (T + d))) for the positional tables.
  small = afd.AFDAttention(student_channels=(64,), teacher_channels=(512, 512), qk_dim=128)
  p = small.init(jax.random.key(1), (jnp.zeros((1, 2, 2, 64)),),
                 (jnp.zeros((1, 2, 2, 512)), jnp.zeros((1, 1, 1, 512))), False)['params']
  for name, fan_in in (('query_layer0', 512), ('key_layer0', 64), ('bilinear', 128)):
    for leaf in ('kernel', 'bias'):
      w = np.asarray(p[name]['linear'][leaf])
      assert np.abs(w).max() <= 1 / math.sqrt(fan_in) and np.abs(w).max() > 0.9 / math.sqrt(
          fan_in), (name, leaf)
    np.testing.assert_array_equal(p[name]['bn']['scale'], 1.0)
    np.testing.assert_array_equal(p[name]['bn']['bias'], 0.0)
  pos = np.asarray(module.init(jax.random.key(2), s_zeros, t_zeros, False)['params']['p_t'])
  std = math.sqrt(2 / (16 + 128))
  assert abs(pos.std() / std - 1) < 0.08, pos.std()
  assert np.abs(pos).max() > 2.5 * std  # not truncated at 2 sigma (Flax glorot_normal would be)


# --------------------------------------------------------------------------------------------
# A float64 NumPy re-implementation of the method (docs/methods.md#afd), step by step, on tiny
# random inputs.
# --------------------------------------------------------------------------------------------


def _np_aap(x, size):
  """PyTorch adaptive_avg_pool2d on [B, H, W] (windows floor(i*I/O) .. ceil((i+1)*I/O))."""
  def windows(n_in, n_out):
    return [(i * n_in // n_out, -(-(i + 1) * n_in // n_out)) for i in range(n_out)]
  out = np.zeros((x.shape[0],) + tuple(size))
  for a, (h0, h1) in enumerate(windows(x.shape[1], size[0])):
    for b, (w0, w1) in enumerate(windows(x.shape[2], size[1])):
      out[:, a, b] = x[:, h0:h1, w0:w1].mean(axis=(1, 2))
  return out


def _np_bn(x, p):
  mean, var = x.mean(0), x.var(0)
  return (x - mean) / np.sqrt(var + 1e-5) * p['scale'] + p['bias'], mean, var


def _np_linear_bn(x, p, relu):
  y, mean, var = _np_bn(x @ p['linear']['kernel'] + p['linear']['bias'], p['bn'])
  return (np.maximum(y, 0) if relu else y), mean, var


def _np_l2n(x):
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _np_afd(student, teacher, params, d):
  """Returns (loss, attention, {module: (batch mean, biased batch var)})."""
  n_s, n_t = len(student), len(teacher)
  b = student[0].shape[0]
  stats = {}
  query = []
  for j, f in enumerate(teacher):
    q, *stats[f'query_layer{j}'] = _np_linear_bn(f.mean((1, 2)), params[f'query_layer{j}'],
                                                 False)
    query.append(q)
  query = np.stack(query, 1)  # [B, T, d]
  key = []
  for i, f in enumerate(student):
    k, *stats[f'key_layer{i}'] = _np_linear_bn(f.mean((1, 2)), params[f'key_layer{i}'], True)
    key.append(k)
  key = np.stack(key, 1).reshape(b * n_s, d)  # rows ordered (b, i), as PyTorch's view
  kb, *stats['bilinear'] = _np_linear_bn(key, params['bilinear'], False)
  kb = kb.reshape(b, n_s, n_t, d)
  logit = np.zeros((b, n_t, n_s))
  for j in range(n_t):
    for i in range(n_s):
      logit[:, j, i] = ((kb[:, i, j, :] * query[:, j, :]).sum(-1)
                        + params['p_t'][j] @ params['p_s'][i]) / math.sqrt(d)
  att = np.exp(logit - logit.max(-1, keepdims=True))
  att /= att.sum(-1, keepdims=True)
  loss = 0.0
  for j, t in enumerate(teacher):
    v_t = _np_l2n((t ** 2).mean(-1).reshape(b, -1))
    per_example = np.zeros(b)
    for i, s in enumerate(student):
      v_s = _np_l2n(_np_aap((s ** 2).mean(-1), t.shape[1:3]).reshape(b, -1))
      per_example += att[:, j, i] * ((v_s - v_t) ** 2).mean(-1)
    loss += per_example.mean()
  return loss, att, stats


def test_afd_matches_a_numpy_reimplementation_of_the_spec():
  rng = np.random.default_rng(0)
  b, d = 4, 8
  # Student 4x4 and 2x2 maps; teacher 4x4, 3x3 (overlapping 4 -> 3 windows, 2 -> 3 upsampling)
  # and 2x2 maps; channel counts all different.
  student = {'s0': rng.normal(size=(b, 4, 4, 3)), 's1': rng.normal(size=(b, 2, 2, 5))}
  teacher = {'t0': rng.normal(size=(b, 4, 4, 6)), 't1': rng.normal(size=(b, 3, 3, 7)),
             't2': rng.normal(size=(b, 2, 2, 2))}
  term = methods.build_terms({'afd': dict(weight=1.0, student_taps=('s0', 's1'),
                                          teacher_taps=('t0', 't1', 't2'), qk_dim=d)})[0]
  struct = lambda tree: {k: jax.ShapeDtypeStruct(v.shape, jnp.float32) for k, v in tree.items()}
  module = term.build_connector(methods.BuildContext(),
                                {'student': struct(student), 'teacher': struct(teacher)})
  f32 = lambda tree: tuple(jnp.asarray(v, jnp.float32) for v in tree.values())
  variables = module.init(jax.random.key(0), f32(student), f32(teacher), False)
  # Random BN affine parameters too, so every parameter takes part in the check.
  keys = iter(jax.random.split(jax.random.key(1), 64))
  params = jax.tree.map(lambda x: x + 0.3 * jax.random.normal(next(keys), x.shape),
                        variables['params'])

  @jax.jit
  def forward(p, s, t):
    o, new = module.apply({'params': p, 'batch_stats': variables['batch_stats']}, s, t, True,
                          mutable=['batch_stats'])
    outputs = {'student': dict(zip(student, s)), 'teacher': dict(zip(teacher, t))}
    return term(outputs, None, o), (o, new)

  value, (out, new) = forward(params, f32(student), f32(teacher))

  np_params = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
  want, want_att, stats = _np_afd(list(student.values()), list(teacher.values()), np_params, d)
  np.testing.assert_allclose(out.attention, want_att, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(float(value), want, rtol=1e-4)
  # Running statistics: PyTorch momentum 0.1 from mean 0 / var 1 (Flax keeps the biased var).
  for name, (mean, var) in stats.items():
    np.testing.assert_allclose(new['batch_stats'][name]['bn']['mean'], 0.1 * mean, rtol=1e-4,
                               atol=1e-6)
    np.testing.assert_allclose(new['batch_stats'][name]['bn']['var'], 0.9 + 0.1 * var, rtol=1e-4)

  # Gradients: into the student taps and every connector parameter, none into the teacher.
  g_p, g_s, g_t = jax.jit(jax.grad(lambda *a: forward(*a)[0], argnums=(0, 1, 2)))(
      params, f32(student), f32(teacher))
  assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(g_s))
  assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(g_t))
  for name in ('p_t', 'p_s', 'bilinear', 'query_layer1', 'key_layer1'):
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(g_p[name])) > 0, name
