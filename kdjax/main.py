r"""The kdjax command line: train or distill one recipe.

  python -m kdjax.main --config=configs/<recipe>.py[:smoke] --workdir=DIR [--config.<key>=<value>]

Re-running the same command on the same workdir resumes from the latest checkpoint.
Multi-process: TPU pods and SLURM/MPI clusters are found automatically; elsewhere pass
--coordinator_address=HOST:PORT --num_processes=N --process_id=I to every process.
"""

import os
import re
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # tf.data only feeds the input pipeline.

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from kdjax import logs  # noqa: E402
from kdjax.errors import KdjaxError  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Recipe file, e.g. configs/dkd_r32x4_r8x4.py[:smoke].', lock_config=True)
flags.DEFINE_string('workdir', None, 'Folder for checkpoints, metrics.jsonl and TensorBoard.')
flags.DEFINE_string('coordinator_address', None, 'HOST:PORT of process 0 (multi-process runs).')
flags.DEFINE_integer('num_processes', None, 'Number of processes (multi-process runs).')
flags.DEFINE_integer('process_id', None, 'This process index in [0, num_processes).')
FLAGS = flags.FLAGS

# Environment variables that mean "this process is one of several" and let jax.distributed
# find its peers by itself.
_CLUSTER_ENV = ('TPU_WORKER_HOSTNAMES', 'SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE',
                'JAX_COORDINATOR_ADDRESS')


def fail(message: str):
  """One clear line on stderr and a non-zero exit; never a traceback for user errors."""
  print(f'kdjax: error: {message}', file=sys.stderr)
  sys.exit(2)


def _unknown_key_message(error, argv):
  text = str(error.args[0] if error.args else error)
  key = re.search(r'[A-Za-z_][A-Za-z0-9_]*', text)  # The message quotes (and escapes) the key.
  key = key.group(0) if key else text.splitlines()[0]
  hint = re.search(r'Did you mean "([^"]+)"', text)
  overrides = [a for a in argv if a.startswith('--config.')]
  culprit = next((a for a in overrides
                  if re.search(rf'(^|\.){re.escape(key)}(\.|=|$)', a[len('--config.'):])),
                 ' '.join(overrides) or '--config')
  fix = f'did you mean {hint.group(1)!r}?' if hint else 'check the keys in the recipe file'
  return f"unknown config key '{key}' in {culprit}; the recipe declares no such key ({fix})"


def parse_flags(argv):
  """absl flag parsing with every user mistake turned into one line."""
  try:
    rest = FLAGS(argv)
    config_arg = FLAGS['config'].serialize().split('=', 1)[-1]
    path = config_arg.split(':', 1)[0]
    if not path:
      fail('--config is required, e.g. --config=configs/kd_r32x4_r8x4.py')
    if not os.path.isfile(path):
      fail(f"config file '{path}' not found (--config); recipes live in configs/")
    if not FLAGS.workdir:
      fail('--workdir is required: the folder for checkpoints and metrics')
    _CONFIG.value  # noqa: B018  Loads the recipe now, so its errors surface here.
    return rest
  except KdjaxError as e:
    fail(str(e))
  except flags.Error as e:
    fail(str(e).splitlines()[0])
  except (AttributeError, KeyError) as e:
    fail(_unknown_key_message(e, argv))


def initialize_distributed():
  """Starts jax.distributed when this is one process of several."""
  import jax  # pylint: disable=g-import-not-at-top
  if FLAGS.coordinator_address or FLAGS.num_processes:
    if FLAGS.coordinator_address is None or FLAGS.num_processes is None or FLAGS.process_id is None:
      fail('multi-process runs need all of --coordinator_address, --num_processes, --process_id')
    # Only the CPU client uses this setting; CPU processes exchange collectives through gloo.
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  elif any(os.environ.get(k) for k in _CLUSTER_ENV) and _cluster_size() > 1:
    jax.distributed.initialize()


def _cluster_size():
  hosts = os.environ.get('TPU_WORKER_HOSTNAMES', '')
  sizes = [len(hosts.split(',')) if hosts else 1]
  for key in ('SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE'):
    sizes.append(int(os.environ.get(key, '1') or 1))
  if os.environ.get('JAX_COORDINATOR_ADDRESS'):
    sizes.append(2)
  return max(sizes)


def main(argv):
  del argv
  logs.setup()
  initialize_distributed()
  from kdjax import train  # pylint: disable=g-import-not-at-top  (after jax.distributed)
  try:
    setup = train.build(_CONFIG.value)
    train.train_and_evaluate(_CONFIG.value, FLAGS.workdir, setup)
  except KdjaxError as e:
    fail(str(e))


def run():
  app.run(main, flags_parser=parse_flags)


if __name__ == '__main__':
  run()
