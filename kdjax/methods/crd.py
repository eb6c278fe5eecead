"""Contrastive Representation Distillation, Tian et al. ICLR 2020 (docs/methods.md#crd).

Trainable: `embed_s`, `embed_t` (Linear + l2 normalisation, d = 128). Non-trainable state,
kept in the `crd_memory` collection of the train state and updated inside the jit step, so
every replica holds the same banks: `student`, `teacher` ([N, d], one row per training example,
initialised U(+-1/sqrt(d/3))) and the normalisation constants `z_student`, `z_teacher` (-1
until the first step sets them to N * mean(scores), then frozen). Needs `input.add_index` (the
example's row); N comes from the dataset.
"""

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kdjax import losses
from kdjax.layers import torch_dense
from kdjax.losses._numerics import safe_norm
from kdjax.methods.registry import Method
from kdjax.methods.registry import features_per_example
from kdjax.methods.registry import one_tap
from kdjax.methods.registry import register


class Contrast(NamedTuple):
  student_probs: jax.Array   # out_s / Z_s, [B, K + 1], column 0 the positive
  teacher_probs: jax.Array   # out_t / Z_t


def _l2n(x):
  return x / safe_norm(x, axis=-1, keepdims=True)


class CRDMemory(nn.Module):
  """Scores of each anchor against the other side's memory rows (positive + K negatives)."""
  dim: int
  n_data: int
  num_negatives: int
  temperature: float
  momentum: float
  student_features: int
  teacher_features: int

  @nn.compact
  def __call__(self, student, teacher, train, batch=None):
    flat = lambda x: x.reshape(x.shape[0], -1)
    e_s = _l2n(torch_dense(self.dim, in_features=self.student_features, name='embed_s')(
        flat(student[0])))
    e_t = _l2n(torch_dense(self.dim, in_features=self.teacher_features, name='embed_t')(
        flat(jax.lax.stop_gradient(teacher[0]))))
    bound = 1.0 / (self.dim / 3) ** 0.5
    init = lambda: jax.random.uniform(self.make_rng('params'), (self.n_data, self.dim),
                                      jnp.float32, -bound, bound)
    memory_s = self.variable('crd_memory', 'student', init)
    memory_t = self.variable('crd_memory', 'teacher', init)
    z_s = self.variable('crd_memory', 'z_student', lambda: jnp.array(-1.0, jnp.float32))
    z_t = self.variable('crd_memory', 'z_teacher', lambda: jnp.array(-1.0, jnp.float32))

    batch_size = e_s.shape[0]
    index = batch['index'] if batch is not None else jnp.zeros((batch_size,), jnp.int32)
    # Negatives uniformly over the dataset, with replacement (the reference's ImageNet sampler),
    # drawn from the step's 'distill' stream: the same on any mesh.
    negatives = (jax.random.randint(self.make_rng('distill'), (batch_size, self.num_negatives),
                                    0, self.n_data) if train
                 else jnp.zeros((batch_size, self.num_negatives), jnp.int32))
    rows = jnp.concatenate([index[:, None], negatives], axis=1)        # [B, K + 1]
    out_s = losses.crd_scores(e_s, memory_t.value[rows], temperature=self.temperature)
    out_t = losses.crd_scores(e_t, memory_s.value[rows], temperature=self.temperature)
    zs = jnp.where(z_s.value < 0, losses.crd_normalization_constant(out_s, n_data=self.n_data),
                   z_s.value)
    zt = jnp.where(z_t.value < 0, losses.crd_normalization_constant(out_t, n_data=self.n_data),
                   z_t.value)
    if train and not self.is_initializing():
      m = self.momentum
      new_s = _l2n(m * memory_s.value[index] + (1 - m) * jax.lax.stop_gradient(e_s))
      new_t = _l2n(m * memory_t.value[index] + (1 - m) * jax.lax.stop_gradient(e_t))
      memory_s.value = memory_s.value.at[index].set(new_s)
      memory_t.value = memory_t.value.at[index].set(new_t)
      z_s.value, z_t.value = zs, zt
    return Contrast(out_s / zs, out_t / zt)


def _connector(ctx, student, teacher, *, dim, num_negatives, temperature, momentum):
  return CRDMemory(dim=dim, n_data=ctx.num_train_examples(), num_negatives=num_negatives,
                   temperature=temperature, momentum=momentum,
                   student_features=features_per_example(student[0]), teacher_features=features_per_example(teacher[0]))


CRD = register(Method(
    name='crd', doc='Contrastive Representation Distillation: embeddings + memory banks; '
                    'needs input.add_index',
    taps=dict(tap='pooled'), reads=one_tap,
    connector=_connector,
    connector_hparams=dict(dim=128, num_negatives=16384, temperature=0.07, momentum=0.5),
    constants=lambda ctx, tap: {'num_data': ctx.num_train_examples()},
    loss=lambda x, *, num_data: losses.crd(x.connector.student_probs, x.connector.teacher_probs,
                                           n_data=num_data)))
