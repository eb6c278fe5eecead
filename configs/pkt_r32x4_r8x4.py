r"""PKT, probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018) on the pooled feature; CIFAR-100, resnet32x4 -> resnet8x4.

  python -m kdjax.main --config=configs/pkt_r32x4_r8x4.py --workdir=/tmp/pkt_r8x4 \
      --config.teacher.checkpoint=/tmp/r32x4     # a kdjax workdir of configs/train_r32x4.py

Hardware: one GPU (batch 64, 240 epochs, mdistiller's CIFAR schedule). `:smoke`: 8 steps on a CPU.
Loss: CE + 30000 * PKT over groups of 64 (mdistiller defaults; docs/methods.md#pkt).
Expected top-1: 73.64 (CRD paper's CIFAR-100 table, as reprinted in later work; not yet reproduced).
"""

from kdjax import config_base
from kdjax import recipes


def get_config(arg=None):
  c = recipes.cifar100_mdistiller(arg, student='resnet8x4', teacher='resnet32x4')
  c.losses.ce = dict(weight=1.0)
  c.losses.pkt = dict(weight=30000.0, tap='pooled', group_size=c.batch_size)
  return config_base.lock_config(c)
