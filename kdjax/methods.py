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
import numpy as np

from kdjax import losses
from kdjax.errors import KdjaxError

TERM_KEYS = ('weight', 'warmup_epochs', 'weight_schedule', 'method')
NETWORKS = ('student', 'teacher', 'peer')
TRAINABLE = ('student', 'peer')


@dataclasses.dataclass(frozen=True)
class Method:
  """How one distillation method plugs into the trainer.

  `reads` maps each network the loss reads to its taps; a callable gets the hyperparameters
  (for methods whose taps are hyperparameters, or `ce`, which reads a chosen network).
  `connector(hparams, student_shapes, teacher_shapes)` builds the method's trainable Flax
  module (kdjax/connectors/) from the tapped shapes; its `__call__(student, teacher, train,
  batch=None)` returns a dict the loss reads as `out['connector']`. `constants(hparams, teacher_model,
  teacher_variables)` computes, once, arrays passed to the loss as keyword arguments (OFD's
  margins).
  """
  name: str
  loss: Callable
  defaults: dict = dataclasses.field(default_factory=dict)
  reads: dict | Callable = dataclasses.field(
      default_factory=lambda: {'student': ('logits',), 'teacher': ('logits',)})
  grouped: bool = False
  connector: Callable | None = None
  constants: Callable | None = None
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


# --------------------------------------------------------------------------------------------
# Feature and relation methods (ALGORITHMS.md §4, §5). Taps are hyperparameters, so a recipe
# points a method at any stage of any model; connectors infer their channels from the taps.
# --------------------------------------------------------------------------------------------


def _same_taps(key):
  return lambda hp: {'student': tuple(hp[key]), 'teacher': tuple(hp[key])}


def _one_tap(key):
  return lambda hp: {'student': (hp[key],), 'teacher': (hp[key],)}


def _hwc(shape):
  return tuple(shape.shape[1:])


register(Method(
    name='at', doc='Attention Transfer (§4.2), summed over the tapped stages',
    defaults=dict(taps=('layer1', 'layer2', 'layer3', 'layer4'), p=2.0),
    reads=_same_taps('taps'),
    loss=lambda out, batch, taps, p: sum(
        losses.attention_transfer(out['student'][k], out['teacher'][k], p=p) for k in taps)))

register(Method(
    name='nst', doc='Neuron Selectivity Transfer (§5.5), summed over the tapped stages',
    defaults=dict(taps=('layer1', 'layer2', 'layer3', 'layer4')),
    reads=_same_taps('taps'),
    loss=lambda out, batch, taps: sum(
        losses.nst(out['student'][k], out['teacher'][k]) for k in taps)))

register(Method(
    name='sp', doc='Similarity-Preserving KD (§5.4), per group of group_size examples',
    defaults=dict(tap='layer4', group_size=64), reads=_one_tap('tap'), grouped=True,
    loss=lambda out, batch, tap: losses.similarity_preserving(out['student'][tap],
                                                              out['teacher'][tap])))

register(Method(
    name='rkd', doc='Relational KD (§5.1), per group of group_size examples',
    defaults=dict(tap='pooled', distance_weight=25.0, angle_weight=50.0, group_size=64),
    reads=_one_tap('tap'), grouped=True,
    loss=lambda out, batch, tap, distance_weight, angle_weight: losses.rkd(
        out['student'][tap], out['teacher'][tap], distance_weight=distance_weight,
        angle_weight=angle_weight)))

register(Method(
    name='pkt', doc='Probabilistic Knowledge Transfer (§5.2), per group of group_size examples',
    defaults=dict(tap='pooled', group_size=64), reads=_one_tap('tap'), grouped=True,
    loss=lambda out, batch, tap: losses.pkt(out['student'][tap], out['teacher'][tap])))


def _cc_connector(hp, student, teacher):
  from kdjax import connectors  # pylint: disable=g-import-not-at-top
  size = lambda s: int(np.prod(s.shape[1:]))
  return connectors.Embeddings(tap=hp['tap'], dim=hp['dim'],
                               student_features=size(student[hp['tap']]),
                               teacher_features=size(teacher[hp['tap']]))


register(Method(
    name='cc', doc='Correlation Congruence, RepDistiller form (§5.3), with trainable embeddings',
    defaults=dict(tap='pooled', dim=128, gamma=0.4, p_order=2, group_size=64),
    reads=_one_tap('tap'), grouped=True, connector=_cc_connector,
    loss=lambda out, batch, tap, dim, gamma, p_order: losses.cc(
        out['connector']['student'], out['connector']['teacher'], gamma=gamma,
        p_order=p_order)))


def _fitnet_connector(hp, student, teacher):
  from kdjax import connectors  # pylint: disable=g-import-not-at-top
  return connectors.HintRegressor(student_tap=hp['student_tap'],
                                  student_shape=_hwc(student[hp['student_tap']]),
                                  teacher_shape=_hwc(teacher[hp['teacher_tap']]))


register(Method(
    name='fitnet', doc='FitNet hint with a ConvReg regressor (§4.1)',
    defaults=dict(student_tap='layer2', teacher_tap='layer2'),
    reads=lambda hp: {'student': (hp['student_tap'],), 'teacher': (hp['teacher_tap'],)},
    connector=_fitnet_connector,
    loss=lambda out, batch, student_tap, teacher_tap: losses.fitnet(
        out['connector']['hint'], out['teacher'][teacher_tap])))


def _ofd_taps(hp):
  return tuple(f'layer{i}_pre' for i in hp['stages'])


def _ofd_connector(hp, student, teacher):
  from kdjax import connectors  # pylint: disable=g-import-not-at-top
  taps = _ofd_taps(hp)
  return connectors.OFDConnectors(student_taps=taps,
                                  teacher_channels=tuple(teacher[t].shape[-1] for t in taps))


def _ofd_margins(hp, teacher, teacher_variables):
  """Per-channel margins from the teacher's BatchNorm before each stage's final ReLU."""
  margins = []
  for i in hp['stages']:
    node = teacher_variables['params']
    for part in teacher.bn_before_relu(i).split('/'):
      node = node[part]
    margins.append(losses.ofd_margin(np.asarray(node['scale']), np.asarray(node['bias'])))
  return {'margins': tuple(margins)}


def _ofd_loss(out, batch, stages, margins):
  n = len(stages)
  total = 0.0
  for j, tap in enumerate(_ofd_taps({'stages': stages})):
    stage_loss = losses.ofd(out['connector'][tap], out['teacher'][tap], margins[j])
    total = total + stage_loss / 2 ** (n - 1 - j)  # 1/8, 1/4, 1/2, 1 from shallow to deep
  return total


register(Method(
    name='ofd', doc='Overhaul of Feature Distillation (§4.3): pre-ReLU stages, margins, partial L2',
    defaults=dict(stages=(1, 2, 3, 4)),
    reads=lambda hp: {'student': _ofd_taps(hp), 'teacher': _ofd_taps(hp)},
    connector=_ofd_connector, constants=_ofd_margins, loss=_ofd_loss))


def _mgd_connector(hp, student, teacher):
  from kdjax import connectors  # pylint: disable=g-import-not-at-top
  tap = hp['tap']
  return connectors.MaskedGenerator(tap=tap, student_channels=student[tap].shape[-1],
                                    teacher_channels=teacher[tap].shape[-1],
                                    lambda_mgd=hp['lambda_mgd'])


register(Method(
    name='mgd', doc='Masked Generative Distillation (§4.5); alpha_mgd is the term weight (7e-5)',
    defaults=dict(tap='layer4', lambda_mgd=0.15), reads=_one_tap('tap'),
    connector=_mgd_connector,
    loss=lambda out, batch, tap, lambda_mgd: losses.mgd(out['connector']['generated'],
                                                        out['teacher'][tap])))


def _pefd_connector(hp, student, teacher):
  from kdjax import connectors  # pylint: disable=g-import-not-at-top
  size = lambda s: int(np.prod(s.shape[1:]))
  tap = hp['tap']
  return connectors.ProjectorEnsemble(tap=tap, num_projectors=hp['num_projectors'],
                                      student_features=size(student[tap]),
                                      teacher_features=size(teacher[tap]))


register(Method(
    name='pefd', doc='Projector Ensemble Feature Distillation (§4.6)',
    defaults=dict(tap='pooled', num_projectors=3), reads=_one_tap('tap'),
    connector=_pefd_connector,
    loss=lambda out, batch, tap, num_projectors: losses.pefd(out['connector']['projected'],
                                                             out['teacher'][tap])))

register(Method(
    name='udml', doc='UDML feature term (§4.8): mean squared distance between the two peers',
    defaults=dict(tap='layer3'),
    reads=lambda hp: {'student': (hp['tap'],), 'peer': (hp['tap'],)},
    loss=lambda out, batch, tap: losses.feature_distance(out['student'][tap], out['peer'][tap])))


def _reviewkd_connector(hp, student, teacher):
  from kdjax import connectors  # pylint: disable=g-import-not-at-top
  s_taps, t_taps = tuple(hp['student_taps']), tuple(hp['teacher_taps'])
  if len(s_taps) != len(t_taps):
    raise KdjaxError(f'reviewkd pairs student_taps {s_taps} with teacher_taps {t_taps}; give '
                     'both the same number of taps')
  shape = lambda s: tuple(s.shape[1:]) if len(s.shape) == 4 else (1, 1, s.shape[-1])
  in_channels = tuple(student[t].shape[-1] for t in s_taps)
  return connectors.ReviewKDConnector(
      student_taps=s_taps, in_channels=in_channels,
      teacher_shapes=tuple(shape(teacher[t]) for t in t_taps),
      mid=min(hp['max_mid_channels'], in_channels[-1]))


def _reviewkd_loss(out, batch, student_taps, teacher_taps, max_mid_channels):
  from kdjax.connectors.reviewkd import as_map  # pylint: disable=g-import-not-at-top
  return sum(losses.hcl(out['connector'][f'level{i}'], as_map(out['teacher'][tap]))
             for i, tap in enumerate(teacher_taps))


register(Method(
    name='reviewkd', doc='ReviewKD (§4.4): ABF fusion chain + hierarchical context loss',
    defaults=dict(student_taps=('layer1_pre', 'layer2_pre', 'layer3_pre', 'layer4_pre', 'pooled'),
                  teacher_taps=('layer1_pre', 'layer2_pre', 'layer3_pre', 'layer4_pre', 'pooled'),
                  max_mid_channels=512),
    reads=lambda hp: {'student': tuple(hp['student_taps']), 'teacher': tuple(hp['teacher_taps'])},
    connector=_reviewkd_connector, loss=_reviewkd_loss))


def _afd_connector(hp, student, teacher):
  from kdjax import connectors  # pylint: disable=g-import-not-at-top
  s_taps, t_taps = tuple(hp['student_taps']), tuple(hp['teacher_taps'])
  for side, taps, shapes in (('student', s_taps, student), ('teacher', t_taps, teacher)):
    if not taps or any(len(shapes[t].shape) != 4 for t in taps):
      raise KdjaxError(f'losses.afd.{side}_taps must name one or more [B, H, W, C] feature maps '
                       f'(e.g. block0, block1, ...); got {taps}')
  return connectors.AFDAttention(
      student_taps=s_taps, teacher_taps=t_taps,
      student_channels=tuple(int(student[t].shape[-1]) for t in s_taps),
      teacher_channels=tuple(int(teacher[t].shape[-1]) for t in t_taps), qk_dim=hp['qk_dim'])


def _afd_loss(out, batch, student_taps, teacher_taps, qk_dim):
  return losses.afd([out['student'][t] for t in student_taps],
                    [out['teacher'][t] for t in teacher_taps], out['connector']['attention'])


register(Method(
    name='afd', doc='Show, Attend and Distill (§4.7): attention over student blocks per teacher '
                    'block; w_afd is the term weight (50 ImageNet, 200 CIFAR)',
    defaults=dict(student_taps=tuple(f'block{i}' for i in range(8)),
                  teacher_taps=tuple(f'block{j}' for j in range(16)), qk_dim=128),
    reads=lambda hp: {'student': tuple(hp['student_taps']), 'teacher': tuple(hp['teacher_taps'])},
    connector=_afd_connector, loss=_afd_loss))


def _crd_connector(hp, student, teacher):
  from kdjax import connectors  # pylint: disable=g-import-not-at-top
  size = lambda s: int(np.prod(s.shape[1:]))
  tap = hp['tap']
  if hp['num_data'] <= 0:
    raise KdjaxError('losses.crd.num_data must be the number of training examples (the memory '
                     'bank rows); the trainer fills it from the dataset')
  return connectors.CRDMemory(tap=tap, dim=hp['dim'], n_data=hp['num_data'],
                              num_negatives=hp['num_negatives'],
                              temperature=hp['temperature'], momentum=hp['momentum'],
                              student_features=size(student[tap]),
                              teacher_features=size(teacher[tap]))


register(Method(
    name='crd', doc='Contrastive Representation Distillation (§4.10): embeddings + memory banks; '
                    'needs input.add_index',
    defaults=dict(tap='pooled', dim=128, num_negatives=16384, temperature=0.07, momentum=0.5,
                  num_data=0),
    reads=_one_tap('tap'), connector=_crd_connector,
    loss=lambda out, batch, tap, dim, num_negatives, temperature, momentum, num_data: losses.crd(
        out['connector']['student_probs'], out['connector']['teacher_probs'], n_data=num_data)))


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
  constants: dict = dataclasses.field(default_factory=dict)

  @property
  def reads(self) -> dict:
    reads = self.method.reads
    return reads(self.hparams) if callable(reads) else reads

  def __call__(self, out, batch):
    """The term's value; `out` holds the networks' taps and, if any, `out['connector']`."""
    fn = lambda o, b: self.method.loss(o, b, **self.hparams, **self.constants)
    if self.method.grouped:
      fn = _grouped(fn, self.group_size)
    needed = {k: out[k] for k in list(self.reads) + ['connector'] if k in out}
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
