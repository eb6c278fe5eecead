"""Trains a few distillation steps on 1 device and on every device; prints both as JSON.

Run by tests/test_train.py in a subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=8
(the flag must be set before JAX starts). Usage: python tests/sharding_check.py DATA_DIR [crd]
With `crd`, the objective is CE + CRD and the output also says whether every device holds the
same memory banks. With `aug`, the student is a tiny ViT with stochastic depth, trained with
Mixup / CutMix and an EMA of its weights (compared too).
"""

import itertools
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from kdjax import train  # noqa: E402
from kdjax.data import input_pipeline  # noqa: E402
from kdjax.quickstart import load_recipe  # noqa: E402

NUM_STEPS = 4


def run(devices, config, setup, batches):
  mesh = train.make_mesh(devices)
  state = train.create_state(setup, mesh, config.seed)
  step = train.compile_train_step(setup, mesh)
  teacher = jax.device_put(setup.networks.teacher_variables, train.replicated(mesh))
  history = []
  for batch in batches:
    state, metrics = step(state, teacher, train.global_batch(batch, mesh))
    history.append({k: float(v) for k, v in jax.device_get(metrics).items()})
  replicas_agree = all(
      all(np.array_equal(np.asarray(s.data), np.asarray(leaf.addressable_shards[0].data))
          for s in leaf.addressable_shards)
      for leaf in jax.tree.leaves(state.batch_stats))
  return history, jax.device_get((state.params, state.batch_stats, state.ema)), replicas_agree


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
    if mode == 'crd':
      config.losses = dict(ce=dict(weight=1.0), crd=dict(weight=0.8, num_negatives=256))
      config.input.add_index = True
  setup = train.build(config)
  batches = list(itertools.islice(
      input_pipeline.train_batches(config, setup.data.builder, start_step=0,
                                   local_batch_size=config.batch_size,
                                   steps_per_epoch=setup.data.steps_per_epoch), NUM_STEPS))
  one, one_vars, _ = run(jax.devices()[:1], config, setup, batches)
  many, many_vars, replicas_agree = run(jax.devices(), config, setup, batches)
  # Relative beyond magnitude 1: CRD's normalisation constants are ~1e5.
  diffs = jax.tree.leaves(jax.tree.map(
      lambda a, b: float(np.max(np.abs(a - b) / np.maximum(1.0, np.abs(a)))), one_vars, many_vars))
  print(json.dumps({'num_devices': jax.device_count(), 'one': one, 'many': many,
                    'max_abs_variable_diff': max(diffs), 'replicas_agree': replicas_agree}))


if __name__ == '__main__':
  main(*sys.argv[1:])
