r"""Throughput benchmark of a recipe: student step, teacher forward, distillation step, input.

  python -m kdjax.bench --config=configs/<recipe>.py[:smoke] [--config.<key>=<value>]
      [--steps=20] [--json_out=FILE] [--input_only]

Prints images/s (global batch over wall time, after compilation) for
  student_step     the train step with the CE term only (no teacher),
  teacher_forward  the frozen teacher's inference forward pass with the recipe's taps,
  distill_step     the recipe's full train step (teacher + student + every loss term),
  input_pipeline   this process's TFDS input pipeline alone (host side, no device work; its
                   reader, random_access or sequential, as `input_reader`; --input_only
                   measures only this and the bytes below),
and `distill_over_sum` = t(distill_step) / (t(student_step) + t(teacher_forward)): 1.0 means the
distillation step costs exactly a student step plus a teacher forward. It also prints the bytes
one device holds of the teacher's variables and of the recipe's train state, as placed (sharded
with --config.teacher.shard=True / --config.student.shard=True) and as a replicated copy would
be (`*_bytes_per_device`, `*_bytes_replicated`). The same numbers are printed as one JSON line
(and written to --json_out).
"""

import dataclasses
import json
import os
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import jax  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from kdjax import cli  # noqa: E402
from kdjax import logs  # noqa: E402
from kdjax import methods  # noqa: E402
from kdjax import train  # noqa: E402
from kdjax.data import input_pipeline  # noqa: E402
from kdjax.data import on_device  # noqa: E402
from kdjax.errors import KdjaxError  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Recipe file.', lock_config=True)
flags.DEFINE_integer('steps', 20, 'Timed iterations per measurement (after 2 warm-up calls).')
flags.DEFINE_string('json_out', None, 'Also write the results to this JSON file.')
flags.DEFINE_bool('input_only', False, 'Measure the input pipeline and the bytes per device '
                  'only (no train step is compiled).')
FLAGS = flags.FLAGS


def _time(fn, steps):
  """Seconds per call of fn() after two warm-up calls (the first one compiles)."""
  for _ in range(2):
    jax.block_until_ready(fn())
  start = time.perf_counter()
  for _ in range(steps):
    out = fn()
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / steps


def memory(name, tree) -> dict:
  """{name}_bytes_per_device (the most any device holds, from the arrays' shardings) and
  {name}_bytes_replicated (what each device would hold of a replicated copy)."""
  return {f'{name}_bytes_per_device': train.bytes_per_device(tree),
          f'{name}_bytes_replicated': train.tree_bytes(tree)}


def benchmark(config, steps=20, input_only=False) -> dict:
  """Measures the four throughputs of `config` on this machine's devices (`input_only`: the
  input pipeline alone, without building a step)."""
  setup = train.build(config)
  mesh = train.make_mesh()
  local_batch = config.batch_size // jax.process_count()
  results = {'config_batch_size': config.batch_size, 'devices': jax.device_count(),
             'device_kind': jax.devices()[0].device_kind, 'steps': steps}

  # The input pipeline alone, first, on a fresh iterator: 2 warm-up batches, then enough
  # batches that the prefetch buffer cannot hide the work.
  def pipeline():
    return input_pipeline.train_batches(config, setup.data.builder, start_step=0,
                                        local_batch_size=local_batch,
                                        steps_per_epoch=setup.data.steps_per_epoch,
                                        unlabeled_builder=setup.data.unlabeled_builder)
  batches = pipeline()
  for _ in range(2):
    next(batches)
  n = max(steps, 4 * config.input.prefetch_batches)
  start = time.perf_counter()
  for _ in range(n):
    next(batches)
  results['input_pipeline'] = n * local_batch / (time.perf_counter() - start)
  results['input_reader'] = ('random_access' if input_pipeline.random_access(
      config, setup.data.builder) else 'sequential')
  del batches
  results.update(memory('state', train.abstract_state(setup, mesh)))  # the recipe's own state
  nets = setup.networks
  teacher = train.place_teacher(setup, mesh)
  if teacher is not None:
    results.update(memory('teacher', teacher))
  if input_only:
    return results
  batch = train.global_batch(next(pipeline()), mesh)

  def step_time(s, teacher=None):
    step = train.compile_train_step(s, mesh)
    state = [train.create_state(s, mesh, config.seed)]

    def one():
      state[0], metrics = step(state[0], teacher, batch)
      return metrics['loss']
    return _time(one, steps)

  # The same student alone: cross-entropy, no teacher, no taps, no connectors.
  student_setup = dataclasses.replace(
      setup, objective=train.Objective(terms=methods.build_terms({'ce': {'weight': 1.0}}),
                                       connectors={}),
      networks=dataclasses.replace(nets, trainable={'student': nets.student}, teacher=None,
                                   teacher_variables=None, taps={'student': []}))
  t_student = step_time(student_setup)
  results['student_step'] = config.batch_size / t_student
  if nets.teacher is not None:
    forward = jax.jit(lambda v, x: train.teacher_forward(nets.teacher, v, x, nets.taps['teacher']))
    images = on_device.normalize(batch['image'], config.input.mean, config.input.std)
    t_teacher = _time(lambda: forward(teacher, images), steps)
    t_full = step_time(setup, teacher)
    results['teacher_forward'] = config.batch_size / t_teacher
    results['distill_step'] = config.batch_size / t_full
    results['distill_over_sum'] = t_full / (t_student + t_teacher)
  return results


def format_table(results) -> str:
  rows = [('student_step', 'student train step'), ('teacher_forward', 'teacher forward'),
          ('distill_step', 'distillation step'), ('input_pipeline', 'input pipeline (per host)')]
  lines = [f"{results['devices']} x {results['device_kind']}, global batch "
           f"{results['config_batch_size']}, {results['steps']} timed steps"]
  for key, name in rows:
    if key in results:
      lines.append(f'  {name:<28s}{results[key]:>10.1f} images/s')
  if 'input_reader' in results:
    lines.append(f"  input reader                {results['input_reader']:>10s}")
  if 'distill_over_sum' in results:
    lines.append(f"  distill / (student + teacher) {results['distill_over_sum']:>8.2f}")
  for key, name in (('teacher', 'teacher variables'), ('state', 'train state')):
    if f'{key}_bytes_per_device' in results:
      lines.append(f"  {name:<28s}{results[f'{key}_bytes_per_device'] / 2**20:>10.2f} MiB per "
                   f"device ({results[f'{key}_bytes_replicated'] / 2**20:.2f} MiB replicated)")
  return '\n'.join(lines)


def main(argv):
  del argv
  logs.setup(logs.verbosity_flag())
  try:
    results = benchmark(_CONFIG.value, FLAGS.steps, FLAGS.input_only)
  except KdjaxError as e:
    cli.fail(str(e))
  print(format_table(results))
  print(json.dumps(results))
  if FLAGS.json_out:
    with open(FLAGS.json_out, 'w') as f:
      json.dump(results, f, indent=1)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.config_flags_parser(_CONFIG, require_workdir=False))
