"""Relation-based distillation losses (docs/methods.md#rkd, #pkt, #cc, #sp): RKD, PKT, CC, SP.

Pure functions: positional arrays first, keyword-only hyperparameters after; every function upcasts
to float32, wraps the teacher inputs in ``jax.lax.stop_gradient``, and returns a float32 scalar
reduced the way the reference reduces it, with no loss weight. All of them depend on which examples
share the batch: they compute over the batch they are given; the method layer splits the global
batch into fixed-size groups (reshape + ``vmap``) and averages (docs/design.md#grouped-losses).

NST (docs/methods.md#nst) is a feature-map loss and lives in :mod:`kdjax.losses.features`;
``similarity_preserving`` lives here and is re-exported by :mod:`kdjax.losses.features`.
"""

import math

import jax
import jax.numpy as jnp

from kdjax.losses._numerics import as_f32, l2_normalize, safe_norm

_HIGHEST = jax.lax.Precision.HIGHEST
_sg = jax.lax.stop_gradient

__all__ = ['cc', 'pkt', 'rkd', 'similarity_preserving']


def _flatten(x):
  return x.reshape(x.shape[0], -1)


def _gram(x):
  return jnp.einsum('id,jd->ij', x, x, precision=_HIGHEST)


def _check_batch(name, a, b):
  if a.shape[0] != b.shape[0]:
    raise ValueError(f'{name}: student and teacher batch sizes differ ({a.shape[0]} vs '
                     f'{b.shape[0]}).')


# ------------------------------------------------------------------------------------------------
# RKD
# ------------------------------------------------------------------------------------------------


def _smooth_l1(x):
  ax = jnp.abs(x)
  return jnp.where(ax < 1.0, 0.5 * jnp.square(x), ax - 0.5)


def _pdist(e, eps=1e-12):
  """``sqrt(max(||e_i||^2 + ||e_j||^2 - 2<e_i,e_j>, eps))`` with a zero diagonal."""
  sq = jnp.sum(jnp.square(e), axis=-1)
  d2 = sq[:, None] + sq[None, :] - 2.0 * _gram(e)
  d = jnp.sqrt(jnp.maximum(d2, eps))
  return jnp.where(jnp.eye(e.shape[0], dtype=bool), 0.0, d)


def _normalize_by_positive_mean(d):
  """``d / mean(d[d > 0])`` as a masked sum (no boolean indexing); 0/0 guarded."""
  pos = d > 0
  count = jnp.sum(pos)
  mean = jnp.sum(jnp.where(pos, d, 0.0)) / jnp.maximum(count, 1)
  return d / jnp.where(mean > 0, mean, 1.0)


def _angles(e):
  """``A[i,j,k] = <l2n(e_j - e_i), l2n(e_k - e_i)>`` as ``[B, B, B]`` (never ``[B, B, B, D]``)."""
  diff = l2_normalize(e[None, :, :] - e[:, None, :], axis=-1)  # [i, j, D]: e_j - e_i
  return jnp.einsum('ijd,ikd->ijk', diff, diff, precision=_HIGHEST)


def rkd(student_emb: jax.Array, teacher_emb: jax.Array, *, distance_weight: float = 25.0,
        angle_weight: float = 50.0) -> jax.Array:
  """Relational KD: distance-wise plus angle-wise relation matching.

  ::

    pdist(E)[i,j] = sqrt( max(||E_i||^2 + ||E_j||^2 - 2<E_i,E_j>, 1e-12) ),  diagonal set to 0
    d_s = pdist(E_s) / mean_{d_s > 0}(d_s);   d_t likewise from sg(E_t)
    L_d = mean_{i,j} huber(d_s - d_t)                                   (B*B entries)
    e[i,j] = l2n(E_j - E_i);  A[i,j,k] = <e[i,j], e[i,k]>               (zero vector for i = j)
    L_a = mean_{i,j,k} huber(A_s - A_t)                                 (B^3 entries)
    L   = distance_weight * L_d + angle_weight * L_a

  ``huber`` is ``smooth_l1`` with beta 1. The positive-mean is a masked sum over ``d > 0``; the
  angle tensor is built per anchor as ``einsum('ijd,ikd->ijk')`` (``B^2 D`` memory, never
  ``B^3 D``). ``distance_weight`` and ``angle_weight`` are the method's internal term weights
  (defaults 25 and 50 as the references); the method's own loss weight ``w_rkd = 1`` is applied
  outside.

  Args:
    student_emb: ``[B, D_s]`` (inputs with more axes are flattened per sample).
    teacher_emb: ``[B, D_t]``; stop-gradient is applied here.
    distance_weight: weight of ``L_d``.
    angle_weight: weight of ``L_a``.

  Returns:
    float32 scalar.

  References:
    Park et al., "Relational Knowledge Distillation", CVPR 2019.
    mdistiller @ a08d46f ``mdistiller/distillers/RKD.py`` (``_pdist``, ``rkd_loss``);
    RepDistiller ``distiller_zoo/RKD.py``.
  """
  e_s, e_t = as_f32(student_emb, teacher_emb)
  e_s, e_t = _flatten(e_s), _flatten(_sg(e_t))
  _check_batch('rkd', e_s, e_t)
  d_s = _normalize_by_positive_mean(_pdist(e_s))
  d_t = _normalize_by_positive_mean(_pdist(e_t))
  loss_d = jnp.mean(_smooth_l1(d_s - d_t))
  loss_a = jnp.mean(_smooth_l1(_angles(e_s) - _angles(e_t)))
  return distance_weight * loss_d + angle_weight * loss_a


# ------------------------------------------------------------------------------------------------
# PKT
# ------------------------------------------------------------------------------------------------


def _pkt_conditional(e, eps):
  n = e / (safe_norm(e, axis=-1, keepdims=True) + eps)
  s = (_gram(n) + 1.0) / 2.0
  return s / jnp.sum(s, axis=-1, keepdims=True)


def pkt(student_emb: jax.Array, teacher_emb: jax.Array) -> jax.Array:
  """Probabilistic Knowledge Transfer (cosine-similarity kernel, KL between conditionals).

  ::

    n(E)_b = E_b / (||E_b|| + 1e-7)
    S      = (n(E) n(E)^T + 1) / 2                      [B, B], entries in [0, 1]
    P      = S / rowsum(S)                              (P_s from E_s, P_t from sg(E_t))
    L      = mean_{i,j} P_t[i,j] * log( (P_t[i,j] + 1e-7) / (P_s[i,j] + 1e-7) )

  The mean runs over ``B*B`` entries (not a sum). ``||E_b||`` is ``sqrt(max(sum E^2, 1e-24))``
  (zero vectors give ``n = 0`` with a finite gradient; the reference patches the NaN to 0).
  Numerically the sum carries the extra term ``P_s - P_t``, exactly zero in exact arithmetic
  (rows of ``P`` sum to 1), which cancels float32 rounding of ``P`` to first order.
  Method weight ``w_pkt = 30000``.

  Args:
    student_emb: ``[B, D_s]`` (flattened per sample if it has more axes).
    teacher_emb: ``[B, D_t]``; stop-gradient is applied here.

  Returns:
    float32 scalar.

  References:
    Passalis & Tefas, "Learning Deep Representations with Probabilistic Knowledge Transfer",
    ECCV 2018. mdistiller @ a08d46f ``mdistiller/distillers/PKT.py`` (``pkt_loss``);
    RepDistiller ``distiller_zoo/PKT.py``.
  """
  eps = 1e-7
  e_s, e_t = as_f32(student_emb, teacher_emb)
  e_s, e_t = _flatten(e_s), _flatten(_sg(e_t))
  _check_batch('pkt', e_s, e_t)
  p_s = _pkt_conditional(e_s, eps)
  p_t = _pkt_conditional(e_t, eps)
  # + (P_s - P_t): zero in exact arithmetic (every row of P_s and P_t sums to 1) but it cancels the
  # float32 rounding of P to first order; without it a ~1e-4 loss is only good to ~1e-4 relative.
  return jnp.mean(p_t * jnp.log((p_t + eps) / (p_s + eps)) + (p_s - p_t))


# ------------------------------------------------------------------------------------------------
# CC
# ------------------------------------------------------------------------------------------------


def _rbf_correlation(e, gamma, p_order):
  g = _gram(l2_normalize(e, axis=-1))
  corr = jnp.zeros_like(g)
  for p in range(int(p_order) + 1):
    coef = math.exp(-2.0 * gamma) * (2.0 * gamma) ** p / math.factorial(p)
    corr = corr + coef * (jax.lax.integer_pow(g, p) if p > 0 else jnp.ones_like(g))
  return corr


def cc(student_emb: jax.Array, teacher_emb: jax.Array, *, gamma: float = 0.4, p_order: int = 2,
       mode: str = 'repdistiller') -> jax.Array:
  """Correlation Congruence.

  Default ``mode='repdistiller'`` (the kdjax default, RepDistiller's ``Correlation``, behind the
  CRD paper's CC baseline and OFAKD's ``correlation`` distiller)::

    delta = | e_s - sg(e_t) |                                            [B, d]
    L     = (1/(B-1)) sum_{b=0}^{B-2} sum_d delta[b,d] * delta[b+1,d]   (consecutive samples)

  It depends on the batch order and needs ``B >= 2``. ``gamma`` and ``p_order`` are **ignored** in
  this mode. ``e_s``/``e_t`` are the outputs of the trainable ``LinearEmbed_s``/``LinearEmbed_t``
  connectors (128-d). Method weight ``w_cc = 0.02``.

  ``mode='gaussian_rbf'`` (paper-faithful, AberHu/Knowledge-Distillation-Zoo ``kd_losses/cc.py``)::

    G    = l2n(E) l2n(E)^T
    Corr = sum_{p=0}^{p_order} exp(-2 gamma) (2 gamma)^p / p! * G^p     (elementwise powers)
    L    = mean_{i,j} (Corr_s - Corr_t)^2

  Teacher side (unlike every other loss here): RepDistiller trains ``embed_t`` through this loss
  (it is in ``trainable_list``), so this function does **not** stop-gradient ``teacher_emb``. The
  method passes ``embed_t(sg(h_t))``: the teacher backbone is stopped, the embedding is trained.
  Pass ``jax.lax.stop_gradient(e_t)`` yourself for a frozen teacher side (e.g. raw teacher
  features in ``gaussian_rbf`` mode, which the train step has already stopped).

  Args:
    student_emb: ``e_s``, ``[B, d]``.
    teacher_emb: ``e_t``, ``[B, d]`` (see the note on gradients).
    gamma: RBF ``gamma`` (``gaussian_rbf`` mode only; default 0.4).
    p_order: Taylor order ``P`` (``gaussian_rbf`` mode only; default 2).
    mode: ``'repdistiller'`` (default) or ``'gaussian_rbf'``.

  Returns:
    float32 scalar.

  References:
    Peng et al., "Correlation Congruence for Knowledge Distillation", ICCV 2019.
    HobbitLong/RepDistiller @ b84f547 ``distiller_zoo/CC.py`` (``Correlation``), ``models/util.py``
    (``LinearEmbed``); AberHu/Knowledge-Distillation-Zoo @ 65470c8 ``kd_losses/cc.py``.
  """
  e_s, e_t = as_f32(student_emb, teacher_emb)
  e_s, e_t = _flatten(e_s), _flatten(e_t)
  _check_batch('cc', e_s, e_t)
  if mode == 'repdistiller':
    if e_s.shape != e_t.shape:
      raise ValueError(f'cc: student {e_s.shape} and teacher {e_t.shape} embeddings must have the '
                       'same shape (both LinearEmbed connectors map to the same dimension).')
    if e_s.shape[0] < 2:
      raise ValueError('cc: the RepDistiller form needs a batch of at least 2.')
    delta = jnp.abs(e_s - e_t)
    return jnp.mean(jnp.sum(delta[:-1] * delta[1:], axis=-1))
  if mode == 'gaussian_rbf':
    corr_s = _rbf_correlation(e_s, gamma, p_order)
    corr_t = _rbf_correlation(e_t, gamma, p_order)
    return jnp.mean(jnp.square(corr_s - corr_t))
  raise ValueError(f"cc: unknown mode {mode!r}; use 'repdistiller' or 'gaussian_rbf'.")


# ------------------------------------------------------------------------------------------------
# SP
# ------------------------------------------------------------------------------------------------


def similarity_preserving(student_feat: jax.Array, teacher_feat: jax.Array) -> jax.Array:
  """Similarity-Preserving KD for one feature pair.

  ::

    G_s = F_s F_s^T,  G_t = F_t F_t^T          [B, B], on per-sample flattened features
    G~  = row-wise l2_normalize(G)             (F.normalize, dim 1, eps 1e-12)
    L   = sum_{i,j} (G~_t - G~_s)^2 / B^2

  Accepts NHWC maps ``[B, H, W, C]`` or embeddings ``[B, D]`` (anything is flattened per sample;
  the value does not depend on the flattening order, docs/methods.md#notation). The two sides may
  have different feature sizes. Method weight ``w_sp = 3000`` (tap ``layer4``).

  Args:
    student_feat: ``[B, ...]``.
    teacher_feat: ``[B, ...]``; stop-gradient is applied here.

  Returns:
    float32 scalar.

  References:
    Tung & Mori, "Similarity-Preserving Knowledge Distillation", ICCV 2019.
    mdistiller @ a08d46f ``mdistiller/distillers/SP.py``; RepDistiller ``distiller_zoo/SP.py``.
  """
  f_s, f_t = as_f32(student_feat, teacher_feat)
  f_s, f_t = _flatten(f_s), _flatten(_sg(f_t))
  _check_batch('similarity_preserving', f_s, f_t)
  g_s = l2_normalize(_gram(f_s), axis=-1)
  g_t = l2_normalize(_gram(f_t), axis=-1)
  b = f_s.shape[0]
  return jnp.sum(jnp.square(g_t - g_s)) / (b * b)
