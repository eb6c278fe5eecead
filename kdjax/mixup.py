"""Mixup and CutMix on the global batch, inside the jit train step (timm's ``Mixup``, mode
'batch'), configured by ``config.mixup`` (docs/design.md#training-vit-and-mlp-students).

One draw per batch, a pure function of a key (the trainer's step stream, so of (seed, step)):

  * with probability ``prob`` the batch is mixed, else it is left as it is (``lam = 1``);
  * if both alphas are > 0, CutMix with probability ``switch_prob``, else Mixup; if only one
    alpha is > 0, that one;
  * ``lam ~ Beta(alpha, alpha)`` of the chosen kind;
  * example ``i`` is paired with example ``B - 1 - i`` (the batch flipped, as timm's
    ``x.flip(0)``); an odd batch pairs its middle example with itself (it stays as it is);
  * Mixup: ``x_i <- lam x_i + (1 - lam) x_{B-1-i}``;
    CutMix: a box of ``int(H sqrt(1 - lam)) x int(W sqrt(1 - lam))`` centred on a uniform pixel
    ``(cy, cx)`` and clipped to the image is pasted from ``x_{B-1-i}``, and ``lam`` becomes
    ``1 - box area / (H W)`` (timm's ``correct_lam``);
  * targets ``t_i = lam onehot(y_i) + (1 - lam) onehot(y_{B-1-i})``, float32 ``[B, K]``.

Label smoothing is not applied here: the CE term applies it to the mixed target
(``(1 - s) t + s / K``, equal to timm's ``mixup_target`` with smoothing).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp


class MixParams(NamedTuple):
  """One batch's draw: scalars, so the same on any mesh."""
  lam: jax.Array         # float32: the weight of x_i (cutmix: corrected to the box's area)
  use_cutmix: jax.Array  # bool
  box: jax.Array         # int32 [4]: (yl, yh, xl, xh), rows yl..yh-1, columns xl..xh-1


def enabled(cfg) -> bool:
  """Whether `config.mixup` mixes at all (an alpha > 0)."""
  return cfg.mixup_alpha > 0 or cfg.cutmix_alpha > 0


def cutmix_box(lam, cy, cx, height, width):
  """timm's ``rand_bbox`` for a given centre, and the corrected lam (``correct_lam``).

  cut = int(side * sqrt(1 - lam)); rows [cy - cut_h // 2, cy + (cut_h + 1) // 2) clipped to
  [0, H] (columns alike); returns (int32 [4] box, float32 1 - area / (H W)).
  """
  ratio = jnp.sqrt(1.0 - lam)
  cut_h = jnp.floor(height * ratio).astype(jnp.int32)
  cut_w = jnp.floor(width * ratio).astype(jnp.int32)
  yl = jnp.clip(cy - cut_h // 2, 0, height)
  yh = jnp.clip(cy + (cut_h + 1) // 2, 0, height)
  xl = jnp.clip(cx - cut_w // 2, 0, width)
  xh = jnp.clip(cx + (cut_w + 1) // 2, 0, width)
  area = ((yh - yl) * (xh - xl)).astype(jnp.float32)
  return jnp.stack([yl, yh, xl, xh]), 1.0 - area / float(height * width)


def draw(key, cfg, height, width) -> MixParams:
  """The batch's mixing parameters from `key` (each draw has its own fold_in of `key`)."""
  k_apply, k_switch, k_mixup, k_cutmix, k_cy, k_cx = (jax.random.fold_in(key, i)
                                                       for i in range(6))
  applied = jax.random.uniform(k_apply) < cfg.prob
  if cfg.mixup_alpha > 0 and cfg.cutmix_alpha > 0:
    use_cutmix = jax.random.uniform(k_switch) < cfg.switch_prob
  else:
    use_cutmix = jnp.asarray(cfg.cutmix_alpha > 0)
  beta = lambda k, alpha: (jax.random.beta(k, alpha, alpha) if alpha > 0
                           else jnp.ones((), jnp.float32))
  lam = jnp.where(use_cutmix, beta(k_cutmix, cfg.cutmix_alpha), beta(k_mixup, cfg.mixup_alpha))
  lam = jnp.where(applied, lam, 1.0).astype(jnp.float32)
  cy = jax.random.randint(k_cy, (), 0, height)
  cx = jax.random.randint(k_cx, (), 0, width)
  box, box_lam = cutmix_box(lam, cy, cx, height, width)
  use_cutmix = use_cutmix & applied
  return MixParams(lam=jnp.where(use_cutmix, box_lam, lam), use_cutmix=use_cutmix, box=box)


def mix(images, labels, num_classes, params: MixParams):
  """Mixes a batch with `params`: (images [B, H, W, C], targets float32 [B, K]).

  `labels` int [B] must all be >= 0 (the trainer refuses mixup with hidden labels).
  """
  flipped = images[::-1]
  yl, yh, xl, xh = params.box
  rows = jnp.arange(images.shape[1])[:, None]
  cols = jnp.arange(images.shape[2])[None, :]
  inside = (rows >= yl) & (rows < yh) & (cols >= xl) & (cols < xh)
  lam = params.lam.astype(images.dtype)
  mixed = jnp.where(params.use_cutmix, jnp.where(inside[None, :, :, None], flipped, images),
                    lam * images + (1 - lam) * flipped)
  onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  targets = params.lam * onehot + (1.0 - params.lam) * onehot[::-1]
  return mixed, targets
