"""Layers and checks shared by the CIFAR model families (mdistiller / RepDistiller layouts).

The reference models initialise in three ways, reproduced here on top of ``kdjax.layers``:

  kaiming_conv   ``normal_(0, sqrt(2 / (k * k * out_channels)))`` (= kaiming_normal fan_out,
                 which ``kdjax.layers.conv_kernel_init`` is), bias (when present) zero: the
                 CIFAR ResNets, WRN, VGG, MobileNetV2
  default_conv   PyTorch's nn.Conv2d default (U(+-1/sqrt(fan_in)), fan_in = in / groups * k * k),
                 no bias: the ShuffleNets, which re-initialise nothing
  dense          an nn.Linear with a chosen weight / bias init (VGG and MobileNetV2 use
                 N(0, 0.01) / 0, WRN the default weight with a zero bias)

Every conv pads explicitly and symmetrically, like PyTorch. Grouped convolutions
(``groups`` = PyTorch's ``groups``) keep PyTorch's parameter count: the kernel is
``[k, k, in / groups, out]``.
"""

import flax.linen as nn
import jax.numpy as jnp

from kdjax.errors import KdjaxError
from kdjax.layers import conv_kernel_init
from kdjax.layers import linear_kernel_init
from kdjax.layers import torch_bias_init


def check_input(x, factor, model):
  """Raises a one-line KdjaxError unless ``x`` is NHWC with H, W >= ``factor``.

  ``factor`` is the model's total downsampling (product of its strides and pools): below it
  a pool would leave an empty map, or a stride-2 step would have nothing left to halve.
  """
  if x.ndim != 4:
    raise KdjaxError(f'model {model} takes NHWC images [B, H, W, C]; got an input of shape '
                     f'{tuple(x.shape)}')
  h, w = x.shape[1], x.shape[2]
  if h < factor or w < factor:
    raise KdjaxError(f'model {model} downsamples its input {factor}x and needs images of at '
                     f'least {factor}x{factor} pixels; got {h}x{w} (raise input.image_size)')


def kaiming_conv(features, kernel, strides, padding, name, dtype, *, groups=1, use_bias=False):
  """nn.Conv2d with the ResNet-style kaiming fan_out normal weight, zero bias if any."""
  return nn.Conv(features, (kernel, kernel), strides=(strides, strides),
                 padding=((padding, padding), (padding, padding)), feature_group_count=groups,
                 use_bias=use_bias, kernel_init=conv_kernel_init,
                 bias_init=nn.initializers.zeros, dtype=dtype, param_dtype=jnp.float32,
                 name=name)


def default_conv(features, kernel, strides, padding, name, dtype, *, groups=1):
  """A bias-free nn.Conv2d with PyTorch's default weight init (U(+-1/sqrt(fan_in)))."""
  return nn.Conv(features, (kernel, kernel), strides=(strides, strides),
                 padding=((padding, padding), (padding, padding)), feature_group_count=groups,
                 use_bias=False, kernel_init=linear_kernel_init, dtype=dtype,
                 param_dtype=jnp.float32, name=name)


def dense(x, features, name, dtype, *, weight='default', bias='default'):
  """nn.Linear applied to ``x``; weight 'default' (PyTorch's) or 'normal001' (N(0, 0.01)),
  bias 'default' (PyTorch's) or 'zero'."""
  kernel_init = linear_kernel_init if weight == 'default' else nn.initializers.normal(0.01)
  bias_init = torch_bias_init(x.shape[-1]) if bias == 'default' else nn.initializers.zeros
  return nn.Dense(features, kernel_init=kernel_init, bias_init=bias_init, dtype=dtype,
                  param_dtype=jnp.float32, name=name)(x)


def channel_shuffle(x, groups):
  """ShuffleNet's channel shuffle on NHWC: channel (g, c) -> (c, g), as PyTorch's
  ``reshape(N, g, C/g, H, W).permute(0, 2, 1, 3, 4)`` on NCHW."""
  if groups == 1:
    return x
  b, h, w, c = x.shape
  x = x.reshape(b, h, w, groups, c // groups)
  return jnp.swapaxes(x, -1, -2).reshape(b, h, w, c)


def global_pool(module, x):
  """Global average pool, sown as ``pooled`` (what the classifier reads)."""
  x = jnp.mean(x, axis=(1, 2))
  module.sow('intermediates', 'pooled', x)
  return x
