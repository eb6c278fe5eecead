"""Layer constructors with PyTorch's default initialisation (ALGORITHMS.md §1.9, §1.10)."""

import flax.linen as nn
import jax.numpy as jnp

from kdjax.models.resnet import batch_norm  # noqa: F401  (BatchNorm with PyTorch's settings)
from kdjax.models.resnet import linear_kernel_init
from kdjax.models.resnet import torch_bias_init


def torch_conv(features, kernel, *, strides=1, padding=0, use_bias=True, in_features,
               kernel_init=linear_kernel_init, name=None):
  """nn.Conv2d with PyTorch's explicit padding and default init (kaiming_uniform a=sqrt(5),
  bias U(+-1/sqrt(fan_in)))."""
  kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
  fan_in = in_features * kh * kw
  return nn.Conv(features, (kh, kw), strides=(strides, strides),
                 padding=((padding, padding), (padding, padding)), use_bias=use_bias,
                 kernel_init=kernel_init, bias_init=torch_bias_init(fan_in),
                 param_dtype=jnp.float32, name=name)


def torch_conv_transpose(features, kernel, *, strides, padding, in_features, name=None):
  """nn.ConvTranspose2d(k, s, p) with PyTorch's output size (s * H for k = 4, s = 2, p = 1).

  PyTorch's padding p crops p pixels from each side of the full transposed convolution; in
  `nn.ConvTranspose` terms that is explicit padding k - 1 - p per side.
  """
  pad = kernel - 1 - padding
  # PyTorch computes a ConvTranspose's default-init fan_in from weight dim 1 (out channels).
  fan_in = features * kernel * kernel
  # kaiming_uniform(a=sqrt(5)) and the bias init are both U(+-1/sqrt(fan_in)) there.
  return nn.ConvTranspose(features, (kernel, kernel), strides=(strides, strides),
                          padding=((pad, pad), (pad, pad)), kernel_init=torch_bias_init(fan_in),
                          bias_init=torch_bias_init(fan_in), param_dtype=jnp.float32,
                          transpose_kernel=True, name=name)


def torch_dense(features, *, in_features, name=None):
  """nn.Linear with PyTorch's default weight and bias init."""
  return nn.Dense(features, kernel_init=linear_kernel_init, bias_init=torch_bias_init(in_features),
                  param_dtype=jnp.float32, name=name)
