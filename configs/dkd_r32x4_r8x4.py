r"""DKD (Zhao et al., CVPR 2022), CIFAR-100, resnet32x4 -> resnet8x4, mdistiller's recipe.

  python -m kdjax.main --config=configs/dkd_r32x4_r8x4.py --workdir=/tmp/dkd_r8x4 \
      --config.teacher.checkpoint=/tmp/r32x4     # a kdjax workdir of configs/train_r32x4.py

Hardware: one GPU (batch 64, 240 epochs). `:smoke` runs 8 steps on a CPU.
Loss: CE + min(epoch / 20, 1) * DKD(alpha=1, beta=8, T=4) (mdistiller
`configs/cifar100/dkd/res32x4_res8x4.yaml`; docs/methods.md#dkd).
Expected top-1: 76.32 (mdistiller README, resnet32x4 -> resnet8x4). Not yet reproduced with kdjax.
"""

from kdjax import config_base
from kdjax import recipes


def get_config(arg=None):
  c = recipes.cifar100_mdistiller(arg, student='resnet8x4', teacher='resnet32x4')
  c.losses.ce = dict(weight=1.0)
  c.losses.dkd = dict(weight=1.0, warmup_epochs=20, alpha=1.0, beta=8.0, temperature=4.0)
  return config_base.lock_config(c)
