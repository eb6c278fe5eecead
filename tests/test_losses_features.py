"""Tests for kdjax.losses.pooling and kdjax.losses.features (docs/methods.md#resampling, the
feature methods of docs/methods.md, golden values per docs/methods.md#golden-value-policy)."""

import logging
import math

import jax
import jax.numpy as jnp
from jax.test_util import check_grads
import numpy as np
import pytest

from kdjax.losses import features as F
from kdjax.losses import pooling
from kdjax.losses import relations

RTOL, ATOL = 1e-5, 1e-6  # docs/methods.md#golden-value-policy
GRAD_TOL = dict(atol=1e-2, rtol=1e-2, eps=1e-3)  # float32 central differences

# The feature-map golden inputs, F[b][h][w][c].
F_S = np.array([[[[1.0, 0.0], [0.5, 1.0]], [[0.0, 2.0], [1.0, 1.0]]],
                [[[0.2, 0.1], [0.0, 0.0]], [[1.5, 0.5], [0.3, 0.7]]]])
F_T = np.array([[[[1, 0, 1], [0, 1, 0.5]], [[2, 0, 0], [1, 1, 1]]],
                [[[0, 0.3, 0.1], [0.2, 0, 0]], [[1, 1, 0.5], [0, 0.9, 0.4]]]], dtype=np.float64)


def _rand(seed, shape, scale=1.0):
  return jnp.asarray(np.random.RandomState(seed).randn(*shape) * scale, jnp.float32)


# ------------------------------------------------------------------------------------------------
# Pooling (docs/methods.md#resampling)
# ------------------------------------------------------------------------------------------------


def _np_adaptive_pool(x, out_h, out_w):
  """Brute-force PyTorch adaptive average pooling on NHWC (float64)."""
  b, h, w, c = x.shape
  y = np.zeros((b, out_h, out_w, c))
  for i in range(out_h):
    h0, h1 = math.floor(i * h / out_h), math.ceil((i + 1) * h / out_h)
    for j in range(out_w):
      w0, w1 = math.floor(j * w / out_w), math.ceil((j + 1) * w / out_w)
      y[:, i, j, :] = x[:, h0:h1, w0:w1, :].mean(axis=(1, 2))
  return y


@pytest.mark.parametrize('in_size,out_size,windows', [
    (7, 4, [(0, 2), (1, 4), (3, 6), (5, 7)]),
    (7, 2, [(0, 4), (3, 7)]),
    (14, 4, [(0, 4), (3, 7), (7, 11), (10, 14)]),
    (7, 1, [(0, 7)]),
    (56, 4, [(0, 14), (14, 28), (28, 42), (42, 56)]),
    (28, 4, [(0, 7), (7, 14), (14, 21), (21, 28)]),
    (2, 5, [(0, 1), (0, 1), (0, 2), (1, 2), (1, 2)]),  # O > I: cells replicate
    (3, 7, [(0, 1), (0, 1), (0, 2), (1, 2), (1, 3), (2, 3), (2, 3)]),
])
def test_adaptive_pool_windows(in_size, out_size, windows):
  assert pooling.adaptive_pool_windows(in_size, out_size) == windows
  mat = pooling.adaptive_pool_matrix(in_size, out_size)
  np.testing.assert_allclose(mat.sum(axis=1), 1.0, rtol=1e-6)


@pytest.mark.parametrize('in_hw,out_size', [
    ((7, 7), 4), ((7, 7), 2), ((14, 14), 4), ((7, 7), 1), ((7, 5), (2, 3)), ((2, 3), (5, 7)),
    ((4, 4), 4),
])
def test_adaptive_avg_pool2d_matches_bruteforce(in_hw, out_size):
  x = np.random.RandomState(0).randn(2, *in_hw, 3)
  out_h, out_w = (out_size, out_size) if isinstance(out_size, int) else out_size
  got = pooling.adaptive_avg_pool2d(jnp.asarray(x, jnp.float32), out_size)
  assert got.shape == (2, out_h, out_w, 3)
  np.testing.assert_allclose(got, _np_adaptive_pool(x, out_h, out_w), rtol=1e-5, atol=1e-6)


def test_adaptive_avg_pool2d_jit_and_grad():
  x = _rand(1, (2, 7, 7, 3))
  f = jax.jit(lambda v: pooling.adaptive_avg_pool2d(v, 4))
  np.testing.assert_allclose(f(x), pooling.adaptive_avg_pool2d(x, 4), rtol=1e-6)
  check_grads(jax.jit(lambda v: jnp.sum(jnp.sin(pooling.adaptive_avg_pool2d(v, 4)))), (x,), 1,
              modes=('rev',), **GRAD_TOL)


@pytest.mark.parametrize('in_size,out_size,expected', [
    (1, 7, [0] * 7),
    (7, 14, [i // 2 for i in range(14)]),
    (14, 28, [i // 2 for i in range(28)]),
    (3, 9, [i // 3 for i in range(9)]),
    (4, 2, [0, 2]),
    (5, 3, [0, 1, 3]),            # floor(d * 5 / 3)
    (3, 5, [0, 0, 1, 1, 2]),      # jax.image.resize('nearest') would give [0, 0, 1, 2, 2]
    (4, 4, [0, 1, 2, 3]),
])
def test_nearest_source_indices(in_size, out_size, expected):
  idx = pooling.nearest_source_indices(in_size, out_size)
  np.testing.assert_array_equal(idx, expected)
  np.testing.assert_array_equal(idx, [min(d * in_size // out_size, in_size - 1)
                                      for d in range(out_size)])


def test_nearest_source_indices_float32_rule():
  # PyTorch evaluates floor(dst * float32(I / O)) in float32; for 2 -> 82 that puts dst 41 on
  # source 0, one below the exact floor(41 * 2 / 82) = 1.
  idx = pooling.nearest_source_indices(2, 82)
  assert idx[40] == 0 and idx[41] == 0 and idx[42] == 1


@pytest.mark.parametrize('in_hw,size', [((1, 1), 7), ((7, 7), 14), ((2, 3), (6, 9)),
                                        ((3, 5), (5, 3)), ((4, 4), 4)])
def test_nearest_resize_values(in_hw, size):
  x = np.random.RandomState(2).randn(2, *in_hw, 3).astype(np.float32)
  out_h, out_w = (size, size) if isinstance(size, int) else size
  ih = [min(d * in_hw[0] // out_h, in_hw[0] - 1) for d in range(out_h)]
  iw = [min(d * in_hw[1] // out_w, in_hw[1] - 1) for d in range(out_w)]
  got = jax.jit(lambda v: pooling.nearest_resize(v, size))(jnp.asarray(x))
  np.testing.assert_array_equal(got, x[:, ih][:, :, iw])
  if out_h % in_hw[0] == 0 and out_w % in_hw[1] == 0:  # integer factors: jax.image agrees
    ref = jax.image.resize(jnp.asarray(x), (2, out_h, out_w, 3), method='nearest')
    np.testing.assert_array_equal(got, ref)


# ------------------------------------------------------------------------------------------------
# Golden values (AT, NST, SP, OFD, HCL)
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize('name,fn,expected', [
    ('at', lambda s, t: F.attention_transfer(s, t, p=2), 0.01071946823),
    ('at_x1000', lambda s, t: 1000 * F.attention_transfer(s, t, p=2), 10.719468),
    ('nst', F.nst, 0.066816),
    ('nst_x50', lambda s, t: 50 * F.nst(s, t), 3.340822),
    ('sp_features', F.similarity_preserving, 0.008849113505),
    ('sp_relations', relations.similarity_preserving, 0.008849113505),
])
def test_feature_map_golden(name, fn, expected):
  del name
  got = jax.jit(fn)(F_S, F_T)
  assert got.dtype == jnp.float32 and got.shape == ()
  np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)


def test_sp_flatten_order_invariance():
  nchw_s = np.transpose(F_S, (0, 3, 1, 2)).reshape(2, -1)
  nchw_t = np.transpose(F_T, (0, 3, 1, 2)).reshape(2, -1)
  np.testing.assert_allclose(F.similarity_preserving(nchw_s, nchw_t), 0.008849113505,
                             rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize('gamma,beta,expected', [
    (1.0, 0.0, -0.797885), (0.5, 1.0, -0.186608), (2.0, -1.0, -2.018321),
    (0.1, 1.0, -0.300000),  # -3 s branch: Phi(-10) < 0.001
    (-1.0, 0.0, -0.797885),  # |gamma| is the std
])
def test_ofd_margin_golden(gamma, beta, expected):
  np.testing.assert_allclose(F.ofd_margin([gamma], [beta]), [expected], rtol=RTOL, atol=ATOL)


def test_ofd_margin_vectorised_and_zero_scale(caplog):
  with caplog.at_level(logging.WARNING):
    got = F.ofd_margin(np.array([1.0, 0.0, 0.1]), np.array([0.0, 0.3, 1.0]))
  assert got.dtype == np.float32
  np.testing.assert_allclose(got, [-0.797885, 0.0, -0.3], rtol=RTOL, atol=ATOL)
  assert 'scale 0' in caplog.text


@pytest.mark.parametrize('s,t,expected', [
    (0.5, 1.0, 0.25), (-0.2, 1.0, 1.44), (0.3, -0.5, 0.64), (-0.6, -0.5, 0.0),
    (0.1, -2.0, 0.806197), (-1.5, -2.0, 0.0),
])
def test_ofd_partial_l2_golden(s, t, expected):
  margin = jnp.array([-0.797885])
  got = F.ofd(jnp.full((1, 1, 1, 1), s), jnp.full((1, 1, 1, 1), t), margin)
  np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)


def test_ofd_reduction_sum_over_chw_mean_over_batch():
  margin = np.array([-0.797885, -0.5])
  s = np.array([0.5, -0.2, 0.3, -0.6, 0.1, -1.5, 0.2, 0.4]).reshape(2, 2, 1, 2)
  t = np.array([1.0, 1.0, -0.5, -0.5, -2.0, -2.0, 0.1, -0.1]).reshape(2, 2, 1, 2)
  tp = np.maximum(t, margin)
  d = (s - tp) ** 2 * ((s > tp) | (tp > 0))
  np.testing.assert_allclose(F.ofd(s, t, margin), d.sum() / 2, rtol=RTOL, atol=ATOL)


def test_ofd_pools_teacher_to_student_size():
  s, t = _rand(3, (2, 2, 2, 3)), _rand(4, (2, 4, 4, 3))
  margin = jnp.array([-0.8, -0.2, -1.5])
  np.testing.assert_allclose(F.ofd(s, t, margin),
                             F.ofd(s, pooling.adaptive_avg_pool2d(t, 2), margin), rtol=1e-6)


def test_hcl_golden():
  s = ((7 * np.arange(7)[:, None] + np.arange(7)[None, :]) / 10.0)[None, :, :, None]
  np.testing.assert_allclose(jax.jit(F.hcl)(s, np.zeros_like(s)), 7.46, rtol=RTOL, atol=ATOL)
  s1 = np.array([1.0, 2.0]).reshape(1, 1, 1, 2)
  np.testing.assert_allclose(F.hcl(s1, np.zeros_like(s1)), 2.5, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize('h,weights', [
    (4, {4: None, 2: 0.5, 1: 0.25}),  # full, 2x2, 1x1 over 1.75
    (2, {2: None, 1: 0.5}),           # full, 1x1 over 1.5
    (5, {5: None, 4: 0.5, 2: 0.25, 1: 0.125}),
])
def test_hcl_pyramid_weights(h, weights):
  s, t = np.random.RandomState(5).randn(2, h, h, 3), np.random.RandomState(6).randn(2, h, h, 3)
  total, norm = 0.0, 0.0
  for level, w in weights.items():
    w = 1.0 if w is None else w
    diff = _np_adaptive_pool(s, level, level) - _np_adaptive_pool(t, level, level)
    total += w * np.mean(diff ** 2)
    norm += w
  np.testing.assert_allclose(jax.jit(F.hcl)(s, t), total / norm, rtol=RTOL, atol=ATOL)


# ------------------------------------------------------------------------------------------------
# Other values against direct NumPy re-implementations
# ------------------------------------------------------------------------------------------------


def test_attention_transfer_size_matching():
  s, t = _rand(7, (2, 7, 7, 3)), _rand(8, (2, 4, 4, 5))
  np.testing.assert_allclose(F.attention_transfer(s, t, p=2),
                             F.attention_transfer(pooling.adaptive_avg_pool2d(s, 4), t, p=2),
                             rtol=1e-6)
  np.testing.assert_allclose(F.attention_transfer(t, s, p=2),
                             F.attention_transfer(t, pooling.adaptive_avg_pool2d(s, 4), p=2),
                             rtol=1e-6)


def test_attention_transfer_matches_numpy_p4():
  s, t = np.random.RandomState(9).randn(2, 3, 3, 2), np.random.RandomState(10).randn(2, 3, 3, 4)

  def att(f):
    a = (f ** 4).mean(-1).reshape(2, -1)
    return a / np.linalg.norm(a, axis=1, keepdims=True)
  np.testing.assert_allclose(F.attention_transfer(s, t, p=4), np.mean((att(s) - att(t)) ** 2),
                             rtol=RTOL, atol=ATOL)


def test_fitnet_and_mgd_reductions():
  s, t = np.random.RandomState(11).randn(2, 3, 3, 4), np.random.RandomState(12).randn(2, 3, 3, 4)
  np.testing.assert_allclose(F.fitnet(s, t), np.mean((s - t) ** 2), rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(F.mgd(s, t), np.sum((s - t) ** 2) / 2, rtol=RTOL, atol=ATOL)


def test_mgd_mask():
  key = jax.random.PRNGKey(0)
  m = F.mgd_mask(key, (200, 7, 7, 64), lambda_mgd=0.15)
  assert m.shape == (200, 1, 1, 64) and m.dtype == jnp.float32
  assert set(np.unique(np.asarray(m)).tolist()) <= {0.0, 1.0}
  assert abs(1.0 - float(m.mean()) - 0.15) < 0.01
  np.testing.assert_array_equal(m, F.mgd_mask(key, (200, 7, 7, 64), lambda_mgd=0.15))
  assert float(F.mgd_mask(key, (4, 1, 1, 8), lambda_mgd=0.0).min()) == 1.0


def test_pefd_value():
  f_s = np.array([[1.0, 0.0, 1.0], [0.0, 2.0, 0.0]])
  h_t = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
  expected = np.mean([1 - 1 / np.sqrt(2), 1 - 1 / np.sqrt(2)])
  np.testing.assert_allclose(F.pefd(f_s, h_t), expected, rtol=RTOL, atol=ATOL)


def _np_afd(student_feats, teacher_feats, att):
  def val(f, size=None):
    a = (f ** 2).mean(-1, keepdims=True)
    if size is not None:
      a = _np_adaptive_pool(a, *size)
    a = a.reshape(a.shape[0], -1)
    return a / np.linalg.norm(a, axis=1, keepdims=True)
  total = 0.0
  for j, t in enumerate(teacher_feats):
    v_t = val(t)
    v_s = np.stack([val(s, t.shape[1:3]) for s in student_feats], axis=1)
    diff = ((v_s - v_t[:, None]) ** 2).mean(2)
    total += (diff * att[:, j]).sum(1).mean()
  return total


def test_afd_matches_numpy_reference():
  rs = np.random.RandomState(13)
  student = [rs.randn(3, 4, 4, 2), rs.randn(3, 2, 2, 3)]
  teacher = [rs.randn(3, 4, 4, 3), rs.randn(3, 2, 2, 2), rs.randn(3, 4, 4, 5), rs.randn(3, 1, 1, 4)]
  kb, q = rs.randn(3, 2, 4, 6), rs.randn(3, 4, 6)
  p_t, p_s = rs.randn(4, 6), rs.randn(2, 6)
  logit = (np.einsum('bstq,btq->bts', kb, q) + p_t @ p_s.T) / np.sqrt(6)
  att = np.exp(logit - logit.max(-1, keepdims=True))
  att /= att.sum(-1, keepdims=True)
  got_att = F.afd_attention(kb, q, p_t, p_s)
  np.testing.assert_allclose(got_att, att, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(jax.jit(F.afd)(student, teacher, got_att),
                             _np_afd(student, teacher, att),
                             rtol=RTOL, atol=ATOL)


def _np_nce(p, n_data):
  m = p.shape[1] - 1
  c = m / n_data
  log_d1 = np.log(p[:, 0] / (p[:, 0] + c + 1e-7))
  log_d0 = np.log(c / (p[:, 1:] + c + 1e-7))
  return -(log_d1.sum() + log_d0.sum()) / p.shape[0]


def test_crd_pieces_match_numpy_reference():
  rs = np.random.RandomState(14)
  n_data, b, k, d = 100, 3, 5, 4
  e_s = rs.randn(b, d)
  e_s /= np.linalg.norm(e_s, axis=1, keepdims=True)
  mem = rs.uniform(-1, 1, (b, k + 1, d))
  out = np.exp(np.einsum('bkd,bd->bk', mem, e_s) / 0.07)
  got = F.crd_scores(e_s, mem, temperature=0.07)
  np.testing.assert_allclose(got, out, rtol=1e-5)
  z = F.crd_normalization_constant(got, n_data=n_data)
  np.testing.assert_allclose(z, n_data * out.mean(), rtol=1e-5)
  p_s, p_t = out / (n_data * out.mean()), rs.uniform(0.01, 2.0, (b, k + 1))
  np.testing.assert_allclose(F.crd_nce(p_s, n_data=n_data), _np_nce(p_s, n_data), rtol=RTOL)
  np.testing.assert_allclose(F.crd(p_s, p_t, n_data=n_data),
                             _np_nce(p_s, n_data) + _np_nce(p_t, n_data), rtol=RTOL)
  # Memory rows and Z are constants.
  g_mem = jax.grad(lambda m_: jnp.sum(F.crd_scores(e_s, m_)))(jnp.asarray(mem, jnp.float32))
  assert not np.any(np.asarray(g_mem))
  assert float(jax.grad(lambda o: F.crd_normalization_constant(o, n_data=n_data))(got).sum()) == 0


# ------------------------------------------------------------------------------------------------
# Generic properties: gradients, zero inputs, stop-gradient, identity, dtypes
# ------------------------------------------------------------------------------------------------

_MARGIN = jnp.array([-0.8, -0.2, -1.5])
_AFD_ATT = jax.nn.softmax(_rand(20, (2, 2, 2)), axis=-1)


def _afd_pair(s, t):
  # Two student taps / two teacher taps derived from one array each (covers up- and down-pooling).
  return F.afd([s, s[:, :2, :2, :2] * 2.0], [t, t[:, ::2, ::2, :]], _AFD_ATT)


# name -> (loss(student, teacher), student shape, teacher shape, zero loss when student == teacher)
CASES = {
    'attention_transfer': (lambda s, t: F.attention_transfer(s, t, p=2),
                           (2, 4, 4, 3), (2, 2, 2, 5)),
    'nst': (F.nst, (2, 4, 4, 3), (2, 7, 7, 2)),
    'fitnet': (F.fitnet, (2, 3, 3, 4), (2, 3, 3, 4)),
    'hcl': (F.hcl, (2, 7, 7, 2), (2, 7, 7, 2)),
    'ofd': (lambda s, t: F.ofd(s, t, _MARGIN), (2, 3, 3, 3), (2, 3, 3, 3)),
    'mgd': (F.mgd, (2, 3, 3, 4), (2, 3, 3, 4)),
    'pefd': (F.pefd, (3, 5), (3, 5)),
    'similarity_preserving': (F.similarity_preserving, (3, 2, 2, 3), (3, 2, 2, 5)),
    'afd': (_afd_pair, (2, 4, 4, 3), (2, 4, 4, 2)),
}
IDENTITY_ZERO = ['attention_transfer', 'nst', 'fitnet', 'hcl', 'ofd', 'mgd', 'pefd',
                 'similarity_preserving']


@pytest.mark.parametrize('name', sorted(CASES))
def test_check_grads_student(name):
  fn, s_shape, t_shape = CASES[name]
  t = _rand(31, t_shape)
  check_grads(jax.jit(lambda s_: fn(s_, t)),
              (_rand(30, s_shape),), 1,
              modes=('rev',), **GRAD_TOL)


@pytest.mark.parametrize('teacher_kind', ['zeros', 'random'])
@pytest.mark.parametrize('name', sorted(CASES))
def test_finite_grads_at_zero_features(name, teacher_kind):
  fn, s_shape, t_shape = CASES[name]
  t = jnp.zeros(t_shape) if teacher_kind == 'zeros' else _rand(32, t_shape)
  value, grad = jax.jit(jax.value_and_grad(fn))(jnp.zeros(s_shape), t)
  assert np.isfinite(value)
  assert np.all(np.isfinite(grad))


@pytest.mark.parametrize('name', sorted(CASES))
def test_teacher_is_stop_gradient(name):
  fn, s_shape, t_shape = CASES[name]
  g_t = jax.jit(jax.grad(fn, argnums=1))(_rand(33, s_shape), _rand(34, t_shape))
  assert not np.any(np.asarray(g_t))


@pytest.mark.parametrize('name', IDENTITY_ZERO)
def test_zero_loss_for_identical_inputs(name):
  fn, s_shape, _ = CASES[name]
  x = jnp.abs(_rand(35, s_shape)) if name == 'pefd' else _rand(35, s_shape)
  np.testing.assert_allclose(jax.jit(fn)(x, x), 0.0, atol=1e-6)


def test_afd_zero_for_identical_single_tap():
  x = _rand(36, (2, 3, 3, 4))
  np.testing.assert_allclose(F.afd([x], [x], jnp.ones((2, 1, 1))), 0.0, atol=1e-7)


@pytest.mark.parametrize('name', sorted(CASES))
def test_bfloat16_inputs_give_float32_scalar(name):
  fn, s_shape, t_shape = CASES[name]
  bf16 = jnp.bfloat16
  out = jax.jit(fn)(_rand(37, s_shape).astype(bf16), _rand(38, t_shape).astype(bf16))
  assert out.dtype == jnp.float32 and out.shape == ()


def test_afd_attention_and_crd_grads():
  kb, q = _rand(40, (2, 2, 3, 4)), _rand(41, (2, 3, 4))
  p_t, p_s = _rand(42, (3, 4)), _rand(43, (2, 4))
  w = _rand(44, (2, 3, 2))
  check_grads(jax.jit(lambda *a: jnp.sum(w * F.afd_attention(*a))), (kb, q, p_t, p_s), 1,
              modes=('rev',), **GRAD_TOL)
  mem = _rand(45, (2, 5, 4), 0.3)
  check_grads(jax.jit(lambda e: jnp.sum(jnp.log(F.crd_scores(e, mem, temperature=0.5)))),
              (_rand(46, (2, 4)),), 1, modes=('rev',), **GRAD_TOL)
  p_s, p_t = jnp.exp(_rand(47, (2, 5), 0.5)), jnp.exp(_rand(48, (2, 5), 0.5))
  check_grads(jax.jit(lambda a, b: F.crd(a, b, n_data=50)), (p_s, p_t), 1, modes=('rev',),
              **GRAD_TOL)
  value, grad = jax.jit(jax.value_and_grad(
      lambda e: F.crd_nce(F.crd_scores(e, mem) / 3.0, n_data=50)))(jnp.zeros((2, 4)))
  assert np.isfinite(value) and np.all(np.isfinite(grad))


def test_shape_errors():
  with pytest.raises(ValueError, match='fitnet'):
    F.fitnet(jnp.zeros((2, 3, 3, 4)), jnp.zeros((2, 3, 3, 5)))
  with pytest.raises(ValueError, match='hcl'):
    F.hcl(jnp.zeros((2, 3, 3, 4)), jnp.zeros((2, 4, 4, 4)))
  with pytest.raises(ValueError, match='NHWC'):
    F.attention_transfer(jnp.zeros((2, 4)), jnp.zeros((2, 4)), p=2)
  with pytest.raises(ValueError, match='attention'):
    F.afd([jnp.zeros((2, 2, 2, 1))], [jnp.zeros((2, 2, 2, 1))], jnp.zeros((2, 2, 1)))
