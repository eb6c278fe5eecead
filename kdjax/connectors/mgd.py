"""MGD's generator: optional 1x1 alignment, random channel mask, conv3x3-ReLU-conv3x3 (§4.5)."""

import flax.linen as nn

from kdjax import losses
from kdjax.connectors.layers import torch_conv


class MaskedGenerator(nn.Module):
  """Returns {'generated': generation(align(F_s) * Mk)} with the teacher's channel count.

  The mask Mk (one Bernoulli per sample and channel, P(masked) = lambda_mgd) is drawn from the
  'distill' RNG stream, which the trainer derives from (seed, step): the same on any mesh.
  PyTorch default init, as the official code.
  """
  tap: str
  student_channels: int
  teacher_channels: int
  lambda_mgd: float

  @nn.compact
  def __call__(self, student, teacher, train, batch=None):
    del teacher, batch
    x = student[self.tap]
    c = self.teacher_channels
    if self.student_channels != c:
      x = torch_conv(c, 1, in_features=self.student_channels, name='align')(x)
    if train:
      x = x * losses.mgd_mask(self.make_rng('distill'), x.shape, lambda_mgd=self.lambda_mgd)
    x = torch_conv(c, 3, padding=1, in_features=c, name='generation0')(x)
    x = torch_conv(c, 3, padding=1, in_features=c, name='generation1')(nn.relu(x))
    return {'generated': x}
