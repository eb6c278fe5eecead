r"""KD (Hinton et al. 2015), CIFAR-100, resnet32x4 -> resnet8x4, mdistiller's recipe.

  python -m kdjax.main --config=configs/kd_r32x4_r8x4.py --workdir=/tmp/kd_r8x4 \
      --config.teacher.checkpoint=/tmp/r32x4     # a kdjax workdir of configs/train_r32x4.py

Hardware: one GPU (batch 64, 240 epochs, ~188k steps). `:smoke` runs 8 steps on a CPU (needs
cifar100 in data_dir; only smoke may use a random teacher).
Loss: 0.1 * CE + 0.9 * KD(T=4) (mdistiller `configs/cifar100/kd.yaml`; docs/methods.md#kd).
Expected top-1: 73.33 (mdistiller README; teacher 79.42, student alone 72.50 in the DKD paper's CIFAR
table). Not yet reproduced with kdjax.
"""

from kdjax import config_base
from kdjax import recipes


def get_config(arg=None):
  c = recipes.cifar100_mdistiller(arg, student='resnet8x4', teacher='resnet32x4')
  c.losses.ce = dict(weight=0.1)
  c.losses.kd = dict(weight=0.9, temperature=4.0)
  return config_base.lock_config(c)
