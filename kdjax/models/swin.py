"""Swin Transformer in Flax Linen, laid out like timm's ``SwinTransformer``
(``swin_tiny_patch4_window7_224``).

A 4x4 patch embedding (conv + LayerNorm), four stages of window-attention blocks (stage 1..3
start with patch merging: the 2x2 neighbourhood concatenated in timm's order, LayerNorm, a
bias-free linear to twice the width), blocks alternating regular and shifted windows (shift =
window // 2, with timm's -100 attention mask across the wrapped-around regions), a learned
relative position bias per window attention, a final LayerNorm (all LayerNorms eps 1e-5, as
``nn.LayerNorm``), global average pooling and a linear head. As in timm, a stage whose grid is
no larger than the window uses one window covering it and does not shift (Swin-T at 224: stage
4, 7x7).

Input size: every stage's patch grid must be a multiple of the window, i.e. the height and width
must be multiples of patch x window x 2^(stages-1) (224 for Swin-T); other sizes raise
KdjaxError at set-up. The parameters do not depend on the size, so 224 weights load at 448.

Taps (``tap_aliases()``): ``stage1`` .. ``stage4`` the four stages' outputs as they are
(``[B, H/4, W/4, C]`` ... ``[B, H/32, W/32, 8C]``, before the final norm); ``tokens`` the last
stage flattened ``[B, HW/1024, 8C]`` (before the final norm; Swin has no class token);
``pooled`` the mean of the final-normed tokens (what the head reads); ``logits``.

Stochastic depth (``drop_path_rate``, timm's): rates ``linspace(0, drop_path_rate, sum(depths))``
over all blocks in order, on each block's attention and MLP branches, training mode only, with
the ``'dropout'`` rng; no parameters.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from kdjax.layers import Mlp
from kdjax.layers import PatchEmbed
from kdjax.layers import TIMM_INIT
from kdjax.layers import attention
from kdjax.layers import check_input
from kdjax.layers import drop_path
from kdjax.layers import drop_path_rates
from kdjax.layers import layer_norm
from kdjax.layers import torch_dense
from kdjax.layers import trunc_normal_02

LN_EPS = 1e-5


def relative_position_index(window):
  """timm's ``get_relative_position_index``: ``[w*w, w*w]`` indices into the bias table."""
  coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing='ij'))
  coords = coords.reshape(2, -1)
  rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0)
  rel = rel + (window - 1)
  return rel[..., 0] * (2 * window - 1) + rel[..., 1]


def window_partition(x, window):
  """``[B, H, W, C]`` -> ``[B * nW, window * window, C]`` (windows in row-major order)."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // window, window, w // window, window, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(-1, window * window, c)


def window_reverse(windows, window, h, w):
  c = windows.shape[-1]
  x = windows.reshape(-1, h // window, w // window, window, window, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, h, w, c)


def shift_mask(h, w, window, shift):
  """timm's shifted-window attention mask ``[nW, N, N]``: 0 within a region, -100 across."""
  img = np.zeros((h, w), np.float32)
  cnt = 0
  for hs in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
    for ws in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
      img[hs, ws] = cnt
      cnt += 1
  win = img.reshape(h // window, window, w // window, window).transpose(0, 2, 1, 3)
  win = win.reshape(-1, window * window)
  diff = win[:, None, :] - win[:, :, None]
  return np.where(diff != 0, -100.0, 0.0).astype(np.float32)


class WindowAttention(nn.Module):
  """timm ``WindowAttention``: fused qkv, relative position bias (+ mask), output proj."""

  dim: int
  num_heads: int
  window: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None):
    table = self.param('relative_position_bias_table', trunc_normal_02,
                       ((2 * self.window - 1) ** 2, self.num_heads), jnp.float32)
    n = self.window * self.window
    bias = table[relative_position_index(self.window).reshape(-1)]
    bias = bias.reshape(n, n, self.num_heads).transpose(2, 0, 1)  # [heads, N, N]
    if mask is not None:
      num_windows = mask.shape[0]
      bias = bias[None] + jnp.asarray(mask)[:, None]  # [nW, heads, N, N]
      bias = jnp.tile(bias, (x.shape[0] // num_windows, 1, 1, 1))
    qkv = torch_dense(3 * self.dim, **TIMM_INIT, dtype=self.dtype, name='qkv')(x)
    x = attention(qkv, self.num_heads, self.dtype, bias)
    return torch_dense(self.dim, **TIMM_INIT, dtype=self.dtype, name='proj')(x)


class SwinBlock(nn.Module):
  """timm ``SwinTransformerBlock``: (shifted) window attention and an MLP, pre-norm."""

  dim: int
  num_heads: int
  window: int
  shift: int
  mlp_ratio: float = 4.0
  dtype: Any = jnp.float32
  drop_path_rate: float = 0.0

  @nn.compact
  def __call__(self, x, train: bool = False):
    b, h, w, c = x.shape
    y = layer_norm(LN_EPS, 'norm1', self.dtype)(x)
    mask = None
    if self.shift:
      y = jnp.roll(y, (-self.shift, -self.shift), axis=(1, 2))
      mask = shift_mask(h, w, self.window, self.shift)
    y = window_partition(y, self.window)
    y = WindowAttention(self.dim, self.num_heads, self.window, self.dtype, name='attn')(y, mask)
    y = window_reverse(y, self.window, h, w)
    if self.shift:
      y = jnp.roll(y, (self.shift, self.shift), axis=(1, 2))
    x = x + drop_path(self, y, self.drop_path_rate, train)
    y = layer_norm(LN_EPS, 'norm2', self.dtype)(x)
    y = Mlp(int(c * self.mlp_ratio), c, self.dtype, name='mlp')(y)
    return x + drop_path(self, y, self.drop_path_rate, train)


class PatchMerging(nn.Module):
  """timm ``PatchMerging``: 2x2 neighbours -> 4C (ordered (dw, dh, C)), LayerNorm, linear."""

  out_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    x = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 4, 2, 5)
    x = x.reshape(b, h // 2, w // 2, 4 * c)
    x = layer_norm(LN_EPS, 'norm', self.dtype)(x)
    return torch_dense(self.out_dim, use_bias=False, **TIMM_INIT, dtype=self.dtype,
                       name='reduction')(x)


class SwinStage(nn.Module):
  """timm ``SwinTransformerStage``: optional patch merging, then ``depth`` blocks."""

  dim: int
  depth: int
  num_heads: int
  window: int
  downsample: bool
  mlp_ratio: float = 4.0
  dtype: Any = jnp.float32
  drop_path_rates: Sequence[float] = ()   # one per block; () = none

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.downsample:
      x = PatchMerging(self.dim, self.dtype, name='downsample')(x)
    grid = min(x.shape[1], x.shape[2])
    window = min(self.window, grid)
    for j in range(self.depth):
      shift = 0 if j % 2 == 0 or grid <= self.window else window // 2
      rate = self.drop_path_rates[j] if self.drop_path_rates else 0.0
      x = SwinBlock(self.dim, self.num_heads, window, shift, self.mlp_ratio, self.dtype, rate,
                    name=f'blocks_{j}')(x, train)
    return x


class Head(nn.Module):
  """timm ``ClassifierHead`` (average pool done by the caller): ``fc``."""

  num_classes: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    return torch_dense(self.num_classes, **TIMM_INIT, dtype=self.dtype, name='fc')(x)


class SwinTransformer(nn.Module):
  """Swin Transformer (timm ``SwinTransformer``, average pooling head)."""

  patch_size: int = 4
  embed_dim: int = 96
  depths: Sequence[int] = (2, 2, 6, 2)
  num_heads: Sequence[int] = (3, 6, 12, 24)
  window_size: int = 7
  mlp_ratio: float = 4.0
  num_classes: int = 1000
  dtype: Any = jnp.float32
  arch: str = 'swin'
  drop_path_rate: float = 0.0   # stochastic depth of the last block (timm's linear rule)

  torch_layout = 'timm'

  def check_input(self, x):
    """Raises KdjaxError unless every stage's patch grid is a multiple of the window."""
    num_stages = len(self.depths)
    multiple = self.patch_size * 2 ** (num_stages - 1) * self.window_size
    check_input(x, self.arch, multiple=multiple,
                why=f'patch {self.patch_size} x {2 ** (num_stages - 1)} (patch merging) x '
                      f'window {self.window_size}: every stage\'s grid a multiple of the window')

  @nn.compact
  def __call__(self, x, train: bool = False):
    self.check_input(x)
    x = PatchEmbed(self.patch_size, self.embed_dim, self.dtype, norm_eps=LN_EPS, flatten=False,
                   name='patch_embed')(x.astype(self.dtype))
    rates = drop_path_rates(self.drop_path_rate, sum(self.depths))  # over all blocks
    starts = np.cumsum((0,) + tuple(self.depths))
    for i, depth in enumerate(self.depths):
      x = SwinStage(self.embed_dim * 2**i, depth, self.num_heads[i], self.window_size,
                    downsample=i > 0, mlp_ratio=self.mlp_ratio, dtype=self.dtype,
                    drop_path_rates=tuple(rates[starts[i]:starts[i + 1]]),
                    name=f'layers_{i}')(x, train)
    b, h, w, c = x.shape
    tokens = x.reshape(b, h * w, c)
    self.sow('intermediates', 'tokens', tokens)
    x = layer_norm(LN_EPS, 'norm', self.dtype)(tokens)
    pooled = jnp.mean(x, axis=1)
    self.sow('intermediates', 'pooled', pooled)
    return Head(self.num_classes, self.dtype, name='head')(pooled).astype(jnp.float32)

  def tap_aliases(self):
    """Friendly tap names -> intermediates paths (see the module docstring)."""
    aliases = {f'stage{i + 1}': f'layers_{i}' for i in range(len(self.depths))}
    aliases.update(tokens='tokens', pooled='pooled', logits='head/fc')
    return aliases


def swin_tiny_patch4_window7_224(*, num_classes=1000, dtype=jnp.float32, drop_path_rate=0.0):
  """Swin-T (timm): patch 4, window 7, width 96, depths (2, 2, 6, 2), heads (3, 6, 12, 24)."""
  return SwinTransformer(4, 96, (2, 2, 6, 2), (3, 6, 12, 24), 7, num_classes=num_classes,
                         dtype=dtype, arch='swin_tiny_patch4_window7_224',
                         drop_path_rate=drop_path_rate)


MODELS = {'swin_tiny_patch4_window7_224': swin_tiny_patch4_window7_224}
