"""The trainer: train state, one jit train step sharded over a device mesh, exact eval, the loop.

Read top to bottom:
  1. Mesh and sharding        one 'data' axis over every device of every process
  2. Models and variables     student (trainable), teacher (frozen, loaded, never saved)
  3. Optimizer                optax SGD / AdamW with step or cosine schedules and warm-up
  4. Train step               teacher forward -> student forward -> loss terms -> update
  5. Eval step                top-1 / top-5 (+ teacher agreement and KL) over masked batches
  6. The loop                 resume, train, log, evaluate, checkpoint

Everything here is importable from a notebook: `train_and_evaluate(config, workdir)`.
"""

import dataclasses
import functools
import math
import time
from typing import Any

from absl import logging
import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from kdjax import checkpoint
from kdjax import losses
from kdjax import methods
from kdjax import metrics as metrics_lib
from kdjax import models
from kdjax import taps as taps_lib
from kdjax.data import input_pipeline
from kdjax.errors import KdjaxError

# --------------------------------------------------------------------------------------------
# 1. Mesh and sharding
# --------------------------------------------------------------------------------------------


def make_mesh(devices=None):
  """A 1-D mesh named 'data' over `devices` (default: every device of every process).

  Axis type Auto on purpose: the step is pure data parallelism, the batch is the only sharded
  array, and XLA's propagation inserts the gradient and BatchNorm all-reduces.
  """
  devices = jax.devices() if devices is None else list(devices)
  return jax.make_mesh((len(devices),), ('data',), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=devices)


def replicated(mesh):
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def batch_sharded(mesh):
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))


def global_batch(local_batch: dict, mesh) -> dict:
  """Assembles global arrays from each process's local numpy batch."""
  sharding = batch_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}


# --------------------------------------------------------------------------------------------
# 2. Models and variables
# --------------------------------------------------------------------------------------------


@flax.struct.dataclass
class TrainState:
  """Everything that is trained and checkpointed. The teacher is not in here."""
  step: jax.Array
  params: Any        # {'student': ...}; with a peer (DML) also {'peer': ...}
  batch_stats: Any   # the same keys
  opt_state: Any


@dataclasses.dataclass
class Setup:
  """Everything built and validated from a config before anything is written."""
  config: Any
  info: input_pipeline.DatasetInfo
  builder: Any
  unlabeled_builder: Any     # the source of input.unlabeled, or None
  steps_per_epoch: int
  total_steps: int
  terms: list
  models: dict               # trainable networks: {'student': model[, 'peer': model]}
  teacher: Any               # None when no term reads a teacher
  teacher_variables: Any     # host arrays, or None
  teacher_source: dict
  taps: dict                 # network name -> tap names the terms read (logits excluded)
  connectors: dict           # term name -> its trainable connector module (kdjax/connectors)
  tap_shapes: dict           # network name -> {tap: ShapeDtypeStruct} for a batch of 1
  tx: Any
  schedule: Any

  @property
  def student(self):
    return self.models['student']


def _dtype(name, key):
  dtypes = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
  if name not in dtypes:
    raise KdjaxError(f"unknown {key} '{name}'; valid: {', '.join(dtypes)}")
  return dtypes[name]


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
  if config.export not in methods.TRAINABLE:
    raise KdjaxError(f"export must be one of {', '.join(methods.TRAINABLE)}, got "
                     f"'{config.export}'")


def _network(config, name, info, input_shape, tap_names):
  """Builds network `name` from config.<name>.model and checks that its taps exist."""
  if not config[name].model:
    raise KdjaxError(f'the losses read the {name} but {name}.model is empty; set '
                     f'--config.{name}.model')
  model = models.get_model(config[name].model, num_classes=info.num_classes,
                           dtype=_dtype(config[name].dtype, f'{name}.dtype'),
                           config_key=f'{name}.model')
  taps_lib.check(model, tap_names, input_shape, where=name)
  return model


def build(config) -> Setup:
  """Validates the config against data, models, taps and the teacher. Writes nothing."""
  _check_config(config)
  terms = methods.build_terms(config.losses, batch_size=config.batch_size)
  builder = input_pipeline.get_builder(config)
  unlabeled_builder = input_pipeline.get_unlabeled_builder(config)
  input_pipeline.check_options(config, builder, unlabeled_builder)
  info = input_pipeline.dataset_info(config, builder)
  spe = input_pipeline.steps_per_epoch(config, info)
  total = (config.num_train_steps if config.num_train_steps > 0
           else math.ceil(config.num_epochs * spe))
  input_shape = (1,) + info.image_shape
  used = methods.networks(terms)
  tap_names = {name: methods.taps(terms, name) for name in methods.NETWORKS}
  trainable = {'student': _network(config, 'student', info, input_shape, tap_names['student'])}
  if 'peer' in used or config.peer.model:
    trainable['peer'] = _network(config, 'peer', info, input_shape, tap_names['peer'])
  if config.export not in trainable:
    raise KdjaxError(f"export='{config.export}' but the recipe trains no {config.export}")

  teacher = teacher_variables = None
  source = {}
  if 'teacher' in used:
    teacher = _network(config, 'teacher', info, input_shape, tap_names['teacher'])
    teacher_variables, source = checkpoint.load_teacher(
        config.teacher.checkpoint, teacher, input_shape, allow_random=config.smoke,
        seed=config.seed)
  terms = [_with_dataset_size(t, config, builder) for t in terms]
  shapes = {name: tap_shapes(model, tap_names[name], input_shape)
            for name, model in [*trainable.items(), ('teacher', teacher)] if model is not None}
  connectors = {t.name: t.method.connector(t.hparams, shapes['student'], shapes.get('teacher'))
                for t in terms if t.method.connector}
  terms = [dataclasses.replace(t, constants=t.method.constants(t.hparams, teacher,
                                                                teacher_variables))
           if t.method.constants else t for t in terms]
  tx, schedule = make_optimizer(config.optimizer, batch_size=config.batch_size,
                                steps_per_epoch=spe, total_steps=total)
  return Setup(config=config, info=info, builder=builder,
               unlabeled_builder=unlabeled_builder, steps_per_epoch=spe,
               total_steps=total, terms=terms, models=trainable, teacher=teacher,
               teacher_variables=teacher_variables, teacher_source=source,
               taps={k: v for k, v in tap_names.items() if k in trainable or k == 'teacher'},
               connectors=connectors, tap_shapes=shapes, tx=tx, schedule=schedule)


def _with_dataset_size(term, config, builder):
  """Methods with one memory row per training example (CRD) get `num_data` from the dataset."""
  if 'num_data' not in term.hparams:
    return term
  if not config.input.add_index:
    raise KdjaxError(f'losses.{term.name} ({term.method.name}) needs each example\'s index: set '
                     '--config.input.add_index=True')
  size = input_pipeline.index_space(builder, config.input.train_split)
  return dataclasses.replace(term, hparams={**term.hparams, 'num_data': size})


def tap_shapes(model, tap_names, input_shape):
  """{'logits': ..., tap: ...} shapes (ShapeDtypeStruct) of `model` for `input_shape`."""
  def run(x):
    variables = model.init(jax.random.key(0), x, train=False)
    logits, feats, _ = taps_lib.apply(model, variables, x, taps=tap_names)
    return {'logits': logits, **feats}
  return jax.eval_shape(run, jnp.zeros(input_shape, jnp.float32))


def init_state(setup: Setup, rng) -> TrainState:
  """Random variables for every trainable network and a fresh optimizer state."""
  x = jnp.zeros((1,) + setup.info.image_shape, jnp.float32)
  params, batch_stats = {}, {}
  for i, (name, model) in enumerate(sorted(setup.models.items())):
    variables = model.init(jax.random.fold_in(rng, i), x, train=False)
    params[name] = variables['params']
    batch_stats[name] = variables.get('batch_stats', {})
  if setup.connectors:  # Trained with the networks, saved in checkpoints, never exported.
    zeros = lambda shapes: jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), shapes)
    params['connectors'], batch_stats['connectors'] = {}, {}
    for i, (name, module) in enumerate(sorted(setup.connectors.items())):
      variables = module.init(jax.random.fold_in(rng, 1000 + i),
                              zeros(setup.tap_shapes['student']),
                              zeros(setup.tap_shapes.get('teacher', {})), train=False)
      params['connectors'][name] = variables.pop('params')
      batch_stats['connectors'][name] = variables  # batch_stats, and e.g. CRD's crd_memory
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                    opt_state=setup.tx.init(params))


# --------------------------------------------------------------------------------------------
# 3. Optimizer
# --------------------------------------------------------------------------------------------


def learning_rate_schedule(cfg, *, batch_size, steps_per_epoch, total_steps):
  """Base LR (scaled by batch_size / lr_base_batch_size if set), linear warm-up from 0, then
  step decays at absolute epoch boundaries, cosine decay to 0 at the end, or constant."""
  base = cfg.learning_rate
  if cfg.lr_base_batch_size > 0:
    base *= batch_size / cfg.lr_base_batch_size
  warmup = round(cfg.warmup_epochs * steps_per_epoch)
  if cfg.schedule == 'cosine':
    return optax.warmup_cosine_decay_schedule(0.0, base, warmup, max(total_steps, warmup + 1))
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
  return lambda step: jnp.where(step < warmup, base * step / warmup, main(step))


def make_optimizer(cfg, *, batch_size, steps_per_epoch, total_steps):
  """SGD (PyTorch semantics: decay added to the gradient before momentum) or AdamW."""
  schedule = learning_rate_schedule(cfg, batch_size=batch_size, steps_per_epoch=steps_per_epoch,
                                    total_steps=total_steps)
  if cfg.name == 'sgd':
    tx = optax.chain(optax.add_decayed_weights(cfg.weight_decay),
                     optax.sgd(schedule, momentum=cfg.momentum or None, nesterov=cfg.nesterov))
  elif cfg.name == 'adamw':
    tx = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)
  else:
    raise KdjaxError(f"unknown optimizer.name '{cfg.name}'; valid: sgd, adamw")
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


def make_train_step(setup: Setup):
  """Returns step(state, teacher_variables, batch) -> (state, metrics), pure and jittable."""
  terms, teacher = setup.terms, setup.teacher
  spe = setup.steps_per_epoch

  def step(state, teacher_variables, batch):
    images = batch['image']
    out = {}
    if teacher is not None:
      out['teacher'] = teacher_forward(teacher, teacher_variables, images, setup.taps['teacher'])
    epoch = state.step // spe + 1  # 1-based, constant within an epoch (ALGORITHMS.md §1.4)
    # Randomness inside the step (MGD's masks, CRD's negatives) depends on (seed, step) only.
    step_rng = jax.random.fold_in(jax.random.key(setup.config.seed), state.step)

    def loss_fn(params):
      new_stats = {}
      for name, model in setup.models.items():
        variables = {'params': params[name], 'batch_stats': state.batch_stats[name]}
        logits, feats, new = taps_lib.apply(model, variables, images, taps=setup.taps[name],
                                            train=True, mutable=('batch_stats',))
        out[name] = {'logits': logits.astype(jnp.float32),
                     **{k: v.astype(jnp.float32) for k, v in feats.items()}}
        new_stats[name] = new.get('batch_stats', {})
      connected = {}
      if setup.connectors:
        new_stats['connectors'] = {}
        for name, module in setup.connectors.items():
          model_state = state.batch_stats['connectors'][name]
          variables = {'params': params['connectors'][name], **model_state}
          connected[name], new = module.apply(
              variables, out['student'], out.get('teacher', {}), train=True,
              batch={k: v for k, v in batch.items() if k != 'image'},
              mutable=list(model_state), rngs={'distill': step_rng})
          new_stats['connectors'][name] = {**model_state, **new}
      values = {t.name: t({**out, 'connector': connected[t.name]} if t.name in connected else out,
                          batch) for t in terms}
      total = sum(t.weight_at(epoch) * t.factor(epoch) * values[t.name] for t in terms)
      return total, (values, new_stats)

    (total, (values, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = setup.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=new_stats,
                              opt_state=opt_state)
    metrics = {'loss': total, 'lr': setup.schedule(state.step)}
    metrics.update({f'loss/{k}': v for k, v in values.items()})
    return new_state, metrics

  return step


def compile_train_step(setup: Setup, mesh):
  """The train step jitted over `mesh`: replicated state (donated), batch split on 'data'."""
  rep = replicated(mesh)
  return jax.jit(make_train_step(setup), donate_argnums=0,
                 in_shardings=(rep, rep, batch_sharded(mesh)), out_shardings=(rep, rep))


def create_state(setup: Setup, mesh, seed):
  """A fresh TrainState, replicated over `mesh`."""
  init = jax.jit(functools.partial(init_state, setup), out_shardings=replicated(mesh))
  return init(jax.random.key(seed))


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


def make_eval_step(model, teacher=None):
  """Returns step(variables, teacher_variables, batch) -> masked sums."""
  def step(variables, teacher_variables, batch):
    logits = model.apply(variables, batch['image'], train=False).astype(jnp.float32)
    t_logits = None
    if teacher is not None:
      t_logits = teacher.apply(teacher_variables, batch['image'], train=False)
      t_logits = t_logits.astype(jnp.float32)
    return eval_metrics(logits, batch, t_logits)
  return step


def evaluate(eval_step, variables, teacher_variables, batches, mesh) -> dict:
  """Runs the whole eval split; returns fractions (top1, top5, agreement) and mean KL."""
  sums = None
  for local in batches:
    out = eval_step(variables, teacher_variables, global_batch(local, mesh))
    sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
  sums = jax.device_get(sums)
  count = max(float(sums.pop('count')), 1.0)
  return {k: float(v) / count for k, v in sums.items()}


# --------------------------------------------------------------------------------------------
# 6. The loop
# --------------------------------------------------------------------------------------------


def network_variables(state, name):
  return {'params': state.params[name], 'batch_stats': state.batch_stats[name]}


def train_and_evaluate(config, workdir: str, setup: Setup | None = None, mesh=None) -> dict:
  """Trains (or resumes) the recipe `config` in `workdir`; returns the final eval metrics."""
  setup = setup or build(config)
  mesh = mesh or make_mesh()
  rep = replicated(mesh)
  num_processes = jax.process_count()
  local_batch = config.batch_size // num_processes
  eval_local_batch = (config.eval_batch_size or config.batch_size) // num_processes

  # State: fresh, or restored from the workdir's latest checkpoint.
  state = create_state(setup, mesh, config.seed)
  manager = checkpoint.Manager(workdir, config)
  state, start_step = manager.restore_or(state)
  teacher_variables = (jax.device_put(setup.teacher_variables, rep)
                       if setup.teacher_variables is not None else None)
  if start_step:
    logging.info('Resumed from the checkpoint at step %d in %s.', start_step, workdir)

  writer = metrics_lib.Writer(workdir, resume_step=start_step)
  train_step = compile_train_step(setup, mesh)
  eval_steps = {name: jax.jit(make_eval_step(model, setup.teacher), out_shardings=rep)
                for name, model in setup.models.items()}

  def run_eval(step, model_name, write=True):
    """Evaluates one network on the whole eval split and writes the eval line."""
    batches = input_pipeline.eval_batches(config, setup.builder, local_batch_size=eval_local_batch)
    if model_name == 'teacher':
      result = evaluate(jax.jit(make_eval_step(setup.teacher), out_shardings=rep),
                        teacher_variables, None, batches, mesh)
    else:
      result = evaluate(eval_steps[model_name], network_variables(state, model_name),
                        teacher_variables, batches, mesh)
    if write:
      writer.write_eval(step, config.input.eval_split, model_name, result)
    return result

  def run_evals(step, write=True):
    """Evaluates every trainable network; returns the exported network's result."""
    results = {name: run_eval(step, name, write) for name in setup.models}
    return results[config.export]

  def finish(result):
    manager.close()
    writer.close()
    return result

  if setup.teacher is not None and start_step == 0:
    run_eval(0, 'teacher')
  if start_step >= setup.total_steps:
    logging.info('The run in %s is already complete (step %d).', workdir, start_step)
    return finish(run_evals(start_step, write=False))  # Its eval lines are already written.

  batches = input_pipeline.train_batches(config, setup.builder, start_step=start_step,
                                         local_batch_size=local_batch,
                                         steps_per_epoch=setup.steps_per_epoch,
                                         unlabeled_builder=setup.unlabeled_builder)
  eval_every = (max(1, round(config.eval_every_epochs * setup.steps_per_epoch))
                if config.eval_every_epochs > 0 else setup.total_steps)
  progress = metrics_lib.Progress(setup.total_steps, start_step)
  pending, last_log = [], time.perf_counter()
  result = {}
  step = start_step
  while step < setup.total_steps:
    state, step_metrics = train_step(state, teacher_variables,
                                     global_batch(next(batches), mesh))
    step += 1
    pending.append(step_metrics)
    if step % config.log_every_steps == 0 or step == setup.total_steps:
      means = jax.tree.map(lambda *xs: float(np.mean(xs)), *jax.device_get(pending))
      now = time.perf_counter()
      means['examples_per_sec'] = len(pending) * config.batch_size / (now - last_log)
      writer.write_train(step, means)
      progress.log(step, means)
      pending, last_log = [], now
    if step % eval_every == 0 or step == setup.total_steps:
      eval_start = time.perf_counter()
      result = run_evals(step)
      last_log += time.perf_counter() - eval_start  # Keep eval time out of examples/s.
    if step % config.checkpoint_every_steps == 0 or step == setup.total_steps:
      manager.save(step, state, setup)
  return finish(result)
