"""Feature methods across architecture families, through the common stage taps.

digits_vit (ViT over 2x2 patches: stage1..4 [4x4x16], pooled [16]) and digits_cnn (stage1
[8x8x32], stage2 [4x4x64], pooled [64]) differ in family, channels, widths and, at stage1, in
grid (4x4 against 8x8). Every feature method trains one step with either one as the teacher
(docs/methods.md, "Across architectures" of each method); the resize rules they use are tested
on their own below.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import conftest
from kdjax import losses
from kdjax import methods
from kdjax import train
from kdjax.errors import KdjaxError
from kdjax.losses import features as F
from kdjax.losses import pooling
from kdjax.methods import fitnet as fitnet_lib
from kdjax.methods import reviewkd as reviewkd_lib

STAGES = ('stage1', 'stage2')  # 8x8 vs 4x4 at stage1, 4x4 vs 4x4 at stage2
TERMS = {
    'fitnet': dict(weight=1.0, student_tap='stage1', teacher_tap='stage1'),
    'at': dict(weight=1000.0, taps=STAGES),
    'nst': dict(weight=50.0, taps=STAGES),
    'crd': dict(weight=0.8, dim=8, num_negatives=16),
    'rkd': dict(weight=1.0, group_size=8),
    'pkt': dict(weight=30000.0, group_size=8),
    'sp': dict(weight=3000.0, tap='stage1', group_size=8),
    'reviewkd': dict(weight=1.0, student_taps=STAGES + ('pooled',),
                     teacher_taps=STAGES + ('pooled',)),
}
CONNECTORS = ('fitnet', 'crd', 'reviewkd')
PAIRS = {'vit_to_cnn': ('digits_vit', 'digits_cnn'), 'cnn_to_vit': ('digits_cnn', 'digits_vit')}


def _config(data_dir, teacher, student):
  config, _ = conftest.load_recipe('digits_kd', 'smoke')
  with config.unlocked():
    config.data_dir = data_dir
    config.teacher.model, config.teacher.checkpoint = teacher, ''  # random teacher (smoke)
    config.student.model = student
    config.batch_size = 16
    config.input.add_index = True  # CRD's memory rows
    config.losses = TERMS
  return config


def _term_grads(run, batch):
  """d(term value)/d(trainable params) for every term, one jacobian row per term, computed
  with the trainer's own forward functions (teacher, student, connectors) on `batch`."""
  setup, state = run.setup, run.state
  networks, objective = setup.networks, setup.objective
  side = {k: v for k, v in batch.items() if k not in ('image', 'stop')}
  rng = jax.random.key(0)

  def values(params):
    outputs, _ = train.trainable_forward(networks, params, state.batch_stats, batch['image'])
    outputs['teacher'] = train.teacher_forward(networks.teacher, run.teacher, batch['image'],
                                               networks.taps['teacher'])
    connected, _ = train.connectors_forward(objective, params['connectors'],
                                            state.batch_stats['connectors'], outputs, side, rng)
    return jnp.stack([t(outputs, batch['label'], connected.get(t.name))
                      for t in objective.terms])

  jac = jax.jit(jax.jacrev(values))(state.params)
  return {t.name: jax.tree.map(lambda g, i=i: g[i], jac) for i, t in enumerate(objective.terms)}


def _max_abs(tree):
  return max(float(np.abs(x).max()) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize('pair', sorted(PAIRS))
def test_feature_methods_train_across_families(digits_data_dir, pair):
  teacher, student = PAIRS[pair]
  run = conftest.Run(_config(digits_data_dir, teacher, student))
  teacher_before = jax.tree.map(np.copy, run.setup.networks.teacher_variables)
  batch = next(run.batches)
  # Gradients of each term, taken before the step (the step donates the state).
  grads = _term_grads(run, run.global_batch(batch))
  before = jax.device_get(run.state.params)
  metrics = run.step(batch)
  after = jax.device_get(run.state.params)
  assert int(metrics['nonfinite']) == 0
  for name in TERMS:
    value = float(metrics[f'loss/{name}'])
    assert np.isfinite(value) and value > 0, (pair, name, value)
    # Each term alone reaches the student and its own connector, and no other connector.
    assert _max_abs(grads[name]['student']) > 0, (pair, name)
    for other in CONNECTORS:
      reached = _max_abs(grads[name]['connectors'][other]) > 0
      assert reached == (other == name), (pair, name, other)
  # The real step moved the student and every connector; the teacher is untouched.
  assert _max_abs(jax.tree.map(lambda a, b: a - b, before['student'], after['student'])) > 0
  for name in CONNECTORS:
    assert _max_abs(jax.tree.map(lambda a, b: a - b, before['connectors'][name],
                                 after['connectors'][name])) > 0
  jax.tree.map(np.testing.assert_array_equal, teacher_before,
               run.setup.networks.teacher_variables)


# ------------------------------------------------------------------------------------------------
# The resize rule (kdjax.losses.resize_to_grid)
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize('size', [(4, 4), (16, 16), (4, 12), (3, 5), (8, 8)])
@pytest.mark.parametrize('grow', ['bilinear', 'nearest'])
def test_resize_to_grid_keeps_a_constant_map_constant(size, grow):
  x = jnp.full((2, 8, 8, 3), 2.5, jnp.float32)
  y = losses.resize_to_grid(x, size, grow=grow)
  assert y.shape == (2, *size, 3)
  np.testing.assert_allclose(y, 2.5, rtol=1e-6)


def test_resize_to_grid_integer_shrink_is_the_block_mean():
  x = np.random.RandomState(0).randn(2, 12, 8, 3).astype(np.float32)
  got = losses.resize_to_grid(jnp.asarray(x), (4, 2))
  np.testing.assert_allclose(got, x.reshape(2, 4, 3, 2, 4, 3).mean(axis=(2, 4)), rtol=1e-5,
                             atol=1e-6)
  # A shrink is PyTorch's adaptive average pooling (here 7 -> 4: overlapping windows).
  x = np.random.RandomState(1).randn(1, 7, 7, 2).astype(np.float32)
  np.testing.assert_allclose(losses.resize_to_grid(x, 4), losses.adaptive_avg_pool2d(x, 4),
                             rtol=1e-6)


def test_resize_to_grid_growth_is_bilinear_or_nearest():
  ramp = jnp.asarray([0.0, 1.0], jnp.float32).reshape(1, 2, 1, 1)
  # F.interpolate([0, 1], 4, mode='bilinear', align_corners=False) = [0, .25, .75, 1].
  np.testing.assert_allclose(losses.resize_to_grid(ramp, (4, 1))[0, :, 0, 0],
                             [0.0, 0.25, 0.75, 1.0], atol=1e-7)
  np.testing.assert_array_equal(losses.resize_to_grid(ramp, (4, 1), grow='nearest')[0, :, 0, 0],
                                [0.0, 0.0, 1.0, 1.0])
  x = np.random.RandomState(2).randn(2, 4, 5, 3).astype(np.float32)
  for size in ((14, 14), (7, 13), (8, 10)):
    np.testing.assert_allclose(
        losses.resize_to_grid(x, size),
        jax.image.resize(x, (2, *size, 3), 'linear', antialias=False), atol=2e-6)
    np.testing.assert_array_equal(losses.resize_to_grid(x, size, grow='nearest'),
                                  losses.nearest_resize(x, size))
  # Mixed: one axis shrinks (pooled), the other grows (interpolated).
  mixed = losses.resize_to_grid(x, (2, 10))
  np.testing.assert_allclose(mixed, losses.resize_to_grid(losses.adaptive_avg_pool2d(x, (2, 5)),
                                                          (2, 10)), rtol=1e-6)
  np.testing.assert_array_equal(losses.resize_to_grid(x, (4, 5)), x)


def test_resize_to_grid_gradient_reaches_every_cell():
  g = jax.grad(lambda v: jnp.sum(losses.resize_to_grid(v, (14, 14)) ** 2))(jnp.ones((1, 56, 56, 1)))
  assert g.shape == (1, 56, 56, 1) and float(jnp.min(jnp.abs(g))) > 0


def test_at_and_nst_size_rules_across_grids():
  rs = np.random.RandomState(3)
  cnn = jnp.asarray(rs.rand(2, 8, 8, 6), jnp.float32)    # a CNN stage, 8x8
  vit = jnp.asarray(rs.rand(2, 4, 4, 5), jnp.float32)    # a ViT stage, 4x4
  pooled_cnn = cnn.reshape(2, 4, 2, 4, 2, 6).mean(axis=(2, 4))
  for fn in (functools.partial(F.attention_transfer, p=2), F.nst):
    # The larger map is pooled to the smaller grid, whichever side it is on.
    np.testing.assert_allclose(fn(cnn, vit), fn(pooled_cnn, vit), rtol=1e-5)
    np.testing.assert_allclose(fn(vit, cnn), fn(vit, pooled_cnn), rtol=1e-5)
  # Non-square grids (the reference rule fails there): each axis to the smaller length.
  a, b = jnp.asarray(rs.rand(2, 8, 4, 3)), jnp.asarray(rs.rand(2, 4, 8, 3))
  np.testing.assert_allclose(F.attention_transfer(a, b, p=2), F.attention_transfer(
      losses.adaptive_avg_pool2d(a, (4, 4)), losses.adaptive_avg_pool2d(b, (4, 4)), p=2),
                             rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# Connectors on the grids of other families (shapes only: no trainer)
# ------------------------------------------------------------------------------------------------


def _init_apply(module, *args):
  variables = module.init(jax.random.key(0), *args, train=False)
  return module.apply(variables, *args, train=False), variables


@pytest.mark.parametrize('student_hw,teacher_hw,kernel,resizes', [
    ((8, 8), (8, 8), (1, 1), False),       # same grid: 1x1 (reference)
    ((8, 8), (4, 4), (3, 3), False),       # 2x: stride-2 conv (reference)
    ((4, 4), (8, 8), (4, 4), False),       # half: transposed conv (reference)
    ((6, 6), (4, 4), (3, 3), False),       # a little larger: valid conv (reference)
    ((14, 14), (56, 56), (1, 1), True),    # ViT grid -> ResNet stage1: bilinear, 1x1
    ((56, 56), (14, 14), (1, 1), True),    # ResNet stage1 -> ViT grid: block mean, 1x1
    ((4, 4), (6, 6), (1, 1), True),        # non-integer growth: bilinear, 1x1
    ((8, 4), (4, 8), (1, 1), True),        # one axis each way
])
def test_fitnet_regressor_size_rule(student_hw, teacher_hw, kernel, resizes):
  reg = fitnet_lib.ConvReg((*student_hw, 3), (*teacher_hw, 5))
  assert reg.resizes == resizes
  x = jnp.asarray(np.random.RandomState(0).randn(2, *student_hw, 3), jnp.float32)
  out, variables = _init_apply(reg, x)
  assert out.shape == (2, *teacher_hw, 5)
  assert variables['params']['conv']['kernel'].shape[:2] == kernel
  grad = jax.grad(lambda v: jnp.sum(reg.apply(variables, v, train=False) ** 2))(x)
  assert float(jnp.max(jnp.abs(grad))) > 0


def _shape(*s):
  return jax.ShapeDtypeStruct(s, jnp.float32)


@pytest.mark.parametrize('student,teacher', [
    # A ViT student (four 14x14 stages) against a ResNet-like teacher pyramid, and the reverse.
    ([(14, 14, 8)] * 4 + [(8,)], [(56, 56, 4), (28, 28, 6), (14, 14, 8), (7, 7, 10), (10,)]),
    ([(56, 56, 4), (28, 28, 6), (14, 14, 8), (7, 7, 10), (10,)], [(14, 14, 8)] * 4 + [(8,)]),
])
def test_reviewkd_levels_take_every_teacher_grid(student, teacher):
  term = methods.build_terms({'reviewkd': dict(weight=1.0)})[0]
  s_shapes = [_shape(2, *s) for s in student]
  t_shapes = [_shape(2, *t) for t in teacher]
  module = reviewkd_lib._connector(methods.BuildContext(term='reviewkd'), s_shapes, t_shapes,
                                   **term.connector_hparams)
  zeros = lambda shapes: [jnp.zeros(s.shape, s.dtype) for s in shapes]
  out = jax.eval_shape(lambda s, t: module.init_with_output(jax.random.key(0), s, t, False)[0],
                       zeros(s_shapes), zeros(t_shapes))
  assert [level.shape for level in out.levels] == [
      (2, *t) if len(t) == 3 else (2, 1, 1, t[0]) for t in teacher]


def test_map_methods_name_the_stage_taps_for_token_inputs():
  ctx = methods.BuildContext(term='x')
  tokens, grid = _shape(2, 17, 16), _shape(2, 4, 4, 16)
  with pytest.raises(KdjaxError, match='stage1..stage4'):
    fitnet_lib._connector(ctx, [tokens], [grid])
  with pytest.raises(KdjaxError, match='stage1..stage4'):
    reviewkd_lib._connector(ctx, [grid], [tokens], max_mid_channels=512)
  with pytest.raises(ValueError, match='stage1..stage4'):
    F.attention_transfer(jnp.zeros((2, 17, 16)), jnp.zeros((2, 4, 4, 16)))
  # Embedding and relation losses flatten: token inputs work as they are.
  rs = np.random.RandomState(4)
  tok, emb = jnp.asarray(rs.randn(8, 17, 16)), jnp.asarray(rs.randn(8, 64))
  for fn in (losses.similarity_preserving, losses.pkt, losses.rkd):
    assert np.isfinite(float(fn(tok, emb)))
