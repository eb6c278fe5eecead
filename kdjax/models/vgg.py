"""VGG-8/11/13/16/19 with BatchNorm of mdistiller / RepDistiller for CIFAR, in Flax Linen (NHWC).

Mirrors ``mdistiller/models/cifar/vgg.py`` with ``batch_norm=True`` (mdistiller's
``vgg*_bn``, which its ``vgg8`` .. ``vgg19`` names build): five blocks ``block0..block4``,
each a run of [3x3 conv (pad 1, *with* bias) + BN], ReLU between them and after the block;
2x2 max pools (stride 2) after ``block0``, ``block1``, ``block2``, and after ``block3`` only
when the input is 64 pixels high (the reference's ``if h == 64``: at 32x32, ``block3`` and
``block4`` both run at 4x4); then global average pooling and ``classifier`` (one Linear).
Channels per block: vgg8 64 / 128 / 256 / 512 / 512 with one conv each; vgg11 (1, 1, 2, 2,
2) convs, vgg13 (2, 2, 2, 2, 2), vgg16 (2, 2, 3, 3, 3), vgg19 (2, 2, 4, 4, 4).
Init as the reference: convs N(0, sqrt(2 / (k*k*out))) with zero bias, BN 1 / 0, the
classifier N(0, 0.01) with zero bias.

Names follow the PyTorch state dict: ``block1.3`` (the second conv of block1) is
``block1/conv1``, ``block1.4`` is ``block1/bn1`` (PyTorch index 3j -> ``conv{j}``, 3j + 1 ->
``bn{j}``), ``classifier`` keeps its name.

Taps (the zoo's convention): ``stage1..stage4`` = the ReLU'd outputs of ``block1..block4``
(sown as ``block{i}_relu``; mdistiller's ``feats[1:]``, which its OFD and ReviewKD use), so
``stage4`` is what pooling reads. That is "the last block at each of the four last
resolutions" whenever every pool runs (64x64 input); at 32x32 the reference skips the pool
between ``block3`` and ``block4``, so ``stage3`` and ``stage4`` are both 4x4 and ``block0``
(32x32, mdistiller's ``f0``) stays out of the stages, as in mdistiller. ``stageN_pre`` =
``block{N}`` (a block ends with its last BN, before the ReLU; mdistiller's
``preact_feats``), and ``bn_before_relu(i)``, i in 1..4, names that BN. An input smaller
than 8x8 (three pools) is a KdjaxError at set-up.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from kdjax.layers import batch_norm
from kdjax.layers import check_input
from kdjax.layers import conv_kernel_init
from kdjax.layers import max_pool
from kdjax.layers import torch_conv
from kdjax.layers import torch_dense
from kdjax.models.common import global_pool


class VGGBlock(nn.Module):
  """[conv + BN] x len(features) with ReLUs in between; returns the last BN's output."""

  features: Sequence[int]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    for j, c in enumerate(self.features):
      if j:
        x = nn.relu(x)
      x = torch_conv(c, 3, padding=1, kernel_init=conv_kernel_init,
                     bias_init=nn.initializers.zeros, dtype=self.dtype, name=f'conv{j}')(x)
      x = batch_norm(train, f'bn{j}', self.dtype)(x)
    return x


class VGG(nn.Module):
  """mdistiller CIFAR VGG with BN; ``cfg`` = the five blocks' conv widths."""

  cfg: Sequence[Sequence[int]]
  num_classes: int = 100
  dtype: Any = jnp.float32
  model_name: str = 'vgg'

  @nn.compact
  def __call__(self, x, train: bool = False):
    check_input(x, self.model_name, minimum=8, why='it downsamples 8x')
    h = x.shape[1]
    for i, widths in enumerate(self.cfg):
      x = nn.relu(VGGBlock(tuple(widths), self.dtype, name=f'block{i}')(x, train))
      self.sow('intermediates', f'block{i}_relu', x)
      if i < 3 or (i == 3 and h == 64):
        x = max_pool(x, 2, 2, 0)
    x = global_pool(self, x)
    x = torch_dense(self.num_classes, kernel_init=nn.initializers.normal(0.01),
                    bias_init=nn.initializers.zeros, dtype=self.dtype, name='classifier')(x)
    return x.astype(jnp.float32)

  def tap_aliases(self):
    """Friendly tap names -> intermediates paths (see the module docstring)."""
    aliases = {}
    for i in range(1, 5):
      aliases[f'stage{i}'] = f'block{i}_relu'
      aliases[f'stage{i}_pre'] = f'block{i}'
    aliases.update(pooled='pooled', logits='classifier')
    return aliases

  def bn_before_relu(self, i):
    """Params path of ``block{i}``'s last BN (whose output is ``stage{i}_pre``), i in 1..4
    (mdistiller ``get_bn_before_relu``)."""
    if not 1 <= i <= 4:
      raise ValueError(f'VGG stage index {i} out of range 1..4')
    return f'block{i}/bn{len(self.cfg[i]) - 1}'


_CFG = {
    'vgg8': ((64,), (128,), (256,), (512,), (512,)),
    'vgg11': ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    'vgg13': ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    'vgg16': ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    'vgg19': ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}


def vgg8(*, num_classes=100, dtype=jnp.float32):
  """mdistiller vgg8 (``vgg8_bn``, cfg 'S'): one conv per block."""
  return VGG(_CFG['vgg8'], num_classes=num_classes, dtype=dtype, model_name='vgg8')


def vgg11(*, num_classes=100, dtype=jnp.float32):
  """mdistiller vgg11 (``vgg11_bn``, cfg 'A')."""
  return VGG(_CFG['vgg11'], num_classes=num_classes, dtype=dtype, model_name='vgg11')


def vgg13(*, num_classes=100, dtype=jnp.float32):
  """mdistiller vgg13 (``vgg13_bn``, cfg 'B')."""
  return VGG(_CFG['vgg13'], num_classes=num_classes, dtype=dtype, model_name='vgg13')


def vgg16(*, num_classes=100, dtype=jnp.float32):
  """mdistiller vgg16 (``vgg16_bn``, cfg 'D')."""
  return VGG(_CFG['vgg16'], num_classes=num_classes, dtype=dtype, model_name='vgg16')


def vgg19(*, num_classes=100, dtype=jnp.float32):
  """mdistiller vgg19 (``vgg19_bn``, cfg 'E')."""
  return VGG(_CFG['vgg19'], num_classes=num_classes, dtype=dtype, model_name='vgg19')


def tiny_vgg(*, num_classes=10, dtype=jnp.float32):
  """A test-size VGG (vgg11's layout at 1/16 of the width: 4..32 channels); not registered."""
  cfg = ((4,), (8,), (16, 16), (32, 32), (32, 32))
  return VGG(cfg, num_classes=num_classes, dtype=dtype, model_name='tiny_vgg')
