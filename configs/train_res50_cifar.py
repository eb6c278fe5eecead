r"""Plain supervised resnet50_cifar (mdistiller's CIFAR ResNet50) on CIFAR-100: the teacher of the
{kd,dkd}_res50_mv2 recipes.

  python -m kdjax.main --config=configs/train_res50_cifar.py --workdir=/tmp/res50

Hardware: one GPU (batch 64, 240 epochs, SGD lr 0.05: mdistiller's `configs/cifar100/vanilla.yaml`).
`:smoke` runs 8 steps on a CPU.
Expected top-1: 79.34 (the ResNet50 teacher in the DKD paper's CIFAR-100 tables). Not yet
reproduced.
"""

from kdjax import config_base
from kdjax import recipes


def get_config(arg=None):
  c = recipes.cifar100_mdistiller(arg, student='resnet50_cifar')
  c.losses.ce = dict(weight=1.0)
  return config_base.lock_config(c)
