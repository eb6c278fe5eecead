r"""KD + DOT (Zhao et al., ICCV 2023), CIFAR-100, resnet32x4 -> resnet8x4, mdistiller's recipe.

  python -m kdjax.main --config=configs/dot_r32x4_r8x4.py --workdir=/tmp/dot_r8x4 \
      --config.teacher.checkpoint=/tmp/r32x4     # a kdjax workdir of configs/train_r32x4.py

Hardware: one GPU (batch 64, 240 epochs, lr 0.05, x0.1 at 150/180/210, weight decay 5e-4).
`:smoke` runs 8 steps on a CPU.
Loss: 0.1 * CE + 0.9 * KD(T=4), as configs/kd_r32x4_r8x4.py; the optimizer is DOT: momentum
0.9 - 0.075 for the CE gradient, 0.9 + 0.075 for the KD gradient (mdistiller
`configs/cifar100/dot/res32x4_res8x4.yaml`, TRAINER dot, DOT.DELTA 0.075; docs/methods.md#dot).
Expected top-1: 75.12 (mdistiller README, KD+DOT, ResNet32x4 -> ResNet8x4; KD alone 73.33).
Not yet reproduced with kdjax.
"""

from kdjax import config_base
from kdjax import recipes


def get_config(arg=None):
  c = recipes.cifar100_mdistiller(arg, student='resnet8x4', teacher='resnet32x4')
  c.optimizer.update(name='dot', dot_delta=0.075)
  c.losses.ce = dict(weight=0.1)
  c.losses.kd = dict(weight=0.9, temperature=4.0)
  return config_base.lock_config(c)
