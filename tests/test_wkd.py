"""WKD (Lv, Yang and Li, NeurIPS 2024): WKD-L, its target term, WKD-F, the method module.

Golden values and gradients: the reference's code path (JiamingLv/WKD @ 214cf88,
`mdistiller/distillers/WKD.py`: `sinkhorn`, `wkd_logit_loss`, `wkd_logit_loss_with_speration`,
`adaptive_avg_std_pool2d`, `wkd_feature_loss`, and the `'fc'` cost and sharpening of
`WKD.__init__`) transcribed into a standalone script and run in PyTorch float64 (its
`.to(torch.float32)` casts dropped); gradients are that script's autograd gradients w.r.t. the
student logits / the student map. The script is not part of the repository.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import conftest
from kdjax import losses as L
from kdjax import methods
from kdjax.errors import KdjaxError
from kdjax.methods import wkd

RTOL, ATOL = 1e-5, 1e-6


def close(got, want, rtol=RTOL, atol=ATOL):
  np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=rtol, atol=atol)


# The common logit inputs (docs/methods.md#golden-value-policy) and a 3-class cost.
ZS = np.array([[2.0, 1.0, 0.1], [0.5, 2.5, -1.0]], np.float32)
ZT = np.array([[3.0, 0.5, -0.5], [0.0, 1.5, 2.0]], np.float32)
Y = np.array([0, 2], np.int32)
C3 = np.array([[0.0, 0.3, 0.8], [0.3, 0.0, 0.5], [0.8, 0.5, 0.0]], np.float32)


def _case_b():
  """B = 4, K = 6 inputs from formulas (the golden script computes the same), and the
  reference's 'fc' cost of 6 prototypes of width 4."""
  b, k = np.arange(4.0)[:, None], np.arange(6.0)[None, :]
  zs = 3 * np.sin(0.7 * b + 1.1 * k + 0.2)
  zt = 2.5 * np.cos(0.5 * b - 0.9 * k + 0.1) + 0.5 * k
  proto = np.cos(1.3 * np.arange(6.0)[:, None] + 0.4 * np.arange(4.0)[None, :]) \
      + 0.1 * np.arange(4.0)[None, :]
  return (zs.astype(np.float32), zt.astype(np.float32), np.array([0, 5, 2, 3], np.int32), proto)


@functools.lru_cache(maxsize=None)
def _wkd_l(temperature, iters=10):
  """jit of (value, d/d student, d/d teacher) of WKD-L (reference lambda 0.05)."""
  f = lambda s, t, y, c: L.wkd_l(s, t, y, c, temperature=temperature, sinkhorn_reg=0.05,
                                 sinkhorn_iters=iters)
  return jax.jit(jax.value_and_grad(f, argnums=(0, 1)))


_target = jax.jit(jax.value_and_grad(L.wkd_target))


def assert_finite(*xs):
  for x in jax.tree_util.tree_leaves(xs):
    assert np.all(np.isfinite(np.asarray(x, np.float32))), x


# --------------------------------------------------------------------------- WKD-L golden

TARGET_A = 1.2361052030522008
GRAD_TARGET_A = [[-0.1532879000055325, 0.10897995626736465, 0.044307943738167835],
                 [0.03333050259813377, 0.24628095350316423, -0.27961145610129806]]


@pytest.mark.parametrize('temperature,cost,want,grad', [
    (8.0, 'C3', 0.00042311415703041616,
     [[0.0, -2.487779462571909e-06, 2.4877794625719086e-06],
      [-0.00020539834224258803, 0.00020539834224258803, 0.0]]),
    (2.0, 'C3', 0.001134380773042106,
     [[0.0, -4.222009733653167e-05, 4.222009733653167e-05],
      [-0.004479565915771898, 0.004479565915771898, 0.0]]),
    (2.0, 'C3 sharpened', 0.0020487206735202413,
     [[0.0, -0.00027461505944151483, 0.0002746150594415149],
      [-0.006899580247345071, 0.00689958024734507, 0.0]]),
])
def test_wkd_l_golden_common_inputs(temperature, cost, want, grad):
  c = C3 if cost == 'C3' else wkd.sharpen_cost(C3, 1.0)
  if cost != 'C3':
    close(c, [[0.0, 0.2591817793182821, 0.5506710358827784],
              [0.2591817793182821, 0.0, 0.3934693402873666],
              [0.5506710358827784, 0.3934693402873666, 0.0]])
  value, (g_s, g_t) = _wkd_l(temperature)(ZS, ZT, Y, c)
  close(value, want)
  close(g_s, grad, atol=1e-9)
  np.testing.assert_array_equal(np.asarray(g_t), 0.0)
  value, g_s = _target(ZS, ZT, Y)
  close(value, TARGET_A)
  close(g_s, GRAD_TARGET_A)


def test_wkd_l_golden_reference_total():
  # wkd_logit_loss_with_speration(..., T 8, gamma 600): loss_t + gamma * WD.
  total = L.wkd_target(ZS, ZT, Y) + 600.0 * L.wkd_l(ZS, ZT, Y, C3, temperature=8.0,
                                                     sinkhorn_reg=0.05, sinkhorn_iters=10)
  close(total, 1.4899736972704505)


@pytest.mark.parametrize('temperature,want,grad', [
    (2.0, 0.2613652948918699,
     [[0.0, 0.0024778106550658813, 0.010944570133937936, -0.003186310419673765,
       -0.0038802872623777346, -0.006355783106952318],
      [0.010298019997499444, 0.005319646209273403, -0.006690308421276837, -0.00994320476954457,
       0.001015846984048556, 0.0],
      [0.01943300974426176, -0.036360166030860654, 0.0, 0.000543781142918225,
       0.002089510428672322, 0.014293864715008344],
      [0.002972858941943748, -0.00556573846020621, -0.0021779790150625706, 0.0,
       0.0008768160850723138, 0.003894042448252724]]),
    (8.0, 0.007039338246644371,
     [[0.0, -2.1447520366558735e-05, -9.092671268278256e-06, -8.364866985651667e-06,
       0.00012328358528868413, -8.437852666819548e-05],
      [0.00017784238968457117, -3.720211425751971e-05, -3.766035529195247e-05,
       -3.021535526543184e-05, -7.276456486966715e-05, 0.0],
      [0.0002572793858273658, -6.940024360054031e-05, 0.0, -0.000328388227643241,
       -9.570533569731799e-05, 0.0002362144211137335],
      [0.0001991057176411324, -4.1501152827545765e-05, -0.000162784254286567, 0.0,
       -0.00022110741088806992, 0.0002262871003610503]]),
])
def test_wkd_l_golden_fc_cost(temperature, want, grad):
  zs, zt, y, proto = _case_b()
  cost = wkd.sharpen_cost(wkd.prototype_cost(proto), 1.0)
  close(cost[0, :3], [0.0, 0.7312470063679302, 0.8645011972235637], atol=1e-12)
  close(cost[2, 5], 0.8642447418838434, atol=1e-12)
  value, (g_s, _) = _wkd_l(temperature)(zs, zt, y, cost.astype(np.float32))
  close(value, want)
  close(g_s, grad, rtol=1e-4, atol=2e-8)
  value, g_s = _target(zs, zt, y)
  close(value, 1.1437358860708873)
  close(g_s[0, :3], [-0.09283933099650096, 0.0638420079535673, 0.026900002806954804])


def test_wkd_l_golden_tiny_probabilities():
  # Logit gaps of 20-40 at T = 1: probabilities of 1e-9..1e-26, where the reference's 1e-8
  # guards decide the value (a log-domain Sinkhorn would not reproduce it).
  zs = np.array([[30.0, 0.0, -30.0], [0.0, -25.0, 0.0]], np.float32)
  zt = np.array([[-20.0, 20.0, 0.0], [40.0, 0.0, 0.0]], np.float32)
  value, (g_s, _) = _wkd_l(1.0)(zs, zt, Y, C3)
  close(value, 1.0517144671369614e-08, rtol=1e-4, atol=0)
  close(g_s[1], [-2.0831873671776024e-12, 2.0831873671783023e-12, 0.0], rtol=1e-3, atol=1e-20)
  # Row 0's entries of ~1e-17 are products of probabilities below 1e-20: float32 keeps their
  # size but may flush a factor to zero.
  close(g_s[0], [0.0, -1.0830714993061045e-17, 1.0830713960952893e-17], rtol=0, atol=2e-17)


def test_sinkhorn_plan_golden():
  # The reference's sinkhorn on all 3 classes (no target removed), T = 8, cost relu(C3) + 1e-8.
  p_s, p_t = jax.nn.softmax(ZS / 8), jax.nn.softmax(ZT / 8)
  kernel = jnp.exp(-(C3 + 1e-8) / 0.05)
  u, v = L.sinkhorn(p_s, p_t, kernel, jnp.full((2, 3), 1 / 3), num_iters=10)
  plan = u[:, :, None] * kernel * v[:, None, :]
  close(plan[0], [[0.37423826289158574, 0.00014019839852595374, 4.744850003023893e-09],
                  [0.0053310878014623435, 0.32504574274289005, 1.1000791090712758e-05],
                  [2.9487727775304355e-07, 1.7979183111361996e-05, 0.2952154134911396]],
        atol=1e-7)
  close(plan[1, 1], [0.0014423769320939892, 0.4092795488335199, 0.001742855243130143],
        atol=1e-7)
  # After the last u-update the rows match the student distribution (up to the 1e-8 guard).
  close(jnp.sum(plan, axis=-1), p_s, atol=1e-6)
  with pytest.raises(ValueError, match='num_iters'):
    L.sinkhorn(p_s, p_t, kernel, jnp.full((2, 3), 1 / 3), num_iters=0)


# --------------------------------------------------------------------------- WKD-L identities


def _random(seed, batch=4, classes=6, scale=2.0):
  ks, kt, ky, kc = jax.random.split(jax.random.PRNGKey(seed), 4)
  s = scale * jax.random.normal(ks, (batch, classes))
  t = scale * jax.random.normal(kt, (batch, classes))
  y = jax.random.randint(ky, (batch,), 0, classes)
  c = jax.random.uniform(kc, (classes, classes))
  return s, t, y, 0.5 * (c + c.T) * (1 - jnp.eye(classes))


def test_wkd_l_equals_the_reference_target_removal():
  # The reference drops the target row/column per sample and runs Sinkhorn on K - 1 classes.
  s, t, y, c = map(np.asarray, _random(1))
  keep = [np.arange(6) != y[b] for b in range(4)]
  subs = np.stack([c[np.ix_(k, k)] for k in keep]) + 1e-8            # [B, 5, 5]
  z_s = np.stack([s[b, k] for b, k in enumerate(keep)])
  z_t = np.stack([t[b, k] for b, k in enumerate(keep)])

  @jax.jit
  @jax.vmap
  def one(z_s, z_t, sub):
    kernel = jnp.exp(-sub / 0.05)
    u, v = L.sinkhorn(jax.nn.softmax(z_s / 2.0)[None], jax.nn.softmax(z_t / 2.0)[None], kernel,
                      jnp.full((1, 5), 1 / 5), num_iters=10)
    return jnp.sum(u[0][:, None] * kernel * sub * v[0][None, :])

  close(_wkd_l(2.0)(s, t, y, c)[0], np.mean(one(z_s, z_t, subs)), rtol=1e-5)


def test_wkd_l_identities():
  s, t, y, c = _random(2)
  f = _wkd_l(2.0)
  # A constant cost moves all of the (almost exactly) unit mass at that cost.
  close(f(s, t, y, jnp.full((6, 6), 0.4))[0], 0.4, rtol=1e-5)
  # Softmax: a constant added to a row changes nothing.
  shift = jnp.array([[3.0], [-7.5], [12.0], [0.25]])
  close(f(s + shift, t - shift, y, c)[0], f(s, t, y, c)[0], rtol=1e-5, atol=1e-7)
  # Negative costs are clipped at 0, as the reference's relu.
  close(f(s, t, y, c - 0.5)[0], f(s, t, y, jnp.maximum(c - 0.5, 0.0))[0])


def test_wkd_l_finite_differences():
  zs, zt, y, proto = _case_b()
  cost = jnp.asarray(wkd.sharpen_cost(wkd.prototype_cost(proto), 1.0), jnp.float32)
  f = jax.jit(lambda s: 100.0 * L.wkd_l(s, zt, y, cost, temperature=2.0, sinkhorn_reg=0.05,
                                        sinkhorn_iters=10))
  check_grads(f, (jnp.asarray(zs),), order=1, modes=['rev'], eps=5e-3, atol=3e-3, rtol=3e-3)


def test_wkd_l_large_gaps_bf16_batch_one_and_unlabeled_rows():
  e = 1e4 * jnp.eye(6)
  s = jnp.stack([e[0], e[1] - e[2], e[2], -e[3]])
  t = jnp.stack([e[1], e[1], e[2] - e[0], e[3]])
  y = jnp.array([0, 1, 0, 3])
  c = _random(3)[3]
  f = _wkd_l(2.0)
  assert_finite(f(s, t, y, c), _target(s, t, y))
  s, t, y, c = _random(4)
  v16, g16 = f(s.astype(jnp.bfloat16), t.astype(jnp.bfloat16), y, c)
  assert v16.dtype == jnp.float32 and g16[0].dtype == jnp.bfloat16
  close(v16, f(s.astype(jnp.bfloat16).astype(jnp.float32),
               t.astype(jnp.bfloat16).astype(jnp.float32), y, c)[0])
  one = f(s[:1], t[:1], y[:1], c)
  assert one[0].shape == () and np.isfinite(float(one[0]))
  # Unlabeled rows (-1) are left out of the mean and get no gradient; all unlabeled gives 0.
  partial = y.at[jnp.array([1, 3])].set(-1)
  dup = jnp.array([0, 2, 0, 2])
  for fn in (f, lambda *a: (_target(*a[:3])[0], (_target(*a[:3])[1],))):
    v, g = fn(s.at[1].set(1e4), t, partial, c)
    close(v, fn(s[dup], t[dup], y[dup], c)[0], rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(g[0])[np.array([1, 3])], 0.0)
    v, g = fn(s, t, jnp.full((4,), -1), c)
    close(v, 0.0)
    np.testing.assert_array_equal(np.asarray(g[0]), 0.0)


def test_wkd_l_rejects_a_cost_of_the_wrong_size():
  with pytest.raises(ValueError, match='cost_matrix'):
    L.wkd_l(ZS, ZT, Y, np.zeros((4, 4)), temperature=1.0, sinkhorn_reg=0.05, sinkhorn_iters=1)


# --------------------------------------------------------------------------- WKD-F


@functools.lru_cache(maxsize=None)
def _wkd_f_jit(grid):
  f = lambda a, b, w: L.wkd_f(a, b, mean_weight=w, grid=grid)
  return jax.jit(jax.value_and_grad(f, argnums=(0, 1)))


def _wkd_f(grid, mean_weight):
  """(value, (d/d student, d/d teacher)) of WKD-F, one compilation per grid and dtype."""
  return lambda a, b: _wkd_f_jit(grid)(a, b, jnp.float32(mean_weight))


def _maps():
  """[2, 7, 7, 3] student / teacher maps and a direction, from the golden script's formulas
  (written there in NCHW order)."""
  n = np.arange(2 * 3 * 7 * 7, dtype=np.float64)
  nhwc = lambda x: x.reshape(2, 3, 7, 7).transpose(0, 2, 3, 1)
  return (nhwc(np.sin(0.37 * n) + 0.1 * n / 294).astype(np.float32),
          nhwc(1.5 * np.cos(0.23 * n) + 0.2).astype(np.float32), nhwc(np.cos(0.11 * n)))


@pytest.mark.parametrize('grid,mean_weight,mean,std,total,g_dir,g_norm', [
    (1, 8.0, 0.07400470756311678, 0.37589459162164035, 0.9679322521265745,
     -0.2951849836429912, 0.4571437266544297),
    (4, 2.0, 0.81047258707253, 0.563833685696064, 2.184778859841124,
     -0.1087282772504279, 0.32403880755962133),   # 7 -> 4: overlapping windows 2, 3, 3, 2
    (2, 4.0, 0.09859265545221024, 0.46614499201338533, 0.8605156138222263,
     0.5448720201294952, 0.2858233863215978),
])
def test_wkd_f_golden(grid, mean_weight, mean, std, total, g_dir, g_norm):
  f_s, f_t, direction = _maps()
  # The parts: a mean weight of 0 leaves the std part; their combination gives the mean part.
  close(_wkd_f(grid, 0.0)(f_s, f_t)[0], std)
  value, (g, _) = _wkd_f(grid, mean_weight)(f_s, f_t)
  close(value, total)
  close((value - std) / mean_weight, mean, rtol=1e-4)
  close(np.sum(np.asarray(g, np.float64) * direction), g_dir, rtol=1e-4, atol=1e-6)
  close(np.linalg.norm(np.asarray(g, np.float64)), g_norm, rtol=1e-5)


def test_wkd_f_identities_bf16_and_bad_grids():
  f_s, f_t, _ = _maps()
  f = _wkd_f(4, 2.0)
  v, (g_s, g_t) = f(f_t, f_t)
  close(v, 0.0)
  np.testing.assert_array_equal(np.asarray(g_t), 0.0)
  # A constant map (zero variance): finite through sqrt(var + eps).
  v, (g_s, _) = f(jnp.ones_like(f_s), f_t)
  assert_finite(v, g_s)
  v16, (g16, _) = f(f_s.astype(jnp.bfloat16), f_t.astype(jnp.bfloat16))
  assert v16.dtype == jnp.float32 and g16.dtype == jnp.bfloat16
  close(v16, f(f_s.astype(jnp.bfloat16).astype(jnp.float32),
               f_t.astype(jnp.bfloat16).astype(jnp.float32))[0])
  with pytest.raises(ValueError, match='grid'):
    L.wkd_f(f_s[:, :2, :2], f_t[:, :2, :2], mean_weight=1.0, grid=2)  # 1-element cells
  with pytest.raises(ValueError, match='projector'):
    L.wkd_f(f_s, f_t[..., :2], mean_weight=1.0)


# --------------------------------------------------------------------------- the method module


def test_cosine_decay_schedule_matches_the_reference():
  sched = dict(wkd.cosine_decay_schedule(200.0, start_epoch=150, num_epochs=240))
  assert min(sched) == 150 and max(sched) == 239 and len(sched) == 90
  # The reference in 1-based epoch e > 150: 0.5 * 200 * (1 + cos((e - 150) / 90 * pi)).
  for e in (151, 195, 240):
    close(sched[e - 1], 0.5 * 200 * (1 + np.cos((e - 150) / 90 * np.pi)), atol=1e-12)
  term = methods.build_terms({'wkd_l': dict(weight=200.0, weight_schedule=tuple(sched.items()))}
                             )[0]
  close([term.weight_at(e) for e in (150, 151, 195, 240)],
        [200.0, sched[150], 100.0, 0.0], atol=1e-9)


def test_cost_constant_from_a_file_and_its_errors(tmp_path):
  term = methods.build_terms({'wkd_l': dict(weight=1.0)})[0]
  assert term.taps == {'cost_matrix': 'fc', 'cost_sharpen': 1.0}
  ctx = methods.BuildContext(term='wkd_l')
  np.save(tmp_path / 'cost.npy', C3.astype(np.float64))
  got = wkd._cost_constant(ctx, cost_matrix=str(tmp_path / 'cost.npy'), cost_sharpen=1.0)
  close(got['cost_matrix'], wkd.sharpen_cost(C3, 1.0))
  assert got['cost_matrix'].dtype == np.float32
  got = wkd._cost_constant(ctx, cost_matrix=str(tmp_path / 'cost.npy'), cost_sharpen=0.0)
  close(got['cost_matrix'], C3)
  with pytest.raises(KdjaxError, match='JiamingLv/WKD'):
    wkd._cost_constant(ctx, cost_matrix=str(tmp_path / 'missing.pth'), cost_sharpen=1.0)
  np.save(tmp_path / 'bad.npy', np.zeros((3, 4)))
  with pytest.raises(KdjaxError, match='square'):
    wkd._cost_constant(ctx, cost_matrix=str(tmp_path / 'bad.npy'), cost_sharpen=1.0)
  with pytest.raises(KdjaxError, match='no teacher'):
    wkd._cost_constant(ctx, cost_matrix='fc', cost_sharpen=1.0)


def test_bottleneck_projector_for_r34_r18():
  term = methods.build_terms({'wkd_f': dict(weight=1.0)})[0]
  assert term.reads == {'student': ('stage4',), 'teacher': ('stage4',)}
  shape = jax.ShapeDtypeStruct((2, 7, 7, 512), jnp.float32)
  module = term.build_connector(methods.BuildContext(),
                                {'student': {'stage4': shape}, 'teacher': {'stage4': shape}})
  x = jnp.zeros((2, 7, 7, 512))
  out, variables = jax.eval_shape(
      lambda a: module.init_with_output(jax.random.key(0), (a,), (a,), True), x)
  assert out.feat.shape == (2, 7, 7, 512)
  kernels = {k: v['kernel'].shape for k, v in variables['params']['projector'].items()
             if 'kernel' in v}
  assert kernels == {'conv1': (1, 1, 512, 256), 'conv2': (3, 3, 256, 256),
                     'conv3': (1, 1, 256, 512)}


def test_wkd_terms_train_a_step(digits_data_dir):
  # Two small digits CNNs (the ResNet pairs cost minutes to compile on 2 cores; the recipes'
  # :smoke runs cover them): the 'fc' cost from the teacher's classifier, the bottleneck
  # projector (16 hidden channels) on stage2 (4x4x64) with a 2x2 grid.
  config, _ = conftest.load_recipe('digits_kd', 'smoke')
  with config.unlocked():
    config.data_dir = digits_data_dir
    config.teacher.model, config.teacher.checkpoint = 'digits_cnn', ''  # random teacher (smoke)
    config.student.model = 'digits_cnn'
    config.batch_size = 16
    config.input.num_labeled = 0  # every label kept (the recipe hides most of them)
    config.losses = {
        'ce': dict(weight=1.0), 'wkd_target': dict(weight=1.0),
        'wkd_l': dict(weight=30.0, temperature=2.0),
        'wkd_f': dict(weight=1.0, student_tap='stage2', teacher_tap='stage2', grid=2,
                      hidden_channels=16)}
  run = conftest.Run(config)
  fc = run.setup.networks.teacher_variables['params']['fc']['kernel']
  close(run.setup.objective.term('wkd_l').constants['cost_matrix'],
        wkd.sharpen_cost(wkd.prototype_cost(np.asarray(fc).T), 1.0), atol=1e-6)
  teacher_before = jax.tree.map(np.copy, run.setup.networks.teacher_variables)
  before = jax.device_get(run.state.params)
  metrics = run.step()
  after = jax.device_get(run.state.params)
  for name in ('wkd_target', 'wkd_l', 'wkd_f'):
    assert np.isfinite(float(metrics[f'loss/{name}'])) and float(metrics[f'loss/{name}']) > 0
  moved = lambda a, b: max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.abs(x - y).max()),
                                                        a, b)))
  assert moved(before['student'], after['student']) > 0
  assert moved(before['connectors']['wkd_f'], after['connectors']['wkd_f']) > 0
  jax.tree.map(np.testing.assert_array_equal, teacher_before,
               run.setup.networks.teacher_variables)


def test_bad_sinkhorn_and_grid_settings_fail_clearly():
  x = methods.Inputs(student=(ZS,), teacher=(ZT,), labels=Y)
  for bad in (dict(sinkhorn_reg=0.0, sinkhorn_iters=10), dict(sinkhorn_reg=0.05, sinkhorn_iters=0),
              dict(sinkhorn_reg=0.05, sinkhorn_iters=2.5)):
    with pytest.raises(KdjaxError, match='sinkhorn'):
      wkd.WKD_L.loss(x, temperature=1.0, cost_matrix=C3, **bad)
  with pytest.raises(KdjaxError, match='grid'):
    wkd.WKD_F.loss(methods.Inputs(), mean_weight=1.0, eps=1e-5, grid=0)
