"""Method registry: a loss term's name -> the networks and taps it reads and its pure loss.

A recipe's `losses` is a dict of terms, e.g.

    losses.ce  = dict(weight=1.0)
    losses.dkd = dict(weight=1.0, warmup_epochs=20, alpha=1.0, beta=8.0, temperature=4.0)

Every term accepts, besides its method's hyperparameters:
  weight          the term's weight in the objective
  warmup_epochs   linear warm-up `min(epoch / warmup_epochs, 1)` with the 1-based epoch that is
                  constant within an epoch (ALGORITHMS.md §1.4); 0 = none
  weight_schedule ((epoch, weight), ...): from the 0-based epoch `epoch` on, the weight is
                  `weight` (replaces `weight` there); () = constant
  method          the registered method (default: the term's own name, so one method can
                  appear twice under two names, e.g. `ce` and `ce_peer`)
Methods whose value depends on which examples share a batch (DIST) also take `group_size`: the
loss is computed on consecutive groups of that many examples of the global batch and averaged,
so it does not depend on how many devices run the step (DESIGN.md §4); 0 = the whole batch.

A method's loss is `fn(out, batch, **hparams) -> float32 scalar`. `out` maps a network name
('student', 'teacher', 'peer') to its taps (`'logits'` always there); `batch` holds `label`
(-1 = unlabeled) and the rest of the input batch.
"""

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from kdjax import losses
from kdjax.errors import KdjaxError

TERM_KEYS = ('weight', 'warmup_epochs', 'weight_schedule', 'method')
NETWORKS = ('student', 'teacher', 'peer')
TRAINABLE = ('student', 'peer')


@dataclasses.dataclass(frozen=True)
class Method:
  """How one distillation method plugs into the trainer.

  `reads` maps each network the loss reads to its taps; a callable gets the hyperparameters
  (for methods like `ce` that read a network chosen in the config).
  """
  name: str
  loss: Callable
  defaults: dict = dataclasses.field(default_factory=dict)
  reads: dict | Callable = dataclasses.field(
      default_factory=lambda: {'student': ('logits',), 'teacher': ('logits',)})
  grouped: bool = False
  doc: str = ''


METHODS = {}


def register(method: Method) -> Method:
  METHODS[method.name] = method
  return method


def _s(out):
  return out['student']['logits']


def _t(out):
  return out['teacher']['logits']


register(Method(
    name='ce', doc='cross-entropy on the labelled examples of one trainable network',
    defaults=dict(label_smoothing=0.0, network='student'),
    reads=lambda hp: {hp['network']: ('logits',)},
    loss=lambda out, batch, label_smoothing, network: losses.cross_entropy(
        out[network]['logits'], batch['label'], label_smoothing=label_smoothing)))

register(Method(
    name='kd', doc='Hinton et al. 2015 (ALGORITHMS.md §3.1)', defaults=dict(temperature=4.0),
    loss=lambda out, batch, temperature: losses.kd(_s(out), _t(out), temperature=temperature)))

register(Method(
    name='dkd', doc='Zhao et al. CVPR 2022 (§3.2)',
    defaults=dict(alpha=1.0, beta=8.0, temperature=4.0),
    loss=lambda out, batch, alpha, beta, temperature: losses.dkd(
        _s(out), _t(out), batch['label'], alpha=alpha, beta=beta, temperature=temperature)))

register(Method(
    name='dist', doc='Huang et al. NeurIPS 2022 (§3.3); per group of group_size examples',
    defaults=dict(beta=1.0, gamma=1.0, temperature=1.0, group_size=32), grouped=True,
    loss=lambda out, batch, beta, gamma, temperature: losses.dist(
        _s(out), _t(out), beta=beta, gamma=gamma, temperature=temperature)))

register(Method(
    name='wsl', doc='Zhou et al. ICLR 2021 (§3.4)', defaults=dict(temperature=2.0),
    loss=lambda out, batch, temperature: losses.wsl(
        _s(out), _t(out), batch['label'], temperature=temperature)))

register(Method(
    name='skd', doc='Spherical KD, PaddleClas (§3.5); its CE is inside, use no `ce` term',
    defaults=dict(temperature=1.0, multiplier=2.0, alpha=0.9),
    loss=lambda out, batch, temperature, multiplier, alpha: losses.skd(
        _s(out), _t(out), batch['label'], temperature=temperature, multiplier=multiplier,
        alpha=alpha)))

register(Method(
    name='ofa', doc='OFA-KD logit loss, NeurIPS 2023 (§3.8)',
    defaults=dict(temperature=1.0, eps=1.0),
    loss=lambda out, batch, temperature, eps: losses.ofa(
        _s(out), _t(out), batch['label'], temperature=temperature, eps=eps)))

register(Method(
    name='ssld', doc='SSLD (§3.7): the DML-form loss against the frozen teacher; no labels',
    defaults=dict(eps=1e-12),
    loss=lambda out, batch, eps: losses.dml(_s(out), _t(out), eps=eps)))

register(Method(
    name='dml', doc='Deep Mutual Learning, PaddleClas joint form (§3.6): student vs peer',
    defaults=dict(eps=1e-12), reads={'student': ('logits',), 'peer': ('logits',)},
    loss=lambda out, batch, eps: losses.dml(_s(out), out['peer']['logits'], eps=eps)))


def _grouped(fn, group_size):
  """Applies `fn(out, batch)` to consecutive groups of `group_size` examples; averages."""
  def split(x):
    return x.reshape((x.shape[0] // group_size, group_size) + x.shape[1:])

  def apply(out, batch):
    if group_size <= 0 or jax.tree.leaves(batch)[0].shape[0] == group_size:
      return fn(out, batch)
    return jnp.mean(jax.vmap(fn)(jax.tree.map(split, out), jax.tree.map(split, batch)))
  return apply


@dataclasses.dataclass(frozen=True)
class Term:
  """One configured term of the objective."""
  name: str
  method: Method
  weight: float
  warmup_epochs: float
  weight_schedule: tuple
  hparams: dict
  group_size: int = 0

  @property
  def reads(self) -> dict:
    reads = self.method.reads
    return reads(self.hparams) if callable(reads) else reads

  def __call__(self, out, batch):
    fn = lambda o, b: self.method.loss(o, b, **self.hparams)
    if self.method.grouped:
      fn = _grouped(fn, self.group_size)
    needed = {k: out[k] for k in self.reads}
    return fn(needed, {k: v for k, v in batch.items() if k != 'image'})

  def factor(self, epoch):
    """The warm-up factor at a 1-based epoch (1 without warm-up)."""
    if self.warmup_epochs <= 0:
      return 1.0
    return jnp.minimum(epoch / self.warmup_epochs, 1.0)

  def weight_at(self, epoch):
    """The weight at a 1-based epoch, following `weight_schedule` if there is one."""
    weight = self.weight
    for start, value in self.weight_schedule:
      weight = jnp.where(epoch - 1 >= start, value, weight)
    return weight


def build_terms(losses_config, *, batch_size=None) -> list:
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
    group_size = int(hparams.pop('group_size', 0) or 0)
    if group_size and batch_size and batch_size % group_size:
      raise KdjaxError(f'batch_size {batch_size} is not a multiple of losses.{name}.group_size '
                       f'{group_size}; change one of them (0 = the whole batch)')
    schedule = tuple((float(e), float(w)) for e, w in (cfg.get('weight_schedule') or ()))
    term = Term(name=name, method=method, weight=float(cfg['weight']),
                warmup_epochs=float(cfg.get('warmup_epochs') or 0), weight_schedule=schedule,
                hparams=hparams, group_size=group_size)
    bad = set(term.reads) - set(NETWORKS)
    if bad:
      raise KdjaxError(f'losses.{name} reads unknown network(s) {sorted(bad)}; '
                       f'valid: {", ".join(NETWORKS)}')
    terms.append(term)
  if not terms:
    raise KdjaxError('config.losses is empty; add at least one term, e.g. losses.ce.weight=1')
  return terms


def networks(terms) -> set:
  """The networks the objective reads."""
  return set().union(*(t.reads for t in terms))


def taps(terms, network: str) -> list:
  """The union of the taps the terms read on `network`, 'logits' excluded (always there)."""
  names = []
  for term in terms:
    names += [n for n in term.reads.get(network, ()) if n != 'logits' and n not in names]
  return names
