"""The input steps that run on the accelerators, inside the jitted train step.

Training images cross from the host as uint8 (a quarter of float32's bytes); here they are
normalised, and timm's random erasing fills the boxes the host drew (`augment.random_erasing_box`)
with noise in normalised units. Pure functions of global arrays: the result does not depend on how
the batch is sharded.
"""

import jax
import jax.numpy as jnp


def normalize(images, mean, std):
  """(images / 255 - mean) / std per channel, float32; float input is taken as normalised already
  (batches built by hand, inference) and returned as it is. images [B, H, W, C]."""
  if images.dtype != jnp.uint8:
    return images
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)
  return (images.astype(jnp.float32) / 255.0 - mean) / std


def erase(images, boxes, key):
  """timm's RandomErasing(mode='pixel') fill: the pixels of each image's box (top, left, h, w;
  h = 0: none) become N(0, 1) draws, every channel its own. images float32 [B, H, W, C],
  boxes int32 [B, 4]; the noise is a function of `key` and the global batch row."""
  _, height, width, _ = images.shape
  top, left, h, w = (boxes[:, i, None, None] for i in range(4))
  rows = jnp.arange(height)[None, :, None]
  cols = jnp.arange(width)[None, None, :]
  inside = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
  noise = jax.random.normal(key, images.shape, images.dtype)
  return jnp.where(inside[..., None], noise, images)
