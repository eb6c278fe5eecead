"""A tiny ViT for the 8x8 digits (patch 4: a 2x2 grid), registered only where a test asks."""

import jax.numpy as jnp

from kdjax.models import vit

NAME = 'vit_tiny_test'


def vit_tiny_test(*, num_classes=10, dtype=jnp.float32, drop_path_rate=0.0):
  return vit.VisionTransformer(patch_size=4, embed_dim=16, depth=3, num_heads=2,
                               num_classes=num_classes, dtype=dtype, arch=NAME,
                               drop_path_rate=drop_path_rate)
