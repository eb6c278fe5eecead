"""Response-based (logit) distillation losses: KD, DKD, NKD, DIST, WSL, SKD, DML/SSLD, OFA,
MLKD, CTKD, WKD-L.

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
    "mlkd",
    "mlkd_parts",
    "nkd",
    "ofa",
    "sinkhorn",
    "skd",
    "wkd_l",
    "wkd_target",
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
# MLKD: the temperatures the reference uses besides its base temperature, in its order. The
# strong view's instance term uses the base and the first two of them on the strong view and the
# last two on the weak view (docs/methods.md#mlkd).
MLKD_TEMPERATURES = (3.0, 5.0, 2.0, 6.0)
# WKD-L: the reference adds 1e-8 to every Sinkhorn denominator and to the clipped cost.
_WKD_EPS = 1e-8
_HIGHEST = jax.lax.Precision.HIGHEST


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


def ctkd(student_logits, teacher_logits, labels, temperature, *, base="kd", dkd_alpha=1.0,
         dkd_beta=2.0, standardize=False):
  r"""KD or DKD at a learned (traced, differentiable) temperature: CTKD's distillation loss.

  .. math::
    L_{CTKD} = \begin{cases} L_{KD}(z_s, z_t; \tau) & \text{base = kd} \\
               L_{DKD}(z_s, z_t, y; \alpha, \beta, \tau) & \text{base = dkd} \end{cases}

  with :func:`kd` / :func:`dkd` and ``tau`` the output of CTKD's temperature module (an
  array, so the loss is differentiable w.r.t. it: ``dL/dtau`` is what trains the temperature,
  after the module's gradient reversal). With ``standardize``, both sides are first replaced
  by :func:`standardize` (z-scored rows), before the division by ``tau``, as the
  logit-standardization code applies it. The curriculum (the reversal strength) is not part
  of the loss: it acts on the gradient inside the temperature module
  (``kdjax/methods/ctkd.py``).

  Args:
    student_logits: ``[B, K]``.
    teacher_logits: ``[B, K]`` (stop-gradiented).
    labels: int ``[B]``, ``-1`` = unlabeled; read by ``base="dkd"`` only (unlabeled rows are
      left out of its means, as in :func:`dkd`); may be ``None`` with ``base="kd"``.
    temperature: float scalar array ``tau > 0`` (one global temperature).
    base: ``"kd"`` or ``"dkd"``.
    dkd_alpha, dkd_beta: DKD's TCKD and NCKD weights (``base="dkd"``).
    standardize: apply logit standardization to both sides first.

  Returns:
    float32 scalar, reduced as the base loss is ("batchmean", times ``tau^2``).

  References:
    Li et al., "Curriculum Temperature for Knowledge Distillation", AAAI 2023; zhengli97/CTKD
    ``distiller_zoo/KD.py`` (``DistillKL``), ``distiller_zoo/DKD.py`` (``DKDloss``);
    sunshangquan/logit-standardization-KD ``CTKD/distiller_zoo/KD.py``
    (``DistillKL_logit_stand``); docs/methods.md#ctkd.
  """
  s, t = as_f32(student_logits, teacher_logits)
  tau = jnp.asarray(temperature, jnp.float32)
  if tau.size != 1:
    raise ValueError(f"temperature must be a scalar (one global temperature), got shape "
                     f"{tau.shape}")
  tau = tau.reshape(())
  if base == "kd":
    return kd(s, t, temperature=tau, standardize=standardize)
  if base == "dkd":
    return dkd(s, t, labels, alpha=dkd_alpha, beta=dkd_beta, temperature=tau,
               standardize=standardize)
  raise ValueError(f"base must be 'kd' or 'dkd', got {base!r}")
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


def _kd_at_temperatures(s, t, temperatures):
  """``[tau^2 mean_b KL(p_t^tau || p_s^tau) for tau in temperatures]`` (mdistiller's
  ``kd_loss`` at each temperature), float32 ``[len(temperatures)]``."""
  def one(tau):
    per_sample = _kl_per_sample(jax.nn.log_softmax(t / tau, axis=-1),
                                jax.nn.log_softmax(s / tau, axis=-1))
    return tau**2 * jnp.mean(per_sample)
  return jax.vmap(one)(temperatures)


def _gram_gaps(s, t, temperatures):
  """Per temperature, ``(sum((G_t - G_s)^2) over the class-by-class Gram matrices P^T P,
  the same over the example-by-example P P^T)`` with ``P = softmax(z / tau)``, float32
  ``[len(temperatures)]`` each."""
  gram = lambda p, axis: jax.lax.dot_general(p, p, (((axis,), (axis,)), ((), ())),
                                             precision=jax.lax.Precision.HIGHEST)
  def one(tau):
    p_s, p_t = jax.nn.softmax(s / tau, axis=-1), jax.nn.softmax(t / tau, axis=-1)
    return tuple(jnp.sum(jnp.square(gram(p_t, axis) - gram(p_s, axis))) for axis in (0, 1))
  return jax.vmap(one)(temperatures)


def _below_median_share(x):
  """The share of the entries of ``x`` that are ``<=`` its median (numpy's 50th percentile,
  linear interpolation): MLKD's confidence masks, reduced as the reference reduces them."""
  return jnp.mean((x <= jnp.median(x)).astype(jnp.float32))


def mlkd_parts(student_weak, teacher_weak, student_strong, teacher_strong, *, temperature,
               standardize=False):
  r"""The four summed parts of MLKD (see ``mlkd``): ``{'instance_weak', 'instance_strong',
  'class', 'batch'}``, float32 scalars; ``mlkd`` is their sum."""
  sw, tw, ss, ts = as_f32(student_weak, teacher_weak, student_strong, teacher_strong)
  batch, num_classes = _check_logits(("student_weak", sw), ("teacher_weak", tw),
                                     ("student_strong", ss), ("teacher_strong", ts))
  tw, ts = jax.lax.stop_gradient(tw), jax.lax.stop_gradient(ts)
  p_tw = jax.nn.softmax(tw, axis=-1)
  row_share = _below_median_share(jnp.max(p_tw, axis=-1))      # instance / batch mask
  class_share = _below_median_share(jnp.sum(p_tw, axis=0))     # class mask
  taus = jnp.asarray((temperature,) + MLKD_TEMPERATURES, jnp.float32)
  zsw, ztw, zss, zts = _standardized(standardize, sw, tw, ss, ts)
  kd_weak = _kd_at_temperatures(zsw, ztw, taus)                # [5]
  kd_strong = _kd_at_temperatures(zss, zts, taus[:3])          # [3]
  class_gaps, batch_gaps = _gram_gaps(sw, tw, taus)            # [5] each, raw logits
  return {"instance_weak": row_share * jnp.sum(kd_weak),
          "instance_strong": jnp.sum(kd_strong) + jnp.sum(kd_weak[3:]),
          "class": class_share * jnp.sum(class_gaps) / num_classes,
          "batch": row_share * jnp.sum(batch_gaps) / batch}


def mlkd(student_weak, teacher_weak, student_strong, teacher_strong, *, temperature,
         standardize=False):
  r"""Multi-Level Logit Distillation: instance-, class- and batch-level alignment over five
  temperatures, on a weak and a strong augmentation of the same images.

  With ``T = {tau, 3, 5, 2, 6}`` (``tau`` the base temperature), ``w``/``a`` the weak and strong
  views, ``p^T = softmax(z / T)`` and
  ``KD_T(s, t) = T^2 mean_b KL(p_t^T[b] || p_s^T[b])``:

  .. math::
    c_b = \max_k \mathrm{softmax}(z_t^w)[b,k], \quad
    \bar c_k = \sum_b \mathrm{softmax}(z_t^w)[b,k], \quad
    m_B = \mathrm{mean}_b [c_b \le \mathrm{median}(c)], \quad
    m_K = \mathrm{mean}_k [\bar c_k \le \mathrm{median}(\bar c)]

    L_{ins} = m_B \sum_{T} KD_T(z_s^w, z_t^w)
      + \sum_{T \in \{\tau, 3, 5\}} KD_T(z_s^a, z_t^a) + \sum_{T \in \{2, 6\}} KD_T(z_s^w, z_t^w)

    L_{cls} = m_K \sum_T \tfrac{1}{K} \| P_t^{T\top} P_t^T - P_s^{T\top} P_s^T \|_F^2, \qquad
    L_{bat} = m_B \sum_T \tfrac{1}{B} \| P_t^T P_t^{T\top} - P_s^T P_s^{T\top} \|_F^2

    L_{MLKD} = L_{ins} + L_{cls} + L_{bat}

  with ``P^T = p^T`` of the weak view as a ``[B, K]`` matrix. This is the reference's code
  path exactly, including what it does differently from the paper: the confidence "masks"
  multiply a batch-mean loss, so each acts as the scalar share ``m`` of rows (classes) at or
  below the median confidence (numpy's 50th percentile); the strong view's instance term takes
  its temperatures 2 and 6 on the weak view; the class and batch terms use the weak view only
  (the reference computes strong-view versions and does not add them to the loss).

  ``standardize=True`` (logit standardization, Sun et al. CVPR 2024, as its MLKD applies it)
  replaces both sides' logits by ``standardize(z)`` inside every instance-level term, before
  the temperature; the class and batch terms and the confidences keep the raw logits.

  The median, ``m`` and the ``[B, B]`` batch Gram matrices depend on which examples share the
  batch: this function computes them over the batch it is given (the method layer splits the
  global batch into groups of the reference's per-GPU batch, docs/design.md#grouped-losses).

  Args:
    student_weak: ``[B, K]`` student logits on the weak view.
    teacher_weak: ``[B, K]`` teacher logits on the weak view (stop-gradiented).
    student_strong: ``[B, K]`` student logits on the strong view.
    teacher_strong: ``[B, K]`` teacher logits on the strong view (stop-gradiented).
    temperature: the base temperature ``tau`` (4 CIFAR-100, 1 ImageNet; 2 with standardize).
    standardize: z-score both sides' logits in the instance-level terms.

  Returns:
    float32 scalar, without the loss weight (the reference multiplies every term by its
    ``KD_WEIGHT``). No labels are used.

  References:
    Jin, Wang, Lin, "Multi-Level Logit Distillation", CVPR 2023.
    Jin-Ying/Multi-Level-Logit-Distillation ``mdistiller/distillers/KD_ours.py``;
    sunshangquan/logit-standardization-KD ``mdistiller/distillers/MLKD.py``;
    docs/methods.md#mlkd.
  """
  parts = mlkd_parts(student_weak, teacher_weak, student_strong, teacher_strong,
                     temperature=temperature, standardize=standardize)
  return sum(parts.values())
def sinkhorn(a, b, kernel, init, *, num_iters, eps=_WKD_EPS):
  r"""Fixed-count Sinkhorn scaling for a batch of transport problems sharing one kernel.

  Starting from ``u = init`` (``v`` is computed first), ``num_iters`` times:

  .. math::
    v \leftarrow b / (K^\top u + \epsilon), \qquad u \leftarrow a / (K v + \epsilon)

  per row of the batch; the transport plan is ``P[b, i, j] = u[b, i] K[i, j] v[b, j]``. The
  iterations are plain (not log-domain) scalings with ``eps`` in the denominators, as in the
  WKD reference, so every denominator is at least ``eps`` and the result is finite for any
  non-negative marginals, zeros included (a zero entry of ``a`` or ``b`` gives a zero row or
  column of ``P``). Differentiable: the gradient runs through every iteration, as the
  reference's autograd does.

  Args:
    a: ``[B, N]`` row marginals (the student's distribution in WKD-L).
    b: ``[B, N]`` column marginals (the teacher's).
    kernel: ``[N, N]`` Gibbs kernel ``exp(-C / reg)``, shared by the batch.
    init: ``[B, N]`` starting ``u`` (WKD: ``1 / N`` on the classes in play, 0 elsewhere).
    num_iters: number of ``(v, u)`` updates, at least 1 (static).
    eps: the denominators' guard.

  Returns:
    ``(u, v)``: float32 ``[B, N]`` each.

  References:
    Cuturi, "Sinkhorn Distances: Lightspeed Computation of Optimal Transport", NeurIPS 2013.
    JiamingLv/WKD ``mdistiller/distillers/WKD.py`` (``sinkhorn``); docs/methods.md#wkd_l.
  """
  if int(num_iters) < 1:
    raise ValueError(f"sinkhorn: num_iters must be >= 1, got {num_iters}")
  a, b, kernel, init = as_f32(a, b, kernel, init)

  def step(_, uv):
    u, _ = uv
    v = b / (jnp.matmul(u, kernel, precision=_HIGHEST) + eps)      # (K^T u)_j = sum_i u_i K_ij
    u = a / (jnp.matmul(v, kernel.T, precision=_HIGHEST) + eps)    # (K v)_i = sum_j K_ij v_j
    return u, v

  return jax.lax.fori_loop(0, int(num_iters), step, (init, jnp.zeros_like(b)))


def _nontarget_softmax(logits, gt_mask, temperature):
  """Softmax of ``logits / tau`` over the non-target classes; exactly 0 at the target."""
  u = jnp.where(gt_mask, _MASKED_LOGIT, logits / temperature)
  return jnp.where(gt_mask, 0.0, jax.nn.softmax(u, axis=-1))


def wkd_l(student_logits, teacher_logits, labels, cost_matrix, *, temperature, sinkhorn_reg,
          sinkhorn_iters):
  r"""WKD-L: entropic discrete Wasserstein distance between the non-target distributions.

  With ``g = labels[b]``, ``q`` the softmax of ``z / tau`` over the ``K - 1`` classes
  ``k != g``, the clipped cost ``C' = relu(C) + 1e-8`` and the kernel ``K = exp(-C' / lambda)``:

  .. math::
    (u, v) = \mathrm{Sinkhorn}(q_s, q_t, K_{\ne g}), \quad
    P_{ij} = u_i K_{ij} v_j, \quad
    L = \mathrm{mean}_b \sum_{i, j \ne g} P_{ij} C'_{ij}

  with ``sinkhorn_iters`` iterations from ``u = 1 / (K - 1)`` (:func:`sinkhorn`); the plan is
  not renormalised and carries gradient (through every iteration) into the student. No
  ``tau^2`` factor. The reference drops the target row and column and builds a
  ``[B, K-1, K-1]`` cost per sample; here the target class stays in place with zero mass and a
  zero starting ``u``, which gives identical iterates (its ``u`` and ``v`` stay 0, so it never
  enters a sum) with one shared ``[K, K]`` kernel, and ``sum P C'`` is computed as
  ``sum_i u_i ((K * C') v)_i`` without forming ``P``.

  Plain (not log-domain) Sinkhorn on purpose: the reference's ``1e-8`` guards decide its value
  when probabilities fall below ~1e-8, and a log-domain solver would not reproduce them. The
  guards also keep it finite: every denominator is at least 1e-8, and the reference's
  ``lambda = 0.05`` with costs in ``[0, 2]`` keeps ``K >= exp(-40)``, far from float32's
  underflow. The paper's WKD-L adds a target-class term, :func:`wkd_target`, weighted apart
  (``L_target + gamma * L``).

  Args:
    student_logits: ``[B, K]``.
    teacher_logits: ``[B, K]`` (stop-gradiented).
    labels: int ``[B]``; rows with ``-1`` are excluded (mean over labelled rows, 0 if none).
    cost_matrix: ``[K, K]`` class-to-class cost (stop-gradiented), e.g. ``1 - CKA`` or
      ``1 - cos`` of the teacher's class prototypes, after the reference's sharpening.
    temperature: ``tau`` (reference: 8 on CIFAR-100, 2 on ImageNet).
    sinkhorn_reg: entropic regularisation ``lambda`` (reference: 0.05).
    sinkhorn_iters: Sinkhorn iterations (reference: 10).

  Returns:
    float32 scalar.

  References:
    Lv, Yang and Li, "Wasserstein Distance Rivals Kullback-Leibler Divergence for Knowledge
    Distillation", NeurIPS 2024. JiamingLv/WKD @ 214cf88 ``mdistiller/distillers/WKD.py``
    (``sinkhorn``, ``wkd_logit_loss``, ``wkd_logit_loss_with_speration``);
    docs/methods.md#wkd_l.
  """
  s, t = as_f32(student_logits, teacher_logits)
  batch, num_classes = _check_logits(("student_logits", s), ("teacher_logits", t))
  if num_classes < 2:
    raise ValueError(f"wkd_l needs at least 2 classes, got {num_classes}")
  cost = jnp.asarray(cost_matrix).astype(jnp.float32)
  if cost.shape != (num_classes, num_classes):
    raise ValueError(f"cost_matrix must be [classes, classes]=({num_classes}, {num_classes}), "
                     f"got shape {cost.shape}")
  valid, safe = _split_labels(labels, batch)
  t = jax.lax.stop_gradient(t)
  cost = jax.lax.stop_gradient(jax.nn.relu(cost) + _WKD_EPS)
  gt_mask = jax.nn.one_hot(safe, num_classes, dtype=jnp.bool_)
  q_s = _nontarget_softmax(s, gt_mask, temperature)
  q_t = _nontarget_softmax(t, gt_mask, temperature)
  kernel = jnp.exp(-cost / sinkhorn_reg)
  init = jnp.where(gt_mask, 0.0, 1.0 / (num_classes - 1))
  u, v = sinkhorn(q_s, q_t, kernel, init, num_iters=sinkhorn_iters)
  per_sample = jnp.sum(u * jnp.matmul(v, (kernel * cost).T, precision=_HIGHEST), axis=-1)
  return _masked_mean(per_sample, valid)


def wkd_target(student_logits, teacher_logits, labels):
  r"""The target-class term of WKD-L: the teacher's target probability times the student's
  target log-probability, at temperature 1.

  .. math::
    L = -\mathrm{mean}_b\ p_t[b, g] \log p_s[b, g], \qquad
    p = \mathrm{softmax}(z), \ g = y_b

  ``p_t[g]`` is stop-gradiented. The reference adds it, unweighted, to ``gamma`` times the
  non-target Wasserstein distance (:func:`wkd_l`); ``gamma`` is WKD-L's loss weight, decayed by
  a cosine schedule, while this term keeps weight 1.

  Args:
    student_logits: ``[B, K]``.
    teacher_logits: ``[B, K]`` (stop-gradiented).
    labels: int ``[B]``; rows with ``-1`` are excluded (mean over labelled rows, 0 if none).

  Returns:
    float32 scalar.

  References:
    JiamingLv/WKD @ 214cf88 ``mdistiller/distillers/WKD.py``
    (``wkd_logit_loss_with_speration``, ``loss_t``); docs/methods.md#wkd_l.
  """
  s, t = as_f32(student_logits, teacher_logits)
  batch, _ = _check_logits(("student_logits", s), ("teacher_logits", t))
  valid, safe = _split_labels(labels, batch)
  p_t = _take(jax.nn.softmax(jax.lax.stop_gradient(t), axis=-1), safe)
  per_sample = -p_t * _take(jax.nn.log_softmax(s, axis=-1), safe)
  return _masked_mean(per_sample, valid)
