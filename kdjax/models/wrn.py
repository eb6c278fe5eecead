"""Wide ResNets (WRN-d-k) of mdistiller / RepDistiller for CIFAR, in Flax Linen (NHWC).

Mirrors ``mdistiller/models/cifar/wrn.py``: a pre-activation network. A 3x3 stem conv
(16 channels, pad 1, no bias, no BN after it), three stages (``block1..block3``, strides
1, 2, 2, channels 16k, 32k, 64k) of ``n = (d - 4) / 6`` pre-activation blocks, then
BN + ReLU, global average pooling and ``fc``. A block is

  o = relu(bn1(x)); y = conv2(relu(bn2(conv1(o)))); out = shortcut + y

with ``shortcut = x`` when the width is unchanged, else ``convShortcut(o)`` (a strided 1x1
conv that, as in the reference, reads the *activated* input). Dropout is 0 in every
mdistiller WRN and is left out. Init as the reference: convs N(0, sqrt(2 / (k*k*out))), BN
1 / 0, ``fc`` PyTorch's default weight with a zero bias.

Names follow the PyTorch state dict: ``block1.layer.0.bn1`` is ``block1/layer0/bn1``,
``convShortcut`` keeps its name, ``conv1`` / ``bn1`` / ``fc`` at the top.

Taps (the zoo's convention): ``stage1`` = the stem's output (``conv1``; the WRN stem has no
BN/ReLU, mdistiller's ``f0``), ``stage2``, ``stage3`` = the outputs of ``block1``,
``block2`` (pre-activation sums, mdistiller's ``f1``, ``f2``), ``stage4`` = relu(bn1(block3))
(sown as ``head``: what pooling reads). ``stage2_pre``..``stage4_pre`` are mdistiller's
``preact_feats``: ``block2/layer0/bn1`` and ``block3/layer0/bn1`` (the next stage's first BN
applied to ``stage2`` / ``stage3``) and ``bn1``; ``bn_before_relu(i)``, i in 2..4, names those
BNs (mdistiller ``get_bn_before_relu``). ``stage1`` has no pre-ReLU form. An input smaller
than 4x4 is a KdjaxError at set-up.

One reference side effect is not reproduced: to return ``preact_feats``, mdistiller's
``forward`` calls those three BNs a second time, so in training their running statistics
take two momentum updates per step there and one here (the logits are the same).
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from kdjax.layers import batch_norm
from kdjax.layers import check_input
from kdjax.layers import conv
from kdjax.layers import torch_dense
from kdjax.models.common import global_pool


class WRNBlock(nn.Module):
  """mdistiller WRN BasicBlock (pre-activation); see the module docstring."""

  features: int
  strides: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    equal_in_out = x.shape[-1] == self.features
    o = nn.relu(batch_norm(train, 'bn1', self.dtype)(x))
    y = conv(self.features, 3, self.strides, 1, 'conv1', self.dtype)(o)
    y = nn.relu(batch_norm(train, 'bn2', self.dtype)(y))
    y = conv(self.features, 3, 1, 1, 'conv2', self.dtype)(y)
    if equal_in_out:
      return x + y
    shortcut = conv(self.features, 1, self.strides, 0, 'convShortcut', self.dtype)(o)
    return shortcut + y


class WRNStage(nn.Module):
  """mdistiller ``NetworkBlock``: ``num_blocks`` blocks ``layer0..``, the first one strided."""

  features: int
  num_blocks: int
  strides: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    for j in range(self.num_blocks):
      x = WRNBlock(self.features, self.strides if j == 0 else 1, self.dtype,
                   name=f'layer{j}')(x, train)
    return x


class WideResNet(nn.Module):
  """WRN-depth-widen_factor (depth = 6n + 4) for 32x32 images."""

  depth: int
  widen_factor: int
  num_classes: int = 100
  dtype: Any = jnp.float32

  @property
  def num_blocks(self):
    if (self.depth - 4) % 6 != 0 or self.depth < 10:
      raise ValueError(f'WRN depth must be 6n + 4 with n >= 1, got {self.depth}')
    return (self.depth - 4) // 6

  @property
  def channels(self):
    k = self.widen_factor
    return (16, 16 * k, 32 * k, 64 * k)

  @nn.compact
  def __call__(self, x, train: bool = False):
    check_input(x, f'wrn_{self.depth}_{self.widen_factor}', minimum=4, why='it downsamples 4x')
    x = conv(self.channels[0], 3, 1, 1, 'conv1', self.dtype)(x)
    for k in range(1, 4):
      x = WRNStage(self.channels[k], self.num_blocks, 1 if k == 1 else 2, self.dtype,
                   name=f'block{k}')(x, train)
    x = nn.relu(batch_norm(train, 'bn1', self.dtype)(x))
    self.sow('intermediates', 'head', x)
    x = global_pool(self, x)
    x = torch_dense(self.num_classes, bias_init=nn.initializers.zeros, dtype=self.dtype,
                    name='fc')(x)
    return x.astype(jnp.float32)

  def tap_aliases(self):
    """Friendly tap names -> intermediates paths (see the module docstring)."""
    return {
        'stem': 'conv1',
        'stage1': 'conv1',
        'stage2': 'block1',
        'stage3': 'block2',
        'stage4': 'head',
        'stage2_pre': 'block2/layer0/bn1',
        'stage3_pre': 'block3/layer0/bn1',
        'stage4_pre': 'bn1',
        'pooled': 'pooled',
        'logits': 'fc',
    }

  def bn_before_relu(self, i):
    """Params path of the BN whose output is ``stage{i}_pre``, i in 2..4 (mdistiller
    ``get_bn_before_relu``: block2.layer[0].bn1, block3.layer[0].bn1, bn1)."""
    paths = {2: 'block2/layer0/bn1', 3: 'block3/layer0/bn1', 4: 'bn1'}
    if i not in paths:
      raise ValueError(f'WRN stage index {i} has no BN before a ReLU; use 2..4')
    return paths[i]


def wrn_16_1(*, num_classes=100, dtype=jnp.float32):
  """mdistiller wrn_16_1: 2 blocks per stage, channels 16/16/32/64."""
  return WideResNet(16, 1, num_classes=num_classes, dtype=dtype)


def wrn_16_2(*, num_classes=100, dtype=jnp.float32):
  """mdistiller wrn_16_2: 2 blocks per stage, channels 16/32/64/128."""
  return WideResNet(16, 2, num_classes=num_classes, dtype=dtype)


def wrn_40_1(*, num_classes=100, dtype=jnp.float32):
  """mdistiller wrn_40_1: 6 blocks per stage, channels 16/16/32/64."""
  return WideResNet(40, 1, num_classes=num_classes, dtype=dtype)


def wrn_40_2(*, num_classes=100, dtype=jnp.float32):
  """mdistiller wrn_40_2: 6 blocks per stage, channels 16/32/64/128."""
  return WideResNet(40, 2, num_classes=num_classes, dtype=dtype)


def tiny_wrn(*, num_classes=10, dtype=jnp.float32):
  """A test-size WRN-10-1 (one block per stage); not registered."""
  return WideResNet(10, 1, num_classes=num_classes, dtype=dtype)
