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
  `[B, Ht, Wt, Ct]` (mdistiller/RepDistiller `ConvReg`, PyTorch default init, for the sizes it
  was written for; docs/methods.md#fitnet):

    (Hs, Ws) == (Ht, Wt):                     conv 1x1;
    (Hs, Ws) == 2 (Ht, Wt):                   conv 3x3 stride 2 pad 1;
    2 (Hs, Ws) == (Ht, Wt):                   conv-transpose 4x4 stride 2 pad 1;
    Ht <= Hs < 2 Ht and Wt <= Ws < 2 Wt:      conv (1 + Hs - Ht) x (1 + Ws - Wt), no padding;
    any other pair of grids (a ViT's 14x14 against a ResNet's 56x56 or 7x7 stage, ...): the
    student map is resized to the teacher grid (`losses.resize_to_grid`: block-mean pooling
    when it shrinks, bilinear when it grows), then conv 1x1.
  """
  student_shape: tuple   # (H, W, C) of the student map
  teacher_shape: tuple   # (H, W, C) of the teacher map
  use_relu: bool = True

  @nn.compact
  def __call__(self, x, train):
    if self.resizes:
      x = losses.resize_to_grid(x, tuple(self.teacher_shape[:2]))
    x = batch_norm(train, 'bn', None)(self._conv()(x))
    return nn.relu(x) if self.use_relu else x

  @property
  def resizes(self) -> bool:
    """Whether the student grid is resized to the teacher's (no reference rule applies)."""
    (hs, ws, _), (ht, wt, _) = self.student_shape, self.teacher_shape
    return not ((hs, ws) == (2 * ht, 2 * wt) or (2 * hs, 2 * ws) == (ht, wt)
                or (ht <= hs < 2 * ht and wt <= ws < 2 * wt))

  def _conv(self):
    (hs, ws, cs), (ht, wt, ct) = self.student_shape, self.teacher_shape
    if self.resizes:
      return torch_conv(ct, 1, in_features=cs, name='conv')
    if (hs, ws) == (2 * ht, 2 * wt):
      return torch_conv(ct, 3, strides=2, padding=1, in_features=cs, name='conv')
    if (2 * hs, 2 * ws) == (ht, wt):
      return torch_conv_transpose(ct, 4, strides=2, padding=1, in_features=cs, name='conv')
    return torch_conv(ct, (1 + hs - ht, 1 + ws - wt), in_features=cs, name='conv')


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
  for network, shape in (('student', student[0]), ('teacher', teacher[0])):
    if len(shape.shape) != 4:
      raise KdjaxError(f'losses.{ctx.term}: FitNet regresses NHWC maps [B, H, W, C], but the '
                       f'{network} tap is {tuple(shape.shape)}; tap a stage (stage1..stage4: '
                       'token models give their tokens on the patch grid there)')
  return HintRegressor(student_shape=tuple(student[0].shape[1:]),
                       teacher_shape=tuple(teacher[0].shape[1:]))


FITNET = register(Method(
    name='fitnet', doc='FitNet hint with a ConvReg regressor',
    taps=dict(student_tap='layer2', teacher_tap='layer2'),
    reads=lambda student_tap, teacher_tap: {'student': (student_tap,),
                                            'teacher': (teacher_tap,)},
    connector=_connector,
    loss=lambda x: losses.fitnet(x.connector.hint, *x.teacher)))
