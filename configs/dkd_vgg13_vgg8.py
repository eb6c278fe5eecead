r"""DKD (Zhao et al., CVPR 2022), CIFAR-100, vgg13 -> vgg8, mdistiller's recipe.

  python -m kdjax.main --config=configs/dkd_vgg13_vgg8.py --workdir=/tmp/dkd_vgg13_vgg8 \
      --config.teacher.checkpoint=/tmp/vgg13     # a kdjax workdir of configs/train_vgg13.py

Hardware: one GPU (batch 64, 240 epochs). `:smoke` runs 8 steps on a CPU (needs cifar100 in
data_dir; only smoke may use a random teacher).
Optimizer: SGD at lr 0.05, `recipes.cifar100_mdistiller`.
Loss: CE + min(epoch / 20, 1) * DKD(alpha=1, beta=6, T=4) (mdistiller
`configs/cifar100/dkd/vgg13_vgg8.yaml`; docs/methods.md#dkd).
Expected top-1: 74.68 (mdistiller README, DKD row, VGG13 -> VGG8; teacher 74.64, student alone 70.36
in the DKD paper's CIFAR-100 table of same-architecture pairs). Not yet reproduced with kdjax.
"""

from kdjax import config_base
from kdjax import recipes


def get_config(arg=None):
  c = recipes.cifar_pair(arg, 'dkd', teacher='vgg13', student='vgg8', beta=6.0)
  return config_base.lock_config(c)
