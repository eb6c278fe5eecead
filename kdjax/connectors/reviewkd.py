"""ReviewKD's attention-based fusion (ABF) chain over the student taps, deepest first (§4.4)."""

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from kdjax import losses
from kdjax.connectors.layers import batch_norm
from kdjax.connectors.layers import torch_conv

# kaiming_uniform_(a=1) of the two main convs: U(+-sqrt(3 / fan_in)) (§1.9).
_ABF_INIT = nn.initializers.variance_scaling(1.0, 'fan_in', 'uniform')


def as_map(x):
  """A pooled [B, C] feature as a [B, 1, 1, C] map; maps unchanged."""
  return x.reshape(x.shape[0], 1, 1, x.shape[-1]) if x.ndim == 2 else x


class ABF(nn.Module):
  """One ABF: 1x1 conv + BN to `mid`, optional attention fusion with the deeper residual,
  nearest resize to the teacher's size, 3x3 conv + BN to the teacher's channels.
  Returns (output, new residual = the fused mid feature)."""
  in_channels: int
  mid: int
  out_shape: tuple  # teacher (H, W, C)

  @nn.compact
  def __call__(self, x, residual, train):
    x = nn.Conv(self.mid, (1, 1), use_bias=False, kernel_init=_ABF_INIT, name='conv1')(x)
    x = batch_norm(train, 'bn1', None)(x)
    if residual is not None:
      y = losses.nearest_resize(residual, x.shape[1:3])
      att = torch_conv(2, 1, in_features=2 * self.mid, name='att_conv')(
          jnp.concatenate([x, y], axis=-1))
      att = nn.sigmoid(att)
      x = x * att[..., 0:1] + y * att[..., 1:2]
    if x.shape[1:3] != tuple(self.out_shape[:2]):
      x = losses.nearest_resize(x, tuple(self.out_shape[:2]))
    out = nn.Conv(self.out_shape[-1], (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                  kernel_init=_ABF_INIT, name='conv2')(x)
    return batch_norm(train, 'bn2', None)(out), x


class ReviewKDConnector(nn.Module):
  """ABFs from the deepest student tap to the shallowest; returns {'level{i}': output_i} for
  the i-th (shallow-to-deep) tap, each shaped like its teacher target."""
  student_taps: Sequence[str]
  in_channels: Sequence[int]
  teacher_shapes: Sequence[tuple]
  mid: int

  @nn.compact
  def __call__(self, student, teacher, train, batch=None):
    del teacher, batch
    out, residual = {}, None
    for i in reversed(range(len(self.student_taps))):
      abf = ABF(self.in_channels[i], self.mid, tuple(self.teacher_shapes[i]), name=f'abf{i}')
      out[f'level{i}'], residual = abf(as_map(student[self.student_taps[i]]), residual, train)
    return out
