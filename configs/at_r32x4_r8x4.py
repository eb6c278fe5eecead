r"""AT, attention transfer (Zagoruyko & Komodakis 2017) on the three stages; CIFAR-100, resnet32x4 -> resnet8x4.

  python -m kdjax.main --config=configs/at_r32x4_r8x4.py --workdir=/tmp/at_r8x4 \
      --config.teacher.checkpoint=/tmp/r32x4     # a kdjax workdir of configs/train_r32x4.py

Hardware: one GPU (batch 64, 240 epochs, mdistiller's CIFAR schedule). `:smoke`: 8 steps on a CPU.
Loss: CE + 1000 * sum over layer1..3 of AT(p=2) (mdistiller defaults; docs/methods.md#at).
Expected top-1: 73.44 (CRD paper's CIFAR-100 table, as reprinted in later work; not yet reproduced).
"""

from kdjax import config_base
from kdjax import recipes


def get_config(arg=None):
  c = recipes.cifar100_mdistiller(arg, student='resnet8x4', teacher='resnet32x4')
  c.losses.ce = dict(weight=1.0)
  c.losses.at = dict(weight=1000.0, p=2.0, taps=('layer1', 'layer2', 'layer3'))
  return config_base.lock_config(c)
