r"""Plain supervised resnet110 on CIFAR-100: the teacher of the {kd,dkd}_res110_res32 recipes.

  python -m kdjax.main --config=configs/train_res110.py --workdir=/tmp/res110

Hardware: one GPU (batch 64, 240 epochs, SGD lr 0.05: mdistiller's `configs/cifar100/vanilla.yaml`).
`:smoke` runs 8 steps on a CPU.
Expected top-1: 74.31 (the ResNet110 teacher in the DKD paper's CIFAR-100 tables). Not yet
reproduced.
"""

from kdjax import config_base
from kdjax import recipes


def get_config(arg=None):
  c = recipes.cifar100_mdistiller(arg, student='resnet110')
  c.losses.ce = dict(weight=1.0)
  return config_base.lock_config(c)
