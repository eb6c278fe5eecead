r"""DKD (Zhao et al., CVPR 2022), CIFAR-100, resnet50_cifar -> mobilenetv2_cifar, mdistiller's
recipe.

  python -m kdjax.main --config=configs/dkd_res50_mv2.py --workdir=/tmp/dkd_res50_mv2 \
      --config.teacher.checkpoint=/tmp/res50     # a kdjax workdir of configs/train_res50_cifar.py

Hardware: one GPU (batch 64, 240 epochs). `:smoke` runs 8 steps on a CPU (needs cifar100 in
data_dir; only smoke may use a random teacher).
Optimizer: SGD at lr 0.01, which mdistiller uses for ShuffleNet and MobileNet-V2 students (0.05 for
the others); otherwise `recipes.cifar100_mdistiller`.
Loss: CE + min(epoch / 20, 1) * DKD(alpha=1, beta=8, T=4) (mdistiller
`configs/cifar100/dkd/res50_mv2.yaml`, which leaves beta at the `engine/cfg.py` default;
docs/methods.md#dkd).
Expected top-1: 70.35 (mdistiller README, DKD row, ResNet50 -> MobileNet-V2; teacher 79.34, student
alone 64.60 in the DKD paper's CIFAR-100 table of different-architecture pairs). Not yet reproduced
with kdjax.
"""

from kdjax import config_base
from kdjax import recipes


def get_config(arg=None):
  c = recipes.cifar_pair(arg, 'dkd', teacher='resnet50_cifar', student='mobilenetv2_cifar')
  return config_base.lock_config(c)
