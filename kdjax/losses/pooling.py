"""PyTorch-exact spatial resampling for NHWC maps (docs/methods.md#resampling).

Several references size-match feature maps with ``F.adaptive_avg_pool2d`` (AT, NST, OFD, ReviewKD's
HCL pyramid, AFD's ``Sample``) or with ``F.interpolate(mode='nearest')`` (ReviewKD's ABF). Neither
``jax.image.resize`` nor ``flax.linen.avg_pool`` reproduces their index rules in general (e.g. the
overlapping windows of 7 -> 4), so both are written here from the PyTorch rules. Shapes are static:
the index tables are built with NumPy at trace time and the maps are touched only by one ``einsum``
(pooling) or one ``take`` per axis (resizing), so both are cheap, jit-able and differentiable.

``resize_to_grid`` combines them (with bilinear growth) for maps of different architecture
families that must be compared on one grid (docs/methods.md#across-architectures).
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

_HIGHEST = jax.lax.Precision.HIGHEST


def _pair(size, name):
  if isinstance(size, (int, np.integer)):
    out = (int(size), int(size))
  elif isinstance(size, Sequence) and len(size) == 2:
    out = (int(size[0]), int(size[1]))
  else:
    raise ValueError(f'{name} must be an int or a pair of ints, got {size!r}.')
  if min(out) < 1:
    raise ValueError(f'{name} must be positive, got {size!r}.')
  return out


def adaptive_pool_windows(in_size: int, out_size: int) -> list[tuple[int, int]]:
  """The half-open input windows ``[start, end)`` of PyTorch's 1-D adaptive average pooling.

  ``start = floor(i * I / O)`` and ``end = ceil((i + 1) * I / O)`` for output cell ``i`` (integer
  arithmetic, as in ATen's ``start_index`` / ``end_index``). Windows may overlap (7 -> 4 gives
  ``[0,2),[1,4),[3,6),[5,7)``) and ``O > I`` is allowed (cells then repeat input entries).

  Args:
    in_size: input length ``I``.
    out_size: output length ``O``.

  Returns:
    A list of ``O`` ``(start, end)`` pairs.
  """
  return [((i * in_size) // out_size, -((-(i + 1) * in_size) // out_size))
          for i in range(out_size)]


def adaptive_pool_matrix(in_size: int, out_size: int) -> np.ndarray:
  """Row-stochastic ``[O, I]`` float32 matrix whose row ``i`` averages window ``i``."""
  mat = np.zeros((out_size, in_size), np.float64)
  for i, (start, end) in enumerate(adaptive_pool_windows(in_size, out_size)):
    mat[i, start:end] = 1.0 / (end - start)
  return mat.astype(np.float32)


def adaptive_avg_pool2d(x: jax.Array, output_size) -> jax.Array:
  """PyTorch ``F.adaptive_avg_pool2d`` for NHWC maps.

  Output cell ``(i, j)`` is the mean of the input rectangle ``rows_i x cols_j`` where the row and
  column windows are those of :func:`adaptive_pool_windows`. A rectangle mean is the product of two
  1-D means, so with per-axis row-stochastic matrices ``P_H : [O_h, H]`` and ``P_W : [O_w, W]``::

    y[b, i, j, c] = sum_{h, w} P_H[i, h] x[b, h, w, c] P_W[j, w]

  computed with one ``einsum`` at ``Precision.HIGHEST`` (no TF32/bf16 passes on GPU/TPU).

  Args:
    x: ``[B, H, W, C]`` floating array.
    output_size: an int ``O`` (square output) or a pair ``(O_h, O_w)``. ``O > H`` is allowed.

  Returns:
    ``[B, O_h, O_w, C]`` array in ``x``'s dtype (the matrices are cast to it).

  References:
    PyTorch ``aten/src/ATen/native/AdaptiveAveragePooling.cpp`` (``start_index``/``end_index``);
    docs/methods.md#resampling.
  """
  x = jnp.asarray(x)
  if x.ndim != 4:
    raise ValueError(f'adaptive_avg_pool2d expects an NHWC [B,H,W,C] map, got shape {x.shape}.')
  out_h, out_w = _pair(output_size, 'output_size')
  _, in_h, in_w, _ = x.shape
  if (out_h, out_w) == (in_h, in_w):
    return x
  p_h = jnp.asarray(adaptive_pool_matrix(in_h, out_h), dtype=x.dtype)
  p_w = jnp.asarray(adaptive_pool_matrix(in_w, out_w), dtype=x.dtype)
  return jnp.einsum('oh,bhwc,pw->bopc', p_h, x, p_w, precision=_HIGHEST)


def nearest_source_indices(in_size: int, out_size: int) -> np.ndarray:
  """Source index of every output cell of PyTorch's ``F.interpolate(mode='nearest')``.

  PyTorch (``UpSample.h``: ``nearest_idx``) uses the identity when ``O == I``, ``dst >> 1`` when
  ``O == 2 I`` and otherwise ``min(floor(dst * scale), I - 1)`` with ``scale = float32(I) / O``
  evaluated in **float32**. That is ``floor(dst * I / O)`` up to float32 rounding; the two agree
  for every integer up- or down-sampling factor, and this function replicates PyTorch bit for bit
  also in the rare other cases (e.g. 2 -> 82) where float32 rounding moves one index.

  Args:
    in_size: input length ``I``.
    out_size: output length ``O``.

  Returns:
    int32 NumPy array ``[O]`` of source indices.
  """
  dst = np.arange(out_size)
  if out_size == in_size:
    src = dst
  elif out_size == 2 * in_size:
    src = dst >> 1
  else:
    scale = np.float32(in_size) / np.float32(out_size)
    src = np.floor(dst.astype(np.float32) * scale).astype(np.int64)
    src = np.minimum(src, in_size - 1)
  return src.astype(np.int32)


def nearest_resize(x: jax.Array, size) -> jax.Array:
  """PyTorch ``F.interpolate(x, size, mode='nearest')`` for NHWC maps, by gather.

  ``y[b, i, j, c] = x[b, src_h(i), src_w(j), c]`` with ``src = floor(dst * I / O)`` (PyTorch's rule,
  see :func:`nearest_source_indices`). ``jax.image.resize(method='nearest')`` instead uses
  ``floor((dst + 0.5) * I / O)`` and differs for non-integer factors.

  Args:
    x: ``[B, H, W, C]`` array (any dtype).
    size: an int (square output) or a pair ``(O_h, O_w)``; up- and down-sampling are both allowed.

  Returns:
    ``[B, O_h, O_w, C]`` array in ``x``'s dtype. The gradient scatters back to the source pixels.

  References:
    PyTorch ``aten/src/ATen/native/UpSample.h`` (``nearest_idx``); docs/methods.md#resampling,
    #reviewkd (ABF).
  """
  x = jnp.asarray(x)
  if x.ndim != 4:
    raise ValueError(f'nearest_resize expects an NHWC [B,H,W,C] map, got shape {x.shape}.')
  out_h, out_w = _pair(size, 'size')
  _, in_h, in_w, _ = x.shape
  if (out_h, out_w) == (in_h, in_w):
    return x
  x = jnp.take(x, jnp.asarray(nearest_source_indices(in_h, out_h)), axis=1)
  return jnp.take(x, jnp.asarray(nearest_source_indices(in_w, out_w)), axis=2)


def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
  """``[O, I]`` float32 matrix of 1-D linear interpolation with half-pixel centres.

  PyTorch's ``F.interpolate(mode='bilinear', align_corners=False)`` per axis (and, for
  ``O >= I``, ``jax.image.resize(method='linear', antialias=False)``): output cell ``i`` reads
  ``src = max((i + 0.5) * I / O - 0.5, 0)``, i.e. ``(1 - f) x[floor(src)] + f x[floor(src) + 1]``
  with ``f = src - floor(src)`` and the upper index clamped to ``I - 1``.
  """
  mat = np.zeros((out_size, in_size), np.float64)
  for i in range(out_size):
    src = max((i + 0.5) * in_size / out_size - 0.5, 0.0)
    lo = min(int(np.floor(src)), in_size - 1)
    hi = min(lo + 1, in_size - 1)
    frac = src - lo
    mat[i, lo] += 1.0 - frac
    mat[i, hi] += frac
  return mat.astype(np.float32)


def _resample_axis(x, axis, out_size, grow):
  in_size = x.shape[axis]
  if out_size == in_size:
    return x
  if out_size > in_size and grow == 'nearest':
    return jnp.take(x, jnp.asarray(nearest_source_indices(in_size, out_size)), axis=axis)
  mat = (adaptive_pool_matrix(in_size, out_size) if out_size < in_size
         else bilinear_matrix(in_size, out_size))
  mat = jnp.asarray(mat, dtype=x.dtype)
  spec = 'oh,bhwc->bowc' if axis == 1 else 'ow,bhwc->bhoc'
  return jnp.einsum(spec, mat, x, precision=_HIGHEST)


def resize_to_grid(x: jax.Array, size, *, grow: str = 'bilinear') -> jax.Array:
  """Resizes an NHWC map to another network's grid, axis by axis (docs/methods.md#resampling).

  The rule kdjax uses when a student and a teacher map of different families (a ViT's patch
  grid, a CNN stage) must be compared cell by cell:

    * an axis that **shrinks** (``O < I``) is adaptive-average-pooled
      (:func:`adaptive_avg_pool2d`'s PyTorch windows): at an integer factor ``k`` each output
      cell is the mean of its ``k`` input cells, so every input cell feeds the output (and gets
      gradient);
    * an axis that **grows** (``O > I``) is interpolated: ``grow='bilinear'`` (default) is
      ``F.interpolate(mode='bilinear', align_corners=False)`` (:func:`bilinear_matrix`; equal to
      ``jax.image.resize(method='linear', antialias=False)``), ``grow='nearest'`` is
      :func:`nearest_resize`'s PyTorch nearest rule;
    * an axis of equal length is left alone, so a map already on the grid is returned as is.

  Args:
    x: ``[B, H, W, C]`` floating array.
    size: an int or a pair ``(O_h, O_w)``.
    grow: ``'bilinear'`` or ``'nearest'``, how a growing axis is interpolated.

  Returns:
    ``[B, O_h, O_w, C]`` array in ``x``'s dtype; linear in ``x`` (differentiable).
  """
  x = jnp.asarray(x)
  if x.ndim != 4:
    raise ValueError(f'resize_to_grid expects an NHWC [B,H,W,C] map, got shape {x.shape}.')
  if grow not in ('bilinear', 'nearest'):
    raise ValueError(f"resize_to_grid: grow must be 'bilinear' or 'nearest', got {grow!r}.")
  out_h, out_w = _pair(size, 'size')
  x = _resample_axis(x, 1, out_h, grow)
  return _resample_axis(x, 2, out_w, grow)
