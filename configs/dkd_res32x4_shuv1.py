r"""DKD (Zhao et al., CVPR 2022), CIFAR-100, resnet32x4 -> shufflev1, mdistiller's recipe.

  python -m kdjax.main --config=configs/dkd_res32x4_shuv1.py --workdir=/tmp/dkd_res32x4_shuv1 \
      --config.teacher.checkpoint=/tmp/r32x4     # a kdjax workdir of configs/train_r32x4.py

Hardware: one GPU (batch 64, 240 epochs). `:smoke` runs 8 steps on a CPU (needs cifar100 in
data_dir; only smoke may use a random teacher).
Optimizer: SGD at lr 0.01, which mdistiller uses for ShuffleNet and MobileNet-V2 students (0.05 for
the others); otherwise `recipes.cifar100_mdistiller`.
Loss: CE + min(epoch / 20, 1) * DKD(alpha=1, beta=8, T=4) (mdistiller
`configs/cifar100/dkd/res32x4_shuv1.yaml`, which leaves beta at the `engine/cfg.py` default;
docs/methods.md#dkd).
Expected top-1: 76.45 (mdistiller README, DKD row, ResNet32x4 -> ShuffleNet-V1; teacher 79.42,
student alone 70.50 in the DKD paper's CIFAR-100 table of different-architecture pairs). Not yet
reproduced with kdjax.
"""

from kdjax import config_base
from kdjax import recipes


def get_config(arg=None):
  c = recipes.cifar_pair(arg, 'dkd', teacher='resnet32x4', student='shufflev1')
  return config_base.lock_config(c)
