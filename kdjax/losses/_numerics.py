"""Small numerics helpers shared by the losses (docs/methods.md#numerics)."""

import jax.numpy as jnp

# PyTorch's F.normalize eps; squared inside the rsqrt so the value matches max(||x||, eps).
NORMALIZE_EPS = 1e-12
# Floor under a squared norm where the reference divides by a raw norm (CRD, PEFD, DIST, PKT).
SQUARED_NORM_FLOOR = 1e-24


def as_f32(*xs):
  """Upcasts every array to float32 (losses are always computed in float32)."""
  out = tuple(jnp.asarray(x).astype(jnp.float32) for x in xs)
  return out if len(out) > 1 else out[0]


def l2_normalize(x, axis=-1, eps=NORMALIZE_EPS):
  """``x / max(||x||, eps)`` along ``axis``, with a finite gradient at ``x = 0``.

  Same value and gradient as PyTorch ``F.normalize``; ``jnp.linalg.norm`` has a NaN
  gradient at zero, this does not.
  """
  sq = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
  return x * jnp.reciprocal(jnp.sqrt(jnp.maximum(sq, eps * eps)))


def safe_norm(x, axis=-1, keepdims=False, floor=SQUARED_NORM_FLOOR):
  """``sqrt(max(sum(x^2), floor))``: a Euclidean norm whose gradient is finite at 0."""
  return jnp.sqrt(jnp.maximum(jnp.sum(jnp.square(x), axis=axis, keepdims=keepdims), floor))
