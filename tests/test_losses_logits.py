"""Tests of kdjax.losses.logits: golden values (docs/methods.md#golden-value-policy), identities,
invariances, gradients, stop-gradient, numerics (large gaps, bf16, batch 1), unlabeled rows."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from kdjax.losses import logits as L

RTOL, ATOL = 1e-5, 1e-6

# The common logit inputs of docs/methods.md#golden-value-policy.
ZS = np.array([[2.0, 1.0, 0.1], [0.5, 2.5, -1.0]], np.float32)
ZT = np.array([[3.0, 0.5, -0.5], [0.0, 1.5, 2.0]], np.float32)
Y = np.array([0, 2], np.int32)
# The 3-row DIST batch (docs/methods.md#dist).
ZS3 = np.concatenate([ZS, [[-0.5, 0.0, 1.5]]]).astype(np.float32)
ZT3 = np.concatenate([ZT, [[-1.0, 0.5, 2.5]]]).astype(np.float32)


def close(got, want, rtol=RTOL, atol=ATOL):
  np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=rtol, atol=atol)


# Every loss as f(student, teacher, labels) with the reference defaults (hyperparameters
# chosen so that no term is switched off).
LOSSES = {
    "kd": lambda s, t, y: L.kd(s, t, temperature=4.0),
    "kd_ls": lambda s, t, y: L.kd(s, t, temperature=2.0, standardize=True),
    "dkd": lambda s, t, y: L.dkd(s, t, y, alpha=1.0, beta=8.0, temperature=4.0),
    "dkd_ls": lambda s, t, y: L.dkd(s, t, y, alpha=1.0, beta=8.0, temperature=2.0,
                                    standardize=True),
    "nkd": lambda s, t, y: L.nkd(s, t, y, temperature=3.0, gamma=3.5),
    "dist": lambda s, t, y: L.dist(s, t, beta=1.0, gamma=1.0, temperature=4.0),
    "wsl": lambda s, t, y: L.wsl(s, t, y, temperature=2.0),
    "skd": lambda s, t, y: L.skd(s, t, y, temperature=1.0, multiplier=2.0, alpha=0.9),
    "ofa": lambda s, t, y: L.ofa(s, t, y, temperature=1.0, eps=1.5),
    "dml": lambda s, t, y: L.dml(s, t),
    "ce": lambda s, t, y: L.cross_entropy(s, y, label_smoothing=0.1),
}
NAMES = sorted(LOSSES)
TEACHER_LOSSES = ["kd", "kd_ls", "dkd", "dkd_ls", "nkd", "dist", "wsl", "skd", "ofa"]
# The whole per-sample term needs the label.
LABELLED_LOSSES = ["dkd", "dkd_ls", "nkd", "wsl", "ofa", "ce"]

# Compile time dominates on a small CPU: the tests below reuse a few jitted functions on
# few shapes ([4, 5] float32 mostly); only the golden-value tests run eagerly.
B, K = 4, 5


@functools.lru_cache(maxsize=None)
def value_and_grads(name):
  """jit of (value, (d/d student, d/d teacher)) for LOSSES[name]."""
  return jax.jit(jax.value_and_grad(LOSSES[name], argnums=(0, 1)))


def value(name, s, t, y):
  return value_and_grads(name)(s, t, y)[0]


# The public functions themselves, jitted once each (keyword hyperparameters are traced).
J = {n: jax.jit(getattr(L, n)) for n in
     ("kd", "dkd", "dkd_parts", "nkd", "dist", "wsl", "skd", "ofa", "dml", "cross_entropy",
      "kl_divergence", "standardize")}


def random_inputs(seed, batch=B, classes=K, scale=2.0):
  ks, kt, ky = jax.random.split(jax.random.PRNGKey(seed), 3)
  s = scale * jax.random.normal(ks, (batch, classes), jnp.float32)
  t = scale * jax.random.normal(kt, (batch, classes), jnp.float32)
  y = jax.random.randint(ky, (batch,), 0, classes, jnp.int32)
  return s, t, y


def assert_finite(*xs):
  for x in jax.tree_util.tree_leaves(xs):
    assert np.all(np.isfinite(np.asarray(x, np.float32))), x


# --------------------------------------------------------------------------- golden values


def test_common_inputs_softmax_and_ce():
  close(jax.nn.softmax(ZS), [[0.659001139, 0.242432971, 0.098565890],
                             [0.116114535, 0.857976811, 0.025908655]])
  close(jax.nn.softmax(ZT / 4), [[0.512262685, 0.274194457, 0.213542858],
                                 [0.243681777, 0.354554894, 0.401763329]])
  close(L.cross_entropy(ZS, Y), 2.035104)


@pytest.mark.parametrize("temperature,per_sample,mean,total", [
    (4.0, [0.297547, 1.601714], 0.949630, ("cifar", 1.058178)),
    (1.0, [0.156479, 1.433457], 0.794968, ("imagenet", 1.415036)),
])
def test_kd_golden(temperature, per_sample, mean, total):
  t = temperature
  close(t * t * L.kl_divergence(ZT / t, ZS / t), per_sample)
  value = L.kd(ZS, ZT, temperature=t)
  close(value, mean)
  ce = L.cross_entropy(ZS, Y)
  recipe, want = total
  got = 0.1 * ce + 0.9 * value if recipe == "cifar" else 0.5 * ce + 0.5 * value
  close(got, want)


@pytest.mark.parametrize("temperature,b_s,b_t,q_s,q_t", [
    (4.0, [[0.416548, 0.583452], [0.206021, 0.793979]],
     [[0.512263, 0.487737], [0.401763, 0.598237]],
     [[0.556014, 0.443986], [0.377541, 0.622459]],
     [[0.562177, 0.437823], [0.407333, 0.592667]]),
    (1.0, [[0.659001, 0.340999], [0.025909, 0.974091]],
     [[0.899052, 0.100948], [0.574097, 0.425903]],
     [[0.710950, 0.289050], [0.119203, 0.880797]],
     [[0.731059, 0.268941], [0.182426, 0.817574]]),
])
def test_dkd_binary_and_nontarget_golden(temperature, b_s, b_t, q_s, q_t):
  gt = jax.nn.one_hot(Y, 3, dtype=jnp.bool_)
  nontarget = ~np.asarray(gt)
  for z, want_b, want_q in ((ZS, b_s, q_s), (ZT, b_t, q_t)):
    log_b, log_q = L._dkd_log_probs(jnp.asarray(z), gt, temperature)
    close(jnp.exp(log_b), want_b)
    close(np.exp(np.asarray(log_q))[nontarget].reshape(2, 2), want_q)


@pytest.mark.parametrize("temperature,tckd,nckd,nckd_atol", [
    (4.0, [0.296946, 1.583811], [0.001232, 0.029926], 1e-5),
    (1.0, [0.156379, 1.426333], [0.000998, 0.016727], ATOL),
])
def test_dkd_parts_golden(temperature, tckd, nckd, nckd_atol):
  got_t, got_n = L.dkd_parts(ZS, ZT, Y, temperature=temperature)
  close(got_t, tckd)
  close(got_n, nckd, atol=nckd_atol)
  close(jnp.mean(got_t), np.mean(tckd), atol=1e-6)
  close(jnp.mean(got_n), {4.0: 0.015579, 1.0: 0.008863}[temperature], atol=nckd_atol)
  close(jnp.mean(got_t), {4.0: 0.940378, 1.0: 0.791356}[temperature])


@pytest.mark.parametrize("temperature,beta,want,want_total", [
    (4.0, 8.0, 1.065011, 3.100115),   # mdistiller CIFAR, epoch >= 20
    (1.0, 0.5, 0.795787, 2.830891),   # mdistiller ImageNet
    (1.0, 1.0, 0.800218, None),       # PaddleClas ImageNet
])
def test_dkd_golden(temperature, beta, want, want_total):
  value = L.dkd(ZS, ZT, Y, alpha=1.0, beta=beta, temperature=temperature)
  close(value, want)
  if want_total is not None:
    close(L.cross_entropy(ZS, Y) + value, want_total)
  if temperature == 4.0:  # warm-up examples of docs/methods.md#dkd (factor applied by the trainer)
    close(0.05 * value, 0.053251)
    close(0.25 * value, 0.266253)
    close(L.cross_entropy(ZS, Y) + 0.05 * value, 2.088355)


def test_wsl_golden():
  close(L._wsl_weights(jnp.asarray(ZS), jnp.asarray(ZT), jnp.asarray(Y)), [0.980138, 0.998616])
  soft_ce = -jnp.sum(jax.nn.softmax(ZT / 2) * jax.nn.log_softmax(ZS / 2), axis=-1)
  close(soft_ce, [0.900927, 1.419439])
  close(L.wsl(ZS, ZT, Y, temperature=2.0), 4.601015)


@pytest.mark.parametrize("alpha,want", [(0.9, 2.049453), (1.0, 1.997765), (0.0, 2.514642)])
def test_skd_golden(alpha, want):
  close(L.skd(ZS, ZT, Y, temperature=1.0, multiplier=2.0, alpha=alpha), want)


def test_dml_golden():
  close(L.dml(ZS, ZT), 0.635191)
  close(L.dml(ZT, ZS), 0.635191)  # symmetric
  close(3 * L.dml(ZS, ZT), 1.905572)  # PaddleClas `sum_across_class_dim=True` (docs/methods.md#dml)


@pytest.mark.parametrize("eps,want", [(1.0, 1.430160), (1.5, 2.176370)])
def test_ofa_golden(eps, want):
  close(L.ofa(ZS, ZT, Y, temperature=1.0, eps=eps), want)


@pytest.mark.parametrize("zs,zt,temperature,total,inter,intra", [
    (ZS, ZT, 1.0, 1.200385, 0.533719, 0.666667),
    (ZS3, ZT3, 1.0, 0.466543, 0.355820, 0.110723),
    (ZS3, ZT3, 4.0, 8.747608, 6.032515, 2.715094),  # inter/intra here include tau^2
])
def test_dist_golden(zs, zt, temperature, total, inter, intra):
  f = functools.partial(L.dist, zs, zt, temperature=temperature)
  close(f(beta=1.0, gamma=1.0), total)
  close(f(beta=1.0, gamma=0.0), inter)
  close(f(beta=0.0, gamma=1.0), intra)


def test_dist_tau4_parts_before_tau_squared():
  close(L.dist(ZS3, ZT3, beta=1.0, gamma=0.0, temperature=4.0) / 16, 0.377032)
  close(L.dist(ZS3, ZT3, beta=0.0, gamma=1.0, temperature=4.0) / 16, 0.169693)


# --------------------------------------------------------------------------- identities


@jax.jit
def _decoupled_identity(s, t, y, temperature):
  tckd, nckd = L.dkd_parts(s, t, y, temperature=temperature)
  p_t_gt = jnp.take_along_axis(jax.nn.softmax(t / temperature), y[:, None], axis=-1)[:, 0]
  per_sample = temperature**2 * L.kl_divergence(t / temperature, s / temperature)
  return (tckd + (1.0 - p_t_gt) * nckd, per_sample, L.kd(s, t, temperature=temperature))


@pytest.mark.parametrize("temperature,want", [(4.0, 0.9496301756), (1.0, 0.7949682313)])
@pytest.mark.parametrize("inputs", ["golden", "random"])
def test_kd_equals_decoupled_sum(temperature, want, inputs):
  # Per sample: tau^2 KL(p_t || p_s) = TCKD_b + (1 - p_t[g]) NCKD_b, so their batch means
  # equal L_KD (docs/methods.md#dkd).
  s, t, y = (ZS, ZT, Y) if inputs == "golden" else random_inputs(1)
  recombined, per_sample, kd = _decoupled_identity(s, t, y, temperature)
  close(recombined, per_sample)
  close(jnp.mean(recombined), kd)
  if inputs == "golden":
    close(kd, want)


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_ofa_eps1_is_soft_target_ce(temperature):
  s, t, y = random_inputs(2)
  soft_ce = -jnp.mean(jnp.sum(jax.nn.softmax(t / temperature)
                              * jax.nn.log_softmax(s / temperature), axis=-1))
  close(J["ofa"](s, t, y, temperature=temperature, eps=1.0), soft_ce)


def test_ofa_soft_labels_use_argmax():
  s, t, y = random_inputs(3)
  soft = 0.8 * jax.nn.one_hot(y, K) + 0.2 / K
  close(L.ofa(s, t, soft, temperature=1.0, eps=1.5), J["ofa"](s, t, y, temperature=1.0, eps=1.5))


def test_wsl_is_weighted_kl_plus_weighted_entropy():
  s, t, y = random_inputs(4)
  tau = 2.0
  w = jax.jit(L._wsl_weights)(s, t, y)
  kl = tau**2 * J["kl_divergence"](t / tau, s / tau)
  ent = -tau**2 * jnp.sum(jax.nn.softmax(t / tau) * jax.nn.log_softmax(t / tau), axis=-1)
  close(J["wsl"](s, t, y, temperature=tau), jnp.mean(w * (kl + ent)))


def test_cross_entropy_label_smoothing():
  s, _, y = random_inputs(5)
  eps = 0.1
  target = (1 - eps) * jax.nn.one_hot(y, K) + eps / K
  want = -jnp.mean(jnp.sum(target * jax.nn.log_softmax(s), axis=-1))
  close(J["cross_entropy"](s, y, label_smoothing=eps), want)
  close(L.cross_entropy(s, y, label_smoothing=eps), want)  # eager, python-float branch


# --------------------------------------------------------------------------- invariances / zeros


@pytest.mark.parametrize("name", NAMES)
def test_per_row_shift_invariance(name):
  s, t, y = random_inputs(6)
  shift = jnp.array([[3.0], [-7.5], [12.0], [0.25]])
  base = value(name, s, t, y)
  close(value(name, s + shift, t, y), base, rtol=1e-5, atol=1e-5)
  close(value(name, s, t + shift, y), base, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_zero_for_equal_logits(temperature):
  s, _, y = random_inputs(7)
  close(J["kd"](s, s, temperature=temperature), 0.0)
  tckd, nckd = J["dkd_parts"](s, s, y, temperature=temperature)
  close(tckd, np.zeros(B))
  close(nckd, np.zeros(B))
  close(J["dkd"](s, s, y, alpha=1.0, beta=8.0, temperature=temperature), 0.0)
  close(J["dml"](s * temperature, s * temperature), 0.0)
  close(J["kl_divergence"](s * temperature, s * temperature), np.zeros(B))


# --------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("name", NAMES)
def test_check_grads(name):
  # float32 only (x64 is off and the losses compute in float32): a finite-difference step
  # of 5e-3 balances float32 round-off against the truncation error of central differences.
  s, t, y = random_inputs(8, scale=1.0)
  if name == "wsl":
    # WSL's weight is detached on purpose, so its gradient is not the derivative of its
    # value unless the weight is locally constant: a teacher sure of the label gives
    # ce_t ~ 0 and w = 1 exactly (the detached weight itself: test_wsl_weight_is_detached).
    t = t + 30.0 * jax.nn.one_hot(y, K)
  f = jax.jit(LOSSES[name])
  tol = dict(order=1, modes=["rev"], eps=5e-3, atol=3e-3, rtol=3e-3)
  check_grads(lambda a: f(a, t, y), (s,), **tol)
  if name == "dml":
    check_grads(lambda b: f(s, b, y), (t,), **tol)


@pytest.mark.parametrize("name", TEACHER_LOSSES)
def test_teacher_is_stop_gradiented(name):
  s, t, y = random_inputs(9)
  v, (g_s, g_t) = value_and_grads(name)(s, t, y)
  assert v.shape == () and v.dtype == jnp.float32
  assert np.any(np.asarray(g_s) != 0)
  np.testing.assert_array_equal(np.asarray(g_t), 0.0)


def test_kl_divergence_teacher_is_stop_gradiented():
  s, t, _ = random_inputs(9)
  g = jax.jit(jax.grad(lambda a: jnp.sum(L.kl_divergence(a, s))))(t)
  np.testing.assert_array_equal(np.asarray(g), 0.0)


def test_dml_gradient_reaches_both_peers():
  s, t, y = random_inputs(10)
  _, (g_a, g_b) = value_and_grads("dml")(s, t, y)
  assert np.abs(np.asarray(g_a)).max() > 1e-4
  assert np.abs(np.asarray(g_b)).max() > 1e-4
  # Symmetric: swapping the peers swaps the gradients.
  _, (h_a, h_b) = value_and_grads("dml")(t, s, y)
  close(h_a, g_b)
  close(h_b, g_a)


def test_wsl_weight_is_detached():
  # d L / d z_s must equal tau^2 * mean_b w_b * d(soft CE_b)/d z_s with w held constant.
  s, t, y = random_inputs(11)
  tau = 2.0
  w = jax.jit(L._wsl_weights)(s, t, y)

  @jax.jit
  def grads(a, w):
    g = jax.grad(lambda a: L.wsl(a, t, y, temperature=tau))(a)
    g_fixed = jax.grad(lambda a: tau**2 * jnp.mean(
        w * -jnp.sum(jax.nn.softmax(t / tau) * jax.nn.log_softmax(a / tau), axis=-1)))(a)
    return g, g_fixed

  g, g_fixed = grads(s, w)
  close(g, g_fixed)


# --------------------------------------------------------------------------- numerics


def _large_gap_inputs():
  # Gaps of 1e4, agreeing and disagreeing with the labels; the student is extremely
  # confident where the reference's log(1 - p_s[g]) would be -inf.
  e = 1e4 * jnp.eye(K, dtype=jnp.float32)
  s = jnp.stack([e[0], e[1] - e[2], e[2], -e[3]])
  t = jnp.stack([e[1], e[1], e[2] - e[0], e[3]])
  y = jnp.array([0, 1, 0, 3], jnp.int32)
  return s, t, y


@pytest.mark.parametrize("name", NAMES)
def test_large_logit_gaps_are_finite(name):
  assert_finite(value_and_grads(name)(*_large_gap_inputs()))


@pytest.mark.parametrize("name", NAMES)
def test_bfloat16_inputs(name):
  s, t, y = random_inputs(12)
  s16, t16 = s.astype(jnp.bfloat16), t.astype(jnp.bfloat16)
  v, grads = value_and_grads(name)(s16, t16, y)
  assert v.dtype == jnp.float32 and v.shape == ()
  assert grads[0].dtype == jnp.bfloat16
  assert_finite(v, grads)
  # Computed in float32 on the bf16-rounded inputs: the same as the float32 path.
  close(v, value(name, s16.astype(jnp.float32), t16.astype(jnp.float32), y), rtol=1e-6,
        atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_batch_of_one(name):
  s, t, y = random_inputs(13, batch=1)
  v, grads = value_and_grads(name)(s, t, y)
  assert v.shape == () and v.dtype == jnp.float32
  assert_finite(v, grads)
  if name == "dist":
    # One row: every column is constant, rho = 0, so L_intra = 1 (reference: 0 / (0 + 1e-8)).
    close(J["dist"](s, t, beta=0.0, gamma=1.0, temperature=1.0), 1.0)


def test_dist_constant_columns_are_finite():
  s, t, y = random_inputs(14)
  s = jnp.tile(s[:1], (B, 1))  # every column of Y_s constant across the batch
  v, grads = value_and_grads("dist")(s, t, y)
  assert_finite(v, grads)
  v, grads = value_and_grads("dist")(s, s, y)  # and both sides constant
  assert_finite(v, grads)


# --------------------------------------------------------------------------- unlabeled rows

# Rows 1 and 3 unlabeled; the labelled rows 0 and 2 duplicated give the same batch shape
# and the same mean as "the labelled rows only".
UNLABELED = jnp.array([1, 3])
DUPLICATED = jnp.array([0, 2, 0, 2])


@pytest.mark.parametrize("name", LABELLED_LOSSES)
def test_unlabeled_rows_are_excluded(name):
  s, t, y = random_inputs(15)
  y_partial = y.at[UNLABELED].set(-1)
  want = value(name, s[DUPLICATED], t[DUPLICATED], y[DUPLICATED])
  close(value(name, s, t, y_partial), want)
  # Whatever stands in the unlabeled rows cannot matter, nor reach the gradient.
  s_noisy = s.at[UNLABELED].set(1e4)
  v, (g_s, _) = value_and_grads(name)(s_noisy, t, y_partial)
  close(v, want)
  np.testing.assert_array_equal(np.asarray(g_s)[np.asarray(UNLABELED)], 0.0)


def test_skd_unlabeled_rows():
  # KD part over all rows, CE part over labelled rows only.
  s, t, y = random_inputs(16)
  y_partial = y.at[UNLABELED].set(-1)
  skd = functools.partial(J["skd"], temperature=1.0, multiplier=2.0)
  want = (0.9 * skd(s, t, y, alpha=1.0)
          + 0.1 * skd(s[DUPLICATED], t[DUPLICATED], y[DUPLICATED], alpha=0.0))
  close(skd(s, t, y_partial, alpha=0.9), want)


@pytest.mark.parametrize("name", LABELLED_LOSSES + ["skd"])
def test_all_unlabeled(name):
  s, t, _ = random_inputs(17)
  y = jnp.full((B,), -1, jnp.int32)
  v, grads = value_and_grads(name)(s, t, y)
  assert_finite(v, grads)
  if name == "skd":  # only the label-free KD part remains
    close(v, 0.9 * J["skd"](s, t, y, temperature=1.0, multiplier=2.0, alpha=1.0))
  else:
    close(v, 0.0)
    np.testing.assert_array_equal(np.asarray(grads[0]), 0.0)


def test_dkd_parts_zero_for_unlabeled_rows():
  s, t, y = random_inputs(18)
  tckd, nckd = J["dkd_parts"](s, t, y.at[2].set(-1), temperature=4.0)
  assert float(tckd[2]) == 0.0 and float(nckd[2]) == 0.0
  full_t, full_n = J["dkd_parts"](s, t, y, temperature=4.0)
  close(np.delete(np.asarray(tckd), 2), np.delete(np.asarray(full_t), 2))
  close(np.delete(np.asarray(nckd), 2), np.delete(np.asarray(full_n), 2))


def test_cross_entropy_ignores_unlabeled():
  s, _, y = random_inputs(19)
  y_partial = y.at[UNLABELED].set(-1)
  for ls in (0.0, 0.1):
    close(J["cross_entropy"](s, y_partial, label_smoothing=ls),
          J["cross_entropy"](s[DUPLICATED], y[DUPLICATED], label_smoothing=ls))
  close(L.cross_entropy(ZS, np.array([0, -1], np.int32)), -np.log(0.659001139))


# --------------------------------------------------------------------------- contract


def test_jit_matches_eager_on_golden_inputs():
  close(J["dkd"](ZS, ZT, Y, alpha=1.0, beta=8.0, temperature=4.0), 1.065011)
  close(J["kd"](ZS, ZT, temperature=4.0), 0.949630)


def test_bad_shapes_raise():
  with pytest.raises(ValueError, match="student_logits"):
    L.kd(ZS[0], ZT[0], temperature=1.0)
  with pytest.raises(ValueError, match="teacher_logits"):
    L.kd(ZS, ZT3, temperature=1.0)
  with pytest.raises(ValueError, match="labels"):
    L.dkd(ZS, ZT, Y[:1], alpha=1.0, beta=1.0, temperature=1.0)
  with pytest.raises(ValueError, match="labels"):
    L.cross_entropy(ZS, Y.astype(np.float32))


def test_standardize_matches_reference_and_is_finite():
  # Golden: the reference's `normalize` (sunshangquan/logit-standardization-KD,
  # mdistiller/distillers/KD.py: (z - mean) / (1e-7 + z.std(-1))) run in torch float64 on ZS.
  want = [[1.0170743, -0.03507153, -0.98200277], [-0.09491579, 1.04407374, -0.94915794]]
  close(L.standardize(ZS), want)
  # Shift and positive scale of a row do not change it; a constant row maps to 0, finitely.
  close(L.standardize(3.0 * ZS + 7.0), want, atol=1e-5)
  const = jnp.ones((2, 4), jnp.bfloat16)
  assert L.standardize(const).dtype == jnp.float32
  close(L.standardize(const), np.zeros((2, 4)))
  assert np.isfinite(jax.grad(lambda z: jnp.sum(L.standardize(z) ** 3))(const)).all()



# --------------------------------------------------------------------------- LS and NKD goldens
#
# Golden values and gradients w.r.t. the student logits, obtained by transcribing the
# reference code paths into a standalone PyTorch script and running it in float64 (autograd
# for the gradients):
#   LS:  sunshangquan/logit-standardization-KD @ f6e5aa5, mdistiller/distillers/KD.py
#        (`normalize`, `kd_loss(..., logit_stand=True)`) and mdistiller/distillers/DKD.py
#        (`dkd_loss(..., logit_stand=True)`; its deprecated `size_average=False` written as
#        `reduction="sum"`, the same reduction);
#   NKD: yzd-v/cls_KD @ 1e5d48f, mmcls/models/dis_losses/nkd.py (`NKDLoss.forward`).
# The same script reproduces the plain goldens above (KD 0.949630 at tau 4, DKD 1.065011).
# A second batch, B = 3 and K = 6, gives the gradients more than two non-target classes.
ZS6 = np.array([[1.5, -0.3, 0.8, 2.2, -1.1, 0.0], [0.2, 0.9, -0.7, 1.4, 3.1, -2.0],
                [-0.4, 0.6, 1.2, -1.5, 0.3, 2.4]], np.float32)
ZT6 = np.array([[2.8, 0.1, -0.6, 1.0, -0.2, 0.5], [-1.0, 0.4, 0.7, 2.5, 1.9, -0.8],
                [0.9, -0.5, 3.0, 0.2, -1.3, 1.1]], np.float32)
Y6 = np.array([0, 3, 2], np.int32)

GOLDEN = {
    # name: (loss of (s, t, y), {inputs: (value, d value / d student logits)})
    "kd_ls_t2": (lambda s, t, y: L.kd(s, t, temperature=2.0, standardize=True), {
        "common": (0.384538503, [[-0.017639401, 0.037238735, -0.019599334],
                                 [0.077065931, -0.033028249, -0.044037681]]),
        "b3k6": (0.385923808, [
            [-0.089244427, 0.002682468, 0.039643722, 0.04850489, 0.003413044, -0.004999698],
            [0.021932149, 0.00923175, -0.01189533, -0.04208069, 0.016375584, 0.006436538],
            [-0.013405424, 0.024755076, -0.082608896, 0.005335766, 0.033951059, 0.031972419]]),
    }),
    "kd_ls_t4": (lambda s, t, y: L.kd(s, t, temperature=4.0, standardize=True), {
        "common": (0.392573524, [[-0.019112716, 0.040349068, -0.021236351],
                                 [0.09270512, -0.039730759, -0.052974361]]),
    }),
    "kd_ls_t1": (lambda s, t, y: L.kd(s, t, temperature=1.0, standardize=True), {
        "common": (0.356660781, [[-0.013765931, 0.029061407, -0.015295477],
                                 [0.049610685, -0.021261716, -0.02834897]]),
    }),
    # The LS recipes: CIFAR alpha 9, beta 72, tau 2; ImageNet alpha 9, beta 4.5, tau 2.
    "dkd_ls_cifar": (lambda s, t, y: L.dkd(s, t, y, alpha=9.0, beta=72.0, temperature=2.0,
                                           standardize=True), {
        "common": (4.436700437, [[-1.783607554, 3.76539407, -1.981786516],
                                 [1.926672427, -0.825716737, -1.10095569]]),
        "b3k6": (24.552489439, [
            [-2.700777938, -0.261988229, 2.545091559, 1.222133785, 0.683814451, -1.488273628],
            [1.652415077, 0.188805162, -1.612863909, -0.862939049, 0.166248669, 0.468334049],
            [-2.226312457, 1.284017124, -2.283827131, 0.365460562, 2.494161413, 0.366500488]]),
    }),
    "dkd_ls_imagenet": (lambda s, t, y: L.dkd(s, t, y, alpha=9.0, beta=4.5, temperature=2.0,
                                              standardize=True), {
        "common": (3.461766329, [[-0.165718999, 0.34985121, -0.184132212],
                                 [0.68715216, -0.294493723, -0.392658437]]),
        "b3k6": (3.010645217, [
            [-0.768870914, 0.029318573, 0.317205186, 0.422331973, 0.018902274, -0.018887091],
            [0.156231396, 0.080095291, -0.064463623, -0.365029401, 0.146846526, 0.04631981],
            [-0.074226641, 0.199399633, -0.709521054, 0.041023538, 0.257308877, 0.286015646]]),
    }),
    "dkd_ls_t4": (lambda s, t, y: L.dkd(s, t, y, alpha=1.0, beta=8.0, temperature=4.0,
                                        standardize=True), {
        "common": (0.504545851, [[-0.202043517, 0.426536354, -0.224492837],
                                 [0.239393948, -0.102597405, -0.136796543]]),
    }),
    # NKD: the reference's ImageNet (tau 1, gamma 1.5) and CIFAR-100 (tau 3, gamma 3.5) settings.
    "nkd_imagenet": (lambda s, t, y: L.nkd(s, t, y, temperature=1.0, gamma=1.5), {
        "common": (2.042340363, [[-0.1532879, 0.093898149, 0.059389751],
                                 [-0.014086449, 0.293697905, -0.279611456]]),
        "b3k6": (3.783797639, [
            [-0.17616384, -0.043196482, 0.072819792, 0.259278255, -0.042959051, -0.069778675],
            [0.013324264, -0.007277969, -0.079251586, -0.151871613, 0.242157107, -0.017080203],
            [-0.13155114, 0.044256176, -0.19847056, -0.070406409, 0.044472171, 0.311699762]]),
    }),
    "nkd_cifar": (lambda s, t, y: L.nkd(s, t, y, temperature=3.0, gamma=3.5), {
        "common": (22.430061968, [[-0.1532879, 0.066309586, 0.086978314],
                                  [-0.167728945, 0.447340401, -0.279611456]]),
        "b3k6": (52.798525393, [
            [-0.17616384, -0.135579855, 0.258763353, 0.426324619, -0.200636196, -0.172708082],
            [0.145034464, 0.044206459, -0.338768624, -0.151871613, 0.490087775, -0.188688461],
            [-0.3655333, 0.179362251, -0.19847056, -0.343690551, 0.235192716, 0.493139444]]),
    }),
}
INPUTS = {"common": (ZS, ZT, Y), "b3k6": (ZS6, ZT6, Y6)}


@functools.lru_cache(maxsize=None)
def _golden_results(inputs):
  """{name: (value, student gradient)} of every GOLDEN case on `inputs`, in one jit."""
  names = [n for n in GOLDEN if inputs in GOLDEN[n][1]]
  fn = jax.jit(lambda s, t, y: {n: jax.value_and_grad(GOLDEN[n][0])(s, t, y) for n in names})
  return fn(*INPUTS[inputs])


@pytest.mark.parametrize("name,inputs", [(n, i) for n in GOLDEN for i in GOLDEN[n][1]])
def test_ls_and_nkd_golden_values_and_gradients(name, inputs):
  want_value, want_grad = GOLDEN[name][1][inputs]
  got_value, got_grad = _golden_results(inputs)[name]
  close(got_value, want_value)
  # Gradients: float32 against float64; DKD+LS's beta 72 amplifies round-off to ~1e-6.
  close(got_grad, want_grad, rtol=1e-5, atol=5e-6)


def test_nkd_golden_parts():
  # The reference's two terms on the common inputs (the same script): the target term
  # -mean_b p_t[g] log p_s[g] = 1.236105 at tau = 1 whatever the setting, and the non-target
  # term 0.806235 (tau 1, gamma 1.5), 21.193957 (tau 3, gamma 3.5).
  close(L.nkd(ZS, ZT, Y, temperature=1.0, gamma=0.0), 1.2361052031)
  close(L.nkd(ZS, ZT, Y, temperature=1.0, gamma=1.5) - 1.2361052031, 0.8062351595)
  close(L.nkd(ZS, ZT, Y, temperature=3.0, gamma=3.5) - 1.2361052031, 21.1939567651, rtol=2e-5)


@jax.jit
def _ls_identity(s, t, y):
  """Plain and LS losses on logits that are already standardized (zero mean, unit std)."""
  zs, zt = L.standardize(s), L.standardize(t)
  plain = (L.kd(zs, zt, temperature=2.0),
           L.dkd(zs, zt, y, alpha=9.0, beta=72.0, temperature=2.0))
  ls = (L.kd(zs, zt, temperature=2.0, standardize=True),
        L.dkd(zs, zt, y, alpha=9.0, beta=72.0, temperature=2.0, standardize=True))
  # LS ignores each row's offset and (positive) scale: only the logits' relations count.
  scaled = (L.kd(3.0 * s - 2.0, 0.5 * t + 4.0, temperature=2.0, standardize=True),
            L.dkd(3.0 * s - 2.0, 0.5 * t + 4.0, y, alpha=9.0, beta=72.0, temperature=2.0,
                  standardize=True))
  return plain, ls, scaled


def test_ls_on_standardized_logits_is_plain_kd_and_dkd():
  s, t, y = random_inputs(20)
  plain, ls, scaled = _ls_identity(s, t, y)
  close(ls, plain, rtol=2e-5, atol=1e-5)  # the 1e-7 added to the std is all that differs
  close(scaled, ls, rtol=2e-5, atol=1e-5)
  # And it differs from plain KD on raw logits (the option is not silently ignored).
  assert abs(float(J["kd"](s, t, temperature=2.0)) - float(ls[0])) > 1e-2


@jax.jit
def _traced_option(s, t, y, on):
  return (L.kd(s, t, temperature=2.0, standardize=on),
          L.dkd(s, t, y, alpha=1.0, beta=8.0, temperature=2.0, standardize=on))


def test_ls_option_as_a_traced_argument():
  # A traced `standardize` (a caller jitting over it) selects the same values as the bool.
  s, t, y = random_inputs(21)
  close(_traced_option(s, t, y, jnp.asarray(True)),
        (value("kd_ls", s, t, y), value("dkd_ls", s, t, y)))
  plain = _traced_option(s, t, y, jnp.asarray(False))
  close(plain[0], J["kd"](s, t, temperature=2.0))
  close(plain[1], J["dkd"](s, t, y, alpha=1.0, beta=8.0, temperature=2.0))


@jax.jit
def _nkd_decomposition(s, t, y):
  """NKD from DKD's NCKD and the teacher's entropies (docs/methods.md#nkd)."""
  tau, gamma = 3.0, 3.5
  _, nckd = L.dkd_parts(s, t, y, temperature=tau)  # tau^2 KL(q_t || q_s) per sample
  log_p_s = jax.nn.log_softmax(s)
  p_t = jax.nn.softmax(t)
  target = -jnp.take_along_axis(p_t * log_p_s, y[:, None], axis=-1)[:, 0]
  gt = jax.nn.one_hot(y, s.shape[-1], dtype=jnp.bool_)
  q_t = jax.nn.softmax(jnp.where(gt, -jnp.inf, t / tau))
  entropy = -jnp.sum(jnp.where(gt, 0.0, q_t * jnp.log(jnp.where(gt, 1.0, q_t))), axis=-1)
  want = jnp.mean(target + gamma * (nckd + tau**2 * entropy))
  return L.nkd(s, t, y, temperature=tau, gamma=gamma), want


def test_nkd_is_target_ce_plus_nckd_plus_teacher_entropy():
  # Non-target cross-entropy = KL + the teacher's entropy: NKD's non-target part is DKD's
  # NCKD plus a constant, so its student gradient is gamma times NCKD's.
  got, want = _nkd_decomposition(*random_inputs(22))
  close(got, want, rtol=1e-5, atol=1e-5)
