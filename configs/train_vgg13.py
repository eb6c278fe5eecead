r"""Plain supervised vgg13 on CIFAR-100: the teacher of the {kd,dkd}_vgg13_vgg8 and vgg13_mv2
recipes.

  python -m kdjax.main --config=configs/train_vgg13.py --workdir=/tmp/vgg13

Hardware: one GPU (batch 64, 240 epochs, SGD lr 0.05: mdistiller's `configs/cifar100/vanilla.yaml`).
`:smoke` runs 8 steps on a CPU.
Expected top-1: 74.64 (the VGG13 teacher in the DKD paper's CIFAR-100 tables). Not yet reproduced.
"""

from kdjax import config_base
from kdjax import recipes


def get_config(arg=None):
  c = recipes.cifar100_mdistiller(arg, student='vgg13')
  c.losses.ce = dict(weight=1.0)
  return config_base.lock_config(c)
