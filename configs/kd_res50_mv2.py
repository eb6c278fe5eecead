r"""KD (Hinton et al. 2015), CIFAR-100, resnet50_cifar -> mobilenetv2_cifar, mdistiller's recipe.

  python -m kdjax.main --config=configs/kd_res50_mv2.py --workdir=/tmp/kd_res50_mv2 \
      --config.teacher.checkpoint=/tmp/res50     # a kdjax workdir of configs/train_res50_cifar.py

Hardware: one GPU (batch 64, 240 epochs). `:smoke` runs 8 steps on a CPU (needs cifar100 in
data_dir; only smoke may use a random teacher).
Optimizer: SGD at lr 0.01, which mdistiller uses for ShuffleNet and MobileNet-V2 students (0.05 for
the others); otherwise `recipes.cifar100_mdistiller`.
Loss: 0.1 * CE + 0.9 * KD(T=4) (docs/methods.md#kd). mdistiller has no KD YAML for this pair: loss
and schedule follow its only CIFAR KD YAML, `configs/cifar100/kd.yaml` (resnet32x4 -> resnet8x4; the
`engine/cfg.py` KD defaults), the learning rate its DKD YAML for this pair,
`configs/cifar100/dkd/res50_mv2.yaml`.
Expected top-1: 67.35 (mdistiller README, KD row, ResNet50 -> MobileNet-V2; teacher 79.34, student
alone 64.60 in the DKD paper's CIFAR-100 table of different-architecture pairs). Not yet reproduced
with kdjax.
"""

from kdjax import config_base
from kdjax import recipes


def get_config(arg=None):
  c = recipes.cifar_pair(arg, 'kd', teacher='resnet50_cifar', student='mobilenetv2_cifar')
  return config_base.lock_config(c)
