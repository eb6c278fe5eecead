r"""DKD (Zhao et al., CVPR 2022), CIFAR-100, resnet110 -> resnet32, mdistiller's recipe.

  python -m kdjax.main --config=configs/dkd_res110_res32.py --workdir=/tmp/dkd_res110_res32 \
      --config.teacher.checkpoint=/tmp/res110     # a kdjax workdir of configs/train_res110.py

Hardware: one GPU (batch 64, 240 epochs). `:smoke` runs 8 steps on a CPU (needs cifar100 in
data_dir; only smoke may use a random teacher).
Optimizer: SGD at lr 0.05, `recipes.cifar100_mdistiller`.
Loss: CE + min(epoch / 20, 1) * DKD(alpha=1, beta=2, T=4) (mdistiller
`configs/cifar100/dkd/res110_res32.yaml`; docs/methods.md#dkd).
Expected top-1: 74.11 (mdistiller README, DKD row, ResNet110 -> ResNet32; teacher 74.31, student
alone 71.14 in the DKD paper's CIFAR-100 table of same-architecture pairs). Not yet reproduced with
kdjax.
"""

from kdjax import config_base
from kdjax import recipes


def get_config(arg=None):
  c = recipes.cifar_pair(arg, 'dkd', teacher='resnet110', student='resnet32', beta=2.0)
  return config_base.lock_config(c)
