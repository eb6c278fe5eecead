"""Vision Transformer (ViT) and DeiT in Flax Linen, laid out like timm's ``VisionTransformer``.

One module, parameterised by patch size, width, depth and heads, gives
``deit_tiny_patch16_224``, ``deit_small_patch16_224``, ``vit_small_patch16_224`` (the same
architecture as DeiT-S) and ``vit_base_patch16_224``: a 16x16 patch embedding (conv), a class
token, learned position embeddings (class token included), pre-norm blocks (LayerNorm eps 1e-6,
fused qkv with bias, exact GELU MLP of ratio 4), a final LayerNorm and a linear head on the class
token (timm's ``global_pool='token'``). Module and parameter names follow timm's state dict
(``blocks.3.attn.qkv.weight`` is ``blocks_3/attn/qkv/kernel``).

Input size: the position embeddings are built for the patch grid of the input the model is
initialised with (timm's ``img_size`` option), so any height and width that are multiples of the
patch size work; 224x224 gives timm's 197 positions and loads timm's weights. Weights trained at
one size must be run at that size (a checkpoint's ``pos_embed`` of another grid is reported as
a shape mismatch; kdjax does not resample it). Other sizes raise KdjaxError at set-up.

Taps (``tap_aliases()``):
  ``stage1`` .. ``stage4``: the tokens after blocks depth/4, depth/2, 3depth/4 and depth (ViT-B:
    blocks 3, 6, 9, 12), class token dropped, reshaped to the patch grid ``[B, H/p, W/p, D]``.
    ``stage4`` is taken before the final norm, like timm's ``forward_intermediates`` (the norm is
    part of the head: its output is ``pooled``).
  ``tokens``: every token after the last block, class token first, before the final norm
    ``[B, 1 + N, D]``.
  ``pooled``: the final-normed class token ``[B, D]`` (what ``head`` reads).
  ``logits``: the head's output.
  ``blockK``: raw path ``blocks_K`` (tokens after block K, 0-based).

Stochastic depth (``drop_path_rate``, timm's): block ``i`` drops its attention and MLP branches
per example at rate ``drop_path_rate * i / (depth - 1)``, in training mode only, with the
``'dropout'`` rng. It adds no parameters.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

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
from kdjax.models.common import stage_blocks
from kdjax.models.common import tokens_to_grid

LN_EPS = 1e-6


class Attention(nn.Module):
  """timm ``Attention``: fused qkv (with bias), softmax(q k^T / sqrt(d)) v, output proj."""

  dim: int
  num_heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    qkv = torch_dense(3 * self.dim, **TIMM_INIT, dtype=self.dtype, name='qkv')(x)
    x = attention(qkv, self.num_heads, self.dtype)
    return torch_dense(self.dim, **TIMM_INIT, dtype=self.dtype, name='proj')(x)


class Block(nn.Module):
  """timm pre-norm transformer ``Block``: x + dp(attn(norm1(x))); x + dp(mlp(norm2(x))),
  ``dp`` = stochastic depth at ``drop_path_rate`` (training only)."""

  dim: int
  num_heads: int
  mlp_ratio: float = 4.0
  dtype: Any = jnp.float32
  drop_path_rate: float = 0.0

  @nn.compact
  def __call__(self, x, train: bool = False):
    y = Attention(self.dim, self.num_heads, self.dtype, name='attn')(
        layer_norm(LN_EPS, 'norm1', self.dtype)(x))
    x = x + drop_path(self, y, self.drop_path_rate, train)
    y = layer_norm(LN_EPS, 'norm2', self.dtype)(x)
    y = Mlp(int(self.dim * self.mlp_ratio), self.dim, self.dtype, name='mlp')(y)
    return x + drop_path(self, y, self.drop_path_rate, train)


class VisionTransformer(nn.Module):
  """ViT / DeiT (timm ``VisionTransformer`` with a class token and token pooling)."""

  patch_size: int = 16
  embed_dim: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_ratio: float = 4.0
  num_classes: int = 1000
  dtype: Any = jnp.float32
  arch: str = 'vit'
  drop_path_rate: float = 0.0   # stochastic depth of the last block (timm's linear rule)

  torch_layout = 'timm'

  @nn.compact
  def __call__(self, x, train: bool = False):
    check_input(x, self.arch, multiple=self.patch_size, why=f'patch size {self.patch_size}')
    x = x.astype(self.dtype)
    tokens, grid = PatchEmbed(self.patch_size, self.embed_dim, self.dtype,
                              name='patch_embed')(x)
    b, n, d = tokens.shape
    cls_token = self.param('cls_token', nn.initializers.normal(1e-6), (1, 1, d), jnp.float32)
    pos_embed = self.param('pos_embed', trunc_normal_02, (1, n + 1, d), jnp.float32)
    x = jnp.concatenate([jnp.broadcast_to(cls_token.astype(self.dtype), (b, 1, d)), tokens], 1)
    x = x + pos_embed.astype(self.dtype)
    ends = stage_blocks(self.depth)
    rates = drop_path_rates(self.drop_path_rate, self.depth)
    for i in range(self.depth):
      x = Block(self.embed_dim, self.num_heads, self.mlp_ratio, self.dtype, rates[i],
                name=f'blocks_{i}')(x, train)
      if i in ends:
        self.sow('intermediates', f'stage{ends.index(i) + 1}', tokens_to_grid(x, grid, 1))
    self.sow('intermediates', 'tokens', x)
    x = layer_norm(LN_EPS, 'norm', self.dtype)(x)
    pooled = x[:, 0]
    self.sow('intermediates', 'pooled', pooled)
    logits = torch_dense(self.num_classes, **TIMM_INIT, dtype=self.dtype, name='head')(pooled)
    return logits.astype(jnp.float32)

  def tap_aliases(self):
    """Friendly tap names -> intermediates paths (see the module docstring)."""
    aliases = {f'stage{i}': f'stage{i}' for i in range(1, 5)}
    aliases.update(tokens='tokens', pooled='pooled', logits='head')
    aliases.update({f'block{i}': f'blocks_{i}' for i in range(self.depth)})
    return aliases



def _vit(arch, patch_size, embed_dim, depth, num_heads):
  def build(*, num_classes=1000, dtype=jnp.float32, drop_path_rate=0.0):
    return VisionTransformer(patch_size=patch_size, embed_dim=embed_dim, depth=depth,
                             num_heads=num_heads, num_classes=num_classes, dtype=dtype,
                             arch=arch, drop_path_rate=drop_path_rate)
  build.__name__ = arch
  build.__doc__ = (f'{arch}: ViT patch {patch_size}, width {embed_dim}, depth {depth}, '
                   f'{num_heads} heads (timm).')
  return build


deit_tiny_patch16_224 = _vit('deit_tiny_patch16_224', 16, 192, 12, 3)
deit_small_patch16_224 = _vit('deit_small_patch16_224', 16, 384, 12, 6)
vit_small_patch16_224 = _vit('vit_small_patch16_224', 16, 384, 12, 6)
vit_base_patch16_224 = _vit('vit_base_patch16_224', 16, 768, 12, 12)

MODELS = {
    'deit_tiny_patch16_224': deit_tiny_patch16_224,
    'deit_small_patch16_224': deit_small_patch16_224,
    'vit_small_patch16_224': vit_small_patch16_224,
    'vit_base_patch16_224': vit_base_patch16_224,
}
