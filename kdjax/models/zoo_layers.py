"""Pieces shared by the timm-layout ImageNet models (ViT/DeiT, Swin, ConvNeXt, MLP-Mixer/ResMLP,
MobileNets): PyTorch-equivalent layers, timm's initialisers, the input-size check, and the
helpers that turn token sequences into the NHWC ``stage`` taps.

Module names follow timm's state-dict keys with Flax's list convention, so that
``kdjax.torch_import`` maps every key by one rule: a torch key's numeric parts are joined to the
name before them with ``_`` (``blocks.3.attn.qkv.weight`` is ``blocks_3/attn/qkv/kernel``,
``blocks.1.0.conv_dw.weight`` is ``blocks_1_0/conv_dw/kernel``, ``stem.0.weight`` is
``stem_0/kernel``); everything else keeps its name.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kdjax.errors import KdjaxError
from kdjax.layers import linear_kernel_init
from kdjax.layers import torch_bias_init

# timm's trunc_normal_(std=.02) (truncated at +-2, i.e. +-100 sigma: effectively untruncated).
trunc_normal_02 = nn.initializers.normal(0.02)
# timm's xavier_uniform_ (MLP-Mixer / ResMLP linear layers).
xavier_uniform = nn.initializers.variance_scaling(1.0, 'fan_avg', 'uniform')
# timm's lecun_normal_ (MLP-Mixer patch embedding).
lecun_normal = nn.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal')


def dense(features, name, dtype, *, use_bias=True, kernel_init=trunc_normal_02,
          bias_init=nn.initializers.zeros):
  """nn.Linear (float32 params, compute in ``dtype``); timm's transformer init by default."""
  return nn.Dense(features, use_bias=use_bias, kernel_init=kernel_init, bias_init=bias_init,
                  dtype=dtype, param_dtype=jnp.float32, name=name)


def conv2d(features, kernel, name, dtype, *, strides=1, padding=0, groups=1, use_bias=True,
           kernel_init=linear_kernel_init, bias_init=None, in_features=None):
  """nn.Conv2d with explicit symmetric padding; PyTorch's default init unless told otherwise."""
  if bias_init is None:
    fan_in = (in_features or features) // groups * kernel * kernel
    bias_init = torch_bias_init(fan_in)
  return nn.Conv(features, (kernel, kernel), strides=(strides, strides),
                 padding=((padding, padding), (padding, padding)), feature_group_count=groups,
                 use_bias=use_bias, kernel_init=kernel_init, bias_init=bias_init, dtype=dtype,
                 param_dtype=jnp.float32, name=name)


def layer_norm(eps, name, dtype):
  """nn.LayerNorm over the last axis (two-pass variance, as PyTorch computes it)."""
  return nn.LayerNorm(epsilon=eps, use_fast_variance=False, dtype=dtype,
                      param_dtype=jnp.float32, name=name)


def gelu(x):
  """nn.GELU() (exact, erf)."""
  return nn.gelu(x, approximate=False)


class Mlp(nn.Module):
  """timm ``Mlp``: fc1 -> GELU -> fc2 over the last axis."""

  hidden: int
  out: int
  dtype: Any = jnp.float32
  kernel_init: Any = trunc_normal_02
  bias_init: Any = nn.initializers.zeros

  @nn.compact
  def __call__(self, x):
    x = dense(self.hidden, 'fc1', self.dtype, kernel_init=self.kernel_init,
              bias_init=self.bias_init)(x)
    x = gelu(x)
    return dense(self.out, 'fc2', self.dtype, kernel_init=self.kernel_init,
                 bias_init=self.bias_init)(x)


def attention(qkv, num_heads, dtype, bias=None):
  """Multi-head attention from a fused ``qkv`` projection ``[B, N, 3 * D]`` (timm's layout:
  the 3*D axis is (q/k/v, head, head_dim)). ``bias`` ``[..., heads, N, N]`` is added to the
  scaled scores. Softmax in float32. Returns ``[B, N, D]``."""
  b, n, three_d = qkv.shape
  d = three_d // 3
  head_dim = d // num_heads
  qkv = qkv.reshape(b, n, 3, num_heads, head_dim)
  q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
  scores = jnp.einsum('bqhd,bkhd->bhqk', q * jnp.asarray(head_dim**-0.5, q.dtype), k)
  scores = scores.astype(jnp.float32)
  if bias is not None:
    scores = scores + bias.astype(jnp.float32)
  weights = jax.nn.softmax(scores, axis=-1).astype(dtype)
  return jnp.einsum('bhqk,bkhd->bqhd', weights, v).reshape(b, n, d)


def tokens_to_grid(tokens, grid, prefix=0):
  """``[B, prefix + H*W, C]`` tokens -> ``[B, H, W, C]`` patch grid (prefix tokens dropped)."""
  b, _, c = tokens.shape
  return tokens[:, prefix:].reshape(b, grid[0], grid[1], c)


def stage_blocks(depth, num_stages=4):
  """The block indices (0-based) ending each quarter of a ``depth``-block stack:
  ViT-B/12 -> (2, 5, 8, 11), i.e. blocks 3, 6, 9, 12 counted from 1."""
  return tuple(max(1, round(depth * (i + 1) / num_stages)) - 1 for i in range(num_stages))


def check_multiple(x, multiple, arch, what):
  """Raises a one-line KdjaxError unless ``x``'s height and width are multiples of ``multiple``.

  Runs at trace time (``model.init`` / the first jitted call), before anything is written.
  """
  if x.ndim != 4:
    raise KdjaxError(f'{arch} takes NHWC images [batch, height, width, channels]; got an input '
                     f'of shape {tuple(x.shape)}')
  h, w = x.shape[1], x.shape[2]
  if h < multiple or w < multiple or h % multiple or w % multiple:
    raise KdjaxError(f'{arch} takes images whose height and width are multiples of {multiple} '
                     f'({what}), e.g. {multiple * max(1, 224 // multiple)}x'
                     f'{multiple * max(1, 224 // multiple)}; got {h}x{w}')


def check_min_size(x, minimum, arch, what):
  """Raises a one-line KdjaxError if ``x`` is smaller than ``minimum`` pixels on a side."""
  if x.ndim != 4:
    raise KdjaxError(f'{arch} takes NHWC images [batch, height, width, channels]; got an input '
                     f'of shape {tuple(x.shape)}')
  h, w = x.shape[1], x.shape[2]
  if h < minimum or w < minimum:
    raise KdjaxError(f'{arch} takes images of at least {minimum}x{minimum} pixels ({what}); got '
                     f'{h}x{w}')


def param_count(tree):
  """The number of scalars in a (possibly abstract) params tree."""
  return int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(tree)))
