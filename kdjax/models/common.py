"""Helpers the model families share that are not layers (those are in ``kdjax.layers``): the
pooled tap, ShuffleNet's channel shuffle, token sequences -> NHWC ``stage`` taps, and parameter
counting."""

import jax
import jax.numpy as jnp
import numpy as np


def global_pool(module, x):
  """Global average pool over H, W, sown as ``pooled`` (what the classifier reads)."""
  x = jnp.mean(x, axis=(1, 2))
  module.sow('intermediates', 'pooled', x)
  return x


def channel_shuffle(x, groups):
  """ShuffleNet's channel shuffle on NHWC: channel (g, c) -> (c, g), as PyTorch's
  ``reshape(N, g, C/g, H, W).permute(0, 2, 1, 3, 4)`` on NCHW."""
  if groups == 1:
    return x
  b, h, w, c = x.shape
  x = x.reshape(b, h, w, groups, c // groups)
  return jnp.swapaxes(x, -1, -2).reshape(b, h, w, c)


def tokens_to_grid(tokens, grid, prefix=0):
  """``[B, prefix + H*W, C]`` tokens -> ``[B, H, W, C]`` patch grid (prefix tokens dropped)."""
  b, _, c = tokens.shape
  return tokens[:, prefix:].reshape(b, grid[0], grid[1], c)


def stage_blocks(depth, num_stages=4):
  """The block indices (0-based) ending each quarter of a ``depth``-block stack:
  ViT-B/12 -> (2, 5, 8, 11), i.e. blocks 3, 6, 9, 12 counted from 1."""
  return tuple(max(1, round(depth * (i + 1) / num_stages)) - 1 for i in range(num_stages))


def param_count(tree):
  """The number of scalars in a (possibly abstract) params tree."""
  return int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(tree)))
