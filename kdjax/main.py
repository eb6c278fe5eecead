r"""The kdjax command line: train or distill one recipe.

  python -m kdjax.main --config=configs/<recipe>.py[:smoke] --workdir=DIR [--config.<key>=<value>]

Re-running the same command on the same workdir resumes from the latest checkpoint. SIGTERM
(preemption) and Ctrl-C save a checkpoint first and exit with 143 / 130.
Multi-process: TPU pods and SLURM/MPI clusters are found automatically; elsewhere pass
--coordinator_address=HOST:PORT --num_processes=N --process_id=I to every process.
"""

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # tf.data only feeds the input pipeline.

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from kdjax import cli  # noqa: E402
from kdjax import logs  # noqa: E402
from kdjax.errors import KdjaxError  # noqa: E402
from kdjax.errors import Preempted  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Recipe file, e.g. configs/dkd_r32x4_r8x4.py[:smoke].', lock_config=True)
flags.DEFINE_string('workdir', None, 'Folder for checkpoints, metrics.jsonl and TensorBoard.')
flags.DEFINE_string('coordinator_address', None, 'HOST:PORT of process 0 (multi-process runs).')
flags.DEFINE_integer('num_processes', None, 'Number of processes (multi-process runs).')
flags.DEFINE_integer('process_id', None, 'This process index in [0, num_processes).')
FLAGS = flags.FLAGS

# Environment variables that mean "this process is one of several" and let jax.distributed
# find its peers by itself.
_CLUSTER_ENV = ('TPU_WORKER_HOSTNAMES', 'SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE')


def initialize_distributed():
  """Starts jax.distributed when this is one process of several."""
  import jax  # pylint: disable=g-import-not-at-top
  if FLAGS.coordinator_address or FLAGS.num_processes:
    if FLAGS.coordinator_address is None or FLAGS.num_processes is None or FLAGS.process_id is None:
      cli.fail('multi-process runs need all of --coordinator_address, --num_processes, --process_id')
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
  return max(sizes)


def main(argv):
  del argv
  logs.setup(logs.verbosity_flag())
  initialize_distributed()
  from kdjax import train  # pylint: disable=g-import-not-at-top  (after jax.distributed)
  try:
    setup = train.build(_CONFIG.value)
    train.train_and_evaluate(_CONFIG.value, FLAGS.workdir, setup)
  except Preempted as e:  # Saved: the same command resumes. 143 (SIGTERM) or 130 (Ctrl-C).
    print(f'kdjax: {e}', file=sys.stderr)
    sys.exit(train.STOP_EXIT_CODES.get(e.signum, 1))
  except KdjaxError as e:
    cli.fail(str(e))


def run():
  app.run(main, flags_parser=cli.config_flags_parser(_CONFIG, require_workdir=True))


if __name__ == '__main__':
  run()
