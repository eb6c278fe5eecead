"""The trainer: train state, one jit train step sharded over a device mesh, exact eval, the loop.

Read top to bottom:
  1. Mesh and sharding        one 'data' axis over every device of every process, in process
                              order; the batch split over it, the variables replicated or
                              (teacher.shard / student.shard) split FSDP-style
  2. Models and variables     student (trainable), teacher (frozen, loaded, never saved)
  3. Optimizer                optax SGD / AdamW with step or cosine schedules and warm-up
  4. Train step               mixup -> teacher forward -> student forward -> loss terms ->
                              update (clipped) -> EMA
  5. Eval step                top-1 / top-5 (+ teacher agreement and KL) over masked batches;
                              the teacher's eval logits computed once per session, then kept
  6. The loop                 resume, train, log, evaluate, checkpoint

Everything here is importable from a notebook: `train_and_evaluate(config, workdir)`.
"""

import collections
import dataclasses
import functools
import json
import logging
import math
import os
import shutil
import signal
import threading
import time
from typing import Any

import flax
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import optax

from kdjax import cache
from kdjax import checkpoint
from kdjax import config_base
from kdjax import logs
from kdjax import losses
from kdjax import methods
from kdjax import metrics as metrics_lib
from kdjax import mixup as mixup_lib
from kdjax import models
from kdjax import provenance
from kdjax import taps as taps_lib
from kdjax import workdir as workdir_lib
from kdjax.data import input_pipeline
from kdjax.data import on_device
from kdjax.errors import KdjaxError
from kdjax.errors import Preempted
from kdjax.methods import dot as dot_lib

log = logging.getLogger(__name__)  # kdjax.* loggers: shown at INFO (kdjax/logs.py)

# --------------------------------------------------------------------------------------------
# 1. Mesh and sharding
# --------------------------------------------------------------------------------------------

# Arrays with fewer elements stay replicated even when sharding is on: gathering them would
# cost more latency than the memory they would save (BatchNorm vectors, biases, small kernels).
MIN_SHARDED_SIZE = 1 << 14
# teacher.shard=False still shards the teacher when its variables would take more than this
# share of a device's memory: the rest is the student's, its optimizer's and the activations'.
TEACHER_AUTO_SHARD_FRACTION = 0.5


def process_ordered(devices) -> list:
  """`devices` sorted by (process_index, id): each process's devices side by side.

  A global batch split over the mesh then gives process p (L rows per process) exactly the
  contiguous rows [p * L, (p + 1) * L), on one host as on any pod, so the input pipeline's
  rows and the fixed-size groups of batch-composition losses (DIST, SP, RKD, PKT, CC, AFD)
  hold the same examples whatever the topology.
  """
  return sorted(devices, key=lambda d: (d.process_index, d.id))


def make_mesh(devices=None):
  """A 1-D mesh named 'data' over `devices` (default: every device of every process), in
  process order (`process_ordered`).

  Built explicitly rather than with jax.make_mesh, whose topology-aware order may interleave
  processes. Axis type Auto on purpose: the batch is split over 'data' (and, with
  teacher.shard / student.shard, so are the large arrays of the variables: `param_sharding`),
  and XLA's propagation inserts the all-gathers, the gradient and BatchNorm reductions.
  """
  devices = jax.devices() if devices is None else list(devices)
  return jax.sharding.Mesh(np.array(process_ordered(devices)), ('data',),
                           axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh):
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def batch_sharded(mesh):
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))


def global_batch(local_batch: dict, mesh) -> dict:
  """Assembles global arrays from each process's local numpy batch."""
  sharding = batch_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}


def sharded_dimension(shape, num_shards, min_size=None) -> int | None:
  """The dimension of an array of `shape` to split over `num_shards` devices: the largest one
  that divides by `num_shards` (the last of equals), or None (replicated) when none does, when
  there is only one device, or when the array has fewer than `min_size` elements
  (default MIN_SHARDED_SIZE)."""
  min_size = MIN_SHARDED_SIZE if min_size is None else min_size
  if num_shards <= 1 or math.prod(shape) < min_size:
    return None
  candidates = [i for i, d in enumerate(shape) if d >= num_shards and d % num_shards == 0]
  return max(candidates, key=lambda i: (shape[i], i), default=None)


def param_sharding(mesh, shape):
  """FSDP-style placement of one variable: split over 'data' along `sharded_dimension`."""
  dim = sharded_dimension(tuple(shape), mesh.shape['data'])
  if dim is None:
    return replicated(mesh)
  spec = [None] * len(shape)
  spec[dim] = 'data'
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec))


def variable_shardings(tree, mesh, shard: bool):
  """A tree of shardings for `tree` (arrays or shapes): `param_sharding` of each leaf when
  `shard`, else replicated. Depends on shapes only, so optimizer moments and EMA copies land
  where their parameters do."""
  if not shard:
    return jax.tree.map(lambda _: replicated(mesh), tree)
  return jax.tree.map(lambda x: param_sharding(mesh, np.shape(x)), tree)


def tree_bytes(tree) -> int:
  """Bytes of every array of `tree` (what a replicated copy takes on each device)."""
  return sum(math.prod(np.shape(x)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def bytes_per_device(tree) -> int:
  """The bytes of `tree`'s arrays (or ShapeDtypeStructs with a sharding) that one of this
  process's devices holds: per device, the sizes of its shards summed over the leaves; the
  largest over the devices."""
  per_device = {}
  for leaf in jax.tree.leaves(tree):
    itemsize = np.dtype(leaf.dtype).itemsize
    for device, index in leaf.sharding.addressable_devices_indices_map(leaf.shape).items():
      size = math.prod(len(range(*s.indices(n))) for s, n in zip(index, leaf.shape))
      per_device[device] = per_device.get(device, 0) + size * itemsize
  return max(per_device.values(), default=0)


def describe_placement(tree, shard: bool) -> str:
  """'1.20 MiB per device of 9.60 MiB (3 of 40 arrays sharded)'; with `shard` on, also the
  large arrays that stay replicated because no dimension divides by the device count."""
  leaves = jax.tree.leaves(tree)
  sharded = sum(not leaf.sharding.is_fully_replicated for leaf in leaves)
  text = (f'{_mib(bytes_per_device(tree))} per device of {_mib(tree_bytes(tree))} '
          f'({sharded} of {len(leaves)} arrays sharded')
  num_devices = leaves[0].sharding.num_devices if leaves else 1
  stuck = [leaf for leaf in leaves if leaf.sharding.is_fully_replicated
           and math.prod(leaf.shape) >= MIN_SHARDED_SIZE]
  if shard and num_devices > 1 and stuck:
    text += (f'; {_count(len(stuck), "large one")} ({_mib(tree_bytes(stuck))}) replicated: no '
             f'dimension divides by {num_devices}')
  return text + ')'


def _count(n, noun, plural=None):
  return f'{n} {noun}' if n == 1 else f'{n} {plural or noun + "s"}'


def _mib(num_bytes):
  return f'{num_bytes / 2**20:.2f} MiB'


def device_memory_limit(mesh) -> int | None:
  """The smallest memory limit in bytes of this process's devices in `mesh`, or None where
  the backend reports none (CPU)."""
  limits = []
  for device in mesh.local_devices:
    stats = device.memory_stats() or {}
    if 'bytes_limit' not in stats:
      return None
    limits.append(stats['bytes_limit'])
  return min(limits, default=None)


def shard_teacher(config, teacher_variables, mesh) -> tuple[bool, str]:
  """(whether the frozen teacher's variables are sharded, why): teacher.shard, or
  automatically when they would take more than TEACHER_AUTO_SHARD_FRACTION of a device's
  memory (only where the backend reports a limit: never on CPU)."""
  if mesh.shape['data'] == 1 or teacher_variables is None:
    return False, 'one device' if teacher_variables is not None else 'no teacher'
  if config.teacher.get('shard', False):
    return True, 'teacher.shard'
  limit = device_memory_limit(mesh)
  size = tree_bytes(teacher_variables)
  if limit is not None and size > TEACHER_AUTO_SHARD_FRACTION * limit:
    return True, (f'automatically: its {_mib(size)} would take more than '
                  f'{TEACHER_AUTO_SHARD_FRACTION:.0%} of a device\'s {_mib(limit)}')
  return False, 'teacher.shard=False'


def teacher_shardings(setup, mesh):
  """The shardings of the teacher's variables over `mesh` (`shard_teacher`); None without a
  teacher."""
  variables = setup.networks.teacher_variables
  if variables is None:
    return None
  sharded, _ = shard_teacher(setup.config, variables, mesh)
  return variable_shardings(variables, mesh, sharded)


def place_teacher(setup, mesh):
  """The frozen teacher's variables on the devices of `mesh`, replicated or sharded
  (`shard_teacher`); logs where they went and why. None without a teacher."""
  variables = setup.networks.teacher_variables
  if variables is None:
    return None
  sharded, why = shard_teacher(setup.config, variables, mesh)
  placed = jax.device_put(variables, variable_shardings(variables, mesh, sharded))
  log.info('Teacher variables: %s; %s over %s (%s).',
           describe_placement(placed, sharded), 'sharded' if sharded else 'replicated',
           _count(mesh.shape['data'], 'device'), why)
  return placed


def abstract_state(setup, mesh):
  """The TrainState as ShapeDtypeStructs (`jax.eval_shape`: nothing is computed) with their
  shardings over `mesh`: every array replicated, or with student.shard the large ones split
  FSDP-style (`param_sharding`): networks, connectors, batch_stats, optimizer state and EMA
  alike. What `bytes_per_device` reads without building the state."""
  abstract = jax.eval_shape(functools.partial(init_state, setup, 0), setup.networks.pretrained)
  shardings = variable_shardings(abstract, mesh, setup.config.student.get('shard', False))
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      abstract, shardings)


def state_shardings(setup, mesh):
  """The TrainState's shardings over `mesh` (`abstract_state`)."""
  return jax.tree.map(lambda x: x.sharding, abstract_state(setup, mesh))


PREFETCH_DEPTH = 2  # batches on their way to the devices while a step runs


def prefetch_to_devices(local_batches, mesh, depth=PREFETCH_DEPTH):
  """Yields global batches with `depth` more already sent: the transfers (asynchronous) overlap
  the running steps, so a step never waits for its input to cross to the devices."""
  queue = collections.deque()
  for local in local_batches:
    queue.append(global_batch(local, mesh))
    if len(queue) > depth:
      yield queue.popleft()
  yield from queue


# --------------------------------------------------------------------------------------------
# 2. Set-up: config and data, networks and their variables, terms and connectors
# --------------------------------------------------------------------------------------------


@flax.struct.dataclass
class TrainState:
  """Everything that is trained and checkpointed. The teacher is not in here."""
  step: jax.Array
  params: Any        # {'student': ...}; with a peer (DML) also {'peer': ...}; {'connectors': ...}
  batch_stats: Any   # the same keys; a connector's entry holds all its non-param collections
  opt_state: Any
  skipped: jax.Array  # updates skipped for a non-finite loss or gradient (on_nonfinite='skip')
  # config.ema on: {'params': {network: ...}, 'batch_stats': {network: ...}} for every trainable
  # network (no connectors); None when off (and in checkpoints written before it existed).
  ema: Any = None


@dataclasses.dataclass
class Data:
  """The validated input: TFDS builders, the dataset's facts and the run's length in steps."""
  info: input_pipeline.DatasetInfo
  builder: Any
  unlabeled_builder: Any     # the source of input.unlabeled, or None
  steps_per_epoch: int
  total_steps: int


@dataclasses.dataclass
class Networks:
  """The networks the objective reads, their taps and the teacher's (frozen) variables."""
  trainable: dict            # {'student': model[, 'peer': model]}
  teacher: Any               # None when no term reads a teacher
  teacher_variables: Any     # host arrays, or None
  teacher_source: dict       # where the teacher came from (checkpoint metadata)
  taps: dict                 # network name -> tap names the terms read (logits excluded)
  tap_shapes: dict           # network name -> {tap: ShapeDtypeStruct} for a batch of 1
  pretrained: dict = dataclasses.field(default_factory=dict)  # trainable name -> host variables
  student_source: dict = dataclasses.field(default_factory=dict)  # where the student started

  @property
  def student(self):
    return self.trainable['student']


@dataclasses.dataclass
class Objective:
  """The loss terms and the trainable connectors of the methods that have one."""
  terms: list
  connectors: dict           # term name -> its connector module (kdjax/methods/<method>.py)

  def term(self, name):
    return next(t for t in self.terms if t.name == name)


@dataclasses.dataclass
class Setup:
  """Everything built and validated from a config before anything is written."""
  config: Any
  data: Data
  networks: Networks
  objective: Objective
  tx: Any
  schedule: Any


# Random streams. Each is derived from config.seed with its own fold_in tag, so no two draw the
# same key: network i (in name order) initialises from fold_in(key(seed), i), the connectors
# from the 'connectors' stream, and randomness inside the step (MGD's masks, CRD's negatives)
# from the 'step' stream folded with the step number: a pure function of (seed, step).
# Connectors get that step key itself (their 'distill' rng); Mixup / CutMix, stochastic depth
# and random erasing's noise fold it once more with their own tag (_STEP_TAGS), stochastic
# depth then with the network's index in name order.
_STREAM_TAGS = {'connectors': 1 << 20, 'step': 1 << 21}
_STEP_TAGS = {'mixup': 1 << 22, 'drop_path': 1 << 23, 'erasing': 1 << 24,
              'drop_path_strong': 1 << 25}


def rng_stream(seed, name):
  """The root key of the named random stream of a run with `seed`."""
  return jax.random.fold_in(jax.random.key(seed), _STREAM_TAGS[name])


def step_key(step_rng, use):
  """The key of one use ('mixup', 'drop_path') of randomness inside the step."""
  return jax.random.fold_in(step_rng, _STEP_TAGS[use])


def resolve_dtype(name, backend=None) -> str:
  """'auto' -> the compute dtype that is fastest on this platform: bfloat16 on GPUs and TPUs
  (their matrix units run it at twice float32's rate or more), float32 on CPUs (XLA:CPU's
  bfloat16 convolutions were slower than float32 on this project's AVX512-BF16 CPU,
  docs/design.md#measured-facts). Any other name is returned as it is."""
  if name != 'auto':
    return name
  return 'bfloat16' if (backend or jax.default_backend()) in ('gpu', 'tpu') else 'float32'


def _dtype(name, key):
  dtypes = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
  resolved = resolve_dtype(name)
  if resolved not in dtypes:
    raise KdjaxError(f"unknown {key} '{name}'; valid: auto, {', '.join(dtypes)}")
  return dtypes[resolved]


def _check_config(config):
  if config.batch_size <= 0:
    raise KdjaxError(f'batch_size must be a positive multiple of the device count '
                     f'({jax.device_count()}), got {config.batch_size}; set --config.batch_size')
  for key in ('batch_size', 'eval_batch_size'):
    value = config[key] if config[key] > 0 else config.batch_size
    if value % jax.device_count():
      raise KdjaxError(f'{key}={value} is not divisible by the {jax.device_count()} devices; '
                       f'set --config.{key} to a multiple of {jax.device_count()}')
  if config.num_epochs <= 0 and config.num_train_steps <= 0:
    raise KdjaxError('set num_epochs or num_train_steps to a positive number')
  for key in ('log_every_steps', 'checkpoint_every_steps'):
    if config[key] <= 0:
      raise KdjaxError(f'{key} must be a positive number of steps, got {config[key]}')
  if config.on_nonfinite not in ('stop', 'skip'):
    raise KdjaxError(f"on_nonfinite must be 'stop' or 'skip', got '{config.on_nonfinite}'")
  opt = config.optimizer
  for key in ('learning_rate', 'weight_decay'):
    if not math.isfinite(opt[key]) or opt[key] < 0:
      raise KdjaxError(f'optimizer.{key} must be a finite number >= 0, got {opt[key]}')
  if config.student.get('reset_classifier', False) and not config.student.checkpoint:
    raise KdjaxError('student.reset_classifier=True resets the classifier of the weights in '
                     'student.checkpoint, which is empty; set --config.student.checkpoint, or '
                     '--config.student.reset_classifier=False for a random student')
  if config.export not in methods.TRAINABLE:
    raise KdjaxError(f"export must be one of {', '.join(methods.TRAINABLE)}, got "
                     f"'{config.export}'")
  _check_vit_recipe(config)


def _check_views(config, terms):
  """A term that reads the strong view needs it made, and unmixed (docs/design.md#two-views)."""
  if not methods.reads_strong_view(terms):
    return
  names = [t.name for t in terms if any(methods.STRONG in tap for taps in t.reads.values()
                                        for tap in taps)]
  if not config.input.get('strong_augment'):
    raise KdjaxError(f'losses.{names[0]} reads the strong view, which input.strong_augment makes; '
                     "set --config.input.strong_augment=fixmatch (MLKD's) or a timm RandAugment")
  if mixup_lib.enabled(config.mixup):
    raise KdjaxError(f'losses.{names[0]} reads the strong view, which Mixup / CutMix would not '
                     'mix; set --config.mixup.prob=0')


def _check_vit_recipe(config):
  """Mixup, EMA, stochastic depth, clipping and the cosine floor: values that would fail later."""
  def number(key, value, low, high, high_open=False):
    bad = (not isinstance(value, (int, float)) or isinstance(value, bool)
           or not math.isfinite(value) or value < low or value > high
           or (high_open and value == high))
    if bad:
      interval = f"[{low}, {high}{')' if high_open else ']'}"
      raise KdjaxError(f'{key} must be a number in {interval}, got {value}')
  opt = config.optimizer
  for key in ('warmup_learning_rate', 'min_learning_rate', 'clip_grad_norm'):
    number(f'optimizer.{key}', opt[key], 0, math.inf)
  if opt.min_learning_rate > 0 and opt.schedule != 'cosine':
    raise KdjaxError(f'optimizer.min_learning_rate is the floor of the cosine schedule; '
                     f"optimizer.schedule is '{opt.schedule}': set schedule=cosine or "
                     'min_learning_rate=0')
  mix = config.mixup
  for key in ('mixup_alpha', 'cutmix_alpha'):
    number(f'mixup.{key}', mix[key], 0, math.inf)
  for key in ('prob', 'switch_prob'):
    number(f'mixup.{key}', mix[key], 0, 1)
  if mixup_lib.enabled(mix) and (config.input.num_labeled > 0
                                 or config.input.unlabeled.fraction > 0):
    raise KdjaxError('mixup / cutmix need every training label, but input.num_labeled='
                     f'{config.input.num_labeled} / input.unlabeled.fraction='
                     f'{config.input.unlabeled.fraction} hide some; set mixup.mixup_alpha and '
                     'mixup.cutmix_alpha to 0, or train on all labels')
  number('ema.decay', config.ema.decay, 0, 1, high_open=True)
  for name in methods.TRAINABLE:
    number(f'{name}.drop_path_rate', config[name].get('drop_path_rate', 0.0), 0, 1,
           high_open=True)


def build_data(config) -> Data:
  """The datasets, checked against the input options; the run's length in steps."""
  builder = input_pipeline.get_builder(config)
  unlabeled_builder = input_pipeline.get_unlabeled_builder(config)
  input_pipeline.check_options(config, builder, unlabeled_builder)
  input_pipeline.warn_about_sequential_reads(config, builder, unlabeled_builder)
  info = input_pipeline.dataset_info(config, builder)
  spe = input_pipeline.steps_per_epoch(config, info)
  total = (config.num_train_steps if config.num_train_steps > 0
           else math.ceil(config.num_epochs * spe))
  return Data(info=info, builder=builder, unlabeled_builder=unlabeled_builder,
              steps_per_epoch=spe, total_steps=total)


def _network(config, name, info, input_shape, tap_names):
  """Builds network `name` from config.<name>.model and checks that its taps exist."""
  if not config[name].model:
    raise KdjaxError(f'the losses read the {name} but {name}.model is empty; set '
                     f'--config.{name}.model')
  options = {}
  if name in methods.TRAINABLE:  # Training options; the frozen teacher has none.
    options['drop_path_rate'] = config[name].get('drop_path_rate', 0.0)
  model = models.get_model(config[name].model, num_classes=info.num_classes,
                           dtype=_dtype(config[name].dtype, f'{name}.dtype'),
                           config_key=f'{name}.model', **options)
  taps_lib.check(model, tap_names, input_shape, where=name)
  return model


def complete_variables(loaded, init):
  """`loaded` where it has every variable `init()` has, else `init()` overlaid with `loaded`:
  the leaves a checkpoint leaves out (the classifier of student.reset_classifier) take the
  fresh initialisation a random network gets. `init` is run only then."""
  flat = lambda tree: traverse_util.flatten_dict(flax.core.unfreeze(tree))
  loaded_flat = flat(loaded)
  if set(flat(jax.eval_shape(init))) <= set(loaded_flat):
    return loaded
  return traverse_util.unflatten_dict({**flat(init()), **loaded_flat})


def _check_runs(model, variables, input_shape, network):
  """Loaded weights must run on this input: one line at set-up instead of a trace later. A
  classifier left out (student.reset_classifier) runs as its fresh initialisation will."""
  def run(v, x):
    v = complete_variables(v, lambda: model.init(jax.random.key(0), x, train=False))
    return model.apply(v, x, train=False)
  try:
    jax.eval_shape(run, variables, jax.ShapeDtypeStruct(input_shape, jnp.float32))
  except KdjaxError:
    raise
  except Exception as e:  # pylint: disable=broad-except  Flax shape errors name the layer.
    raise KdjaxError(f'the {network} weights do not run on {input_shape[1:]} inputs '
                     f'({type(e).__name__}: {str(e).splitlines()[0][:200]}); check '
                     f'input.image_size and {network}.model') from e


def build_networks(config, data: Data, terms) -> Networks:
  """The student (and peer), the teacher with its loaded variables, and the tapped shapes."""
  input_shape = (1,) + data.info.image_shape
  used = methods.networks(terms)
  tap_names = {name: methods.taps(terms, name) for name in methods.NETWORKS}
  trainable = {'student': _network(config, 'student', data.info, input_shape,
                                   tap_names['student'])}
  if 'peer' in used or config.peer.model:
    trainable['peer'] = _network(config, 'peer', data.info, input_shape, tap_names['peer'])
  if config.export not in trainable:
    raise KdjaxError(f"export='{config.export}' but the recipe trains no {config.export}")
  teacher = teacher_variables = None
  source = {}
  if 'teacher' in used:
    teacher = _network(config, 'teacher', data.info, input_shape, tap_names['teacher'])
    teacher_variables, source = checkpoint.load_teacher(
        config.teacher.checkpoint, teacher, input_shape, allow_random=config.smoke,
        seed=config.seed)
    _check_runs(teacher, teacher_variables, input_shape, 'teacher')
  pretrained, student_source = {}, {'source': 'random-init'}
  if config.student.checkpoint:  # Fine-tuning and pretrained students start from weights.
    pretrained['student'], student_source = checkpoint.load_variables(
        config.student.checkpoint, trainable['student'], input_shape, network='student',
        reset_classifier=config.student.get('reset_classifier', False))
    _check_runs(trainable['student'], pretrained['student'], input_shape, 'student')
  networks = {**trainable, 'teacher': teacher} if teacher is not None else trainable
  return Networks(
      trainable=trainable, teacher=teacher, teacher_variables=teacher_variables,
      teacher_source=source, taps={k: tap_names[k] for k in networks},
      tap_shapes={k: tap_shapes(m, tap_names[k], input_shape) for k, m in networks.items()},
      pretrained=pretrained, student_source=student_source)


def build_objective(config, data: Data, networks: Networks, terms) -> Objective:
  """The terms with their one-off constants, and the connectors built from the tapped shapes."""
  index_space = None
  if config.input.add_index:
    index_space = lambda: input_pipeline.index_space(data.builder, config.input.train_split)
  input_shape = (1,) + data.info.image_shape
  by_name = {**networks.trainable, 'teacher': networks.teacher}
  ctx = methods.BuildContext(
      teacher=networks.teacher, teacher_variables=networks.teacher_variables,
      index_space=index_space, student=networks.student,
      shapes=lambda net, tap: tap_shapes(by_name[net], [tap], input_shape)[tap])
  terms = methods.with_constants(terms, ctx)
  connectors = {t.name: t.build_connector(ctx, networks.tap_shapes)
                for t in terms if t.method.connector}
  # A method may need no connector in some settings (OFA without stages).
  return Objective(terms=terms, connectors={k: v for k, v in connectors.items() if v is not None})


def build(config) -> Setup:
  """Validates the config against data, models, taps and the teacher. Writes nothing."""
  _check_config(config)
  terms = methods.build_terms(config.losses, batch_size=config.batch_size)
  _check_views(config, terms)
  if config.teacher.get('cache'):
    cache.check_config(config, terms)
  data = build_data(config)
  networks = build_networks(config, data, terms)
  objective = build_objective(config, data, networks, terms)
  tx, schedule = make_optimizer(config.optimizer, batch_size=config.batch_size,
                                steps_per_epoch=data.steps_per_epoch,
                                total_steps=data.total_steps)
  return Setup(config=config, data=data, networks=networks, objective=objective, tx=tx,
               schedule=schedule)


def tap_shapes(model, tap_names, input_shape):
  """{'logits': ..., tap: ...} shapes (ShapeDtypeStruct) of `model` for `input_shape`."""
  def run(x):
    variables = model.init(jax.random.key(0), x, train=False)
    logits, feats, _ = taps_lib.apply(model, variables, x, taps=tap_names)
    return {'logits': logits, **feats}
  return jax.eval_shape(run, jnp.zeros(input_shape, jnp.float32))


def init_state(setup: Setup, seed, pretrained=None) -> TrainState:
  """Variables for every trainable network (random, or `pretrained[name]`, whose missing
  classifier under student.reset_classifier gets the random network's init) and connector
  (random); a fresh optimizer state."""
  x = jnp.zeros((1,) + setup.data.info.image_shape, jnp.float32)
  params, batch_stats = {}, {}
  for i, (name, model) in enumerate(sorted(setup.networks.trainable.items())):
    init = functools.partial(model.init, jax.random.fold_in(jax.random.key(seed), i), x,
                             train=False)
    loaded = (pretrained or {}).get(name)
    variables = complete_variables(loaded, init) if loaded else init()
    params[name] = variables['params']
    batch_stats[name] = variables.get('batch_stats', {})
  if setup.objective.connectors:  # Trained with the networks, saved, never exported.
    zeros = lambda shapes: jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), shapes)
    shapes = setup.networks.tap_shapes
    params['connectors'], batch_stats['connectors'] = {}, {}
    for i, (name, module) in enumerate(sorted(setup.objective.connectors.items())):
      term = setup.objective.term(name)
      variables = module.init(jax.random.fold_in(rng_stream(seed, 'connectors'), i),
                              zeros(term.select(shapes, 'student')),
                              zeros(term.select(shapes, 'teacher')), train=False)
      params['connectors'][name] = variables.pop('params')
      batch_stats['connectors'][name] = variables  # batch_stats, and e.g. CRD's crd_memory
  ema = None
  if setup.config.ema.decay > 0:  # The average starts at the initial weights (timm's copy).
    ema = {'params': {n: params[n] for n in setup.networks.trainable},
           'batch_stats': {n: batch_stats[n] for n in setup.networks.trainable}}
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                    opt_state=setup.tx.init(params), skipped=jnp.zeros((), jnp.int32), ema=ema)


# --------------------------------------------------------------------------------------------
# 3. Optimizer
# --------------------------------------------------------------------------------------------


def learning_rate_schedule(cfg, *, batch_size, steps_per_epoch, total_steps):
  """Base LR (scaled by batch_size / lr_base_batch_size if set), linear warm-up from
  `warmup_learning_rate` (w0) over `warmup_epochs` (W steps): w0 + (base - w0) * step / W; then
  step decays at absolute epoch boundaries, constant, or cosine from base at step W to
  `min_learning_rate` (m) at the last step: m + (base - m) / 2 * (1 + cos(pi (step - W) /
  (total - W))), which is timm's CosineLRScheduler per step with warmup_prefix=True."""
  base = cfg.learning_rate
  if cfg.lr_base_batch_size > 0:
    base *= batch_size / cfg.lr_base_batch_size
  warmup = round(cfg.warmup_epochs * steps_per_epoch)
  start = cfg.get('warmup_learning_rate', 0.0)
  if cfg.schedule == 'cosine':
    return optax.warmup_cosine_decay_schedule(start, base, warmup, max(total_steps, warmup + 1),
                                              end_value=cfg.get('min_learning_rate', 0.0))
  if cfg.schedule == 'step':
    main = optax.piecewise_constant_schedule(
        base, {round(e * steps_per_epoch): cfg.decay_factor for e in cfg.decay_epochs})
  elif cfg.schedule == 'constant':
    main = optax.constant_schedule(base)
  else:
    raise KdjaxError(f"unknown optimizer.schedule '{cfg.schedule}'; valid: step, cosine, "
                     'constant')
  if not warmup:
    return main
  # The decays stay at their epochs: warm-up replaces the first steps, it does not shift them.
  return lambda step: jnp.where(step < warmup, start + (base - start) * step / warmup,
                               main(step))


def make_optimizer(cfg, *, batch_size, steps_per_epoch, total_steps):
  """SGD (PyTorch semantics: decay added to the gradient before momentum) or AdamW; with
  `clip_grad_norm` > 0 the gradient is first scaled to that global L2 norm when above it
  (torch.nn.utils.clip_grad_norm_ before optimizer.step, over every trainable parameter)."""
  schedule = learning_rate_schedule(cfg, batch_size=batch_size, steps_per_epoch=steps_per_epoch,
                                    total_steps=total_steps)
  if cfg.name == 'sgd':
    tx = optax.chain(optax.add_decayed_weights(cfg.weight_decay),
                     optax.sgd(schedule, momentum=cfg.momentum or None, nesterov=cfg.nesterov))
  elif cfg.name == 'adamw':
    tx = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)
  elif cfg.name == 'dot':  # SGD with DOT's two momenta (kdjax/methods/dot.py)
    if cfg.nesterov or cfg.get('clip_grad_norm', 0.0) > 0:
      raise KdjaxError('optimizer.name=dot has no Nesterov momentum and no gradient clipping; '
                       'set optimizer.nesterov=False and optimizer.clip_grad_norm=0')
    if not 0 <= cfg.dot_delta <= cfg.momentum:
      raise KdjaxError(f'optimizer.dot_delta must be in [0, optimizer.momentum={cfg.momentum}], '
                       f'got {cfg.dot_delta}')
    return dot_lib.dot(schedule, momentum=cfg.momentum, delta=cfg.dot_delta,
                       weight_decay=cfg.weight_decay), schedule
  else:
    raise KdjaxError(f"unknown optimizer.name '{cfg.name}'; valid: sgd, adamw, dot")
  if cfg.get('clip_grad_norm', 0.0) > 0:
    tx = optax.chain(optax.clip_by_global_norm(cfg.clip_grad_norm), tx)
  return tx, schedule


# --------------------------------------------------------------------------------------------
# 4. Train step
# --------------------------------------------------------------------------------------------


def teacher_forward(teacher, teacher_variables, images, tap_names):
  """Frozen teacher in inference mode; outputs are float32 and carry no gradient."""
  logits, feats, _ = taps_lib.apply(teacher, teacher_variables, images, taps=tap_names,
                                    train=False)
  out = {'logits': logits, **feats}
  return jax.tree.map(lambda a: jax.lax.stop_gradient(a.astype(jnp.float32)), out)


def trainable_forward(networks: Networks, params, batch_stats, images, rng=None):
  """Every trainable network in training mode: ({name: {tap: float32}}, new batch_stats).

  `rng`: the step's stochastic-depth key; network i (in name order) gets fold_in(rng, i) as its
  'dropout' rng, if it has a drop_path_rate > 0.
  """
  outputs, new_stats = {}, {}
  for name, model in networks.trainable.items():
    variables = {'params': params[name], 'batch_stats': batch_stats[name]}
    rngs = {}
    if rng is not None and getattr(model, 'drop_path_rate', 0.0) > 0:
      rngs['rngs'] = {'dropout': jax.random.fold_in(rng, sorted(networks.trainable).index(name))}
    logits, feats, new = taps_lib.apply(model, variables, images, taps=networks.taps[name],
                                        train=True, mutable=('batch_stats',), **rngs)
    outputs[name] = jax.tree.map(lambda a: a.astype(jnp.float32), {'logits': logits, **feats})
    new_stats[name] = new.get('batch_stats', {})
  return outputs, new_stats


def connectors_forward(objective: Objective, params, batch_stats, outputs, batch, rng):
  """Every connector in training mode: ({term: output}, {term: new collections}). `batch`: the
  batch's side columns (CRD's `index`) and `epoch`, the 1-based epoch (CTKD's curriculum)."""
  connected, new_stats = {}, {}
  for name, module in objective.connectors.items():
    term = objective.term(name)
    collections = batch_stats[name]
    connected[name], new = module.apply(
        {'params': params[name], **collections}, term.select(outputs, 'student'),
        term.select(outputs, 'teacher'), train=True, batch=batch, mutable=list(collections),
        rngs={'distill': rng})
    new_stats[name] = {**collections, **new}
  return connected, new_stats


def mix_batch(config, num_classes, images, labels, step_rng):
  """Mixup / CutMix of the global batch: (images, labels, targets); targets None when off.
  labels become the dominant class of the mixed targets (what DKD / OFA take as the target)."""
  if not mixup_lib.enabled(config.mixup):
    return images, labels, None
  params = mixup_lib.draw(step_key(step_rng, 'mixup'), config.mixup, *images.shape[1:3])
  images, targets = mixup_lib.mix(images, labels, num_classes, params)
  return images, jnp.argmax(targets, axis=-1).astype(labels.dtype), targets


def ema_update(decay, ema, params, batch_stats):
  """ema <- decay * ema + (1 - decay) * new, leaf by leaf, for the networks `ema` holds."""
  new = {'params': {n: params[n] for n in ema['params']},
         'batch_stats': {n: batch_stats[n] for n in ema['batch_stats']}}
  return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, new)


def labelled_rows_first(batch, num_processes, num_labeled):
  """Rows [lab_0, unl_0, lab_1, unl_1, ...] (each process's labelled rows, then its unlabeled
  ones, `num_labeled` of each process's rows labelled) -> [lab_0, lab_1, ..., unl_0, unl_1, ...]:
  the order one process yields, so row-dependent work (Mixup's pairs, erasing noise, grouped
  losses) sees the same rows on any number of processes."""
  def reorder(x):
    rows = x.reshape((num_processes, -1) + x.shape[1:])
    return jnp.concatenate([rows[:, :num_labeled].reshape((-1,) + x.shape[1:]),
                            rows[:, num_labeled:].reshape((-1,) + x.shape[1:])])
  return jax.tree.map(reorder, batch)


def make_train_step(setup: Setup):
  """Returns step(state, teacher_variables, batch) -> (state, metrics), pure and jittable."""
  networks, objective, config = setup.networks, setup.objective, setup.config
  spe, seed = setup.data.steps_per_epoch, config.seed
  ema_decay, clip = config.ema.decay, config.optimizer.get('clip_grad_norm', 0.0)
  num_processes = jax.process_count()
  local_labeled, local_unlabeled = input_pipeline.batch_split(
      config, config.batch_size // num_processes, num_processes)
  strong_view = methods.reads_strong_view(objective.terms)
  with_suffix = lambda out: {tap + methods.STRONG: v for tap, v in out.items()}

  def step(state, teacher_variables, batch):
    if local_unlabeled and num_processes > 1:
      batch = labelled_rows_first(batch, num_processes, local_labeled)
    labels = batch['label']
    # Any process asked to stop (SIGTERM, Ctrl-C): every process learns it from this step.
    stop = jnp.max(batch['stop']) if 'stop' in batch else jnp.zeros((), jnp.int32)
    side = {k: v for k, v in batch.items()  # CRD's index
            if k not in ('image', 'stop', 'erase', 'teacher_logits', 'image_strong')}
    epoch = state.step // spe + 1  # 1-based, constant within an epoch (warm-ups)
    step_rng = jax.random.fold_in(rng_stream(seed, 'step'), state.step)
    # The uint8 images from the host, normalised here; random erasing fills the host's boxes.
    images = on_device.normalize(batch['image'], config.input.mean, config.input.std)
    if 'erase' in batch:
      images = on_device.erase(images, batch['erase'], step_key(step_rng, 'erasing'))
    # Mixup / CutMix before any forward: the teacher sees the images the student sees.
    images, labels, targets = mix_batch(config, setup.data.info.num_classes, images, labels,
                                        step_rng)
    # The strong view (input.strong_augment): every network runs on it too, its taps named
    # '<tap>@strong' (docs/design.md#two-views).
    strong = strong_view and on_device.normalize(batch['image_strong'], config.input.mean,
                                                 config.input.std)
    teacher = {}
    if 'teacher_logits' in batch:  # teacher.cache: recorded for this view, no teacher forward
      teacher = {'teacher': {'logits': batch['teacher_logits'].astype(jnp.float32)}}
    elif networks.teacher is not None:
      teacher = {'teacher': teacher_forward(networks.teacher, teacher_variables, images,
                                            networks.taps['teacher'])}
      if strong_view:
        teacher['teacher'].update(with_suffix(teacher_forward(
            networks.teacher, teacher_variables, strong, networks.taps['teacher'])))

    def loss_fn(params):
      outputs, new_stats = trainable_forward(networks, params, state.batch_stats, images,
                                             step_key(step_rng, 'drop_path'))
      if strong_view:  # After the main view, as the reference's two forwards (BatchNorm stats).
        more, new_stats = trainable_forward(networks, params, new_stats, strong,
                                            step_key(step_rng, 'drop_path_strong'))
        outputs = {n: {**outputs[n], **with_suffix(more[n])} for n in outputs}
      outputs = {**outputs, **teacher}
      connected = {}
      if objective.connectors:
        connected, new_stats['connectors'] = connectors_forward(
            objective, params['connectors'], state.batch_stats['connectors'], outputs,
            {**side, 'epoch': epoch}, step_rng)  # CTKD's curriculum reads the epoch
      values = {t.name: t(outputs, labels, connected.get(t.name), targets)
                for t in objective.terms}
      weighted = {t.name: t.weight_at(epoch) * t.factor(epoch) * values[t.name]
                  for t in objective.terms}
      return sum(weighted.values()), (values, new_stats, weighted)

    if dot_lib.takes_two_gradients(setup.tx):  # DOT: {'task': ..., 'distill': ...}
      (total, (values, new_stats, _)), grads = dot_lib.value_and_two_grads(
          loss_fn, state.params, lambda name: dot_lib.is_task(objective.term(name)))
    else:
      (total, (values, new_stats, _)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
          state.params)
    updates, opt_state = setup.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # A non-finite loss or gradient never reaches the state: the update is dropped (the loop
    # then stops, or counts it with on_nonfinite='skip').
    finite = jnp.isfinite(total)
    for g in jax.tree.leaves(grads):
      finite &= jnp.all(jnp.isfinite(g))
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    ema = state.ema
    if ema_decay > 0:  # After the update, and only after an applied one.
      ema = keep(ema_update(ema_decay, ema, params, new_stats), ema)
    new_state = state.replace(
        step=state.step + 1, params=keep(params, state.params),
        batch_stats=keep(new_stats, state.batch_stats), opt_state=keep(opt_state, state.opt_state),
        skipped=state.skipped + (~finite).astype(jnp.int32), ema=ema)
    metrics = {'loss': total, 'lr': setup.schedule(state.step),
               'nonfinite': (~finite).astype(jnp.int32), 'stop': stop}
    if clip > 0:
      metrics['grad_norm'] = optax.global_norm(grads)  # before clipping
    metrics.update({f'loss/{k}': v for k, v in values.items()})
    return new_state, metrics

  return step


def compile_train_step(setup: Setup, mesh):
  """The train step jitted over `mesh`: the batch split on 'data'; the state (donated) and the
  teacher replicated, or sharded with student.shard / teacher.shard (`state_shardings`,
  `teacher_shardings`), where XLA gathers each sharded array where the step reads it."""
  rep, state = replicated(mesh), state_shardings(setup, mesh)
  teacher = teacher_shardings(setup, mesh) or rep
  return jax.jit(make_train_step(setup), donate_argnums=0,
                 in_shardings=(state, teacher, batch_sharded(mesh)), out_shardings=(state, rep))


def create_state(setup: Setup, mesh, seed):
  """A fresh TrainState over `mesh`, replicated or sharded (`state_shardings`); pretrained
  weights are passed as arguments, not baked into the program as constants."""
  init = jax.jit(functools.partial(init_state, setup, seed),
                 out_shardings=state_shardings(setup, mesh))
  return init(setup.networks.pretrained)


# --------------------------------------------------------------------------------------------
# 5. Eval step
# --------------------------------------------------------------------------------------------


def eval_metrics(logits, batch, teacher_logits=None):
  """Masked sums over one batch: correct top-1/top-5, count; agreement and KL vs the teacher."""
  mask = batch['mask']
  labels = batch['label']
  k = min(5, logits.shape[-1])
  topk = jax.lax.top_k(logits, k)[1]
  hits = topk == labels[:, None]
  out = {'top1': jnp.sum(hits[:, 0] * mask), 'top5': jnp.sum(jnp.any(hits, -1) * mask),
         'count': jnp.sum(mask)}
  if teacher_logits is not None:
    agree = jnp.argmax(logits, -1) == jnp.argmax(teacher_logits, -1)
    out['agreement'] = jnp.sum(agree * mask)
    out['kl_teacher_student'] = jnp.sum(losses.kl_divergence(teacher_logits, logits) * mask)
  return out


def eval_images(batch, pixels):
  """The batch's images normalised on the device: uint8 from the eval pipeline, normalised with
  `pixels` = (mean, std) (config.input's); float images are taken as normalised already."""
  if batch['image'].dtype == jnp.uint8 and pixels is None:
    raise ValueError('uint8 eval images need pixels=(mean, std) to be normalised')
  return on_device.normalize(batch['image'], *pixels) if pixels else batch['image']


def make_eval_step(model, teacher=None, *, pixels=None):
  """Returns step(variables, teacher_variables, batch) -> masked sums, running the teacher's
  forward in the same step (a one-off evaluation: `python -m kdjax.evaluate`). The trainer,
  which evaluates many times, keeps the teacher's logits instead (`make_teacher_eval_step`).
  `pixels`: (mean, std) of the uint8 images (`eval_images`)."""
  def step(variables, teacher_variables, batch):
    images = eval_images(batch, pixels)
    logits = model.apply(variables, images, train=False).astype(jnp.float32)
    t_logits = None
    if teacher is not None:
      t_logits = teacher.apply(teacher_variables, images, train=False)
      t_logits = t_logits.astype(jnp.float32)
    return eval_metrics(logits, batch, t_logits)
  return step


def make_teacher_eval_step(teacher, *, pixels=None):
  """Returns step(teacher_variables, batch) -> (masked sums, float32 logits): the teacher's own
  metrics, and its logits for the student evals that compare against them."""
  def step(teacher_variables, batch):
    logits = teacher.apply(teacher_variables, eval_images(batch, pixels), train=False)
    logits = logits.astype(jnp.float32)
    return eval_metrics(logits, batch), logits
  return step


def make_student_eval_step(model, *, pixels=None):
  """Returns step(variables, teacher_logits, batch) -> masked sums; agreement and KL against
  `teacher_logits` (the teacher's logits of this batch) unless it is None."""
  def step(variables, teacher_logits, batch):
    logits = model.apply(variables, eval_images(batch, pixels), train=False).astype(jnp.float32)
    return eval_metrics(logits, batch, teacher_logits)
  return step


def _add(sums, out):
  return out if sums is None else jax.tree.map(jnp.add, sums, out)


def _means(sums) -> dict:
  """Masked sums over the eval split -> fractions (top1, top5, agreement) and mean KL."""
  sums = jax.device_get(sums)
  count = max(float(sums.pop('count')), 1.0)
  return {k: float(v) / count for k, v in sums.items()}


def evaluate(eval_step, variables, teacher_variables, batches, mesh) -> dict:
  """Runs the whole eval split; returns fractions (top1, top5, agreement) and mean KL."""
  sums = None
  for local in batches:
    sums = _add(sums, eval_step(variables, teacher_variables, global_batch(local, mesh)))
  return _means(sums)


def evaluate_teacher(teacher_step, teacher_variables, batches, mesh) -> tuple[dict, list]:
  """The teacher over the whole eval split: (its metrics, its logits of every batch), the
  logits left on the devices, one float32 global array per batch split over 'data' as the
  batches are, for `evaluate_against` (`teacher_step`: `make_teacher_eval_step`, jitted)."""
  sums, logits = None, []
  for local in batches:
    out, batch_logits = teacher_step(teacher_variables, global_batch(local, mesh))
    sums = _add(sums, out)
    logits.append(batch_logits)
  return _means(sums), logits


def evaluate_against(eval_step, variables, teacher_logits, batches, mesh) -> dict:
  """Runs the whole eval split through `eval_step` (`make_student_eval_step`, jitted), with
  agreement and KL against `teacher_logits` (`evaluate_teacher`'s, one array per batch of the
  same split in the same order), or without them when it is None."""
  sums, num_batches = None, 0
  for i, local in enumerate(batches):
    logits = None if teacher_logits is None else teacher_logits[i]
    sums = _add(sums, eval_step(variables, logits, global_batch(local, mesh)))
    num_batches = i + 1
  if teacher_logits is not None and num_batches != len(teacher_logits):
    raise ValueError(f'the eval split gave {num_batches} batches, the teacher\'s kept logits '
                     f'{len(teacher_logits)}')
  return _means(sums)


def describe_teacher_logits(logits: list) -> str:
  """'10 batches of [64x10] float32: 0.02 MiB in all, 0.00 MiB per device'."""
  shape = 'x'.join(str(n) for n in logits[0].shape) if logits else '-'
  return (f'{_count(len(logits), "batch", "batches")} of [{shape}] float32: '
          f'{_mib(tree_bytes(logits))} in all, {_mib(bytes_per_device(logits))} per device')


# --------------------------------------------------------------------------------------------
# 6. The loop
# --------------------------------------------------------------------------------------------

# Exit codes of a run stopped by a signal after saving (the shell's 128 + signal number).
STOP_EXIT_CODES = {signal.SIGTERM: 143, signal.SIGINT: 130}


class StopSignals:
  """SIGTERM (preemption: Cloud TPU maintenance, spot VMs, SLURM) and SIGINT (Ctrl-C) ask the
  run to stop: the loop saves a checkpoint at the current step and raises `Preempted`. A
  second signal stops at once, as without kdjax. Installed only in the main thread."""

  def __init__(self):
    self.received = None
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for signum in STOP_EXIT_CODES:
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    if self.received is not None:  # The second one: the default behaviour, now.
      signal.signal(signum, signal.SIG_DFL)
      signal.raise_signal(signum)
      return
    self.received = signum
    log.warning('Received %s: saving a checkpoint after this step, then stopping (send it '
                    'again to stop at once).', signal.Signals(signum).name)

  def __exit__(self, *exc):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)


def describe_parameters(state, setup) -> str:
  """'student 11,689,512; connectors (trained, never exported): ofa 1,234; teacher ...'."""
  count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
  parts = [f'{name} {count(state.params[name]):,}' for name in sorted(setup.networks.trainable)]
  connectors = state.params.get('connectors', {})
  if connectors:
    parts.append('connectors (trained, never exported): ' + ', '.join(
        f'{name} {count(tree):,}' for name, tree in sorted(connectors.items())))
  if setup.networks.teacher_variables is not None:
    parts.append(f"teacher {count(setup.networks.teacher_variables['params']):,} (frozen)")
  return '; '.join(parts)


def network_variables(state, name):
  """The variables of a trainable network, or of its EMA ('<network>_ema')."""
  if name.endswith('_ema'):
    name = name[:-len('_ema')]
    return {'params': state.ema['params'][name], 'batch_stats': state.ema['batch_stats'][name]}
  return {'params': state.params[name], 'batch_stats': state.batch_stats[name]}


def exported_name(config):
  """What export and teacher loading take: `config.export`, or its EMA when config.ema is on
  (a ConfigDict, or the config as saved in JSON)."""
  return f"{config['export']}_ema" if config['ema']['decay'] > 0 else config['export']


def open_teacher_cache(setup):
  """The run's teacher cache (`kdjax.cache.Store`), made first if its folder holds none; None
  when teacher.cache is off."""
  config = setup.config
  path = config.teacher.get('cache')
  if not path:
    return None
  if not cache.exists(path):
    log.info('teacher.cache: no cache in %s yet; recording the teacher first.', path)
    cache.build(config, setup, make_mesh(jax.local_devices()))
  store = cache.Store(path)
  store.check(config, setup)
  log.info('teacher.cache: the train step reads the teacher logits recorded in %s (%d views '
           'per example%s).', path, store.layout.views,
           f', top-{store.layout.top_k}' if store.layout.top_k else '')
  return store


def resume_defaults(now: dict) -> dict:
  """The defaults a saved config is compared at (JSON): config_base's, plus each loss term's
  method defaults, so a hyperparameter added to a method after a run started (e.g. kd's
  `standardize`) is no change at its default."""
  defaults = json.loads(config_base.base_config().to_json_best_effort())
  defaults['losses'] = {}
  for name, term in (now.get('losses') or {}).items():
    method = methods.METHODS.get((term or {}).get('method') or name)
    if method is not None:
      defaults['losses'][name] = json.loads(json.dumps(method.config_defaults()))
  return defaults


def _check_resume(config, setup, metadata, workdir):
  """Refuses a resume whose config changes the trajectory (unless allowed); logs the rest."""
  now = json.loads(config.to_json_best_effort())
  defaults = resume_defaults(now)
  saved = json.loads(json.dumps(metadata.get('config', {})))
  for tree in (saved, now, defaults):  # 'auto' compares as what it resolves to here
    for network in methods.NETWORKS:
      if isinstance(tree.get(network), dict):
        tree[network]['dtype'] = resolve_dtype(tree[network].get('dtype', 'float32'))
  trajectory, harmless = workdir_lib.config_changes(saved, now, defaults=defaults)
  saved_teacher = (metadata.get('teacher') or {}).get('sha256')
  teacher = setup.networks.teacher_source.get('sha256')
  if saved_teacher and teacher and saved_teacher != teacher:
    trajectory.append(f'teacher weights: sha256 {saved_teacher[:12]}... -> {teacher[:12]}...')
  if trajectory and not config.allow_config_change:
    raise KdjaxError(f"the config differs from the one the run in '{workdir}' was started with "
                     f"in a way that changes training: {'; '.join(trajectory)}; restore it, use "
                     'another --workdir, or pass --config.allow_config_change=True')
  for change in trajectory:
    log.warning('Resuming with a changed config (allow_config_change): %s', change)
  for change in harmless:
    log.info('Resuming with a changed config: %s', change)


def _last_eval(workdir, model, step):
  """The metrics of `model`'s eval line at `step` in metrics.jsonl, or None."""
  lines = [r for r in metrics_lib.read_records(workdir)
           if r.get('model') == model and r['step'] == step and 'split' in r]
  if not lines:
    return None
  return {k: v for k, v in lines[-1].items() if k not in ('step', 'split', 'model')}


class RunResult(dict):
  """The exported network's final eval metrics (`top1`, `top5`, ... as fractions), with the
  run's `workdir` and its `history`: every metrics.jsonl record, a list of dicts that
  `pandas.DataFrame(result.history)` reads (train lines carry `loss`, eval lines `split`)."""

  def __init__(self, metrics, workdir):
    super().__init__(metrics)
    self.workdir = workdir

  @property
  def history(self) -> list[dict]:
    return metrics_lib.read_records(self.workdir)


def train_and_evaluate(config, workdir: str, setup: Setup | None = None, mesh=None, *,
                       progress: str = 'auto') -> RunResult:
  """Trains (or resumes) the recipe `config` in `workdir`; returns the final eval metrics.

  One run per workdir (a lock). SIGTERM and Ctrl-C save a checkpoint and raise `Preempted`;
  the same call resumes exactly. A non-finite loss or gradient stops the run (KdjaxError) and
  is never saved, or with `on_nonfinite='skip'` the update is skipped and counted.

  `progress`: 'log' (a line every `log_every_steps`), 'bar' (a progress bar; in a notebook a
  widget), 'none', or 'auto' (the bar inside a Jupyter/Colab kernel, else the log lines).
  """
  logs.ensure()  # A notebook that set up no logging still sees kdjax's lines.
  progress = metrics_lib.progress_mode(progress)
  setup = setup or build(config)
  mesh = mesh or make_mesh()
  main_process = jax.process_index() == 0
  created = not os.path.exists(workdir)
  lock = workdir_lib.Lock(workdir) if main_process else None
  if lock:
    os.makedirs(workdir, exist_ok=True)
    try:
      lock.acquire()
    except KdjaxError:
      if created:
        shutil.rmtree(workdir, ignore_errors=True)
      raise
  try:
    return RunResult(_train(config, workdir, setup, mesh, lock, created, progress), workdir)
  finally:
    if lock:
      lock.release()


def _train(config, workdir, setup, mesh, lock, created, progress_mode):
  rep = replicated(mesh)
  num_processes = jax.process_count()
  local_batch = config.batch_size // num_processes
  eval_local_batch = (config.eval_batch_size or config.batch_size) // num_processes
  total = setup.data.total_steps

  # State: fresh, or restored from the workdir's newest checkpoint that restores.
  state = create_state(setup, mesh, config.seed)
  manager = checkpoint.Manager(workdir, config)
  try:
    # The config is compared first: a changed model would not even restore.
    saved_step, saved = manager.latest_metadata()
    if saved_step:
      _check_resume(config, setup, saved, workdir)
    state, start_step, metadata = manager.restore_or(state)
  except KdjaxError:
    manager.close()
    if created and jax.process_index() == 0:  # A failed set-up leaves no trace behind.
      shutil.rmtree(workdir, ignore_errors=True)
    raise
  if config.ema.decay > 0 and state.ema is None:  # Resumed (allow_config_change) from a
    # checkpoint without an EMA: it starts from the restored weights, as timm's would.
    log.warning('The checkpoint at step %d has no EMA of the weights; it starts from the '
                    'restored weights.', start_step)
    state = state.replace(ema=jax.tree.map(jnp.copy, {  # copies: the step donates buffers
        'params': {n: state.params[n] for n in setup.networks.trainable},
        'batch_stats': {n: state.batch_stats[n] for n in setup.networks.trainable}}))
  log.info('Parameters: %s', describe_parameters(state, setup))
  # Train metrics of the steps since the last log line, kept by a checkpoint saved in between.
  pending = [] if not start_step else list(metadata.get('pending_metrics', []))
  log.info('Train state: %s.', describe_placement(state, config.student.get('shard', False)))
  teacher_variables = place_teacher(setup, mesh)
  if start_step:
    log.info('Resumed from the checkpoint at step %d in %s.', start_step, workdir)

  writer = metrics_lib.Writer(workdir, resume_step=start_step)
  train_step = compile_train_step(setup, mesh)
  pixels = (tuple(config.input.mean), tuple(config.input.std))
  eval_steps = {name: jax.jit(make_student_eval_step(model, pixels=pixels), out_shardings=rep)
                for name, model in setup.networks.trainable.items()}
  # The teacher's eval logits: computed at this session's first eval, then kept on the devices.
  teacher_logits = None

  def teacher_eval(batches):
    """The teacher's metrics over the eval split; keeps its logits for the student evals."""
    nonlocal teacher_logits
    step = jax.jit(make_teacher_eval_step(setup.networks.teacher, pixels=pixels),
                   out_shardings=(rep, batch_sharded(mesh)))
    result, teacher_logits = evaluate_teacher(step, teacher_variables, batches, mesh)
    log.info("Kept the teacher's eval logits for this session's evals: %s.",
             describe_teacher_logits(teacher_logits))
    return result

  def run_eval(step, model_name, write=True):
    """Evaluates one network (or its EMA) on the whole eval split and writes the eval line."""
    batches = lambda: input_pipeline.eval_batches(config, setup.data.builder,
                                                  local_batch_size=eval_local_batch)
    if model_name == 'teacher':
      result = teacher_eval(batches())
    else:
      if setup.networks.teacher is not None and teacher_logits is None:
        teacher_eval(batches())  # The first eval after a resume: no teacher line is written.
      result = evaluate_against(eval_steps[model_name.removesuffix('_ema')],
                                network_variables(state, model_name), teacher_logits,
                                batches(), mesh)
    if write:
      writer.write_eval(step, config.input.eval_split, model_name, result)
    return result

  def run_evals(step, write=True):
    """Evaluates every trainable network (and its EMA when config.ema is on); returns the
    exported one's result (the EMA's when on)."""
    names = list(setup.networks.trainable)
    if config.ema.decay > 0:
      names += [f'{name}_ema' for name in setup.networks.trainable]
    results = {name: run_eval(step, name, write) for name in names}
    return results[exported_name(config)]

  def save(step):
    if not manager.has(step):
      manager.save(step, state, setup, pending_metrics=pending)

  def check(step, metrics):
    """Stops on a non-finite step (unless skipping); True when a process asked to stop."""
    flags = jax.device_get({k: v for k, v in metrics.items() if k in ('nonfinite', 'stop')
                            or k.startswith('loss')})
    if flags['nonfinite'] and config.on_nonfinite != 'skip':
      bad = [f'{k} {v:.4g}' for k, v in flags.items() if k.startswith('loss/')
             and not np.isfinite(v)] or [f'loss {flags["loss"]:.4g} (a non-finite gradient)'
                                         if np.isfinite(flags['loss']) else 'loss']
      raise KdjaxError(f"non-finite value at step {step}: {', '.join(bad)}; the update was "
                       f'dropped and nothing after step {manager.latest_step() or 0} was saved; '
                       'check the learning rate and the terms\' hyperparameters, or set '
                       '--config.on_nonfinite=skip to skip such steps')
    return bool(flags['stop'])

  result = {}
  session_start, status, step = time.perf_counter(), 'failed', start_step
  commit = provenance.git_commit() if jax.process_index() == 0 else None
  progress = metrics_lib.Progress(total, start_step, mode='none')
  try:
    if setup.networks.teacher is not None and start_step == 0:
      run_eval(0, 'teacher')
    if start_step >= total:
      log.info('The run in %s is already complete (step %d).', workdir, start_step)
      # Nothing trained; a run completed before provenance.json existed (or stopped exactly at
      # its last step) gets its 'finished' session now.
      sessions = provenance.read(workdir).get('sessions', [])
      status = None if sessions and sessions[-1]['status'] == 'finished' else 'finished'
      return (_last_eval(workdir, exported_name(config), start_step)  # already written
              or run_evals(start_step, write=False))

    batches = input_pipeline.train_batches(config, setup.data.builder, start_step=start_step,
                                           local_batch_size=local_batch,
                                           steps_per_epoch=setup.data.steps_per_epoch,
                                           unlabeled_builder=setup.data.unlabeled_builder,
                                           teacher_cache=open_teacher_cache(setup))
    eval_every = (max(1, round(config.eval_every_epochs * setup.data.steps_per_epoch))
                  if config.eval_every_epochs > 0 else total)
    progress = metrics_lib.Progress(total, start_step, mode=progress_mode)
    last_log, timed_steps = time.perf_counter(), 0  # steps run here since the last log line
    unchecked, stop = collections.deque(), False  # (step, metrics) whose flags are unread
    with StopSignals() as signals:

      def with_stop_flag(local):  # Any process asked to stop: the step tells every process.
        local['stop'] = np.full(local['label'].shape, signals.received is not None, np.int32)
        return local
      device_batches = prefetch_to_devices(map(with_stop_flag, batches), mesh)
      while step < total:
        state, step_metrics = train_step(state, teacher_variables, next(device_batches))
        step += 1
        timed_steps += 1
        progress.step(step)
        unchecked.append((step, step_metrics))
        # A step's flags are read PREFETCH_DEPTH steps later, when the device has long finished
        # it: the host never waits for the device between log lines.
        if len(unchecked) > PREFETCH_DEPTH:
          stop = check(*unchecked.popleft()) or stop
        pending.append(step_metrics)
        at_log = step % config.log_every_steps == 0 or step == total
        at_eval = step % eval_every == 0 or step == total
        at_save = step % config.checkpoint_every_steps == 0 or step == total
        if at_log or at_eval or at_save or stop:
          while unchecked:
            stop = check(*unchecked.popleft()) or stop
          pending = [{k: float(v) for k, v in m.items() if k not in ('nonfinite', 'stop')}
                     for m in jax.device_get(pending)]
        if at_log:
          means = {k: float(np.mean([m[k] for m in pending])) for k in pending[0]}
          now = time.perf_counter()
          means['examples_per_sec'] = timed_steps * config.batch_size / (now - last_log)
          if config.on_nonfinite == 'skip':
            means['skipped_updates'] = int(jax.device_get(state.skipped))
          writer.write_train(step, means)
          progress.log(step, means)
          pending, last_log, timed_steps = [], now, 0
          if lock:
            lock.heartbeat()
        if at_eval:
          eval_start = time.perf_counter()
          result = run_evals(step)
          last_log += time.perf_counter() - eval_start  # Keep eval time out of examples/s.
        if at_save or stop:
          save(step)
        if stop:
          manager.close()
          status = 'preempted'
          raise Preempted(signals.received or signal.SIGTERM, step, workdir)
    status = 'finished'
    return result
  finally:
    progress.close()
    manager.close()
    writer.close()
    if status:
      try:
        provenance.record_session(workdir, config, start_step=start_step, end_step=step,
                                  wall_s=time.perf_counter() - session_start, status=status,
                                  commit=commit)
      except (OSError, ValueError) as e:  # Never let the record hide how the run ended.
        log.warning('Could not write %s/%s: %s', workdir, provenance.FILE, e)
