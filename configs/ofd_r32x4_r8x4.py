r"""OFD (Heo et al., ICCV 2019): pre-ReLU stages, teacher-BN margins, partial L2; CIFAR-100, resnet32x4 -> resnet8x4.

  python -m kdjax.main --config=configs/ofd_r32x4_r8x4.py --workdir=/tmp/ofd_r8x4 \
      --config.teacher.checkpoint=/tmp/r32x4     # a kdjax workdir of configs/train_r32x4.py

Hardware: one GPU (batch 64, 240 epochs, mdistiller's CIFAR schedule). `:smoke`: 8 steps on a CPU.
Loss: CE + 1e-3 * sum_i L_i / 2^(n-i) over layer1..3_pre (official CIFAR code; docs/methods.md#ofd).
Expected top-1: not checked here (see the OFD paper's CIFAR-100 table).
"""

from kdjax import config_base
from kdjax import recipes


def get_config(arg=None):
  c = recipes.cifar100_mdistiller(arg, student='resnet8x4', teacher='resnet32x4')
  c.losses.ce = dict(weight=1.0)
  c.losses.ofd = dict(weight=1e-3, stages=(1, 2, 3))
  return config_base.lock_config(c)
