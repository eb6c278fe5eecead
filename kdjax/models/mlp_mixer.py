"""MLP-Mixer and ResMLP in Flax Linen, laid out like timm's ``MlpMixer`` (``mixer_b16_224``,
``resmlp_12_224``).

Both: a 16x16 patch embedding (conv, ``stem.proj``), ``num_blocks`` residual blocks over the
token sequence ``[B, N, D]``, a final norm, the mean over tokens and a linear head.
  Mixer block: x + token-MLP(LayerNorm(x)) (an exact-GELU MLP across the N tokens, hidden D/2),
    then x + channel-MLP(LayerNorm(x)) (hidden 4D); LayerNorm eps 1e-6.
  ResMLP block: x + ls1 * linear_tokens(Affine(x)) (one N x N linear across tokens), then
    x + ls2 * channel-MLP(Affine(x)); ``Affine`` is alpha * x + beta (``[1, 1, D]`` each), and
    the final norm is an Affine too.
Names follow timm's state dict (``blocks.0.mlp_tokens.fc1.weight`` is
``blocks_0/mlp_tokens/fc1/kernel``).

Input size: height and width multiples of the patch size. The token-mixing weights are sized
for the token count of the input the model is initialised with (196 at 224x224, which loads
timm's weights), so a model runs at the size it was built for. Other sizes raise KdjaxError at
set-up.

Taps (``tap_aliases()``): ``stage1`` .. ``stage4`` the tokens after blocks depth/4, depth/2,
3depth/4 and depth (Mixer-B/16: blocks 3, 6, 9, 12), reshaped to the patch grid
``[B, H/16, W/16, D]`` (``stage4`` before the final norm); ``tokens`` every token after the last
block ``[B, N, D]`` (before the final norm); ``pooled`` the mean of the final-normed tokens (what
the head reads); ``logits``.

Stochastic depth (``drop_path_rate``): the same rate in every block, on both residual branches,
as timm 1.0.31's ``MlpMixer`` does (ResMLP included), not the linear rule of ViT / Swin /
ConvNeXt; training mode only, with the ``'dropout'`` rng; no parameters.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from kdjax.layers import Mlp
from kdjax.layers import PatchEmbed
from kdjax.layers import check_input
from kdjax.layers import drop_path
from kdjax.layers import layer_norm
from kdjax.layers import lecun_normal
from kdjax.layers import torch_dense
from kdjax.layers import xavier_uniform
from kdjax.models.common import stage_blocks
from kdjax.models.common import tokens_to_grid

LN_EPS = 1e-6


def _normal_1e6(key, shape, dtype=jnp.float32):
  return nn.initializers.normal(1e-6)(key, shape, dtype)


class Affine(nn.Module):
  """timm ResMLP ``Affine``: alpha * x + beta, both ``[1, 1, D]``."""

  dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    alpha = self.param('alpha', nn.initializers.ones, (1, 1, self.dim), jnp.float32)
    beta = self.param('beta', nn.initializers.zeros, (1, 1, self.dim), jnp.float32)
    return alpha.astype(self.dtype) * x + beta.astype(self.dtype)


class MixerBlock(nn.Module):
  """timm ``MixerBlock``: token MLP and channel MLP, each pre-LayerNorm and residual."""

  dim: int
  tokens_dim: int
  channels_dim: int
  dtype: Any = jnp.float32
  drop_path_rate: float = 0.0

  @nn.compact
  def __call__(self, x, train: bool = False):
    n = x.shape[1]
    mlp = lambda hidden, out, name: Mlp(hidden, out, self.dtype, xavier_uniform,
                                           _normal_1e6, name=name)
    y = layer_norm(LN_EPS, 'norm1', self.dtype)(x)
    y = mlp(self.tokens_dim, n, 'mlp_tokens')(y.transpose(0, 2, 1)).transpose(0, 2, 1)
    x = x + drop_path(self, y, self.drop_path_rate, train)
    y = layer_norm(LN_EPS, 'norm2', self.dtype)(x)
    y = mlp(self.channels_dim, self.dim, 'mlp_channels')(y)
    return x + drop_path(self, y, self.drop_path_rate, train)


class ResBlock(nn.Module):
  """timm ResMLP ``ResBlock``: layer-scaled token linear and channel MLP, Affine pre-norms."""

  dim: int
  channels_dim: int
  init_values: float = 1e-4
  dtype: Any = jnp.float32
  drop_path_rate: float = 0.0

  @nn.compact
  def __call__(self, x, train: bool = False):
    n = x.shape[1]
    ls1 = self.param('ls1', nn.initializers.constant(self.init_values), (self.dim,), jnp.float32)
    ls2 = self.param('ls2', nn.initializers.constant(self.init_values), (self.dim,), jnp.float32)
    y = Affine(self.dim, self.dtype, name='norm1')(x)
    y = torch_dense(n, kernel_init=xavier_uniform, bias_init=nn.initializers.zeros,
                    dtype=self.dtype, name='linear_tokens')(y.transpose(0, 2, 1)).transpose(0, 2, 1)
    x = x + drop_path(self, ls1.astype(self.dtype) * y, self.drop_path_rate, train)
    y = Affine(self.dim, self.dtype, name='norm2')(x)
    y = Mlp(self.channels_dim, self.dim, self.dtype, xavier_uniform, _normal_1e6,
               name='mlp_channels')(y)
    return x + drop_path(self, ls2.astype(self.dtype) * y, self.drop_path_rate, train)


class MlpMixer(nn.Module):
  """MLP-Mixer (``block='mixer'``) or ResMLP (``block='resmlp'``), timm ``MlpMixer`` layout."""

  patch_size: int = 16
  embed_dim: int = 768
  num_blocks: int = 12
  mlp_ratio: tuple = (0.5, 4.0)
  block: str = 'mixer'
  num_classes: int = 1000
  dtype: Any = jnp.float32
  arch: str = 'mixer'
  drop_path_rate: float = 0.0   # stochastic depth, the same in every block (as timm's MlpMixer)

  torch_layout = 'timm'

  @nn.compact
  def __call__(self, x, train: bool = False):
    check_input(x, self.arch, multiple=self.patch_size, why=f'patch size {self.patch_size}')
    x, grid = PatchEmbed(self.patch_size, self.embed_dim, self.dtype, kernel_init=lecun_normal,
                         bias_init=nn.initializers.zeros, name='stem')(x.astype(self.dtype))
    tokens_dim, channels_dim = (int(r * self.embed_dim) for r in self.mlp_ratio)
    ends = stage_blocks(self.num_blocks)
    for i in range(self.num_blocks):
      if self.block == 'mixer':
        x = MixerBlock(self.embed_dim, tokens_dim, channels_dim, self.dtype,
                       self.drop_path_rate, name=f'blocks_{i}')(x, train)
      else:
        x = ResBlock(self.embed_dim, channels_dim, dtype=self.dtype,
                     drop_path_rate=self.drop_path_rate, name=f'blocks_{i}')(x, train)
      if i in ends:
        self.sow('intermediates', f'stage{ends.index(i) + 1}', tokens_to_grid(x, grid))
    self.sow('intermediates', 'tokens', x)
    if self.block == 'mixer':
      x = layer_norm(LN_EPS, 'norm', self.dtype)(x)
    else:
      x = Affine(self.embed_dim, self.dtype, name='norm')(x)
    pooled = jnp.mean(x, axis=1)
    self.sow('intermediates', 'pooled', pooled)
    # timm zero-initialises the head of Mixer/ResMLP.
    logits = torch_dense(self.num_classes, kernel_init=nn.initializers.zeros,
                         bias_init=nn.initializers.zeros, dtype=self.dtype, name='head')(pooled)
    return logits.astype(jnp.float32)

  def tap_aliases(self):
    """Friendly tap names -> intermediates paths (see the module docstring)."""
    aliases = {f'stage{i}': f'stage{i}' for i in range(1, 5)}
    aliases.update(tokens='tokens', pooled='pooled', logits='head')
    aliases.update({f'block{i}': f'blocks_{i}' for i in range(self.num_blocks)})
    return aliases


def mixer_b16_224(*, num_classes=1000, dtype=jnp.float32, drop_path_rate=0.0):
  """Mixer-B/16 (timm): patch 16, width 768, 12 blocks, token MLP 384, channel MLP 3072."""
  return MlpMixer(16, 768, 12, (0.5, 4.0), 'mixer', num_classes=num_classes, dtype=dtype,
                  arch='mixer_b16_224', drop_path_rate=drop_path_rate)


def resmlp_12_224(*, num_classes=1000, dtype=jnp.float32, drop_path_rate=0.0):
  """ResMLP-12 (timm): patch 16, width 384, 12 blocks, channel MLP 1536, Affine norms."""
  return MlpMixer(16, 384, 12, (4.0, 4.0), 'resmlp', num_classes=num_classes, dtype=dtype,
                  arch='resmlp_12_224', drop_path_rate=drop_path_rate)


MODELS = {'mixer_b16_224': mixer_b16_224, 'resmlp_12_224': resmlp_12_224}
