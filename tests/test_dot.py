"""DOT (docs/methods.md#dot): the two-momentum update against the reference's optimizer step,
the two gradients from one pullback, and the trainer's wiring."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import conftest
from kdjax import config_base
from kdjax import losses
from kdjax import methods
from kdjax import train
from kdjax.errors import KdjaxError
from kdjax.methods import dot as dot_lib
from kdjax.quickstart import load_recipe

# A toy problem: logits z = x W^T + b; task = CE(z, y); distillation = KD(z, z_t, T=2) +
# mean((c * z - z_t)^2), where c (a connector) is reached by the distillation loss only.
X = np.array([[0.5, -1.0, 2.0, 0.1], [1.5, 0.3, -0.7, 1.0], [-0.2, 0.8, 0.4, -1.3],
              [1.0, 1.0, -1.0, 0.5], [-0.6, -0.4, 0.9, 0.2]], np.float32)
Y = np.array([0, 2, 1, 2, 0], np.int32)
ZT = np.array([[2.0, -1.0, 0.5], [0.0, 0.5, 1.5], [-0.5, 2.0, 0.0], [0.3, -0.2, 1.0],
               [1.0, 0.0, -1.0]], np.float32)
W0 = [[0.1, -0.2, 0.3, 0.0], [0.2, 0.1, -0.1, 0.4], [-0.3, 0.2, 0.1, -0.2]]
B0 = [0.05, -0.05, 0.1]
C0 = [1.0, 0.5, -0.5]
LRS = [0.1, 0.1, 0.05, 0.05]  # the learning rate of steps 1..4

# Golden values: a standalone torch float64 transcription (not in the repository) of
# megvii-research/mdistiller (@ a08d46f) mdistiller/engine/dot.py (`dot`,
# DistillationOrientedTrainer's step_kd and step) driven as mdistiller/engine/trainer.py's
# DOT.train_iter does (zero_grad(set_to_none=True), loss_kd.backward(retain_graph=True),
# step_kd(), zero_grad, loss_ce.backward(), step()), momentum 0.9, delta 0.075, weight decay
# 0.01, on the toy problem above; the parameters after step 1 (c's first step takes no weight
# decay in the reference) and after step 4.
GOLDEN = {
    1: dict(
        W=[[0.09687167104095348, -0.24946121641772967, 0.37185238224274303, 0.027392441877449943],
           [0.137081175244617, 0.1266503898443682, -0.080339815252693, 0.30904341252872763],
           [-0.25174951295223713, 0.2138608265733615, 0.04082743300994995, -0.14824252107284425]],
        b=[0.08488537184251167, -0.0600800049649015, 0.09582796645572317],
        c=[1.0131586666666668, 0.482584, -0.5122973333333334]),
    4: dict(
        W=[[0.09032803894487261, -0.4387220903302977, 0.6274486039744532, 0.16439115349772893],
           [-0.12469145286788405, 0.26293369897726565, -0.0018971438358044233,
            -0.09782023173901769],
           [-0.07442625227160783, 0.24314925661698128, -0.17021105330504557,
            0.06339951848732746]],
        b=[0.21725382727602544, -0.0770796450883242, 0.06746283683194182],
        c=[1.0580910896153073, 0.4345982611824356, -0.5451046385285322]),
}


def toy_params():
  return {'student': {'W': jnp.array(W0), 'b': jnp.array(B0)}, 'connectors': {'c': jnp.array(C0)}}


def toy_loss(params):
  """(total, (values, weighted)) as the train step's loss_fn returns them."""
  z = X @ params['student']['W'].T + params['student']['b']
  values = {'ce': losses.cross_entropy(z, Y),
            'kd': losses.kd(z, ZT, temperature=2.0)
                  + jnp.mean((params['connectors']['c'] * z - ZT) ** 2)}
  return values['ce'] + values['kd'], (values, values)


IS_TASK = lambda name: name == 'ce'


def run_dot(delta, steps, weight_decay=0.01):
  tx = dot_lib.dot(lambda count: jnp.array(LRS)[count], momentum=0.9, delta=delta,
                   weight_decay=weight_decay)

  @jax.jit
  def step(params, state):
    _, grads = dot_lib.value_and_two_grads(toy_loss, params, IS_TASK)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  params = toy_params()
  state = tx.init(params)
  history = []
  for _ in range(steps):
    params, state = step(params, state)
    history.append(params)
  return history


def test_update_matches_the_reference_optimizer_over_four_steps():
  history = run_dot(0.075, 4)
  assert dot_lib.takes_two_gradients(dot_lib.dot(0.1))
  for step, want in GOLDEN.items():
    got = history[step - 1]
    np.testing.assert_allclose(got['student']['W'], want['W'], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got['student']['b'], want['b'], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got['connectors']['c'], want['c'], rtol=1e-5, atol=1e-6)


def test_two_gradients_from_one_pullback_are_the_parts_gradients():
  params = toy_params()
  (total, _), grads = jax.jit(lambda p: dot_lib.value_and_two_grads(toy_loss, p, IS_TASK))(params)
  parts = jax.jit(lambda p: (toy_loss(p)[0], jax.grad(lambda q: toy_loss(q)[1][0]['ce'])(p),
                             jax.grad(lambda q: toy_loss(q)[1][0]['kd'])(p)))
  want_total, task, distill = parts(params)
  np.testing.assert_allclose(total, want_total, rtol=1e-6)
  for got, want in ((grads['task'], task), (grads['distill'], distill)):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), got, want)
  assert not np.any(grads['task']['connectors']['c'])


def test_delta_zero_is_sgd_momentum_on_the_summed_gradient():
  """Without connectors (whose first step the reference leaves undecayed), DOT with delta 0
  is PyTorch SGD with momentum and weight decay on g_task + g_distill."""
  cfg = config_base.base_config().optimizer
  cfg.update(name='sgd', learning_rate=0.1, momentum=0.9, weight_decay=0.01, schedule='constant')
  sgd, _ = train.make_optimizer(cfg, batch_size=1, steps_per_epoch=1, total_steps=3)
  with cfg.unlocked():
    cfg.update(name='dot', dot_delta=0.0)
  tx, _ = train.make_optimizer(cfg, batch_size=1, steps_per_epoch=1, total_steps=3)
  assert dot_lib.takes_two_gradients(tx)
  params = {'student': toy_params()['student']}
  p_sgd, p_dot, s_sgd, s_dot = params, params, sgd.init(params), tx.init(params)
  loss = lambda p: toy_loss({**p, **toy_params_c()})

  @jax.jit
  def steps(p_dot, s_dot, p_sgd, s_sgd):
    g = dot_lib.value_and_two_grads(loss, p_dot, IS_TASK)[1]
    u, s_dot = tx.update(g, s_dot, p_dot)
    u_sgd, s_sgd = sgd.update(jax.grad(lambda p: loss(p)[0])(p_sgd), s_sgd, p_sgd)
    return optax.apply_updates(p_dot, u), s_dot, optax.apply_updates(p_sgd, u_sgd), s_sgd

  for _ in range(3):
    p_dot, s_dot, p_sgd, s_sgd = steps(p_dot, s_dot, p_sgd, s_sgd)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), p_dot, p_sgd)


def toy_params_c():
  return {'connectors': toy_params()['connectors']}


@pytest.mark.parametrize('override,fragment', [
    (dict(nesterov=True), 'Nesterov'), (dict(clip_grad_norm=1.0), 'clipping'),
    (dict(dot_delta=0.95), 'dot_delta')])
def test_bad_dot_settings_are_clear_errors(override, fragment):
  cfg = config_base.base_config().optimizer
  cfg.update(name='dot', **override)
  with pytest.raises(KdjaxError, match=fragment):
    train.make_optimizer(cfg, batch_size=1, steps_per_epoch=1, total_steps=3)


def test_task_terms_are_the_ce_terms():
  terms = methods.build_terms({'ce': dict(weight=0.1), 'ce_peer': dict(method='ce', weight=1.0),
                               'kd': dict(weight=0.9), 'ctkd': dict(weight=1.0)})
  assert [dot_lib.is_task(t) for t in terms] == [True, True, False, False]


def _digits_run(data_dir, optimizer, **opt):
  config = load_recipe('')
  with config.unlocked():
    config.data_dir = data_dir
    config.losses = dict(ce=dict(weight=0.1), ctkd=dict(weight=0.9))
    config.optimizer.update(name=optimizer, learning_rate=0.5, momentum=0.9, schedule='constant',
                            **opt)
  run = conftest.Run(config)
  batch = next(run.batches)
  metrics = [run.step(batch), run.step(batch)]
  for m in metrics:
    np.testing.assert_allclose(m['loss'], 0.1 * m['loss/ce'] + 0.9 * m['loss/ctkd'], rtol=1e-6)
  return run.state


def test_train_step_with_dot_and_ctkd(digits_data_dir):
  """The trainer's DOT path: the connectors (CTKD's temperature) get no task gradient, so no
  task momentum; the student gets both; the temperature moves."""
  state = _digits_run(digits_data_dir, 'dot', weight_decay=5e-4, dot_delta=0.075)
  opt = state.opt_state
  assert isinstance(opt, dot_lib.DotState) and int(opt.count) == 2
  assert not np.any(opt.task_momentum['connectors']['ctkd']['global_t'])
  assert np.all(opt.distill_momentum['connectors']['ctkd']['global_t'] != 0)
  for tree in (opt.task_momentum['student'], opt.distill_momentum['student']):
    assert all(np.any(x) for x in jax.tree.leaves(tree))
  assert float(state.params['connectors']['ctkd']['global_t'][0]) != 1.0


@pytest.mark.slow
def test_train_step_with_dot_delta_zero_is_sgd(digits_data_dir):
  """With delta 0 and no weight decay (the connectors' first step aside), two trainer steps of
  CE + CTKD under DOT equal two SGD steps: the two gradients add up to the total one."""
  dot = _digits_run(digits_data_dir, 'dot', weight_decay=0.0, dot_delta=0.0)
  sgd = _digits_run(digits_data_dir, 'sgd', weight_decay=0.0)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6),
               dot.params, sgd.params)
