"""OFA-KD, Hao et al. NeurIPS 2023 (docs/methods.md#ofa): one-for-all distillation between
heterogeneous architectures (CNN, ViT, MLP).

The student's intermediate features are projected into the logit space by a trainable branch
per chosen stage; each branch's logits, and the student's own logits, are pulled towards the
teacher's logits with the OFA loss (`kdjax.losses.ofa`, target-enhanced soft cross-entropy).
Only logits are compared, so the teacher's architecture never matters.

Branches, as OFAKD's `distillers/ofa.py` builds them (d_s, d_t: the student's and the
teacher's final feature widths, i.e. their `pooled` taps):
  * CNN student, stage s < 4: 4 - s `SepConv` blocks (each halves H and W; channels double,
    the last gives max(d_s, d_t)); stage 4: a 1x1 conv to max(d_s, d_t). Then global average
    pooling and a linear layer to the classes.
  * token student (ViT, Swin, MLP-Mixer, ResMLP): patch merging (2x2 -> 1, LayerNorm, linear)
    down to a 7x7 grid, max(4 - s, 1) transformer blocks of 4 heads at width d_s, then the
    class token (the mean token when the features carry none) and a linear layer.
The branches are the term's connector: trained with the student, checkpointed, never exported.
"""

import math
from typing import NamedTuple

import flax.linen as nn
import jax.numpy as jnp

from kdjax import losses
from kdjax.errors import KdjaxError
from kdjax.layers import attention
from kdjax.layers import batch_norm
from kdjax.layers import conv
from kdjax.layers import conv_kernel_init
from kdjax.layers import gelu
from kdjax.layers import layer_norm
from kdjax.layers import Mlp
from kdjax.layers import TIMM_INIT
from kdjax.layers import torch_conv
from kdjax.layers import torch_dense
from kdjax.layers import trunc_normal_02
from kdjax.methods.registry import Method
from kdjax.methods.registry import register

# The grid the token branches merge down to (7x7 = 49 patches, as OFAKD's `final_patch_grid`).
FINAL_GRID = 7
# LayerNorm eps of the branches: PyTorch's default (timm's `Block` and OFAKD's PatchMerging use
# nn.LayerNorm without an eps).
BRANCH_LN_EPS = 1e-5


class Branches(NamedTuple):
  logits: tuple   # one [B, K] per stage, in `stages` order


class SepConv(nn.Module):
  """OFAKD's `SepConv`, halving H and W: 3x3/2 depthwise, 1x1, BN, ReLU, 3x3 depthwise, 1x1 to
  `features`, BN, ReLU. Convs bias-free with kaiming fan_out init (OFAKD's `init_weights`)."""
  features: int

  @nn.compact
  def __call__(self, x, train):
    c = x.shape[-1]
    x = conv(c, 3, 2, 1, 'dw1', None, groups=c)(x)
    x = conv(c, 1, 1, 0, 'pw1', None)(x)
    x = nn.relu(batch_norm(train, 'bn1', None)(x))
    x = conv(c, 3, 1, 1, 'dw2', None, groups=c)(x)
    x = conv(self.features, 1, 1, 0, 'pw2', None)(x)
    return nn.relu(batch_norm(train, 'bn2', None)(x))


class CnnBranch(nn.Module):
  """Stage `stage` NHWC map `[B, H, W, C]` -> logits `[B, num_classes]` (see the module doc)."""
  stage: int
  width: int        # max(d_s, d_t)
  num_classes: int

  @nn.compact
  def __call__(self, x, train):
    channels = x.shape[-1]
    if self.stage < 4:
      blocks = 4 - self.stage
      for i in range(blocks):
        x = SepConv(self.width if i == blocks - 1 else 2 * channels, name=f'sepconv{i}')(x, train)
        channels *= 2
    else:
      x = torch_conv(self.width, 1, kernel_init=conv_kernel_init, in_features=channels,
                     name='conv')(x)
    return torch_dense(self.num_classes, **TIMM_INIT, name='head')(jnp.mean(x, axis=(1, 2)))


class PatchMerging(nn.Module):
  """Swin-style merging of each 2x2 patch group: `[B, H*W, C]` -> `[B, H/2*W/2, out]` by
  concatenating (0,0), (1,0), (0,1), (1,1), LayerNorm(4C), a bias-free linear, and GELU when
  `act`."""
  out: int
  grid: tuple
  act: bool

  @nn.compact
  def __call__(self, x):
    (b, _, c), (h, w) = x.shape, self.grid
    x = x.reshape(b, h, w, c)
    x = jnp.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]],
                        axis=-1).reshape(b, -1, 4 * c)
    x = layer_norm(BRANCH_LN_EPS, 'norm', None)(x)
    x = torch_dense(self.out, use_bias=False, kernel_init=trunc_normal_02, name='reduction')(x)
    return gelu(x) if self.act else x


class BranchBlock(nn.Module):
  """timm's transformer `Block` with its constructor defaults (what OFAKD instantiates):
  pre-norm, LayerNorm eps 1e-5, fused qkv without bias, MLP ratio 4, exact GELU."""
  dim: int
  num_heads: int

  @nn.compact
  def __call__(self, x):
    qkv = torch_dense(3 * self.dim, use_bias=False, kernel_init=trunc_normal_02, name='qkv')(
        layer_norm(BRANCH_LN_EPS, 'norm1', None)(x))
    x = x + torch_dense(self.dim, **TIMM_INIT, name='proj')(
        attention(qkv, self.num_heads, jnp.float32))
    return x + Mlp(4 * self.dim, self.dim, name='mlp')(layer_norm(BRANCH_LN_EPS, 'norm2', None)(x))


class TokenBranch(nn.Module):
  """Stage `stage` tokens `[B, prefix + H*W, D]` (or an NHWC grid) -> logits `[B, K]`."""
  stage: int
  width: int        # d_s
  num_classes: int
  prefix: int       # class/distillation tokens in front of the patch tokens
  grid: tuple       # (H, W) of the patch tokens
  num_heads: int = 4

  @nn.compact
  def __call__(self, x, train):
    del train
    if x.ndim == 4:
      x = x.reshape(x.shape[0], -1, x.shape[-1])
    extra, x = x[:, :self.prefix], x[:, self.prefix:]
    merges = merge_count(self.grid)
    grid = self.grid
    for i in range(merges):
      # The first merge projects to d_s; the last has no activation (unless it is the first).
      x = PatchMerging(self.width, grid, act=i == 0 or i != merges - 1, name=f'merge{i}')(x)
      grid = (grid[0] // 2, grid[1] // 2)
    x = jnp.concatenate([extra, x], axis=1)
    for i in range(max(4 - self.stage, 1)):
      x = BranchBlock(self.width, self.num_heads, name=f'block{i}')(x)
    feature = x[:, 0] if self.prefix else jnp.mean(x, axis=1)
    return torch_dense(self.num_classes, **TIMM_INIT, name='head')(feature)


def merge_count(grid) -> int:
  """OFAKD's number of 2x2 merges for a patch grid: max(floor(log2(side / 7)), 0)."""
  return max(int(math.log2(grid[0] / FINAL_GRID)), 0)


class OfaBranches(nn.Module):
  """The OFA connector: one branch per chosen stage, from the student's tapped features."""
  branches: tuple   # ((kind, kwargs), ...) per stage

  @nn.compact
  def __call__(self, student, teacher, train, batch=None):
    del teacher, batch
    kinds = {'cnn': CnnBranch, 'tokens': TokenBranch}
    return Branches(tuple(
        kinds[kind](**kwargs, name=f"stage{kwargs['stage']}")(feature, train)
        for (kind, kwargs), feature in zip(self.branches, student[1:])))


def _branch_spec(kind, stage, shape, *, d_s, d_t, num_classes, term):
  """The (module kind, arguments) of one stage's branch from its tapped shape."""
  if kind == 'cnn':
    if len(shape) != 4:
      raise KdjaxError(f'losses.{term}: stage {stage} is tapped as {tuple(shape)}; a CNN branch '
                       'needs an NHWC map (tap stage1..stage4)')
    return 'cnn', dict(stage=stage, width=max(d_s, d_t), num_classes=num_classes)
  if len(shape) == 4:
    prefix, grid, dim = 0, tuple(shape[1:3]), shape[3]
  else:
    side = math.isqrt(shape[1])
    prefix, grid, dim = shape[1] - side * side, (side, side), shape[2]
  merges = merge_count(grid)
  if merges and (grid[0] % 2 ** merges or grid[1] % 2 ** merges):
    raise KdjaxError(f'losses.{term}: the {grid[0]}x{grid[1]} patch grid of stage {stage} cannot '
                     f'be merged {merges} time(s) by 2x2; tap another stage')
  if prefix and dim != d_s:
    raise KdjaxError(f'losses.{term}: stage {stage} has {prefix} class token(s) of width {dim} '
                     f'but the student pools at width {d_s}; tap a stage without them')
  return 'tokens', dict(stage=stage, width=d_s, num_classes=num_classes, prefix=prefix, grid=grid)


def _connector(ctx, student, teacher, *, branch):
  """One branch per stage; 'auto' = token branches for token models (those with a `tokens`
  tap: ViT, Swin, Mixer, ResMLP), CNN branches otherwise."""
  stages = ctx.term_taps['stages']
  if branch == 'auto':
    branch = 'tokens' if 'tokens' in ctx.student.tap_aliases() else 'cnn'
  if branch not in ('cnn', 'tokens'):
    raise KdjaxError(f"losses.{ctx.term}.branch must be 'auto', 'cnn' or 'tokens', got "
                     f"'{branch}'")
  d_s = ctx.tap_shape('student', 'pooled').shape[-1]
  d_t = ctx.tap_shape('teacher', 'pooled').shape[-1]
  num_classes = teacher[0].shape[-1]
  return OfaBranches(tuple(
      _branch_spec(branch, stage, feature.shape, d_s=d_s, d_t=d_t, num_classes=num_classes,
                   term=ctx.term) for stage, feature in zip(stages, student[1:])))


def _reads(stages, student_taps):
  stages = tuple(int(s) for s in stages)
  if any(s not in (1, 2, 3, 4) for s in stages) or len(set(stages)) != len(stages):
    raise KdjaxError(f'ofa stages must be distinct numbers among 1..4, got {stages}')
  if student_taps and len(student_taps) != len(stages):
    raise KdjaxError(f'ofa student_taps {tuple(student_taps)} must name one tap per stage '
                     f'{stages}')
  taps = tuple(student_taps) or tuple(f'stage{s}' for s in stages)
  return {'student': ('logits',) + taps, 'teacher': ('logits',)}


def targets(labels, teacher_logits, unlabeled):
  """The target class per example: the label, or for unlabeled rows (-1) the teacher's argmax
  when `unlabeled='teacher'` (with 'skip' they stay -1 and the OFA loss leaves them out)."""
  if unlabeled == 'skip' or labels.ndim != 1:
    return labels
  if unlabeled != 'teacher':
    raise KdjaxError(f"ofa unlabeled must be 'skip' or 'teacher', got '{unlabeled}'")
  return jnp.where(labels >= 0, labels, jnp.argmax(teacher_logits, axis=-1).astype(labels.dtype))


def _loss(x, *, temperature, eps, stage_eps, branch_weight, unlabeled):
  r"""branch_weight * sum_s OFA(branch_s, z_t; eps_s) + OFA(z_s, z_t; eps), the OFA loss of
  `kdjax.losses.ofa`; eps_s = stage_eps[s] (eps when stage_eps is empty)."""
  student_logits, teacher_logits = x.student[0], x.teacher[0]
  branches = x.connector.logits if x.connector is not None else ()
  per_stage = tuple(stage_eps) or (eps,) * len(branches)
  if len(per_stage) != len(branches):
    raise KdjaxError(f'ofa stage_eps {tuple(stage_eps)} must give one eps per stage '
                     f'({len(branches)})')
  labels = targets(x.labels, teacher_logits, unlabeled)
  ofa = lambda z, e: losses.ofa(z, teacher_logits, labels, temperature=temperature, eps=e)
  total = ofa(student_logits, eps)
  if branches:
    total = total + branch_weight * sum(ofa(z, e) for z, e in zip(branches, per_stage))
  return total


def _maybe_connector(ctx, student, teacher, **hparams):
  return _connector(ctx, student, teacher, **hparams) if len(student) > 1 else None


OFA = register(Method(
    name='ofa', doc='Hao et al. NeurIPS 2023: OFA-KD, stage branches to the logit space and '
                    'the target-enhanced OFA loss (exponent eps)',
    taps=dict(stages=(1, 2, 3, 4), student_taps=()),
    reads=_reads,
    hparams=dict(temperature=1.0, eps=1.0, stage_eps=(), branch_weight=1.0, unlabeled='skip'),
    connector=_maybe_connector,
    connector_hparams=dict(branch='auto'),
    loss=_loss))
