"""Orbax checkpoints: training checkpoints (save, keep-N, async, resume), exports, teachers.

Layout of a workdir:
  <workdir>/checkpoints/<step>/state      TrainState (student, connectors, optimizer, the
                                          weights' EMA when config.ema is on); no teacher
  <workdir>/checkpoints/<step>/metadata   JSON: config, teacher source and hash, package versions
An export (`python -m kdjax.export`) is a folder with `variables/` (student params and
batch_stats only; their EMA when the run had config.ema on) and `kdjax_export.json` (model,
classes, the run's eval preprocessing: what `kdjax.load` needs to classify raw images).

A teacher checkpoint may be either of these two, or a torchvision/timm state dict file
(`.safetensors`, or `.pth` with torch installed; see `kdjax.torch_import`), and is checked
against the teacher model's variable names and shapes before training starts.
"""

import dataclasses
import hashlib
import importlib.metadata
import json
import logging
import os
import time

import flax
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from kdjax import torch_import
from kdjax.errors import KdjaxError

log = logging.getLogger(__name__)  # kdjax.* loggers: shown at INFO (kdjax/logs.py)

EXPORT_METADATA = 'kdjax_export.json'
_PACKAGES = ('kdjax', 'jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint',
             'tensorflow-datasets', 'ml-collections')


def package_versions() -> dict:
  versions = {}
  for name in _PACKAGES:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      versions[name] = None
  return versions


def tree_hash(tree) -> str:
  """sha256 over (path, dtype, shape, bytes) of every leaf, in a fixed order."""
  digest = hashlib.sha256()
  for path, leaf in sorted(jax.tree_util.tree_leaves_with_path(tree),
                           key=lambda kv: jax.tree_util.keystr(kv[0])):
    leaf = np.asarray(leaf)
    digest.update(f'{jax.tree_util.keystr(path)}|{leaf.dtype}|{leaf.shape}|'.encode())
    digest.update(np.ascontiguousarray(leaf).tobytes())
  return digest.hexdigest()


class Manager:
  """Periodic async saves with keep-N, and resume from the newest checkpoint that restores."""

  def __init__(self, workdir, config):
    self.workdir = os.path.abspath(workdir)
    self.directory = os.path.join(self.workdir, 'checkpoints')
    self._config = config
    self._manager = self._open()

  def _open(self):
    options = ocp.CheckpointManagerOptions(max_to_keep=self._config.keep_checkpoints,
                                           create=True, enable_async_checkpointing=True)
    return ocp.CheckpointManager(self.directory, options=options,
                                 item_handlers={'state': ocp.StandardCheckpointHandler(),
                                                'metadata': ocp.JsonCheckpointHandler()})

  def restore_or(self, state):
    """(restored state, its step, its metadata), or (state, 0, None) without a checkpoint.

    A checkpoint that cannot be restored (truncated, corrupt, from an incompatible run) is
    moved to `<workdir>/damaged_checkpoints/` with a warning and the one before it is tried;
    if none restores, a KdjaxError says so.
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    steps = sorted(self._manager.all_steps(), reverse=True)
    errors = []
    for step in steps:
      try:
        target = self._restore_target(step, abstract)
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), metadata=ocp.args.JsonRestore()))
        restored_state = _as_state(state, restored.state)
      except Exception as e:  # pylint: disable=broad-except  Orbax/tensorstore/shape errors.
        reason = f'{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ""}'
        errors.append((step, reason))
        log.warning('The checkpoint at step %d in %s cannot be restored (%s); trying the '
                        'one before it.', step, self.directory, reason)
        continue
      if errors:
        self._set_aside([s for s, _ in errors])
      return restored_state, step, dict(restored.metadata)
    if errors:
      step, reason = errors[0]
      raise KdjaxError(f"no checkpoint in '{self.directory}' can be restored (the latest, step "
                       f'{step}: {reason}); move that folder away to start afresh, or fix the '
                       'config if it no longer matches the run')
    return state, 0, None

  def _restore_target(self, step, abstract):
    """The abstract TrainState of `step` as a dict of its fields, fitted to what the checkpoint
    holds: `ema` is left out of checkpoints written before it existed, restored as None from
    those written with EMA off, and restored (then dropped) when this run has EMA off."""
    saved = self._manager.item_metadata(step)['state']
    target = {f.name: getattr(abstract, f.name) for f in dataclasses.fields(abstract)
              if f.name in saved}
    if 'ema' in saved:
      if not saved['ema']:
        target['ema'] = None
      elif abstract.ema is None:
        target['ema'] = self._like_weights(saved['ema'], abstract)
    return target

  @staticmethod
  def _like_weights(saved_ema, abstract):
    """Restore targets for a saved EMA this run does not keep: each leaf placed as the weight
    it averages is (sharded with student.shard), or as the state's first leaf if none is."""
    fallback = jax.tree.leaves(abstract)[0].sharding
    weights = traverse_util.flatten_dict(
        {'params': abstract.params, 'batch_stats': abstract.batch_stats})

    def target(path, m):
      key = tuple(getattr(p, 'key', p) for p in path)
      like = weights.get(key)
      sharding = like.sharding if like is not None and like.shape == m.shape else fallback
      return jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding)
    return jax.tree_util.tree_map_with_path(
        target, saved_ema, is_leaf=lambda m: hasattr(m, 'shape') and hasattr(m, 'dtype'))

  def _set_aside(self, steps):
    """Moves damaged step folders out of the way, so the run can save those steps again."""
    if jax.process_index() == 0:
      aside = os.path.join(self.workdir, 'damaged_checkpoints')
      os.makedirs(aside, exist_ok=True)
      for step in steps:
        source = os.path.join(self.directory, str(step))
        if os.path.exists(source):
          os.replace(source, os.path.join(aside, f'{step}.{int(time.time())}'))
          log.warning('Moved the damaged checkpoint of step %d to %s.', step, aside)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices('kdjax_damaged_checkpoints_moved')
    self._manager.close()
    self._manager = self._open()

  def latest_metadata(self):
    """(step, metadata) of the newest checkpoint whose metadata reads, or (None, None)."""
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        restored = self._manager.restore(step, args=ocp.args.Composite(
            metadata=ocp.args.JsonRestore()))
        return step, dict(restored.metadata)
      except Exception:  # pylint: disable=broad-except  Damaged: restore_or sets it aside.
        continue
    return None, None

  def has(self, step):
    return step in self._manager.all_steps()

  def save(self, step, state, setup, pending_metrics=()):
    metadata = {
        'step': int(step),
        'config': json.loads(self._config.to_json_best_effort()),
        'export': self._config.export,
        'export_ema': self._config.ema.decay > 0,  # export and teacher loading take the EMA
        'student_model': self._config[self._config.export].model,  # the exported network
        'num_classes': setup.data.info.num_classes,
        'image_shape': list(setup.data.info.image_shape),
        'class_names': class_names(setup.data.builder),
        'teacher': setup.networks.teacher_source,
        'student_init': setup.networks.student_source,
        'packages': package_versions(),
        # Train metrics since the last log line, so a run resumed here logs the same means.
        'pending_metrics': list(pending_metrics),
    }
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), metadata=ocp.args.JsonSave(metadata)))

  def latest_step(self):
    return self._manager.latest_step()

  def close(self):
    """Waits for the saves in flight (they are asynchronous) and closes; idempotent."""
    if self._manager is not None:
      self._manager.wait_until_finished()
      self._manager.close()
      self._manager = None


def _as_state(state, restored: dict):
  """`state` with the restored fields; `ema` is None when the checkpoint has none (the trainer
  then starts it from the restored weights) or when `state` keeps none."""
  ema = restored.get('ema') if state.ema is not None else None
  return state.replace(**{k: v for k, v in restored.items() if k != 'ema'}, ema=ema)


def latest_metadata(workdir):
  """(step, manager, metadata dict) of the latest checkpoint in a workdir, or a KdjaxError."""
  directory = os.path.abspath(os.path.join(workdir, 'checkpoints'))
  manager = ocp.CheckpointManager(
      directory, item_names=('state', 'metadata'),
      item_handlers={'state': ocp.StandardCheckpointHandler(),
                     'metadata': ocp.JsonCheckpointHandler()})
  step = manager.latest_step()
  if step is None:
    raise KdjaxError(f"no checkpoint in '{directory}'; train there first with python -m "
                     'kdjax.main --workdir=... or point at another workdir')
  meta = manager.restore(step, args=ocp.args.Composite(metadata=ocp.args.JsonRestore()))
  return step, manager, meta.metadata


def restore_student(workdir):
  """(variables, metadata) of the exported network (`config.export`, by default the student)
  in the latest training checkpoint of `workdir`: its EMA when the run had config.ema on."""
  step, manager, metadata = latest_metadata(workdir)
  # Restore onto this host's first device whatever mesh saved it (export on a laptop after a
  # pod run): the target takes shapes and dtypes from the checkpoint, the sharding from here.
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                        manager.item_metadata(step)['state'],
                        is_leaf=lambda m: hasattr(m, 'shape') and hasattr(m, 'dtype'))
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
  state = restored.state
  name = metadata.get('export', 'student')
  if metadata.get('export_ema'):
    state = state['ema']
  variables = {'params': state['params'][name]}
  if state['batch_stats'][name]:
    variables['batch_stats'] = state['batch_stats'][name]
  manager.close()
  return jax.tree.map(np.asarray, variables), metadata


def export(variables, metadata, output):
  """Writes `variables` (student only) and its metadata to the folder `output`."""
  output = os.path.abspath(output)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.join(output, 'variables'), variables, force=True)
  checkpointer.wait_until_finished()
  with open(os.path.join(output, EXPORT_METADATA), 'w') as f:
    json.dump(metadata, f, indent=1)


def class_names(builder):
  """The dataset's class names (TFDS `label` feature), or None where it has none."""
  try:
    names = builder.info.features['label'].names
  except (AttributeError, KeyError, TypeError):
    return None
  return [str(n) for n in names] if names else None


def eval_preprocessing(metadata):
  """The run's evaluation preprocessing, from a checkpoint's metadata: what `kdjax.load` applies
  to raw images (`data.preprocess.eval_transform`). None when the metadata has no config."""
  inp = (metadata.get('config') or {}).get('input')
  if not inp:
    return None
  return {
      'image_size': int(inp['image_size']),
      'eval_preprocess': inp['eval_preprocess'],
      'eval_resize_size': int(inp['eval_resize_size']),
      'mean': [float(v) for v in inp['mean']],
      'std': [float(v) for v in inp['std']],
      'channels': int(metadata['image_shape'][-1]),
  }


def export_metadata(variables, metadata, workdir):
  """The export metadata (`kdjax_export.json`) of `variables`, the exported network restored
  from the latest checkpoint of `workdir` whose metadata is `metadata`."""
  config = metadata.get('config') or {}
  network = config.get(metadata.get('export', 'student')) or {}
  return {
      'model': metadata['student_model'],
      'num_classes': metadata['num_classes'],
      'image_shape': metadata['image_shape'],
      'step': metadata['step'],
      'ema': bool(metadata.get('export_ema')),  # the weights' moving average, not the weights
      'source_workdir': os.path.abspath(workdir),
      'teacher': metadata.get('teacher'),
      'packages': package_versions(),
      'sha256': tree_hash(variables),
      # The compute dtype the run evaluated with ('auto' as it resolved here).
      'dtype': _resolved_dtype(network.get('dtype', 'float32')),
      'dataset': config.get('dataset'),
      'data_dir': config.get('data_dir'),  # where kdjax.evaluate looks by default
      'eval_split': (config.get('input') or {}).get('eval_split'),
      # An image folder's held-out split depends on it (evaluating the export re-derives it).
      'holdout_fraction': (config.get('input') or {}).get('holdout_fraction'),
      'preprocess': eval_preprocessing(metadata),
      'class_names': metadata.get('class_names'),  # None for checkpoints written before them
  }


def export_workdir(workdir, output):
  """Writes the latest checkpoint's exported network (no teacher, no connectors, no optimizer
  state) to the folder `output`; returns the export metadata."""
  variables, metadata = restore_student(workdir)
  export_meta = export_metadata(variables, metadata, workdir)
  export(variables, export_meta, output)
  return export_meta


def load_exported(path):
  """(variables, metadata) of an export folder."""
  with open(os.path.join(path, EXPORT_METADATA)) as f:
    metadata = json.load(f)
  if metadata.get('format', 'orbax') != 'orbax':
    raise KdjaxError(f"'{path}' is a {metadata['format']} export (python -m kdjax.export "
                     f"--format={metadata['format']}), which kdjax cannot load back: load it with "
                     'tf.saved_model.load, or use an export made without --format')
  variables = ocp.StandardCheckpointer().restore(os.path.join(os.path.abspath(path), 'variables'))
  return jax.tree.map(np.asarray, variables), metadata


def _abstract_variables(model, input_shape):
  return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False),
                        jnp.zeros(input_shape, jnp.float32))


def without_classifier(variables, head):
  """`variables` less the params under the module path `head` (`torch_import.classifier_module`):
  what `reset_classifier` keeps of a checkpoint. A new nested dict; the arrays are shared."""
  prefix = ('params',) + tuple(head)
  flat = traverse_util.flatten_dict(flax.core.unfreeze(variables), keep_empty_nodes=True)
  return traverse_util.unflatten_dict(
      {k: v for k, v in flat.items() if k[:len(prefix)] != prefix})


def _check_fits(variables, model, input_shape, path, network='teacher', head=None):
  """Raises a KdjaxError naming the first missing/unexpected/mis-shaped variables. With
  `head` (a classifier module path to reset) the variables and the model are compared without it."""
  def flat(tree):
    return {jax.tree_util.keystr(p): tuple(np.shape(v))
            for p, v in jax.tree_util.tree_leaves_with_path(tree)}
  want = dict(_abstract_variables(model, input_shape))
  want = flat(without_classifier(want, head) if head else want)
  got = flat(dict(variables))
  missing = [k for k in want if k not in got]
  unexpected = [k for k in got if k not in want]
  shapes = [f'{k} {got[k]} != {want[k]}' for k in want if k in got and got[k] != want[k]]
  if missing or unexpected or shapes:
    problems = []
    if missing:
      problems.append(f'missing {missing[:3]}')
    if unexpected:
      problems.append(f'unexpected {unexpected[:3]}')
    if shapes:
      problems.append(f'shape mismatch {shapes[:3]}')
    hint = ''
    if network == 'student' and not head:
      hint = _classifier_hint(got, want, model)
    raise KdjaxError(f"{network}.checkpoint '{path}' does not fit {network}.model "
                     f'{type(model).__name__}: {"; ".join(problems)}{hint}; check {network}.model '
                     'and the dataset (number of classes)')


def _classifier_hint(got, want, model):
  """For a student checkpoint whose classifier has another class count (shapes by keystr):
  the flag that fine-tunes it on the dataset's classes."""
  names = ('params',) + torch_import.classifier_module(model) + ('kernel',)
  kernel = jax.tree_util.keystr(tuple(jax.tree_util.DictKey(n) for n in names))
  if kernel not in got or kernel not in want or got[kernel] == want[kernel]:
    return ''
  return torch_import.classifier_mismatch(got[kernel][-1], want[kernel][-1], 'student')


def random_teacher(model, input_shape, seed, calibration_passes=40):
  """Random teacher variables whose BatchNorm statistics match its own activations.

  A freshly initialised deep ResNet in inference mode (running mean 0, variance 1) lets its
  activations grow stage after stage; a smoke run's feature losses then overflow. Running the
  network in training mode on a fixed random batch moves the running statistics to the batch
  statistics (momentum 0.9: 40 passes leave 1.5% of the initial values).
  """
  x = jax.random.normal(jax.random.key(seed + 2), (8,) + tuple(input_shape[1:]), jnp.float32)
  variables = model.init(jax.random.key(seed + 1), x[:1], train=False)
  if 'batch_stats' in variables:
    update = jax.jit(lambda v: model.apply(v, x, train=True, mutable=['batch_stats'])[1])
    for _ in range(calibration_passes):
      variables = {**variables, **update(variables)}
  return jax.device_get(variables)


def load_teacher(path, model, input_shape, *, allow_random=False, seed=0):
  """Loads frozen teacher variables as host arrays; returns (variables, source description).

  `path` is a kdjax training workdir (its latest checkpoint's exported network), an export
  folder, or a torchvision/timm state dict file (`kdjax.torch_import`).
  An empty path gives a random teacher only when `allow_random` (the `:smoke` recipes).
  """
  if not path:
    if not allow_random:
      raise KdjaxError('teacher.checkpoint is empty: set --config.teacher.checkpoint to a kdjax '
                       'workdir or export folder (only :smoke recipes may use a random teacher)')
    log.warning('SMOKE RUN: the teacher is RANDOMLY INITIALISED (no teacher.checkpoint); '
                    'its numbers mean nothing.')
    variables = random_teacher(model, input_shape, seed)
    return variables, {'source': 'random-init (smoke)', 'sha256': tree_hash(variables)}
  return load_variables(path, model, input_shape, network='teacher')


def load_variables(path, model, input_shape, *, network, reset_classifier=False):
  """Variables of `network` (teacher, student) from `path` as host arrays, checked against
  `model`; returns (variables, source description).

  `path` is a kdjax training workdir (its latest checkpoint's exported network), an export
  folder, or a torchvision/timm state dict file (`kdjax.torch_import`). With
  `reset_classifier` (student.reset_classifier: fine-tuning weights trained on other classes)
  the file's final classifier (`torch_import.classifier_module`; any class count, or none) is
  left out and the variables lack it, for the trainer to initialise afresh; every other
  variable is checked as without it, and the source says so.
  """
  head = None
  if reset_classifier:
    head = torch_import.reset_head(model, torch_import.abstract_variables(model, input_shape),
                                   f'{network}.checkpoint')
  if not os.path.exists(path):
    raise KdjaxError(f"{network}.checkpoint '{path}' does not exist; point it at a kdjax workdir, "
                     'an export folder or a torchvision/timm state dict (.safetensors, .pth)')
  try:
    if os.path.exists(os.path.join(path, EXPORT_METADATA)):
      variables, _ = load_exported(path)
    elif os.path.isdir(os.path.join(path, 'checkpoints')):
      variables, _ = restore_student(path)
    elif os.path.isfile(path):
      variables = torch_import.load(path, model, input_shape,
                                    config_key=f'{network}.checkpoint',
                                    reset_classifier=reset_classifier)
    else:
      raise KdjaxError(f"{network}.checkpoint '{path}' is neither a kdjax workdir (no "
                       f'checkpoints/), an export folder (no {EXPORT_METADATA}) nor a state '
                       'dict file')
  except KdjaxError:
    raise
  except Exception as e:  # Orbax/tensorstore errors on unreadable or truncated files.
    raise KdjaxError(f"{network}.checkpoint '{path}' could not be read ({type(e).__name__}: "
                     f'{str(e).splitlines()[0][:200]}); re-export or re-train the {network}') from e
  if head:
    variables = without_classifier(variables, head)
  _check_fits(variables, model, input_shape, path, network, head=head)
  source = {'source': os.path.abspath(path), 'sha256': tree_hash(variables)}
  if head:  # The hash covers what was loaded: everything but the classifier.
    source['reset_classifier'] = '/'.join(head)
  return variables, source


def _resolved_dtype(name):
  from kdjax import train  # pylint: disable=g-import-not-at-top  (train imports this module)
  return train.resolve_dtype(name)
