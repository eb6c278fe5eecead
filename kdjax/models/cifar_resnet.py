"""CIFAR ResNets of mdistiller / RepDistiller in Flax Linen (NHWC).

Mirrors ``mdistiller/models/cifar/resnet.py`` (BasicBlock variants): a 3x3 stem
conv (pad 1, no bias) + BN + ReLU, three stages of ``n = (depth - 2) / 6`` basic
blocks with strides 1, 2, 2, global average pooling and an fc layer. A stage's
first block gets a 1x1 conv (stride s, no bias) + BN downsample when the stride is
not 1 or the channel count changes. resnet8/14/20/32/44/56/110 use channels 16, 16, 32,
64 (stem, stages); resnet8x4/32x4 use 32, 64, 128, 256.

mdistiller pools with ``AvgPool2d(8)``, which equals the global average at 32x32
input; we always take the global average. Names and taps follow ``resnet``: stem
``conv1``/``bn1``, stages ``layer1..layer3``, blocks ``block0..``, classifier ``fc``.
An input smaller than 4x4 (the total stride) is a KdjaxError at set-up.

Common taps (the zoo's convention): ``stage1`` = the stem (relu(bn1(conv1(x)))),
``stage2..stage4`` = ``layer1..layer3``, each stage's ``stageN_pre`` = the value before its
final ReLU (``bn1``'s output for the stem, the last block's ``preact`` for a layer, the
``layerN_pre`` of mdistiller's ``preact_feats``), ``pooled``, ``logits``.
``bn_before_relu(i)`` keeps mdistiller's indexing, i in 1..3 = ``layer{i}`` (=
``stage{i + 1}_pre``); the BN before ``stage1_pre``'s ReLU is ``bn1``.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from kdjax.layers import batch_norm
from kdjax.layers import check_input
from kdjax.layers import classifier
from kdjax.layers import conv
from kdjax.models.common import global_pool
from kdjax.models.resnet import BasicBlock
from kdjax.models.resnet import Stage
from kdjax.models.resnet import resnet_bn_before_relu
from kdjax.models.resnet import resnet_tap_aliases


class CifarResNet(nn.Module):
  """mdistiller CIFAR ResNet (BasicBlock): 3x3 stem, three stages (strides 1, 2, 2), GAP, fc.

  ``num_filters`` = (stem, stage1, stage2, stage3) channels; ``depth`` = 6n + 2.
  """

  depth: int
  num_filters: Sequence[int]
  num_classes: int = 100
  dtype: Any = jnp.float32

  @property
  def stage_sizes(self):
    """Blocks per stage: (depth - 2) / 6 in each of the three stages."""
    if (self.depth - 2) % 6 != 0:
      raise ValueError(f'CIFAR ResNet depth must be 6n + 2, got {self.depth}')
    n = (self.depth - 2) // 6
    return (n, n, n)

  @nn.compact
  def __call__(self, x, train: bool = False):
    name = f'resnet{self.depth}' + ('x4' if self.num_filters[0] == 32 else '')
    check_input(x, name, minimum=4, why='it downsamples 4x')
    x = conv(self.num_filters[0], 3, 1, 1, 'conv1', self.dtype)(x)
    x = nn.relu(batch_norm(train, 'bn1', self.dtype)(x))
    self.sow('intermediates', 'stem', x)
    for i, n in enumerate(self.stage_sizes):
      x = Stage(
          BasicBlock,
          features=self.num_filters[i + 1],
          num_blocks=n,
          strides=1 if i == 0 else 2,
          dtype=self.dtype,
          name=f'layer{i + 1}',
      )(x, train)
    x = global_pool(self, x)
    x = classifier(x, self.num_classes, self.dtype)
    return x.astype(jnp.float32)

  def tap_aliases(self):
    """Friendly tap names -> intermediates paths (docs/design.md#taps, docs/models.md)."""
    aliases = resnet_tap_aliases(self.stage_sizes)
    aliases.update(stage1='stem', stage1_pre='bn1')
    for i in range(1, 4):
      aliases[f'stage{i + 1}'] = aliases[f'layer{i}']
      aliases[f'stage{i + 1}_pre'] = aliases[f'layer{i}_pre']
    return aliases

  def bn_before_relu(self, i):
    """Params path of ``layer{i}[-1].bn2``, i in 1..3 (mdistiller ``get_bn_before_relu``);
    the BN before ``stage{i + 1}_pre``."""
    return resnet_bn_before_relu(self.stage_sizes, BasicBlock, i)


_SMALL = (16, 16, 32, 64)
_WIDE = (32, 64, 128, 256)


def resnet8(*, num_classes=100, dtype=jnp.float32):
  """mdistiller resnet8: 1 block per stage, channels 16/16/32/64."""
  return CifarResNet(8, _SMALL, num_classes=num_classes, dtype=dtype)


def resnet14(*, num_classes=100, dtype=jnp.float32):
  """mdistiller resnet14: 2 blocks per stage, channels 16/16/32/64."""
  return CifarResNet(14, _SMALL, num_classes=num_classes, dtype=dtype)


def resnet20(*, num_classes=100, dtype=jnp.float32):
  """mdistiller resnet20: 3 blocks per stage, channels 16/16/32/64."""
  return CifarResNet(20, _SMALL, num_classes=num_classes, dtype=dtype)


def resnet32(*, num_classes=100, dtype=jnp.float32):
  """mdistiller resnet32: 5 blocks per stage, channels 16/16/32/64."""
  return CifarResNet(32, _SMALL, num_classes=num_classes, dtype=dtype)


def resnet44(*, num_classes=100, dtype=jnp.float32):
  """mdistiller resnet44: 7 blocks per stage, channels 16/16/32/64."""
  return CifarResNet(44, _SMALL, num_classes=num_classes, dtype=dtype)


def resnet56(*, num_classes=100, dtype=jnp.float32):
  """mdistiller resnet56: 9 blocks per stage, channels 16/16/32/64."""
  return CifarResNet(56, _SMALL, num_classes=num_classes, dtype=dtype)


def resnet110(*, num_classes=100, dtype=jnp.float32):
  """mdistiller resnet110: 18 blocks per stage, channels 16/16/32/64."""
  return CifarResNet(110, _SMALL, num_classes=num_classes, dtype=dtype)


def resnet8x4(*, num_classes=100, dtype=jnp.float32):
  """mdistiller resnet8x4: 1 block per stage, channels 32/64/128/256."""
  return CifarResNet(8, _WIDE, num_classes=num_classes, dtype=dtype)


def resnet32x4(*, num_classes=100, dtype=jnp.float32):
  """mdistiller resnet32x4: 5 blocks per stage, channels 32/64/128/256."""
  return CifarResNet(32, _WIDE, num_classes=num_classes, dtype=dtype)
