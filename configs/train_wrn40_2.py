r"""Plain supervised wrn_40_2 on CIFAR-100: the teacher of the {kd,dkd}_wrn40_2_wrn16_2,
wrn40_2_wrn40_1 and wrn40_2_shuv1 recipes.

  python -m kdjax.main --config=configs/train_wrn40_2.py --workdir=/tmp/wrn40_2

Hardware: one GPU (batch 64, 240 epochs, SGD lr 0.05: mdistiller's `configs/cifar100/vanilla.yaml`).
`:smoke` runs 8 steps on a CPU.
Expected top-1: 75.61 (the WRN-40-2 teacher in the DKD paper's CIFAR-100 tables). Not yet
reproduced.
"""

from kdjax import config_base
from kdjax import recipes


def get_config(arg=None):
  c = recipes.cifar100_mdistiller(arg, student='wrn_40_2')
  c.losses.ce = dict(weight=1.0)
  return config_base.lock_config(c)
