"""Response-based (logit) distillation losses: KD, DKD, NKD, DIST, WSL, SKD, DML/SSLD, OFA.

Every function here is pure and jit-friendly: positional arrays first, keyword-only
hyperparameters after, and it returns a float32 scalar reduced the way the reference
implementation reduces it (docs/methods.md#reductions), with no loss weight and no warm-up factor
(the trainer applies those). The exact formulas, defaults and golden values are in
docs/methods.md (one section per method, and #golden-value-policy).

Conventions shared by all functions:

* Logits are ``[B, K]`` (any float dtype; upcast to float32 before any arithmetic).
  Labels are integer ``[B]`` in ``[0, K)``, or ``-1`` for an unlabeled example (SSLD-style
  batches). Labels outside ``[-1, K)`` are not checked (they cannot be under ``jit``) and give
  meaningless values.
* Teacher logits are wrapped in ``jax.lax.stop_gradient`` inside the loss, so the gradient
  w.r.t. the teacher is exactly zero even if the caller forgets. DML's two peers are both
  trainable and are not stop-gradiented.
* Log-probabilities always come from ``log_softmax`` (or an equivalent log-space
  expression), never from ``log(softmax(.))``: values and gradients stay finite for logit
  gaps far beyond float32's ``exp`` range.
* Losses that need the label of a row (DKD, NKD, WSL, OFA, and the CE part of SKD) skip rows
  whose label is ``-1``: their per-sample terms are set to zero and the batch mean is taken
  over the labelled rows only (``0`` with finite, zero gradients when no row is labelled).
  With every label valid this is exactly the reference's mean over the batch.
"""

import jax
import jax.numpy as jnp

from kdjax.losses._numerics import as_f32, safe_norm

__all__ = [
    "cross_entropy",
    "dist",
    "dkd",
    "dkd_parts",
    "dml",
    "kd",
    "kl_divergence",
    "nkd",
    "ofa",
    "skd",
    "standardize",
    "wsl",
]

# Stand-in for -inf when a class is removed from a softmax (DKD's non-target softmax).
# Finite, so `0 * (masked entry)` never produces NaN (docs/methods.md#numerics); far below any
# float32 logit / temperature, so exp() of it is exactly 0 whatever the logit scale.
_MASKED_LOGIT = -1e30
# DIST: the reference adds 1e-8 to the *product* of the two centred norms.
_DIST_EPS = 1e-8
# WSL: the reference adds 1e-7 to the teacher's cross-entropy in the ratio.
_WSL_EPS = 1e-7
# SKD: epsilon of the (affine-free) layer norm over classes.
_SKD_LN_EPS = 1e-7


# --------------------------------------------------------------------------- helpers


def _check_logits(*named):
  """Raises ValueError unless every array is ``[B, K]`` and all shapes agree."""
  shape = None
  for name, x in named:
    if x.ndim != 2:
      raise ValueError(f"{name} must be [batch, classes], got shape {x.shape}")
    if shape is None:
      shape = x.shape
    elif x.shape != shape:
      raise ValueError(
          f"{name} has shape {x.shape}, expected {shape} (same as {named[0][0]})")
  return shape


def _check_labels(labels, batch):
  labels = jnp.asarray(labels)
  if labels.shape != (batch,):
    raise ValueError(f"labels must be [batch]=({batch},), got shape {labels.shape}")
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f"labels must be integers (class index, -1 = unlabeled), got {labels.dtype}")
  return labels.astype(jnp.int32)


def _split_labels(labels, batch):
  """Returns ``(valid [B] bool, safe_labels [B] int32)``; unlabeled rows point at class 0."""
  labels = _check_labels(labels, batch)
  valid = labels >= 0
  return valid, jnp.where(valid, labels, 0)


def _masked_mean(per_sample, valid):
  """Mean of ``per_sample`` over rows where ``valid``; 0 when no row is valid.

  Uses ``where`` (not a multiply) so a non-finite value in an excluded row cannot leak in,
  and the division by ``max(count, 1)`` keeps the all-unlabeled case at a finite 0.
  """
  total = jnp.sum(jnp.where(valid, per_sample, 0.0))
  count = jnp.sum(valid.astype(jnp.float32))
  return total / jnp.maximum(count, 1.0)


def _take(x, idx):
  """``x[b, idx[b]]`` for every row b."""
  return jnp.take_along_axis(x, idx[:, None], axis=-1)[:, 0]


def _soft_ce_per_sample(log_p_target, log_p_pred):
  """``-sum_k p_target log p_pred`` per row, from log-probabilities."""
  return -jnp.sum(jnp.exp(log_p_target) * log_p_pred, axis=-1)


def _kl_per_sample(log_p, log_q):
  """``KL(P || Q) = sum_k P (log P - log Q)`` per row, from finite log-probabilities.

  With log-probabilities from log_softmax every entry is finite, so an underflowed
  ``P_k = 0`` contributes exactly ``0 * finite = 0`` (the xlogy convention) and the gradient
  w.r.t. ``log_q`` is ``-P``, finite.
  """
  return jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)


def _dkd_log_probs(logits, gt_mask, temperature):
  """Log-space pieces of DKD for one side (kdjax's log-space form, docs/methods.md#dkd).

  Args:
    logits: float32 ``[B, K]``.
    gt_mask: bool ``[B, K]``, true at the target class.
    temperature: scalar.

  Returns:
    ``(log_b [B, 2], log_q [B, K])``: ``log_b = [log p[g], log(1 - p[g])]`` and the log of
    the softmax over the ``K - 1`` non-target classes, with ``0`` at the target entry (the
    caller must ignore that entry; it is set to 0 so that ``exp`` of it cannot overflow).
  """
  u = logits / temperature
  lse_all = jax.nn.logsumexp(u, axis=-1)
  lse_nt = jax.nn.logsumexp(jnp.where(gt_mask, _MASKED_LOGIT, u), axis=-1)
  u_gt = jnp.sum(jnp.where(gt_mask, u, 0.0), axis=-1)
  log_b = jnp.stack([u_gt - lse_all, lse_nt - lse_all], axis=-1)
  log_q = jnp.where(gt_mask, 0.0, u - lse_nt[:, None])
  return log_b, log_q


def _wsl_weights(student_logits, teacher_logits, labels):
  """WSL's per-sample weight ``1 - exp(-max(0, ce_s / (ce_t + 1e-7)))`` at tau = 1, detached."""
  s = jax.lax.stop_gradient(student_logits)
  t = jax.lax.stop_gradient(teacher_logits)
  ce_s = -_take(jax.nn.log_softmax(s, axis=-1), labels)
  ce_t = -_take(jax.nn.log_softmax(t, axis=-1), labels)
  ratio = jnp.maximum(ce_s / (ce_t + _WSL_EPS), 0.0)
  return 1.0 - jnp.exp(-ratio)


def _pearson(a, b, axis):
  """Pearson correlation along ``axis``, as DIST's reference computes it.

  ``<a_c, b_c> / (||a_c|| * ||b_c|| + 1e-8)`` with ``a_c = a - mean(a)``; the norms are
  safe norms (docs/methods.md#numerics), so a constant vector gives 0 with a finite gradient.
  """
  a_c = a - jnp.mean(a, axis=axis, keepdims=True)
  b_c = b - jnp.mean(b, axis=axis, keepdims=True)
  num = jnp.sum(a_c * b_c, axis=axis)
  den = safe_norm(a_c, axis=axis) * safe_norm(b_c, axis=axis) + _DIST_EPS
  return num / den


def _skd_normalize(logits, multiplier):
  """``m * (z - mean_k z) / sqrt(var_k z + 1e-7)`` (biased variance, no affine params)."""
  mean = jnp.mean(logits, axis=-1, keepdims=True)
  centred = logits - mean
  var = jnp.mean(jnp.square(centred), axis=-1, keepdims=True)
  return multiplier * centred * jax.lax.rsqrt(var + _SKD_LN_EPS)


# --------------------------------------------------------------------------- public losses


def standardize(logits, *, eps=1e-7):
  r"""Logit standardization (Sun et al., CVPR 2024): a per-row z-score of the logits.

  .. math::
    \mathcal{Z}(z)[b, k] = \frac{z[b,k] - \bar z[b]}{\epsilon + \sigma[b]}, \qquad
    \sigma[b]^2 = \frac{1}{K - 1} \sum_k (z[b,k] - \bar z[b])^2

  ``sigma`` is the unbiased (Bessel-corrected) standard deviation, as ``torch.Tensor.std``
  computes it in the reference, and ``eps = 1e-7`` is added to it, not to the variance. The
  square root is floored (docs/methods.md#numerics) so that a constant row gives 0 with a finite
  gradient. Logit losses with a ``standardize`` option apply this to both sides before the
  temperature.

  Args:
    logits: ``[B, K]``, ``K >= 2``.
    eps: added to the standard deviation.

  Returns:
    float32 ``[B, K]``: zero mean, unit (unbiased) standard deviation per row.

  References:
    Sun, Ren, Li, Wang, Cao, "Logit Standardization in Knowledge Distillation", CVPR 2024;
    sunshangquan/logit-standardization-KD ``mdistiller/distillers/KD.py`` (``normalize``).
  """
  z = as_f32(logits)
  centred = z - jnp.mean(z, axis=-1, keepdims=True)
  std = safe_norm(centred, axis=-1, keepdims=True) / jnp.sqrt(z.shape[-1] - 1.0)
  return centred / (eps + std)


def _standardized(on, *logits):
  """The LS option of a logit loss: every array through :func:`standardize` when ``on``.

  ``on`` is normally a Python bool (a recipe's hyperparameter, fixed at trace time); a JAX
  boolean (e.g. traced, when a caller jits the loss with ``standardize`` as an argument)
  selects with ``where``.
  """
  if isinstance(on, jax.Array):
    return tuple(jnp.where(on, standardize(z), z) for z in logits)
  return tuple(standardize(z) for z in logits) if on else logits


def cross_entropy(logits, labels, *, label_smoothing=0.0):
  r"""Mean softmax cross-entropy that ignores unlabeled (``-1``) examples.

  .. math::
    \mathrm{CE} = \frac{1}{|V|} \sum_{b \in V} -\sum_k y^{ls}_{b,k} \log \mathrm{softmax}(z_b)_k,
    \qquad y^{ls} = (1 - \epsilon)\,\mathrm{onehot}(y) + \epsilon / K

  where ``V`` is the set of rows with ``labels >= 0``. Label smoothing follows PyTorch /
  optax (the smoothing mass ``eps / K`` goes to every class, the target included).

  Args:
    logits: ``[B, K]`` logits (any float dtype; computed in float32).
    labels: int ``[B]`` class indices, ``-1`` for unlabeled rows.
    label_smoothing: ``eps`` in ``[0, 1)``; 0 gives the plain cross-entropy.

  Returns:
    float32 scalar: mean over labelled rows; ``0`` (with zero, finite gradients) when no
    row is labelled.

  References:
    The ``CE`` term of every recipe (docs/methods.md#ce, #term-weights).
  """
  logits = as_f32(logits)
  batch, _ = _check_logits(("logits", logits))
  valid, safe = _split_labels(labels, batch)
  log_p = jax.nn.log_softmax(logits, axis=-1)
  nll = -_take(log_p, safe)
  if isinstance(label_smoothing, (int, float)) and label_smoothing == 0:
    per_sample = nll
  else:
    smooth = -jnp.mean(log_p, axis=-1)
    per_sample = (1.0 - label_smoothing) * nll + label_smoothing * smooth
  return _masked_mean(per_sample, valid)


def soft_cross_entropy(logits, targets, *, label_smoothing=0.0):
  r"""Mean cross-entropy against soft targets (Mixup / CutMix), with label smoothing.

  .. math::
    \mathrm{CE} = \frac{1}{B} \sum_b -\sum_k \big((1 - \epsilon)\, t_{b,k} + \epsilon / K\big)
      \log \mathrm{softmax}(z_b)_k

  The smoothed target equals timm's ``mixup_target(y, K, lam, smoothing=eps)`` when ``t`` is the
  mixed one-hot ``lam onehot(y) + (1 - lam) onehot(y_flipped)``, and the loss then equals
  timm's ``SoftTargetCrossEntropy``; with one-hot ``t`` it equals ``cross_entropy``.

  Args:
    logits: ``[B, K]`` logits (any float dtype; computed in float32).
    targets: ``[B, K]`` non-negative rows summing to 1.
    label_smoothing: ``eps`` in ``[0, 1)``.

  Returns:
    float32 scalar, the mean over all rows.
  """
  logits = as_f32(logits)
  targets = as_f32(targets)
  log_p = jax.nn.log_softmax(logits, axis=-1)
  if not (isinstance(label_smoothing, (int, float)) and label_smoothing == 0):
    targets = (1.0 - label_smoothing) * targets + label_smoothing / logits.shape[-1]
  return jnp.mean(-jnp.sum(targets * log_p, axis=-1))


def kl_divergence(teacher_logits, student_logits):
  r"""Per-sample ``KL(p_t || p_s)`` at temperature 1 (for evaluators and logging).

  .. math::
    \mathrm{KL}_b = \sum_k p_t[b,k] (\log p_t[b,k] - \log p_s[b,k])

  with both log-probabilities from ``log_softmax``; the teacher is stop-gradiented.

  Args:
    teacher_logits: ``[B, K]``.
    student_logits: ``[B, K]``.

  Returns:
    float32 ``[B]`` (no batch reduction).
  """
  teacher_logits, student_logits = as_f32(teacher_logits, student_logits)
  _check_logits(("teacher_logits", teacher_logits), ("student_logits", student_logits))
  teacher_logits = jax.lax.stop_gradient(teacher_logits)
  return _kl_per_sample(jax.nn.log_softmax(teacher_logits, axis=-1),
                        jax.nn.log_softmax(student_logits, axis=-1))


def kd(student_logits, teacher_logits, *, temperature, standardize=False):
  r"""Hinton knowledge distillation: temperature-scaled KL, "batchmean" reduction.

  .. math::
    L_{KD} = \tau^2 \, \frac{1}{B} \sum_b \sum_k p_t[b,k] (\log p_t[b,k] - \log p_s[b,k]),
    \qquad \log p = \mathrm{log\_softmax}(\hat z / \tau)

  with ``\hat z = z``, or with logit standardization (``standardize=True``, Sun et al. CVPR
  2024) ``\hat z = \mathcal{Z}(z)`` of :func:`standardize` on both sides, before the
  temperature, as the reference's ``kd_loss`` does. Standardized, the loss no longer depends
  on each row's logit scale: only the relations between the logits are matched.

  Args:
    student_logits: ``[B, K]``.
    teacher_logits: ``[B, K]`` (stop-gradiented).
    temperature: ``tau`` (mdistiller: 4 on CIFAR-100, 1 on ImageNet; with LS the
      reference's "base temperature", 2).
    standardize: apply logit standardization to both sides first (``K >= 2``).

  Returns:
    float32 scalar: sum over classes, mean over the batch, times ``tau^2``. No labels are
    used, so unlabeled rows contribute like any other.

  References:
    Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network", 2015.
    mdistiller ``mdistiller/distillers/KD.py`` (``kd_loss``); docs/methods.md#kd.
    LS: Sun et al., "Logit Standardization in Knowledge Distillation", CVPR 2024;
    sunshangquan/logit-standardization-KD ``mdistiller/distillers/KD.py``.
  """
  s, t = as_f32(student_logits, teacher_logits)
  _check_logits(("student_logits", s), ("teacher_logits", t))
  t = jax.lax.stop_gradient(t)
  s, t = _standardized(standardize, s, t)
  per_sample = _kl_per_sample(jax.nn.log_softmax(t / temperature, axis=-1),
                              jax.nn.log_softmax(s / temperature, axis=-1))
  return temperature**2 * jnp.mean(per_sample)


def dkd_parts(student_logits, teacher_logits, labels, *, temperature, standardize=False):
  r"""Per-sample TCKD and NCKD of Decoupled KD, each already multiplied by ``tau^2``.

  With ``g = labels[b]``, ``b = [p[g], 1 - p[g]]`` and ``q`` the softmax over the ``K - 1``
  non-target classes (all at temperature ``tau``):

  .. math::
    \mathrm{TCKD}_b = \tau^2\, \mathrm{KL}(b_t \| b_s), \qquad
    \mathrm{NCKD}_b = \tau^2 \sum_{k \ne g} q_t[k] (\log q_t[k] - \log q_s[k])

  computed in log space (``log b[0] = u_g - LSE(u)``, ``log b[1] = LSE_{k != g}(u) - LSE(u)``,
  ``log q = u - LSE_{k != g}(u)``, ``u = z / tau``), with the target picked by
  ``one_hot(labels)``. Per sample, ``KL(p_t || p_s) * tau^2 = TCKD_b + (1 - p_t[g]) NCKD_b``
  exactly. The reference's ``-1000`` mask on ``z / tau`` is replaced by an exact exclusion of
  the target class: identical values wherever the reference's ``exp(-1000 + ...)``
  underflows (any realistic logits), and finite where the reference's ``log(1 - p_s[g])``
  is ``-inf`` (a student logit gap above ~104 tau in float32). With ``standardize=True``
  both sides' logits first go through :func:`standardize` (logit standardization), before the
  temperature and the split, as in the LS reference's ``dkd_loss``.

  Args:
    student_logits: ``[B, K]``.
    teacher_logits: ``[B, K]`` (stop-gradiented).
    labels: int ``[B]``; rows with ``-1`` get ``TCKD_b = NCKD_b = 0``.
    temperature: ``tau``.
    standardize: apply logit standardization to both sides first.

  Returns:
    ``(tckd, nckd)``: two float32 ``[B]`` arrays (no batch reduction).

  References:
    Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022.
    mdistiller ``mdistiller/distillers/DKD.py`` (``dkd_loss``); docs/methods.md#dkd.
  """
  s, t = as_f32(student_logits, teacher_logits)
  batch, num_classes = _check_logits(("student_logits", s), ("teacher_logits", t))
  valid, safe = _split_labels(labels, batch)
  t = jax.lax.stop_gradient(t)
  s, t = _standardized(standardize, s, t)
  gt_mask = jax.nn.one_hot(safe, num_classes, dtype=jnp.bool_)
  log_b_s, log_q_s = _dkd_log_probs(s, gt_mask, temperature)
  log_b_t, log_q_t = _dkd_log_probs(t, gt_mask, temperature)
  tckd = _kl_per_sample(log_b_t, log_b_s)
  nckd_terms = jnp.where(gt_mask, 0.0, jnp.exp(log_q_t) * (log_q_t - log_q_s))
  nckd = jnp.sum(nckd_terms, axis=-1)
  scale = temperature**2
  return (jnp.where(valid, scale * tckd, 0.0), jnp.where(valid, scale * nckd, 0.0))


def dkd(student_logits, teacher_logits, labels, *, alpha, beta, temperature,
        standardize=False):
  r"""Decoupled Knowledge Distillation.

  .. math::
    L_{DKD} = \alpha\, \mathrm{mean}_b\, \mathrm{TCKD}_b + \beta\, \mathrm{mean}_b\, \mathrm{NCKD}_b

  with the per-sample terms of :func:`dkd_parts` (each already times ``tau^2``). The
  warm-up factor ``min(epoch / E_warm, 1)`` is the trainer's job, not applied here.

  Args:
    student_logits: ``[B, K]``.
    teacher_logits: ``[B, K]`` (stop-gradiented).
    labels: int ``[B]``, the target class that defines the decoupling. Rows labelled
      ``-1`` are excluded and both means are over the labelled rows only (0 if there are
      none); with all labels valid this is the reference's ``sum * tau^2 / B``.
    alpha: TCKD weight (1.0 everywhere in mdistiller).
    beta: NCKD weight (8.0 CIFAR default, 0.5 ImageNet R34->R18).
    temperature: ``tau`` (4 CIFAR, 1 ImageNet).
    standardize: logit standardization of both sides first (:func:`dkd_parts`); the LS
      reference then uses ``tau = 2`` and multiplies ``alpha`` and ``beta`` by 9.

  Returns:
    float32 scalar.

  References:
    Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022.
    mdistiller ``mdistiller/distillers/DKD.py`` (``dkd_loss``); docs/methods.md#dkd.
    LS: sunshangquan/logit-standardization-KD ``mdistiller/distillers/DKD.py``.
  """
  tckd, nckd = dkd_parts(student_logits, teacher_logits, labels, temperature=temperature,
                         standardize=standardize)
  valid = _check_labels(labels, tckd.shape[0]) >= 0
  return alpha * _masked_mean(tckd, valid) + beta * _masked_mean(nckd, valid)


def nkd(student_logits, teacher_logits, labels, *, temperature, gamma):
  r"""Normalized KD: target soft label at ``tau = 1`` plus a normalized non-target part.

  With ``g = labels[b]``, ``p = softmax(z)`` (no temperature) and ``q^tau`` the softmax of
  ``z / tau`` over the ``K - 1`` non-target classes (the target class removed, the rest
  renormalised to sum to one, on both sides):

  .. math::
    L_{NKD} = \mathrm{mean}_b \Big( -p_t[b,g] \log p_s[b,g]
      \; - \; \gamma \tau^2 \sum_{k \ne g} q^\tau_t[b,k] \log q^\tau_s[b,k] \Big)

  The teacher's target probability is a weight only (stop-gradiented, like the whole
  teacher). Both parts are cross-entropies, not KL divergences, as in the reference: the value
  includes ``-p_t[g] log p_t[g] + gamma tau^2 H(q_t)`` and is not zero when ``z_s = z_t``; the
  gradient is that of the KL form. ``log q`` is computed in log space with the target class
  excluded exactly (as :func:`dkd_parts`), so values and gradients stay finite for any logit gap.

  Args:
    student_logits: ``[B, K]``, ``K >= 2``.
    teacher_logits: ``[B, K]`` (stop-gradiented).
    labels: int ``[B]``, the target class; rows labelled ``-1`` are excluded and the mean
      is over the labelled rows only (0 if there are none). With every label valid this is the
      reference's batch mean. (The reference takes the argmax of soft labels; kdjax's trainer
      passes the dominant class of mixed targets, the same thing.)
    temperature: ``tau`` of the non-target part (1 on ImageNet, 3 in the reference's
      CIFAR-100 config).
    gamma: weight of the non-target part (1.5 on ImageNet, 3.5 on CIFAR-100).

  Returns:
    float32 scalar.

  References:
    Yang, Zeng, Yuan, Li, "From Knowledge Distillation to Self-Knowledge Distillation: A
    Unified Approach with Normalized Loss and Customized Soft Labels", ICCV 2023.
    yzd-v/cls_KD ``mmcls/models/dis_losses/nkd.py`` (``NKDLoss``); docs/methods.md#nkd.
  """
  s, t = as_f32(student_logits, teacher_logits)
  batch, num_classes = _check_logits(("student_logits", s), ("teacher_logits", t))
  valid, safe = _split_labels(labels, batch)
  t = jax.lax.stop_gradient(t)
  gt_mask = jax.nn.one_hot(safe, num_classes, dtype=jnp.bool_)
  target = -(_take(jax.nn.softmax(t, axis=-1), safe)
             * _take(jax.nn.log_softmax(s, axis=-1), safe))
  _, log_q_s = _dkd_log_probs(s, gt_mask, temperature)
  _, log_q_t = _dkd_log_probs(t, gt_mask, temperature)
  nontarget = -jnp.sum(jnp.where(gt_mask, 0.0, jnp.exp(log_q_t) * log_q_s), axis=-1)
  return _masked_mean(target + gamma * temperature**2 * nontarget, valid)


def dist(student_logits, teacher_logits, *, beta, gamma, temperature):
  r"""DIST: Pearson-correlation matching of class and batch relations.

  .. math::
    Y = \mathrm{softmax}(z / \tau), \quad
    \rho(u, v) = \frac{\langle u - \bar u, v - \bar v\rangle}{\|u - \bar u\|\,\|v - \bar v\| + 10^{-8}}

    L_{inter} = 1 - \frac{1}{B}\sum_b \rho(Y_s[b,:], Y_t[b,:]), \quad
    L_{intra} = 1 - \frac{1}{K}\sum_k \rho(Y_s[:,k], Y_t[:,k])

    L_{DIST} = \tau^2 (\beta L_{inter} + \gamma L_{intra})

  ``L_intra`` depends on which examples share the batch: this function computes it over
  exactly the batch it is given (the method layer splits the global batch into fixed-size
  groups and averages). Norms are safe norms, so a constant column (e.g. ``B = 1``) gives
  ``rho = 0`` with finite gradients instead of NaN. With ``B = 2`` every column correlation
  is ``+-1`` (degenerate, as in the reference).

  Args:
    student_logits: ``[B, K]``.
    teacher_logits: ``[B, K]`` (stop-gradiented).
    beta: inter-class (per-sample row) weight, 1 in the reference.
    gamma: intra-class (per-class column) weight, 1 in the reference.
    temperature: ``tau`` (1 ImageNet, 4 CIFAR-100).

  Returns:
    float32 scalar.

  References:
    Huang et al., "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022.
    hunto/image_classification_sota ``lib/models/losses/dist_kd.py``; docs/methods.md#dist.
  """
  s, t = as_f32(student_logits, teacher_logits)
  _check_logits(("student_logits", s), ("teacher_logits", t))
  t = jax.lax.stop_gradient(t)
  y_s = jax.nn.softmax(s / temperature, axis=-1)
  y_t = jax.nn.softmax(t / temperature, axis=-1)
  inter = 1.0 - jnp.mean(_pearson(y_s, y_t, axis=1))
  intra = 1.0 - jnp.mean(_pearson(y_s, y_t, axis=0))
  return temperature**2 * (beta * inter + gamma * intra)


def wsl(student_logits, teacher_logits, labels, *, temperature):
  r"""Weighted Soft Labels: per-sample weighted soft-target cross-entropy.

  .. math::
    ce_s = -\log \mathrm{softmax}(z_s)[y], \quad ce_t = -\log \mathrm{softmax}(z_t)[y]
    \quad (\tau = 1)

    w_b = 1 - \exp(-\max(0,\, ce_s / (ce_t + 10^{-7}))) \quad \text{(no gradient)}

    L_{WSL} = \tau^2 \,\mathrm{mean}_b\, w_b \Big(-\sum_k \mathrm{softmax}(z_t/\tau)_k
              \log \mathrm{softmax}(z_s/\tau)_k\Big)

  The KD term is the soft-target cross-entropy of the reference (not the KL): the value
  exceeds the KL form by ``tau^2 mean_b(w_b H(p_t))``; gradients are the same.

  Args:
    student_logits: ``[B, K]``.
    teacher_logits: ``[B, K]`` (stop-gradiented).
    labels: int ``[B]``. The weight needs the label, so rows labelled ``-1`` are excluded
      and the mean is over labelled rows only (0 if there are none). With all labels valid
      this equals the reference's batch mean.
    temperature: ``tau`` of the KD term (2 in the reference); the weight always uses
      ``tau = 1``.

  Returns:
    float32 scalar.

  References:
    Zhou et al., "Rethinking Soft Labels for Knowledge Distillation: A Bias-Variance
    Tradeoff Perspective", ICLR 2021. PaddleClas ``ppcls/loss/wslloss.py``; docs/methods.md#wsl.
  """
  s, t = as_f32(student_logits, teacher_logits)
  batch, _ = _check_logits(("student_logits", s), ("teacher_logits", t))
  valid, safe = _split_labels(labels, batch)
  t = jax.lax.stop_gradient(t)
  weight = _wsl_weights(s, t, safe)
  soft_ce = _soft_ce_per_sample(jax.nn.log_softmax(t / temperature, axis=-1),
                                jax.nn.log_softmax(s / temperature, axis=-1))
  return temperature**2 * _masked_mean(weight * soft_ce, valid)


def skd(student_logits, teacher_logits, labels, *, temperature, multiplier, alpha):
  r"""Spherical KD: KD and CE on layer-normalised (rescaled) logits.

  .. math::
    \hat z = m\, \frac{z - \mathrm{mean}_k z}{\sqrt{\mathrm{var}_k z + 10^{-7}}}

    KD = \tau^2\, \mathrm{mean}_b \Big(-\sum_k \mathrm{softmax}(\hat z_t/\tau)_k
         \log\mathrm{softmax}(\hat z_s/\tau)_k\Big), \quad
    CE_n = \mathrm{mean}_b\, \big(-\log\mathrm{softmax}(\hat z_s)[y_b]\big)

    L_{SKD} = \alpha\, KD + (1 - \alpha)\, CE_n

  (biased variance over classes, no affine parameters; KD is the soft-target
  cross-entropy form). The CE term is inside, so recipes add no separate CE.

  Args:
    student_logits: ``[B, K]``.
    teacher_logits: ``[B, K]`` (stop-gradiented).
    labels: int ``[B]``. The KD part needs no label and is averaged over all rows; the CE
      part is averaged over the labelled rows only (rows with ``-1`` are skipped; 0 if none
      is labelled). With all labels valid this is exactly the reference.
    temperature: ``tau`` (1 in the PaddleClas recipe).
    multiplier: ``m``, the scale of the normalised logits (2).
    alpha: KD share (0.9).

  Returns:
    float32 scalar.

  References:
    Guo et al., "Reducing the Teacher-Student Gap via Spherical Knowledge Distillation",
    2020. PaddleClas ``ppcls/loss/skdloss.py``; docs/methods.md#skd.
  """
  s, t = as_f32(student_logits, teacher_logits)
  batch, _ = _check_logits(("student_logits", s), ("teacher_logits", t))
  valid, safe = _split_labels(labels, batch)
  t = jax.lax.stop_gradient(t)
  zs = _skd_normalize(s, multiplier)
  zt = _skd_normalize(t, multiplier)
  kd_part = temperature**2 * jnp.mean(
      _soft_ce_per_sample(jax.nn.log_softmax(zt / temperature, axis=-1),
                          jax.nn.log_softmax(zs / temperature, axis=-1)))
  ce_part = _masked_mean(-_take(jax.nn.log_softmax(zs, axis=-1), safe), valid)
  return alpha * kd_part + (1.0 - alpha) * ce_part


def dml(logits_a, logits_b, *, eps=1e-12):
  r"""Deep Mutual Learning / SSLD loss: eps-smoothed symmetric KL (PaddleClas ``DMLLoss``).

  .. math::
    d(P, Q)_{b,k} = P_{b,k} \log\frac{P_{b,k} + \epsilon}{Q_{b,k} + \epsilon}, \qquad
    L_{DML} = \mathrm{mean}_b \sum_k \tfrac12 \big(d(p_a, p_b) + d(p_b, p_a)\big)

  with ``p = softmax(z)`` (no temperature). Half the Jeffreys divergence, not the
  Jensen-Shannon divergence despite PaddleClas' "JS-Div" wording. ``log(p + eps)`` is
  evaluated as ``logaddexp(log_softmax(z), log eps)``, equal in value and finite for any
  logit gap. Neither input is stop-gradiented: gradients reach both peers. For SSLD (a
  frozen teacher), pass ``jax.lax.stop_gradient(teacher_logits)`` as one of the inputs.
  No labels, so unlabeled batches are fine.

  Args:
    logits_a: ``[B, K]`` logits of peer 1 (the "Student").
    logits_b: ``[B, K]`` logits of peer 2 (the "Teacher" peer, or the frozen SSLD teacher).
    eps: smoothing, 1e-12 in current PaddleClas (1e-10 in the old ``JSDivLoss``).

  Returns:
    float32 scalar: sum over classes, mean over the batch (PaddleClas
    ``sum_across_class_dim=False``).

  References:
    Zhang et al., "Deep Mutual Learning", CVPR 2018; Cui et al., "Beyond Self-Supervision:
    A Simple Yet Effective Network Distillation Alternative..." (SSLD), 2021.
    PaddleClas ``ppcls/loss/dmlloss.py``; docs/methods.md#dml, #ssld.
  """
  a, b = as_f32(logits_a, logits_b)
  _check_logits(("logits_a", a), ("logits_b", b))
  log_pa = jax.nn.log_softmax(a, axis=-1)
  log_pb = jax.nn.log_softmax(b, axis=-1)
  log_eps = jnp.log(jnp.asarray(eps, jnp.float32))
  log_pa_eps = jnp.logaddexp(log_pa, log_eps)
  log_pb_eps = jnp.logaddexp(log_pb, log_eps)
  diff = log_pa_eps - log_pb_eps  # log((p_a + eps) / (p_b + eps))
  per_elem = 0.5 * (jnp.exp(log_pa) * diff - jnp.exp(log_pb) * diff)
  return jnp.mean(jnp.sum(per_elem, axis=-1))


def ofa(student_logits, teacher_logits, labels, *, temperature, eps):
  r"""OFA-KD loss: soft-target cross-entropy with adaptive target enhancement.

  .. math::
    m = \mathrm{onehot}(y), \quad p_t = \mathrm{softmax}(z_t/\tau), \quad
    L_{OFA} = \mathrm{mean}_b \sum_k -\big((p_t[b,k] + m[b,k])^{\epsilon} - m[b,k]\big)
              \log\mathrm{softmax}(z/\tau)[b,k]

  i.e. target weight ``(1 + p_t[y])^eps - 1`` and non-target weights ``p_t[k]^eps``; no
  ``tau^2`` factor. With ``eps = 1`` it is exactly ``-sum_k p_t log p_s``.

  Args:
    student_logits: ``[B, K]``: the student's logits or one OFA branch's logits.
    teacher_logits: ``[B, K]`` (stop-gradiented).
    labels: int ``[B]`` class indices (rows with ``-1`` are excluded and the mean is over
      labelled rows only, 0 if none), or float ``[B, K]`` soft / mixup targets, whose argmax
      is used as in the reference (every row counts as labelled then).
    temperature: ``tau`` (1 in the reference).
    eps: ``eps_o`` (1.0 code default / CIFAR, 1.5 in the README ImageNet command).

  Returns:
    float32 scalar.

  References:
    Hao et al., "One-for-All: Bridge the Gap Between Heterogeneous Architectures in
    Knowledge Distillation", NeurIPS 2023. Hao840/OFAKD ``distillers/ofa.py``
    (``ofa_loss``); docs/methods.md#ofa.
  """
  s, t = as_f32(student_logits, teacher_logits)
  batch, num_classes = _check_logits(("student_logits", s), ("teacher_logits", t))
  labels = jnp.asarray(labels)
  if labels.ndim == 2 and jnp.issubdtype(labels.dtype, jnp.floating):
    _check_logits(("student_logits", s), ("labels", labels))
    labels = jnp.argmax(labels, axis=-1)
  valid, safe = _split_labels(labels, batch)
  t = jax.lax.stop_gradient(t)
  mask = jax.nn.one_hot(safe, num_classes, dtype=jnp.float32)
  p_t = jax.nn.softmax(t / temperature, axis=-1)
  weight = jnp.power(p_t + mask, eps) - mask
  per_sample = -jnp.sum(weight * jax.nn.log_softmax(s / temperature, axis=-1), axis=-1)
  return _masked_mean(per_sample, valid)
