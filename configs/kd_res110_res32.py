r"""KD (Hinton et al. 2015), CIFAR-100, resnet110 -> resnet32, mdistiller's recipe.

  python -m kdjax.main --config=configs/kd_res110_res32.py --workdir=/tmp/kd_res110_res32 \
      --config.teacher.checkpoint=/tmp/res110     # a kdjax workdir of configs/train_res110.py

Hardware: one GPU (batch 64, 240 epochs). `:smoke` runs 8 steps on a CPU (needs cifar100 in
data_dir; only smoke may use a random teacher).
Optimizer: SGD at lr 0.05, `recipes.cifar100_mdistiller`.
Loss: 0.1 * CE + 0.9 * KD(T=4) (docs/methods.md#kd). mdistiller has no KD YAML for this pair: loss
and schedule follow its only CIFAR KD YAML, `configs/cifar100/kd.yaml` (resnet32x4 -> resnet8x4; the
`engine/cfg.py` KD defaults), the learning rate its DKD YAML for this pair,
`configs/cifar100/dkd/res110_res32.yaml`.
Expected top-1: 73.08 (mdistiller README, KD row, ResNet110 -> ResNet32; teacher 74.31, student
alone 71.14 in the DKD paper's CIFAR-100 table of same-architecture pairs). Not yet reproduced with
kdjax.
"""

from kdjax import config_base
from kdjax import recipes


def get_config(arg=None):
  c = recipes.cifar_pair(arg, 'kd', teacher='resnet110', student='resnet32')
  return config_base.lock_config(c)
