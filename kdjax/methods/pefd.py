"""Projector Ensemble Feature Distillation, Chen et al. NeurIPS 2022 (docs/methods.md#pefd).

The student feature goes through q parallel ReLU(Linear) projectors whose mean is compared
with the teacher's feature.
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


class Projected(NamedTuple):
  projected: jax.Array   # [B, C_teacher]


class ProjectorEnsemble(nn.Module):
  """(1/q) sum_i ReLU(Linear_i(h_s)), C_s -> C_t, PyTorch default init."""
  num_projectors: int
  student_features: int
  teacher_features: int

  @nn.compact
  def __call__(self, student, teacher, train, batch=None):
    del teacher, train, batch
    h = student[0].reshape(student[0].shape[0], -1)
    projections = [nn.relu(torch_dense(self.teacher_features, in_features=self.student_features,
                                       name=f'projector{i}')(h))
                   for i in range(self.num_projectors)]
    return Projected(sum(projections) / self.num_projectors)


def _connector(ctx, student, teacher, *, num_projectors):
  del ctx
  return ProjectorEnsemble(num_projectors=num_projectors, student_features=features_per_example(student[0]),
                           teacher_features=features_per_example(teacher[0]))


PEFD = register(Method(
    name='pefd', doc='Projector Ensemble Feature Distillation',
    taps=dict(tap='pooled'), reads=one_tap,
    connector=_connector, connector_hparams=dict(num_projectors=3),
    loss=lambda x: losses.pefd(x.connector.projected, *x.teacher)))
