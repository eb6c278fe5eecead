"""The method registry: how a distillation method plugs into the trainer.

A method is registered once, in its own module of `kdjax/methods/`, as a `Method`:

  * `taps`     hyperparameters that name what the method reads (tap names, stages, a network),
               and `reads(**taps) -> {network: (tap, ...)}` turning them into taps per network;
  * `hparams`  the loss's hyperparameters; the adapter `loss(inputs, **hparams, **constants)`
               receives exactly these (and the method's constants), nothing else;
  * `connector(ctx, student_shapes, teacher_shapes, **connector_hparams)` builds the method's
               trainable Flax module, if it has one, from the tapped shapes;
  * `constants(ctx, **taps) -> dict`, computed once at set-up (OFD's margins from the teacher's
               BatchNorm, CRD's dataset size) and passed to the loss as keyword arguments;
  * `group_size` > 0 for losses that depend on which examples share a batch: the default size
               of the groups of the global batch the loss is computed on (docs/design.md#grouped-losses).

A recipe's `losses` is a dict of terms; a term names a method (its own name by default) and
sets any of the method's `taps`, `hparams`, `connector_hparams`, `group_size`, plus the keys
every term has: `weight`, `warmup_epochs`, `weight_schedule`, `method`. docs/methods.md
describes every registered method.
"""

import dataclasses
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from kdjax.errors import KdjaxError

TERM_KEYS = ('weight', 'warmup_epochs', 'weight_schedule', 'method')
# A tap read on the second, strongly augmented view of the batch (input.strong_augment) is named
# with this suffix: 'logits@strong' (docs/design.md#two-views).
STRONG = '@strong'
VIEWS = ('', 'strong')
NETWORKS = ('student', 'teacher', 'peer')
TRAINABLE = ('student', 'peer')


class Inputs(NamedTuple):
  """What a loss adapter sees: per network, the arrays of the taps it reads, in `reads` order.

  A pytree, so grouped losses split and `vmap` it as a whole. Every array is float32; the
  teacher's carry no gradient.
  """
  student: tuple = ()
  teacher: tuple = ()
  peer: tuple = ()
  connector: Any = None    # the connector's output (a NamedTuple of the method's module)
  labels: Any = None       # int32 [B], -1 = unlabeled; with mixup the dominant class of `targets`
  targets: Any = None      # float32 [B, K] mixed one-hot targets with mixup/cutmix on, else None


@dataclasses.dataclass(frozen=True)
class BuildContext:
  """What connectors and constants may look at when a run is set up (host values only)."""
  teacher: Any = None              # the teacher model, or None
  teacher_variables: Any = None    # its variables (host arrays), or None
  index_space: Callable | None = None  # () -> rows needed to index every training example
  student: Any = None              # the student model (its family decides OFA's branches)
  shapes: Callable | None = None   # (network, tap) -> ShapeDtypeStruct for a batch of 1
  term: str = ''                   # the term being built, for error messages
  term_taps: dict = dataclasses.field(default_factory=dict)  # the term's `taps` values

  def tap_shape(self, network: str, tap: str):
    """The shape of any tap of `network` (read by the term or not), e.g. its `pooled` width."""
    if self.shapes is None:
      raise KdjaxError(f'losses.{self.term}: tap shapes are not available here')
    return self.shapes(network, tap)

  def num_train_examples(self) -> int:
    """One row per training example (memory banks); needs `input.add_index`."""
    if self.index_space is None:
      raise KdjaxError(f"losses.{self.term} needs each example's index: set "
                       '--config.input.add_index=True')
    return int(self.index_space())


def features_per_example(shape) -> int:
  """The size of one example of a tapped shape, flattened (what a Linear on it takes)."""
  return math.prod(shape.shape[1:])


def logits() -> dict:
  """`reads` of the logit methods: the student's and the teacher's logits."""
  return {'student': ('logits',), 'teacher': ('logits',)}


def same_taps(taps) -> dict:
  """`reads` of methods that compare the same taps of student and teacher."""
  return {'student': tuple(taps), 'teacher': tuple(taps)}


def on_view(tap: str, view: str) -> str:
  """`tap` on `view` ('' = the batch's main image, 'strong' = its strong view): 'logits@strong'."""
  if view not in VIEWS:
    raise KdjaxError(f"unknown view '{view}'; valid: '' (the main image) or 'strong' "
                     '(input.strong_augment)')
  return tap + STRONG if view else tap


def base_tap(tap: str) -> str:
  """The network's tap behind a (possibly strong-view) tap name: 'logits@strong' -> 'logits'."""
  return tap[:-len(STRONG)] if tap.endswith(STRONG) else tap


def one_tap(tap) -> dict:
  """`reads` of methods that compare one tap of student and teacher."""
  return {'student': (tap,), 'teacher': (tap,)}


def paired_taps(student_taps, teacher_taps) -> dict:
  """`reads` of methods that pair student taps with (other) teacher taps."""
  return {'student': tuple(student_taps), 'teacher': tuple(teacher_taps)}


@dataclasses.dataclass(frozen=True)
class Method:
  """One distillation method; see the module docstring for each field's contract."""
  name: str
  loss: Callable
  hparams: dict = dataclasses.field(default_factory=dict)
  taps: dict = dataclasses.field(default_factory=dict)
  reads: Callable = logits
  connector: Callable | None = None
  connector_hparams: dict = dataclasses.field(default_factory=dict)
  constants: Callable | None = None
  group_size: int = 0
  doc: str = ''

  def config_defaults(self) -> dict:
    """Every key a term of this method accepts in a recipe, with its default."""
    defaults = {**self.taps, **self.hparams, **self.connector_hparams}
    if self.group_size:
      defaults['group_size'] = self.group_size
    return defaults


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
  """Adds `method` to the registry (a user's own file may call this too) and returns it."""
  groups = [set(method.taps), set(method.hparams), set(method.connector_hparams),
            set(TERM_KEYS) | {'group_size'}]
  for i, group in enumerate(groups):
    for other in groups[i + 1:]:
      if group & other:
        raise ValueError(f'method {method.name}: hyperparameter(s) {sorted(group & other)} '
                         'declared twice; each key belongs to one group')
  METHODS[method.name] = method
  return method


def grouped_mean(fn, inputs: Inputs, group_size: int):
  """The mean of `fn` over consecutive groups of `group_size` examples of `inputs`."""
  size = jax.tree.leaves(inputs)[0].shape[0]
  if group_size <= 0 or size == group_size:
    return fn(inputs)
  split = lambda x: x.reshape((size // group_size, group_size) + x.shape[1:])
  return jnp.mean(jax.vmap(fn)(jax.tree.map(split, inputs)))


@dataclasses.dataclass(frozen=True)
class Term:
  """One configured term of the objective."""
  name: str
  method: Method
  weight: float
  warmup_epochs: float = 0.0
  weight_schedule: tuple = ()
  hparams: dict = dataclasses.field(default_factory=dict)
  taps: dict = dataclasses.field(default_factory=dict)
  connector_hparams: dict = dataclasses.field(default_factory=dict)
  group_size: int = 0
  constants: dict = dataclasses.field(default_factory=dict)

  @property
  def reads(self) -> dict:
    """{network: (tap, ...)} this term reads."""
    return {k: tuple(v) for k, v in self.method.reads(**self.taps).items()}

  def select(self, outputs: dict, network: str) -> tuple:
    """The arrays of `network`'s taps this term reads, in `reads` order."""
    return tuple(outputs[network][tap] for tap in self.reads.get(network, ()))

  def build_connector(self, ctx: BuildContext, shapes: dict):
    """The method's connector module for tapped `shapes` ({network: {tap: shape}}), or None."""
    if self.method.connector is None:
      return None
    ctx = dataclasses.replace(ctx, term=self.name, term_taps=self.taps)
    shapes = {net: {**v, **{t + STRONG: v[t] for t in v}} for net, v in shapes.items()}
    return self.method.connector(ctx, self.select(shapes, 'student'),
                                 self.select(shapes, 'teacher') if 'teacher' in shapes else (),
                                 **self.connector_hparams)

  def __call__(self, outputs: dict, labels, connector_output=None, targets=None):
    """The term's value from the networks' taps ({network: {tap: array}}), labels and, with
    mixup on, the soft targets."""
    inputs = Inputs(**{net: self.select(outputs, net) for net in self.reads},
                    connector=connector_output, labels=labels, targets=targets)
    fn = lambda x: self.method.loss(x, **self.hparams, **self.constants)
    return grouped_mean(fn, inputs, self.group_size)

  def factor(self, epoch):
    """The warm-up factor `min(epoch / warmup_epochs, 1)` at a 1-based epoch (1 without)."""
    if self.warmup_epochs <= 0:
      return 1.0
    return jnp.minimum(epoch / self.warmup_epochs, 1.0)

  def weight_at(self, epoch):
    """The weight at a 1-based epoch: from 0-based epoch `e` of `(e, w)` on, `w`."""
    weight = self.weight
    for start, value in self.weight_schedule:
      weight = jnp.where(epoch - 1 >= start, value, weight)
    return weight


def _check_values(name, cfg):
  """Values that would only fail (or silently produce NaN) later in training."""
  def finite(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
  if not finite(cfg['weight']):
    raise KdjaxError(f"losses.{name}.weight must be a finite number, got {cfg['weight']}")
  for _, weight in cfg.get('weight_schedule') or ():
    if not finite(weight):
      raise KdjaxError(f'losses.{name}.weight_schedule weights must be finite, got {weight}')
  if (cfg.get('warmup_epochs') or 0) < 0:
    raise KdjaxError(f"losses.{name}.warmup_epochs must be >= 0, got {cfg['warmup_epochs']}")
  for key, value in cfg.items():
    if 'temperature' in key and not (finite(value) and value > 0):
      raise KdjaxError(f'losses.{name}.{key} must be a positive number, got {value}')


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
    accepted = method.config_defaults()
    unknown = set(cfg) - set(TERM_KEYS) - set(accepted)
    if unknown:
      raise KdjaxError(f'unknown hyperparameter(s) {sorted(unknown)} in losses.{name}; '
                       f'{method_name} takes {sorted(accepted)} plus {list(TERM_KEYS)}')
    if 'weight' not in cfg:
      raise KdjaxError(f'losses.{name}.weight is missing; every term needs a weight')
    _check_values(name, cfg)
    pick = lambda defaults: {k: cfg.get(k, v) for k, v in defaults.items()}
    group_size = int(cfg.get('group_size', method.group_size) or 0)
    if group_size and batch_size and batch_size % group_size:
      raise KdjaxError(f'batch_size {batch_size} is not a multiple of losses.{name}.group_size '
                       f'{group_size}; change one of them (0 = the whole batch)')
    schedule = tuple((float(e), float(w)) for e, w in (cfg.get('weight_schedule') or ()))
    term = Term(name=name, method=method, weight=float(cfg['weight']),
                warmup_epochs=float(cfg.get('warmup_epochs') or 0), weight_schedule=schedule,
                hparams=pick(method.hparams), taps=pick(method.taps),
                connector_hparams=pick(method.connector_hparams), group_size=group_size)
    bad = set(term.reads) - set(NETWORKS)
    if bad:
      raise KdjaxError(f'losses.{name} reads unknown network(s) {sorted(bad)}; '
                       f'valid: {", ".join(NETWORKS)}')
    terms.append(term)
  if not terms:
    raise KdjaxError('config.losses is empty; add at least one term, e.g. losses.ce.weight=1')
  return terms


def with_constants(terms, ctx: BuildContext) -> list:
  """The terms with their methods' one-off constants computed from `ctx`."""
  return [dataclasses.replace(
      t, constants=t.method.constants(dataclasses.replace(ctx, term=t.name), **t.taps))
          if t.method.constants else t for t in terms]


def networks(terms) -> set:
  """The networks the objective reads."""
  return set().union(*(t.reads for t in terms))


def taps(terms, network: str) -> list:
  """The union of the taps the terms read on `network` (on either view), 'logits' excluded
  (always there)."""
  names = []
  for term in terms:
    for name in map(base_tap, term.reads.get(network, ())):
      if name != 'logits' and name not in names:
        names.append(name)
  return names


def reads_strong_view(terms) -> bool:
  """Whether a term reads a tap of the strong view (then the step runs every network on it)."""
  return any(tap.endswith(STRONG) for t in terms for names in t.reads.values() for tap in names)
