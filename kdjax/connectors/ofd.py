"""OFD's connectors: per stage, 1x1 conv (no bias) + BatchNorm on the student's pre-ReLU map (§4.3)."""

from typing import Sequence

import flax.linen as nn

from kdjax.connectors.layers import batch_norm
from kdjax.layers import conv_kernel_init


class OFDConnectors(nn.Module):
  """Returns {tap: BN(conv1x1(F_s[tap]))} with the teacher's channel count at each stage.

  Conv init normal(0, sqrt(2 / C_t)) (kaiming normal, fan_out, as the official code); BN 1/0.
  """
  student_taps: Sequence[str]
  teacher_channels: Sequence[int]

  @nn.compact
  def __call__(self, student, teacher, train, batch=None):
    del teacher, batch
    out = {}
    for i, (tap, channels) in enumerate(zip(self.student_taps, self.teacher_channels)):
      y = nn.Conv(channels, (1, 1), use_bias=False, kernel_init=conv_kernel_init,
                  name=f'conv{i}')(student[tap])
      out[tap] = batch_norm(train, f'bn{i}', None)(y)
    return out
