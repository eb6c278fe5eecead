"""mdistiller's CIFAR ResNet50 (``mdistiller/models/cifar/resnetv2.py``) in Flax Linen (NHWC).

The CIFAR teacher of the ResNet50 -> MobileNetV2 pair: a 3x3 stride-1 stem (64 channels,
pad 1, no bias) + BN + ReLU with no max pool, four stages ``layer1..layer4`` of bottlenecks
(3, 4, 6, 3 blocks; widths 64, 128, 256, 512, expansion 4; strides 1, 2, 2, 2 on the 3x3
conv), global average pooling and ``linear``. A block's shortcut is a 1x1 conv (stride s,
no bias) + BN when the stride is not 1 or the width changes. Init as the reference: convs
kaiming_normal fan_out, BN 1 / 0 (no zero-init of the last BN), ``linear`` PyTorch's
default. mdistiller pools with ``AdaptiveAvgPool2d(1)``: the global average.

Names follow the PyTorch state dict: ``layer1.0.conv1`` is ``layer1/block0/conv1``,
``layer1.0.shortcut.0`` / ``.1`` are ``layer1/block0/shortcut_conv`` / ``shortcut_bn``; top
level ``conv1``, ``bn1``, ``linear``. The stage and the tap machinery are shared with
``kdjax.models.resnet``.

Taps (the zoo's convention): ``stage1..stage4`` = ``layer1..layer4`` (32 / 32 / 16 / 8 / 4
px at 32x32 for the stem and the stages: mdistiller's ``f1..f4``), ``stageN_pre`` =
``layerN_pre`` (the last block's ``preact``), plus ``stem``, ``blockN``, ``pooled``,
``logits``. ``bn_before_relu(i)``, i in 1..4, is ``layer{i}``'s last ``bn3`` (mdistiller
``get_bn_before_relu``). An input smaller than 8x8 is a KdjaxError at set-up.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from kdjax.layers import batch_norm
from kdjax.layers import check_input
from kdjax.layers import classifier
from kdjax.layers import conv
from kdjax.models.common import global_pool
from kdjax.models.resnet import Stage
from kdjax.models.resnet import resnet_bn_before_relu
from kdjax.models.resnet import resnet_tap_aliases


class CifarBottleneck(nn.Module):
  """mdistiller resnetv2 ``Bottleneck``: 1x1, strided 3x3, 1x1 (4x wider); 1x1 shortcut."""

  features: int
  strides: int = 1
  dtype: Any = jnp.float32

  expansion = 4
  last_bn = 'bn3'

  @nn.compact
  def __call__(self, x, train: bool = False):
    out_features = self.features * self.expansion
    y = conv(self.features, 1, 1, 0, 'conv1', self.dtype)(x)
    y = nn.relu(batch_norm(train, 'bn1', self.dtype)(y))
    y = conv(self.features, 3, self.strides, 1, 'conv2', self.dtype)(y)
    y = nn.relu(batch_norm(train, 'bn2', self.dtype)(y))
    y = conv(out_features, 1, 1, 0, 'conv3', self.dtype)(y)
    y = batch_norm(train, 'bn3', self.dtype)(y)
    shortcut = x
    if self.strides != 1 or x.shape[-1] != out_features:
      shortcut = conv(out_features, 1, self.strides, 0, 'shortcut_conv', self.dtype)(x)
      shortcut = batch_norm(train, 'shortcut_bn', self.dtype)(shortcut)
    y = y + shortcut
    self.sow('intermediates', 'preact', y)
    return nn.relu(y)


class CifarResNetV2(nn.Module):
  """mdistiller resnetv2 ``ResNet(block, num_blocks)`` with bottlenecks; ``width`` = the stem
  and first stage width (64 in the reference; smaller for test variants)."""

  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  width: int = 64
  num_classes: int = 100
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    check_input(x, 'resnet50_cifar', minimum=8, why='it downsamples 8x')
    x = conv(self.width, 3, 1, 1, 'conv1', self.dtype)(x)
    x = nn.relu(batch_norm(train, 'bn1', self.dtype)(x))
    self.sow('intermediates', 'stem', x)
    for i, n in enumerate(self.stage_sizes):
      x = Stage(CifarBottleneck, features=self.width * 2**i, num_blocks=n,
                strides=1 if i == 0 else 2, dtype=self.dtype, name=f'layer{i + 1}')(x, train)
    x = global_pool(self, x)
    x = classifier(x, self.num_classes, self.dtype, name='linear')
    return x.astype(jnp.float32)

  def tap_aliases(self):
    """Friendly tap names -> intermediates paths (see the module docstring)."""
    aliases = resnet_tap_aliases(self.stage_sizes)
    aliases['logits'] = 'linear'
    for i in range(1, len(self.stage_sizes) + 1):
      aliases[f'stage{i}'] = aliases[f'layer{i}']
      aliases[f'stage{i}_pre'] = aliases[f'layer{i}_pre']
    return aliases

  def bn_before_relu(self, i):
    """Params path of ``layer{i}[-1].bn3`` (the BN before ``stage{i}_pre``), i in 1..4."""
    return resnet_bn_before_relu(self.stage_sizes, CifarBottleneck, i)


def resnet50_cifar(*, num_classes=100, dtype=jnp.float32):
  """mdistiller's CIFAR ``ResNet50`` (resnetv2.py): bottlenecks [3, 4, 6, 3], 3x3 stem."""
  return CifarResNetV2((3, 4, 6, 3), 64, num_classes=num_classes, dtype=dtype)


def tiny_resnet50_cifar(*, num_classes=10, dtype=jnp.float32):
  """A test-size variant: one bottleneck per stage, width 8 (8..256 channels); not
  registered."""
  return CifarResNetV2((1, 1, 1, 1), 8, num_classes=num_classes, dtype=dtype)
