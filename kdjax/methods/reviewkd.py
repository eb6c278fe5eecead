"""ReviewKD, Chen et al. CVPR 2021 (docs/methods.md#reviewkd).

An attention-based fusion (ABF) chain runs over the student's taps from the deepest to the
shallowest, each ABF fusing its tap with the deeper fused feature and producing a map shaped
like the paired teacher tap; the hierarchical context loss (HCL) compares each level. Levels
of any grids pair up (a ViT's four equal patch grids with a CNN's pyramid): each ABF resizes
the deeper residual to its own grid and its output to its teacher level's grid.
"""

from typing import NamedTuple

import flax.linen as nn
import jax.numpy as jnp

from kdjax import losses
from kdjax.errors import KdjaxError
from kdjax.layers import batch_norm
from kdjax.layers import kaiming_uniform_a1
from kdjax.layers import torch_conv
from kdjax.methods.registry import Method
from kdjax.methods.registry import paired_taps
from kdjax.methods.registry import register


class Levels(NamedTuple):
  levels: tuple   # per tap, shallow to deep: the ABF output shaped like its teacher target


def as_map(x):
  """A pooled [B, C] feature as a [B, 1, 1, C] map; maps unchanged."""
  return x.reshape(x.shape[0], 1, 1, x.shape[-1]) if x.ndim == 2 else x


class ABF(nn.Module):
  """One ABF: 1x1 conv + BN to `mid`, optional attention fusion with the deeper residual
  (resized to this level's grid), resize to the teacher's grid, 3x3 conv + BN to the teacher's
  channels. Both resizes are the reference's nearest resize where the grid grows and
  block-mean (adaptive average) pooling where it shrinks (`losses.resize_to_grid(...,
  grow='nearest')`; docs/methods.md#reviewkd).
  Returns (output, new residual = the fused mid feature). The two main convs use
  kaiming_uniform(a=1), as the reference."""
  in_channels: int
  mid: int
  out_shape: tuple  # teacher (H, W, C)

  @nn.compact
  def __call__(self, x, residual, train):
    x = nn.Conv(self.mid, (1, 1), use_bias=False, kernel_init=kaiming_uniform_a1,
                name='conv1')(x)
    x = batch_norm(train, 'bn1', None)(x)
    if residual is not None:
      y = losses.resize_to_grid(residual, x.shape[1:3], grow='nearest')
      att = torch_conv(2, 1, in_features=2 * self.mid, name='att_conv')(
          jnp.concatenate([x, y], axis=-1))
      att = nn.sigmoid(att)
      x = x * att[..., 0:1] + y * att[..., 1:2]
    if x.shape[1:3] != tuple(self.out_shape[:2]):
      x = losses.resize_to_grid(x, tuple(self.out_shape[:2]), grow='nearest')
    out = nn.Conv(self.out_shape[-1], (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                  kernel_init=kaiming_uniform_a1, name='conv2')(x)
    return batch_norm(train, 'bn2', None)(out), x


class ReviewKDConnector(nn.Module):
  """ABFs from the deepest student tap to the shallowest (`abf{i}` for the i-th tap)."""
  in_channels: tuple
  teacher_shapes: tuple
  mid: int

  @nn.compact
  def __call__(self, student, teacher, train, batch=None):
    del teacher, batch
    levels, residual = [None] * len(student), None
    for i in reversed(range(len(student))):
      abf = ABF(self.in_channels[i], self.mid, tuple(self.teacher_shapes[i]), name=f'abf{i}')
      levels[i], residual = abf(as_map(student[i]), residual, train)
    return Levels(tuple(levels))


def _connector(ctx, student, teacher, *, max_mid_channels):
  for network, shapes in (('student', student), ('teacher', teacher)):
    for shape in shapes:
      if len(shape.shape) not in (2, 4):
        raise KdjaxError(f'losses.{ctx.term}: ReviewKD reads NHWC maps [B, H, W, C] or pooled '
                         f'[B, D] features, but a {network} tap is {tuple(shape.shape)}; tap a '
                         'stage (stage1..stage4: token models give their tokens on the patch '
                         'grid there) or pooled')
  if len(student) != len(teacher):
    raise KdjaxError(f'reviewkd pairs {len(student)} student_taps with {len(teacher)} '
                     'teacher_taps; give both the same number of taps')
  shape = lambda s: tuple(s.shape[1:]) if len(s.shape) == 4 else (1, 1, s.shape[-1])
  in_channels = tuple(s.shape[-1] for s in student)
  return ReviewKDConnector(in_channels=in_channels, teacher_shapes=tuple(map(shape, teacher)),
                           mid=min(max_mid_channels, in_channels[-1]))


STAGES = ('layer1_pre', 'layer2_pre', 'layer3_pre', 'layer4_pre', 'pooled')

REVIEWKD = register(Method(
    name='reviewkd', doc='ReviewKD: ABF fusion chain + hierarchical context loss',
    taps=dict(student_taps=STAGES, teacher_taps=STAGES), reads=paired_taps,
    connector=_connector, connector_hparams=dict(max_mid_channels=512),
    loss=lambda x: sum(losses.hcl(s, as_map(t)) for s, t in zip(x.connector.levels, x.teacher))))
