"""Trains a few distillation steps on 1 device and on every device; prints both as JSON.

Run by tests/test_train.py in a subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=8
(the flag must be set before JAX starts). Usage: python tests/sharding_check.py DATA_DIR [MODE]
With `crd`, the objective is CE + CRD and the output also says whether every device holds the
same memory banks. With `mlkd`, every example has a strong view too (input.strong_augment) and
the objective is CE on both views + MLKD over groups of 16. With `aug`, the student is a tiny
ViT with stochastic depth, trained with Mixup / CutMix and an EMA of its weights (compared too). With `shard`, the run on every device
shards the teacher and the train state (teacher.shard, student.shard; every array with a
dimension that divides by the device count, however small) and keeps an EMA; the output also
lists the sharded arrays, and says whether a checkpoint of the sharded state restores into a
fresh sharded state and exports (one device) to the same values.
"""

import itertools
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from kdjax import checkpoint  # noqa: E402
from kdjax import train  # noqa: E402
from kdjax.data import input_pipeline  # noqa: E402
from kdjax.quickstart import load_recipe  # noqa: E402

NUM_STEPS = 4


def replicas_agree(tree):
  """Whether the shards of every array that hold the same index hold the same values."""
  for leaf in jax.tree.leaves(tree):
    by_index = {}
    for s in leaf.addressable_shards:
      key = str(s.index)
      if key in by_index and not np.array_equal(by_index[key], np.asarray(s.data)):
        return False
      by_index.setdefault(key, np.asarray(s.data))
  return True


def sharded_leaves(tree):
  """{path: [global shape, one device's shard shape]} of the arrays that are split."""
  return {jax.tree_util.keystr(path): [list(leaf.shape),
                                       list(leaf.addressable_shards[0].data.shape)]
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
          if leaf.addressable_shards[0].data.shape != leaf.shape}


def run(devices, config, setup, batches):
  mesh = train.make_mesh(devices)
  state = train.create_state(setup, mesh, config.seed)
  step = train.compile_train_step(setup, mesh)
  teacher = train.place_teacher(setup, mesh)
  history = []
  for batch in batches:
    state, metrics = step(state, teacher, train.global_batch(batch, mesh))
    history.append({k: float(v) for k, v in jax.device_get(metrics).items()})
  return history, state, teacher, mesh


def checkpoint_round_trip(config, setup, state, mesh):
  """(restores, exports): a checkpoint of `state` restores into a fresh state of the same
  shardings with equal values, and exports (restored onto one device) the same student."""
  same = lambda a, b: np.array_equal(np.asarray(a), np.asarray(b))
  with tempfile.TemporaryDirectory() as workdir:
    manager = checkpoint.Manager(workdir, config)
    manager.save(NUM_STEPS, state, setup)
    manager.close()
    manager = checkpoint.Manager(workdir, config)
    restored, step, _ = manager.restore_or(train.create_state(setup, mesh, config.seed + 1))
    manager.close()
    restores = step == NUM_STEPS and all(jax.tree.leaves(jax.tree.map(
        lambda a, b: same(a, b) and a.sharding.is_equivalent_to(b.sharding, a.ndim),
        restored, state)))
    exported, _ = checkpoint.restore_student(workdir)
  want = (state.ema['params'] if config.ema.decay > 0 else state.params)['student']
  exports = all(jax.tree.leaves(jax.tree.map(same, exported['params'], want)))
  return bool(restores), bool(exports)


def main(data_dir, mode=''):
  config = load_recipe()
  with config.unlocked():
    config.data_dir = data_dir
    config.student.model = 'digits_cnn'      # has BatchNorm: statistics must span the devices
    config.losses.dkd = dict(weight=1.0, warmup_epochs=2, alpha=1.0, beta=8.0, temperature=4.0)
    config.input.num_labeled = 0
    if mode == 'aug':
      import tiny_models  # pylint: disable=g-import-not-at-top  (tests/, next to this script)
      from kdjax import models  # pylint: disable=g-import-not-at-top
      models.MODELS[tiny_models.NAME] = tiny_models.vit_tiny_test
      config.student.model = tiny_models.NAME
      config.student.drop_path_rate = 0.3
      config.mixup.update(mixup_alpha=0.8, cutmix_alpha=1.0, prob=0.9)
      config.ema.decay = 0.9
      config.optimizer.clip_grad_norm = 1.0
    if mode == 'mlkd':  # Two views; MLKD's groups of 16 span two of the 8 devices' rows.
      config.input.strong_augment = 'fixmatch'
      config.losses = dict(ce=dict(weight=0.1), ce_strong=dict(method='ce', view='strong',
                                                               weight=0.1),
                           mlkd=dict(weight=0.9, temperature=4.0, group_size=16))
    if mode == 'crd':
      config.losses = dict(ce=dict(weight=1.0), crd=dict(weight=0.8, num_negatives=256))
      config.input.add_index = True
    if mode == 'shard':  # One device has nothing to shard: that run is the replicated one.
      config.teacher.shard = config.student.shard = True
      config.ema.decay = 0.9
      train.MIN_SHARDED_SIZE = 0  # The tiny models' biases and BatchNorm vectors too.
  setup = train.build(config)
  batches = list(itertools.islice(
      input_pipeline.train_batches(config, setup.data.builder, start_step=0,
                                   local_batch_size=config.batch_size,
                                   steps_per_epoch=setup.data.steps_per_epoch), NUM_STEPS))
  one, one_state, _, _ = run(jax.devices()[:1], config, setup, batches)
  many, many_state, teacher, mesh = run(jax.devices(), config, setup, batches)
  variables = lambda s: jax.device_get((s.params, s.batch_stats, s.ema))
  # Relative beyond magnitude 1: CRD's normalisation constants are ~1e5.
  diffs = jax.tree.leaves(jax.tree.map(
      lambda a, b: float(np.max(np.abs(a - b) / np.maximum(1.0, np.abs(a)))),
      variables(one_state), variables(many_state)))
  result = {'num_devices': jax.device_count(), 'one': one, 'many': many,
            'max_abs_variable_diff': max(diffs),
            'replicas_agree': replicas_agree(many_state.batch_stats)}
  if mode == 'shard':
    result['teacher_sharded'] = sharded_leaves(teacher)
    result['state_sharded'] = sharded_leaves(many_state)
    result['teacher_bytes'] = {  # the same shard shape on every device here
        'per_device': train.bytes_per_device(teacher), 'replicated': train.tree_bytes(teacher),
        'one_device_shards': sum(leaf.addressable_shards[0].data.nbytes
                                 for leaf in jax.tree.leaves(teacher))}
    result['restores'], result['exports'] = checkpoint_round_trip(config, setup, many_state,
                                                                  mesh)
  print(json.dumps(result))


if __name__ == '__main__':
  main(*sys.argv[1:])
