"""Method registry: a loss term's name -> the taps it reads and the pure loss it computes.

A recipe's `losses` is a dict of terms, e.g.

    losses.ce  = dict(weight=1.0)
    losses.dkd = dict(weight=1.0, warmup_epochs=20, alpha=1.0, beta=8.0, temperature=4.0)

Each term has a `weight`, an optional per-epoch linear `warmup_epochs` (the factor
`min(epoch / warmup_epochs, 1)` with the 1-based epoch of ALGORITHMS.md §1.4), an optional
`method` (defaults to the term's own name, so one method can appear twice under two names), and
the method's hyperparameters. The trainer sums `weight * warmup * term` over the terms.

A method's loss is `fn(student, teacher, batch, **hparams) -> float32 scalar`, where `student` and
`teacher` map tap names to arrays (`'logits'` is always there) and `batch` holds `label` etc.
"""

import dataclasses
from typing import Callable

import jax.numpy as jnp

from kdjax import losses
from kdjax.errors import KdjaxError

# Keys every term accepts besides the method's own hyperparameters.
TERM_KEYS = ('weight', 'warmup_epochs', 'method')


@dataclasses.dataclass(frozen=True)
class Method:
  """How one distillation method plugs into the trainer."""
  name: str
  loss: Callable
  defaults: dict = dataclasses.field(default_factory=dict)  # hyperparameters and defaults
  student_taps: tuple = ('logits',)
  teacher_taps: tuple = ('logits',)
  uses_teacher: bool = True


METHODS = {}


def register(method: Method) -> Method:
  METHODS[method.name] = method
  return method


register(Method(
    name='ce', uses_teacher=False, teacher_taps=(), defaults=dict(label_smoothing=0.0),
    loss=lambda s, t, batch, label_smoothing: losses.cross_entropy(
        s['logits'], batch['label'], label_smoothing=label_smoothing)))

register(Method(
    name='kd', defaults=dict(temperature=4.0),
    loss=lambda s, t, batch, temperature: losses.kd(
        s['logits'], t['logits'], temperature=temperature)))

register(Method(
    name='dkd', defaults=dict(alpha=1.0, beta=8.0, temperature=4.0),
    loss=lambda s, t, batch, alpha, beta, temperature: losses.dkd(
        s['logits'], t['logits'], batch['label'], alpha=alpha, beta=beta,
        temperature=temperature)))


@dataclasses.dataclass(frozen=True)
class Term:
  """One configured term of the objective."""
  name: str
  method: Method
  weight: float
  warmup_epochs: float
  hparams: dict

  def __call__(self, student, teacher, batch):
    return self.method.loss(student, teacher, batch, **self.hparams)

  def factor(self, epoch):
    """The warm-up factor at a 1-based epoch (1 without warm-up)."""
    if self.warmup_epochs <= 0:
      return 1.0
    return jnp.minimum(epoch / self.warmup_epochs, 1.0)


def build_terms(losses_config) -> list:
  """Turns `config.losses` into Terms, failing clearly on unknown methods or hyperparameters."""
  terms = []
  for name, cfg in losses_config.items():
    cfg = dict(cfg)
    method_name = cfg.get('method') or name
    if method_name not in METHODS:
      raise KdjaxError(f"unknown method '{method_name}' (losses.{name}); valid methods: "
                       f'{", ".join(sorted(METHODS))}')
    method = METHODS[method_name]
    unknown = set(cfg) - set(TERM_KEYS) - set(method.defaults)
    if unknown:
      raise KdjaxError(f'unknown hyperparameter(s) {sorted(unknown)} in losses.{name}; '
                       f'{method_name} takes {sorted(method.defaults)} plus {list(TERM_KEYS)}')
    if 'weight' not in cfg:
      raise KdjaxError(f'losses.{name}.weight is missing; every term needs a weight')
    hparams = {k: cfg.get(k, v) for k, v in method.defaults.items()}
    terms.append(Term(name=name, method=method, weight=float(cfg['weight']),
                      warmup_epochs=float(cfg.get('warmup_epochs') or 0), hparams=hparams))
  if not terms:
    raise KdjaxError('config.losses is empty; add at least one term, e.g. losses.ce.weight=1')
  return terms


def needs_teacher(terms) -> bool:
  return any(t.method.uses_teacher for t in terms)


def taps(terms, side: str) -> list:
  """The union of the taps the terms read on `side` ('student' or 'teacher'), 'logits' excluded."""
  names = []
  for term in terms:
    tap_names = term.method.student_taps if side == 'student' else term.method.teacher_taps
    if side == 'teacher' and not term.method.uses_teacher:
      continue
    names += [n for n in tap_names if n != 'logits' and n not in names]
  return names
