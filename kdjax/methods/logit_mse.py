"""Logit matching by mean squared error (docs/methods.md#logit_mse).

Kim et al., "Comparing Kullback-Leibler Divergence and Mean Squared Error Loss in Knowledge
Distillation", IJCAI 2021: regressing the teacher's logits directly, with no temperature, is
a strong alternative to KD. This module is also the worked example of README "Adding a
method": the pure loss, its registration and its adapter, in one file.
"""

import jax
import jax.numpy as jnp

from kdjax.methods.registry import Method
from kdjax.methods.registry import register


def logit_mse(student_logits: jax.Array, teacher_logits: jax.Array) -> jax.Array:
  """Mean squared error between student and teacher logits.

  ::

    L = (1 / (B K)) sum_{b,k} (z_s[b,k] - z_t[b,k])^2

  Args:
    student_logits: ``[B, K]``.
    teacher_logits: ``[B, K]`` (the trainer passes them without gradient).

  Returns:
    float32 scalar.
  """
  diff = student_logits.astype(jnp.float32) - teacher_logits.astype(jnp.float32)
  return jnp.mean(jnp.square(diff))


LOGIT_MSE = register(Method(
    name='logit_mse', doc='Kim et al. IJCAI 2021: mean squared error between the logits',
    loss=lambda x: logit_mse(*x.student, *x.teacher)))
