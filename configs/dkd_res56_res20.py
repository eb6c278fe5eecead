r"""DKD (Zhao et al., CVPR 2022), CIFAR-100, resnet56 -> resnet20, mdistiller's recipe.

  python -m kdjax.main --config=configs/dkd_res56_res20.py --workdir=/tmp/dkd_res56_res20 \
      --config.teacher.checkpoint=/tmp/res56     # a kdjax workdir of configs/train_res56.py

Hardware: one GPU (batch 64, 240 epochs). `:smoke` runs 8 steps on a CPU (needs cifar100 in
data_dir; only smoke may use a random teacher).
Optimizer: SGD at lr 0.05, `recipes.cifar100_mdistiller`.
Loss: CE + min(epoch / 20, 1) * DKD(alpha=1, beta=2, T=4) (mdistiller
`configs/cifar100/dkd/res56_res20.yaml`; docs/methods.md#dkd).
Expected top-1: 71.97 (mdistiller README, DKD row, ResNet56 -> ResNet20; teacher 72.34, student
alone 69.06 in the DKD paper's CIFAR-100 table of same-architecture pairs). Not yet reproduced with
kdjax.
"""

from kdjax import config_base
from kdjax import recipes


def get_config(arg=None):
  c = recipes.cifar_pair(arg, 'dkd', teacher='resnet56', student='resnet20', beta=2.0)
  return config_base.lock_config(c)
