"""Curriculum Temperature KD, Li et al. AAAI 2023 (docs/methods.md#ctkd).

The distillation temperature is a trainable parameter, trained against the student: its
gradient passes a gradient-reversal layer, so it ascends the distillation loss the student
descends. The reversal strength `lambda` follows a cosine curriculum over the first epochs
(easy to hard). The parameter lives in the connector (`GlobalTemperature`), trained by the
student's optimizer; the loss (`kdjax.losses.ctkd`) is KD, or DKD, at that temperature.

Only the reference's global temperature is implemented: its instance-wise variant is not in
zhengli97/CTKD's code (its README points to a separate download).
"""

import math
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdjax import losses
from kdjax.errors import KdjaxError
from kdjax.methods.registry import Method
from kdjax.methods.registry import register


@jax.custom_vjp
def reverse_gradient(x, strength):
  """The identity forward; backward, the cotangent times `-strength` (Ganin & Lempitsky 2015).

  `strength` (lambda >= 0 reverses the gradient, 0 blocks it) gets no gradient.
  """
  del strength
  return x


def _reverse_fwd(x, strength):
  return x, strength


def _reverse_bwd(strength, g):
  return (-strength * g).astype(g.dtype), jnp.zeros_like(strength)


reverse_gradient.defvjp(_reverse_fwd, _reverse_bwd)


def curriculum(epoch, *, lambda_start, lambda_end, lambda_epochs):
  """The reversal strength at a 1-based `epoch`: a cosine from `lambda_start` (epoch 0) to
  `lambda_end` (epoch `lambda_epochs` and after),

    lambda(e) = lambda_end + (lambda_start - lambda_end) * (1 + cos(pi * min(e, E) / E)) / 2,

  the negative of the reference's `CosineDecay(decay_max=-lambda_start, decay_min=-lambda_end,
  num_loops=E).get_value(e)` (train_student.py), which multiplies the gradient directly."""
  e = jnp.clip(jnp.asarray(epoch, jnp.float32), 0.0, lambda_epochs)
  return lambda_end + (lambda_start - lambda_end) * 0.5 * (1.0 + jnp.cos(math.pi * e /
                                                                        lambda_epochs))


class Temperature(NamedTuple):
  temperature: jax.Array   # float32 scalar
  strength: jax.Array      # float32 scalar: the curriculum's lambda at this step


class GlobalTemperature(nn.Module):
  """One trainable scalar `theta` (initialised to 1, as the reference's `Global_T`);
  temperature = min_temperature + temperature_span * sigmoid(R_lambda(theta)), with R_lambda
  the gradient reversal at the epoch's curriculum strength (`batch['epoch']`, 1-based; 1 when
  absent, e.g. at initialisation)."""
  min_temperature: float
  temperature_span: float
  lambda_start: float
  lambda_end: float
  lambda_epochs: float

  @nn.compact
  def __call__(self, student, teacher, train, batch=None):
    del student, teacher, train
    theta = self.param('global_t', nn.initializers.ones, (1,), jnp.float32)
    epoch = (batch or {}).get('epoch', 1)
    strength = curriculum(epoch, lambda_start=self.lambda_start, lambda_end=self.lambda_end,
                          lambda_epochs=self.lambda_epochs)
    reversed_theta = reverse_gradient(theta[0], strength)
    temperature = self.min_temperature + self.temperature_span * jax.nn.sigmoid(reversed_theta)
    return Temperature(temperature, strength)


def _connector(ctx, student, teacher, *, min_temperature, temperature_span, lambda_start,
               lambda_end, lambda_epochs):
  del student, teacher
  if not (min_temperature > 0 and temperature_span >= 0):
    raise KdjaxError(f'losses.{ctx.term}: min_temperature must be > 0 and temperature_span >= 0, '
                     f'got {min_temperature} and {temperature_span}')
  if not lambda_epochs > 0:
    raise KdjaxError(f'losses.{ctx.term}.lambda_epochs must be > 0 (epochs of the curriculum), '
                     f'got {lambda_epochs}')
  return GlobalTemperature(min_temperature=float(min_temperature),
                           temperature_span=float(temperature_span),
                           lambda_start=float(lambda_start), lambda_end=float(lambda_end),
                           lambda_epochs=float(lambda_epochs))


def _loss(x, *, base, dkd_alpha, dkd_beta, standardize):
  if base not in ('kd', 'dkd'):
    raise KdjaxError(f"a ctkd term's base must be 'kd' or 'dkd', got '{base}'")
  return losses.ctkd(*x.student, *x.teacher, x.labels, x.connector.temperature, base=base,
                     dkd_alpha=dkd_alpha, dkd_beta=dkd_beta, standardize=standardize)


CTKD = register(Method(
    name='ctkd', doc='Li et al. AAAI 2023: KD (or DKD) at a temperature trained adversarially, '
    'with a curriculum on the gradient reversal',
    hparams=dict(base='kd', dkd_alpha=1.0, dkd_beta=2.0, standardize=False),
    connector=_connector,
    connector_hparams=dict(min_temperature=1.0, temperature_span=20.0, lambda_start=0.0,
                           lambda_end=1.0, lambda_epochs=10.0),
    loss=_loss))
