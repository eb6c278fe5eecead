r"""KD (Hinton et al. 2015), CIFAR-100, wrn_40_2 -> wrn_16_2, mdistiller's recipe.

  python -m kdjax.main --config=configs/kd_wrn40_2_wrn16_2.py --workdir=/tmp/kd_wrn40_2_wrn16_2 \
      --config.teacher.checkpoint=/tmp/wrn40_2     # a kdjax workdir of configs/train_wrn40_2.py

Hardware: one GPU (batch 64, 240 epochs). `:smoke` runs 8 steps on a CPU (needs cifar100 in
data_dir; only smoke may use a random teacher).
Optimizer: SGD at lr 0.05, `recipes.cifar100_mdistiller`.
Loss: 0.1 * CE + 0.9 * KD(T=4) (docs/methods.md#kd). mdistiller has no KD YAML for this pair: loss
and schedule follow its only CIFAR KD YAML, `configs/cifar100/kd.yaml` (resnet32x4 -> resnet8x4; the
`engine/cfg.py` KD defaults), the learning rate its DKD YAML for this pair,
`configs/cifar100/dkd/wrn40_2_wrn_16_2.yaml`.
Expected top-1: 74.92 (mdistiller README, KD row, WRN-40-2 -> WRN-16-2; teacher 75.61, student alone
73.26 in the DKD paper's CIFAR-100 table of same-architecture pairs). Not yet reproduced with kdjax.
"""

from kdjax import config_base
from kdjax import recipes


def get_config(arg=None):
  c = recipes.cifar_pair(arg, 'kd', teacher='wrn_40_2', student='wrn_16_2')
  return config_base.lock_config(c)
