"""PEFD's projector ensemble: the mean of q ReLU(Linear) projections of the student feature (§4.6)."""

import flax.linen as nn

from kdjax.connectors.layers import torch_dense


class ProjectorEnsemble(nn.Module):
  """Returns {'projected': (1/q) sum_i ReLU(Linear_i(h_s))}, C_s -> C_t, PyTorch default init."""
  tap: str
  num_projectors: int
  student_features: int
  teacher_features: int

  @nn.compact
  def __call__(self, student, teacher, train, batch=None):
    del teacher, train, batch
    h = student[self.tap].reshape(student[self.tap].shape[0], -1)
    projections = [nn.relu(torch_dense(self.teacher_features, in_features=self.student_features,
                                       name=f'projector{i}')(h))
                   for i in range(self.num_projectors)]
    return {'projected': sum(projections) / self.num_projectors}
