r"""Throughput benchmark of a recipe: student step, teacher forward, distillation step, input.

  python -m kdjax.bench --config=configs/<recipe>.py[:smoke] [--config.<key>=<value>]
      [--steps=20] [--json_out=FILE] [--input_only] [--torch [--torch_threads=N]] [--rounds=R]

Prints images/s (global batch over wall time, after compilation) for
  student_step     the train step with the CE term only (no teacher),
  teacher_forward  the frozen teacher's inference forward pass with the recipe's taps,
  distill_step     the recipe's full train step (teacher + student + every loss term; with
                   --config.teacher.cache=DIR the teacher logits come from that cache),
  input_pipeline   this process's TFDS input pipeline alone (host side, no device work; its
                   reader, random_access or sequential, as `input_reader`; --input_only
                   measures only this and the bytes below),
With --torch it also times the PyTorch step a user would run instead
(benchmarks/torch_reference.py: torchvision models, eager, channels_last, in a child process),
alternating kdjax and PyTorch on each kind for R rounds (median), and prints the ratios
kdjax / PyTorch and the CPU cores other processes used meanwhile (a busy machine is flagged:
PyTorch's and XLA's thread pools both slow down badly when another process competes).
It prints `distill_over_sum` = t(distill_step) / (t(student_step) + t(teacher_forward)): 1.0 means the
distillation step costs exactly a student step plus a teacher forward. It also prints the bytes
one device holds of the teacher's variables and of the recipe's train state, as placed (sharded
with --config.teacher.shard=True / --config.student.shard=True) and as a replicated copy would
be (`*_bytes_per_device`, `*_bytes_replicated`). The same numbers are printed as one JSON line
(and written to --json_out).
"""

import dataclasses
import json
import os
import statistics
import subprocess
import sys
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
flags.DEFINE_bool('torch', False, 'Also time the PyTorch step a user would run instead '
                  '(benchmarks/torch_reference.py; needs torch and torchvision), alternately '
                  'with kdjax\'s, and print the ratios.')
flags.DEFINE_integer('torch_threads', 0, 'PyTorch threads (0: the cores this process may use).')
flags.DEFINE_integer('rounds', 0, 'Measurements of each kind; the median is printed '
                     '(0: 3 with --torch, else 1).')
flags.DEFINE_bool('input_only', False, 'Measure the input pipeline and the bytes per device '
                  'only (no train step is compiled).')
FLAGS = flags.FLAGS


# More than this many cores used by other processes during a measurement marks it as taken on
# a busy machine.
BUSY_CORES = 0.1


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


def benchmark(config, steps=20, input_only=False, *, torch_threads=None, rounds=1) -> dict:
  """Measures the four throughputs of `config` on this machine's devices (`input_only`: the
  input pipeline alone, without building a step)."""
  setup = train.build(config)
  mesh = train.make_mesh()
  local_batch = config.batch_size // jax.process_count()
  results = {'config_batch_size': config.batch_size, 'devices': jax.device_count(),
             'device_kind': jax.devices()[0].device_kind, 'steps': steps}

  # The input pipeline alone, first, on a fresh iterator: 2 warm-up batches, then enough
  # batches that the prefetch buffer cannot hide the work.
  store = train.open_teacher_cache(setup)  # teacher.cache: the step reads recorded logits
  results['teacher_outputs'] = 'cache' if store is not None else 'online'

  def pipeline():
    return input_pipeline.train_batches(config, setup.data.builder, start_step=0,
                                        local_batch_size=local_batch,
                                        steps_per_epoch=setup.data.steps_per_epoch,
                                        unlabeled_builder=setup.data.unlabeled_builder,
                                        teacher_cache=store)
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
  teacher = train.place_teacher(setup, mesh)
  if teacher is not None:
    results.update(memory('teacher', teacher))
  if input_only:
    return results
  batches = pipeline()
  batch = train.global_batch(next(batches), mesh)
  del batches  # no tf.data threads left running while the steps are timed
  timers = step_timers(setup, mesh, batch, teacher, steps)
  reference = None
  if torch_threads is not None:
    reference = TorchReference(config, setup.data.info.num_classes, torch_threads)
    results.update(torch_version=reference.version, torch_threads=reference.threads)
  try:
    results.update(measure(timers, reference, batch_size=config.batch_size, rounds=rounds,
                            steps=steps))
  finally:
    if reference is not None:
      reference.close()
  return results


def step_timers(setup, mesh, batch, teacher, steps) -> dict:
  """{kind: () -> seconds per call} for kdjax's student step, teacher forward and
  distillation step on `batch`. The first call of each compiles (outside the timing)."""
  config, nets = setup.config, setup.networks

  def train_step_timer(s, teacher=None):
    step, state = [], []

    def timed():
      if not step:
        step.append(train.compile_train_step(s, mesh))
        state.append(train.create_state(s, mesh, config.seed))

      def one():
        state[0], metrics = step[0](state[0], teacher, batch)
        return metrics['loss']
      return _time(one, steps)
    return timed

  # The same student alone: cross-entropy, no teacher, no taps, no connectors.
  student_setup = dataclasses.replace(
      setup, objective=train.Objective(terms=methods.build_terms({'ce': {'weight': 1.0}}),
                                       connectors={}),
      networks=dataclasses.replace(nets, trainable={'student': nets.student}, teacher=None,
                                   teacher_variables=None, taps={'student': []}))
  timers = {'student_step': train_step_timer(student_setup)}
  if nets.teacher is not None:
    forward = jax.jit(lambda v, x: train.teacher_forward(nets.teacher, v, x, nets.taps['teacher']))
    images = on_device.normalize(batch['image'], config.input.mean, config.input.std)
    timers['teacher_forward'] = lambda: _time(lambda: forward(teacher, images), steps)
    timers['distill_step'] = train_step_timer(setup, teacher)
  return timers


# --------------------------------------------------------------------------- side by side


def _cpu_jiffies(pid='self'):
  """(CPU time of the whole machine that was not idle, CPU time of process `pid`), seconds."""
  tick = os.sysconf('SC_CLK_TCK')
  with open('/proc/stat') as f:
    fields = [int(v) for v in f.readline().split()[1:]]
  busy = sum(fields) - fields[3] - fields[4]  # all but idle and iowait
  with open(f'/proc/{pid}/stat') as f:
    stat = f.read().rsplit(')', 1)[1].split()
  return busy / tick, (int(stat[11]) + int(stat[12])) / tick  # utime + stime


def other_load(fn, pids):
  """Runs fn(); returns (its result, the CPU cores that processes other than this one and
  `pids` kept busy on average meanwhile). PyTorch's and XLA's thread pools lose much of their
  speed when another process competes for the cores, so a figure measured next to a busy
  process is not comparable: the load is printed with every figure."""
  pids = ['self'] + [str(p) for p in pids]
  before = [_cpu_jiffies(p) for p in pids]
  start = time.perf_counter()
  out = fn()
  wall = time.perf_counter() - start
  after = [_cpu_jiffies(p) for p in pids]
  machine = after[0][0] - before[0][0]
  ours = sum(a[1] - b[1] for a, b in zip(after, before))
  return out, max(machine - ours, 0.0) / wall


class TorchReference:
  """benchmarks/torch_reference.py in a child process (its own thread pool, idle while kdjax
  runs), asked for one measurement at a time."""

  def __init__(self, config, num_classes, threads):
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          'benchmarks', 'torch_reference.py')
    if not os.path.exists(script):
      raise KdjaxError(f'--torch needs {script} (a source checkout of kdjax) and torch + '
                       'torchvision installed (pip install torch torchvision)')
    logit_terms = {}
    for name, term in config.losses.items():
      term = dict(term)
      method = term.pop('method', None) or name
      term.pop('warmup_epochs', None)
      logit_terms[method] = term
    student, teacher = config.student.model, config.teacher.model
    args = [sys.executable, script, '--serve', f'--student={student}', f'--teacher={teacher}',
            f"--num_classes={num_classes}", f'--batch={config.batch_size}',
            f'--image_size={config.input.image_size}', f'--threads={threads}',
            f'--losses={json.dumps(logit_terms)}']
    self.process = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
    hello = self.process.stdout.readline()
    if not hello:
      raise KdjaxError('the PyTorch reference step did not start:\n'
                       + self.process.stderr.read()[-2000:])
    hello = json.loads(hello)
    self.version, self.threads = hello['torch'], hello['threads']

  def timer(self, kind, steps):
    def timed():
      self.process.stdin.write(json.dumps({'kind': kind, 'steps': steps}) + '\n')
      self.process.stdin.flush()
      reply = self.process.stdout.readline()
      if not reply:
        raise KdjaxError('the PyTorch reference step failed:\n'
                         + self.process.stderr.read()[-2000:])
      return json.loads(reply)['seconds_per_step']
    return timed

  def close(self):
    self.process.stdin.close()
    self.process.wait(timeout=60)


def measure(timers, reference, *, batch_size, rounds, steps) -> dict:
  """images/s of each kind, the median over `rounds`; with a PyTorch `reference`, each round
  times kdjax then PyTorch on the same kind, so slow drifts of the machine hit both alike.

  Returns {kind: kdjax images/s, 'torch_'+kind: PyTorch's, 'ratio_'+kind: kdjax / PyTorch,
  'other_load': the most CPU cores other processes used during any measurement,
  'distill_over_sum': t(distill) / (t(student) + t(teacher))}.
  """
  seconds, loads = {}, []
  pids = [reference.process.pid] if reference else []
  for _ in range(rounds):
    for kind, timer in timers.items():
      runs = [(kind, timer)]
      if reference is not None:
        runs.append(('torch_' + kind, reference.timer(kind, steps)))
      for name, fn in runs:
        t, load = other_load(fn, pids)
        seconds.setdefault(name, []).append(t)
        loads.append(load)
  out = {name: batch_size / statistics.median(ts) for name, ts in seconds.items()}
  for kind in timers:
    if 'torch_' + kind in out:
      out['ratio_' + kind] = out[kind] / out['torch_' + kind]
  out['other_load'] = max(loads)
  out['rounds'] = rounds
  if {'distill_step', 'student_step', 'teacher_forward'} <= set(out):
    out['distill_over_sum'] = (1 / out['distill_step']) / (
        1 / out['student_step'] + 1 / out['teacher_forward'])
  return out


def format_table(results) -> str:
  rows = [('student_step', 'student train step'), ('teacher_forward', 'teacher forward'),
          ('distill_step', 'distillation step'), ('input_pipeline', 'input pipeline (per host)')]
  torch = 'torch_version' in results
  lines = [f"{results['devices']} x {results['device_kind']}, global batch "
           f"{results['config_batch_size']}, {results['steps']} timed steps"
           + (f", median of {results['rounds']} rounds" if 'rounds' in results else '')]
  if torch:
    lines.append(f"  {'images/s':<28s}{'kdjax':>10s}{'PyTorch':>10s}{'ratio':>8s}   (PyTorch "
                 f"{results['torch_version']}, {results['torch_threads']} threads, eager, "
                 'channels_last)')
  for key, name in rows:
    if key in results:
      line = f'  {name:<28s}{results[key]:>10.1f}'
      if torch and f'torch_{key}' in results:
        line += f"{results[f'torch_{key}']:>10.1f}{results[f'ratio_{key}']:>7.2f}x"
      lines.append(line if torch else line + ' images/s')
      if key == 'distill_step' and results.get('teacher_outputs') == 'cache':
        lines.append('    (kdjax reads the teacher\'s outputs from teacher.cache'
                     + ('; PyTorch runs its teacher online)' if torch else ')'))
  if 'input_reader' in results:
    lines.append(f"  input reader                {results['input_reader']:>10s}")
  if 'distill_over_sum' in results and results.get('teacher_outputs') != 'cache':
    lines.append(f"  distill / (student + teacher) {results['distill_over_sum']:>8.2f}")
  if 'other_load' in results:
    busy = results['other_load'] > BUSY_CORES
    lines.append(f"  other processes' load       {results['other_load']:>10.2f} cores at most"
                 + ('  BUSY MACHINE: these figures are not comparable' if busy else ''))
  for key, name in (('teacher', 'teacher variables'), ('state', 'train state')):
    if f'{key}_bytes_per_device' in results:
      lines.append(f"  {name:<28s}{results[f'{key}_bytes_per_device'] / 2**20:>10.2f} MiB per "
                   f"device ({results[f'{key}_bytes_replicated'] / 2**20:.2f} MiB replicated)")
  return '\n'.join(lines)


def main(argv):
  del argv
  logs.setup(logs.verbosity_flag())
  try:
    threads = None
    if FLAGS.torch:
      threads = FLAGS.torch_threads or len(os.sched_getaffinity(0))
    rounds = FLAGS.rounds or (3 if FLAGS.torch else 1)
    results = benchmark(_CONFIG.value, FLAGS.steps, FLAGS.input_only, torch_threads=threads,
                        rounds=rounds)
  except KdjaxError as e:
    cli.fail(str(e))
  print(format_table(results))
  print(json.dumps(results))
  if FLAGS.json_out:
    with open(FLAGS.json_out, 'w') as f:
      json.dump(results, f, indent=1)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.config_flags_parser(_CONFIG, require_workdir=False))
