"""Layers and initialisers shared by the models and the methods' connectors.

Everything here reproduces PyTorch's layer defaults, because the numbers kdjax is compared
against (mdistiller, torchdistill, timm, torchvision) come from PyTorch models:

  nn.Conv2d / nn.Linear weight   kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in))
  nn.Conv2d / nn.Linear bias     U(+-1/sqrt(fan_in))
  ResNet-style convs             kaiming_normal(mode='fan_out', nonlinearity='relu'), untruncated
  nn.BatchNorm                   momentum 0.1 (Flax 0.9), eps 1e-5, weight 1, bias 0
  padding                        explicit and symmetric, never Flax's 'SAME'

See docs/design.md ("Conventions") for why explicit padding matters for weight import.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

# kaiming_normal_(mode='fan_out', nonlinearity='relu'), untruncated.
conv_kernel_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')
# PyTorch's default nn.Linear / nn.Conv2d weight: U(+-1/sqrt(fan_in)).
linear_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')
# torch.nn.init.xavier_normal_: N(0, 2 / (fan_in + fan_out)), not truncated (Flax's
# glorot_normal truncates at 2 sigma).
xavier_normal = nn.initializers.variance_scaling(1.0, 'fan_avg', 'normal')
# torch.nn.init.kaiming_uniform_(a=1): U(+-sqrt(3 / fan_in)).
kaiming_uniform_a1 = nn.initializers.variance_scaling(1.0, 'fan_in', 'uniform')


def torch_bias_init(fan_in):
  """PyTorch's default nn.Linear / nn.Conv2d bias init, U(+-1/sqrt(fan_in))."""
  bound = 1.0 / float(fan_in) ** 0.5

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def conv(features, kernel, strides, padding, name, dtype):
  """A bias-free conv with explicit symmetric padding and kaiming fan_out init (ResNet style)."""
  return nn.Conv(features, (kernel, kernel), strides=(strides, strides),
                 padding=((padding, padding), (padding, padding)), use_bias=False,
                 kernel_init=conv_kernel_init, dtype=dtype, param_dtype=jnp.float32, name=name)


def batch_norm(train, name, dtype):
  """BatchNorm with PyTorch's defaults: momentum 0.1 (Flax 0.9), eps 1e-5, scale 1, bias 0."""
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype,
                      param_dtype=jnp.float32, name=name)


def classifier(x, num_classes, dtype, name='fc'):
  """The final nn.Linear, with PyTorch's default weight and bias init."""
  return nn.Dense(num_classes, kernel_init=linear_kernel_init,
                  bias_init=torch_bias_init(x.shape[-1]), dtype=dtype, param_dtype=jnp.float32,
                  name=name)(x)


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
  del in_features  # PyTorch takes a ConvTranspose's fan_in from weight dim 1 (out channels).
  pad = kernel - 1 - padding
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
