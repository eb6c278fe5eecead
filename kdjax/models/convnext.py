"""ConvNeXt in Flax Linen, laid out like timm's ``ConvNeXt`` (``convnext_tiny``).

A 4x4/4 patchify stem (conv + LayerNorm), four stages (stage 2..4 start with LayerNorm + a 2x2/2
conv), blocks of 7x7 depthwise conv (bias) -> LayerNorm -> Linear 4x -> exact GELU -> Linear ->
layer scale ``gamma`` -> + shortcut (timm's default ``conv_mlp=False`` path, channels-last), and
timm's ``NormMlpClassifierHead``: global average pool -> LayerNorm -> Linear. Every LayerNorm has
eps 1e-6 (timm's ``LayerNorm`` / ``LayerNorm2d``). Parameter names follow timm's state dict
(``stages.1.downsample.1.weight`` is ``stages_1/downsample_1/kernel``).

Input size: any height and width of at least 32 (the stem and the three downsamplings are
unpadded, so a side is floored to a multiple of 32 as in timm); smaller raises KdjaxError.

Taps (``tap_aliases()``): ``stage1`` .. ``stage4`` the stages' outputs as they are (NHWC,
strides 4, 8, 16, 32); ``pooled`` the pooled and head-normed features (what ``head.fc`` reads);
``logits``.

Stochastic depth (``drop_path_rate``, timm's): rates ``linspace(0, drop_path_rate, sum(depths))``
over all blocks in order, on each block's layer-scaled branch, training mode only, with the
``'dropout'`` rng; no parameters.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from kdjax.layers import Mlp
from kdjax.layers import TIMM_INIT
from kdjax.layers import check_input
from kdjax.layers import drop_path
from kdjax.layers import drop_path_rates
from kdjax.layers import layer_norm
from kdjax.layers import torch_conv
from kdjax.layers import torch_dense

LN_EPS = 1e-6


class ConvNeXtBlock(nn.Module):
  """timm ``ConvNeXtBlock`` (channels-last MLP, layer scale)."""

  dim: int
  kernel_size: int = 7
  mlp_ratio: float = 4.0
  ls_init_value: float = 1e-6
  dtype: Any = jnp.float32
  drop_path_rate: float = 0.0

  @nn.compact
  def __call__(self, x, train: bool = False):
    shortcut = x
    x = torch_conv(self.dim, self.kernel_size, padding=self.kernel_size // 2, groups=self.dim,
                   **TIMM_INIT, dtype=self.dtype, name='conv_dw')(x)
    x = layer_norm(LN_EPS, 'norm', self.dtype)(x)
    x = Mlp(int(self.mlp_ratio * self.dim), self.dim, self.dtype, name='mlp')(x)
    gamma = self.param('gamma', nn.initializers.constant(self.ls_init_value), (self.dim,),
                       jnp.float32)
    return drop_path(self, x * gamma.astype(self.dtype), self.drop_path_rate, train) + shortcut


class ConvNeXtStage(nn.Module):
  """timm ``ConvNeXtStage``: optional LayerNorm + 2x2/2 conv, then ``depth`` blocks."""

  dim: int
  depth: int
  downsample: bool
  dtype: Any = jnp.float32
  drop_path_rates: Sequence[float] = ()   # one per block; () = none

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.downsample:
      x = layer_norm(LN_EPS, 'downsample_0', self.dtype)(x)
      x = torch_conv(self.dim, 2, strides=2, **TIMM_INIT, dtype=self.dtype, name='downsample_1')(x)
    for j in range(self.depth):
      rate = self.drop_path_rates[j] if self.drop_path_rates else 0.0
      x = ConvNeXtBlock(self.dim, dtype=self.dtype, drop_path_rate=rate,
                        name=f'blocks_{j}')(x, train)
    return x


class NormMlpClassifierHead(nn.Module):
  """timm ``NormMlpClassifierHead`` without hidden layer: (pooled) -> LayerNorm -> fc."""

  num_classes: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = layer_norm(LN_EPS, 'norm', self.dtype)(x)
    self.sow('intermediates', 'pooled', x)
    return torch_dense(self.num_classes, **TIMM_INIT, dtype=self.dtype, name='fc')(x)


class ConvNeXt(nn.Module):
  """ConvNeXt (timm ``ConvNeXt``, patch stem, channels-last blocks)."""

  depths: Sequence[int] = (3, 3, 9, 3)
  dims: Sequence[int] = (96, 192, 384, 768)
  patch_size: int = 4
  num_classes: int = 1000
  dtype: Any = jnp.float32
  arch: str = 'convnext'
  drop_path_rate: float = 0.0   # stochastic depth of the last block (timm's linear rule)

  torch_layout = 'timm'

  @nn.compact
  def __call__(self, x, train: bool = False):
    minimum = self.patch_size * 2 ** (len(self.depths) - 1)
    check_input(x, self.arch, minimum=minimum,
                why=f'a {self.patch_size}x{self.patch_size} stem and '
                      f'{len(self.depths) - 1} unpadded 2x2 downsamplings')
    # timm's ConvNeXt init: trunc_normal_(std=.02) weights, zero biases, convs included.
    x = torch_conv(self.dims[0], self.patch_size, strides=self.patch_size, **TIMM_INIT,
                   dtype=self.dtype, name='stem_0')(x.astype(self.dtype))
    x = layer_norm(LN_EPS, 'stem_1', self.dtype)(x)
    rates = drop_path_rates(self.drop_path_rate, sum(self.depths))  # over all blocks
    start = 0
    for i, (depth, dim) in enumerate(zip(self.depths, self.dims)):
      x = ConvNeXtStage(dim, depth, downsample=i > 0, dtype=self.dtype,
                        drop_path_rates=tuple(rates[start:start + depth]),
                        name=f'stages_{i}')(x, train)
      start += depth
    x = jnp.mean(x, axis=(1, 2))
    return NormMlpClassifierHead(self.num_classes, self.dtype, name='head')(x).astype(
        jnp.float32)

  def tap_aliases(self):
    """Friendly tap names -> intermediates paths (see the module docstring)."""
    aliases = {f'stage{i + 1}': f'stages_{i}' for i in range(len(self.depths))}
    aliases.update(pooled='head/pooled', logits='head/fc')
    return aliases


def convnext_tiny(*, num_classes=1000, dtype=jnp.float32, drop_path_rate=0.0):
  """ConvNeXt-T (timm): depths (3, 3, 9, 3), widths (96, 192, 384, 768)."""
  return ConvNeXt((3, 3, 9, 3), (96, 192, 384, 768), num_classes=num_classes, dtype=dtype,
                  arch='convnext_tiny', drop_path_rate=drop_path_rate)


MODELS = {'convnext_tiny': convnext_tiny}
