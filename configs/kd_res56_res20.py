r"""KD (Hinton et al. 2015), CIFAR-100, resnet56 -> resnet20, mdistiller's recipe.

  python -m kdjax.main --config=configs/kd_res56_res20.py --workdir=/tmp/kd_res56_res20 \
      --config.teacher.checkpoint=/tmp/res56     # a kdjax workdir of configs/train_res56.py

Hardware: one GPU (batch 64, 240 epochs). `:smoke` runs 8 steps on a CPU (needs cifar100 in
data_dir; only smoke may use a random teacher).
Optimizer: SGD at lr 0.05, `recipes.cifar100_mdistiller`.
Loss: 0.1 * CE + 0.9 * KD(T=4) (docs/methods.md#kd). mdistiller has no KD YAML for this pair: loss
and schedule follow its only CIFAR KD YAML, `configs/cifar100/kd.yaml` (resnet32x4 -> resnet8x4; the
`engine/cfg.py` KD defaults), the learning rate its DKD YAML for this pair,
`configs/cifar100/dkd/res56_res20.yaml`.
Expected top-1: 70.66 (mdistiller README, KD row, ResNet56 -> ResNet20; teacher 72.34, student alone
69.06 in the DKD paper's CIFAR-100 table of same-architecture pairs). Not yet reproduced with kdjax.
"""

from kdjax import config_base
from kdjax import recipes


def get_config(arg=None):
  c = recipes.cifar_pair(arg, 'kd', teacher='resnet56', student='resnet20')
  return config_base.lock_config(c)
