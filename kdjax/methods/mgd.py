"""Masked Generative Distillation, Yang et al. ECCV 2022 (docs/methods.md#mgd).

The student's map (aligned to the teacher's channels by a 1x1 conv if they differ) is masked
channel-wise at random and a small generator (conv3x3-ReLU-conv3x3) must reproduce the
teacher's map from it. The term weight is the paper's alpha_mgd (7e-5 on ImageNet).
"""

from typing import NamedTuple

import flax.linen as nn
import jax

from kdjax import losses
from kdjax.layers import torch_conv
from kdjax.methods.registry import Method
from kdjax.methods.registry import one_tap
from kdjax.methods.registry import register


class Generated(NamedTuple):
  generated: jax.Array   # [B, H, W, C_teacher]


class MaskedGenerator(nn.Module):
  """generation(align(F_s) * M), M one Bernoulli per sample and channel, P(masked) =
  lambda_mgd, drawn from the 'distill' RNG stream (a pure function of (seed, step), so the same
  on any mesh). PyTorch default init, as the official code."""
  student_channels: int
  teacher_channels: int
  lambda_mgd: float

  @nn.compact
  def __call__(self, student, teacher, train, batch=None):
    del teacher, batch
    x, c = student[0], self.teacher_channels
    if self.student_channels != c:
      x = torch_conv(c, 1, in_features=self.student_channels, name='align')(x)
    if train:
      x = x * losses.mgd_mask(self.make_rng('distill'), x.shape, lambda_mgd=self.lambda_mgd)
    x = torch_conv(c, 3, padding=1, in_features=c, name='generation0')(x)
    x = torch_conv(c, 3, padding=1, in_features=c, name='generation1')(nn.relu(x))
    return Generated(x)


def _connector(ctx, student, teacher, *, lambda_mgd):
  del ctx
  return MaskedGenerator(student_channels=student[0].shape[-1],
                         teacher_channels=teacher[0].shape[-1], lambda_mgd=lambda_mgd)


MGD = register(Method(
    name='mgd', doc='Masked Generative Distillation; the term weight is alpha_mgd (7e-5)',
    taps=dict(tap='layer4'), reads=one_tap,
    connector=_connector, connector_hparams=dict(lambda_mgd=0.15),
    loss=lambda x: losses.mgd(x.connector.generated, *x.teacher)))
