"""MobileNets in Flax Linen: mdistiller's ImageNet MobileNetV1 and timm's ``mobilenetv2_100``,
``mobilenetv3_large_100`` and ``mobilenetv3_small_100``.

``mobilenetv1``: mdistiller's ``mdistiller/models/imagenet/mobilenetv1.py`` (the student of its
ImageNet ResNet-50 -> MobileNetV1 pair): a 3x3/2 conv-BN-ReLU to 32 channels, 13 depthwise-
separable blocks (3x3 depthwise conv-BN-ReLU, 1x1 conv-BN-ReLU; 64, 128, 128, 256, 256, 512 x 6,
1024, 1024 channels, strides 1, 2, 1, 2, 1, 2, 1 x 5, 2, 1), global average pooling and a
linear layer. mdistiller pools with ``AvgPool2d(7)``, which equals global pooling on the 7x7 map
of a 224x224 image (and accepts nothing far from 224); here the pooling is global, so any size
works. Names follow its state dict: ``model.3.4.weight`` (block 3's second BN) is ``model_3_4``.

``mobilenetv2_100`` / ``mobilenetv3_*_100``: timm's ``EfficientNet`` / ``MobileNetV3`` layouts,
written out as block tables (``_V2``, ``_V3_LARGE``, ``_V3_SMALL``: kind, kernel, stride,
expanded width, output width, activation, squeeze-excite width), the channel counts timm's
builder computes at multiplier 1.0. Blocks: ``ds`` (depthwise conv-BN-act, [SE], 1x1 conv-BN),
``ir`` (1x1 conv-BN-act, depthwise conv-BN-act, [SE], 1x1 conv-BN), ``cn`` (1x1 conv-BN-act);
a residual when stride 1 and width unchanged. SE: mean -> 1x1 conv (bias) -> ReLU -> 1x1 conv
(bias) -> hard-sigmoid gate. V2: ReLU6 everywhere, head 1x1 conv to 1280 + BN + ReLU6, then
average pooling. V3: hard-swish stem, per-block ReLU or hard-swish, average pooling *then* the
head 1x1 conv (with bias) + hard-swish. BatchNorm eps 1e-5. Names follow timm's state dict
(``blocks.2.1.se.conv_reduce.weight`` is ``blocks_2_1/se/conv_reduce/kernel``).

Input size: all convolutions are padded, so any image size works (a map never falls below
1x1); 224x224 is the reference.

Taps (``tap_aliases()``): ``stage1`` .. ``stage4`` the last block at strides 4, 8, 16 and 32
(the blocks timm's ``features_only`` returns: V2 ``blocks.1/2/4/6``, V3-large
``blocks.1/2/4/6`` (the last is the 1x1 ``cn`` block to 960), V3-small ``blocks.0/1/3/5``;
MobileNetV1 blocks 3, 5, 11, 13, mdistiller's four features); ``pooled`` what the classifier
reads (V2: the pooled head features, V3: after the head conv + hard-swish, V1: the pooled
features); ``logits``. MobileNetV1 also has mdistiller's pre-ReLU features ``stage1_pre`` ..
``stage4_pre`` (= ``layer1_pre`` .. ``layer4_pre``, with ``layer1`` .. ``layer4``, so OFD's taps
work) and ``bn_before_relu(i)``.
"""

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdjax.layers import batch_norm
from kdjax.layers import check_input
from kdjax.layers import classifier
from kdjax.layers import torch_conv
from kdjax.layers import torch_dense
from kdjax.models.common import global_pool

# ---------------------------------------------------------------------------------------------
# mdistiller's ImageNet MobileNetV1.

# (output channels, stride) of the 13 depthwise-separable blocks model.1 .. model.13.
_V1_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1),
              (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))
_V1_STAGES = (3, 5, 11, 13)  # mdistiller's feat1..feat4: the last block at strides 4..32.


class MobileNetV1(nn.Module):
  """mdistiller's ImageNet MobileNetV1 (``blocks`` and ``stem_width`` give smaller variants)."""

  blocks: Sequence[Any] = _V1_BLOCKS
  stem_width: int = 32
  stages: Sequence[int] = _V1_STAGES
  num_classes: int = 1000
  dtype: Any = jnp.float32
  arch: str = 'mobilenetv1'

  torch_layout = 'timm'

  @nn.compact
  def __call__(self, x, train: bool = False):
    check_input(x, self.arch)
    # Convs: PyTorch's default init, no bias, padding k // 2.
    x = torch_conv(self.stem_width, 3, strides=2, padding=1, use_bias=False, dtype=self.dtype,
                   name='model_0_0')(x.astype(self.dtype))
    x = nn.relu(batch_norm(train, 'model_0_1', self.dtype)(x))
    for k, (out, stride) in enumerate(self.blocks, start=1):
      c = x.shape[-1]
      x = torch_conv(c, 3, strides=stride, padding=1, groups=c, use_bias=False, dtype=self.dtype,
                     name=f'model_{k}_0')(x)
      x = nn.relu(batch_norm(train, f'model_{k}_1', self.dtype)(x))
      x = torch_conv(out, 1, use_bias=False, dtype=self.dtype, name=f'model_{k}_3')(x)
      x = batch_norm(train, f'model_{k}_4', self.dtype)(x)
      if k in self.stages:
        i = self.stages.index(k) + 1
        self.sow('intermediates', f'stage{i}_pre', x)
      x = nn.relu(x)
      if k in self.stages:
        self.sow('intermediates', f'stage{i}', x)
    x = global_pool(self, x)
    return classifier(x, self.num_classes, self.dtype).astype(jnp.float32)

  def tap_aliases(self):
    """Friendly tap names -> intermediates paths (see the module docstring)."""
    aliases = {}
    for i in range(1, len(self.stages) + 1):
      aliases[f'stage{i}'] = aliases[f'layer{i}'] = f'stage{i}'
      aliases[f'stage{i}_pre'] = aliases[f'layer{i}_pre'] = f'stage{i}_pre'
    aliases.update(pooled='pooled', logits='fc')
    return aliases

  def bn_before_relu(self, i):
    """Params path of the BN before stage ``i``'s (1-based) final ReLU (mdistiller's
    ``get_bn_before_relu``: ``model[3][-2]``, ``model[5][-2]``, ``model[11][-2]``,
    ``model[13][-2]``)."""
    if not 1 <= i <= len(self.stages):
      raise ValueError(f'stage index {i} out of range 1..{len(self.stages)}')
    return f'model_{self.stages[i - 1]}_4'


def mobilenetv1(*, num_classes=1000, dtype=jnp.float32):
  """mdistiller's ImageNet MobileNetV1; 4,231,976 params at 1000 classes."""
  return MobileNetV1(num_classes=num_classes, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# timm MobileNetV2 / V3.

_ACTS = {
    'relu': nn.relu,
    'relu6': jax.nn.relu6,
    'hard_swish': jax.nn.hard_swish,
}

# (kind, kernel, stride, expanded width, output width, activation, SE width or 0), per stage.
_V2 = (
    (('ds', 3, 1, 0, 16, 'relu6', 0),),
    (('ir', 3, 2, 96, 24, 'relu6', 0), ('ir', 3, 1, 144, 24, 'relu6', 0)),
    (('ir', 3, 2, 144, 32, 'relu6', 0),) + (('ir', 3, 1, 192, 32, 'relu6', 0),) * 2,
    (('ir', 3, 2, 192, 64, 'relu6', 0),) + (('ir', 3, 1, 384, 64, 'relu6', 0),) * 3,
    (('ir', 3, 1, 384, 96, 'relu6', 0),) + (('ir', 3, 1, 576, 96, 'relu6', 0),) * 2,
    (('ir', 3, 2, 576, 160, 'relu6', 0),) + (('ir', 3, 1, 960, 160, 'relu6', 0),) * 2,
    (('ir', 3, 1, 960, 320, 'relu6', 0),),
)
_V3_LARGE = (
    (('ds', 3, 1, 0, 16, 'relu', 0),),
    (('ir', 3, 2, 64, 24, 'relu', 0), ('ir', 3, 1, 72, 24, 'relu', 0)),
    (('ir', 5, 2, 72, 40, 'relu', 24),) + (('ir', 5, 1, 120, 40, 'relu', 32),) * 2,
    (('ir', 3, 2, 240, 80, 'hard_swish', 0), ('ir', 3, 1, 200, 80, 'hard_swish', 0)) +
    (('ir', 3, 1, 184, 80, 'hard_swish', 0),) * 2,
    (('ir', 3, 1, 480, 112, 'hard_swish', 120), ('ir', 3, 1, 672, 112, 'hard_swish', 168)),
    (('ir', 5, 2, 672, 160, 'hard_swish', 168),) + (('ir', 5, 1, 960, 160, 'hard_swish', 240),) * 2,
    (('cn', 1, 1, 0, 960, 'hard_swish', 0),),
)
_V3_SMALL = (
    (('ds', 3, 2, 0, 16, 'relu', 8),),
    (('ir', 3, 2, 72, 24, 'relu', 0), ('ir', 3, 1, 88, 24, 'relu', 0)),
    (('ir', 5, 2, 96, 40, 'hard_swish', 24),) + (('ir', 5, 1, 240, 40, 'hard_swish', 64),) * 2,
    (('ir', 5, 1, 120, 48, 'hard_swish', 32), ('ir', 5, 1, 144, 48, 'hard_swish', 40)),
    (('ir', 5, 2, 288, 96, 'hard_swish', 72),) + (('ir', 5, 1, 576, 96, 'hard_swish', 144),) * 2,
    (('cn', 1, 1, 0, 576, 'hard_swish', 0),),
)


def _goog_conv_init(groups):
  """timm's EfficientNet conv init: N(0, sqrt(2 / fan_out)), fan_out = k * k * out / groups."""
  def init(key, shape, dtype=jnp.float32):
    fan_out = shape[0] * shape[1] * shape[3] // groups
    return jax.random.normal(key, shape, dtype) * math.sqrt(2.0 / fan_out)
  return init


def _conv(features, kernel, strides, name, dtype, *, groups=1, use_bias=False):
  pad = ((strides - 1) + (kernel - 1)) // 2  # timm's static 'same'-like symmetric padding.
  return torch_conv(features, kernel, strides=strides, padding=pad, groups=groups,
                    use_bias=use_bias, kernel_init=_goog_conv_init(groups),
                    bias_init=nn.initializers.zeros, dtype=dtype, name=name)


class SqueezeExcite(nn.Module):
  """timm ``SqueezeExcite``: x * hard_sigmoid(conv_expand(relu(conv_reduce(mean(x)))))."""

  reduced: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    s = jnp.mean(x, axis=(1, 2), keepdims=True)
    s = nn.relu(_conv(self.reduced, 1, 1, 'conv_reduce', self.dtype, use_bias=True)(s))
    s = _conv(x.shape[-1], 1, 1, 'conv_expand', self.dtype, use_bias=True)(s)
    return x * jax.nn.hard_sigmoid(s)


class MobileBlock(nn.Module):
  """timm ``DepthwiseSeparableConv`` ('ds'), ``InvertedResidual`` ('ir') or ``ConvBnAct``
  ('cn')."""

  kind: str
  kernel: int
  stride: int
  mid: int
  out: int
  act: str
  se: int = 0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    act = _ACTS[self.act]
    shortcut = x
    c = x.shape[-1]
    if self.kind == 'cn':
      x = _conv(self.out, self.kernel, self.stride, 'conv', self.dtype)(x)
      return act(batch_norm(train, 'bn1', self.dtype)(x))
    if self.kind == 'ds':
      x = _conv(c, self.kernel, self.stride, 'conv_dw', self.dtype, groups=c)(x)
      x = act(batch_norm(train, 'bn1', self.dtype)(x))
      if self.se:
        x = SqueezeExcite(self.se, self.dtype, name='se')(x)
      x = _conv(self.out, 1, 1, 'conv_pw', self.dtype)(x)
      x = batch_norm(train, 'bn2', self.dtype)(x)
    else:
      x = _conv(self.mid, 1, 1, 'conv_pw', self.dtype)(x)
      x = act(batch_norm(train, 'bn1', self.dtype)(x))
      x = _conv(self.mid, self.kernel, self.stride, 'conv_dw', self.dtype, groups=self.mid)(x)
      x = act(batch_norm(train, 'bn2', self.dtype)(x))
      if self.se:
        x = SqueezeExcite(self.se, self.dtype, name='se')(x)
      x = _conv(self.out, 1, 1, 'conv_pwl', self.dtype)(x)
      x = batch_norm(train, 'bn3', self.dtype)(x)
    if self.stride == 1 and c == self.out:
      x = x + shortcut
    return x


def _stage_ends(stem_stride, table):
  """The ``blocks_i_j`` paths of the last block at each of the last four strides."""
  stride, last = stem_stride, {}
  for i, stage in enumerate(table):
    for j, block in enumerate(stage):
      stride *= block[2]
      last[stride] = f'blocks_{i}_{j}'
  strides = sorted(last)[-4:]
  return tuple(last[s] for s in strides)


def _goog_linear_init(key, shape, dtype=jnp.float32):
  bound = 1.0 / math.sqrt(shape[1])  # timm: U(+-1/sqrt(fan_out)), fan_out = classes.
  return jax.random.uniform(key, shape, dtype, -bound, bound)


class MobileNetV3(nn.Module):
  """timm ``MobileNetV3`` (``version=3``: pool, then head conv) or ``EfficientNet``-layout
  MobileNetV2 (``version=2``: head conv + BN, then pool)."""

  table: Sequence[Any] = _V3_LARGE
  stem_width: int = 16
  stem_act: str = 'hard_swish'
  head_width: int = 1280
  version: int = 3
  num_classes: int = 1000
  dtype: Any = jnp.float32
  arch: str = 'mobilenetv3'

  torch_layout = 'timm'

  @nn.compact
  def __call__(self, x, train: bool = False):
    check_input(x, self.arch)
    x = _conv(self.stem_width, 3, 2, 'conv_stem', self.dtype)(x.astype(self.dtype))
    x = _ACTS[self.stem_act](batch_norm(train, 'bn1', self.dtype)(x))
    for i, stage in enumerate(self.table):
      for j, spec in enumerate(stage):
        x = MobileBlock(*spec, dtype=self.dtype, name=f'blocks_{i}_{j}')(x, train)
    if self.version == 2:
      x = _conv(self.head_width, 1, 1, 'conv_head', self.dtype)(x)
      x = jax.nn.relu6(batch_norm(train, 'bn2', self.dtype)(x))
      x = jnp.mean(x, axis=(1, 2))
    else:
      x = jnp.mean(x, axis=(1, 2), keepdims=True)
      x = _conv(self.head_width, 1, 1, 'conv_head', self.dtype, use_bias=True)(x)
      x = jax.nn.hard_swish(x).reshape(x.shape[0], -1)
    self.sow('intermediates', 'pooled', x)
    logits = torch_dense(self.num_classes, kernel_init=_goog_linear_init,
                         bias_init=nn.initializers.zeros, dtype=self.dtype, name='classifier')(x)
    return logits.astype(jnp.float32)

  def tap_aliases(self):
    """Friendly tap names -> intermediates paths (see the module docstring)."""
    ends = _stage_ends(2, self.table)
    aliases = {f'stage{i + 1}': path for i, path in enumerate(ends)}
    aliases.update(pooled='pooled', logits='classifier')
    return aliases


def mobilenetv2_100(*, num_classes=1000, dtype=jnp.float32):
  """timm mobilenetv2_100 (EfficientNet layout, ReLU6, head 1280)."""
  return MobileNetV3(_V2, 32, 'relu6', 1280, 2, num_classes=num_classes, dtype=dtype,
                     arch='mobilenetv2_100')


def mobilenetv3_large_100(*, num_classes=1000, dtype=jnp.float32):
  """timm mobilenetv3_large_100 (hard-swish, SE with hard-sigmoid gates, head 1280)."""
  return MobileNetV3(_V3_LARGE, 16, 'hard_swish', 1280, 3, num_classes=num_classes, dtype=dtype,
                     arch='mobilenetv3_large_100')


def mobilenetv3_small_100(*, num_classes=1000, dtype=jnp.float32):
  """timm mobilenetv3_small_100 (hard-swish, SE with hard-sigmoid gates, head 1024)."""
  return MobileNetV3(_V3_SMALL, 16, 'hard_swish', 1024, 3, num_classes=num_classes, dtype=dtype,
                     arch='mobilenetv3_small_100')


MODELS = {
    'mobilenetv1': mobilenetv1,
    'mobilenetv2_100': mobilenetv2_100,
    'mobilenetv3_large_100': mobilenetv3_large_100,
    'mobilenetv3_small_100': mobilenetv3_small_100,
}
