"""Tiny models for the embedded 8x8x1 handwritten-digits data set (10 classes).

``digits_cnn`` is the teacher (a two-conv BN CNN, 19.6k params); ``mlp32`` and
``cnn4`` are deliberately weak students (about 2.4k and 0.8k params); ``digits_vit`` and
``digits_mixer`` are token students over 2x2 patches (a 4x4 grid of 16 tokens), the zoo's ViT
and MLP-Mixer at digit size, for heterogeneous (CNN -> token model) distillation. Convs use the
kaiming fan_out init of the ResNets and explicit PyTorch-style padding; dense layers
use PyTorch's nn.Linear default init (docs/design.md#initialisation). Each model sows
``pooled``, the feature that feeds its classifier ``fc``; ``digits_cnn`` also has ``stage1``
(8x8x32) and ``stage2`` (4x4x64), its two conv blocks after ReLU.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from kdjax.layers import batch_norm
from kdjax.layers import classifier
from kdjax.layers import conv
from kdjax.layers import conv_kernel_init
from kdjax.layers import torch_conv
from kdjax.layers import torch_dense
from kdjax.models import mlp_mixer
from kdjax.models import vit
from kdjax.models.common import global_pool

_SMALL_ALIASES = {'pooled': 'pooled', 'logits': 'fc'}


class DigitsCNN(nn.Module):
  """Teacher: 3x3 conv 32, 3x3/2 conv 64 (each + BN + ReLU), GAP, fc (~99% on digits)."""

  num_classes: int = 10
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    for i, (features, strides) in enumerate(((32, 1), (64, 2)), start=1):
      x = conv(features, 3, strides, 1, f'conv{i}', self.dtype)(x)
      x = nn.relu(batch_norm(train, f'bn{i}', self.dtype)(x))
      self.sow('intermediates', f'stage{i}', x)
    x = global_pool(self, x)
    x = classifier(x, self.num_classes, self.dtype)
    return x.astype(jnp.float32)

  def tap_aliases(self):
    """Friendly tap names -> intermediates paths."""
    return dict(_SMALL_ALIASES, stage1='stage1', stage2='stage2')


class MLP32(nn.Module):
  """Student: flatten, Dense 32, ReLU, Dense ``num_classes``."""

  num_classes: int = 10
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.reshape((x.shape[0], -1))
    x = torch_dense(32, in_features=x.shape[-1], dtype=self.dtype, name='fc1')(x)
    x = nn.relu(x)
    self.sow('intermediates', 'pooled', x)
    x = classifier(x, self.num_classes, self.dtype)
    return x.astype(jnp.float32)

  def tap_aliases(self):
    """Friendly tap names -> intermediates paths."""
    return dict(_SMALL_ALIASES)


class CNN4(nn.Module):
  """Student: 3x3 conv 4 + ReLU, 3x3/2 conv 4 + ReLU (both with bias, no BN), flatten, fc."""

  num_classes: int = 10
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    for i, strides in enumerate((1, 2), start=1):
      x = torch_conv(4, 3, strides=strides, padding=1, kernel_init=conv_kernel_init,
                     bias_init=nn.initializers.zeros, dtype=self.dtype, name=f'conv{i}')(x)
      x = nn.relu(x)
    x = x.reshape((x.shape[0], -1))
    self.sow('intermediates', 'pooled', x)
    x = classifier(x, self.num_classes, self.dtype)
    return x.astype(jnp.float32)

  def tap_aliases(self):
    """Friendly tap names -> intermediates paths."""
    return dict(_SMALL_ALIASES)


def digits_cnn(*, num_classes=10, dtype=jnp.float32):
  """The digits teacher CNN."""
  return DigitsCNN(num_classes=num_classes, dtype=dtype)


def digits_vit(*, num_classes=10, dtype=jnp.float32):
  """A ViT student for 8x8 digits: 2x2 patches, width 16, 4 blocks of 2 heads (13.7k params);
  stage1..4 are its four blocks."""
  return vit.VisionTransformer(patch_size=2, embed_dim=16, depth=4, num_heads=2,
                               num_classes=num_classes, dtype=dtype, arch='digits_vit')


def digits_mixer(*, num_classes=10, dtype=jnp.float32):
  """An MLP-Mixer student for 8x8 digits: 2x2 patches, width 16, 4 blocks, token MLP 8, channel
  MLP 64 (10.2k params); stage1..4 are its four blocks."""
  return mlp_mixer.MlpMixer(2, 16, 4, (0.5, 4.0), 'mixer', num_classes=num_classes, dtype=dtype,
                            arch='digits_mixer')


def mlp32(*, num_classes=10, dtype=jnp.float32):
  """The 64-32-10 MLP student."""
  return MLP32(num_classes=num_classes, dtype=dtype)


def cnn4(*, num_classes=10, dtype=jnp.float32):
  """The 4-channel CNN student."""
  return CNN4(num_classes=num_classes, dtype=dtype)
