"""CTKD (docs/methods.md#ctkd): the loss at a learned temperature, the temperature module with
its gradient reversal and curriculum, golden values from the reference code path."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from kdjax import losses
from kdjax import methods
from kdjax.methods import ctkd as ctkd_method

# The common logit inputs of docs/methods.md#golden-value-policy.
ZS = np.array([[2.0, 1.0, 0.1], [0.5, 2.5, -1.0]], np.float32)
ZT = np.array([[3.0, 0.5, -0.5], [0.0, 1.5, 2.0]], np.float32)
Y = np.array([0, 2], np.int32)

# Golden values: a standalone torch float64 transcription (not in the repository) of
# zhengli97/CTKD's code path (@ 7d52522): models/temp_global.py (Global_T, parameter
# initialised to 1; GradientReversalFunction, backward = lambda * grad), helper/loops.py
# train_distill
# (temp = t_start + t_end * sigmoid(Global_T(...)), t_start 1, t_end 20), train_student.py
# CosineDecay(decay_max=0, decay_min=-1, num_loops=10).get_value(epoch) as lambda,
# distiller_zoo/KD.py DistillKL and distiller_zoo/DKD.py DKDloss (alpha 1, beta 2); and of
# sunshangquan/logit-standardization-KD (@ f6e5aa5) CTKD/distiller_zoo/KD.py (normalize,
# DistillKL_logit_stand) for `standardize`. The parameter set to theta, `(weight * loss)
# .backward()`, then: the loss, the gradient w.r.t. the student logits and the parameter's
# gradient (reversed and scaled by the curriculum). In the DKD transcription F.kl_div is
# replaced by the same sum with 0 * log 0 = 0 and a zero gradient there: in torch 2.14
# F.kl_div's gradient w.r.t. a target entry that is exactly 0 (the -1000 mask zeroes the
# teacher's target entry) is NaN, which made the temperature's gradient NaN; values unchanged.
TEMPERATURES = {1.0: 15.621171572600097, -0.5: 8.550813375962909, -3.0: 1.9485174635513356}
GOLDEN = {  # (base, standardize): [(theta, epoch, weight, loss, dL/dz_s, dL/dtheta reversed)]
    ('kd', False): [
        (1.0, 1, 1.0, 0.9364209096253159,
         [[-0.17954411239896584, 0.08457913380890088, 0.0949649785900654],
          [0.152396106966873, 0.25959276602741443, -0.41198887299428827]], 5.754249607440713e-05),
        (-0.5, 5, 0.9, 0.9430506767319654,
         [[-0.16600212645698134, 0.08080228431669079, 0.08519984214029076],
          [0.12657558118924422, 0.23984807529137775, -0.36642365648062175]], 0.003014716654072369),
        (-3.0, 12, 1.0, 0.9220201942838123,
         [[-0.1819917864450205, 0.10802641708192462, 0.07396536936309589],
          [0.06528412516764712, 0.28563811169462916, -0.3509222368622763]], -0.04542144376902277)],
    ('kd', True): [
        (1.0, 1, 1.0, 0.39436618626382924,
         [[-0.0199533781351203, 0.042123798869713534, -0.02217042073459323],
          [0.10410020205915797, -0.044614365947768284, -0.05948583611138972]],
         6.11019133969737e-07),
        (-0.5, 5, 0.9, 0.39427335793823554,
         [[-0.017763429480915034, 0.037500573660585734, -0.019737144179670697],
          [0.09083418262447983, -0.03892892963460907, -0.05190525298987076]],
         -0.0001450158131413575),
        (-3.0, 12, 1.0, 0.38396825130479867,
         [[-0.017551298444850903, 0.03705273995987283, -0.01950144151502193],
          [0.07625543782790872, -0.03268089531087639, -0.04357454251703235]],
         -0.010385616243905568)],
    ('dkd', False): [
        (1.0, 1, 1.0, 0.9583312317613899,
         [[-0.17954411239896592, 0.06738053229542162, 0.11216358010354516],
          [0.06821955319847245, 0.34376931979581704, -0.4119888729942881]], 5.866330741754594e-05),
        (-0.5, 5, 0.9, 0.9650684765478968,
         [[-0.16600212645698165, 0.06493444860080515, 0.1010676778561767],
          [0.05056026239081389, 0.3158633940898086, -0.36642365648062203]], 0.003049850763546502),
        (-3.0, 12, 1.0, 0.9422260100527415,
         [[-0.18199178644502045, 0.08807490252392873, 0.09391688392109182],
          [-0.010199896731018732, 0.36112213359329526, -0.3509222368622763]],
         -0.04771048297573384)],
}
# The reference's CosineDecay(0, -1, 10).get_value(e) at e = 1, 2, 5, 10, 11.
DECAY = {1: -0.02447174185242318, 2: -0.09549150281252627, 5: -0.5, 10: -1.0, 11: -1.0}

# The public functions, jitted once each (eager op-by-op dispatch is slow on a small CPU).
CTKD = jax.jit(losses.ctkd, static_argnames=('base', 'standardize'))
KD = jax.jit(losses.kd)
DKD = jax.jit(losses.dkd)
STANDARDIZE = jax.jit(losses.standardize)

MODULE = ctkd_method.GlobalTemperature(min_temperature=1.0, temperature_span=20.0,
                                       lambda_start=0.0, lambda_end=1.0, lambda_epochs=10.0)


@functools.lru_cache(maxsize=None)
def objective(base, standardize):
  """jit of (value, (d/d student logits, d/d the module's params)) of weight * ctkd loss at the
  module's temperature, as the trainer composes them."""
  def f(zs, params, zt, y, epoch, weight):
    out = MODULE.apply({'params': params}, (), (), False, {'epoch': epoch})
    return weight * losses.ctkd(zs, zt, y, out.temperature, base=base, dkd_alpha=1.0,
                                dkd_beta=2.0, standardize=standardize)
  return jax.jit(jax.value_and_grad(f, argnums=(0, 1)))


def params_at(theta):
  return {'global_t': jnp.array([theta], jnp.float32)}


@pytest.mark.parametrize('key', sorted(GOLDEN))
def test_golden_values_and_gradients_match_the_reference(key):
  for theta, epoch, weight, loss, grad_s, grad_theta in GOLDEN[key]:
    value, (g_s, g_p) = objective(*key)(ZS, params_at(theta), ZT, Y, epoch, weight)
    # Float32 at tau up to 15.6: the loss is tau^2 (~244) times a KL of near-uniform
    # distributions, good to ~2e-5 relative (the KL-at-high-tau allowance); the temperature's
    # gradient to ~1e-5 of the loss's scale before the curriculum's factor lambda scales it.
    lam = abs(DECAY[min(epoch, 10)])
    np.testing.assert_allclose(value / weight, loss, rtol=3e-5, atol=1e-6)
    np.testing.assert_allclose(g_s, grad_s, rtol=1e-4, atol=2e-6)
    np.testing.assert_allclose(g_p['global_t'][0], grad_theta, rtol=1e-4,
                               atol=2e-5 * lam * weight)


def test_temperature_and_curriculum_follow_the_reference():
  for theta, temperature in TEMPERATURES.items():
    out = MODULE.apply({'params': params_at(theta)}, (), (), False, {'epoch': 3})
    np.testing.assert_allclose(out.temperature, temperature, rtol=1e-6)
  for epoch, decay in DECAY.items():
    got = ctkd_method.curriculum(epoch, lambda_start=0.0, lambda_end=1.0, lambda_epochs=10.0)
    np.testing.assert_allclose(-got, decay, rtol=1e-6, atol=1e-7)
  # Initialisation (no batch): the reference's parameter value 1.
  variables = MODULE.init(jax.random.key(0), (), (), train=False)
  np.testing.assert_array_equal(variables['params']['global_t'], [1.0])


def test_gradient_reversal_is_identity_forward_and_scaled_negation_backward():
  x = jnp.array([0.3, -2.0])
  y, vjp = jax.vjp(ctkd_method.reverse_gradient, x, jnp.float32(0.25))
  np.testing.assert_array_equal(y, x)
  g_x, g_lam = vjp(jnp.array([1.0, 4.0]))
  np.testing.assert_allclose(g_x, [-0.25, -1.0])
  assert g_lam == 0.0
  # The temperature's gradient is the loss's, times -lambda: ascent on the loss for lambda > 0.
  plain = jax.jit(jax.grad(
      lambda t: losses.kd(ZS, ZT, temperature=1.0 + 20.0 * jax.nn.sigmoid(t))))(jnp.float32(0.2))
  for epoch in (1, 5, 10):
    lam = ctkd_method.curriculum(epoch, lambda_start=0.0, lambda_end=1.0, lambda_epochs=10.0)
    _, (_, g_p) = objective('kd', False)(ZS, params_at(0.2), ZT, Y, epoch, 1.0)
    np.testing.assert_allclose(g_p['global_t'][0], -lam * plain, rtol=1e-4, atol=1e-9)


def test_identities_with_the_base_losses():
  tau = jnp.float32(3.0)
  np.testing.assert_allclose(CTKD(ZS, ZT, None, tau), KD(ZS, ZT, temperature=3.0),
                             rtol=1e-6)
  np.testing.assert_allclose(CTKD(ZS, ZT, Y, tau, base='dkd', dkd_alpha=1.0, dkd_beta=8.0),
                             DKD(ZS, ZT, Y, alpha=1.0, beta=8.0, temperature=3.0),
                             rtol=1e-6)
  np.testing.assert_allclose(
      CTKD(ZS, ZT, None, tau, standardize=True),
      KD(STANDARDIZE(ZS), STANDARDIZE(ZT), temperature=3.0), rtol=1e-6)
  with pytest.raises(ValueError, match='base'):
    CTKD(ZS, ZT, Y, tau, base='dist')
  with pytest.raises(ValueError, match='scalar'):
    CTKD(ZS, ZT, Y, jnp.ones((2,)))


@pytest.mark.parametrize('key', sorted(GOLDEN))
def test_numerics_large_gaps_and_shift(key):
  f = objective(*key)
  # Logit gaps of 1e4 on both sides, at the smallest and largest temperatures reached.
  big_s = np.array([[1e4, 0.0, -1e4], [-1e4, 1e4, 0.0]], np.float32)
  big_t = np.array([[-1e4, 1e4, 0.0], [0.0, -1e4, 1e4]], np.float32)
  for theta in (-30.0, 30.0):
    value, (g_s, g_p) = f(big_s, params_at(theta), big_t, Y, 5, 1.0)
    assert np.isfinite(value) and np.all(np.isfinite(g_s)) and np.all(np.isfinite(g_p['global_t']))
  both, _ = f(ZS, params_at(0.5), ZT, Y, 2, 1.0)
  # A constant added to a row of either side changes nothing (standardize: also a scale).
  shifted, _ = f(ZS + np.float32([[3.0], [-2.0]]), params_at(0.5), ZT + np.float32([[1.0], [5.0]]),
                 Y, 2, 1.0)
  np.testing.assert_allclose(shifted, both, rtol=1e-5)


def test_bf16_inputs_and_batch_of_one():
  f = objective('dkd', False)
  value, (g_s, _) = f(ZS.astype(jnp.bfloat16), params_at(0.0), ZT.astype(jnp.bfloat16), Y, 3,
                      1.0)
  assert value.dtype == jnp.float32 and np.isfinite(value) and np.all(np.isfinite(g_s))
  # A batch of one: the loss is a mean over rows, so the rows' own losses average to it.
  one, _ = f(ZS[:1], params_at(0.5), ZT[:1], Y[:1], 2, 1.0)
  two, _ = f(ZS[1:], params_at(0.5), ZT[1:], Y[1:], 2, 1.0)
  both, _ = f(ZS, params_at(0.5), ZT, Y, 2, 1.0)
  np.testing.assert_allclose((one + two) / 2, both, rtol=1e-5)


def test_unlabeled_rows():
  tau = jnp.float32(4.0)
  y = np.array([0, -1], np.int32)
  # KD reads no labels; DKD leaves the unlabeled row out of its means.
  np.testing.assert_allclose(CTKD(ZS, ZT, y, tau), CTKD(ZS, ZT, Y, tau), rtol=1e-6)
  np.testing.assert_allclose(
      CTKD(ZS, ZT, y, tau, base='dkd'),
      CTKD(ZS[:1], ZT[:1], y[:1], tau, base='dkd'), rtol=1e-6)


def test_gradients_against_finite_differences():
  f = jax.jit(lambda s, tau: losses.ctkd(s, ZT, Y, tau, base='dkd', dkd_alpha=1.0, dkd_beta=2.0,
                                         standardize=True))
  check_grads(f, (jnp.asarray(ZS), jnp.float32(2.5)), order=1, modes=('rev',), atol=2e-2,
              rtol=2e-2)


def test_method_registration_and_connector():
  terms = methods.build_terms({'ctkd': dict(weight=0.9, base='dkd', lambda_epochs=5.0)})
  (term,) = terms
  assert term.hparams == dict(base='dkd', dkd_alpha=1.0, dkd_beta=2.0, standardize=False)
  assert term.connector_hparams['lambda_epochs'] == 5.0
  shapes = {'student': {'logits': None}, 'teacher': {'logits': None}}
  module = term.build_connector(methods.BuildContext(), shapes)
  assert isinstance(module, ctkd_method.GlobalTemperature) and module.lambda_epochs == 5.0
  out = module.apply({'params': params_at(1.0)}, (), (), True, {'epoch': jnp.int32(5)})
  value = jax.jit(lambda o, y, c: term(o, y, c))({'student': {'logits': ZS},
                                                   'teacher': {'logits': ZT}}, Y, out)
  np.testing.assert_allclose(value, GOLDEN[('dkd', False)][0][3], rtol=1e-4)  # float32, tau 15.6
  assert math.isclose(float(out.strength), 1.0, abs_tol=1e-7)
  with pytest.raises(Exception, match='lambda_epochs'):
    methods.build_terms({'ctkd': dict(weight=1.0, lambda_epochs=0.0)})[0].build_connector(
        methods.BuildContext(), shapes)
