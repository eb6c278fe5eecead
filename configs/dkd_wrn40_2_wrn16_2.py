r"""DKD (Zhao et al., CVPR 2022), CIFAR-100, wrn_40_2 -> wrn_16_2, mdistiller's recipe.

  python -m kdjax.main --config=configs/dkd_wrn40_2_wrn16_2.py --workdir=/tmp/dkd_wrn40_2_wrn16_2 \
      --config.teacher.checkpoint=/tmp/wrn40_2     # a kdjax workdir of configs/train_wrn40_2.py

Hardware: one GPU (batch 64, 240 epochs). `:smoke` runs 8 steps on a CPU (needs cifar100 in
data_dir; only smoke may use a random teacher).
Optimizer: SGD at lr 0.05, `recipes.cifar100_mdistiller`.
Loss: CE + min(epoch / 20, 1) * DKD(alpha=1, beta=6, T=4) (mdistiller
`configs/cifar100/dkd/wrn40_2_wrn_16_2.yaml`; docs/methods.md#dkd).
Expected top-1: 76.23 (mdistiller README, DKD row, WRN-40-2 -> WRN-16-2; teacher 75.61, student
alone 73.26 in the DKD paper's CIFAR-100 table of same-architecture pairs). Not yet reproduced with
kdjax.
"""

from kdjax import config_base
from kdjax import recipes


def get_config(arg=None):
  c = recipes.cifar_pair(arg, 'dkd', teacher='wrn_40_2', student='wrn_16_2', beta=6.0)
  return config_base.lock_config(c)
