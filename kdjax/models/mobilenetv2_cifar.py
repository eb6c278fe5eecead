"""mdistiller's CIFAR MobileNetV2 (``mobile_half``: expansion 6, width 0.5) in Flax Linen (NHWC).

Mirrors ``mdistiller/models/cifar/mobilenetv2.py``: a 3x3 stride-2 stem (conv, no bias, BN,
ReLU; int(32 w) channels), seven groups ``blocks0..blocks6`` of inverted residuals with
(t, c, n, s) = (1, 16, 1, 1), (T, 24, 2, 1), (T, 32, 3, 2), (T, 64, 4, 2), (T, 96, 3, 1),
(T, 160, 3, 2), (T, 320, 1, 1) (channels int(c w), the first block of a group strided), a
1x1 head ``conv2`` to 1280 channels (int(1280 w) when w > 1) with BN + ReLU, global average
pooling and ``classifier`` (one Linear). An inverted residual is 1x1 expand conv + BN + ReLU,
3x3 depthwise conv (stride s, pad 1) + BN + ReLU, 1x1 linear conv + BN, plus the input when
s = 1 and the width is unchanged. Unlike torchvision, the expand conv is there even when
t = 1 (the reference keeps it). No conv has a bias. Init as the reference: convs
N(0, sqrt(2 / (k*k*out))), BN 1 / 0, the classifier N(0, 0.01) with zero bias.

mdistiller pools with ``AvgPool2d(input_size // 16, ceil_mode=True)``, the global average at
32x32; we always take the global average.

Names: PyTorch ``conv1.0`` / ``conv1.1`` are ``conv1/conv`` / ``conv1/bn`` (likewise
``conv2``); ``blocks.g.j.conv.{0,1,3,4,6,7}`` are ``blocks{g}/block{j}/`` ``pw_conv``,
``pw_bn``, ``dw_conv``, ``dw_bn``, ``pwl_conv``, ``pwl_bn``; ``classifier.0`` is
``classifier``.

Taps (the zoo's convention; the last block at each of the four last resolutions, 16 / 8 / 4 /
2 px at 32x32): ``stage1`` = ``blocks1``, ``stage2`` = ``blocks2``, ``stage3`` = ``blocks4``
(mdistiller's ``f1..f3``) and ``stage4`` = the head ``conv2`` (1280 channels: what pooling
reads; mdistiller's ``f4`` is ``blocks6``, also 2x2, raw path ``blocks6``). ``stem`` =
``conv1``. The reference returns no ``preact_feats`` for this model (its OFD cannot use it),
so there are no ``stageN_pre`` taps and no ``bn_before_relu``. An input smaller than 16x16
(four stride-2 steps) is a KdjaxError at set-up.
"""

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from kdjax.layers import batch_norm
from kdjax.layers import check_input
from kdjax.layers import conv
from kdjax.layers import torch_dense
from kdjax.models.common import global_pool


class ConvBNReLU(nn.Module):
  """mdistiller ``conv_bn`` / ``conv_1x1_bn``: conv (no bias) + BN + ReLU."""

  features: int
  kernel: int
  strides: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = conv(self.features, self.kernel, self.strides, self.kernel // 2, 'conv', self.dtype)(x)
    return nn.relu(batch_norm(train, 'bn', self.dtype)(x))


class InvertedResidual(nn.Module):
  """1x1 expand, 3x3 depthwise (strided), 1x1 linear; residual when shapes allow."""

  features: int
  strides: int
  expand_ratio: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    hidden = x.shape[-1] * self.expand_ratio
    y = conv(hidden, 1, 1, 0, 'pw_conv', self.dtype)(x)
    y = nn.relu(batch_norm(train, 'pw_bn', self.dtype)(y))
    y = conv(hidden, 3, self.strides, 1, 'dw_conv', self.dtype, groups=hidden)(y)
    y = nn.relu(batch_norm(train, 'dw_bn', self.dtype)(y))
    y = conv(self.features, 1, 1, 0, 'pwl_conv', self.dtype)(y)
    y = batch_norm(train, 'pwl_bn', self.dtype)(y)
    if self.strides == 1 and x.shape[-1] == self.features:
      return x + y
    return y


class InvertedResidualGroup(nn.Module):
  """One entry of the (t, c, n, s) table: ``num_blocks`` blocks ``block0..``."""

  features: int
  num_blocks: int
  strides: int
  expand_ratio: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    for j in range(self.num_blocks):
      x = InvertedResidual(self.features, self.strides if j == 0 else 1, self.expand_ratio,
                           self.dtype, name=f'block{j}')(x, train)
    return x


_SETTING = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
            (6, 160, 3, 2), (6, 320, 1, 1))


class MobileNetV2Cifar(nn.Module):
  """mdistiller ``MobileNetV2(T, feature_dim, width_mult)``.

  ``depths`` overrides the blocks per group and ``last_channel`` the head width (tiny test
  variants only); None keeps the reference's.
  """

  expand_ratio: int = 6
  width_mult: float = 0.5
  num_classes: int = 100
  dtype: Any = jnp.float32
  depths: Optional[Sequence[int]] = None
  last_channel: Optional[int] = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    check_input(x, 'mobilenetv2_cifar', minimum=16, why='it downsamples 16x')
    w = self.width_mult
    x = ConvBNReLU(int(32 * w), 3, 2, self.dtype, name='conv1')(x, train)
    depths = self.depths or [n for _, _, n, _ in _SETTING]
    for g, ((t, c, _, s), n) in enumerate(zip(_SETTING, depths)):
      x = InvertedResidualGroup(int(c * w), n, s, self.expand_ratio if t != 1 else 1,
                                self.dtype, name=f'blocks{g}')(x, train)
    last = self.last_channel or (int(1280 * w) if w > 1.0 else 1280)
    x = ConvBNReLU(last, 1, 1, self.dtype, name='conv2')(x, train)
    x = global_pool(self, x)
    x = torch_dense(self.num_classes, kernel_init=nn.initializers.normal(0.01),
                    bias_init=nn.initializers.zeros, dtype=self.dtype, name='classifier')(x)
    return x.astype(jnp.float32)

  def tap_aliases(self):
    """Friendly tap names -> intermediates paths (see the module docstring)."""
    return {'stem': 'conv1', 'stage1': 'blocks1', 'stage2': 'blocks2', 'stage3': 'blocks4',
            'stage4': 'conv2', 'pooled': 'pooled', 'logits': 'classifier'}


def mobilenetv2_cifar(*, num_classes=100, dtype=jnp.float32):
  """mdistiller ``mobile_half`` (its CIFAR 'MobileNetV2'): expansion 6, width 0.5."""
  return MobileNetV2Cifar(6, 0.5, num_classes=num_classes, dtype=dtype)


def tiny_mobilenetv2_cifar(*, num_classes=10, dtype=jnp.float32):
  """A test-size variant: width 0.25, expansion 2, one block per group, a 64-channel head;
  not registered."""
  return MobileNetV2Cifar(2, 0.25, num_classes=num_classes, dtype=dtype,
                          depths=(1,) * 7, last_channel=64)
