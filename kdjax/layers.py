"""Layers, initialisers and the input check shared by the models and the methods' connectors.

Everything reproduces its PyTorch (or timm) counterpart, because the numbers kdjax is compared
against (mdistiller, torchdistill, timm, torchvision) come from PyTorch models: one conv
(``torch_conv``, nn.Conv2d) and one linear (``torch_dense``, nn.Linear) constructor with the
weight and bias init chosen by argument, PyTorch's BatchNorm and LayerNorm settings, explicit
symmetric padding (never Flax's 'SAME'), float32 parameters. Each docstring names the PyTorch
equivalent; docs/design.md ("Conventions") says why.
"""

import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kdjax.errors import KdjaxError

# ---------------------------------------------------------------------------------------------
# Initialisers.

# PyTorch's default nn.Linear / nn.Conv2d weight, kaiming_uniform_(a=sqrt(5)):
# U(+-1/sqrt(fan_in)), fan_in = in / groups * kh * kw (Flax reads it off the kernel shape).
linear_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')
# kaiming_normal_(mode='fan_out', nonlinearity='relu'), untruncated (ResNet-style convs; also
# mdistiller's normal_(0, sqrt(2 / (k * k * out_channels))), grouped or not).
conv_kernel_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')
# torch.nn.init.xavier_normal_: N(0, 2 / (fan_in + fan_out)), not truncated (Flax's
# glorot_normal truncates at 2 sigma).
xavier_normal = nn.initializers.variance_scaling(1.0, 'fan_avg', 'normal')
# torch.nn.init.kaiming_uniform_(a=1): U(+-sqrt(3 / fan_in)).
kaiming_uniform_a1 = nn.initializers.variance_scaling(1.0, 'fan_in', 'uniform')
# timm's trunc_normal_(std=.02) (truncated at +-2, i.e. +-100 sigma: effectively untruncated).
trunc_normal_02 = nn.initializers.normal(0.02)
# timm's xavier_uniform_ (= torch.nn.init.xavier_uniform_; MLP-Mixer / ResMLP linears).
xavier_uniform = nn.initializers.variance_scaling(1.0, 'fan_avg', 'uniform')
# timm's lecun_normal_ (truncated normal, variance 1 / fan_in; MLP-Mixer patch embedding).
lecun_normal = nn.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal')
# timm's ViT / Swin / ConvNeXt Linear (and ConvNeXt conv) init, as torch_dense / torch_conv
# keywords: trunc_normal_(std=.02) weight, zero bias.
TIMM_INIT = {'kernel_init': trunc_normal_02, 'bias_init': nn.initializers.zeros}


def torch_bias_init(fan_in):
  """PyTorch's default nn.Linear / nn.Conv2d bias init, U(+-1/sqrt(fan_in))."""
  bound = 1.0 / float(fan_in) ** 0.5

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def _bias_init(bias_init, use_bias, fan_in, layer):
  """``bias_init``, or PyTorch's default (U(+-1/sqrt(fan_in))) when it is None."""
  if bias_init is not None or not use_bias:
    return bias_init or nn.initializers.zeros
  if fan_in is None:
    raise ValueError(f'{layer}: PyTorch\'s default bias init needs in_features')
  return torch_bias_init(fan_in)


# ---------------------------------------------------------------------------------------------
# The conv and the linear layer.


def torch_conv(features, kernel, *, strides=1, padding=0, groups=1, use_bias=True,
               kernel_init=linear_kernel_init, bias_init=None, in_features=None, dtype=None,
               name=None):
  """nn.Conv2d(in_features, features, kernel, stride=strides, padding=padding, groups=groups,
  bias=use_bias): the one conv of kdjax.

  ``kernel`` is an int or (kh, kw); ``padding`` p is explicit and symmetric, ((p, p), (p, p)).
  The kernel is ``[kh, kw, in / groups, features]`` (PyTorch's parameter count). Weight init:
  ``linear_kernel_init`` (PyTorch's default, U(+-1/sqrt(fan_in)), fan_in = in / groups * kh *
  kw), ``conv_kernel_init`` (kaiming_normal fan_out) or any initialiser. Bias init: None for
  PyTorch's default U(+-1/sqrt(fan_in)) (needs ``in_features``), or any initialiser (e.g.
  ``nn.initializers.zeros``). Parameters float32, compute in ``dtype``.
  """
  kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
  fan_in = None if in_features is None else in_features // groups * kh * kw
  # A strided 1x1 conv without padding only reads every strides-th pixel: subsampling first
  # computes the same numbers, and its backward is a plain 1x1 conv plus a scatter, where XLA:CPU
  # runs the strided conv's input gradient as a convolution over a zero-dilated gradient (4-6x
  # slower for ResNet's downsampling convs, measured). Same parameters, same name.
  subsample = (kh, kw) == (1, 1) and padding == 0 and strides > 1
  layer = nn.Conv(features, (kh, kw), strides=(1, 1) if subsample else (strides, strides),
                  padding=((padding, padding), (padding, padding)), feature_group_count=groups,
                  use_bias=use_bias, kernel_init=kernel_init,
                  bias_init=_bias_init(bias_init, use_bias, fan_in, 'torch_conv'), dtype=dtype,
                  param_dtype=jnp.float32, name=name)
  if subsample:
    return lambda x: layer(x[:, ::strides, ::strides])
  return layer


def torch_dense(features, *, in_features=None, use_bias=True, kernel_init=linear_kernel_init,
                bias_init=None, dtype=None, name=None):
  """nn.Linear(in_features, features, bias=use_bias): the one linear layer of kdjax.

  Weight init: ``linear_kernel_init`` (PyTorch's default, U(+-1/sqrt(in_features))) or any
  initialiser (timm's transformers: ``trunc_normal_02``). Bias init: None for PyTorch's default
  U(+-1/sqrt(in_features)) (needs ``in_features``), or any initialiser. Parameters float32,
  compute in ``dtype``.
  """
  return nn.Dense(features, use_bias=use_bias, kernel_init=kernel_init,
                  bias_init=_bias_init(bias_init, use_bias, in_features, 'torch_dense'),
                  dtype=dtype, param_dtype=jnp.float32, name=name)


def conv(features, kernel, strides, padding, name, dtype, *, groups=1):
  """A bias-free conv with kaiming fan_out init (ResNet style): ``torch_conv`` shorthand."""
  return torch_conv(features, kernel, strides=strides, padding=padding, groups=groups,
                    use_bias=False, kernel_init=conv_kernel_init, dtype=dtype, name=name)


def classifier(x, num_classes, dtype, name='fc'):
  """The final nn.Linear applied to ``x``, with PyTorch's default weight and bias init."""
  return torch_dense(num_classes, in_features=x.shape[-1], dtype=dtype, name=name)(x)


def torch_conv_transpose(features, kernel, *, strides, padding, in_features, name=None):
  """nn.ConvTranspose2d(k, s, p) with PyTorch's output size (s * H for k = 4, s = 2, p = 1).

  PyTorch's padding p crops p pixels from each side of the full transposed convolution; in
  `nn.ConvTranspose` terms that is explicit padding k - 1 - p per side.
  """
  del in_features  # PyTorch takes a ConvTranspose's fan_in from weight dim 1 (out channels).
  pad = kernel - 1 - padding
  fan_in = features * kernel * kernel
  # kaiming_uniform(a=sqrt(5)) and the bias init are both U(+-1/sqrt(fan_in)) there.
  return nn.ConvTranspose(features, (kernel, kernel), strides=(strides, strides),
                          padding=((pad, pad), (pad, pad)), kernel_init=torch_bias_init(fan_in),
                          bias_init=torch_bias_init(fan_in), param_dtype=jnp.float32,
                          transpose_kernel=True, name=name)


# ---------------------------------------------------------------------------------------------
# Normalisation, activation, transformer pieces.


def max_pool(x, window, stride, padding):
  """nn.MaxPool2d(window, stride, padding) on NHWC `x` (padding with -inf), written so that
  XLA:CPU runs it and its gradient fast.

  XLA:CPU executes JAX's max pool (`reduce_window`) as a slow generic loop, and its gradient
  (`select_and_gather_add`) as a slower packed one: together about a tenth of a ResNet-18 train
  step on CPU. Here the pool is the maximum of the window's `window**2` strided slices, one
  fused elementwise pass that also records which offset (row-major) held the first maximum. The
  backward routes each output's gradient to that input, as PyTorch's CPU and CUDA kernels do,
  with one interior (dilated) pad per offset that XLA fuses into one pass over the input.
  """
  return _max_pool(x, window, stride, padding)


def _max_pool_taps(x, window, stride, padding):
  """The window's window**2 offsets (row-major) as strided slices of the -inf-padded input:
  [tap [B, Ho, Wo, C]], tap[b, r, s] = padded x[b, i + r stride, j + s stride] for offset (i, j)."""
  b, h, w, c = x.shape
  ho = (h + 2 * padding - window) // stride + 1
  wo = (w + 2 * padding - window) // stride + 1
  xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)),
               constant_values=-jnp.inf)
  return [jax.lax.slice(xp, (0, i, j, 0), (b, i + (ho - 1) * stride + 1,
                                           j + (wo - 1) * stride + 1, c), (1, stride, stride, 1))
          for i in range(window) for j in range(window)]


def _max_pool_with_index(x, window, stride, padding):
  """(the pool, the row-major offset of each window's first maximum as int8)."""
  taps = _max_pool_taps(x, window, stride, padding)
  y = taps[0]
  first = jnp.zeros(y.shape, jnp.int8)
  for k, tap in enumerate(taps[1:], 1):
    first = jnp.where(tap > y, jnp.int8(k), first)  # strictly greater: ties keep the first
    y = jnp.maximum(y, tap)  # (propagates NaN, as PyTorch's pool does)
  return y, first


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x, window, stride, padding):
  return _max_pool_with_index(x, window, stride, padding)[0]


def _max_pool_fwd(x, window, stride, padding):
  y, first = _max_pool_with_index(x, window, stride, padding)
  return y, (first, x.shape)


def _max_pool_bwd(window, stride, padding, res, g):
  first, (b, h, w, c) = res
  ho, wo = g.shape[1:3]
  hp, wp = h + 2 * padding, w + 2 * padding
  grad = jnp.zeros((b, hp, wp, c), g.dtype)
  for k in range(window * window):
    i, j = divmod(k, window)
    routed = jnp.where(first == k, g, jnp.zeros((), g.dtype))
    # Output (r, s) sits at padded input (i + r stride, j + s stride).
    grad = grad + jax.lax.pad(routed, jnp.zeros((), g.dtype), (
        (0, 0, 0), (i, hp - i - (ho - 1) * stride - 1, stride - 1),
        (j, wp - j - (wo - 1) * stride - 1, stride - 1), (0, 0, 0)))
  return (grad[:, padding:padding + h, padding:padding + w],)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def batch_norm(train, name, dtype):
  """nn.BatchNorm2d / 1d with PyTorch's defaults: momentum 0.1 (Flax 0.9), eps 1e-5, scale 1,
  bias 0. Normalises over every axis but the last."""
  return BatchNorm(use_running_average=not train, dtype=dtype, name=name)


class BatchNorm(nn.Module):
  """Flax's ``nn.BatchNorm`` (momentum 0.9, eps 1e-5, float32 statistics, two-pass variance),
  same variables and values, with a training-mode backward written out.

  Flax's BatchNorm leaves the backward to autodiff, and XLA:CPU runs the per-channel reductions
  that autodiff and the statistics need as slow column reductions (a sum over [N, H, W] of
  NHWC data ran at a fifth of an elementwise pass on this project's CPU). Here training mode is
  one function with a custom VJP: forward = the sums of x and (x - mean)**2, then one
  normalising pass; backward = the sums of g and g * x_hat, then one pass for dx. On CPU each sum
  is a batched product with a vector of ones, per example, then over the batch (float32, full
  precision; `_channel_sum`); elsewhere a plain sum. Inference mode is Flax's arithmetic,
  unchanged.
  """

  use_running_average: bool
  dtype: Any = None
  momentum: float = 0.9
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x):
    features = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (features,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (features,), jnp.float32)
    ra_mean = self.variable('batch_stats', 'mean', jnp.zeros, (features,), jnp.float32)
    ra_var = self.variable('batch_stats', 'var', jnp.ones, (features,), jnp.float32)
    dtype = self.dtype or jnp.result_type(x, scale, bias)
    if self.use_running_average:
      # Flax's _normalize, operation for operation (the teachers' logits depend on it).
      mul = jax.lax.rsqrt(ra_var.value + self.epsilon) * scale
      return jnp.asarray((x - ra_mean.value) * mul + bias, dtype)
    y, mean, var = _batch_norm_train(x, scale, bias, self.epsilon)
    if not self.is_initializing():
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    return y.astype(dtype)


def _channel_sum(a):
  """The sum of `a` [N, ..., C] over every axis but the last, in float32: [C].

  On CPU, [N, H, W, C] maps are summed per example by a batched product with a vector of ones,
  then over the batch: 2-7x faster there than XLA:CPU's reduction, and more accurate (each
  example's partial sum is short). The per-example sums do not depend on how the batch is split
  over devices, so 1 and 8 devices still train alike.
  """
  if a.ndim < 3 or jax.default_backend() != 'cpu':
    return a.sum(tuple(range(a.ndim - 1)), dtype=jnp.float32)
  rows = a.reshape(a.shape[0], -1, a.shape[-1])
  per_example = jnp.matmul(jnp.ones((rows.shape[0], 1, rows.shape[1]), jnp.float32), rows,
                           precision=jax.lax.Precision.HIGHEST,
                           preferred_element_type=jnp.float32)
  return per_example[:, 0].sum(0)


def _batch_norm_stats(x):
  """(x in float32, mean, biased variance), the variance in two passes, E[(x - mean)^2], as
  PyTorch computes it (E[x^2] - E[x]^2 loses most of its digits when |mean| >> std)."""
  xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  n = xf.size // xf.shape[-1]
  mean = _channel_sum(xf) / n
  return xf, mean, _channel_sum(jnp.square(xf - mean)) / n


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _batch_norm_train(x, scale, bias, epsilon):
  """(normalised x * scale + bias in float32, batch mean, batch variance)."""
  return _batch_norm_train_fwd(x, scale, bias, epsilon)[0]


def _batch_norm_train_fwd(x, scale, bias, epsilon):
  xf, mean, var = _batch_norm_stats(x)
  inv = jax.lax.rsqrt(var + epsilon)
  y = (xf - mean) * (inv * scale) + bias
  return (y, mean, var), (x, mean, inv, scale)


def _batch_norm_train_bwd(epsilon, res, cotangents):
  del epsilon
  x, mean, inv, scale = res
  g, g_mean, g_var = cotangents
  n = x.size // x.shape[-1]
  centred = x.astype(mean.dtype) - mean
  x_hat = centred * inv
  g = g.astype(mean.dtype)
  g_bias, g_scale = _channel_sum(g), _channel_sum(g * x_hat)
  # d/dx of x_hat * scale + bias through the batch statistics, plus the statistics' own
  # cotangents (d mean / dx = 1 / n, d var / dx = 2 (x - mean) / n; nonzero only when a caller
  # differentiates the returned statistics).
  dx = (scale * inv) * (g - g_bias / n - x_hat * (g_scale / n)) + (g_mean + 2 * g_var * centred) / n
  return dx.astype(x.dtype), g_scale, g_bias


_batch_norm_train.defvjp(_batch_norm_train_fwd, _batch_norm_train_bwd)


def layer_norm(eps, name, dtype):
  """nn.LayerNorm(eps=eps) over the last axis (two-pass variance, as PyTorch computes it).
  PyTorch's default eps is 1e-5 (Flax's 1e-6, timm's ViT / ConvNeXt / Mixer 1e-6): pass it."""
  return nn.LayerNorm(epsilon=eps, use_fast_variance=False, dtype=dtype,
                      param_dtype=jnp.float32, name=name)


def gelu(x):
  """nn.GELU() (exact, erf)."""
  return nn.gelu(x, approximate=False)


class Mlp(nn.Module):
  """timm ``Mlp``: fc1 -> GELU -> fc2 over the last axis; timm's transformer init (weights
  trunc_normal(.02), biases 0) unless told otherwise."""

  hidden: int
  out: int
  dtype: Any = jnp.float32
  kernel_init: Any = trunc_normal_02
  bias_init: Any = nn.initializers.zeros

  @nn.compact
  def __call__(self, x):
    init = dict(kernel_init=self.kernel_init, bias_init=self.bias_init, dtype=self.dtype)
    x = gelu(torch_dense(self.hidden, name='fc1', **init)(x))
    return torch_dense(self.out, name='fc2', **init)(x)


def drop_path(module, x, rate, train):
  """timm's ``drop_path`` (stochastic depth) on a residual branch ``x`` ``[B, ...]``.

  In training mode with ``rate > 0``: ``x * m_b / (1 - rate)`` with one Bernoulli draw
  ``m_b ~ B(1 - rate)`` per example (the whole branch of example ``b`` is kept or dropped),
  from ``module.make_rng('dropout')`` (each call draws a new key). Otherwise ``x`` itself,
  so rate 0 and inference mode are the identity, bit for bit.
  """
  if not train or rate <= 0.0:
    return x
  keep = 1.0 - rate
  shape = (x.shape[0],) + (1,) * (x.ndim - 1)
  mask = jax.random.bernoulli(module.make_rng('dropout'), keep, shape)
  return x * (mask.astype(x.dtype) / jnp.asarray(keep, x.dtype))


def drop_path_rates(rate, depth):
  """timm's per-block stochastic depth rates, ``linspace(0, rate, depth)`` (Python floats)."""
  return [float(r) for r in np.linspace(0.0, rate, depth)]


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


class PatchEmbed(nn.Module):
  """timm ``PatchEmbed``: a ``patch_size`` x ``patch_size``, stride ``patch_size`` conv ``proj``
  (PyTorch's default init unless told otherwise), then, if ``norm_eps`` is set, a LayerNorm
  ``norm``. ``flatten``: returns (``[B, N, D]`` tokens, (h, w) grid); else ``[B, h, w, D]``."""

  patch_size: int
  embed_dim: int
  dtype: Any = jnp.float32
  kernel_init: Any = linear_kernel_init
  bias_init: Any = None
  norm_eps: Optional[float] = None
  flatten: bool = True

  @nn.compact
  def __call__(self, x):
    x = torch_conv(self.embed_dim, self.patch_size, strides=self.patch_size,
                   kernel_init=self.kernel_init, bias_init=self.bias_init,
                   in_features=x.shape[-1], dtype=self.dtype, name='proj')(x)
    if self.norm_eps is not None:
      x = layer_norm(self.norm_eps, 'norm', self.dtype)(x)
    if not self.flatten:
      return x
    b, h, w, d = x.shape
    return x.reshape(b, h * w, d), (h, w)


# ---------------------------------------------------------------------------------------------
# The input check.


def check_input(x, model, *, minimum=1, multiple=1, why=None):
  """Raises a one-line KdjaxError unless ``x`` is NHWC ``[B, H, W, C]`` with H and W at least
  ``minimum`` and multiples of ``multiple``; ``why`` (the layers that need it) goes in the
  message. Runs at trace time (``model.init`` / the first jitted call), before anything is
  written.
  """
  if x.ndim != 4:
    raise KdjaxError(f'{model} takes NHWC images [batch, height, width, channels]; got an input '
                     f'of shape {tuple(x.shape)}')
  h, w = x.shape[1], x.shape[2]
  minimum = max(minimum, multiple)
  if min(h, w) >= minimum and h % multiple == 0 and w % multiple == 0:
    return
  because = f' ({why})' if why else ''
  if multiple == 1:
    needs = f'of at least {minimum}x{minimum} pixels{because}'
  else:
    e = multiple * max(1, 224 // multiple, -(-minimum // multiple))
    at_least = f'of at least {minimum}x{minimum} pixels ' if minimum > multiple else ''
    needs = (f'{at_least}whose height and width are multiples of {multiple}{because}, '
             f'e.g. {e}x{e}')
  raise KdjaxError(f'{model} takes images {needs}; got {h}x{w} (check input.image_size)')
