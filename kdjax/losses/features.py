"""Feature-based distillation losses (docs/methods.md: at, nst, fitnet, ofd, mgd, pefd, udml,
reviewkd, afd, crd, wkd_f).

Pure functions: positional arrays first, keyword-only hyperparameters after; every function upcasts
to float32, wraps the teacher inputs in ``jax.lax.stop_gradient``, and returns a float32 scalar
reduced the way the reference reduces it (docs/methods.md#reductions), with no loss weight.
Feature maps are NHWC ``[B, H, W, C]``; pooled features / embeddings ``[B, D]``. Learnable
connectors (regressors, generators, projectors, embeddings, attention modules) are modules of the
methods that use them: the functions here receive their outputs.

``similarity_preserving`` is defined in :mod:`kdjax.losses.relations` and re-exported here, so both
``kdjax.losses.features.similarity_preserving`` and ``kdjax.losses.relations.similarity_preserving``
work.
"""

from collections.abc import Sequence
import logging
import math

import jax
import jax.numpy as jnp
import numpy as np
import scipy.special

from kdjax.losses._numerics import as_f32, l2_normalize, safe_norm
from kdjax.losses.pooling import adaptive_avg_pool2d
from kdjax.losses.pooling import adaptive_pool_windows
from kdjax.losses.relations import similarity_preserving  # noqa: F401  (re-export, see module doc)

_HIGHEST = jax.lax.Precision.HIGHEST
_sg = jax.lax.stop_gradient

__all__ = [
    'afd', 'afd_attention', 'attention_transfer', 'crd', 'crd_nce', 'crd_normalization_constant',
    'crd_scores', 'fitnet', 'hcl', 'mgd', 'mgd_mask', 'nst', 'ofd', 'ofd_margin', 'pefd',
    'similarity_preserving', 'wkd_f', 'wkd_f_parts',
]


def _check_nhwc(name, *xs):
  for x in xs:
    if x.ndim != 4:
      raise ValueError(f'{name} expects NHWC feature maps [B,H,W,C], got shape {x.shape}; for '
                       'token models tap a stage (stage1..stage4: the tokens on their patch '
                       'grid), not tokens.')


def _match_square(f_s, f_t, name):
  """AT / NST size rule of mdistiller: pool the larger map to the smaller map's ``(H, H)``.

  Maps of different families (a ViT's patch grid against a CNN stage) use the same rule. A
  non-square pair that the reference rule cannot match (it fails there) is matched axis by
  axis instead: each map is pooled to ``(min(H_s, H_t), min(W_s, W_t))``.
  """
  h_s, h_t = f_s.shape[1], f_t.shape[1]
  if h_s > h_t:
    pooled_s, pooled_t = adaptive_avg_pool2d(f_s, (h_t, h_t)), f_t
  elif h_s < h_t:
    pooled_s, pooled_t = f_s, adaptive_avg_pool2d(f_t, (h_s, h_s))
  else:
    pooled_s, pooled_t = f_s, f_t
  if pooled_s.shape[1:3] != pooled_t.shape[1:3]:
    size = (min(h_s, h_t), min(f_s.shape[2], f_t.shape[2]))
    pooled_s, pooled_t = adaptive_avg_pool2d(f_s, size), adaptive_avg_pool2d(f_t, size)
  if pooled_s.shape[:3] != pooled_t.shape[:3]:
    raise ValueError(f'{name}: student map {f_s.shape} and teacher map {f_t.shape} do not have '
                     'the same batch size.')
  return pooled_s, pooled_t


def _abs_pow(x, p):
  """``x ** p`` for even integer ``p`` (as the reference), ``|x| ** p`` otherwise."""
  if float(p).is_integer() and int(p) % 2 == 0:
    return jax.lax.integer_pow(x, int(p))
  return jnp.abs(x) ** p


# ------------------------------------------------------------------------------------------------
# AT
# ------------------------------------------------------------------------------------------------


def _attention_map(f, p):
  """``l2n_over_HW(mean_c F^p)``: ``[B, H, W, C] -> [B, H*W]``."""
  a = jnp.mean(_abs_pow(f, p), axis=-1)
  return l2_normalize(a.reshape(a.shape[0], -1), axis=-1)


def attention_transfer(student_feat: jax.Array, teacher_feat: jax.Array, *, p: float = 2
                       ) -> jax.Array:
  """Attention Transfer loss for one feature pair.

  ::

    a(F)  = l2_normalize_over_HW( mean_c F[b,h,w,c]^p )                 [B, H*W]
    if H_s > H_t: F_s <- AAP(F_s, (H_t, H_t));  if H_s < H_t: F_t <- AAP(F_t, (H_s, H_s))
    L     = mean_{b, hw} ( a(F_s) - a(sg F_t) )^2

  ``AAP`` is PyTorch-exact adaptive average pooling
  (:func:`kdjax.losses.pooling.adaptive_avg_pool2d`); ``l2_normalize`` is ``F.normalize``
  (eps 1e-12, finite gradient at 0). The mean over channels is a mean (not a sum). Even integer
  ``p`` is applied as ``F^p`` (identical to the reference); other ``p`` as ``|F|^p`` (the
  reference has no ``abs``; docs/methods.md#at). The method sums this over
  the stage pairs (``layer1..layer4``) and weights it with ``w_at = 1000`` (mdistiller, no 1/2).

  Args:
    student_feat: ``[B, H_s, W_s, C_s]`` student map (post-ReLU).
    teacher_feat: ``[B, H_t, W_t, C_t]`` teacher map; stop-gradient is applied here.
    p: the power (default 2). Static Python number.

  Returns:
    float32 scalar: mean over ``B * H * W`` (after size matching).

  References:
    Zagoruyko & Komodakis, "Paying More Attention to Attention", ICLR 2017.
    mdistiller @ a08d46f ``mdistiller/distillers/AT.py`` (``single_stage_at_loss``);
    RepDistiller ``distiller_zoo/AT.py``.
  """
  f_s, f_t = as_f32(student_feat, teacher_feat)
  f_t = _sg(f_t)
  _check_nhwc('attention_transfer', f_s, f_t)
  f_s, f_t = _match_square(f_s, f_t, 'attention_transfer')
  return jnp.mean(jnp.square(_attention_map(f_s, p) - _attention_map(f_t, p)))


# ------------------------------------------------------------------------------------------------
# NST
# ------------------------------------------------------------------------------------------------


def _channel_maps(f):
  """``[B, H, W, C] -> [B, H*W, C]`` with every channel's spatial map l2-normalised."""
  x = f.reshape(f.shape[0], -1, f.shape[-1])
  return l2_normalize(x, axis=1)


def _poly2_mean(a, b):
  """``mean_{b,i,j} <a[b,:,i], b[b,:,j]>^2`` for ``a, b : [B, HW, C]``."""
  return jnp.mean(jnp.square(jnp.einsum('bpi,bpj->bij', a, b, precision=_HIGHEST)))


def nst(student_feat: jax.Array, teacher_feat: jax.Array) -> jax.Array:
  """Neuron Selectivity Transfer (squared MMD, polynomial kernel of degree 2) for one pair.

  ::

    size matching as in AT (square adaptive pooling of the larger map to the smaller height)
    X[b, c, :] = l2_normalize_over_HW( F[b, :, :, c] )                  [B, C, H*W]
    k(u, v)    = <u, v>^2
    L = mean_{b,i,j} k(X_t[b,i], X_t[b,j]) + mean_{b,i,j} k(X_s[b,i], X_s[b,j])
        - 2 mean_{b,i,j} k(X_s[b,i], X_t[b,j])

  The three means run over ``B*C_t*C_t``, ``B*C_s*C_s`` and ``B*C_s*C_t`` entries; the
  teacher-teacher term is a constant (stop-gradient). Grams are ``einsum('bpi,bpj->bij')``
  (``[B, C, C]``, never ``[B, C, C, HW]``). The method sums this over ``layer1..layer4`` with
  ``w_nst = 50``.

  Args:
    student_feat: ``[B, H_s, W_s, C_s]``.
    teacher_feat: ``[B, H_t, W_t, C_t]``; stop-gradient is applied here.

  Returns:
    float32 scalar (the squared MMD).

  References:
    Huang & Wang, "Like What You Like: Knowledge Distill via Neuron Selectivity Transfer", 2017.
    mdistiller @ a08d46f ``mdistiller/distillers/NST.py``; RepDistiller ``distiller_zoo/NST.py``.
  """
  f_s, f_t = as_f32(student_feat, teacher_feat)
  f_t = _sg(f_t)
  _check_nhwc('nst', f_s, f_t)
  f_s, f_t = _match_square(f_s, f_t, 'nst')
  x_s, x_t = _channel_maps(f_s), _channel_maps(f_t)
  return _poly2_mean(x_t, x_t) + _poly2_mean(x_s, x_s) - 2.0 * _poly2_mean(x_s, x_t)


# ------------------------------------------------------------------------------------------------
# FitNet
# ------------------------------------------------------------------------------------------------


def fitnet(student_feat: jax.Array, teacher_feat: jax.Array) -> jax.Array:
  """FitNet hint loss: mean squared error between the regressed student map and the teacher map.

  ::

    L = mean_{b,h,w,c} ( R(F_s)[b,h,w,c] - sg(F_t)[b,h,w,c] )^2

  ``R`` (ConvReg: conv chosen by the size rule + BN + ReLU) is a connector applied by the caller;
  ``student_feat`` is its output and must have the teacher's shape. Any shape works (the mean runs
  over all elements), NHWC in practice. Method weight ``w_hint = 100``.

  Args:
    student_feat: ``R(F_s)``, same shape as ``teacher_feat``.
    teacher_feat: ``F_t``; stop-gradient is applied here.

  Returns:
    float32 scalar: ``F.mse_loss`` default reduction (mean over every element).

  References:
    Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015.
    mdistiller @ a08d46f ``mdistiller/distillers/FitNet.py``, ``_common.py`` (``ConvReg``);
    RepDistiller ``distiller_zoo/FitNet.py``.
  """
  f_s, f_t = as_f32(student_feat, teacher_feat)
  if f_s.shape != f_t.shape:
    raise ValueError(f'fitnet: regressed student map {f_s.shape} must match the teacher map '
                     f'{f_t.shape}; check the FitNet regressor.')
  return jnp.mean(jnp.square(f_s - _sg(f_t)))


# ------------------------------------------------------------------------------------------------
# ReviewKD HCL
# ------------------------------------------------------------------------------------------------


def hcl(student_feat: jax.Array, teacher_feat: jax.Array) -> jax.Array:
  """ReviewKD hierarchical context loss for one level (one ABF output vs one teacher tap).

  ::

    loss = mean (S - T)^2;  cnt = 1;  tot = 1
    for l in (4, 2, 1):
      if l >= h: skip                       (h = height of the level)
      cnt = cnt / 2
      loss += cnt * mean( AAP_l(S) - AAP_l(T) )^2     (AAP_l = PyTorch-exact adaptive pool to l x l)
      tot  += cnt
    L = loss / tot

  So ``h > 4`` weighs (full, 4x4, 2x2, 1x1) as (1, 1/2, 1/4, 1/8)/1.875, ``h = 4`` weighs
  (full, 2x2, 1x1) as (1, 1/2, 1/4)/1.75, ``h = 1`` is the plain MSE. Every mean is over all
  elements of the (pooled) tensor. The 7 -> 4 pooling windows overlap
  (docs/methods.md#resampling). The reference does no size matching inside ``hcl`` (the ABF
  resizes), so both maps must have the same shape.
  ``L_HCL`` of the method is the sum over the 5 levels, weighted by ``w_rev`` (and the warm-up).

  Args:
    student_feat: ABF output ``S``, ``[B, h, w, C]``.
    teacher_feat: teacher target ``T``, same shape; stop-gradient is applied here.

  Returns:
    float32 scalar: the level loss.

  References:
    Chen et al., "Distilling Knowledge via Knowledge Review", CVPR 2021.
    dvlab-research/ReviewKD @ cede6ea ``ImageNet/models/reviewkd.py`` (``hcl``);
    mdistiller ``mdistiller/distillers/ReviewKD.py``.
  """
  f_s, f_t = as_f32(student_feat, teacher_feat)
  f_t = _sg(f_t)
  _check_nhwc('hcl', f_s, f_t)
  if f_s.shape != f_t.shape:
    raise ValueError(f'hcl: student level {f_s.shape} and teacher level {f_t.shape} must have the '
                     'same shape (the ABF resizes the student output to the teacher size).')
  h = f_s.shape[1]
  loss = jnp.mean(jnp.square(f_s - f_t))
  cnt, tot = 1.0, 1.0
  for level in (4, 2, 1):
    if level >= h:
      continue
    cnt /= 2.0
    pooled_diff = adaptive_avg_pool2d(f_s, level) - adaptive_avg_pool2d(f_t, level)
    loss = loss + cnt * jnp.mean(jnp.square(pooled_diff))
    tot += cnt
  return loss / tot


# ------------------------------------------------------------------------------------------------
# OFD
# ------------------------------------------------------------------------------------------------


def ofd_margin(bn_scale, bn_bias) -> np.ndarray:
  """OFD per-channel margins from the teacher's BN before the ReLU (computed once, on host).

  With ``s = |gamma_c|`` and ``m = beta_c`` taken as the std and mean of the pre-activation::

    if Phi(-m/s) > 0.001:  margin_c = m - s * phi(m/s) / Phi(-m/s)   (= E[x | x < 0], x ~ N(m, s^2))
    else:                  margin_c = -3 s

  with ``phi``/``Phi`` the standard normal pdf/cdf, evaluated in float64 (as the reference's
  ``math``/``scipy.stats.norm``) and returned as float32. kdjax's choice: channels with
  ``gamma_c == 0`` (the reference divides by zero) get ``margin_c = 0`` and a logged warning.
  Margins are otherwise always negative. This is host code (NumPy/SciPy), not traceable: call it
  once when building the method state, e.g. with the teacher's ``layer{i}[-1].bn2`` ``scale`` and
  ``bias``.

  Args:
    bn_scale: ``[C]`` BN scale ``gamma`` (array-like).
    bn_bias: ``[C]`` BN bias ``beta`` (array-like).

  Returns:
    NumPy float32 ``[C]`` margins.

  References:
    Heo et al., "A Comprehensive Overhaul of Feature Distillation", ICCV 2019.
    clovaai/overhaul-distillation @ 76344a8 ``ImageNet/distiller.py`` (``get_margin_from_BN``);
    mdistiller ``mdistiller/distillers/OFD.py``.
  """
  s = np.abs(np.asarray(bn_scale, dtype=np.float64)).reshape(-1)
  m = np.asarray(bn_bias, dtype=np.float64).reshape(-1)
  if s.shape != m.shape:
    raise ValueError(f'ofd_margin: bn_scale {s.shape} and bn_bias {m.shape} must have one entry '
                     'per channel.')
  zero = s == 0.0
  s_safe = np.where(zero, 1.0, s)
  z = m / s_safe
  cdf = scipy.special.ndtr(-z)
  pdf = np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
  use_expect = cdf > 0.001
  margin = np.where(use_expect, m - s_safe * pdf / np.where(use_expect, cdf, 1.0), -3.0 * s)
  if zero.any():
    logging.getLogger(__name__).warning('ofd_margin: %d channel(s) with BN scale 0; their margin is set to 0.',
                    int(zero.sum()))
    margin = np.where(zero, 0.0, margin)
  return margin.astype(np.float32)


def ofd(student_feat: jax.Array, teacher_feat: jax.Array, margin: jax.Array) -> jax.Array:
  """OFD partial L2 distance for one stage (sum over C, H, W; mean over the batch).

  ::

    T' = max(sg(T), M)                                 (M = margin, broadcast over b, h, w)
    d  = (S - T')^2 * 1[(S > T') or (T' > 0)]
    L  = (1/B) sum_{b,h,w,c} d

  ``S`` is the connector output (1x1 conv + BN on the student's pre-ReLU map) and ``T`` the
  teacher's pre-ReLU map. If the spatial sizes differ, ``T`` is first adaptive-average-pooled to the
  student size (mdistiller). The method combines stages as ``sum_i L_i / 2^(n - i)`` (i = 1..n,
  shallow to deep) and weights the sum with ``w_ofd`` (1e-4 ImageNet, 1e-3 CIFAR).

  Args:
    student_feat: ``S``, ``[B, H, W, C_t]`` (connector output).
    teacher_feat: ``T``, ``[B, H_t, W_t, C_t]``; stop-gradient is applied here.
    margin: ``[C_t]`` margins from :func:`ofd_margin` (treated as a constant).

  Returns:
    float32 scalar.

  References:
    Heo et al., "A Comprehensive Overhaul of Feature Distillation", ICCV 2019.
    clovaai/overhaul-distillation @ 76344a8 ``ImageNet/distiller.py`` (``distillation_loss``,
    ``Distiller.forward``); mdistiller ``mdistiller/distillers/OFD.py`` (``feat_loss``).
  """
  f_s, f_t, m = as_f32(student_feat, teacher_feat, margin)
  f_t, m = _sg(f_t), _sg(m)
  _check_nhwc('ofd', f_s, f_t)
  if f_t.shape[1:3] != f_s.shape[1:3]:
    f_t = adaptive_avg_pool2d(f_t, f_s.shape[1:3])
  if f_s.shape != f_t.shape:
    raise ValueError(f'ofd: connector output {f_s.shape} and teacher map {f_t.shape} must match '
                     '(the connector maps student channels to teacher channels).')
  target = jnp.maximum(f_t, m.reshape(-1))
  mask = (f_s > target) | (target > 0)
  d = jnp.where(mask, jnp.square(f_s - target), 0.0)
  return jnp.sum(d) / f_s.shape[0]


# ------------------------------------------------------------------------------------------------
# MGD
# ------------------------------------------------------------------------------------------------


def mgd_mask(rng: jax.Array, shape: Sequence[int], *, lambda_mgd: float = 0.15) -> jax.Array:
  """MGD random channel mask for classification: one Bernoulli per (sample, channel).

  ::

    u ~ U[0, 1) i.i.d. of shape [B, 1, 1, C];   Mk = 1[u >= lambda_mgd]   (P(masked) = lambda_mgd)

  The method applies it as ``G = generation(S * Mk)`` (student side only) and then calls
  :func:`mgd`. Use a fresh key every step (fold in the step number and the device index).

  Args:
    rng: a PRNG key.
    shape: the NHWC shape ``(B, H, W, C)`` of the (aligned) student map; only ``B`` and ``C`` are
      used.
    lambda_mgd: masking ratio (default 0.15).

  Returns:
    float32 ``[B, 1, 1, C]`` mask of zeros and ones.

  References:
    Yang et al., "Masked Generative Distillation", ECCV 2022.
    yzd-v/MGD @ 2c9da0b ``cls/mmcls/distillation/losses/mgd.py`` (``get_dis_loss``).
  """
  shape = tuple(shape)
  if len(shape) != 4:
    raise ValueError(f'mgd_mask expects an NHWC shape (B, H, W, C), got {shape}.')
  u = jax.random.uniform(rng, (shape[0], 1, 1, shape[-1]), dtype=jnp.float32)
  return (u >= lambda_mgd).astype(jnp.float32)


def mgd(generated: jax.Array, teacher_feat: jax.Array) -> jax.Array:
  """MGD generation loss (official reduction: sum over all elements / B).

  ::

    L = (1/B) sum_{b,h,w,c} ( G - sg(F_t) )^2,    G = generation(align(F_s) * Mk)

  ``G`` is the output of the MGD generator connector on the masked student map (see
  :func:`mgd_mask`). The official module multiplies this by ``alpha_mgd = 7e-5`` inside the loss
  and uses loss weight 1; here ``alpha_mgd`` is the term's weight, applied by the method layer.
  (PaddleClas' mean-reduction with 1.756 equals this only for 512x7x7 maps.)

  Args:
    generated: ``G``, ``[B, H, W, C_t]``.
    teacher_feat: ``F_t``, same shape; stop-gradient is applied here.

  Returns:
    float32 scalar.

  References:
    Yang et al., "Masked Generative Distillation", ECCV 2022.
    yzd-v/MGD @ 2c9da0b ``cls/mmcls/distillation/losses/mgd.py`` (``MGDLoss``).
  """
  g, f_t = as_f32(generated, teacher_feat)
  if g.shape != f_t.shape:
    raise ValueError(f'mgd: generated map {g.shape} must match the teacher map {f_t.shape}.')
  return jnp.sum(jnp.square(g - _sg(f_t))) / g.shape[0]


# ------------------------------------------------------------------------------------------------
# PEFD
# ------------------------------------------------------------------------------------------------


def pefd(student_projected: jax.Array, teacher_feat: jax.Array) -> jax.Array:
  """PEFD loss: one minus the cosine between the projector-ensemble output and the teacher feature.

  ::

    f_s   = (1/q) sum_i ReLU(Linear_i(h_s))       (computed by the PEFD projector connector, q = 3)
    cos_b = < f_s[b] / ||f_s[b]||, h_t[b] / ||h_t[b]|| >
    L     = mean_b (1 - cos_b)

  Norms are ``sqrt(max(sum x^2, 1e-24))`` (the reference divides by the raw norm, which is NaN for
  an all-zero ReLU ensemble output; docs/methods.md#numerics). Inputs with more than two axes are
  flattened per sample. Method weight ``w_pefd = 25``.

  Args:
    student_projected: ``f_s``, ``[B, D_t]``.
    teacher_feat: ``h_t``, the teacher's pooled feature ``[B, D_t]``; stop-gradient is applied here.

  Returns:
    float32 scalar: mean over the batch.

  References:
    Chen et al., "Improved Feature Distillation via Projector Ensemble", NeurIPS 2022.
    chenyd7/PEFD @ 7f1e2de ``helper/loops.py`` (``distill == 'ours'``), ``models/util.py``.
  """
  f_s, h_t = as_f32(student_projected, teacher_feat)
  f_s = f_s.reshape(f_s.shape[0], -1)
  h_t = _sg(h_t).reshape(h_t.shape[0], -1)
  if f_s.shape != h_t.shape:
    raise ValueError(f'pefd: projected student {f_s.shape} must match the teacher feature '
                     f'{h_t.shape}.')
  cos = jnp.sum((f_s / safe_norm(f_s, keepdims=True)) * (h_t / safe_norm(h_t, keepdims=True)),
                axis=-1)
  return jnp.mean(1.0 - cos)


# ------------------------------------------------------------------------------------------------
# AFD
# ------------------------------------------------------------------------------------------------


def afd_attention(bilinear_key: jax.Array, query: jax.Array, pos_t: jax.Array,
                  pos_s: jax.Array) -> jax.Array:
  """AFD attention of every teacher layer over the student layers.

  ::

    logit[b,j,i] = ( <Kb[b,i,j,:], Q[b,j,:]> + <P_t[j], P_s[i]> ) / sqrt(d)
    att[b,j,:]   = softmax over i

  All inputs come from the trainable AFD connector (so nothing is stop-gradiented here): ``Kb`` is
  the student-side bilinear key ``BN1d(Linear_{d -> d*T}(ReLU(BN1d(Linear(GAP(F_s_i))))))``
  reshaped to ``[B, S, T, d]``, ``Q`` the teacher-side query ``BN1d(Linear(GAP(sg F_t_j)))``
  stacked to ``[B, T, d]``, and ``P_t``/``P_s`` the positional tables.

  Args:
    bilinear_key: ``[B, S, T, d]``.
    query: ``[B, T, d]``.
    pos_t: ``[T, d]``.
    pos_s: ``[S, d]``.

  Returns:
    float32 ``[B, T, S]`` attention weights (rows sum to 1); feed them to :func:`afd`.

  References:
    Ji et al., "Show, Attend and Distill: Knowledge Distillation via Attention-based Feature
    Matching", AAAI 2021. clovaai/attention-feature-distillation @ dd990d0 ``distill/AFD.py``
    (``Attention.forward``).
  """
  kb, q, p_t, p_s = as_f32(bilinear_key, query, pos_t, pos_s)
  d = q.shape[-1]
  logit = (jnp.einsum('bstq,btq->bts', kb, q, precision=_HIGHEST)
           + jnp.einsum('tq,sq->ts', p_t, p_s, precision=_HIGHEST)) / math.sqrt(d)
  return jax.nn.softmax(logit, axis=-1)


def _afd_value(f, size=None):
  """``l2n_over_HW( [AAP_size] mean_c F^2 )``: ``[B, H, W, C] -> [B, h*w]``."""
  a = jnp.mean(jnp.square(f), axis=-1, keepdims=True)
  if size is not None:
    a = adaptive_avg_pool2d(a, size)
  return l2_normalize(a.reshape(a.shape[0], -1), axis=-1)


def afd(student_feats: Sequence[jax.Array], teacher_feats: Sequence[jax.Array],
        attention: jax.Array) -> jax.Array:
  """AFD attention-weighted value matching, given the attention from the AFD connector.

  ::

    v_t_j      = l2_normalize_over_HW( mean_c sg(F_t_j)^2 )                          [B, H_j W_j]
    v_s_{i,j}  = l2_normalize_over_HW( AAP_{(H_j, W_j)}( mean_c F_s_i^2 ) )           [B, H_j W_j]
    L = sum_j mean_b sum_i att[b,j,i] * mean_hw ( v_s_{i,j}[b] - v_t_j[b] )^2

  The values have no parameters and are computed here from the raw taps (``AAP`` is the
  PyTorch-exact adaptive average pool, up- or down-sampling; student values are shared between
  teacher layers of equal spatial size, as the reference's ``unique_shape`` samplers). The
  connector must supply ``attention = afd_attention(Kb, Q, P_t, P_s)`` (``[B, T, S]``, softmax over
  student layers); gradients flow into the student through the values and into the connector
  through the attention. Method weight ``w_afd`` (50 ImageNet R34->R18, 200 CIFAR).

  Args:
    student_feats: the ``S`` student taps (``block0..block7`` for R18), each ``[B, H_i, W_i, C_i]``.
    teacher_feats: the ``T`` teacher taps (``block0..block15`` for R34), each
      ``[B, H_j, W_j, C_j]``; stop-gradient is applied here.
    attention: ``[B, T, S]`` attention weights.

  Returns:
    float32 scalar: sum over teacher layers of the batch mean.

  References:
    Ji et al., "Show, Attend and Distill: Knowledge Distillation via Attention-based Feature
    Matching", AAAI 2021. clovaai/attention-feature-distillation @ dd990d0 ``distill/AFD.py``
    (``Attention.cal_diff``, ``LinearTransformTeacher``, ``LinearTransformStudent``, ``Sample``).
  """
  f_s = [as_f32(f) for f in student_feats]
  f_t = [_sg(as_f32(f)) for f in teacher_feats]
  _check_nhwc('afd', *f_s, *f_t)
  att = as_f32(attention)
  if att.shape != (f_s[0].shape[0], len(f_t), len(f_s)):
    raise ValueError(f'afd: attention must be [B, T, S] = [{f_s[0].shape[0]}, {len(f_t)}, '
                     f'{len(f_s)}], got {att.shape}.')
  student_values = {}
  total = jnp.zeros((), jnp.float32)
  for j, t in enumerate(f_t):
    size = t.shape[1:3]
    if size not in student_values:
      student_values[size] = jnp.stack([_afd_value(s, size) for s in f_s], axis=1)  # [B, S, hw]
    v_s = student_values[size]
    v_t = _afd_value(t)
    diff = jnp.mean(jnp.square(v_s - v_t[:, None, :]), axis=-1)  # [B, S]
    total = total + jnp.mean(jnp.sum(diff * att[:, j, :], axis=-1))
  return total


# ------------------------------------------------------------------------------------------------
# CRD
# ------------------------------------------------------------------------------------------------


def crd_scores(anchor_emb: jax.Array, memory_rows: jax.Array, *, temperature: float = 0.07
               ) -> jax.Array:
  """CRD contrast scores of one anchor embedding against rows gathered from the other memory bank.

  ::

    out[b, k] = exp( < M[J[b,k]], e[b] > / tau )               [B, K_neg + 1]

  with column 0 the positive. For ``L_CRD`` compute ``out_s = crd_scores(e_s, M_t[J])`` (student
  anchor, teacher memory) and ``out_t = crd_scores(e_t, M_s[J])`` (teacher anchor, student memory),
  where ``e_s = l2n(embed_s(h_s))``, ``e_t = l2n(embed_t(sg h_t))`` come from the trainable CRD
  embeddings. The memory rows are constants (stop-gradient here); the anchor is differentiable
  (the teacher-side embedding is trained through ``out_t``). Memory banks, their update and the
  constants ``Z`` live in the method state.

  Args:
    anchor_emb: ``[B, d]`` l2-normalised embedding.
    memory_rows: ``[B, K_neg + 1, d]`` memory rows ``M[J]``.
    temperature: ``tau`` (default 0.07).

  Returns:
    float32 ``[B, K_neg + 1]`` unnormalised scores.

  References:
    Tian et al., "Contrastive Representation Distillation", ICLR 2020.
    HobbitLong/RepDistiller @ b84f547 ``crd/memory.py`` (``ContrastMemory.forward``).
  """
  e, mem = as_f32(anchor_emb, memory_rows)
  logits = jnp.einsum('bkd,bd->bk', _sg(mem), e, precision=_HIGHEST)
  return jnp.exp(logits / temperature)


def crd_normalization_constant(scores: jax.Array, *, n_data: int) -> jax.Array:
  """CRD normalisation constant ``Z = N * mean(out)`` (set from the first batch, then frozen).

  The method state keeps ``Z`` (e.g. initialised to -1 and set with
  ``where(Z < 0, crd_normalization_constant(out, n_data=N), Z)``); no gradient flows through it.

  Args:
    scores: ``[B, K_neg + 1]`` output of :func:`crd_scores`.
    n_data: ``N``, the number of training examples (memory-bank rows).

  Returns:
    float32 scalar, stop-gradient.

  References:
    HobbitLong/RepDistiller @ b84f547 ``crd/memory.py`` (``Z_v1``/``Z_v2``).
  """
  return _sg(n_data * jnp.mean(as_f32(scores)))


def crd_nce(probs: jax.Array, *, n_data: int) -> jax.Array:
  """CRD's NCE objective for one anchor side, given normalised scores ``P = out / Z``.

  ::

    c = K_neg / N
    L = -(1/B) [ sum_b log( P[b,0] / (P[b,0] + c + 1e-7) )
                 + sum_b sum_{k>=1} log( c / (P[b,k] + c + 1e-7) ) ]

  Column 0 is the positive, columns ``1..K_neg`` the negatives (``K_neg = probs.shape[1] - 1``).

  Args:
    probs: ``P``, ``[B, K_neg + 1]`` (positive scores).
    n_data: ``N``, the number of training examples.

  Returns:
    float32 scalar: sum over samples and negatives, divided by ``B``.

  References:
    Tian et al., "Contrastive Representation Distillation", ICLR 2020.
    HobbitLong/RepDistiller @ b84f547 ``crd/criterion.py`` (``ContrastLoss``).
  """
  p = as_f32(probs)
  b, k1 = p.shape
  c = (k1 - 1) / float(n_data)
  eps = 1e-7
  log_pos = jnp.log(p[:, 0]) - jnp.log(p[:, 0] + c + eps)
  log_neg = math.log(c) - jnp.log(p[:, 1:] + c + eps) if k1 > 1 else jnp.zeros((b, 0))
  return -(jnp.sum(log_pos) + jnp.sum(log_neg)) / b


def crd(student_probs: jax.Array, teacher_probs: jax.Array, *, n_data: int) -> jax.Array:
  """CRD loss: NCE of the student-anchored plus the teacher-anchored contrast.

  ::

    L_CRD = NCE(out_s / Z_s) + NCE(out_t / Z_t)

  with ``out_s``/``out_t`` from :func:`crd_scores` (student anchor vs teacher memory, teacher
  anchor vs student memory), ``Z`` from :func:`crd_normalization_constant` and ``NCE`` from
  :func:`crd_nce`. Neither input is stop-gradiented: both carry gradients to the trainable CRD
  embeddings (the memory rows inside them are already constants). Method weight ``w_crd = 0.8``.

  Args:
    student_probs: ``out_s / Z_s``, ``[B, K_neg + 1]``, column 0 positive.
    teacher_probs: ``out_t / Z_t``, ``[B, K_neg + 1]``.
    n_data: ``N``, the number of training examples.

  Returns:
    float32 scalar.

  References:
    Tian et al., "Contrastive Representation Distillation", ICLR 2020.
    HobbitLong/RepDistiller @ b84f547 ``crd/criterion.py`` (``CRDLoss``), ``crd/memory.py``.
  """
  return crd_nce(student_probs, n_data=n_data) + crd_nce(teacher_probs, n_data=n_data)


# ------------------------------------------------------------------------------------------------
# UDML
# ------------------------------------------------------------------------------------------------


def feature_distance(feat_a: jax.Array, feat_b: jax.Array) -> jax.Array:
  """UDML's feature term between two trainable peers: mean squared difference, no stop-gradient.

  ::

    L = mean_{b,h,w,c} ( F_a - F_b )^2            (PaddleClas DistanceLoss mode='l2' = nn.MSELoss)

  Both inputs receive gradients (the term pulls the peers' features together); the shapes must
  match (PaddleClas pairs identical architectures). Method weight 1.

  Args:
    feat_a: ``[B, ...]`` features of peer 1.
    feat_b: the same shape, features of peer 2.

  Returns:
    float32 scalar.

  References:
    PaddleClas ``ppcls/loss/distanceloss.py``, ``PPLCNet_x2_5_udml.yaml``; docs/methods.md#udml.
  """
  a, b = as_f32(feat_a, feat_b)
  if a.shape != b.shape:
    raise ValueError(f'feature_distance: the peers\' features {a.shape} and {b.shape} must have '
                     'the same shape (UDML pairs identical architectures).')
  return jnp.mean(jnp.square(a - b))


# ------------------------------------------------------------------------------------------------
# WKD-F
# ------------------------------------------------------------------------------------------------


def _window_gaussians(f, grid, eps):
  """Per cell of a ``grid x grid`` adaptive split of ``f [B, H, W, C]``: the channel means and
  ``sqrt(unbiased variance + eps)``, each ``[B, grid, grid, C]``.

  The cells' sums of ``x`` and ``x^2`` come from one ``einsum`` each with 0/1 window matrices
  (cells may overlap); ``x`` is first centred on its whole-map mean, which leaves every variance
  unchanged and keeps ``sum x^2 - (sum x)^2 / n`` accurate in float32.
  """
  _, height, width, _ = f.shape
  rows, cols = adaptive_pool_windows(height, grid), adaptive_pool_windows(width, grid)
  if min(e - s for s, e in rows) * min(e - s for s, e in cols) < 2:
    raise ValueError(f'wkd_f: grid {grid} leaves a cell of one element on a {height}x{width} '
                     'map (its unbiased variance is undefined); use a smaller grid.')

  def members(windows, size):
    mat = np.zeros((len(windows), size), np.float32)
    for i, (start, end) in enumerate(windows):
      mat[i, start:end] = 1.0
    return mat

  a_h, a_w = members(rows, height), members(cols, width)
  count = (a_h.sum(1)[:, None] * a_w.sum(1)[None, :])[None, :, :, None]   # [1, g, g, 1]
  centre = jnp.mean(f, axis=(1, 2), keepdims=True)
  x = f - centre
  pool = lambda v: jnp.einsum('oh,bhwc,pw->bopc', a_h, v, a_w, precision=_HIGHEST)
  sum_x, sum_x2 = pool(x), pool(jnp.square(x))
  var = jnp.maximum(sum_x2 - jnp.square(sum_x) / count, 0.0) / (count - 1)
  return sum_x / count + centre, jnp.sqrt(var + eps)


def wkd_f_parts(student_feat: jax.Array, teacher_feat: jax.Array, *, eps: float = 1e-5,
                grid: int = 1) -> tuple[jax.Array, jax.Array]:
  """The two parts of WKD-F: squared distances of the per-channel means and of the standard
  deviations of the maps' cells (see :func:`wkd_f`).

  Args:
    student_feat: ``[B, H, W, C]``, the projected student map.
    teacher_feat: the same shape (stop-gradiented).
    eps: added to each variance before the square root.
    grid: the maps are split into ``grid x grid`` cells by PyTorch's adaptive-pooling windows
      (``grid = 1``: the whole map).

  Returns:
    ``(mean_loss, std_loss)``: float32 scalars, each a sum over cells and channels divided by
    ``grid^2 * B``.
  """
  f_s, f_t = as_f32(student_feat, teacher_feat)
  _check_nhwc('wkd_f', f_s, f_t)
  if f_s.shape != f_t.shape:
    raise ValueError(f'wkd_f: the projected student map {f_s.shape} must match the teacher map '
                     f'{f_t.shape}; check the WKD-F projector.')
  grid = int(grid)
  mu_s, sd_s = _window_gaussians(f_s, grid, eps)
  mu_t, sd_t = _window_gaussians(_sg(f_t), grid, eps)
  norm = grid * grid * f_s.shape[0]
  return (jnp.sum(jnp.square(mu_s - mu_t)) / norm, jnp.sum(jnp.square(sd_s - sd_t)) / norm)


def wkd_f(student_feat: jax.Array, teacher_feat: jax.Array, *, mean_weight: float,
          eps: float = 1e-5, grid: int = 1) -> jax.Array:
  """WKD-F: Wasserstein-2 matching of per-channel diagonal Gaussians of two feature maps.

  Each cell ``w`` of a ``grid x grid`` split of a map (PyTorch's adaptive-pooling windows) is
  summarised per channel by ``N(mu, sigma^2)``: ``mu`` the cell mean, ``sigma = sqrt(var + eps)``
  with the unbiased variance over the cell. The squared 2-Wasserstein distance of two diagonal
  Gaussians is ``|mu_s - mu_t|^2 + |sigma_s - sigma_t|^2``; the reference weights its two parts::

    L_mean = sum_{b,w,c} (mu_s - mu_t)^2 / (grid^2 B)
    L_std  = sum_{b,w,c} (sigma_s - sigma_t)^2 / (grid^2 B)
    L_WKD-F = mean_weight * L_mean + L_std

  ``student_feat`` is the projector's output (a connector applied by the caller).

  Args:
    student_feat: ``[B, H, W, C]``, the projected student map.
    teacher_feat: the same shape (stop-gradiented).
    mean_weight: the reference's ``MEAN_COV_RATIO`` (2 on ImageNet; 4 or 8 on CIFAR-100).
    eps: added to each variance (reference 1e-5).
    grid: cells per side (reference: 4 on ImageNet, 1 on CIFAR-100). Each cell needs at least
      two elements.

  Returns:
    float32 scalar.

  References:
    Lv, Yang and Li, "Wasserstein Distance Rivals Kullback-Leibler Divergence for Knowledge
    Distillation", NeurIPS 2024. JiamingLv/WKD @ 214cf88 ``mdistiller/distillers/WKD.py``
    (``wkd_feature_loss``, ``adaptive_avg_std_pool2d``); docs/methods.md#wkd_f.
  """
  mean_loss, std_loss = wkd_f_parts(student_feat, teacher_feat, eps=eps, grid=grid)
  return mean_weight * mean_loss + std_loss
