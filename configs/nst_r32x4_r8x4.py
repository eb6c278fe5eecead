r"""NST, neuron selectivity transfer (Huang & Wang 2017) on the three stages; CIFAR-100, resnet32x4 -> resnet8x4.

  python -m kdjax.main --config=configs/nst_r32x4_r8x4.py --workdir=/tmp/nst_r8x4 \
      --config.teacher.checkpoint=/tmp/r32x4     # a kdjax workdir of configs/train_r32x4.py

Hardware: one GPU (batch 64, 240 epochs, mdistiller's CIFAR schedule). `:smoke`: 8 steps on a CPU.
Loss: CE + 50 * sum over layer1..3 of NST (mdistiller defaults; docs/methods.md#nst).
Expected top-1: not checked here (see the CRD paper's CIFAR-100 table).
"""

from kdjax import config_base
from kdjax import recipes


def get_config(arg=None):
  c = recipes.cifar100_mdistiller(arg, student='resnet8x4', teacher='resnet32x4')
  c.losses.ce = dict(weight=1.0)
  c.losses.nst = dict(weight=50.0, taps=('layer1', 'layer2', 'layer3'))
  return config_base.lock_config(c)
