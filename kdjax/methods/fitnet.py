"""FitNet hints, Romero et al. ICLR 2015, with mdistiller's ConvReg (docs/methods.md#fitnet).

A trainable regressor maps the student's hint map onto the teacher's shape; the loss is the
mean squared error to the teacher's map.
"""

from typing import NamedTuple

import flax.linen as nn
import jax

from kdjax import losses
from kdjax.errors import KdjaxError
from kdjax.layers import batch_norm
from kdjax.layers import torch_conv
from kdjax.layers import torch_conv_transpose
from kdjax.methods.registry import Method
from kdjax.methods.registry import register


class Hint(NamedTuple):
  hint: jax.Array   # the regressed student map, shaped like the teacher's [B, Ht, Wt, Ct]


class ConvReg(nn.Module):
  """Conv chosen by the size rule + BatchNorm + ReLU, from `[B, Hs, Ws, Cs]` to the teacher's
  `[B, Ht, Wt, Ct]` (mdistiller/RepDistiller `ConvReg`, PyTorch default init):

    Hs == 2 Ht: conv 3x3 stride 2 pad 1;  2 Hs == Ht: conv-transpose 4x4 stride 2 pad 1;
    Hs >= Ht:   conv (1 + Hs - Ht) x (1 + Ws - Wt), no padding (1x1 when the sizes match).
  """
  student_shape: tuple   # (H, W, C) of the student map
  teacher_shape: tuple   # (H, W, C) of the teacher map
  use_relu: bool = True

  @nn.compact
  def __call__(self, x, train):
    x = batch_norm(train, 'bn', None)(self._conv()(x))
    return nn.relu(x) if self.use_relu else x

  def _conv(self):
    (hs, ws, cs), (ht, wt, ct) = self.student_shape, self.teacher_shape
    if hs == 2 * ht:
      return torch_conv(ct, 3, strides=2, padding=1, in_features=cs, name='conv')
    if 2 * hs == ht:
      return torch_conv_transpose(ct, 4, strides=2, padding=1, in_features=cs, name='conv')
    if hs >= ht:
      return torch_conv(ct, (1 + hs - ht, 1 + ws - wt), in_features=cs, name='conv')
    raise KdjaxError(f'FitNet cannot regress a {hs}x{ws} student map onto a {ht}x{wt} teacher '
                     'map; choose taps whose student map is at least as large (or half as large)')


class HintRegressor(nn.Module):
  """The FitNet connector: ConvReg on the student's hint tap."""
  student_shape: tuple
  teacher_shape: tuple

  @nn.compact
  def __call__(self, student, teacher, train, batch=None):
    del teacher, batch
    return Hint(ConvReg(self.student_shape, self.teacher_shape, name='regressor')(
        student[0], train))


def _connector(ctx, student, teacher):
  del ctx
  return HintRegressor(student_shape=tuple(student[0].shape[1:]),
                       teacher_shape=tuple(teacher[0].shape[1:]))


FITNET = register(Method(
    name='fitnet', doc='FitNet hint with a ConvReg regressor',
    taps=dict(student_tap='layer2', teacher_tap='layer2'),
    reads=lambda student_tap, teacher_tap: {'student': (student_tap,),
                                            'teacher': (teacher_tap,)},
    connector=_connector,
    loss=lambda x: losses.fitnet(x.connector.hint, *x.teacher)))
