"""mdistiller's CIFAR ShuffleNetV1 (``ShuffleV1``) and ShuffleNetV2 (``ShuffleV2``) in Flax Linen.

Both mirror ``mdistiller/models/cifar/ShuffleNetv1.py`` / ``ShuffleNetv2.py`` (NHWC here):
a 1x1 stem conv to 24 channels (no bias) + BN + ReLU at full resolution, three stages
``layer1..layer3`` whose first block halves the resolution, global average pooling and
``linear``. Nothing is re-initialised in the reference, so every conv has PyTorch's default
init (U(+-1/sqrt(fan_in)), fan_in = in / groups * k * k) and no bias, BN 1 / 0, ``linear``
PyTorch's default. mdistiller pools with ``avg_pool2d(4)``, the global average at 32x32; we
always take the global average.

ShuffleV1 (groups 3, stage widths 240 / 480 / 960, 4 / 8 / 4 blocks): a block is 1x1 group
conv (groups 3, but 1 when its input has 24 channels, as the reference tests) to out / 4
channels + BN + ReLU, channel shuffle, 3x3 depthwise conv (stride s, pad 1) + BN + ReLU, 1x1
group conv (groups 3) + BN; a stage's first block (stride 2) concatenates
[branch, AvgPool(3, stride 2, pad 1, padding counted)(x)] with the branch producing
``out - in`` channels, the others add x; then ReLU. Its ``preact`` (the value before that
ReLU) is sown.

ShuffleV2 (net size 1: widths 116 / 232 / 464, 3 / 7 / 3 basic blocks, head 1024): a stage is
a ``DownBlock`` (``block0``: left = 3x3 dw stride 2 + BN, 1x1 + BN + ReLU; right = 1x1 + BN
+ ReLU, 3x3 dw stride 2 + BN, 1x1 + BN + ReLU; concat, shuffle(2)) then basic blocks
(``block1..``: split the channels in half, keep x1, x2 -> 1x1 + BN + ReLU, 3x3 dw + BN, 1x1 +
BN (``preact``) + ReLU; concat [x1, x2'], shuffle(2)); after ``layer3`` a 1x1 ``conv2`` to
1024 channels + ``bn2`` + ReLU. As in the reference, a basic block's ``preact`` is the
*unshuffled* concatenation [x1, bn3(...)].

Names follow the PyTorch state dict: ``layer1.0.conv1`` is ``layer1/block0/conv1``; top
level ``conv1``, ``bn1``, (V2) ``conv2``, ``bn2``, ``linear``.

Taps (the zoo's convention; the last block at each of the four resolutions 32 / 16 / 8 / 4 px
at 32x32): ``stage1`` = the stem (relu(bn1(conv1(x))), sown as ``stem``), ``stage2``,
``stage3`` = ``layer1``, ``layer2``; ``stage4`` = ``layer3`` for V1 and the head
relu(bn2(conv2(layer3))) for V2 (sown as ``head``; what pooling reads). ``stageN_pre`` is
the value before that stage's last ReLU: the stem's ``bn1``, the last block's ``preact``
(mdistiller's ``preact_feats``), V2's ``bn2`` for its ``stage4_pre``. mdistiller's names
``layer1..3`` / ``layer1_pre..layer3_pre`` are aliases too. The reference raises for
``get_bn_before_relu`` on both (its OFD cannot use them as teachers), so there is no
``bn_before_relu``. An input smaller than 8x8 is a KdjaxError at set-up.
"""

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from kdjax.layers import batch_norm
from kdjax.layers import check_input
from kdjax.layers import classifier
from kdjax.layers import torch_conv
from kdjax.models.common import channel_shuffle
from kdjax.models.common import global_pool

# The reference re-initialises nothing: PyTorch's default conv init, and no conv has a bias.
_conv = functools.partial(torch_conv, use_bias=False)


def _stem(module, x, train):
  x = _conv(24, 1, dtype=module.dtype, name='conv1')(x)
  x = nn.relu(batch_norm(train, 'bn1', module.dtype)(x))
  module.sow('intermediates', 'stem', x)
  return x


def _stage_aliases(num_blocks):
  """stem / layerN / layerN_pre aliases of a three-stage ShuffleNet, stage1..stage3 included."""
  aliases = {'stem': 'stem', 'stage1': 'stem', 'stage1_pre': 'bn1'}
  for i, n in enumerate(num_blocks, start=1):
    aliases[f'layer{i}'] = f'layer{i}'
    aliases[f'layer{i}_pre'] = f'layer{i}/block{n - 1}/preact'
  for i in (1, 2):
    aliases[f'stage{i + 1}'] = f'layer{i}'
    aliases[f'stage{i + 1}_pre'] = aliases[f'layer{i}_pre']
  return aliases


# --- ShuffleNetV1 ----------------------------------------------------------------------------


class ShuffleV1Block(nn.Module):
  """mdistiller ShuffleNetV1 ``Bottleneck``; ``features`` is the branch's output width."""

  features: int
  strides: int
  groups: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    mid = int(self.features / 4)
    g = 1 if x.shape[-1] == 24 else self.groups
    y = _conv(mid, 1, groups=g, dtype=self.dtype, name='conv1')(x)
    y = nn.relu(batch_norm(train, 'bn1', self.dtype)(y))
    y = channel_shuffle(y, g)
    y = _conv(mid, 3, strides=self.strides, padding=1, groups=mid, dtype=self.dtype,
              name='conv2')(y)
    y = nn.relu(batch_norm(train, 'bn2', self.dtype)(y))
    y = _conv(self.features, 1, groups=self.groups, dtype=self.dtype, name='conv3')(y)
    y = batch_norm(train, 'bn3', self.dtype)(y)
    if self.strides == 2:
      res = nn.avg_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)),
                        count_include_pad=True)
      preact = jnp.concatenate([y, res], axis=-1)
    else:
      preact = y + x
    self.sow('intermediates', 'preact', preact)
    return nn.relu(preact)


class ShuffleV1Stage(nn.Module):
  features: int
  num_blocks: int
  groups: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    for j in range(self.num_blocks):
      branch = self.features - x.shape[-1] if j == 0 else self.features
      x = ShuffleV1Block(branch, 2 if j == 0 else 1, self.groups, self.dtype,
                         name=f'block{j}')(x, train)
    return x


class ShuffleNetV1(nn.Module):
  """mdistiller ``ShuffleNet(cfg)``; ``out_planes`` / ``num_blocks`` per stage."""

  out_planes: Sequence[int] = (240, 480, 960)
  num_blocks: Sequence[int] = (4, 8, 4)
  groups: int = 3
  num_classes: int = 100
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    check_input(x, 'shufflev1', minimum=8, why='it downsamples 8x')
    x = _stem(self, x, train)
    for i, (c, n) in enumerate(zip(self.out_planes, self.num_blocks), start=1):
      x = ShuffleV1Stage(c, n, self.groups, self.dtype, name=f'layer{i}')(x, train)
    x = global_pool(self, x)
    x = classifier(x, self.num_classes, self.dtype, name='linear')
    return x.astype(jnp.float32)

  def tap_aliases(self):
    """Friendly tap names -> intermediates paths (see the module docstring)."""
    aliases = _stage_aliases(self.num_blocks)
    aliases.update(stage4='layer3', stage4_pre=aliases['layer3_pre'], pooled='pooled',
                   logits='linear')
    return aliases


# --- ShuffleNetV2 ----------------------------------------------------------------------------


class ShuffleV2DownBlock(nn.Module):
  """mdistiller ShuffleNetV2 ``DownBlock`` (stride 2, ``features`` output channels)."""

  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    cin, mid = x.shape[-1], self.features // 2
    bn = lambda name: batch_norm(train, name, self.dtype)
    left = _conv(cin, 3, strides=2, padding=1, groups=cin, dtype=self.dtype, name='conv1')(x)
    left = bn('bn1')(left)
    left = nn.relu(bn('bn2')(_conv(mid, 1, dtype=self.dtype, name='conv2')(left)))
    right = nn.relu(bn('bn3')(_conv(mid, 1, dtype=self.dtype, name='conv3')(x)))
    right = _conv(mid, 3, strides=2, padding=1, groups=mid, dtype=self.dtype, name='conv4')(right)
    right = bn('bn4')(right)
    right = nn.relu(bn('bn5')(_conv(mid, 1, dtype=self.dtype, name='conv5')(right)))
    return channel_shuffle(jnp.concatenate([left, right], axis=-1), 2)


class ShuffleV2BasicBlock(nn.Module):
  """mdistiller ShuffleNetV2 ``BasicBlock`` (split ratio 0.5)."""

  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    c = int(x.shape[-1] * 0.5)
    x1, x2 = x[..., :c], x[..., c:]
    bn = lambda name: batch_norm(train, name, self.dtype)
    y = nn.relu(bn('bn1')(_conv(c, 1, dtype=self.dtype, name='conv1')(x2)))
    y = bn('bn2')(_conv(c, 3, padding=1, groups=c, dtype=self.dtype, name='conv2')(y))
    y = bn('bn3')(_conv(c, 1, dtype=self.dtype, name='conv3')(y))
    self.sow('intermediates', 'preact', jnp.concatenate([x1, y], axis=-1))
    return channel_shuffle(jnp.concatenate([x1, nn.relu(y)], axis=-1), 2)


class ShuffleV2Stage(nn.Module):
  features: int
  num_blocks: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = ShuffleV2DownBlock(self.features, self.dtype, name='block0')(x, train)
    for j in range(1, self.num_blocks + 1):
      x = ShuffleV2BasicBlock(self.dtype, name=f'block{j}')(x, train)
    return x


class ShuffleNetV2(nn.Module):
  """mdistiller ``ShuffleNetV2(net_size)``; ``out_channels`` = three stages + the head."""

  out_channels: Sequence[int] = (116, 232, 464, 1024)
  num_blocks: Sequence[int] = (3, 7, 3)
  num_classes: int = 100
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    check_input(x, 'shufflev2', minimum=8, why='it downsamples 8x')
    x = _stem(self, x, train)
    for i, (c, n) in enumerate(zip(self.out_channels[:3], self.num_blocks), start=1):
      x = ShuffleV2Stage(c, n, self.dtype, name=f'layer{i}')(x, train)
    x = _conv(self.out_channels[3], 1, dtype=self.dtype, name='conv2')(x)
    x = nn.relu(batch_norm(train, 'bn2', self.dtype)(x))
    self.sow('intermediates', 'head', x)
    x = global_pool(self, x)
    x = classifier(x, self.num_classes, self.dtype, name='linear')
    return x.astype(jnp.float32)

  def tap_aliases(self):
    """Friendly tap names -> intermediates paths (see the module docstring)."""
    # A stage's last basic block is block{n}: block0 is the DownBlock.
    aliases = _stage_aliases([n + 1 for n in self.num_blocks])
    aliases.update(stage4='head', stage4_pre='bn2', pooled='pooled', logits='linear')
    return aliases


def shufflev1(*, num_classes=100, dtype=jnp.float32):
  """mdistiller ``ShuffleV1``: groups 3, widths 240 / 480 / 960, 4 / 8 / 4 blocks."""
  return ShuffleNetV1(num_classes=num_classes, dtype=dtype)


def shufflev2(*, num_classes=100, dtype=jnp.float32):
  """mdistiller ``ShuffleV2`` (net size 1): widths 116 / 232 / 464, 3 / 7 / 3 blocks, head 1024."""
  return ShuffleNetV2(num_classes=num_classes, dtype=dtype)


def tiny_shufflev1(*, num_classes=10, dtype=jnp.float32):
  """A test-size ShuffleV1: widths 48 / 96 / 192, blocks 2 / 1 / 1; not registered."""
  return ShuffleNetV1((48, 96, 192), (2, 1, 1), num_classes=num_classes, dtype=dtype)


def tiny_shufflev2(*, num_classes=10, dtype=jnp.float32):
  """A test-size ShuffleV2: widths 16 / 32 / 64, head 128, one basic block each; not
  registered."""
  return ShuffleNetV2((16, 32, 64, 128), (1, 1, 1), num_classes=num_classes, dtype=dtype)
