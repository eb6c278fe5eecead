"""Correlation Congruence, Peng et al. ICCV 2019, in RepDistiller's form (docs/methods.md#cc).

Both sides are first embedded by a trainable linear layer (RepDistiller's `LinearEmbed`, both
in its trainable list); the loss compares the embeddings' kernel correlation matrices, per
group of `group_size` examples.
"""

from typing import NamedTuple

import flax.linen as nn
import jax

from kdjax import losses
from kdjax.layers import torch_dense
from kdjax.methods.registry import Method
from kdjax.methods.registry import features_per_example
from kdjax.methods.registry import one_tap
from kdjax.methods.registry import register


class Embedded(NamedTuple):
  student: jax.Array   # [B, dim]
  teacher: jax.Array   # [B, dim]


def _flat(x):
  return x.reshape(x.shape[0], -1)


class Embeddings(nn.Module):
  """W_s h_s and W_t sg(h_t), PyTorch default init; the teacher's features carry no gradient,
  its embedding is trained through the loss."""
  dim: int
  student_features: int
  teacher_features: int

  @nn.compact
  def __call__(self, student, teacher, train, batch=None):
    del train, batch
    e_s = torch_dense(self.dim, in_features=self.student_features, name='embed_s')(
        _flat(student[0]))
    e_t = torch_dense(self.dim, in_features=self.teacher_features, name='embed_t')(
        _flat(jax.lax.stop_gradient(teacher[0])))
    return Embedded(e_s, e_t)


def _connector(ctx, student, teacher, *, dim):
  del ctx
  return Embeddings(dim=dim, student_features=features_per_example(student[0]),
                    teacher_features=features_per_example(teacher[0]))


CC = register(Method(
    name='cc', doc='Correlation Congruence (RepDistiller form) with trainable embeddings',
    taps=dict(tap='pooled'), reads=one_tap, group_size=64,
    hparams=dict(gamma=0.4, p_order=2),
    connector=_connector, connector_hparams=dict(dim=128),
    loss=lambda x, *, gamma, p_order: losses.cc(x.connector.student, x.connector.teacher,
                                                gamma=gamma, p_order=p_order)))
