"""Wasserstein-distance KD, Lv, Yang and Li, NeurIPS 2024 (docs/methods.md#wkd_l, #wkd_f).

Three terms, as the reference combines them (JiamingLv/WKD `mdistiller/distillers/WKD.py`):

  * `wkd_target`: the teacher's target probability times the student's target log-probability
    (weight 1 in the reference);
  * `wkd_l`: the entropic Wasserstein distance between the non-target distributions, over a
    class-to-class cost matrix computed once at set-up (`constants`): from a file (the
    reference's CKA matrices) or from the teacher's classifier weights (`'fc'`);
  * `wkd_f`: Gaussian (mean / standard deviation) matching of one feature map after a trainable
    projector (connector).

The reference decays the weights of `wkd_l` and `wkd_f` (not `wkd_target`) with a cosine per
epoch; `cosine_decay_schedule` writes that as a `weight_schedule`.
"""

import math
import os
from typing import NamedTuple

import flax.linen as nn
import jax
import numpy as np

from kdjax import losses
from kdjax.errors import KdjaxError
from kdjax.layers import batch_norm
from kdjax.layers import torch_conv
from kdjax.methods.fitnet import ConvReg
from kdjax.methods.registry import Method
from kdjax.methods.registry import logits
from kdjax.methods.registry import register

# Where the reference's cost matrices are (paths inside JiamingLv/WKD, for error messages).
REFERENCE_COST_FILES = {
    'imagenet2012 resnet34': 'wkd_cost_matrix/imagenet/ResNet34/logit_linear_cka.pth',
    'imagenet2012 resnet50': 'wkd_cost_matrix/imagenet/ResNet50/logit_linear_cka.pth',
    'cifar100 resnet32x4': 'wkd_cost_matrix/cifar100/resnet32x4/linear_cka.pth',
    'cifar100 wrn_40_2': 'wkd_cost_matrix/cifar100/wrn_40_2/linear_cka.pth',
}
TORCH_SUFFIXES = ('.pth', '.pt')


def cosine_decay_schedule(weight: float, *, start_epoch: int, num_epochs: int) -> tuple:
  """The reference's per-epoch cosine decay of a term weight, as a `weight_schedule`.

  In 1-based epoch `e > start_epoch` the reference uses
  `0.5 * weight * (1 + cos(pi * (e - start_epoch) / (num_epochs - start_epoch)))` (so the last
  epoch has weight 0), and `weight` before. kdjax's schedule is keyed by 0-based epochs, so the
  pair for epoch `e` is `(e - 1, w(e))`.
  """
  span = num_epochs - start_epoch
  if span <= 0:
    raise ValueError(f'cosine_decay_schedule: start_epoch {start_epoch} must be below '
                     f'num_epochs {num_epochs}')
  return tuple((float(e - 1), 0.5 * weight * (1.0 + math.cos(math.pi * (e - start_epoch) / span)))
               for e in range(start_epoch + 1, num_epochs + 1))


# --------------------------------------------------------------------------- the cost matrix


def prototype_cost(prototypes) -> np.ndarray:
  """`1 - cos` between class prototypes `[K, D]` (the reference's `'fc'` cost: rows of the
  teacher's classifier weight), in float64; rows normalised as `F.normalize` (eps 1e-12)."""
  p = np.asarray(prototypes, np.float64)
  p = p / np.maximum(np.linalg.norm(p, axis=-1, keepdims=True), 1e-12)
  return 1.0 - p @ p.T


def sharpen_cost(cost, sharpen: float) -> np.ndarray:
  """The reference's `COST_MATRIX_SHARPEN`: `1 - exp(-sharpen * cost)`; 0 leaves it as it is."""
  cost = np.asarray(cost, np.float64)
  return cost if sharpen == 0 else 1.0 - np.exp(-sharpen * cost)


def _classifier_prototypes(ctx):
  from kdjax import torch_import  # pylint: disable=g-import-not-at-top  (a heavy module)
  if ctx.teacher is None or ctx.teacher_variables is None:
    raise KdjaxError(f"losses.{ctx.term}.cost_matrix='fc' reads the teacher's classifier, but "
                     'this run has no teacher')
  node = ctx.teacher_variables['params']
  path = torch_import.classifier_module(ctx.teacher)
  for part in path:
    if part not in node:
      raise KdjaxError(f"losses.{ctx.term}.cost_matrix='fc': the teacher has no classifier at "
                       f"params/{'/'.join(path)}; give a cost matrix file instead")
    node = node[part]
  return np.asarray(node['kernel'], np.float64).T  # Dense kernel [D, K] -> prototypes [K, D]


def load_cost_file(path: str, *, config_key: str) -> np.ndarray:
  """A `[K, K]` cost matrix from `.npy`, or from `.pth`/`.pt` (a saved tensor; needs torch)."""
  if not os.path.isfile(path):
    known = '; '.join(f'{k}: {v}' for k, v in REFERENCE_COST_FILES.items())
    raise KdjaxError(f"{config_key} '{path}' is not a file. Download the reference's matrix "
                     f'from github.com/JiamingLv/WKD ({known}), save a [K, K] .npy, or set '
                     f"{config_key}=fc (1 - cosine of the teacher's classifier weights)")
  if path.endswith('.npy'):
    return np.asarray(np.load(path), np.float64)
  if path.endswith(TORCH_SUFFIXES):
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise KdjaxError(f"reading {config_key} '{path}' needs PyTorch (pip install torch), or "
                       'convert it once: np.save(path, torch.load(file).cpu().numpy())') from e
    try:
      tensor = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # pylint: disable=broad-except  A pickle error or a truncated zip.
      raise KdjaxError(f"{config_key} '{path}' could not be read with torch.load: "
                       f'{str(e).splitlines()[0] if str(e) else type(e).__name__}') from e
    return np.asarray(tensor.detach().cpu().double().numpy())
  raise KdjaxError(f"{config_key} '{path}' must end in .npy, .pth or .pt (or be 'fc')")


def _cost_constant(ctx, *, cost_matrix, cost_sharpen):
  """The term's `[K, K]` float32 cost, computed once at set-up."""
  key = f'losses.{ctx.term}.cost_matrix'
  if cost_matrix == 'fc':
    cost = prototype_cost(_classifier_prototypes(ctx))
  elif cost_matrix:
    cost = load_cost_file(os.path.expanduser(str(cost_matrix)), config_key=key)
  else:
    raise KdjaxError(f"{key} is empty; give a [K, K] cost file (.npy, .pth) or 'fc'")
  if cost.ndim != 2 or cost.shape[0] != cost.shape[1]:
    raise KdjaxError(f'{key}: the cost matrix must be square [K, K], got shape {cost.shape}')
  if ctx.shapes is not None:
    classes = ctx.tap_shape('teacher', 'logits').shape[-1]
    if cost.shape[0] != classes:
      raise KdjaxError(f'{key}: the cost matrix is {cost.shape[0]}x{cost.shape[1]} but the '
                       f'teacher has {classes} classes; use the matrix of this dataset')
  if not np.all(np.isfinite(cost)):
    raise KdjaxError(f'{key}: the cost matrix has non-finite entries')
  return {'cost_matrix': sharpen_cost(cost, float(cost_sharpen)).astype(np.float32)}


def _wkd_l_loss(x, *, temperature, sinkhorn_reg, sinkhorn_iters, cost_matrix):
  if not sinkhorn_reg > 0 or int(sinkhorn_iters) != sinkhorn_iters or sinkhorn_iters < 1:
    raise KdjaxError(f'wkd_l needs sinkhorn_reg > 0 and an integer sinkhorn_iters >= 1, got '
                     f'{sinkhorn_reg} and {sinkhorn_iters}')
  return losses.wkd_l(*x.student, *x.teacher, x.labels, cost_matrix, temperature=temperature,
                      sinkhorn_reg=sinkhorn_reg, sinkhorn_iters=int(sinkhorn_iters))


# `cost_matrix` and `cost_sharpen` are `taps` (what the term reads: a file or the teacher's
# classifier) because `constants` receives the taps; they never reach the loss itself.
WKD_L = register(Method(
    name='wkd_l', doc='WKD-L: entropic Wasserstein distance between non-target distributions',
    taps=dict(cost_matrix='fc', cost_sharpen=1.0),
    reads=lambda cost_matrix, cost_sharpen: logits(),
    hparams=dict(temperature=2.0, sinkhorn_reg=0.05, sinkhorn_iters=10),
    constants=_cost_constant, loss=_wkd_l_loss))

WKD_TARGET = register(Method(
    name='wkd_target', doc="WKD-L's target-class term: -p_t[y] log p_s[y]",
    loss=lambda x: losses.wkd_target(*x.student, *x.teacher, x.labels)))


# --------------------------------------------------------------------------- WKD-F


class Projected(NamedTuple):
  feat: jax.Array   # the projected student map, shaped like the teacher's [B, H, W, C_t]


class BottleneckProjector(nn.Module):
  """The reference's `ConvRegBottleNeck` (equal grids): conv 1x1 C_s -> hidden, conv 3x3 pad 1
  hidden -> hidden, conv 1x1 hidden -> C_t (all with bias, PyTorch default init), BN, ReLU.
  Other grids: the student map is first resized to the teacher's (`losses.resize_to_grid`), a
  kdjax extension (the reference raises there)."""
  student_shape: tuple   # (H, W, C)
  teacher_shape: tuple
  hidden: int

  @nn.compact
  def __call__(self, x, train):
    (hs, ws, cs), (ht, wt, ct) = self.student_shape, self.teacher_shape
    if (hs, ws) != (ht, wt):
      x = losses.resize_to_grid(x, (ht, wt))
    x = torch_conv(self.hidden, 1, in_features=cs, name='conv1')(x)
    x = torch_conv(self.hidden, 3, padding=1, in_features=self.hidden, name='conv2')(x)
    x = torch_conv(ct, 1, in_features=self.hidden, name='conv3')(x)
    return nn.relu(batch_norm(train, 'bn', None)(x))


class WKDProjector(nn.Module):
  """WKD-F's connector: `'bottleneck'` (reference default, ImageNet) or `'conv1x1'`
  (mdistiller's ConvReg with BN + ReLU, the reference's CIFAR-100 setting)."""
  student_shape: tuple
  teacher_shape: tuple
  projector: str
  hidden: int

  @nn.compact
  def __call__(self, student, teacher, train, batch=None):
    del teacher, batch
    if self.projector == 'bottleneck':
      module = BottleneckProjector(self.student_shape, self.teacher_shape, self.hidden,
                                   name='projector')
    else:
      module = ConvReg(self.student_shape, self.teacher_shape, name='projector')
    return Projected(module(student[0], train))


def _projector(ctx, student, teacher, *, projector, hidden_channels):
  for network, shape in (('student', student[0]), ('teacher', teacher[0])):
    if len(shape.shape) != 4:
      raise KdjaxError(f'losses.{ctx.term}: WKD-F matches NHWC maps [B, H, W, C], but the '
                       f'{network} tap is {tuple(shape.shape)}; tap a stage (stage1..stage4)')
  if projector not in ('bottleneck', 'conv1x1'):
    raise KdjaxError(f"losses.{ctx.term}.projector must be 'bottleneck' or 'conv1x1', "
                     f'got {projector!r}')
  return WKDProjector(student_shape=tuple(student[0].shape[1:]),
                      teacher_shape=tuple(teacher[0].shape[1:]), projector=projector,
                      hidden=int(hidden_channels))


def _wkd_f_loss(x, *, mean_weight, eps, grid):
  if int(grid) != grid or grid < 1:
    raise KdjaxError(f'wkd_f needs an integer grid >= 1, got {grid}')
  return losses.wkd_f(x.connector.feat, *x.teacher, mean_weight=mean_weight, eps=eps,
                      grid=int(grid))


WKD_F = register(Method(
    name='wkd_f', doc='WKD-F: Wasserstein matching of per-channel Gaussians of a projected map',
    taps=dict(student_tap='stage4', teacher_tap='stage4'),
    reads=lambda student_tap, teacher_tap: {'student': (student_tap,),
                                            'teacher': (teacher_tap,)},
    hparams=dict(mean_weight=2.0, eps=1e-5, grid=4),
    connector=_projector, connector_hparams=dict(projector='bottleneck', hidden_channels=256),
    loss=_wkd_f_loss))
