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
  """nn.MaxPool2d(window, stride, padding) on NHWC `x` (padding with -inf), with a gradient that
  XLA:CPU runs fast.

  JAX differentiates a max pool through `select_and_gather_add`, which XLA:CPU executes as a
  slow packed reduce-window (the ResNet stem's pool backward was about a sixth of a ResNet-18
  train step on CPU). Here the backward is written out instead: for each of the window's
  `window**2` offsets (row-major), the gradient of an output goes to the input at that offset if
  it holds the window's maximum and no earlier offset did, i.e. to the first maximum, as
  PyTorch's CPU and CUDA kernels route it. The scatter back to the input grid is an interior
  (dilated) pad per offset, which XLA fuses into one elementwise pass.
  """
  return _max_pool(x, window, stride, padding)


def _max_pool_taps(x, window, stride, padding):
  """The window's window**2 offsets (row-major) as strided slices of the -inf-padded input:
  [(i, j, tap [B, Ho, Wo, C])], tap[b, r, s] = padded x[b, i + r stride, j + s stride]."""
  b, h, w, c = x.shape
  ho = (h + 2 * padding - window) // stride + 1
  wo = (w + 2 * padding - window) // stride + 1
  xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)),
               constant_values=-jnp.inf)
  return [(i, j, jax.lax.slice(xp, (0, i, j, 0), (b, i + (ho - 1) * stride + 1,
                                                  j + (wo - 1) * stride + 1, c),
                               (1, stride, stride, 1)))
          for i in range(window) for j in range(window)], xp.shape


def _max_pool_forward(x, window, stride, padding):
  return jax.lax.reduce_window(x, jnp.array(-jnp.inf, x.dtype), jax.lax.max,
                               (1, window, window, 1), (1, stride, stride, 1),
                               ((0, 0), (padding, padding), (padding, padding), (0, 0)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x, window, stride, padding):
  return _max_pool_forward(x, window, stride, padding)


def _max_pool_fwd(x, window, stride, padding):
  y = _max_pool_forward(x, window, stride, padding)
  return y, (x, y)


def _max_pool_bwd(window, stride, padding, res, g):
  x, y = res
  h, w = x.shape[1:3]
  ho, wo = y.shape[1:3]
  taps, (_, hp, wp, _) = _max_pool_taps(x, window, stride, padding)
  taken = jnp.zeros(y.shape, bool)
  grad = jnp.zeros((x.shape[0], hp, wp, x.shape[3]), g.dtype)
  for i, j, tap in taps:
    first = (tap == y) & ~taken
    taken |= first
    routed = jnp.where(first, g, 0.0).astype(g.dtype)
    # Output (r, s) sits at padded input (i + r stride, j + s stride).
    grad = grad + jax.lax.pad(routed, jnp.zeros((), g.dtype), (
        (0, 0, 0), (i, hp - i - (ho - 1) * stride - 1, stride - 1),
        (j, wp - j - (wo - 1) * stride - 1, stride - 1), (0, 0, 0)))
  return (grad[:, padding:padding + h, padding:padding + w],)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def batch_norm(train, name, dtype):
  """nn.BatchNorm2d / 1d with PyTorch's defaults: momentum 0.1 (Flax 0.9), eps 1e-5, scale 1,
  bias 0."""
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype,
                      param_dtype=jnp.float32, name=name)


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
