"""logit_mse (docs/methods.md#logit_mse): value, identities, gradient, and a recipe step."""

import jax
import jax.numpy as jnp
import numpy as np

import conftest
from kdjax.methods.logit_mse import logit_mse


def test_value_identities_and_gradient():
  rng = np.random.default_rng(0)
  s, t = rng.normal(size=(2, 4, 10)).astype(np.float32)
  np.testing.assert_allclose(logit_mse(s, t), np.mean((s.astype(np.float64) - t) ** 2),
                             rtol=1e-6)
  assert float(logit_mse(t, t)) == 0.0
  np.testing.assert_allclose(logit_mse(s, t), logit_mse(t, s), rtol=1e-7)  # symmetric
  # A shift of every logit is not forgiven (unlike KD's softmax): exactly c^2 for s = t + c.
  np.testing.assert_allclose(logit_mse(t + 3.0, t), 9.0, rtol=1e-6)
  grad = jax.grad(logit_mse)(jnp.asarray(s), jnp.asarray(t))
  np.testing.assert_allclose(grad, 2 * (s - t) / s.size, rtol=1e-5)
  assert logit_mse(s.astype(jnp.bfloat16), t).dtype == jnp.float32


def test_recipe_trains_a_step(digits_data_dir):
  config, _ = conftest.load_recipe('digits_logit_mse', 'smoke')
  with config.unlocked():
    config.data_dir = digits_data_dir
  run = conftest.Run(config)
  before = jax.device_get(run.state.params['student'])
  metrics = run.step()
  assert float(metrics['loss/logit_mse']) > 0 and np.isfinite(float(metrics['loss']))
  moved = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), before,
                       jax.device_get(run.state.params['student']))
  assert max(jax.tree.leaves(moved)) > 0
