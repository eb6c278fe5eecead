"""torchvision-layout ResNet-18/34/50/101 in Flax Linen (NHWC).

Mirrors ``torchvision.models.resnet`` (v1.5: a bottleneck block strides on its 3x3
conv): the same layers, paddings, initialisation (docs/design.md#initialisation) and
BatchNorm settings (docs/design.md#batchnorm), and module names that follow torchvision's so a
state dict maps one to one: torchvision ``layer1.0.conv1`` is our ``layer1/block0/conv1`` and
``layer1.0.downsample.0/1`` is ``layer1/block0/downsample_conv/downsample_bn``.

Taps (docs/design.md#taps) come from Flax intermediates: every module's ``__call__`` output when
captured, plus three sown values: ``stem`` (relu(bn1(conv1(x))), before the max
pool), each block's ``preact`` (the value before its final ReLU) and ``pooled``
(global average pool, ``[B, C]``). ``tap_aliases()`` maps friendly names to paths; the
ImageNet ResNets also answer to the zoo-wide ``stage1`` .. ``stage4`` (= ``layer1`` .. ``layer4``)
and ``stage1_pre`` .. ``stage4_pre`` (= ``layer1_pre`` .. ``layer4_pre``).

The block and stage here are shared with ``cifar_resnet``; layers and initialisers live in
``kdjax.layers``.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from kdjax.layers import batch_norm
from kdjax.layers import classifier
from kdjax.layers import conv
from kdjax.layers import max_pool
from kdjax.models.common import global_pool


class BasicBlock(nn.Module):
  """torchvision BasicBlock: two 3x3 convs, the first strided; identity or 1x1 downsample."""

  features: int
  strides: int = 1
  dtype: Any = jnp.float32

  expansion = 1
  last_bn = 'bn2'

  @nn.compact
  def __call__(self, x, train: bool = False):
    identity = x
    y = conv(self.features, 3, self.strides, 1, 'conv1', self.dtype)(x)
    y = nn.relu(batch_norm(train, 'bn1', self.dtype)(y))
    y = conv(self.features, 3, 1, 1, 'conv2', self.dtype)(y)
    y = batch_norm(train, 'bn2', self.dtype)(y)
    if self.strides != 1 or x.shape[-1] != self.features:
      identity = conv(self.features, 1, self.strides, 0, 'downsample_conv', self.dtype)(x)
      identity = batch_norm(train, 'downsample_bn', self.dtype)(identity)
    y = y + identity
    self.sow('intermediates', 'preact', y)
    return nn.relu(y)


class Bottleneck(nn.Module):
  """torchvision v1.5 Bottleneck: 1x1, strided 3x3, 1x1 (4x wider); identity or 1x1 downsample."""

  features: int
  strides: int = 1
  dtype: Any = jnp.float32

  expansion = 4
  last_bn = 'bn3'

  @nn.compact
  def __call__(self, x, train: bool = False):
    out_features = self.features * self.expansion
    identity = x
    y = conv(self.features, 1, 1, 0, 'conv1', self.dtype)(x)
    y = nn.relu(batch_norm(train, 'bn1', self.dtype)(y))
    y = conv(self.features, 3, self.strides, 1, 'conv2', self.dtype)(y)
    y = nn.relu(batch_norm(train, 'bn2', self.dtype)(y))
    y = conv(out_features, 1, 1, 0, 'conv3', self.dtype)(y)
    y = batch_norm(train, 'bn3', self.dtype)(y)
    if self.strides != 1 or x.shape[-1] != out_features:
      identity = conv(out_features, 1, self.strides, 0, 'downsample_conv', self.dtype)(x)
      identity = batch_norm(train, 'downsample_bn', self.dtype)(identity)
    y = y + identity
    self.sow('intermediates', 'preact', y)
    return nn.relu(y)


class Stage(nn.Module):
  """One ResNet stage (torchvision ``layerN``): ``num_blocks`` blocks, the first one strided.

  Returns the post-ReLU output of its last block.
  """

  block: Any
  features: int
  num_blocks: int
  strides: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    for j in range(self.num_blocks):
      strides = self.strides if j == 0 else 1
      block = self.block(self.features, strides=strides, dtype=self.dtype, name=f'block{j}')
      x = block(x, train)
    return x


def resnet_tap_aliases(stage_sizes):
  """Friendly tap names -> intermediates paths, for stages of the given depths."""
  aliases = {'stem': 'stem'}
  j = 0
  for i, n in enumerate(stage_sizes, start=1):
    aliases[f'layer{i}'] = f'layer{i}'
    aliases[f'layer{i}_pre'] = f'layer{i}/block{n - 1}/preact'
    for k in range(n):
      aliases[f'block{j}'] = f'layer{i}/block{k}'
      j += 1
  aliases['pooled'] = 'pooled'
  aliases['logits'] = 'fc'
  return aliases


def resnet_bn_before_relu(stage_sizes, block, i):
  """Params path of the BN before the final ReLU of stage ``i``'s (1-based) last block."""
  if not 1 <= i <= len(stage_sizes):
    raise ValueError(f'stage index {i} out of range 1..{len(stage_sizes)}')
  return f'layer{i}/block{stage_sizes[i - 1] - 1}/{block.last_bn}'


class ResNet(nn.Module):
  """torchvision ImageNet ResNet: 7x7/2 stem + 3x3/2 max pool, four stages, GAP, fc."""

  stage_sizes: Sequence[int]
  block: Any
  num_classes: int = 1000
  dtype: Any = jnp.float32
  torch_layout = 'torchvision'  # state dict keys as torchvision/timm name them (torch_import)

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = conv(64, 7, 2, 3, 'conv1', self.dtype)(x)
    x = nn.relu(batch_norm(train, 'bn1', self.dtype)(x))
    self.sow('intermediates', 'stem', x)
    x = max_pool(x, 3, 2, 1)
    for i, n in enumerate(self.stage_sizes):
      x = Stage(
          self.block,
          features=64 * 2**i,
          num_blocks=n,
          strides=1 if i == 0 else 2,
          dtype=self.dtype,
          name=f'layer{i + 1}',
      )(x, train)
    x = global_pool(self, x)
    x = classifier(x, self.num_classes, self.dtype)
    return x.astype(jnp.float32)

  def tap_aliases(self):
    """Friendly tap names -> intermediates paths (docs/design.md#taps), plus the zoo-wide
    ``stage1`` .. ``stage4`` (= ``layer1`` .. ``layer4``: strides 4, 8, 16, 32) and
    ``stage1_pre`` .. ``stage4_pre`` (= ``layer1_pre`` .. ``layer4_pre``)."""
    aliases = resnet_tap_aliases(self.stage_sizes)
    for i in range(1, len(self.stage_sizes) + 1):
      aliases[f'stage{i}'] = aliases[f'layer{i}']
      aliases[f'stage{i}_pre'] = aliases[f'layer{i}_pre']
    return aliases

  def bn_before_relu(self, i):
    """Params path of ``layer{i}[-1].bn2`` (``bn3`` for bottlenecks), i in 1..4."""
    return resnet_bn_before_relu(self.stage_sizes, self.block, i)


def resnet18(*, num_classes=1000, dtype=jnp.float32):
  """ResNet-18 (BasicBlock, [2, 2, 2, 2]); 11,689,512 params at 1000 classes."""
  return ResNet((2, 2, 2, 2), BasicBlock, num_classes=num_classes, dtype=dtype)


def resnet34(*, num_classes=1000, dtype=jnp.float32):
  """ResNet-34 (BasicBlock, [3, 4, 6, 3]); 21,797,672 params at 1000 classes."""
  return ResNet((3, 4, 6, 3), BasicBlock, num_classes=num_classes, dtype=dtype)


def resnet50(*, num_classes=1000, dtype=jnp.float32):
  """ResNet-50 (Bottleneck v1.5, [3, 4, 6, 3]); 25,557,032 params at 1000 classes."""
  return ResNet((3, 4, 6, 3), Bottleneck, num_classes=num_classes, dtype=dtype)


def resnet101(*, num_classes=1000, dtype=jnp.float32):
  """ResNet-101 (Bottleneck v1.5, [3, 4, 23, 3]); 44,549,160 params at 1000 classes."""
  return ResNet((3, 4, 23, 3), Bottleneck, num_classes=num_classes, dtype=dtype)
