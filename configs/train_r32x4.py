r"""Plain supervised resnet32x4 on CIFAR-100: the teacher of the *_r32x4_r8x4 recipes.

  python -m kdjax.main --config=configs/train_r32x4.py --workdir=/tmp/r32x4

Hardware: one GPU (batch 64, 240 epochs). `:smoke` runs 8 steps on a CPU.
Expected top-1: 79.42 (the resnet32x4 teacher in the DKD paper's CIFAR-100 table). Not yet reproduced.
"""

from kdjax import config_base
from kdjax import recipes


def get_config(arg=None):
  c = recipes.cifar100_mdistiller(arg, student='resnet32x4')
  c.losses.ce = dict(weight=1.0)
  return config_base.lock_config(c)
