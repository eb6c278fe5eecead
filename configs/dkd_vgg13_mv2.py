r"""DKD (Zhao et al., CVPR 2022), CIFAR-100, vgg13 -> mobilenetv2_cifar, mdistiller's recipe.

  python -m kdjax.main --config=configs/dkd_vgg13_mv2.py --workdir=/tmp/dkd_vgg13_mv2 \
      --config.teacher.checkpoint=/tmp/vgg13     # a kdjax workdir of configs/train_vgg13.py

Hardware: one GPU (batch 64, 240 epochs). `:smoke` runs 8 steps on a CPU (needs cifar100 in
data_dir; only smoke may use a random teacher).
Optimizer: SGD at lr 0.01, which mdistiller uses for ShuffleNet and MobileNet-V2 students (0.05 for
the others); otherwise `recipes.cifar100_mdistiller`.
Loss: CE + min(epoch / 20, 1) * DKD(alpha=1, beta=6, T=4) (mdistiller
`configs/cifar100/dkd/vgg13_mv2.yaml`; docs/methods.md#dkd).
Expected top-1: 69.71 (mdistiller README, DKD row, VGG13 -> MobileNet-V2; teacher 74.64, student
alone 64.60 in the DKD paper's CIFAR-100 table of different-architecture pairs). Not yet reproduced
with kdjax.
"""

from kdjax import config_base
from kdjax import recipes


def get_config(arg=None):
  c = recipes.cifar_pair(arg, 'dkd', teacher='vgg13', student='mobilenetv2_cifar', beta=6.0)
  return config_base.lock_config(c)
