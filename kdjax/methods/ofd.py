"""A Comprehensive Overhaul of Feature Distillation, Heo et al. ICCV 2019 (docs/methods.md#ofd).

Student pre-ReLU maps go through a trainable 1x1 conv + BatchNorm per stage; the loss is a
partial L2 to the teacher's pre-ReLU maps, clipped from below at per-channel margins that are
computed once from the teacher's BatchNorm before each stage's final ReLU.
"""

from typing import NamedTuple

import flax.linen as nn
import numpy as np

from kdjax import losses
from kdjax.layers import batch_norm
from kdjax.layers import conv_kernel_init
from kdjax.methods.registry import Method
from kdjax.methods.registry import register


class Connected(NamedTuple):
  maps: tuple   # per stage, BN(conv1x1(F_s)) with the teacher's channel count


def stage_taps(stages) -> tuple:
  """The pre-ReLU taps of the given 1-based stages."""
  return tuple(f'layer{i}_pre' for i in stages)


class OFDConnectors(nn.Module):
  """Per stage: 1x1 conv (no bias, kaiming normal fan_out, as the official code) + BN 1/0."""
  teacher_channels: tuple

  @nn.compact
  def __call__(self, student, teacher, train, batch=None):
    del teacher, batch
    maps = []
    for i, (x, channels) in enumerate(zip(student, self.teacher_channels)):
      y = nn.Conv(channels, (1, 1), use_bias=False, kernel_init=conv_kernel_init,
                  name=f'conv{i}')(x)
      maps.append(batch_norm(train, f'bn{i}', None)(y))
    return Connected(tuple(maps))


def _connector(ctx, student, teacher):
  del ctx, student
  return OFDConnectors(teacher_channels=tuple(t.shape[-1] for t in teacher))


def _margins(ctx, *, stages):
  """Per-channel margins from the teacher's BatchNorm before each stage's final ReLU."""
  margins = []
  for i in stages:
    node = ctx.teacher_variables['params']
    for part in ctx.teacher.bn_before_relu(i).split('/'):
      node = node[part]
    margins.append(losses.ofd_margin(np.asarray(node['scale']), np.asarray(node['bias'])))
  return {'margins': tuple(margins)}


def _loss(x, *, margins):
  n = len(margins)
  total = 0.0
  for j, (s, t) in enumerate(zip(x.connector.maps, x.teacher)):
    total = total + losses.ofd(s, t, margins[j]) / 2 ** (n - 1 - j)  # ..., 1/4, 1/2, 1
  return total


OFD = register(Method(
    name='ofd', doc='Overhaul of Feature Distillation: pre-ReLU stages, margins, partial L2',
    taps=dict(stages=(1, 2, 3, 4)),
    reads=lambda stages: {'student': stage_taps(stages), 'teacher': stage_taps(stages)},
    connector=_connector, constants=_margins, loss=_loss))
